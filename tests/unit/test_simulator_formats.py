"""The simulator's LoRaWAN formats: real sensor bytes in real envelopes, read back by citytel."""

from __future__ import annotations

import base64
import dataclasses
import itertools
import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from citytel.decoding import CODECS, DeviceProfile, interpret_uplink, network_fields
from citytel.domain import HealthEvent, Outcome, ParkingReading, Reason, WasteReading
from citytel.errors import RejectedMessage
from citytel.formats.envelope import Uplink
from citytel.formats.native import check_timestamp_window, decode_native
from citytel.formats.network_server import decode_lorawan
from citytel.formats.topics import parse_native_topic
from simulators import encoders
from simulators.cli import FORMATS
from simulators.encoders import Frame
from simulators.envelopes import NetworkApplication, Radio, UplinkSpec, dump, envelope
from simulators.faults import FAULT_REASONS, LORAWAN_FAULTS
from simulators.fleet import Container, Fleet, Spot, generate_fleet
from simulators.sensors import (
    MODELS,
    LevelMeasurement,
    Measurement,
    SpotMeasurement,
    bundled_profiles,
    expected,
    fill_pct_for,
    sensor_model,
)
from simulators.stream import Format, SimulatedMessage, StreamConfig, ground_truth, simulate

START = datetime(2026, 3, 14, 9, 30, tzinfo=UTC)
TS = datetime(2026, 3, 14, 9, 15, 42, 123000, tzinfo=UTC)
LORAWAN: tuple[Format, ...] = ("ttn", "chirpstack_v4", "chirpstack_v3")
MAX_FUTURE = timedelta(minutes=5)
PROFILES = bundled_profiles()
FAULTY = StreamConfig(malformed_ratio=0.1, duplicate_ratio=0.05, out_of_order_ratio=0.05)

LEVEL = [
    LevelMeasurement(distance_mm=1000, battery_pct=92.0, temperature_c=25.7),
    LevelMeasurement(distance_mm=280, battery_pct=63.4, temperature_c=-3.2),
    LevelMeasurement(distance_mm=1999, battery_pct=5.0, temperature_c=41.0),
]
SPOT = [
    SpotMeasurement(occupied=True, heartbeat=False, battery_pct=80, temperature_c=21.5),
    SpotMeasurement(occupied=False, heartbeat=True, battery_pct=63.4, temperature_c=-10.0),
    SpotMeasurement(
        occupied=True, heartbeat=False, battery_pct=5, temperature_c=3, previous_state_min=300
    ),
    SpotMeasurement(occupied=True, heartbeat=True, battery_pct=100, temperature_c=35.0),
]


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    return Fleet.from_geojson(generate_fleet(containers=120, spots=240))


def measurements(profile: DeviceProfile) -> list[Measurement]:
    if profile.level is None:
        return list(SPOT)
    return [*LEVEL, LevelMeasurement(1000, 80.0, 20.0, battery_only=True)]


def frames() -> list[tuple[str, Frame]]:
    cases = []
    for model, behaviour in MODELS.items():
        profile = PROFILES[model]
        for measurement in measurements(profile):
            battery_only = isinstance(measurement, LevelMeasurement) and measurement.battery_only
            if battery_only and behaviour.battery_only_every is None:
                continue
            cases.append((model, behaviour.encode(measurement, profile, 303)))
    return cases


def uplink_of(frame: Frame, *, network: bool) -> Uplink:
    return Uplink(
        network="ttn",
        application="app",
        device_id="dev",
        dev_eui=None,
        received_at=TS,
        f_cnt=1,
        f_port=frame.f_port,
        raw=frame.raw,
        network_decoded=dict(frame.network) if network else None,
    )


def interpret(profile: DeviceProfile, uplink: Uplink) -> tuple[Outcome, ...]:
    return interpret_uplink(profile, uplink, device_id="dev", depth_mm=2000)


