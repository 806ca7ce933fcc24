"""Fixtures for tests against a real Mosquitto and a real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import json
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from citytel.api.app import create_app
from citytel.config import Settings
from citytel.domain import DeviceKind
from citytel.formats.native import WastePayload
from citytel.ingest.pipeline import IngestStats, run_ingest
from citytel.keys import Scope, generate_key, hash_key
from citytel.storage import api_keys
from citytel.storage.fleet import import_fleet
from citytel.storage.writer import KEPT_PAYLOAD_BYTES
from simulators.fleet import Fleet as SimFleet
from simulators.fleet import generate_fleet
from simulators.publisher import publish
from simulators.stream import GroundTruth, SimulatedMessage, StreamConfig, simulate
from tests.integration.services import (
    Broker,
    clone_database,
    create_template,
    drop_database,
    free_port,
    running_broker,
    running_cluster,
    timescaledb_installed,
)

pytestmark = pytest.mark.integration

SERVER_URL = os.environ.get(
    "CITYTEL_TEST_DATABASE_URL", "postgresql://postgres:postgres@127.0.0.1:5432/postgres"
)


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown() -> None:
    """Collect garbage after each test, so that a socket it left open is reported in it.

    Left to the collector's own timing, an unclosed socket fails whichever test runs next on
    that worker (filterwarnings = error), which depends on the order the workers draw tests.
    """
    gc.collect()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist's ``--dist loadgroup`` (scripts/test.sh), keep heavy tests apart.

    Every worker has its own clusters and broker, so tests cannot clash; the group is about
    load. The fault tests (marker ``faults``) kill brokers, nodes and clusters and count on ack
    timers: they run one at a time, on one worker. Without xdist the mark does nothing. First,
    so that xdist's own hook sees the mark.
    """
    for item in items:
        if item.get_closest_marker("faults"):
            item.add_marker(pytest.mark.xdist_group("faults"))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Fail loudly if xdist ignored the groups (it tags each grouped test's id with ``@group``).

    pytest-xdist 3.8 on pytest 9.2 drops the tag without a word and spreads a group over the
    workers; pyproject.toml keeps pytest below 9.2 for that, and this says when it happens again.
    """
    if not getattr(session.config.option, "loadgroup", False):
        return
    lost = [
        item.nodeid
        for item in session.items
        if item.get_closest_marker("xdist_group") and "@" not in item.nodeid
    ]
    if lost:
        message = f"--dist loadgroup lost the xdist_group of {len(lost)} test(s), e.g. {lost[0]}"
        raise pytest.UsageError(message)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """One Mosquitto for the session, with the project's configuration."""
    with running_broker(tmp_path_factory.mktemp("mosquitto")) as running:
        yield running


STORES = ("timescaledb", "postgres")


@pytest.fixture(scope="session")
def store() -> str:
    """The store the suite runs on: ``timescaledb`` or ``postgres``.

    CITYTEL_TEST_STORE picks it; unset, TimescaleDB when the extension is installed here.
    """
    chosen = os.environ.get("CITYTEL_TEST_STORE", "")
    if not chosen:
        return "timescaledb" if timescaledb_installed() else "postgres"
    if chosen not in STORES:
        pytest.fail(f"CITYTEL_TEST_STORE must be one of {STORES}, got {chosen!r}")
    if chosen == "timescaledb" and not timescaledb_installed():
        pytest.fail(
            "CITYTEL_TEST_STORE=timescaledb but the timescaledb extension is not installed "
            "into this machine's PostgreSQL (scripts/bootstrap.sh installs it when it can)"
        )
    return chosen


@pytest.fixture(scope="session")
def pg_server_url(store: str) -> Iterator[str]:
    """The PostgreSQL server the tests create their databases on.

    On TimescaleDB, a private cluster that preloads the extension: the machine's shared cluster
    is left as it is configured. On plain PostgreSQL, the shared cluster
    (CITYTEL_TEST_DATABASE_URL).
    """
    if store == "postgres":
        yield SERVER_URL
        return
    with running_cluster(timescaledb=True) as cluster:
        yield cluster.url


@pytest.fixture(scope="session")
def template_db(pg_server_url: str) -> Iterator[str]:
    """A migrated template database, cloned for each test."""
    name = create_template(pg_server_url)
    yield name
    drop_database(pg_server_url, name)


@pytest.fixture
def database_url(pg_server_url: str, template_db: str) -> Iterator[str]:
    """A fresh, migrated database of this test's own."""
    url = clone_database(pg_server_url, template_db)
    yield url
    drop_database(pg_server_url, urlsplit(url).path.lstrip("/"))


@pytest.fixture
def settings(broker: Broker, database_url: str) -> Settings:
    """Settings pointing at this test's database, broker and own topic prefix."""
    tag = uuid.uuid4().hex[:10]
    return Settings(
        database_url=database_url,  # type: ignore[arg-type]
        mqtt_url=broker.url,
        mqtt_topic_root=f"test-{tag}/citytel/v1",
        mqtt_client_id=f"citytel-test-{tag}",
        mqtt_share_group=f"g{tag}",
        mqtt_session_expiry_s=600,
        ingest_flush_ms=20,
        ingest_stats_interval_s=3600,
    )


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on this test's database."""
    created = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    yield created
    await created.close()


def feature(
    kind: str, ident: str, lon: float, lat: float, zone: str, **props: Any
) -> dict[str, Any]:
    """A GeoJSON feature of the fleet format."""
    return {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [lon, lat]},
        "properties": {"kind": kind, "id": ident, "zone": zone, **props},
    }


