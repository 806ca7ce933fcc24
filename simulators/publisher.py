"""Publishing a simulated stream to an MQTT broker, paced and acknowledged."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from simulators.stream import SimulatedMessage


class PublishError(Exception):
    """The broker could not be reached, refused us, or stopped acknowledging."""


@dataclass(slots=True)
class PublishStats:
    """What a run published and what the broker acknowledged."""

    published: int = 0
    acknowledged: int = 0
    refused: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    elapsed_s: float = 0.0
    interrupted: bool = False

    @property
    def complete(self) -> bool:
        """Whether the broker accepted every message published."""
        return self.acknowledged == self.published


class _Acks:
    """PUBACKs counted on the network thread, awaited on ours."""

    def __init__(self) -> None:
        self.done = threading.Condition()
        self.connected: ReasonCode | None = None
        self.acknowledged = 0
        self.refused = 0

    def on_connect(
        self, _c: mqtt.Client, _u: Any, _f: Any, code: ReasonCode, _p: Properties | None
    ) -> None:
        with self.done:
            self.connected = code
            self.done.notify_all()

    def on_publish(
        self, _c: mqtt.Client, _u: Any, _mid: int, code: ReasonCode, _p: Properties | None
    ) -> None:
        with self.done:
            if code.is_failure:
                self.refused += 1
            else:
                self.acknowledged += 1
            self.done.notify_all()

    def wait_connected(self, timeout_s: float) -> ReasonCode | None:
        with self.done:
            self.done.wait_for(lambda: self.connected is not None, timeout_s)
            return self.connected

    def wait_below(self, published: int, outstanding: int, timeout_s: float) -> bool:
        with self.done:
            return self.done.wait_for(
                lambda: published - self.acknowledged - self.refused <= outstanding, timeout_s
            )


def publish(
    messages: Iterable[SimulatedMessage],
    *,
    host: str,
    port: int,
    username: str | None = None,
    password: str | None = None,
    client_id: str = "",
    duration_s: float | None = None,
    timeout_s: float = 30.0,
    max_outstanding: int = 20_000,
    mqtt_version: int = 5,
) -> PublishStats:
    """Publish messages at QoS 1, each no earlier than its due time, and wait for every PUBACK.

    Stops when ``messages`` ends, after ``duration_s`` seconds, or on Ctrl-C; in every case it
    then waits up to ``timeout_s`` for the outstanding acknowledgements.

    Raises:
        PublishError: the broker is unreachable or refuses the connection, or stops
            acknowledging for ``timeout_s``.
    """
    acks = _Acks()
    # 3.1.1 for brokers that speak only that (nats-server's MQTT listener), as many gateways do.
    v5 = mqtt_version == 5
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
    )
    client.on_connect = acks.on_connect
    client.on_publish = acks.on_publish
    # Pacing is ours; paho's own limits would only stall us or drop messages.
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    if username:
        client.username_pw_set(username, password)
    try:
        if v5:
            client.connect(host, port, keepalive=30, clean_start=True)
        else:
            client.connect(host, port, keepalive=30)
    except OSError as exc:
        message = f"cannot reach the MQTT broker at {host}:{port}: {exc}"
        raise PublishError(message) from exc
    client.loop_start()
    try:
        code = acks.wait_connected(timeout_s)
        if code is None or code.is_failure:
            message = f"the MQTT broker at {host}:{port} did not accept us: {code}"
            raise PublishError(message)
        return _run(client, acks, messages, duration_s, timeout_s, max_outstanding)
    finally:
        client.disconnect()
        client.loop_stop()


def _run(
    client: mqtt.Client,
    acks: _Acks,
    messages: Iterable[SimulatedMessage],
    duration_s: float | None,
    timeout_s: float,
    max_outstanding: int,
) -> PublishStats:
    stats = PublishStats()
    started = time.monotonic()
    first_due = None
    try:
        for message in messages:
            first_due = first_due or message.due
            elapsed = time.monotonic() - started
            if duration_s and elapsed >= duration_s:
                break
            ahead = (message.due - first_due).total_seconds() - elapsed
            if ahead > 0:
                time.sleep(ahead)
            if not acks.wait_below(stats.published, max_outstanding, timeout_s):
                break
            client.publish(message.topic, message.payload, qos=1)
            stats.published += 1
            stats.by_kind[message.kind] += 1
    except KeyboardInterrupt:
        stats.interrupted = True
    acks.wait_below(stats.published, 0, timeout_s)
    stats.acknowledged, stats.refused = acks.acknowledged, acks.refused
    stats.elapsed_s = time.monotonic() - started
    if stats.acknowledged + stats.refused < stats.published:
        missing = stats.published - stats.acknowledged - stats.refused
        detail = f"{missing} of {stats.published} messages unacknowledged after {timeout_s:.0f} s"
        raise PublishError(detail)
    return stats
