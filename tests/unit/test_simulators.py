"""The bundled simulators: a deterministic stream whose ground truth the service must reproduce."""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from citytel.domain import DEFAULT_GATEWAY, DeviceKind, ParkingReading, WasteReading
from citytel.errors import RejectedMessage
from citytel.formats.native import ParkingPayload, WastePayload, decode_native
from citytel.formats.topics import parse_native_topic
from simulators.city import SpotModel, parking_pattern
from simulators.faults import FAULTS, TOPIC_FAULTS
from simulators.fleet import Fleet, Spot, generate_fleet
from simulators.stream import SimulatedMessage, StreamConfig, ground_truth, history_for, simulate

START = datetime(2026, 3, 14, 9, 30, tzinfo=UTC)
ROOT = "citytel/v1"
FAULTY = StreamConfig(malformed_ratio=0.1, duplicate_ratio=0.05, out_of_order_ratio=0.05)


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    return Fleet.from_geojson(generate_fleet(containers=200, spots=400))


def take(fleet: Fleet, config: StreamConfig, n: int) -> list[SimulatedMessage]:
    return list(itertools.islice(simulate(fleet, START, config), n))


def decode(message: SimulatedMessage) -> list[WasteReading | ParkingReading]:
    return decode_native(
        message.device_kind,
        message.device_id,
        message.payload,
        now=message.due,
        max_future=timedelta(minutes=5),
    )


def test_same_seed_gives_same_messages(fleet: Fleet) -> None:
    """Two streams with one seed are identical; another seed differs."""
    assert take(fleet, FAULTY, 2000) == take(fleet, FAULTY, 2000)
    other = StreamConfig(seed=7, malformed_ratio=0.1, duplicate_ratio=0.05, out_of_order_ratio=0.05)
    assert take(fleet, other, 200) != take(fleet, FAULTY, 200)


def test_fault_ratios_are_roughly_honoured(fleet: Fleet) -> None:
    """Each kind of message makes up about the share asked for."""
    kinds = Counter(m.kind for m in take(fleet, FAULTY, 10_000))
    assert 900 < kinds["malformed"] < 1100
    assert 400 < kinds["duplicate"] < 600
    assert 400 < kinds["out_of_order"] < 600


def test_fault_free_stream_is_all_valid(fleet: Fleet) -> None:
    """With the default ratios every message is valid."""
    assert {m.kind for m in take(fleet, StreamConfig(), 2000)} == {"valid"}


def test_stored_kinds_decode_to_their_ground_truth(fleet: Fleet) -> None:
    """Valid, duplicate and late payloads decode to exactly the readings they carry."""
    for message in take(fleet, FAULTY, 3000):
        if message.kind == "malformed":
            continue
        address = parse_native_topic(ROOT, message.topic)
        assert (address.kind, address.device_id) == (message.device_kind, message.device_id)
        decoded = decode(message)
        assert [r.ts for r in decoded] == [r.ts for r in message.readings]
        for reading, expected in zip(decoded, message.readings, strict=True):
            if isinstance(reading, WasteReading):
                assert reading.fill_pct == getattr(expected, "fill_pct", None)
            else:
                assert reading.occupied == getattr(expected, "occupied", None)


def test_malformed_payloads_are_rejected(fleet: Fleet) -> None:
    """Every payload fault is refused by the decoder; topic faults by topic parsing or the fleet."""
    known = {c.id for c in fleet.containers} | {s.id for s in fleet.spots}
    seen = set()
    for message in take(fleet, StreamConfig(malformed_ratio=1.0), 2000):
        assert message.readings == ()
        seen.add(message.fault)
        if message.fault == "bad_topic":
            with pytest.raises(RejectedMessage):
                parse_native_topic(ROOT, message.topic)
        elif message.fault == "unknown_device":
            assert parse_native_topic(ROOT, message.topic).device_id not in known
        else:
            with pytest.raises(RejectedMessage):
                decode(message)
    assert seen == set(FAULTS)
    assert set(TOPIC_FAULTS) <= seen


def test_timestamps_are_never_ahead_of_the_wall_clock(fleet: Fleet) -> None:
    """No reading is newer than the time its message may be published."""
    config = StreamConfig(rate=1000, speedup=600, history=timedelta(minutes=30))
    messages = take(fleet, FAULTY, 1) + take(fleet, config, 20_000)
    for message in messages:
        assert message.due.tzinfo is not None
        for reading in message.readings:
            assert reading.ts.tzinfo is not None
            assert reading.ts <= message.due
    # The simulated clock caught up with the present and then ran in real time.
    assert messages[-1].readings[0].ts > messages[-1].due - timedelta(seconds=1)


def test_each_device_reading_has_its_own_timestamp(fleet: Fleet) -> None:
    """Different readings of one device never share a ts, so none collapses in storage."""
    distinct: dict[tuple[DeviceKind, str, datetime], WastePayload | ParkingPayload] = {}
    for message in take(fleet, FAULTY, 20_000):
        for reading in message.readings:
            key = (message.device_kind, message.device_id, reading.ts)
            assert distinct.setdefault(key, reading) == reading


def test_ground_truth_latest_is_the_newest_reading(fleet: Fleet) -> None:
    """Late readings are older than one already sent, and never become a device's latest."""
    messages = take(fleet, FAULTY, 20_000)
    truth = ground_truth(messages)
    newest_before: dict[tuple[DeviceKind, str], datetime] = {}
    for message in messages:
        key = (message.device_kind, message.device_id)
        if message.kind == "out_of_order":
            assert message.readings[0].ts < newest_before[key]
        for reading in message.readings:
            newest_before[key] = max(newest_before.get(key, reading.ts), reading.ts)
    assert {k: r.ts for k, r in truth.latest.items()} == newest_before
    assert len(truth.rejected) == sum(m.kind == "malformed" for m in messages)
    assert set(truth.readings) == {
        (m.device_kind, m.device_id, r.ts) for m in messages for r in m.readings
    }


