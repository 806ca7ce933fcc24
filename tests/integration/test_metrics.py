"""``/metrics`` of ingest and of the API, scraped over HTTP while readings and dead letters flow.

The alert rules and the dashboard shipped in ``deploy/`` are checked against what is scraped:
every metric they name exists.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from citytel.config import Settings
from citytel.domain import DEFAULT_GATEWAY, DeviceKind
from citytel.formats.native import WastePayload, encode_native
from citytel.formats.topics import native_topic
from citytel.ingest import wire
from citytel.ingest.metrics import IngestMetrics
from citytel.ingest.pipeline import IngestStats, run_ingest
from tests.integration.conftest import Fleet, publish_raw, wait_until
from tests.integration.services import REPO, free_port

pytestmark = pytest.mark.integration

Labels = tuple[tuple[str, str], ...]


@dataclass
class Scrape:
    """One scrape: every sample by (name, labels), and every family and sample name seen."""

    samples: dict[tuple[str, Labels], float]
    names: set[str]

    def value(self, name: str, **labels: str) -> float:
        return self.samples[(name, tuple(sorted(labels.items())))]


async def scrape(client: httpx.AsyncClient, url: str) -> Scrape:
    """GET ``url`` and parse it as the Prometheus text format."""
    response = await client.get(url)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[tuple[str, Labels], float] = {}
    names: set[str] = set()
    for family in text_string_to_metric_families(response.text):
        # Names a query can use even before the family has a sample (a counter by a label).
        names.add(family.name)
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}
        names.update(family.name + suffix for suffix in suffixes.get(family.type, []))
        for sample in family.samples:
            names.add(sample.name)
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return Scrape(samples, names)


@dataclass
class MeteredIngest:
    """An ingest loop with its metrics served on a port of their own."""

    url: str
    stop: asyncio.Event
    task: asyncio.Task[IngestStats]


@pytest.fixture
async def metered_ingest(settings: Settings) -> AsyncIterator[MeteredIngest]:
    """``citytel ingest``'s loop with metrics on a free port, subscribed."""
    metrics = IngestMetrics()
    port = free_port()
    server = metrics.serve("127.0.0.1", port)
    stop, subscribed = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        run_ingest(settings, stop=stop, subscribed=subscribed, metrics=metrics)
    )
    try:
        async with asyncio.timeout(10):
            await subscribed.wait()
        yield MeteredIngest(f"http://127.0.0.1:{port}/metrics", stop, task)
    finally:
        stop.set()
        async with asyncio.timeout(30):
            await task
        server.shutdown()
        server.server_close()


def readings_and_poison(settings: Settings, fleet: Fleet, good: int) -> list[tuple[str, bytes]]:
    """``good`` valid waste readings, then two that are not JSON and one out of range."""
    topic = native_topic(
        settings.mqtt_topic_root, DEFAULT_GATEWAY, DeviceKind.WASTE, fleet.containers[0]
    )
    start = datetime.now(UTC) - timedelta(hours=1)
    messages = [
        (topic, encode_native([WastePayload(ts=start + timedelta(minutes=i), fill_pct=10.0)]))
        for i in range(good)
    ]
    ts = start.isoformat()
    return [
        *messages,
        (topic, b"fill=50"),
        (topic, b"{not json"),
        (topic, json.dumps({"ts": ts, "fill_pct": 140}).encode()),
    ]


async def test_ingest_metrics_move_with_readings_and_dead_letters(
    settings: Settings, fleet: Fleet, pool: asyncpg.Pool, metered_ingest: MeteredIngest
) -> None:
    """Scraped before and after: received, stored, dead letters by reason, batches and latency."""
    async with httpx.AsyncClient(timeout=10) as client:
        before = await scrape(client, metered_ingest.url)
        assert before.value("citytel_ingest_subscribed") == 1
        assert before.value("citytel_ingest_readings_stored_total") == 0
        assert before.value("citytel_ingest_dead_letters_total", reason="invalid_json") == 0
        messages = readings_and_poison(settings, fleet, good=6)
        await asyncio.to_thread(publish_raw, settings, messages)

        async def all_counted() -> bool:
            now = await scrape(client, metered_ingest.url)
            return now.value("citytel_ingest_messages_committed_total") == len(messages)

        await wait_until(all_counted)
        after = await scrape(client, metered_ingest.url)
    assert after.value("citytel_ingest_messages_received_total") == len(messages)
    assert after.value("citytel_ingest_readings_stored_total") == 6
    assert after.value("citytel_ingest_dead_letters_total", reason="invalid_json") == 2
    assert after.value("citytel_ingest_dead_letters_total", reason="out_of_range") == 1
    assert after.value("citytel_ingest_dead_letters_total", reason="wrong_type") == 0
    batches = after.value("citytel_ingest_batches_total")
    assert batches >= 1
    assert after.value("citytel_ingest_batch_commit_seconds_count") == batches
    assert after.value("citytel_ingest_batch_commit_seconds_bucket", le="+Inf") == batches
    assert after.value("citytel_ingest_inbox_messages") == 0
    assert after.value("citytel_ingest_unacked_messages") == 0
    assert after.value("citytel_ingest_batch_retries_total") == 0
    assert after.value("citytel_ingest_sessions_lost_total") == 0
    assert await pool.fetchval("SELECT count(*) FROM waste_readings") == 6
    assert await pool.fetchval("SELECT count(*) FROM dead_letters") == 3


