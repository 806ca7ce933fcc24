"""Outages: ingestion stops acknowledging while the database is away and resumes by itself."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from citytel.config import Settings
from citytel.ingest.pipeline import run_ingest
from simulators.fleet import Fleet as SimFleet
from simulators.stream import ground_truth
from tests.integration.conftest import assert_stored_exactly, publish_stream, stream, wait_until
from tests.integration.proxy import TcpProxy

pytestmark = pytest.mark.integration


@pytest.fixture
async def db_proxy(database_url: str) -> AsyncIterator[TcpProxy]:
    """A proxy in front of PostgreSQL that the test can cut."""
    proxy = TcpProxy(urlsplit(database_url).port or 5432)
    await proxy.start()
    yield proxy
    await proxy.cut()


async def count_readings(pool: asyncpg.Pool) -> int:
    value = await pool.fetchval(
        "SELECT (SELECT count(*) FROM waste_readings) + (SELECT count(*) FROM parking_readings)"
    )
    return int(value)


async def test_database_outage_holds_acks_then_resumes(
    settings: Settings, sim_fleet: SimFleet, pool: asyncpg.Pool, db_proxy: TcpProxy
) -> None:
    """With the database cut mid-stream, ingest retries with backoff and stores everything once."""
    parts = urlsplit(settings.database_url.get_secret_value())
    through_proxy = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{db_proxy.port}"))
    stop, subscribed = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        run_ingest(settings, stop=stop, subscribed=subscribed, database_url=through_proxy)
    )
    async with asyncio.timeout(10):
        await subscribed.wait()
    messages = stream(settings, sim_fleet, 4000, rate=2000)
    truth = ground_truth(messages)
    publishing = asyncio.create_task(asyncio.to_thread(publish_stream, settings, messages))

    async def some_stored() -> bool:
        return await count_readings(pool) >= 500

    await wait_until(some_stored)
    await db_proxy.cut()
    await asyncio.sleep(3)
    during = await count_readings(pool)
    assert during < len(truth.readings), "the outage came too late to prove anything"
    await db_proxy.start()

    async with asyncio.timeout(60):
        await publishing

    async def all_stored() -> bool:
        return await count_readings(pool) >= len(truth.readings)

    await wait_until(all_stored, within=60)
    stop.set()
    async with asyncio.timeout(30):
        stats = await task
    assert stats.retries > 0
    await assert_stored_exactly(pool, truth)
