"""Sensor codecs and device profiles: published test vectors to readings and health events."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from citytel.decoding import (
    CODECS,
    DeviceProfile,
    Vector,
    check_vectors,
    decode_fields,
    interpret_uplink,
    load_profiles,
    network_fields,
    profile_for,
    run_vector,
)
from citytel.decoding.codecs import bosch, decentlab, milesight, nwave
from citytel.domain import (
    DeviceKind,
    HealthEvent,
    HealthKind,
    Outcome,
    ParkingReading,
    Reason,
    WasteReading,
)
from citytel.errors import ConfigurationError, RejectedMessage
from citytel.formats.envelope import Uplink

PROFILE_DIR = Path(__file__).resolve().parents[2] / "sensors" / "profiles"
PROFILES = load_profiles(PROFILE_DIR)
TS = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)

VECTORS = [
    pytest.param(profile, vector, id=f"{profile.model}-{index}")
    for profile in PROFILES.values()
    for index, vector in enumerate(profile.vectors)
]


def interpret(
    model: str, fields: dict[str, Any], depth_mm: int | None = None, full_mark_mm: int | None = None
) -> tuple[Outcome, ...]:
    return PROFILES[model].interpret(
        fields, device_id="dev-1", ts=TS, depth_mm=depth_mm, full_mark_mm=full_mark_mm
    )


def uplink(raw: bytes | None = None, f_port: int | None = 1, **changes: Any) -> Uplink:
    return Uplink(
        network="chirpstack_v4",
        application="app",
        device_id="dev-1",
        dev_eui="0101010101010101",
        received_at=TS,
        f_cnt=3,
        f_port=f_port,
        raw=raw,
        **changes,
    )


def undecodable(codec: str, f_port: int, hex_bytes: str) -> RejectedMessage:
    with pytest.raises(RejectedMessage) as info:
        CODECS[codec](f_port, bytes.fromhex(hex_bytes))
    assert info.value.reason is Reason.UNDECODABLE
    return info.value


def test_every_supported_model_has_a_profile() -> None:
    """The profile directory holds one valid profile per supported model."""
    assert sorted(PROFILES) == [
        "bosch-tps110",
        "decentlab-dl-mbx",
        "dragino-ldds75",
        "milesight-em310-udl",
        "milesight-em400-mud",
        "milesight-em500-udl",
        "nwave-nps310sm",
        "nwave-nps405",
    ]


def test_unknown_model_is_refused() -> None:
    """A device registered with a model that has no profile is refused as unknown_model."""
    assert profile_for(PROFILES, "bosch-tps110").model == "bosch-tps110"
    with pytest.raises(RejectedMessage) as info:
        profile_for(PROFILES, "acme-9000")
    assert info.value.reason is Reason.UNKNOWN_MODEL
    assert "acme-9000" in info.value.detail


@pytest.mark.parametrize(("profile", "vector"), VECTORS)
def test_profile_vectors(profile: DeviceProfile, vector: Vector) -> None:
    """Each profile's own vector decodes to its fields and becomes its expected outcomes."""
    fields, outcomes = run_vector(profile, vector)
    for name, expected in vector.decoded.items():
        assert fields[name] == pytest.approx(expected), name
    assert [o.event.value if isinstance(o, HealthEvent) else "reading" for o in outcomes] == (
        vector.outcomes
    )


@pytest.mark.parametrize("profile", PROFILES.values(), ids=list(PROFILES))
def test_profile_vectors_check(profile: DeviceProfile) -> None:
    """The start-up check of a profile's vectors passes for every shipped profile."""
    check_vectors(profile)


# The published examples of the reference, asserted value by value.


def test_em310_udl_published_example() -> None:
    """EM310-UDL: battery 92, distance 2116, position tilt; tilted, so a health event."""
    fields = milesight.decode(85, bytes.fromhex("01755C0382440804 0001"))
    assert fields == {"battery": 92, "distance": 2116, "position": "tilt"}
    [event] = interpret("milesight-em310-udl", fields, depth_mm=3000)
    assert event == HealthEvent(
        DeviceKind.WASTE,
        "dev-1",
        TS,
        HealthKind.TILTED,
        92.0,
        None,
        "sensor tilted; distance=2116 not used",
    )


def test_em400_mud_published_example() -> None:
    """EM400-MUD: battery 92, temperature 25.7, distance 2116, tilt; a health event."""
    fields = milesight.decode(85, bytes.fromhex("01755C03670101048244080500 01"))
    assert fields == {"battery": 92, "temperature": 25.7, "distance": 2116, "position": "tilt"}
    [event] = interpret("milesight-em400-mud", fields, depth_mm=3000)
    assert isinstance(event, HealthEvent)
    assert (event.event, event.battery_pct, event.temperature_c) == (HealthKind.TILTED, 92.0, 25.7)


