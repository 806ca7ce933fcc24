"""Prometheus metrics of ``citytel ingest``, served on their own port (``/metrics``).

Counters are not incremented on the hot path: a collector reads the running totals the
pipeline and the MQTT client keep anyway (:class:`~citytel.ingest.pipeline.IngestStats`, the
consumer's counters) when Prometheus scrapes. Only the commit latency is observed per batch,
once per up to ``CITYTEL_INGEST_BATCH_SIZE`` messages.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from citytel.domain import Reason
from citytel.errors import ConfigurationError

if TYPE_CHECKING:
    from citytel.ingest.pipeline import IngestStats

log = logging.getLogger(__name__)

# Seconds from a batch taken off the inbox to its commit: a few ms when healthy, up to the
# retry backoff (10 s) and beyond when the database is away.
_COMMIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ConsumerCounters(Protocol):
    """What the metrics read from an ingest source (the MQTT client or the JetStream consumer)."""

    messages_received: int
    sessions_lost: int

    @property
    def reconnects(self) -> dict[str, int]: ...

    @property
    def inbox_depth(self) -> int: ...

    @property
    def in_flight_unacked(self) -> int: ...

    @property
    def connected(self) -> bool: ...

    @property
    def subscribed_all(self) -> bool: ...


class IngestMetrics:
    """The metrics of one ingest process, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.commit_seconds = Histogram(
            "citytel_ingest_batch_commit_seconds",
            "Time from a batch taken off the inbox to its commit (and acknowledgement)",
            buckets=_COMMIT_BUCKETS,
            registry=self.registry,
        )
        self._totals = _Totals()
        self.registry.register(self._totals)

    def watch(self, stats: IngestStats, consumer: ConsumerCounters) -> None:
        """Read these totals at each scrape from now on."""
        self._totals.stats, self._totals.consumer = stats, consumer

    def serve(self, host: str, port: int) -> WSGIServer:
        """Serve ``/metrics`` on ``host:port`` from a background thread; returns the server.

        Raises:
            ConfigurationError: the port cannot be bound, naming the setting to change.
        """
        try:
            server, _thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            message = (
                f"cannot serve metrics on {host}:{port} ({exc.strerror or exc}): set "
                "CITYTEL_INGEST_METRICS_PORT to a free port (0 switches metrics off)"
            )
            raise ConfigurationError(message) from exc
        log.info("metrics on http://%s:%d/metrics", host, port)
        return server


class _Totals(Collector):
    def __init__(self) -> None:
        self.stats: IngestStats | None = None
        self.consumer: ConsumerCounters | None = None

    def collect(self) -> Iterator[Metric]:
        stats, consumer = self.stats, self.consumer
        if stats is None or consumer is None:
            return
        yield _counter(
            "citytel_ingest_messages_received",
            "MQTT messages delivered by the broker, redeliveries included",
            consumer.messages_received,
        )
        yield _counter(
            "citytel_ingest_messages_committed",
            "Messages whose batch committed and was acknowledged",
            stats.messages,
        )
        yield _counter("citytel_ingest_readings_stored", "Readings stored", stats.readings_stored)
        yield _counter(
            "citytel_ingest_readings_duplicate",
            "Readings already stored (a redelivery or a repeated send), not stored again",
            stats.duplicates,
        )
        dead = CounterMetricFamily(
            "citytel_ingest_dead_letters",
            "Messages kept in dead_letters instead of stored, by reason",
            labels=["reason"],
        )
        # Every reason from the start, so that a rate over the first one is not lost.
        for reason in Reason:
            dead.add_metric([str(reason)], stats.dead_letters.get(reason, 0))
        yield dead
        yield _counter("citytel_ingest_batches", "Batches committed", stats.batches)
        yield _counter(
            "citytel_ingest_batch_retries",
            "Batch attempts that failed on a database outage and were retried",
            stats.retries,
        )
        yield _counter(
            "citytel_ingest_batch_failures",
            "Batches that failed unexpectedly and were handled one message at a time",
            stats.batch_failures,
        )
        reconnects = CounterMetricFamily(
            "citytel_ingest_reconnects",
            "MQTT connections ended or attempts failed, by cause",
            labels=["cause"],
        )
        for cause, count in sorted(consumer.reconnects.items()):
            reconnects.add_metric([cause], count)
        yield reconnects
        yield _counter(
            "citytel_ingest_sessions_lost",
            "Reconnects on which the broker no longer had the session (messages may be lost)",
            consumer.sessions_lost,
        )
        yield _gauge(
            "citytel_ingest_inbox_messages",
            "Messages received and not yet taken into a batch",
            consumer.inbox_depth,
        )
        yield _gauge(
            "citytel_ingest_unacked_messages",
            "Messages delivered on the current connection and not yet acknowledged",
            consumer.in_flight_unacked,
        )
        yield _gauge(
            "citytel_ingest_subscribed",
            "1 when every subscription is granted at QoS 1 on the current connection",
            int(consumer.subscribed_all),
        )
        yield _gauge(
            "citytel_ingest_seconds_since_last_commit",
            "Seconds since a batch last committed (since start before the first)",
            time.monotonic() - stats.last_commit,
        )


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)