@dataclass
class Fleet:
    """The small fleet a test registered."""

    containers: list[str]
    spots: list[str]


@pytest.fixture
async def fleet(pool: asyncpg.Pool, tmp_path: Path) -> Fleet:
    """Twenty containers and forty spots around downtown Casablanca, registered."""
    containers = [f"T-WC-{i:03d}" for i in range(20)]
    spots = [f"T-PS-{i:03d}" for i in range(40)]
    features = [
        feature(
            "waste_container",
            c,
            -7.60 + i * 0.001,
            33.57 + i * 0.0005,
            "maarif" if i % 2 else "anfa",
            capacity_l=1100,
            depth_mm=1200,
        )
        for i, c in enumerate(containers)
    ] + [
        # Spots on a line heading east of the query point, 100 m apart, so distances are known.
        feature(
            "parking_spot", s, -7.5898 + i * 0.001076, 33.5731, "sidi-belyout" if i < 20 else "anfa"
        )
        for i, s in enumerate(spots)
    ]
    path = tmp_path / "fleet.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    result = await import_fleet(pool, path)
    assert (result.containers, result.spots) == (20, 40)
    return Fleet(containers=containers, spots=spots)


@dataclass
class RunningIngest:
    """An ingest loop running in this test's event loop."""

    task: asyncio.Task[IngestStats]
    stop_event: asyncio.Event

    async def stop(self) -> IngestStats:
        self.stop_event.set()
        async with asyncio.timeout(30):
            return await self.task


@pytest.fixture
async def ingest(settings: Settings) -> AsyncIterator[Callable[[], Awaitable[RunningIngest]]]:
    """Start ``citytel ingest``'s loop in-process; stopped at the end of the test."""
    running: list[RunningIngest] = []

    async def start() -> RunningIngest:
        stop, subscribed = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(run_ingest(settings, stop=stop, subscribed=subscribed))
        handle = RunningIngest(task=task, stop_event=stop)
        running.append(handle)
        async with asyncio.timeout(10):
            await subscribed.wait()
        return handle

    yield start
    for handle in running:
        if not handle.task.done():
            await handle.stop()