async def take_session(settings: Settings) -> None:
    """Connect with the worker's client id and a clean start, then leave: its session is gone."""
    host, port = settings.mqtt_host_port
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(wire.encode_connect(settings.mqtt_client_id, keepalive=10, clean_start=True))
        await writer.drain()
        assert await reader.read(4096)  # CONNACK
        writer.write(wire.DISCONNECT)
        await writer.drain()
    finally:
        writer.close()
        await writer.wait_closed()


async def test_ingest_metrics_count_reconnects_and_lost_sessions(
    settings: Settings, metered_ingest: MeteredIngest
) -> None:
    """A session taken over and discarded shows as a reconnect and a lost session."""
    async with httpx.AsyncClient(timeout=10) as client:
        before = await scrape(client, metered_ingest.url)
        reconnects = "citytel_ingest_reconnects_total"
        assert not [name for name, _ in before.samples if name == reconnects]
        assert before.value("citytel_ingest_sessions_lost_total") == 0
        await take_session(settings)

        async def back_with_a_new_session() -> bool:
            now = await scrape(client, metered_ingest.url)
            return (
                now.value("citytel_ingest_sessions_lost_total") == 1
                and now.value("citytel_ingest_subscribed") == 1
            )

        await wait_until(back_with_a_new_session)
        after = await scrape(client, metered_ingest.url)
    counts = [value for (name, _), value in after.samples.items() if name == reconnects]
    assert sum(counts) >= 1


async def test_api_metrics_by_route_template_and_status(
    fleet: Fleet, api: httpx.AsyncClient
) -> None:
    """Requests are counted and timed by route template and status; raw paths never appear."""
    del fleet
    for _ in range(2):
        assert (await api.get("/v1/zones/anfa")).status_code == 200
    assert (await api.get("/v1/zones/nowhere-zone")).status_code == 404
    assert (await api.get("/no/such/route-xyz")).status_code == 404
    assert (await api.get("/v1/containers", params={"min_fill_pct": 500})).status_code == 422

    async def live_view_read() -> bool:
        found = await scrape(api, "/metrics")
        return "citytel_api_live_view_age_seconds" in found.names

    await wait_until(live_view_read)
    found = await scrape(api, "/metrics")
    count = "citytel_api_request_seconds_count"
    zone = {"method": "GET", "route": "/v1/zones/{zone}"}
    assert found.value(count, status="200", **zone) == 2
    assert found.value(count, status="404", **zone) == 1
    assert found.value(count, method="GET", route="unmatched", status="404") == 1
    assert found.value(count, method="GET", route="/v1/containers", status="422") == 1
    assert found.value(count, method="GET", route="/metrics", status="200") >= 1
    routes = {dict(labels).get("route") for name, labels in found.samples if name == count}
    assert not [r for r in routes if r and ("anfa" in r or "nowhere" in r or "xyz" in r)]
    assert found.value("citytel_api_live_view_age_seconds") >= 0
    assert found.value("citytel_api_live_view_refresh_seconds") >= 0


def rule_files() -> Iterator[dict[str, Any]]:
    """Every rule of deploy/prometheus/alerts.yml."""
    document = yaml.safe_load((REPO / "deploy" / "prometheus" / "alerts.yml").read_text())
    for group in document["groups"]:
        yield from group["rules"]


def dashboard_expressions() -> list[str]:
    """Every query of deploy/grafana/citytel.json."""
    dashboard = json.loads((REPO / "deploy" / "grafana" / "citytel.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


async def test_alerts_and_dashboard_name_only_metrics_that_exist(
    fleet: Fleet, api: httpx.AsyncClient, metered_ingest: MeteredIngest
) -> None:
    """The alert rules are well-formed (promtool when installed) and every metric they and the
    dashboard use is served by ingest or the API."""
    del fleet
    await api.get("/v1/zones/anfa")

    async def live_view_read() -> bool:
        return "citytel_api_live_view_age_seconds" in (await scrape(api, "/metrics")).names

    await wait_until(live_view_read)
    async with httpx.AsyncClient(timeout=10) as client:
        served = (await scrape(client, metered_ingest.url)).names
    served |= (await scrape(api, "/metrics")).names
    rules = list(rule_files())
    assert {r["alert"] for r in rules} >= {
        "CitytelIngestStalled",
        "CitytelIngestSessionLost",
        "CitytelDeadLetterRate",
        "CitytelLiveViewStale",
    }
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "0s")), rule
    expressions = [r["expr"] for r in rules] + dashboard_expressions()
    used = {name for expr in expressions for name in re.findall(r"citytel_[a-z_]+", expr)}
    assert used - served == set()
    promtool = shutil.which("promtool")
    if promtool is not None:
        checked = await asyncio.to_thread(
            subprocess.run,
            [promtool, "check", "rules", str(REPO / "deploy" / "prometheus" / "alerts.yml")],
            capture_output=True,
            text=True,
            check=False,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
