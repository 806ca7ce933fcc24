"""Prometheus metrics of the API (``/metrics``): requests by route template, the live view,
the read replica.

Requests are labelled by the route's template (``/v1/zones/{zone_id}``), never the raw path, so
that the number of series stays bounded whatever clients ask for; a request no route matched
is ``unmatched``. Each API process (each of ``CITYTEL_API_WORKERS``) counts its own requests.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from fastapi import FastAPI, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from citytel.api.auth import require
from citytel.api.live_spots import LiveSpots
from citytel.keys import Scope as KeyScope
from citytel.storage.replica import ReadReplica

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class ApiMetrics:
    """The metrics of one API process, in a registry of their own."""

    def __init__(self, live: LiveSpots | None, replica: ReadReplica) -> None:
        self.registry = CollectorRegistry()
        self.request_seconds = Histogram(
            "citytel_api_request_seconds",
            "Time to answer a request, by method, route template and status",
            labelnames=["method", "route", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        if live is not None:
            self.registry.register(_LiveView(live))
        if replica.configured:
            self.registry.register(_Replica(replica))

    def install(self, app: FastAPI) -> None:
        """Time every request of ``app`` and serve ``/metrics`` from it."""
        app.add_middleware(_Timing, metrics=self)

        async def scrape() -> Response:
            return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

        # Latencies by route and the view's age are for operators, not for anyone on the port.
        app.add_api_route(
            "/metrics",
            scrape,
            methods=["GET"],
            tags=["operations"],
            summary="Prometheus metrics of this API process",
            response_class=PlainTextResponse,
            dependencies=[require(KeyScope.OPS)],
        )


class _Timing:
    """Pure ASGI middleware: no request object built, one histogram observation per request."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.request_seconds.labels(scope["method"], template, str(status)).observe(
                time.perf_counter() - started
            )


class _LiveView(Collector):
    def __init__(self, live: LiveSpots) -> None:
        self.live = live

    def collect(self) -> Iterator[Metric]:
        gauges = [
            (
                "citytel_api_live_view_age_seconds",
                "Seconds since the live parking view was last read from the database",
                self.live.age_s,
            ),
            (
                "citytel_api_live_view_refresh_seconds",
                "How long the last read of the live parking view took",
                self.live.last_refresh_s,
            ),
        ]
        # Absent until the first read: there is no age to tell yet.
        for name, documentation, value in gauges:
            if value is not None:
                yield GaugeMetricFamily(name, documentation, value=value)


class _Replica(Collector):
    def __init__(self, replica: ReadReplica) -> None:
        self.replica = replica

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "citytel_api_replica_reads",
            "1 while reads are served by the read replica, 0 while they fall back to the primary",
            value=1 if self.replica.in_use else 0,
        )
        # Absent while it cannot be measured (the replica unreachable, or not measured yet).
        if self.replica.lag_s is not None:
            yield GaugeMetricFamily(
                "citytel_api_replica_lag_seconds",
                "How far the read replica is behind the primary, at the last check",
                value=self.replica.lag_s,
            )
