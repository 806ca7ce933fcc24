"""citytel's own JSON payload: what is accepted, and the reason given for what is not."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from citytel.domain import DeviceKind, ParkingReading, Reading, Reason, WasteReading
from citytel.errors import RejectedMessage
from citytel.formats.native import (
    MAX_PAYLOAD_BYTES,
    ParkingPayload,
    WastePayload,
    check_timestamp_window,
    decode_native,
    encode_native,
)

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
FIVE_MINUTES = timedelta(minutes=5)


def decode(kind: DeviceKind, payload: bytes) -> list[WasteReading | ParkingReading]:
    return decode_native(kind, "dev-1", payload, now=NOW, max_future=FIVE_MINUTES)


def rejected(kind: DeviceKind, payload: bytes) -> RejectedMessage:
    with pytest.raises(RejectedMessage) as info:
        decode(kind, payload)
    return info.value


def test_waste_object_with_rfc3339_offset() -> None:
    """An RFC 3339 time with an offset is converted to UTC and every field is kept."""
    body = b'{"ts":"2026-11-22T12:30:00+01:00","fill_pct":42.5,"battery_pct":90,"temperature_c":21}'
    assert decode(DeviceKind.WASTE, body) == [
        WasteReading("dev-1", datetime(2026, 11, 22, 11, 30, tzinfo=UTC), 42.5, 90.0, 21.0)
    ]


def test_epoch_milliseconds() -> None:
    """An integer ts is epoch milliseconds."""
    ms = int(datetime(2026, 11, 22, 11, 0, tzinfo=UTC).timestamp() * 1000)
    [reading] = decode(DeviceKind.PARKING, json.dumps({"ts": ms, "occupied": True}).encode())
    assert reading == ParkingReading("dev-1", datetime(2026, 11, 22, 11, 0, tzinfo=UTC), True)


def test_array_of_readings() -> None:
    """An array carries several readings of the same device, in order."""
    body = (
        b'[{"ts":"2026-11-22T10:00:00Z","fill_pct":10},{"ts":"2026-11-22T11:00:00Z","fill_pct":20}]'
    )
    readings = decode(DeviceKind.WASTE, body)
    assert [r.fill_pct for r in readings if isinstance(r, WasteReading)] == [10.0, 20.0]


def test_encode_round_trips() -> None:
    """What the simulators encode, ingestion decodes to the same values."""
    ts = datetime(2026, 11, 22, 11, 0, 0, 123000, tzinfo=UTC)
    one = encode_native([WastePayload(ts=ts, fill_pct=55.5, battery_pct=80)])
    assert decode(DeviceKind.WASTE, one) == [WasteReading("dev-1", ts, 55.5, 80.0, None)]
    many = encode_native(
        [ParkingPayload(ts=ts, occupied=False), ParkingPayload(ts=ts, occupied=True)]
    )
    assert [
        r.occupied for r in decode(DeviceKind.PARKING, many) if isinstance(r, ParkingReading)
    ] == [
        False,
        True,
    ]


@pytest.mark.parametrize(
    ("kind", "payload", "reason", "words"),
    [
        (DeviceKind.WASTE, b"\xff\xfe{}", Reason.NOT_UTF8, "not UTF-8"),
        (DeviceKind.WASTE, b"{fill: 3", Reason.INVALID_JSON, "not JSON"),
        (DeviceKind.WASTE, b"42", Reason.WRONG_TYPE, "JSON object"),
        (DeviceKind.WASTE, b"[]", Reason.WRONG_TYPE, "non-empty array"),
        (DeviceKind.WASTE, b"[1]", Reason.WRONG_TYPE, "reading 0 is a int"),
        (DeviceKind.WASTE, b'{"fill_pct": 3}', Reason.MISSING_FIELD, "'ts' is missing"),
        (DeviceKind.WASTE, b'{"ts":"2026-11-22T10:00:00Z"}', Reason.MISSING_FIELD, "fill_pct"),
        (
            DeviceKind.WASTE,
            b'{"ts":"2026-11-22T10:00:00Z","fill_pct":"5"}',
            Reason.WRONG_TYPE,
            "fill_pct",
        ),
        (
            DeviceKind.WASTE,
            b'{"ts":"2026-11-22T10:00:00Z","fill_pct":true}',
            Reason.WRONG_TYPE,
            "fill_pct",
        ),
        (
            DeviceKind.PARKING,
            b'{"ts":"2026-11-22T10:00:00Z","occupied":1}',
            Reason.WRONG_TYPE,
            "occupied",
        ),
        (DeviceKind.WASTE, b'{"ts":1.5,"fill_pct":5}', Reason.WRONG_TYPE, "epoch milliseconds"),
        (
            DeviceKind.WASTE,
            b'{"ts":"2026-11-22T10:00:00Z","fill_pct":101}',
            Reason.OUT_OF_RANGE,
            "fill_pct=101",
        ),
        (
            DeviceKind.WASTE,
            b'{"ts":"2026-11-22T10:00:00Z","fill_pct":-1}',
            Reason.OUT_OF_RANGE,
            "fill_pct=-1",
        ),
        (
            DeviceKind.WASTE,
            b'{"ts":"2026-11-22T10:00:00Z","fill_pct":NaN}',
            Reason.OUT_OF_RANGE,
            "finite",
        ),
        (
            DeviceKind.WASTE,
            b'{"ts":"2026-11-22T10:00:00Z","fill_pct":5,"battery_pct":300}',
            Reason.OUT_OF_RANGE,
            "battery_pct",
        ),
        (
            DeviceKind.WASTE,
            b'{"ts":"2026-11-22T10:00:00","fill_pct":5}',
            Reason.BAD_TIMESTAMP,
            "no UTC offset",
        ),
        (
            DeviceKind.WASTE,
            b'{"ts":"yesterday","fill_pct":5}',
            Reason.BAD_TIMESTAMP,
            "not an RFC 3339",
        ),
        (
            DeviceKind.WASTE,
            b'{"ts":"1999-12-31T23:59:59Z","fill_pct":5}',
            Reason.BAD_TIMESTAMP,
            "before 2000",
        ),
        (
            DeviceKind.WASTE,
            b'{"ts":"2026-11-22T12:06:00Z","fill_pct":5}',
            Reason.BAD_TIMESTAMP,
            "in the future",
        ),
        (
            DeviceKind.WASTE,
            b'{"ts":99999999999999999999,"fill_pct":5}',
            Reason.BAD_TIMESTAMP,
            "representable",
        ),
    ],
)
def test_rejections_name_the_problem(
    kind: DeviceKind, payload: bytes, reason: Reason, words: str
) -> None:
    """Each kind of bad payload is refused with its own reason and a sentence naming the field."""
    error = rejected(kind, payload)
    assert error.reason is reason
    assert words in error.detail


def test_one_bad_reading_refuses_the_whole_message() -> None:
    """A message is taken or refused whole, and the detail says which reading is at fault."""
    body = (
        b'[{"ts":"2026-11-22T10:00:00Z","fill_pct":5},{"ts":"2026-11-22T10:01:00Z","fill_pct":500}]'
    )
    error = rejected(DeviceKind.WASTE, body)
    assert error.reason is Reason.OUT_OF_RANGE
    assert error.detail.startswith("reading 1:")


def test_oversized_payload_is_refused_before_parsing() -> None:
    """A payload over 64 KiB is refused without being parsed."""
    error = rejected(DeviceKind.WASTE, b" " * (MAX_PAYLOAD_BYTES + 1))
    assert error.reason is Reason.PAYLOAD_TOO_LARGE


def test_small_future_skew_is_tolerated() -> None:
    """A sensor clock a little ahead (within the tolerance) is accepted."""
    body = json.dumps({"ts": (NOW + timedelta(minutes=4)).isoformat(), "fill_pct": 5}).encode()
    assert len(decode(DeviceKind.WASTE, body)) == 1


HOSTILE_JSON = [
    pytest.param(b"[" * 30_000 + b"]" * 30_000, id="nesting-past-the-recursion-limit"),
    pytest.param(b'{"a":' * 10_000 + b"1" + b"}" * 10_000, id="nested-objects"),
    pytest.param(b'{"ts":' + b"9" * 5000 + b',"fill_pct":1}', id="integer-past-the-digit-limit"),
    pytest.param(b'{"ts":1,"fill_pct":1' + b"0" * 5000 + b"}", id="long-integer-field"),
]


@pytest.mark.parametrize("payload", HOSTILE_JSON)
@pytest.mark.parametrize("kind", [DeviceKind.WASTE, DeviceKind.PARKING])
def test_hostile_json_is_refused_not_raised(kind: DeviceKind, payload: bytes) -> None:
    """JSON the parser cannot hold (too deep, too many digits) is a dead letter, not a crash."""
    error = rejected(kind, payload)
    assert error.reason in {Reason.INVALID_JSON, Reason.WRONG_TYPE, Reason.OUT_OF_RANGE}


def test_reading_older_than_the_retention_period_is_too_old() -> None:
    """A reading the retention policy would delete is refused (too_old); one just inside is not."""
    retention = timedelta(days=400)

    def decode(ts: datetime) -> list[Reading]:
        payload = json.dumps({"ts": ts.isoformat(), "occupied": True}).encode()
        return decode_native(
            DeviceKind.PARKING, "p", payload, now=NOW, max_future=FIVE_MINUTES, max_age=retention
        )

    with pytest.raises(RejectedMessage) as caught:
        decode(NOW - retention - timedelta(seconds=1))
    assert caught.value.reason is Reason.TOO_OLD
    assert "CITYTEL_TIMESCALE_RETENTION" in caught.value.detail
    [reading] = decode(NOW - retention)
    assert reading.ts == NOW - retention


# Values of every JSON type near the edges the models check, for the plain-path parity test.
_EDGE_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-200, max_value=200),
    st.integers(min_value=1_500_000_000_000, max_value=1_900_000_000_000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        [
            "2026-11-22T11:00:00Z",
            "2026-11-22T12:30:00+01:00",
            "2026-11-22T12:04:59.999Z",
            "2026-11-22T12:06:00Z",
            "2026-11-22T11:00:00",
            "1999-12-31T23:59:59Z",
            "yesterday",
            "",
        ]
    ),
    st.lists(st.integers(), max_size=2),
)
_KEYS = st.sampled_from(["ts", "fill_pct", "battery_pct", "temperature_c", "occupied", "other"])


def _through_the_model(kind: DeviceKind, item: dict[str, object]) -> Reading | Reason:
    model = WastePayload if kind is DeviceKind.WASTE else ParkingPayload
    try:
        parsed = model.model_validate(item)
        check_timestamp_window(parsed.ts, NOW, FIVE_MINUTES)
    except ValidationError:
        return Reason.WRONG_TYPE
    except RejectedMessage as exc:
        return exc.reason
    if isinstance(parsed, WastePayload):
        return WasteReading(
            "dev-1", parsed.ts, parsed.fill_pct, parsed.battery_pct, parsed.temperature_c
        )
    assert isinstance(parsed, ParkingPayload)
    return ParkingReading("dev-1", parsed.ts, parsed.occupied, parsed.battery_pct)


@settings(max_examples=600, deadline=None)
@given(
    kind=st.sampled_from(list(DeviceKind)),
    item=st.dictionaries(_KEYS, _EDGE_VALUES, max_size=5),
    size=st.integers(min_value=1, max_value=3),
)
def test_plain_path_decides_as_the_model(
    kind: DeviceKind, item: dict[str, object], size: int
) -> None:
    """Big messages skip the models for plainly valid readings: same readings, same refusals."""
    payload = json.dumps([item] * size if size > 1 else item).encode()
    expected = _through_the_model(kind, json.loads(payload.decode())[0] if size > 1 else item)
    try:
        got: list[Reading] | Reason = decode(kind, payload)
    except RejectedMessage as exc:
        got = exc.reason
    if isinstance(expected, Reason):
        assert isinstance(got, Reason)
        if expected is not Reason.WRONG_TYPE:
            assert got is expected
    else:
        assert got == [expected] * size
        assert all(type(r) is type(expected) for r in got)
        for reading in got:
            assert all(
                type(getattr(reading, name)) is type(getattr(expected, name))
                for name in ("ts", "battery_pct")
            )