async def create_key(database_url: str, *scopes: Scope, name: str | None = None) -> str:
    """A new API key with ``scopes`` in the test's database, through the storage layer."""
    key = generate_key()
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    try:
        await api_keys.create_key(
            pool, name or f"test-{uuid.uuid4().hex[:10]}", frozenset(scopes), hash_key(key)
        )
    finally:
        await pool.close()
    return key


@contextlib.asynccontextmanager
async def serve_api(
    settings: Settings,
    app: FastAPI | None = None,
    *,
    key_scopes: tuple[Scope, ...] = (Scope.ADMIN,),
    ready: bool = True,
) -> AsyncIterator[httpx.AsyncClient]:
    """The API for ``settings`` (or ``app``, built from them) served by uvicorn on a free port,
    and an HTTP client for it.

    The client sends a new key with ``key_scopes`` (admin: every route); none when empty.
    With ``ready``, once /readyz says 200; without, as soon as it listens.
    """
    port = free_port()
    served = app if app is not None else create_app(settings)
    config = uvicorn.Config(served, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    database_url = settings.database_url.get_secret_value()
    headers = (
        {"Authorization": f"Bearer {await create_key(database_url, *key_scopes)}"}
        if key_scopes
        else {}
    )
    async with asyncio.timeout(10):
        while not server.started:
            await asyncio.sleep(0.02)
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=10, headers=headers
        ) as client:
            async with asyncio.timeout(10):
                while ready and (await client.get("/readyz")).status_code != 200:
                    await asyncio.sleep(0.05)
            yield client
    finally:
        server.should_exit = True
        async with asyncio.timeout(10):
            await task


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The API with the test's settings, and an HTTP client for it with an admin key."""
    async with serve_api(settings) as client:
        yield client


async def wait_until(
    check: Callable[[], Awaitable[bool]], *, within: float = 20.0, every: float = 0.05
) -> None:
    """Poll ``check`` until it holds; fail the test after ``within`` seconds."""
    async with asyncio.timeout(within):
        while not await check():
            await asyncio.sleep(every)


@pytest.fixture
async def sim_fleet(pool: asyncpg.Pool, tmp_path: Path) -> SimFleet:
    """A small generated fleet (30 containers, 60 spots), registered."""
    collection = generate_fleet(seed=7, containers=30, spots=60)
    path = tmp_path / "sim-fleet.geojson"
    path.write_text(json.dumps(collection))
    await import_fleet(pool, path)
    return SimFleet.from_geojson(collection)


def stream(
    settings: Settings, fleet: SimFleet, count: int, **config: Any
) -> list[SimulatedMessage]:
    """``count`` simulated messages for ``fleet`` under this test's topic root, due from now."""
    shape = StreamConfig(topic_root=settings.mqtt_topic_root, **config)
    return list(itertools.islice(simulate(fleet, datetime.now(UTC), shape), count))


def publish_stream(settings: Settings, messages: list[SimulatedMessage]) -> None:
    """Publish simulated messages through the broker; returns once every one was acknowledged."""
    host, port = settings.mqtt_host_port
    stats = publish(messages, host=host, port=port, client_id=f"pub-{uuid.uuid4().hex[:8]}")
    assert stats.complete, stats


async def count_readings(pool: asyncpg.Pool, *, at_least: int | None = None) -> Any:
    """How many readings are stored; with ``at_least``, whether there are that many."""
    value = int(
        await pool.fetchval(
            "SELECT (SELECT count(*) FROM waste_readings) + (SELECT count(*) FROM parking_readings)"
        )
    )
    return value if at_least is None else value >= at_least