def same_outcomes(ours: tuple[Outcome, ...], theirs: tuple[Outcome, ...]) -> bool:
    def key(outcome: Outcome) -> Any:
        if isinstance(outcome, HealthEvent):
            return (outcome.event, outcome.ts, outcome.battery_pct, outcome.temperature_c)
        return outcome

    return [key(o) for o in ours] == [key(o) for o in theirs]


def test_every_profile_has_an_encoder() -> None:
    """The simulator can send as every model citytel has a profile for."""
    assert set(MODELS) == set(PROFILES)


@pytest.mark.parametrize(("model", "frame"), frames())
def test_encoders_round_trip_through_citytel(model: str, frame: Frame) -> None:
    """citytel's codec reads back exactly the fields encoded; the formatter's object agrees."""
    profile = PROFILES[model]
    if profile.codec is not None:
        assert CODECS[profile.codec](frame.f_port, frame.raw) == frame.fields
        from_bytes = interpret(profile, uplink_of(frame, network=False))
    else:
        with pytest.raises(RejectedMessage) as refused:
            interpret(profile, uplink_of(frame, network=False))
        assert refused.value.reason is Reason.UNDECODABLE
        assert network_fields(profile, frame.network) == frame.fields
        from_bytes = interpret(profile, uplink_of(frame, network=True))
    from_network = interpret(profile, uplink_of(frame, network=True))
    assert same_outcomes(from_network, from_bytes)
    readings, health = expected(profile, frame.fields, ts=TS, depth_mm=2000)
    assert from_bytes
    assert [o for o in from_bytes if not isinstance(o, HealthEvent)] == [
        reading_of(r) for r in readings
    ]
    assert [
        (o.event, o.ts, o.battery_pct, o.temperature_c)
        for o in from_bytes
        if isinstance(o, HealthEvent)
    ] == [(h.event, h.ts, h.battery_pct, h.temperature_c) for h in health]


def reading_of(payload: Any) -> WasteReading | ParkingReading:
    if hasattr(payload, "fill_pct"):
        return WasteReading(
            "dev", payload.ts, payload.fill_pct, payload.battery_pct, payload.temperature_c
        )
    return ParkingReading("dev", payload.ts, payload.occupied, payload.battery_pct)


@pytest.mark.parametrize(
    ("frame", "hex_bytes"),
    [
        (encoders.milesight_em310(2116, 92), "01755C038244080400 00"),
        (encoders.milesight_em400(2116, 92, 25.7), "01755C03670101048244080500 00"),
        (encoders.milesight_em500(30, 100), "017564 03821E00"),
        (encoders.decentlab_mbx(303, distance_mm=1234, battery_v=2.993), "02012F000304D200010BB1"),
        (encoders.decentlab_mbx(303, battery_v=2.993), "02012F00020BB1"),
        (encoders.bosch_tps110_heartbeat(occupied=True, temperature_c=-1), "01FF"),
        (encoders.nwave_nps405_status(occupied=True, previous_state_min=74), "95"),
        (
            encoders.nwave_nps405_heartbeat(occupied=False, battery_v=3.344, temperature_c=-10),
            "00D3D800590B",
        ),
    ],
)
def test_encoders_reproduce_the_vendors_examples(frame: Frame, hex_bytes: str) -> None:
    """Fed the values of a vendor's published example, an encoder gives the same bytes."""
    assert frame.raw == bytes.fromhex(hex_bytes)


def test_dragino_object_is_the_formatters() -> None:
    """The LDDS75's object has Dragino's strings with units, and its 8 bytes are on fPort 2."""
    frame = encoders.dragino_ldds75(1234, 3.3)
    assert frame.network == {
        "Bat": "3.3 V",
        "Distance": "1234 mm",
        "Interrupt_flag": 0,
        "Sensor_flag": 1,
        "TempC_DS18B20": "0.00",
    }
    assert (frame.f_port, len(frame.raw)) == (2, 8)
    assert encoders.dragino_ldds75(150, 3.3).network["Distance"] == "Invalid Reading"


