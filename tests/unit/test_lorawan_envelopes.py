"""LoRaWAN network-server envelopes: The Things Stack v3, ChirpStack v4 and v3."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.client import topic_matches_sub

from citytel.domain import Reason
from citytel.errors import RejectedMessage
from citytel.formats.chirpstack import chirpstack_subscriptions, parse_chirpstack_topic
from citytel.formats.envelope import EventKind, Uplink
from citytel.formats.network_server import decode_lorawan
from citytel.formats.ttn import parse_ttn_topic, ttn_subscriptions

DATA = Path(__file__).resolve().parents[1] / "data"
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)

TTN_TOPIC = "v3/app1@ttn/devices/dev1/up"
V4_APP = "17c82e96-be03-4f38-aef3-f83d48582d97"
V4_TOPIC = f"application/{V4_APP}/device/0101010101010101/event/up"
V4_STATUS_TOPIC = f"application/{V4_APP}/device/0101010101010101/event/status"
V3_TOPIC = "application/123/device/0202020202020202/event/up"


def fixture(name: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads((DATA / name).read_text(encoding="utf-8"))
    return body


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


def decode(topic: str, body: dict[str, Any] | bytes) -> Uplink | None:
    payload = body if isinstance(body, bytes) else encode(body)
    return decode_lorawan(topic, payload, now=NOW)


def rejected(topic: str, body: dict[str, Any] | bytes) -> RejectedMessage:
    with pytest.raises(RejectedMessage) as info:
        decode(topic, body)
    return info.value


def v3_body(**changes: Any) -> dict[str, Any]:
    body = fixture("chirpstack-v3-uplink.json")
    body["data"] = "AQI="
    body.update(changes)
    return body


def test_ttn_reference_uplink() -> None:
    """The Things Stack's published uplink parses into the expected Uplink."""
    assert decode(TTN_TOPIC, fixture("ttn-uplink.json")) == Uplink(
        network="ttn",
        application="app1",
        tenant="ttn",
        device_id="dev1",
        dev_eui="0004A30B001C0530",
        received_at=datetime(2020, 2, 12, 15, 15, 46, 14773, tzinfo=UTC),
        f_cnt=1,
        f_port=None,
        raw=bytes.fromhex("8241DE"),
        network_decoded={"temperature": 1.0, "luminosity": 0.64},
    )


def test_ttn_topic_without_tenant() -> None:
    """The Things Stack Open Source topic has no ``@tenant``; the application id is the same."""
    uplink = decode("v3/app1/devices/dev1/up", fixture("ttn-uplink.json"))
    assert uplink is not None
    assert (uplink.application, uplink.tenant) == ("app1", None)


def test_chirpstack_v4_reference_uplink() -> None:
    """ChirpStack v4's published uplink parses; its omitted fCnt is 0 because fPort is set."""
    assert decode(V4_TOPIC, fixture("chirpstack-v4-uplink.json")) == Uplink(
        network="chirpstack_v4",
        application=V4_APP,
        device_id="Test device",
        dev_eui="0101010101010101",
        received_at=datetime(2022, 7, 18, 9, 34, 15, 775023, tzinfo=UTC),
        f_cnt=0,
        f_port=1,
        raw=b"\xaa",
        network_decoded=None,
    )


def test_chirpstack_v3_reference_placeholder_data_is_refused() -> None:
    """The published v3 example has ``"data": "..."``, a placeholder that is not base64."""
    error = rejected(V3_TOPIC, fixture("chirpstack-v3-uplink.json"))
    assert error.reason is Reason.WRONG_TYPE
    assert "base64" in error.detail


def test_chirpstack_v3_reference_uplink() -> None:
    """The v3 example with real data parses: base64 devEUI, objectJSON, gateway time."""
    assert decode(V3_TOPIC, v3_body()) == Uplink(
        network="chirpstack_v3",
        application="123",
        device_id="garden-sensor",
        dev_eui="0202020202020202",
        received_at=datetime(2019, 11, 8, 13, 59, 25, 48445, tzinfo=UTC),
        f_cnt=10,
        f_port=5,
        raw=b"\x01\x02",
        network_decoded={"temperatureSensor": 25, "humiditySensor": 32},
    )


@pytest.mark.parametrize("eui", ["AgICAgICAgI=", "0202020202020202"])
def test_chirpstack_v3_dev_eui_base64_or_hex(eui: str) -> None:
    """v3 devEUI is base64 with the default marshaler and hex with the legacy one."""
    uplink = decode(V3_TOPIC, v3_body(devEUI=eui))
    assert uplink is not None
    assert uplink.dev_eui == "0202020202020202"


