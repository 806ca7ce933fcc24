"""Poison messages: whatever is wrong with a message, it ends stored or dead-lettered.

Hostile JSON (nesting past the parser's recursion limit, integers past the digit limit, huge
exponents, duplicate keys, long strings, mixed arrays) goes through a real Mosquitto and
PostgreSQL beside a valid reading; a bug injected into batch handling is isolated to the one
message that triggers it; a worker that cannot store anything ends instead of idling.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from citytel.config import Settings
from citytel.domain import DeadLetter, DecodedMessage, DeviceKind, Reason
from citytel.errors import IngestFailed
from citytel.ingest import pipeline
from citytel.ingest.pipeline import run_ingest
from citytel.storage.writer import BatchOutcome, store_batch
from tests.integration.conftest import Fleet, RunningIngest, publish_raw, wait_until

pytestmark = pytest.mark.integration

# Payloads stay under citytel's 64 KiB limit, so that the parser, not the size check, meets them.
hostile_json = st.one_of(
    st.integers(1, 30_000).map(lambda n: "[" * n + "]" * n),
    st.integers(1, 12_000).map(lambda n: '{"a":' * n + "0" + "}" * n),
    st.integers(1, 20_000).map(lambda n: '[{"b":' * n + "1" + "}]" * n),
    st.integers(4_000, 30_000).map(lambda n: "9" * n),
    st.integers(4_000, 30_000).map(lambda n: "-0." + "0" * n + "1"),
    st.sampled_from(["1e999999", "-1e400", "1E-99999", "2e308", "123456789e-400"]),
    st.integers(1_000, 60_000).map(lambda n: json.dumps("x" * n)),
    st.lists(
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8)),
        max_size=8,
    ).map(json.dumps),
)


def _now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


@st.composite
def native_payloads(draw: st.DrawFn, kind: DeviceKind) -> bytes:
    """A hostile value as the whole payload, as a field, or hidden behind a duplicate key."""
    hostile = draw(hostile_json)
    field = draw(
        st.sampled_from(
            ["ts", "battery_pct", "fill_pct" if kind is DeviceKind.WASTE else "occupied"]
        )
    )
    value = '"fill_pct":50' if kind is DeviceKind.WASTE else '"occupied":true'
    ts = f'"ts":{_now_ms()}'
    shape = draw(st.sampled_from(["whole", "field", "duplicate", "array"]))
    if shape == "whole":
        text = hostile
    elif shape == "field":
        text = "{" + ",".join(p for p in (ts, value) if not p.startswith(f'"{field}"'))
        text += f',"{field}":{hostile}' + "}"
    elif shape == "duplicate":
        # The same key twice: JSON parsers keep the last one, which is the hostile value here.
        text = "{" + ts + "," + value + f',"{field}":{hostile}' + "}"
    else:
        text = "[{" + ts + "," + value + "}," + hostile + "]"
    return bytes(text, "utf-8")


@st.composite
def lorawan_messages(draw: st.DrawFn, tag: str) -> tuple[str, bytes]:
    """A network-server uplink of an unregistered sensor, with a hostile part."""
    hostile: str = draw(hostile_json)
    n = draw(st.integers(0, 0xFFFF))
    eui = f"FF{tag[:6].upper()}{n:08X}"
    network = draw(st.sampled_from(["ttn", "chirpstack_v4", "chirpstack_v3", "whole"]))
    if network == "ttn":
        topic = f"v3/poison-{tag}@ttn/devices/dev-{n}/up"
        payload = (
            '{"end_device_ids":{"device_id":"dev-' + str(n) + '","dev_eui":"' + eui + '"},'
            '"received_at":"' + datetime.now(UTC).isoformat() + '",'
            '"uplink_message":{"f_port":1,"f_cnt":1,"frm_payload":"AQI=",'
            '"decoded_payload":' + hostile + "}}"
        )
    elif network == "chirpstack_v4":
        topic = f"application/poison-{tag}/device/{eui.lower()}/event/up"
        payload = (
            '{"deviceInfo":{"devEui":"' + eui.lower() + '","applicationId":"poison-' + tag + '"},'
            '"time":"' + datetime.now(UTC).isoformat() + '","fCnt":1,"fPort":1,"data":"AQI=",'
            '"object":' + hostile + "}"
        )
    elif network == "chirpstack_v3":
        topic = f"application/poison-{tag}/device/{eui.lower()}/event/up"
        payload = json.dumps(
            {"applicationID": f"poison-{tag}", "devEUI": eui.lower(), "fCnt": 1, "fPort": 1,
             "data": "AQI=", "objectJSON": hostile}
        )  # fmt: skip
    else:
        topic = f"v3/poison-{tag}@ttn/devices/dev-{n}/up"
        payload = hostile
    return topic, payload.encode()


def _distinct_devices(fleet: Fleet, kind: DeviceKind) -> list[str]:
    return fleet.containers if kind is DeviceKind.WASTE else fleet.spots


def _sha256(payload: bytes) -> bytes:
    return hashlib.sha256(payload).digest()


async def _device_stored(pool: asyncpg.Pool, kind: DeviceKind, device: str) -> bool:
    table, column = (
        ("waste_readings", "container_id")
        if kind is DeviceKind.WASTE
        else ("parking_readings", "spot_id")
    )
    query = f"SELECT EXISTS (SELECT 1 FROM {table} WHERE {column} = $1)"
    return bool(await pool.fetchval(query, device))


async def test_hostile_json_never_stalls_a_batch(
    settings: Settings,
    fleet: Fleet,
    pool: asyncpg.Pool,
    ingest: Callable[[], Awaitable[RunningIngest]],
) -> None:
    """Every hostile message ends dead-lettered or stored, and the valid one beside it is stored."""
    running = await ingest()
    root = settings.mqtt_topic_root
    tag = uuid.uuid4().hex[:8]
    totals = {"messages": 0, "dead": 0}

    @hypothesis_settings(
        max_examples=20,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        kinds=st.lists(st.sampled_from(DeviceKind), min_size=1, max_size=5),
        data=st.data(),
        uplinks=st.lists(lorawan_messages(tag), max_size=3),
    )
    def run(kinds: list[DeviceKind], data: st.DataObject, uplinks: list[tuple[str, bytes]]) -> None:
        # Each native message has a device of its own, so "stored" can be seen per message.
        used = {DeviceKind.WASTE: 0, DeviceKind.PARKING: 0}
        native: list[tuple[DeviceKind, str, str, bytes]] = []
        for kind in kinds:
            device = _distinct_devices(fleet, kind)[used[kind]]
            used[kind] += 1
            topic = f"{root}/default/{kind.value}/{device}"
            native.append((kind, device, topic, data.draw(native_payloads(kind))))
        control = fleet.containers[-1]
        control_message = (
            f"{root}/default/waste/{control}",
            json.dumps({"ts": _now_ms(), "fill_pct": 42}).encode(),
        )
        asyncio.run(one_example(native, uplinks, control, control_message))

    async def one_example(
        native: Sequence[tuple[DeviceKind, str, str, bytes]],
        uplinks: Sequence[tuple[str, bytes]],
        control: str,
        control_message: tuple[str, bytes],
    ) -> None:
        example_pool = await asyncpg.create_pool(
            settings.database_url.get_secret_value(), min_size=1, max_size=2
        )
        try:
            await example_pool.execute(
                "TRUNCATE waste_readings, parking_readings, container_latest, spot_latest,"
                " dead_letters"
            )
            batch = [(t, p) for _, _, t, p in native] + list(uplinks) + [control_message]
            publish_raw(settings, batch)

            async def accounted() -> bool:
                # By the hash of the whole payload: a letter keeps only the first 64 KiB.
                dead = {
                    (r["topic"], bytes(r["payload_sha256"]))
                    for r in await example_pool.fetch(
                        "SELECT topic, payload_sha256 FROM dead_letters"
                    )
                }
                if not await _device_stored(example_pool, DeviceKind.WASTE, control):
                    return False
                if not all((t, _sha256(p)) in dead for t, p in uplinks):
                    return False
                for kind, device, topic, payload in native:
                    if (topic, _sha256(payload)) not in dead and not await _device_stored(
                        example_pool, kind, device
                    ):
                        return False
                return True

            await wait_until(accounted, within=30)
            letters = await example_pool.fetch(
                "SELECT topic, payload_sha256, times_received FROM dead_letters"
            )
            # A letter counts one reception per copy the batch held: none was redelivered.
            published = Counter((t, _sha256(p)) for t, p in batch)
            assert all(
                r["times_received"] == published[(r["topic"], bytes(r["payload_sha256"]))]
                for r in letters
            )
            assert not running.task.done(), "ingest stopped"
            totals["messages"] += len(batch)
            totals["dead"] += len(letters)
        finally:
            await example_pool.close()

    await asyncio.to_thread(run)
    assert totals["dead"] > 0
    # Still consuming after all of it.
    last = fleet.containers[0]
    publish_raw(
        settings,
        [(f"{root}/default/waste/{last}", json.dumps({"ts": _now_ms(), "fill_pct": 7}).encode())],
    )
    await wait_until(lambda: _stored_fill(pool, last, 7.0), within=20)


async def _stored_fill(pool: asyncpg.Pool, container: str, fill: float) -> bool:
    value = await pool.fetchval(
        "SELECT fill_pct FROM container_latest WHERE container_id = $1", container
    )
    return bool(value == fill)


def _inject_bug(monkeypatch: pytest.MonkeyPatch, culprit: str) -> None:
    """Make storing any batch that holds ``culprit``'s reading raise, as a bug of ours would."""
    real = store_batch

    async def buggy(
        pool: asyncpg.Pool, decoded: Sequence[DecodedMessage], rejected: Sequence[DeadLetter]
    ) -> BatchOutcome:
        if any(m.device_id == culprit for m in decoded):
            message = "injected bug"
            raise RuntimeError(message)
        return await real(pool, decoded, rejected)

    monkeypatch.setattr(pipeline, "store_batch", buggy)