def test_fill_comes_from_the_whole_millimetres_sent() -> None:
    """The expected fill is computed from the rounded distance, as the profile does."""
    profile = PROFILES["milesight-em310-udl"]
    frame = encoders.milesight_em310(1237, 90)
    outcome = interpret_uplink(
        profile, uplink_of(frame, network=False), device_id="dev", depth_mm=1333, full_mark_mm=250
    )
    assert isinstance(outcome[0], WasteReading)
    assert outcome[0].fill_pct == fill_pct_for(1237, 1333, 250) == 8.9


def spec(decoded: dict[str, Any] | None) -> UplinkSpec:
    frame = encoders.milesight_em400(812, 77, 18.4)
    return UplinkSpec(
        device_id="cas-wc-00007",
        dev_eui="CA5A010000000007",
        model="milesight-em400-mud",
        received_at=TS,
        f_cnt=4242,
        f_port=frame.f_port,
        raw=frame.raw,
        decoded=decoded,
        radio=Radio(gateway=2, rssi=-97, snr=6.5, spreading_factor=9, channel=3, nanoseconds=517),
    )


@pytest.mark.parametrize("fmt", LORAWAN)
@pytest.mark.parametrize("decoded", [None, {"battery": 77, "distance": 812}])
def test_envelopes_parse_with_citytel(fmt: Format, decoded: dict[str, Any] | None) -> None:
    """Each envelope reads back through citytel's parser with every field as built."""
    assert fmt != "native"
    app = NetworkApplication("citytel-demo", "ttn")
    uplink_spec = spec(decoded)
    topic, body = envelope(fmt, app, uplink_spec)
    uplink = decode_lorawan(topic, dump(body), now=START)
    assert uplink is not None
    assert uplink.network == fmt
    assert uplink.device_id == "cas-wc-00007"
    assert uplink.dev_eui == "CA5A010000000007"
    assert uplink.received_at == TS
    assert (uplink.f_cnt, uplink.f_port, uplink.raw) == (4242, 85, uplink_spec.raw)
    assert uplink.network_decoded == decoded
    expected_application = {
        "ttn": "citytel-demo",
        "chirpstack_v4": app.chirpstack_v4_id,
        "chirpstack_v3": app.chirpstack_v3_id,
    }[fmt]
    assert uplink.application == expected_application


def test_envelopes_follow_the_servers_conventions() -> None:
    """Topics, id encodings and the v3 objectJSON string are as each server publishes them."""
    app = NetworkApplication("citytel-demo", "ttn")
    topic, body = envelope("ttn", app, spec({"battery": 77}))
    assert topic == "v3/citytel-demo@ttn/devices/cas-wc-00007/up"
    assert body["received_at"] == "2026-03-14T09:15:42.123000517Z"
    assert body["uplink_message"]["frm_payload"] == base64.b64encode(spec(None).raw).decode()
    topic, body = envelope("chirpstack_v4", app, spec(None))
    assert topic == f"application/{app.chirpstack_v4_id}/device/ca5a010000000007/event/up"
    assert body["deviceInfo"]["devEui"] == "ca5a010000000007"
    assert "object" not in body
    topic, body = envelope("chirpstack_v3", app, spec({"battery": 77}))
    assert topic == f"application/{app.chirpstack_v3_id}/device/ca5a010000000007/event/up"
    assert base64.b64decode(body["devEUI"]).hex().upper() == "CA5A010000000007"
    assert json.loads(body["objectJSON"]) == {"battery": 77}
    zero = dataclasses.replace(spec(None), f_cnt=0)
    assert "f_cnt" not in envelope("ttn", app, zero)[1]["uplink_message"]
    assert "fCnt" not in envelope("chirpstack_v4", app, zero)[1]


def bindings(fleet: Fleet) -> tuple[dict[str, Container | Spot], dict[str, Container | Spot]]:
    devices: list[Container | Spot] = [*fleet.containers, *fleet.spots]
    by_eui = {d.sensor.dev_eui: d for d in devices if d.sensor}
    by_name = {d.sensor.network_device_id: d for d in devices if d.sensor}
    return by_eui, by_name