def test_chirpstack_v3_legacy_numeric_application_id() -> None:
    """The legacy marshaler writes applicationID as a number; it names the same application."""
    uplink = decode(V3_TOPIC, v3_body(applicationID=123))
    assert uplink is not None
    assert uplink.application == "123"


def test_dev_eui_is_upper_case() -> None:
    """A lower-case hex DevEUI is normalised to upper case."""
    body = fixture("chirpstack-v4-uplink.json")
    body["deviceInfo"]["devEui"] = "0a0b0c0d0e0f0102"
    uplink = decode(f"application/{V4_APP}/device/0a0b0c0d0e0f0102/event/up", body)
    assert uplink is not None
    assert uplink.dev_eui == "0A0B0C0D0E0F0102"


def test_frame_counter_omission_rule() -> None:
    """An omitted f_cnt is 0 on a frame with an f_port, and unknown on a frame without one."""
    body = fixture("ttn-uplink.json")
    del body["uplink_message"]["f_cnt"]
    body["uplink_message"]["f_port"] = 2
    with_port = decode(TTN_TOPIC, body)
    del body["uplink_message"]["f_port"]
    without_port = decode(TTN_TOPIC, body)
    assert with_port is not None
    assert without_port is not None
    assert (with_port.f_cnt, with_port.f_port) == (0, 2)
    assert (without_port.f_cnt, without_port.f_port) == (None, None)


def test_ttn_time_falls_back_to_network_then_gateway() -> None:
    """Without ``received_at`` the network server's time is used, then the gateway's."""
    body = fixture("ttn-uplink.json")
    del body["received_at"]
    first = decode(TTN_TOPIC, body)
    del body["uplink_message"]["received_at"]
    second = decode(TTN_TOPIC, body)
    assert first is not None
    assert second is not None
    assert first.received_at == datetime(2020, 2, 12, 15, 15, 45, 789585, tzinfo=UTC)
    assert second.received_at == datetime(2020, 2, 12, 15, 15, 45, 787000, tzinfo=UTC)


def test_chirpstack_v3_without_any_time_uses_now() -> None:
    """A v3 envelope without any time (gateway without a clock) is stamped with ``now``."""
    body = v3_body()
    body["rxInfo"][0].pop("time")
    uplink = decode(V3_TOPIC, body)
    assert uplink is not None
    assert uplink.received_at == NOW


def test_chirpstack_v4_status_carries_battery() -> None:
    """A v4 status event becomes an Uplink without payload that carries the battery level."""
    body = {
        "time": "2022-07-18T09:34:15Z",
        "deviceInfo": {"applicationId": V4_APP, "devEui": "0101010101010101"},
        "margin": 7,
        "batteryLevel": 87.5,
    }
    uplink = decode(V4_STATUS_TOPIC, body)
    assert uplink is not None
    assert (uplink.battery_pct, uplink.raw, uplink.f_port) == (87.5, None, None)


def test_chirpstack_status_omitted_battery_level_is_zero() -> None:
    """ChirpStack omits zero values, so a status without batteryLevel reports 0 %."""
    body = {"deviceInfo": {"applicationId": V4_APP, "devEui": "0101010101010101"}, "margin": 7}
    uplink = decode(V4_STATUS_TOPIC, body)
    assert uplink is not None
    assert uplink.battery_pct == 0.0


@pytest.mark.parametrize("flag", ["externalPowerSource", "batteryLevelUnavailable"])
def test_chirpstack_status_without_battery_is_ignored(flag: str) -> None:
    """A status event of a mains-powered device, or one without a level, is not a reading."""
    body = {
        "deviceInfo": {"applicationId": V4_APP, "devEui": "0101010101010101"},
        flag: True,
    }
    assert decode(V4_STATUS_TOPIC, body) is None


def test_chirpstack_status_battery_out_of_range() -> None:
    """A battery level above 100 % is refused as out of range."""
    body = {
        "deviceInfo": {"applicationId": V4_APP, "devEui": "0101010101010101"},
        "batteryLevel": 150,
    }
    assert rejected(V4_STATUS_TOPIC, body).reason is Reason.OUT_OF_RANGE


