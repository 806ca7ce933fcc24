"""Bad input goes to the dead-letter store with its bytes and reason, and ingestion goes on."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from citytel.config import Settings
from citytel.domain import DeviceKind, Reason
from citytel.formats.native import MAX_PAYLOAD_BYTES, WastePayload, encode_native
from citytel.formats.topics import native_topic
from citytel.storage.writer import KEPT_PAYLOAD_BYTES
from tests.integration.conftest import Fleet, RunningIngest, publish_raw, wait_until

pytestmark = pytest.mark.integration


def bad_messages(settings: Settings, fleet: Fleet) -> list[tuple[str, bytes, Reason]]:
    """One message of each class of bad input, with the reason it must be filed under."""
    root = settings.mqtt_topic_root
    container = native_topic(root, "default", DeviceKind.WASTE, fleet.containers[1])
    spot = native_topic(root, "default", DeviceKind.PARKING, fleet.spots[1])
    now = datetime.now(UTC)
    ts = now.isoformat()
    return [
        (container, b"fill=50", Reason.INVALID_JSON),
        (container, b'{"ts":"' + ts.encode() + b'","fill_pct":5,"x":"\xff\xfe"}', Reason.NOT_UTF8),
        (container, json.dumps({"ts": ts, "fill_pct": "full"}).encode(), Reason.WRONG_TYPE),
        (spot, json.dumps({"ts": ts, "occupied": "yes"}).encode(), Reason.WRONG_TYPE),
        (container, json.dumps({"fill_pct": 50}).encode(), Reason.MISSING_FIELD),
        (container, json.dumps({"ts": ts, "fill_pct": 140}).encode(), Reason.OUT_OF_RANGE),
        (container, b'{"ts":"' + ts.encode() + b'","fill_pct":NaN}', Reason.OUT_OF_RANGE),
        (
            container,
            json.dumps({"ts": (now + timedelta(hours=2)).isoformat(), "fill_pct": 5}).encode(),
            Reason.BAD_TIMESTAMP,
        ),
        (
            container,
            json.dumps({"ts": "1999-06-01T00:00:00Z", "fill_pct": 5}).encode(),
            Reason.BAD_TIMESTAMP,
        ),
        (
            # Older than the retention period (400 days): retention would delete it unseen.
            container,
            json.dumps({"ts": (now - timedelta(days=401)).isoformat(), "fill_pct": 5}).encode(),
            Reason.TOO_OLD,
        ),
        (
            native_topic(root, "default", DeviceKind.WASTE, "NOT-REGISTERED"),
            json.dumps({"ts": ts, "fill_pct": 5}).encode(),
            Reason.UNKNOWN_DEVICE,
        ),
        (f"{root}/default/streetlights/L-1", json.dumps({"ts": ts}).encode(), Reason.BAD_TOPIC),
        (container, b"[" + b" " * MAX_PAYLOAD_BYTES + b"]", Reason.PAYLOAD_TOO_LARGE),
    ]


async def test_each_bad_input_class_is_dead_lettered_while_ingestion_goes_on(
    settings: Settings,
    fleet: Fleet,
    pool: asyncpg.Pool,
    ingest: Callable[[], Awaitable[RunningIngest]],
) -> None:
    """Each bad-input class is dead-lettered with bytes and reason; good readings go on."""
    running = await ingest()
    bad = bad_messages(settings, fleet)
    good_topic = native_topic(
        settings.mqtt_topic_root, "default", DeviceKind.WASTE, fleet.containers[0]
    )
    start = datetime.now(UTC) - timedelta(hours=1)
    messages: list[tuple[str, bytes]] = []
    for i, (topic, payload, _) in enumerate(bad):
        good = WastePayload(ts=start + timedelta(minutes=i), fill_pct=float(i))
        messages += [(good_topic, encode_native([good])), (topic, payload)]
    await asyncio.to_thread(publish_raw, settings, messages)

    async def all_filed() -> bool:
        filed = await pool.fetchval("SELECT count(*) FROM dead_letters")
        stored = await pool.fetchval("SELECT count(*) FROM waste_readings")
        return bool(filed == len(bad) and stored == len(bad))

    await wait_until(all_filed)
    rows = await pool.fetch(
        "SELECT topic, payload, reason, detail, first_received_at FROM dead_letters"
    )
    filed = {(r["topic"], bytes(r["payload"])): r for r in rows}
    for topic, payload, reason in bad:
        row = filed[(topic, payload[:KEPT_PAYLOAD_BYTES])]
        assert row["reason"] == reason.value, (reason, row["detail"])
        assert row["detail"]
        assert row["first_received_at"].tzinfo is not None
    stats = await running.stop()
    assert sum(stats.dead_letters.values()) == len(bad)
    assert stats.readings_stored == len(bad)


async def test_redelivered_dead_letter_is_counted_not_duplicated(
    settings: Settings,
    fleet: Fleet,
    pool: asyncpg.Pool,
    ingest: Callable[[], Awaitable[RunningIngest]],
) -> None:
    """The same bad message twice is one dead letter received twice."""
    await ingest()
    topic = native_topic(settings.mqtt_topic_root, "default", DeviceKind.WASTE, fleet.containers[0])
    await asyncio.to_thread(publish_raw, settings, [(topic, b"oops"), (topic, b"oops")])

    async def counted_twice() -> bool:
        return bool(await pool.fetchval("SELECT sum(times_received) FROM dead_letters") == 2)

    await wait_until(counted_twice)
    assert await pool.fetchval("SELECT count(*) FROM dead_letters") == 1
