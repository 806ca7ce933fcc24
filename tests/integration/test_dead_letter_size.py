"""Dead letters stay small: an oversized payload is kept truncated, and old letters are pruned."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest

from citytel.config import Settings
from citytel.domain import DeadLetter, DeviceKind, Reason
from citytel.formats.topics import native_topic
from citytel.storage.dead_letters import prune_dead_letters
from citytel.storage.writer import KEPT_PAYLOAD_BYTES, store_dead_letters
from tests.integration.conftest import Fleet, RunningIngest, publish_raw, wait_until

pytestmark = pytest.mark.integration

# Under the shipped broker's max_packet_size (256 KiB), over the 64 KiB a letter keeps.
HUGE = b"[" + b" " * (200 * 1024) + b"]"


async def test_oversized_payload_is_kept_truncated_with_its_size_and_full_hash(
    settings: Settings,
    fleet: Fleet,
    pool: asyncpg.Pool,
    ingest: Callable[[], Awaitable[RunningIngest]],
    api: httpx.AsyncClient,
) -> None:
    """A 200 KiB payload is kept as its first 64 KiB with its size and the whole payload's hash."""
    await ingest()
    topic = native_topic(settings.mqtt_topic_root, "default", DeviceKind.WASTE, fleet.containers[0])
    await asyncio.to_thread(publish_raw, settings, [(topic, HUGE), (topic, HUGE)])

    async def counted_twice() -> bool:
        return bool(await pool.fetchval("SELECT sum(times_received) FROM dead_letters") == 2)

    await wait_until(counted_twice)
    row = await pool.fetchrow(
        "SELECT length(payload) AS kept, payload_bytes, payload_truncated, payload_sha256, reason"
        " FROM dead_letters"
    )
    assert row is not None
    assert await pool.fetchval("SELECT count(*) FROM dead_letters") == 1
    assert row["reason"] == Reason.PAYLOAD_TOO_LARGE.value
    assert row["kept"] == KEPT_PAYLOAD_BYTES == 64 * 1024
    assert row["payload_bytes"] == len(HUGE)
    assert row["payload_truncated"] is True
    assert bytes(row["payload_sha256"]) == hashlib.sha256(HUGE).digest()

    listed = await api.get("/v1/dead-letters", params={"limit": 1000})
    assert listed.status_code == 200
    assert len(listed.content) < 200 * 1024
    item = listed.json()["items"][0]
    assert item["payload_bytes"] == len(HUGE)
    assert item["payload_truncated"] is True


async def test_truncated_letter_is_refused_for_replay_and_stays(
    pool: asyncpg.Pool, api: httpx.AsyncClient
) -> None:
    """Replaying a truncated letter is a 409 (one) or an outcome that names it (many); it stays."""
    now = datetime.now(UTC)
    await store_dead_letters(
        pool,
        [DeadLetter("citytel/v1/default/waste/X-1", HUGE, Reason.PAYLOAD_TOO_LARGE, "big", now)],
    )
    letter_id = await pool.fetchval("SELECT id FROM dead_letters")

    one = await api.post(f"/v1/dead-letters/{letter_id}/replay")
    assert one.status_code == 409, one.text
    assert "truncated" in one.json()["detail"]

    many = await api.post("/v1/dead-letters/replay", json={"all": True})
    assert many.status_code == 200, many.text
    assert many.json()["resolved"] == 0
    assert many.json()["truncated"] == 1
    assert await pool.fetchval("SELECT count(*) FROM dead_letters") == 1


async def test_letters_older_than_the_retention_are_pruned(
    pool: asyncpg.Pool, database_url: str
) -> None:
    """Letters last received before the retention period go; recent ones stay."""
    now = datetime.now(UTC)
    topic = "citytel/v1/default/waste/X-1"
    await store_dead_letters(
        pool,
        [
            DeadLetter(topic, b"old", Reason.INVALID_JSON, "x", now - timedelta(days=40)),
            DeadLetter(topic, b"recent", Reason.INVALID_JSON, "x", now - timedelta(days=20)),
        ],
    )
    assert await prune_dead_letters(pool, timedelta(days=30)) == 1
    kept = await pool.fetch("SELECT payload FROM dead_letters")
    assert [bytes(r["payload"]) for r in kept] == [b"recent"]

    env = {
        **os.environ,
        "CITYTEL_DATABASE_URL": database_url,
        "CITYTEL_DEAD_LETTER_RETENTION_DAYS": "10",
    }
    pruned = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "citytel", "dead-letters", "prune"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert pruned.returncode == 0, pruned.stderr
    assert "pruned 1 dead letter" in pruned.stderr
    assert await pool.fetchval("SELECT count(*) FROM dead_letters") == 0
