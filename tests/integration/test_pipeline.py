"""The whole path: simulated sensors → Mosquitto → ingest → PostgreSQL → HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

import asyncpg
import httpx
import pytest

from citytel.config import Settings
from citytel.domain import DeviceKind
from citytel.formats.native import ParkingPayload, WastePayload, encode_native
from simulators.fleet import Fleet as SimFleet
from simulators.stream import ground_truth
from tests.integration.conftest import (
    RunningIngest,
    assert_stored_exactly,
    publish_stream,
    raw_message,
    stream,
    wait_until,
)

pytestmark = pytest.mark.integration


async def test_simulated_readings_are_stored_once_and_served(
    settings: Settings,
    sim_fleet: SimFleet,
    pool: asyncpg.Pool,
    ingest: Callable[[], Awaitable[RunningIngest]],
    api: httpx.AsyncClient,
) -> None:
    """Simulated readings are stored exactly once; latest state is the newest; the API shows it."""
    await ingest()
    messages = stream(
        settings, sim_fleet, 3000, rate=20_000, duplicate_ratio=0.05, out_of_order_ratio=0.05
    )
    truth = ground_truth(messages)
    await asyncio.to_thread(publish_stream, settings, messages)

    async def all_stored() -> bool:
        total = await pool.fetchval(
            "SELECT (SELECT count(*) FROM waste_readings) + (SELECT count(*) FROM parking_readings)"
        )
        return bool(total >= len(truth.readings))

    await wait_until(all_stored, within=60)
    await assert_stored_exactly(pool, truth)

    for (kind, device_id), reading in truth.latest.items():
        if kind is DeviceKind.WASTE:
            assert isinstance(reading, WastePayload)
            body = (await api.get(f"/v1/containers/{device_id}")).json()
            assert body["fill_pct"] == pytest.approx(reading.fill_pct, rel=1e-6)
            assert datetime.fromisoformat(body["measured_at"]) == reading.ts
        else:
            assert isinstance(reading, ParkingPayload)
            body = (await api.get(f"/v1/parking/spots/{device_id}")).json()
            assert body["status"] == ("occupied" if reading.occupied else "free")
            assert datetime.fromisoformat(body["status_since"]) == reading.ts


async def test_out_of_order_reading_does_not_overwrite_latest(
    settings: Settings,
    sim_fleet: SimFleet,
    pool: asyncpg.Pool,
    ingest: Callable[[], Awaitable[RunningIngest]],
    api: httpx.AsyncClient,
) -> None:
    """An older reading arriving after a newer one is stored but leaves the latest state alone."""
    await ingest()
    [newer_message] = [
        m for m in stream(settings, sim_fleet, 200) if m.device_kind is DeviceKind.WASTE
    ][:1]
    [newer] = newer_message.readings
    assert isinstance(newer, WastePayload)
    older = newer.model_copy(
        update={"ts": newer.ts - timedelta(minutes=30), "fill_pct": 3.0, "battery_pct": 99.0}
    )
    late = raw_message(newer_message.topic, encode_native([older]))
    await asyncio.to_thread(publish_stream, settings, [newer_message])

    async def stored(n: int) -> bool:
        return bool(await pool.fetchval("SELECT count(*) FROM waste_readings") == n)

    await wait_until(lambda: stored(1))
    await asyncio.to_thread(publish_stream, settings, [late])
    await wait_until(lambda: stored(2))
    body = (await api.get(f"/v1/containers/{newer_message.device_id}")).json()
    assert body["fill_pct"] == pytest.approx(newer.fill_pct, rel=1e-6)
    assert body["battery_pct"] == pytest.approx(newer.battery_pct, rel=1e-6)
    assert datetime.fromisoformat(body["measured_at"]) == newer.ts
