"""A streaming replica serves the API's reads while it keeps up; the primary when it does not."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import psycopg
import pytest
from pydantic import SecretStr

from citytel.config import Settings
from citytel.domain import DEFAULT_GATEWAY
from citytel.storage.fleet import UPSERT_SPOTS
from citytel.storage.migrate import migrate
from tests.integration.conftest import serve_api, wait_until
from tests.integration.services import (
    PRIMARY_OPTIONS,
    Broker,
    PgCluster,
    running_cluster,
    running_standby,
    with_database,
)
from tests.integration.test_metrics import scrape

pytestmark = pytest.mark.integration

SPOT = "RR-001"
HERE = {"lat": 33.5731, "lon": -7.5898}
MAX_LAG_S = 3.0


@dataclass
class Replicated:
    """A primary with a migrated database, and a hot standby streaming from it."""

    primary_url: str
    replica_url: str
    standby: PgCluster

    def api_url(self, url: str) -> str:
        """``url`` as the API's own role: its grants must do on the primary and the standby."""
        return url.replace("postgresql://postgres@", "postgresql://citytel_api@", 1)


@pytest.fixture(scope="module")
def replicated(store: str) -> Iterator[Replicated]:
    """A cluster of the test's own (wal_level replica) and a standby made by pg_basebackup -R."""
    with running_cluster(timescaledb=store == "timescaledb", options=PRIMARY_OPTIONS) as primary:
        with psycopg.connect(primary.url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE citytel")
        primary_url = with_database(primary.url, "citytel")
        migrate(Settings(), database_url=primary_url)
        with running_standby(primary) as standby:
            yield Replicated(primary_url, with_database(standby.url, "citytel"), standby)


@pytest.fixture
async def primary(replicated: Replicated) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the primary's database."""
    pool = await asyncpg.create_pool(replicated.primary_url, min_size=1, max_size=2)
    yield pool
    await pool.close()


@pytest.fixture
async def standby(replicated: Replicated) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the standby (superuser: it pauses and resumes replay)."""
    conn = await asyncpg.connect(replicated.replica_url)
    yield conn
    # The test stops the standby under it: no goodbye to send.
    conn.terminate()


async def pause_replay(standby: asyncpg.Connection) -> None:
    """Stop the standby replaying WAL, and wait until it has stopped."""
    await standby.execute("SELECT pg_wal_replay_pause()")

    async def paused() -> bool:
        return bool(await standby.fetchval("SELECT pg_get_wal_replay_pause_state() = 'paused'"))

    await wait_until(paused, within=10)


async def set_spot(pool: asyncpg.Pool, *, occupied: bool) -> None:
    """The spot's latest state, written on the primary."""
    await pool.execute(
        "INSERT INTO spot_latest (spot_id, ts, occupied, last_seen) VALUES ($1, $2, $3, $2)"
        " ON CONFLICT (spot_id) DO UPDATE SET occupied = $3, ts = $2, last_seen = $2,"
        " changed_xid = pg_current_xact_id()",
        SPOT,
        datetime.now(UTC),
        occupied,
    )


async def status(api: httpx.AsyncClient) -> str:
    """The spot's status from the SQL read route."""
    response = await api.get(f"/v1/parking/spots/{SPOT}")
    assert response.status_code == 200, response.text
    value: str = response.json()["status"]
    return value


async def live_free(api: httpx.AsyncClient) -> bool:
    """Whether the live view (never the database fallback) lists the spot as free."""
    response = await api.get("/v1/parking/free", params={**HERE, "radius_m": 100})
    assert response.status_code == 200, response.text
    assert response.headers["x-citytel-view"] == "live"
    return SPOT in [item["id"] for item in response.json()["items"]]


async def ready(api: httpx.AsyncClient) -> dict[str, Any]:
    """/readyz's answer, which must stay 200 whatever the replica does."""
    response = await api.get("/readyz")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def replica_is(api: httpx.AsyncClient, state: str) -> bool:
    return bool((await ready(api))["checks"].get("replica") == state)


async def view_read_since(api: httpx.AsyncClient, started: float) -> bool:
    """Whether the live view has been read from the database after monotonic time ``started``."""
    found = await scrape(api, "/metrics")
    age = found.samples.get(("citytel_api_live_view_age_seconds", ()))
    return age is not None and age < time.monotonic() - started


async def test_reads_follow_the_replica_and_fall_back_when_it_lags(
    replicated: Replicated,
    primary: asyncpg.Pool,
    standby: asyncpg.Connection,
    broker: Broker,
) -> None:
    """Reads (SQL routes and the live view) show the paused replica's older state while its lag
    is under the limit, the primary's once it passes it, the replica's again after it caught up;
    an unreachable replica sends reads to the primary. /readyz and /metrics tell the lag."""
    await primary.execute(
        UPSERT_SPOTS,
        [SPOT],
        [HERE["lon"]],
        [HERE["lat"]],
        ["anfa"],
        ["standard"],
        [DEFAULT_GATEWAY],
    )
    await set_spot(primary, occupied=False)
    settings = Settings(
        database_url=SecretStr(replicated.api_url(replicated.primary_url)),
        database_read_url=SecretStr(replicated.api_url(replicated.replica_url)),
        database_read_max_lag_s=MAX_LAG_S,
        database_read_check_s=0.2,
        mqtt_url=broker.url,
        api_live_refresh_ms=100,
    )
    async with serve_api(settings) as api:
        # Caught up: the replica answers, and it has the spot free.
        await wait_until(lambda: replica_is(api, "ok"), within=15)
        assert await status(api) == "free"
        await wait_until(lambda: live_free(api), within=10)
        scraped = await scrape(api, "/metrics")
        assert scraped.value("citytel_api_replica_reads") == 1
        assert scraped.value("citytel_api_replica_lag_seconds") < MAX_LAG_S

        # Replay paused, the spot taken on the primary: reads still show the replica's state.
        await pause_replay(standby)
        await set_spot(primary, occupied=True)
        written = time.monotonic()
        assert await status(api) == "free"
        await wait_until(lambda: view_read_since(api, written), within=10)
        assert await live_free(api)
        assert await replica_is(api, "ok")

        # Past the limit, reads fall back to the primary: the route and the live view see it.
        await wait_until(lambda: replica_is(api, "lagging"), within=MAX_LAG_S + 10)
        body = await ready(api)
        assert body["replica_lag_s"] >= MAX_LAG_S  # rounded to 0.1 s
        assert str(replicated.standby.port) not in str(body)
        assert "127.0.0.1" not in str(body)
        assert await status(api) == "occupied"
        await wait_until(lambda: _not(live_free(api)), within=10)
        scraped = await scrape(api, "/metrics")
        assert scraped.value("citytel_api_replica_reads") == 0
        assert scraped.value("citytel_api_replica_lag_seconds") > MAX_LAG_S

        # Replay resumed: the replica catches up and reads go back to it. Paused again and the
        # spot freed on the primary, the reads show the replica's (occupied) state: they are
        # the replica's again.
        await standby.execute("SELECT pg_wal_replay_resume()")
        await wait_until(lambda: replica_is(api, "ok"), within=15)
        assert (await scrape(api, "/metrics")).value("citytel_api_replica_reads") == 1
        await pause_replay(standby)
        await set_spot(primary, occupied=False)
        written = time.monotonic()
        assert await status(api) == "occupied"
        await wait_until(lambda: view_read_since(api, written), within=10)
        assert not await live_free(api)
        assert await replica_is(api, "ok")
        await standby.execute("SELECT pg_wal_replay_resume()")

        # The replica stopped: reads go to the primary; /readyz says so and stays ready.
        await asyncio.to_thread(replicated.standby.stop)
        await wait_until(lambda: replica_is(api, "unavailable"), within=15)
        moved = time.monotonic()
        assert "replica_lag_s" not in await ready(api)
        assert await status(api) == "free"
        # The live view outlived the connections the replica's shutdown broke: it reads the
        # primary now.
        await wait_until(lambda: view_read_since(api, moved), within=10)
        assert await live_free(api)
        scraped = await scrape(api, "/metrics")
        assert scraped.value("citytel_api_replica_reads") == 0
        assert "citytel_api_replica_lag_seconds" not in scraped.names


async def _not(check: Any) -> bool:
    return not await check