def read_like_citytel(fleet: Fleet, message: SimulatedMessage) -> tuple[Outcome, ...]:
    """What citytel's LoRaWAN path makes of a message, with the fleet as its registry."""
    by_eui, by_name = bindings(fleet)
    uplink = decode_lorawan(message.topic, message.payload, now=message.due)
    assert uplink is not None
    device = by_eui.get(uplink.dev_eui or "") or by_name.get(uplink.device_id or "")
    if device is None:
        raise RejectedMessage(Reason.UNKNOWN_DEVICE, "not in the fleet")
    assert device.sensor is not None
    check_timestamp_window(uplink.received_at, message.due, MAX_FUTURE)
    assert uplink.f_cnt == message.f_cnt
    depth, full_mark = (
        (device.depth_mm, device.full_mark_mm) if isinstance(device, Container) else (None, None)
    )
    return interpret_uplink(
        PROFILES[device.sensor.model],
        uplink,
        device_id=device.id,
        depth_mm=depth,
        full_mark_mm=full_mark,
    )


def take(fleet: Fleet, config: StreamConfig, n: int) -> list[SimulatedMessage]:
    return list(itertools.islice(simulate(fleet, START, config), n))


@pytest.mark.parametrize("fmt", LORAWAN)
def test_ground_truth_is_what_citytel_decodes(fleet: Fleet, fmt: Format) -> None:
    """Each stored kind of message decodes, through citytel, to exactly its ground truth."""
    config = dataclasses.replace(FAULTY, format=fmt, network_decoded_ratio=0.4)
    messages = take(fleet, config, 3000)
    assert {m.kind for m in messages} == {"valid", "malformed", "duplicate", "out_of_order"}
    health = Counter[str]()
    for message in messages:
        if message.kind == "malformed":
            continue
        outcomes = read_like_citytel(fleet, message)
        readings = [o for o in outcomes if not isinstance(o, HealthEvent)]
        events = [o for o in outcomes if isinstance(o, HealthEvent)]
        assert readings == [
            replace_device(reading_of(r), message.device_id) for r in message.readings
        ]
        assert [(e.event, e.ts, e.battery_pct, e.temperature_c) for e in events] == [
            (h.event, h.ts, h.battery_pct, h.temperature_c) for h in message.health
        ]
        health.update(e.event.value for e in events)
    assert health["heartbeat"] > 0
    assert health["battery"] > 0


def replace_device(
    reading: WasteReading | ParkingReading, device_id: str
) -> WasteReading | ParkingReading:
    if isinstance(reading, WasteReading):
        return dataclasses.replace(reading, container_id=device_id)
    return dataclasses.replace(reading, spot_id=device_id)


@pytest.mark.parametrize("fmt", LORAWAN)
def test_faults_get_their_documented_reason(fleet: Fleet, fmt: Format) -> None:
    """Every LoRaWAN fault is refused by citytel with the reason the stream expects."""
    seen = set()
    for message in take(fleet, StreamConfig(format=fmt, malformed_ratio=1.0), 1500):
        assert message.readings == ()
        assert message.reason is LORAWAN_FAULTS[message.fault or ""]
        with pytest.raises(RejectedMessage) as refused:
            read_like_citytel(fleet, message)
        assert refused.value.reason is message.reason, (message.fault, refused.value)
        seen.add(message.fault)
    assert seen == set(LORAWAN_FAULTS)


def read_native(known: set[str], message: SimulatedMessage) -> None:
    """citytel's native path, with the fleet as its registry."""
    address = parse_native_topic("citytel/v1", message.topic)
    if address.device_id not in known:
        raise RejectedMessage(Reason.UNKNOWN_DEVICE, "not in the fleet")
    decode_native(
        address.kind, address.device_id, message.payload, now=message.due, max_future=MAX_FUTURE
    )


