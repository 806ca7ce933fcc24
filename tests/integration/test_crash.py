"""A `citytel ingest` process killed with SIGKILL in mid-stream loses nothing once restarted."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from citytel.config import Settings
from simulators.fleet import Fleet as SimFleet
from simulators.stream import ground_truth
from tests.integration.conftest import (
    assert_stored_exactly,
    count_readings,
    publish_stream,
    stream,
    wait_until,
)
from tests.integration.processes import IngestProcess

pytestmark = pytest.mark.integration


async def test_sigkill_in_mid_stream_then_restart_stores_everything_once(
    settings: Settings, sim_fleet: SimFleet, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """SIGKILL mid-stream, restart with the same identity: every reading is stored exactly once."""
    worker = IngestProcess(settings, tmp_path / "ingest.log")
    worker.start()
    messages = stream(
        settings, sim_fleet, 6000, rate=2000, duplicate_ratio=0.02, out_of_order_ratio=0.02
    )
    truth = ground_truth(messages)
    publishing = asyncio.create_task(asyncio.to_thread(publish_stream, settings, messages))
    try:
        await wait_until(lambda: count_readings(pool, at_least=1000), within=30)
        worker.kill()
        killed_at = await count_readings(pool)
        assert killed_at < len(truth.readings), "the kill came too late to prove anything"

        # Messages keep arriving while the worker is dead; its session queues them.
        await asyncio.sleep(1.0)
        worker.start()
        async with asyncio.timeout(60):
            await publishing
        await wait_until(lambda: count_readings(pool, at_least=len(truth.readings)), within=60)
        # Give any redelivery time to show up as an extra row, if storage were not idempotent.
        await asyncio.sleep(0.5)
        await assert_stored_exactly(pool, truth)
    finally:
        worker.stop()
        publishing.cancel()