async def stored_readings(
    pool: asyncpg.Pool,
) -> dict[tuple[DeviceKind, str, datetime], tuple[Any, ...]]:
    """Every stored reading by (kind, device, ts), with its values."""
    found: dict[tuple[DeviceKind, str, datetime], tuple[Any, ...]] = {}
    for row in await pool.fetch(
        "SELECT container_id, ts, fill_pct, battery_pct FROM waste_readings"
    ):
        found[(DeviceKind.WASTE, row["container_id"], row["ts"])] = (
            row["fill_pct"],
            row["battery_pct"],
        )
    for row in await pool.fetch("SELECT spot_id, ts, occupied, battery_pct FROM parking_readings"):
        found[(DeviceKind.PARKING, row["spot_id"], row["ts"])] = (
            row["occupied"],
            row["battery_pct"],
        )
    return found


async def latest_states(pool: asyncpg.Pool) -> dict[tuple[DeviceKind, str], tuple[Any, ...]]:
    """The latest state of every device, by (kind, device): (ts, fill or occupied)."""
    found: dict[tuple[DeviceKind, str], tuple[Any, ...]] = {}
    for row in await pool.fetch("SELECT container_id, ts, fill_pct FROM container_latest"):
        found[(DeviceKind.WASTE, row["container_id"])] = (row["ts"], row["fill_pct"])
    for row in await pool.fetch("SELECT spot_id, ts, occupied FROM spot_latest"):
        found[(DeviceKind.PARKING, row["spot_id"])] = (row["ts"], row["occupied"])
    return found


def expected_latest(truth: GroundTruth) -> dict[tuple[DeviceKind, str], tuple[Any, ...]]:
    """The latest state the ground truth implies, in the shape of :func:`latest_states`."""
    expected: dict[tuple[DeviceKind, str], tuple[Any, ...]] = {}
    for key, reading in truth.latest.items():
        value = reading.fill_pct if isinstance(reading, WastePayload) else reading.occupied
        expected[key] = (
            reading.ts,
            pytest.approx(value, rel=1e-6) if isinstance(value, float) else value,
        )
    return expected


async def assert_stored_exactly(pool: asyncpg.Pool, truth: GroundTruth) -> None:
    """Every distinct reading is stored once, nothing else is, and latest states are the newest."""
    stored = await stored_readings(pool)
    assert set(stored) == set(truth.readings)
    for key, reading in truth.readings.items():
        value = reading.fill_pct if isinstance(reading, WastePayload) else reading.occupied
        assert stored[key][0] == (
            pytest.approx(value, rel=1e-6) if isinstance(value, float) else value
        )
    assert await latest_states(pool) == expected_latest(truth)


def raw_message(topic: str, payload: bytes) -> SimulatedMessage:
    """A hand-made message for the publisher: its kind and readings are not used."""
    return SimulatedMessage(topic, payload, "valid", DeviceKind.WASTE, "", (), datetime.now(UTC))


def publish_raw(settings: Settings, messages: list[tuple[str, bytes]]) -> None:
    """Publish hand-made (topic, payload) pairs and wait for every acknowledgement."""
    publish_stream(settings, [raw_message(topic, payload) for topic, payload in messages])


async def assert_dead_lettered(pool: asyncpg.Pool, truth: GroundTruth) -> None:
    """Every malformed message, and nothing else, is a dead letter with its fault's reason."""
    rows = await pool.fetch("SELECT topic, payload, reason FROM dead_letters")
    found = {(r["topic"], bytes(r["payload"])): r["reason"] for r in rows}
    # A letter keeps its payload's first 64 KiB (migrations/0016_dead_letter_size.sql).
    expected = {(m.topic, m.payload[:KEPT_PAYLOAD_BYTES]): str(m.reason) for m in truth.rejected}
    assert found == expected


async def assert_health_recorded(pool: asyncpg.Pool, truth: GroundTruth) -> None:
    """Every expected health event is recorded once, and nothing else is."""
    rows = await pool.fetch("SELECT device_kind, device_id, ts, event FROM device_events")
    found = {(DeviceKind(r["device_kind"]), r["device_id"], r["ts"], r["event"]) for r in rows}
    assert len(found) == len(rows)
    assert found == {(kind, device, ts, str(event)) for kind, device, ts, event in truth.health}
