"""Property-based fuzzing of topics and payloads against the running pipeline.

Whatever arrives, ingestion stays up, and every message ends either stored (all its readings
present) or dead-lettered: the two add up to what was published.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from citytel.config import Settings
from citytel.domain import DEFAULT_GATEWAY, DeviceKind
from citytel.errors import RejectedMessage
from citytel.formats.native import decode_native
from citytel.formats.topics import parse_native_topic
from simulators.fleet import Fleet as SimFleet
from tests.integration.conftest import publish_raw, wait_until
from tests.integration.processes import IngestProcess

pytestmark = [pytest.mark.integration, pytest.mark.faults]

NOW = datetime.now(UTC)
segment_text = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/+#"), max_size=12
)
recent = st.datetimes(
    min_value=(NOW - timedelta(days=30)).replace(tzinfo=None),
    max_value=NOW.replace(tzinfo=None),
    timezones=st.just(UTC),
)
timestamps = st.one_of(
    recent.map(lambda d: d.isoformat()),
    recent.map(lambda d: int(d.timestamp() * 1000)),
    st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat()),
    st.integers(min_value=-(2**40), max_value=2**45),
    st.text(max_size=30),
    st.floats(),
    st.none(),
)
numbers = st.one_of(
    st.floats(allow_nan=True), st.integers(-500, 500), st.text(max_size=5), st.booleans()
)
json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


def reading_objects(kind: DeviceKind) -> st.SearchStrategy[dict[str, Any]]:
    value = (
        {"fill_pct": numbers}
        if kind is DeviceKind.WASTE
        else {"occupied": st.one_of(st.booleans(), numbers)}
    )
    return st.fixed_dictionaries({"ts": timestamps, **value}, optional={"battery_pct": numbers})


def encode(body: Any) -> bytes:
    return json.dumps(body, allow_nan=True).encode()


@st.composite
def messages(draw: st.DrawFn, root: str, fleet: SimFleet) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(DeviceKind))
    known = (
        [c.id for c in fleet.containers]
        if kind is DeviceKind.WASTE
        else [s.id for s in fleet.spots]
    )
    # Mostly well-addressed, so that payload checks and storage are reached as often as topics.
    device = draw(st.one_of(st.sampled_from(known), st.sampled_from(known), segment_text))
    kind_segment = draw(st.one_of(st.just(kind.value), st.just(kind.value), segment_text))
    # The fleet's devices are bound to the default gateway: any other one is wrong_gateway.
    gateway = draw(st.one_of(st.just(DEFAULT_GATEWAY), st.just("gw-2"), segment_text))
    topic = f"{root}/{gateway}/{kind_segment}/{device}"
    payload = draw(
        st.one_of(
            reading_objects(kind).map(encode),
            st.lists(reading_objects(kind), min_size=1, max_size=4).map(encode),
            json_values.map(encode),
            st.binary(max_size=64),
        )
    )
    return topic, payload


def readings_of(root: str, topic: str, payload: bytes) -> list[tuple[DeviceKind, str, datetime]]:
    """The (kind, device, ts) keys a message stands for if it is valid; raises if it is not."""
    address = parse_native_topic(root, topic)
    decoded = decode_native(
        address.kind,
        address.device_id,
        payload,
        now=datetime.now(UTC),
        max_future=timedelta(minutes=5),
    )
    return [(address.kind, address.device_id, r.ts) for r in decoded]


async def accounted(
    pool: asyncpg.Pool, root: str, batch: list[tuple[str, bytes]]
) -> tuple[int, int] | None:
    """(stored, dead-lettered) counts once each message of ``batch`` is one or the other."""
    dead = {
        (r["topic"], bytes(r["payload"]))
        for r in await pool.fetch("SELECT topic, payload FROM dead_letters")
    }
    stored_keys = {
        (DeviceKind.WASTE, r["container_id"], r["ts"])
        for r in await pool.fetch("SELECT container_id, ts FROM waste_readings")
    } | {
        (DeviceKind.PARKING, r["spot_id"], r["ts"])
        for r in await pool.fetch("SELECT spot_id, ts FROM parking_readings")
    }
    stored = dead_lettered = 0
    for topic, payload in batch:
        if (topic, payload) in dead:
            dead_lettered += 1
            continue
        try:
            keys = readings_of(root, topic, payload)
        except RejectedMessage:
            return None  # refused, but not (yet) in the dead letters
        if not all(key in stored_keys for key in keys):
            return None
        stored += 1
    return stored, dead_lettered


async def test_every_message_ends_stored_or_dead_lettered(
    settings: Settings, sim_fleet: SimFleet, tmp_path: Path
) -> None:
    """Fuzzed topics and payloads never stop ingestion, and each ends stored or dead-lettered."""
    worker = IngestProcess(settings, tmp_path / "ingest.log")
    worker.start()
    root = settings.mqtt_topic_root
    published = {"stored": 0, "dead": 0, "total": 0}

    @hypothesis_settings(
        max_examples=25,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(batch=st.lists(messages(root, sim_fleet), min_size=1, max_size=25))
    def run(batch: list[tuple[str, bytes]]) -> None:
        asyncio.run(one_example(batch))

    async def one_example(batch: list[tuple[str, bytes]]) -> None:
        example_pool = await asyncpg.create_pool(
            settings.database_url.get_secret_value(), min_size=1, max_size=2
        )
        try:
            await example_pool.execute(
                "TRUNCATE waste_readings, parking_readings, container_latest, spot_latest,"
                " dead_letters"
            )
            publish_raw(settings, batch)
            outcome: list[tuple[int, int]] = []

            async def done() -> bool:
                result = await accounted(example_pool, root, batch)
                if result is not None:
                    outcome.append(result)
                return result is not None

            await wait_until(done, within=30)
            stored, dead = outcome[-1]
            assert stored + dead == len(batch)
            total_dead = await example_pool.fetchval(
                "SELECT coalesce(sum(times_received), 0) FROM dead_letters"
            )
            assert total_dead == dead
            assert worker.process is not None
            assert worker.process.poll() is None, "ingest died"
            published["stored"] += stored
            published["dead"] += dead
            published["total"] += len(batch)
        finally:
            await example_pool.close()

    try:
        await asyncio.to_thread(run)
    finally:
        worker.stop()
    assert published["stored"] + published["dead"] == published["total"] > 0
    assert published["stored"] > 0
    assert published["dead"] > 0