@pytest.mark.parametrize(
    "topic",
    [
        "v3/app1@ttn/devices/dev1/join",
        "v3/app1@ttn/devices/dev1/down/queued",
        "v3/app1@ttn/devices/dev1/down/sent",
        "v3/app1/devices/dev1/down/ack",
        "v3/app1@ttn/devices/dev1/service/data",
        "v3/app1@ttn/devices/dev1/location/solved",
        f"application/{V4_APP}/device/0101010101010101/event/join",
        f"application/{V4_APP}/device/0101010101010101/event/ack",
        f"application/{V4_APP}/device/0101010101010101/event/txack",
        f"application/{V4_APP}/device/0101010101010101/event/log",
        f"application/{V4_APP}/device/0101010101010101/event/location",
        f"application/{V4_APP}/device/0101010101010101/event/integration",
        f"application/{V4_APP}/device/0101010101010101/command/down",
    ],
)
def test_other_events_are_ignored(topic: str) -> None:
    """Events that are not readings are ignored without reading the body or a dead letter."""
    assert decode(topic, b"not even JSON") is None


def test_topic_classification() -> None:
    """The classifiers split topics into application, device, event and kind."""
    ttn = parse_ttn_topic("v3/app1@tenant1/devices/dev1/down/queued")
    assert (ttn.application, ttn.tenant, ttn.device, ttn.event, ttn.kind) == (
        "app1",
        "tenant1",
        "dev1",
        "down/queued",
        EventKind.IGNORED,
    )
    assert parse_ttn_topic(TTN_TOPIC).kind is EventKind.UPLINK
    assert parse_chirpstack_topic(V4_TOPIC).kind is EventKind.UPLINK
    assert parse_chirpstack_topic(V4_STATUS_TOPIC).kind is EventKind.STATUS


def test_subscriptions_cover_both_ttn_forms() -> None:
    """One TTN filter matches topics with and without ``@tenant``; groups make them shared."""
    [ttn] = ttn_subscriptions(None)
    assert topic_matches_sub(ttn, TTN_TOPIC)
    assert topic_matches_sub(ttn, "v3/app1/devices/dev1/up")
    assert not topic_matches_sub(ttn, "v3/app1/devices/dev1/join")
    [chirpstack] = chirpstack_subscriptions(None)
    assert topic_matches_sub(chirpstack, V4_TOPIC)
    assert topic_matches_sub(chirpstack, V4_STATUS_TOPIC)
    assert ttn_subscriptions("citytel") == ["$share/citytel/v3/+/devices/+/up"]
    assert chirpstack_subscriptions("citytel") == ["$share/citytel/application/+/device/+/event/+"]


def _ttn_without(path: str) -> dict[str, Any]:
    body = fixture("ttn-uplink.json")
    *parents, last = path.split(".")
    target = body
    for key in parents:
        target = target[key]
    del target[last]
    return body


def _ttn_with(path: str, value: Any) -> dict[str, Any]:
    body = fixture("ttn-uplink.json")
    *parents, last = path.split(".")
    target = body
    for key in parents:
        target = target[key]
    target[last] = value
    return body


@pytest.mark.parametrize(
    ("topic", "payload", "reason", "words"),
    [
        (TTN_TOPIC, b"\xff\xfe", Reason.NOT_UTF8, "not UTF-8"),
        (TTN_TOPIC, b"{uplink", Reason.INVALID_JSON, "not JSON"),
        (TTN_TOPIC, b"[]", Reason.WRONG_TYPE, "JSON object"),
        (TTN_TOPIC, b"x" * 70_000, Reason.PAYLOAD_TOO_LARGE, "limit"),
        (TTN_TOPIC, _ttn_without("end_device_ids.device_id"), Reason.MISSING_FIELD, "device_id"),
        (TTN_TOPIC, _ttn_without("uplink_message"), Reason.MISSING_FIELD, "uplink_message"),
        (TTN_TOPIC, _ttn_with("uplink_message.frm_payload", "!!"), Reason.WRONG_TYPE, "base64"),
        (TTN_TOPIC, _ttn_with("received_at", "yesterday"), Reason.BAD_TIMESTAMP, "RFC 3339"),
        (
            TTN_TOPIC,
            _ttn_with("received_at", "2020-02-12T15:15:46"),
            Reason.BAD_TIMESTAMP,
            "offset",
        ),
        (TTN_TOPIC, _ttn_with("uplink_message.f_cnt", -1), Reason.WRONG_TYPE, "f_cnt"),
        (TTN_TOPIC, _ttn_with("end_device_ids.dev_eui", "00"), Reason.WRONG_TYPE, "DevEUI"),
        (
            TTN_TOPIC,
            _ttn_with("end_device_ids.device_id", "dev2"),
            Reason.BAD_TOPIC,
            "names device",
        ),
        (
            TTN_TOPIC,
            _ttn_with("uplink_message.decoded_payload", [1]),
            Reason.WRONG_TYPE,
            "decoded_payload",
        ),
        ("v3/app1/dev1/up", b"{}", Reason.BAD_TOPIC, "devices"),
        ("application/1/device/up", b"{}", Reason.BAD_TOPIC, "application/"),
        ("citytel/v1/gw/waste/c1", b"{}", Reason.BAD_TOPIC, "neither"),
        (V4_TOPIC, b'{"time": "2022-07-18T09:34:15Z"}', Reason.MISSING_FIELD, "deviceInfo"),
        (V3_TOPIC, encode(v3_body(devEUI="AgIC")), Reason.WRONG_TYPE, "DevEUI"),
        (V3_TOPIC, encode(v3_body(devEUI="0303030303030303")), Reason.BAD_TOPIC, "names device"),
        (V3_TOPIC, encode(v3_body(objectJSON="{oops")), Reason.INVALID_JSON, "objectJSON"),
    ],
)
def test_malformed_envelopes_are_refused(
    topic: str, payload: dict[str, Any] | bytes, reason: Reason, words: str
) -> None:
    """A malformed topic or envelope is refused with the right reason and a useful detail."""
    error = rejected(topic, payload)
    assert error.reason is reason
    assert words in error.detail


