"""The whole path: MQTT → ingest → PostgreSQL → HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest

from citytel.config import Settings
from citytel.domain import DeviceKind
from citytel.formats.native import ParkingPayload, WastePayload, encode_native
from citytel.formats.topics import native_topic
from simulators.publisher import publish_messages
from tests.integration.conftest import Fleet, RunningIngest, wait_until

pytestmark = pytest.mark.integration


async def count(pool: asyncpg.Pool, query: str) -> int:
    value = await pool.fetchval(query)
    return int(value)


async def test_out_of_order_reading_does_not_overwrite_latest(
    settings: Settings,
    fleet: Fleet,
    pool: asyncpg.Pool,
    ingest: Callable[[], Awaitable[RunningIngest]],
    api: httpx.AsyncClient,
) -> None:
    """An older reading arriving after a newer one is stored but leaves the latest state alone."""
    await ingest()
    container = fleet.containers[0]
    topic = native_topic(settings.mqtt_topic_root, "gw-1", DeviceKind.WASTE, container)
    now = datetime.now(UTC).replace(microsecond=0)
    newer = WastePayload(ts=now - timedelta(minutes=1), fill_pct=70, battery_pct=88)
    older = WastePayload(ts=now - timedelta(minutes=30), fill_pct=20, battery_pct=95)
    await asyncio.to_thread(publish_messages, settings, [(topic, encode_native([newer]))])

    async def newer_stored() -> bool:
        return await count(pool, "SELECT count(*) FROM waste_readings") == 1

    await wait_until(newer_stored)
    await asyncio.to_thread(publish_messages, settings, [(topic, encode_native([older]))])

    async def both_stored() -> bool:
        return await count(pool, "SELECT count(*) FROM waste_readings") == 2  # noqa: PLR2004

    await wait_until(both_stored)
    body = (await api.get(f"/v1/containers/{container}")).json()
    assert body["fill_pct"] == 70
    assert body["battery_pct"] == 88
    assert datetime.fromisoformat(body["measured_at"]) == newer.ts