def test_em500_udl_published_example() -> None:
    """EM500-UDL: battery 100, distance 30; inside the full mark, so a full bin."""
    fields = milesight.decode(85, bytes.fromhex("017564 03821E00"))
    assert fields == {"battery": 100, "distance": 30}
    assert interpret("milesight-em500-udl", fields, depth_mm=1000) == (
        WasteReading("dev-1", TS, fill_pct=100.0, battery_pct=100.0),
    )


def test_dl_mbx_published_reading() -> None:
    """DL-MBX: device 303, distance 1234 mm, 1 valid sample, battery 2.993 V; a reading."""
    fields = decentlab.decode(1, bytes.fromhex("02012F000304D200010BB1"))
    assert fields == {
        "protocol_version": 2,
        "device_id": 303,
        "distance": 1234,
        "number_of_valid_samples": 1,
        "battery_voltage": 2.993,
    }
    # (2000 - 1234) / (2000 - 300) = 45.06 %; (2.993 - 2.2) / (3.2 - 2.2) = 79.3 %.
    assert interpret("decentlab-dl-mbx", fields, depth_mm=2000) == (
        WasteReading("dev-1", TS, fill_pct=45.1, battery_pct=79.3),
    )


def test_dl_mbx_published_battery_only() -> None:
    """DL-MBX: battery 2.993 V without distance is a health message, not a reading."""
    fields = decentlab.decode(1, bytes.fromhex("02012F00020BB1"))
    assert fields == {"protocol_version": 2, "device_id": 303, "battery_voltage": 2.993}
    [event] = interpret("decentlab-dl-mbx", fields, depth_mm=2000)
    assert isinstance(event, HealthEvent)
    assert (event.event, event.battery_pct) == (HealthKind.BATTERY, 79.3)


def test_dl_mbx_network_decoded_value_objects() -> None:
    """DL-MBX decoded by the network server: ``{displayName, unit, value}`` objects unwrap."""
    decoded = {
        "distance": {"displayName": "Distance", "unit": "mm", "value": 1234},
        "battery_voltage": {"displayName": "Battery voltage", "unit": "V", "value": 2.993},
        "number_of_valid_samples": {"displayName": "Number of valid samples", "value": 1},
    }
    fields = network_fields(PROFILES["decentlab-dl-mbx"], decoded)
    assert fields == {"distance": 1234, "number_of_valid_samples": 1, "battery_voltage": 2.993}


def test_ldds75_published_strings_with_units() -> None:
    """LDDS75: "3.3 V" and "1234 mm" become numbers; 3.3 V is 72.7 % on a 2.5-3.6 V scale."""
    decoded = {
        "Bat": "3.3 V",
        "Distance": "1234 mm",
        "Interrupt_flag": 0,
        "Sensor_flag": 1,
        "TempC_DS18B20": "0.00",
    }
    outcomes = interpret_uplink(
        PROFILES["dragino-ldds75"],
        uplink(network_decoded=decoded),
        device_id="dev-1",
        depth_mm=2000,
    )
    assert outcomes == (WasteReading("dev-1", TS, fill_pct=44.5, battery_pct=72.7),)


@pytest.mark.parametrize("distance", ["No Sensor", "Invalid Reading"])
def test_ldds75_without_echo_is_a_health_event(distance: str) -> None:
    """LDDS75: "No Sensor" and "Invalid Reading" are no-echo health events, not readings."""
    decoded = {"Bat": "3.3 V", "Distance": distance}
    [event] = interpret_uplink(
        PROFILES["dragino-ldds75"], uplink(network_decoded=decoded), device_id="dev-1"
    )
    assert isinstance(event, HealthEvent)
    assert (event.event, event.battery_pct) == (HealthKind.NO_ECHO, 72.7)


def test_tps110_published_examples() -> None:
    """TPS110: fPort 1 ``01`` is occupied; fPort 2 ``01 FF`` is occupied at -1 °C."""
    assert bosch.decode(1, b"\x01") == {"type": "parking_status", "occupied": True}
    heartbeat = bosch.decode(2, b"\x01\xff")
    assert heartbeat == {"type": "heartbeat", "occupied": True, "temperature": -1}
    assert interpret("bosch-tps110", heartbeat) == (
        ParkingReading("dev-1", TS, occupied=True),
        HealthEvent(DeviceKind.PARKING, "dev-1", TS, HealthKind.HEARTBEAT, None, -1.0, ""),
    )


