"""A `citytel ingest` process killed with SIGKILL in mid-stream loses nothing once restarted."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest

from citytel.config import Settings
from simulators.fleet import Fleet as SimFleet
from simulators.stream import ground_truth
from tests.integration.conftest import assert_stored_exactly, publish_stream, stream, wait_until

pytestmark = pytest.mark.integration


def start_ingest(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    """``citytel ingest`` as its own process, like the test's; waits for its subscription."""
    env = {
        **os.environ,
        "CITYTEL_DATABASE_URL": settings.database_url.get_secret_value(),
        "CITYTEL_MQTT_URL": settings.mqtt_url,
        "CITYTEL_MQTT_TOPIC_ROOT": settings.mqtt_topic_root,
        "CITYTEL_MQTT_CLIENT_ID": settings.mqtt_client_id,
        "CITYTEL_MQTT_SHARE_GROUP": settings.mqtt_share_group,
        "CITYTEL_INGEST_BATCH_SIZE": "200",
        "CITYTEL_INGEST_FLUSH_MS": "20",
    }
    before = log.read_text().count("subscribed to") if log.exists() else 0
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "citytel", "ingest"], env=env, stdout=out, stderr=out
        )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if log.read_text().count("subscribed to") > before:
            return process
        if process.poll() is not None:
            pytest.fail(f"citytel ingest exited early:\n{log.read_text()}")
        time.sleep(0.05)
    process.kill()
    pytest.fail(f"citytel ingest did not subscribe within 20 s:\n{log.read_text()}")


async def count_readings(pool: asyncpg.Pool) -> int:
    value = await pool.fetchval(
        "SELECT (SELECT count(*) FROM waste_readings) + (SELECT count(*) FROM parking_readings)"
    )
    return int(value)


async def test_sigkill_in_mid_stream_then_restart_stores_everything_once(
    settings: Settings, sim_fleet: SimFleet, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """SIGKILL mid-stream, restart with the same identity: every reading is stored exactly once."""
    log = tmp_path / "ingest.log"
    process = start_ingest(settings, log)
    messages = stream(
        settings, sim_fleet, 6000, rate=2000, duplicate_ratio=0.02, out_of_order_ratio=0.02
    )
    truth = ground_truth(messages)
    publishing = asyncio.create_task(asyncio.to_thread(publish_stream, settings, messages))
    try:

        async def some_stored() -> bool:
            return await count_readings(pool) >= 1000

        await wait_until(some_stored, within=30)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        killed_at = await count_readings(pool)
        assert killed_at < len(truth.readings), "the kill came too late to prove anything"

        # Messages keep arriving while the worker is dead; its session queues them.
        await asyncio.sleep(1.0)
        process = start_ingest(settings, log)
        async with asyncio.timeout(60):
            await publishing

        async def all_stored() -> bool:
            return await count_readings(pool) >= len(truth.readings)

        await wait_until(all_stored, within=60)
        # Give any redelivery time to show up as an extra row, if storage were not idempotent.
        await asyncio.sleep(0.5)
        await assert_stored_exactly(pool, truth)
    finally:
        process.terminate()
        process.wait(timeout=15)
        publishing.cancel()