async def test_an_unexpected_exception_is_isolated_to_its_message(
    settings: Settings,
    fleet: Fleet,
    pool: asyncpg.Pool,
    ingest: Callable[[], Awaitable[RunningIngest]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bug that breaks a batch: its good messages are stored, the culprit dead-lettered."""
    culprit = fleet.containers[3]
    _inject_bug(monkeypatch, culprit)
    running = await ingest()
    root = settings.mqtt_topic_root
    ts = _now_ms()
    good = [
        (f"{root}/default/waste/{c}", json.dumps({"ts": ts, "fill_pct": 10 + i}).encode())
        for i, c in enumerate(fleet.containers[:3] + fleet.containers[4:10])
    ]
    bad = (f"{root}/default/waste/{culprit}", json.dumps({"ts": ts, "fill_pct": 99}).encode())
    publish_raw(settings, [*good[:4], bad, *good[4:]])

    async def settled() -> bool:
        stored = await pool.fetchval("SELECT count(*) FROM waste_readings")
        letters = await pool.fetchval("SELECT count(*) FROM dead_letters")
        return bool(stored == len(good) and letters == 1)

    await wait_until(settled, within=30)
    letter = await pool.fetchrow("SELECT topic, payload, reason, detail FROM dead_letters")
    assert letter is not None
    assert (letter["topic"], bytes(letter["payload"])) == bad
    assert letter["reason"] == Reason.UNREADABLE
    assert "RuntimeError" in letter["detail"]
    assert not await pool.fetchval(
        "SELECT EXISTS (SELECT 1 FROM waste_readings WHERE container_id = $1)", culprit
    )
    # Still consuming: a later reading is stored, and the failure was counted.
    after = fleet.containers[12]
    reading = json.dumps({"ts": ts, "fill_pct": 5}).encode()
    publish_raw(settings, [(f"{root}/default/waste/{after}", reading)])
    await wait_until(lambda: _stored_fill(pool, after, 5.0), within=20)
    stats = await running.stop()
    assert stats.batch_failures >= 1
    assert stats.dead_letters[Reason.UNREADABLE] == 1


async def test_a_worker_that_cannot_store_anything_exits(
    settings: Settings, fleet: Fleet, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When even the dead-letter store fails with a bug, ingest ends with an error, not idles."""

    async def broken(*_args: Any) -> Any:
        message = "injected bug"
        raise RuntimeError(message)

    monkeypatch.setattr(pipeline, "store_batch", broken)
    monkeypatch.setattr(pipeline, "store_dead_letters", broken)
    stop, subscribed = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(run_ingest(settings, stop=stop, subscribed=subscribed))
    try:
        async with asyncio.timeout(10):
            await subscribed.wait()
        root = settings.mqtt_topic_root
        publish_raw(
            settings,
            [
                (
                    f"{root}/default/waste/{fleet.containers[0]}",
                    json.dumps({"ts": _now_ms(), "fill_pct": 5}).encode(),
                )
            ],
        )
        with pytest.raises(IngestFailed, match="RuntimeError"):
            async with asyncio.timeout(30):
                await task
    finally:
        stop.set()
        if not task.done():
            async with asyncio.timeout(30):
                await asyncio.gather(task, return_exceptions=True)
    assert await pool.fetchval("SELECT count(*) FROM waste_readings") == 0