def test_nps310sm_published_examples() -> None:
    """NPS310SM: status occupied, heartbeat free, start-up firmware 1.13.0 after power-on."""
    assert nwave.decode_nps310(1, b"\x01") == {"type": "parking_status", "occupied": True}
    assert nwave.decode_nps310(2, b"\x00") == {"type": "heartbeat", "occupied": False}
    startup = nwave.decode_nps310(3, bytes.fromhex("010D000200"))
    assert startup == {
        "type": "startup",
        "firmware_version": "1.13.0",
        "reset_cause": "power_on",
        "occupied": False,
    }
    reading, event = interpret("nwave-nps310sm", startup)
    assert reading == ParkingReading("dev-1", TS, occupied=False)
    assert isinstance(event, HealthEvent)
    assert event.event is HealthKind.STARTUP
    assert event.detail == "firmware_version=1.13.0, reset_cause=power_on"


def test_nps405_published_examples() -> None:
    """NPS405: ``95`` is occupied after 74; the heartbeat is free, 3.344 V, -10 °C, normal."""
    assert nwave.decode_nps405(1, b"\x95") == {
        "type": "parking_status",
        "occupied": True,
        "previous_state_duration": 74,
    }
    heartbeat = nwave.decode_nps405(2, bytes.fromhex("00D3D800590B"))
    assert heartbeat == {
        "type": "heartbeat",
        "occupied": False,
        "battery_voltage": 3.344,
        "temperature": -10.0,
        "battery_health": "normal",
    }
    # (3.344 - 2.9) / (3.6 - 2.9) = 63.4 %.
    assert interpret("nwave-nps405", heartbeat) == (
        ParkingReading("dev-1", TS, occupied=False, battery_pct=63.4),
        HealthEvent(
            DeviceKind.PARKING,
            "dev-1",
            TS,
            HealthKind.HEARTBEAT,
            63.4,
            -10.0,
            "battery_health=normal",
        ),
    )


@pytest.mark.parametrize(
    ("compressed", "minutes"), [(0, 0), (89, 89), (90, 90), (119, 235), (120, 240), (127, 660)]
)
def test_nps405_previous_state_duration(compressed: int, minutes: int) -> None:
    """The compressed previous-state duration expands in steps of 1, 5 and 60."""
    fields = nwave.decode_nps405(1, bytes([compressed << 1]))
    assert fields["previous_state_duration"] == minutes


# Bytes that must be refused, whole.


@pytest.mark.parametrize(
    ("codec", "f_port", "hex_bytes", "words"),
    [
        ("milesight", 85, "", "no channels"),
        ("milesight", 85, "01755C 0999 01", "unknown channel 09 99"),
        ("milesight", 85, "01755C 0382 44", "distance needs 2 bytes"),
        ("milesight", 85, "01", "channel header"),
        ("decentlab-mbx", 1, "03012F00020BB1", "protocol version 3"),
        ("decentlab-mbx", 1, "02012F00060BB1", "unknown sensors"),
        ("decentlab-mbx", 1, "02012F00030BB1", "needs 2 bytes"),
        ("decentlab-mbx", 1, "02012F00020BB100", "unexpected bytes"),
        ("bosch-tps110", 1, "0101", "1 bytes, not 2"),
        ("bosch-tps110", 2, "01FF00", "1 or 2 bytes"),
        ("bosch-tps110", 3, "0001", "17 bytes"),
        ("bosch-tps110", 6, "00", "only fPort 1"),
        ("nwave-nps310", 3, "010D00", "reset cause"),
        ("nwave-nps405", 2, "00D3", "temperature"),
        ("nwave-nps405", 10, "D1201F345678", "only fPort 1"),
    ],
)
def test_bad_bytes_are_refused(codec: str, f_port: int, hex_bytes: str, words: str) -> None:
    """Bad bytes are refused as undecodable, with the codec, port, bytes and the problem."""
    error = undecodable(codec, f_port, hex_bytes)
    assert words in error.detail
    assert f"fPort {f_port}" in error.detail


def test_milesight_skips_only_channels_of_known_length() -> None:
    """Device-information channels are read past; a later unknown one still refuses all."""
    fields = milesight.decode(85, bytes.fromhex("FF0BFF 01755C 0382E803"))
    assert fields == {"device_status": "on", "battery": 92, "distance": 1000}
    undecodable("milesight", 85, "FF0BFF 01755C 7777 00")


