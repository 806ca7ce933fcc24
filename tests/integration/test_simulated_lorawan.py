"""The simulators' LoRaWAN output (real bytes, envelopes and topics) round-trips through ingest."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import asyncpg
import pytest

from citytel.config import Settings
from simulators.fleet import Fleet as SimFleet
from simulators.stream import ground_truth
from tests.integration.conftest import (
    RunningIngest,
    assert_dead_lettered,
    assert_health_recorded,
    assert_stored_exactly,
    count_readings,
    publish_stream,
    stream,
    wait_until,
)

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("network", ["ttn", "chirpstack_v4", "chirpstack_v3"])
async def test_simulated_uplinks_are_stored_as_the_simulator_meant_them(
    settings: Settings,
    sim_fleet: SimFleet,
    pool: asyncpg.Pool,
    ingest: Callable[[], Awaitable[RunningIngest]],
    network: str,
) -> None:
    """Every reading, health event and dead letter of a simulated LoRaWAN stream is as expected."""
    await ingest()
    messages = stream(
        settings,
        sim_fleet,
        1500,
        rate=10_000,
        format=network,
        network_application=f"casa-{uuid.uuid4().hex[:8]}",
        network_decoded_ratio=0.5,
        malformed_ratio=0.05,
        duplicate_ratio=0.05,
        out_of_order_ratio=0.05,
    )
    truth = ground_truth(messages)
    assert truth.health, "the stream should hold health frames too"
    await asyncio.to_thread(publish_stream, settings, messages)

    async def everything_in() -> bool:
        dead = await pool.fetchval("SELECT coalesce(sum(times_received), 0) FROM dead_letters")
        events = await pool.fetchval("SELECT count(*) FROM device_events")
        return bool(
            await count_readings(pool, at_least=len(truth.readings))
            and dead >= len(truth.rejected)
            and events >= len(truth.health)
        )

    await wait_until(everything_in, within=60)
    await asyncio.sleep(0.3)
    await assert_stored_exactly(pool, truth)
    await assert_dead_lettered(pool, truth)
    await assert_health_recorded(pool, truth)
