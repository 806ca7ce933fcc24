"""Where ingest reads messages from: the MQTT broker or a NATS JetStream stream."""

from __future__ import annotations

from typing import Protocol

from citytel.config import Settings
from citytel.ingest.jetstream import DeadLetterSink, JetStreamConsumer
from citytel.ingest.metrics import ConsumerCounters
from citytel.ingest.mqtt import InboundMessage, Inbox, MqttConsumer


class Source(ConsumerCounters, Protocol):
    """What the pipeline needs of a source: batches in, acknowledgements after commit, and
    the counters that logs and metrics read (:class:`ConsumerCounters`)."""

    @property
    def inbox(self) -> Inbox:
        """Messages received and not yet taken by the pipeline."""
        ...

    def start(self) -> None:
        """Connect and receive in the background."""

    def ack(self, messages: list[InboundMessage]) -> int:
        """Acknowledge messages whose readings (or dead letters) have committed."""
        ...

    async def wait_subscribed(self) -> None:
        """Return once every message published from now on is ours to store."""

    async def stop(self) -> None:
        """Stop receiving; what was not acknowledged stays with the broker."""


def open_source(
    settings: Settings, subscriptions: list[str], dead_letter: DeadLetterSink
) -> Source:
    """The source CITYTEL_INGEST_SOURCE names: ``mqtt`` (the default) or ``jetstream``."""
    if settings.ingest_source == "jetstream":
        return JetStreamConsumer(settings, dead_letter)
    return MqttConsumer(settings, subscriptions)