@given(st.sampled_from(sorted(CODECS)), st.integers(0, 255), st.binary(max_size=40))
def test_codecs_only_raise_rejected_message(codec: str, f_port: int, raw: bytes) -> None:
    """On arbitrary bytes and ports a codec returns fields or raises RejectedMessage only."""
    reason: Reason | None = None
    try:
        fields = CODECS[codec](f_port, raw)
    except RejectedMessage as error:
        reason = error.reason
    else:
        assert isinstance(fields, dict)
    assert reason in {None, Reason.UNDECODABLE}


# From decoded fields to readings and health events.


@pytest.mark.parametrize(
    ("distance", "full_mark_mm", "fill_pct"),
    [(1250, None, 0.0), (750, None, 50.0), (250, None, 100.0), (10, None, 100.0), (650, 50, 50.0)],
)
def test_fill_from_distance(distance: int, full_mark_mm: int | None, fill_pct: float) -> None:
    """fill = (D - distance) / (D - F), clamped; F is the profile's unless overridden."""
    [reading] = interpret(
        "milesight-em500-udl", {"distance": distance}, depth_mm=1250, full_mark_mm=full_mark_mm
    )
    assert isinstance(reading, WasteReading)
    assert reading.fill_pct == fill_pct


def test_distance_beyond_depth_is_a_health_event() -> None:
    """A distance beyond the container's depth is no fill level but a health event."""
    [event] = interpret("milesight-em500-udl", {"distance": 1300, "battery": 80}, depth_mm=1250)
    assert isinstance(event, HealthEvent)
    assert (event.event, event.battery_pct) == (HealthKind.DISTANCE_BEYOND_DEPTH, 80.0)
    assert "1250 mm" in event.detail


@pytest.mark.parametrize(("depth_mm", "full_mark_mm"), [(None, None), (250, None), (900, 900)])
def test_level_without_usable_depth_is_refused(
    depth_mm: int | None, full_mark_mm: int | None
) -> None:
    """A level reading needs a container depth above the full mark; else it is refused."""
    with pytest.raises(RejectedMessage) as info:
        interpret("milesight-em500-udl", {"distance": 500}, depth_mm, full_mark_mm)
    assert info.value.reason is Reason.MISCONFIGURED_DEVICE
    assert "dev-1" in info.value.detail


@pytest.mark.parametrize(
    ("model", "fields", "reason"),
    [
        ("milesight-em500-udl", {"firmware_version": "1.2"}, Reason.UNDECODABLE),
        ("milesight-em500-udl", {"distance": "far"}, Reason.UNDECODABLE),
        ("milesight-em500-udl", {"distance": -5}, Reason.OUT_OF_RANGE),
        ("milesight-em500-udl", {"battery": 255}, Reason.OUT_OF_RANGE),
        ("milesight-em400-mud", {"temperature": 300.0}, Reason.OUT_OF_RANGE),
        ("bosch-tps110", {"occupied": "maybe"}, Reason.UNDECODABLE),
    ],
)
def test_unusable_fields_are_refused(model: str, fields: dict[str, Any], reason: Reason) -> None:
    """Fields with nothing to read, or impossible values, are refused with the right reason."""
    with pytest.raises(RejectedMessage) as info:
        interpret(model, fields, depth_mm=1000)
    assert info.value.reason is reason


def test_voltage_battery_is_clamped() -> None:
    """A voltage outside the profile's empty-full range reads as 0 or 100 %."""
    [high] = interpret("decentlab-dl-mbx", {"battery_voltage": 3.6})
    [low] = interpret("decentlab-dl-mbx", {"battery_voltage": 1.9})
    assert isinstance(high, HealthEvent)
    assert isinstance(low, HealthEvent)
    assert (high.battery_pct, low.battery_pct) == (100.0, 0.0)


# Which source of fields wins.


def test_network_object_is_preferred_when_usable() -> None:
    """A decoded object with the profile's fields wins over the raw bytes."""
    raw = bytes.fromhex("01755C0382E803")
    fields = decode_fields(
        PROFILES["milesight-em310-udl"],
        uplink(raw, 85, network_decoded={"distance": 500, "battery": 50}),
    )
    assert fields == {"distance": 500, "battery": 50}


def test_codec_is_used_when_network_object_is_unusable() -> None:
    """A decoded object without the profile's fields (another formatter) falls back to bytes."""
    raw = bytes.fromhex("01755C0382E803")
    fields = decode_fields(
        PROFILES["milesight-em310-udl"],
        uplink(raw, 85, network_decoded={"temperature": 1.0, "luminosity": 0.64}),
    )
    assert fields == {"battery": 92, "distance": 1000}


def test_network_units_are_converted() -> None:
    """A distance in cm and a battery in mV are converted to the profile's mm and V."""
    fields = network_fields(
        PROFILES["dragino-ldds75"], {"Distance": "123.4 cm", "Bat": {"value": 3300, "unit": "mV"}}
    )
    assert fields == {"distance": pytest.approx(1234), "battery": pytest.approx(3.3)}