def test_duplicates_resend_an_earlier_valid_message(fleet: Fleet) -> None:
    """A duplicate is byte for byte a valid message sent before it."""
    sent: set[tuple[str, bytes]] = set()
    for message in take(fleet, FAULTY, 5000):
        if message.kind == "duplicate":
            assert (message.topic, message.payload) in sent
        if message.kind == "valid":
            sent.add((message.topic, message.payload))


def test_simulated_city_looks_plausible(fleet: Fleet) -> None:
    """Fill stays in 0-100, some containers are nearly full, spots are partly taken."""
    truth = ground_truth(take(fleet, StreamConfig(), 5000))
    waste = [r for (kind, _), r in truth.latest.items() if kind is DeviceKind.WASTE]
    parking = [r for (kind, _), r in truth.latest.items() if kind is DeviceKind.PARKING]
    fills = [getattr(r, "fill_pct", math.nan) for r in waste]
    assert all(0 <= f <= 100 for f in fills)
    assert sum(f >= 80 for f in fills) >= 5
    occupancy = sum(getattr(r, "occupied", False) for r in parking) / len(parking)
    assert 0.3 < occupancy < 0.9


def test_devices_are_published_under_their_own_gateway(fleet: Fleet) -> None:
    """Each device's readings go out under the gateway its fleet entry binds it to."""
    bound = {c.id: f"gw-{i % 3}" for i, c in enumerate(fleet.containers)}
    rebound = Fleet(
        tuple(dataclasses.replace(c, gateway=bound[c.id]) for c in fleet.containers),
        fleet.spots,
    )
    seen: dict[str, str] = {}
    for message in take(rebound, StreamConfig(), 500):
        address = parse_native_topic(ROOT, message.topic)
        seen[address.device_id] = address.gateway
    assert {g for d, g in seen.items() if d in bound} == {"gw-0", "gw-1", "gw-2"}
    assert all(seen[d] == bound.get(d, DEFAULT_GATEWAY) for d in seen)


def test_history_ends_a_run_of_known_length_now() -> None:
    """The simulated window of a timed run ends when the run does."""
    assert history_for(60, 60) == timedelta(minutes=59)
    assert history_for(None, 60) == timedelta(hours=24)


@pytest.mark.parametrize(
    "config",
    [
        StreamConfig(rate=0),
        StreamConfig(speedup=0.5),
        StreamConfig(malformed_ratio=0.7, duplicate_ratio=0.7),
        StreamConfig(history=timedelta(hours=-1)),
    ],
)
def test_impossible_settings_are_refused(fleet: Fleet, config: StreamConfig) -> None:
    """Settings that would break the stream's guarantees raise at once."""
    with pytest.raises(ValueError, match="must"):
        simulate(fleet, START, config)


def test_naive_start_is_refused(fleet: Fleet) -> None:
    """A start without a time zone is refused."""
    with pytest.raises(ValueError, match="timezone-aware"):
        simulate(fleet, START.replace(tzinfo=None), StreamConfig())


def occupied_share(zone: str, moments: list[datetime], spots: int = 60) -> list[float]:
    """The share of ``spots`` simulated spots of ``zone`` taken at each of ``moments``."""
    rng = random.Random(5)
    start = moments[0] - timedelta(days=1)
    models = [
        SpotModel.start(Spot(f"S-{i}", zone, 0, 0, "standard"), start, rng) for i in range(spots)
    ]
    shares = []
    for moment in moments:
        for model in models:
            while model.change_at <= moment:
                model.advance(model.change_at, rng)
        shares.append(sum(m.occupied for m in models) / spots)
    return shares


def test_parking_follows_the_week_of_its_kind_of_zone() -> None:
    """Business districts fill on weekday mornings and empty at night and on Sunday; residential
    streets do the opposite; industrial zones sleep at the weekend."""
    monday = datetime(2026, 3, 2, tzinfo=UTC)  # local time is UTC+1
    moments = [
        monday + timedelta(hours=2),  # Monday 03:00
        monday + timedelta(hours=10),  # Monday 11:00
        monday + timedelta(days=6, hours=10),  # Sunday 11:00
    ]
    assert {parking_pattern(z) for z in ("maarif", "anfa", "ain-sebaa", "derb-sultan")} == {
        "business",
        "residential",
        "industrial",
        "market",
    }
    night, weekday, sunday = occupied_share("maarif", moments)
    assert weekday > night + 0.4
    assert weekday > sunday + 0.25
    night, weekday, sunday = occupied_share("anfa", moments)
    assert night > weekday + 0.2
    assert sunday > weekday + 0.1
    _, weekday, sunday = occupied_share("ain-sebaa", moments)
    assert weekday > sunday + 0.5


def test_a_few_sensors_run_low_on_battery(fleet: Fleet) -> None:
    """About one sensor in fifty starts under 20 %, so the attention list has something to show."""
    truth = ground_truth(take(fleet, StreamConfig(), 5000))
    batteries = [getattr(r, "battery_pct", None) for r in truth.latest.values()]
    reported = [b for b in batteries if b is not None]
    low = sum(b < 20 for b in reported)
    assert 1 <= low <= len(reported) // 10, (low, len(reported))