def test_native_faults_get_their_documented_reason() -> None:
    """Every native fault is refused by citytel with the reason the stream expects."""
    fleet = Fleet.from_geojson(generate_fleet(containers=30, spots=30))
    known = {c.id for c in fleet.containers} | {s.id for s in fleet.spots}
    seen = set()
    for message in take(fleet, StreamConfig(malformed_ratio=1.0), 1000):
        seen.add(message.fault)
        assert message.reason is FAULT_REASONS[message.fault or ""]
        with pytest.raises(RejectedMessage) as refused:
            read_native(known, message)
        assert refused.value.reason is message.reason, message.fault
    assert seen == set(FAULT_REASONS)


@pytest.mark.parametrize("fmt", LORAWAN)
def test_frame_counters_and_times_of_each_device(fleet: Fleet, fmt: Format) -> None:
    """Counters rise per device; a late frame is older in counter and time; duplicates resend."""
    newest: dict[str, tuple[int, datetime]] = {}
    sent: set[tuple[str, bytes]] = set()
    for message in take(fleet, dataclasses.replace(FAULTY, format=fmt), 4000):
        if message.kind == "malformed":
            continue
        if message.kind == "duplicate":
            assert (message.topic, message.payload) in sent
            continue
        sent.add((message.topic, message.payload))
        assert message.f_cnt is not None
        previous = newest.get(message.device_id)
        ts = message.readings[0].ts if message.readings else message.health[0].ts
        assert ts <= message.due
        if message.kind == "out_of_order":
            assert previous is not None
            assert message.f_cnt < previous[0]
            assert ts < previous[1]
            continue
        if previous is not None:
            assert message.f_cnt > previous[0]
            assert ts > previous[1]
        newest[message.device_id] = (message.f_cnt, ts)


def test_network_decoded_ratio_is_honoured(fleet: Fleet) -> None:
    """About the share asked for carries the decoded object; network-only models always do."""
    config = StreamConfig(format="chirpstack_v4", network_decoded_ratio=0.25)
    carried = Counter[bool]()
    for message in take(fleet, config, 4000):
        body = json.loads(message.payload)
        model = body["deviceInfo"]["deviceProfileName"]
        if sensor_model(model).network_only:
            assert "object" in body
        else:
            carried["object" in body] += 1
    share = carried[True] / (carried[True] + carried[False])
    assert 0.2 < share < 0.3


@pytest.mark.parametrize("fmt", LORAWAN)
def test_lorawan_streams_are_deterministic(fleet: Fleet, fmt: Format) -> None:
    """One seed gives the same messages; the city behaves the same in every format."""
    config = dataclasses.replace(FAULTY, format=fmt, network_decoded_ratio=0.5)
    assert take(fleet, config, 1500) == take(fleet, config, 1500)
    other = dataclasses.replace(FAULTY, format=fmt, seed=7)
    assert take(fleet, other, 200) != take(fleet, config, 200)
    native = ground_truth(take(fleet, StreamConfig(), 800))
    lorawan = ground_truth(take(fleet, StreamConfig(format=fmt), 800))
    assert set(native.readings) >= set(lorawan.readings)


def test_lorawan_needs_sensor_bindings(fleet: Fleet) -> None:
    """A fleet without sensors cannot be simulated through a network server."""
    bare = Fleet(tuple(dataclasses.replace(c, sensor=None) for c in fleet.containers[:3]), ())
    with pytest.raises(ValueError, match="no sensor"):
        simulate(bare, START, StreamConfig(format="ttn"))
    with pytest.raises(ValueError, match="network_decoded_ratio"):
        simulate(fleet, START, StreamConfig(format="ttn", network_decoded_ratio=2))


def test_cli_names_every_format() -> None:
    """The command line offers native, ttn, chirpstack and chirpstack-v3."""
    assert set(FORMATS) == {"native", "ttn", "chirpstack", "chirpstack-v3"}
    assert set(FORMATS.values()) == {"native", *LORAWAN}