def test_network_unit_that_does_not_fit_is_refused() -> None:
    """A unit that cannot be a distance is refused rather than guessed at."""
    with pytest.raises(RejectedMessage) as info:
        network_fields(PROFILES["dragino-ldds75"], {"Distance": "12 kg"})
    assert info.value.reason is Reason.UNDECODABLE


@pytest.mark.parametrize(
    ("model", "link", "words"),
    [
        ("dragino-ldds75", uplink(b"\x0c\xe4"), "payload formatter"),
        ("milesight-em310-udl", uplink(None), "no application payload"),
        ("milesight-em310-udl", uplink(b"\x01\x75\x5c", f_port=None), "no fPort"),
    ],
)
def test_nothing_to_decode_is_refused(model: str, link: Uplink, words: str) -> None:
    """Without a usable object or decodable bytes, the uplink is refused as undecodable."""
    with pytest.raises(RejectedMessage) as info:
        decode_fields(PROFILES[model], link)
    assert info.value.reason is Reason.UNDECODABLE
    assert words in info.value.detail


def test_status_uplink_is_a_battery_health_event() -> None:
    """A ChirpStack status event (no payload, a battery level) is a battery health event."""
    [event] = interpret_uplink(
        PROFILES["nwave-nps310sm"], uplink(None, None, battery_pct=55.0), device_id="spot-9"
    )
    assert isinstance(event, HealthEvent)
    assert (event.device_kind, event.device_id, event.event, event.battery_pct) == (
        DeviceKind.PARKING,
        "spot-9",
        HealthKind.BATTERY,
        55.0,
    )


# Loading profiles.

GOOD = """
model = "acme-level"
vendor = "Acme"
product = "Level"
measures = "bin_level"
codec = "milesight"

[level]
distance_field = "distance"
full_mark_mm = 200
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    (tmp_path / name).write_text(text, encoding="utf-8")
    return tmp_path


def load_error(directory: Path) -> str:
    with pytest.raises(ConfigurationError) as info:
        load_profiles(directory)
    return str(info.value)


def test_minimal_profile_loads(tmp_path: Path) -> None:
    """A profile with only the required keys loads, keyed by its model id."""
    profiles = load_profiles(write(tmp_path, "acme-level.toml", GOOD))
    assert profiles["acme-level"].device_kind is DeviceKind.WASTE


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("model = ", "acme-level.toml: cannot read"),
        (GOOD.replace('vendor = "Acme"\n', ""), "acme-level.toml: vendor: Field required"),
        (GOOD.replace('"milesight"', '"acme"'), "codec 'acme' is not one of"),
        (GOOD.replace("full_mark_mm = 200", "full_mark_mm = -1"), "level.full_mark_mm"),
        (GOOD + "colour = 'red'\n", "level.colour: Extra inputs are not permitted"),
        (GOOD.replace("bin_level", "air_quality"), "measures"),
        (GOOD.replace("[level]", "[levels]"), "levels: Extra inputs are not permitted"),
        (GOOD.replace("bin_level", "spot_occupancy"), "needs an [occupancy] table"),
        (GOOD.replace('"acme-level"', '"acme-other"'), "must match the file name"),
        (
            GOOD + '[battery]\nfield = "v"\nunit = "volt"\n',
            "battery: Value error, a battery in volts needs empty_v < full_v",
        ),
    ],
)
def test_bad_profile_names_file_and_field(tmp_path: Path, text: str, words: str) -> None:
    """A profile that cannot be used fails loading with its file and field named."""
    assert words in load_error(write(tmp_path, "acme-level.toml", text))


def test_empty_or_missing_directory(tmp_path: Path) -> None:
    """An empty or missing profile directory is a configuration error, not an empty fleet."""
    assert "no device profiles" in load_error(tmp_path)
    assert "does not exist" in load_error(tmp_path / "missing")


def test_wrong_vector_is_reported(tmp_path: Path) -> None:
    """A vector that disagrees with its codec fails the check, naming profile and vector."""
    vector = (
        '[[vectors]]\ndescription = "wrong"\nf_port = 85\npayload_hex = "0382E803"\n'
        'decoded = { distance = 999 }\ndepth_mm = 1250\noutcomes = ["reading"]\n'
    )
    profiles = load_profiles(write(tmp_path, "acme-level.toml", GOOD + vector))
    with pytest.raises(ConfigurationError) as info:
        check_vectors(profiles["acme-level"])
    assert "acme-level vector 0 (wrong): decoded distance=1000" in str(info.value)