@given(st.binary(max_size=300))
def test_envelopes_of_arbitrary_bytes_only_reject(payload: bytes) -> None:
    """Arbitrary bytes on an uplink topic never raise anything but RejectedMessage."""
    for topic in (TTN_TOPIC, V4_TOPIC, V4_STATUS_TOPIC):
        with contextlib.suppress(RejectedMessage):
            decode(topic, payload)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=8), inner, max_size=2)
    ),
    max_leaves=4,
)
FIELDS = (
    [
        (TTN_TOPIC, "ttn-uplink.json", path)
        for path in (
            "end_device_ids",
            "end_device_ids.device_id",
            "end_device_ids.dev_eui",
            "end_device_ids.application_ids",
            "received_at",
            "uplink_message",
            "uplink_message.f_port",
            "uplink_message.f_cnt",
            "uplink_message.frm_payload",
            "uplink_message.decoded_payload",
            "uplink_message.rx_metadata",
        )
    ]
    + [
        (V4_TOPIC, "chirpstack-v4-uplink.json", path)
        for path in ("deviceInfo", "deviceInfo.devEui", "time", "fCnt", "fPort", "data", "object")
    ]
    + [
        (V3_TOPIC, "chirpstack-v3-uplink.json", path)
        for path in ("devEUI", "applicationID", "objectJSON", "rxInfo", "fPort", "data")
    ]
)


@given(st.sampled_from(FIELDS), JSON_VALUES)
def test_envelopes_with_arbitrary_field_values_only_reject(
    case: tuple[str, str, str], value: Any
) -> None:
    """Any JSON value in any envelope field never raises anything but RejectedMessage."""
    topic, name, path = case
    body = fixture(name)
    *parents, last = path.split(".")
    target = body
    for key in parents:
        target = target[key]
    target[last] = value
    with contextlib.suppress(RejectedMessage):
        decode(topic, body)


DEEP = "[" * 30_000 + "]" * 30_000


@pytest.mark.parametrize(
    ("topic", "payload"),
    [
        pytest.param(TTN_TOPIC, DEEP.encode(), id="ttn-envelope-too-deep"),
        pytest.param(V4_TOPIC, DEEP.encode(), id="chirpstack-v4-envelope-too-deep"),
        pytest.param(V3_TOPIC, DEEP.encode(), id="chirpstack-v3-envelope-too-deep"),
        pytest.param(
            TTN_TOPIC, b'{"f_cnt":' + b"7" * 5000 + b"}", id="integer-past-the-digit-limit"
        ),
    ],
)
def test_hostile_envelope_is_refused_not_raised(topic: str, payload: bytes) -> None:
    """An envelope the JSON parser cannot hold is refused as invalid JSON."""
    assert rejected(topic, payload).reason is Reason.INVALID_JSON


def test_hostile_v3_object_json_is_refused_not_raised() -> None:
    """ChirpStack v3's objectJSON, a JSON document in a string, gets the same protection."""
    error = rejected(V3_TOPIC, v3_body(objectJSON=DEEP))
    assert error.reason is Reason.INVALID_JSON
