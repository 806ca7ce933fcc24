"""citytel's own JSON payload: one reading object, or an array of readings of one device.

The pydantic models here are the contract: ingestion validates with them and the simulators
serialise with them, so the two cannot drift apart.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from citytel.domain import DeviceKind, ParkingReading, Reading, Reason, WasteReading
from citytel.errors import RejectedMessage

MAX_PAYLOAD_BYTES = 64 * 1024
MAX_READINGS_PER_MESSAGE = 1000
EARLIEST_TS = datetime(2000, 1, 1, tzinfo=UTC)

Percent = Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]


_TS_TYPE_ERROR = "ts_type"
_TS_VALUE_ERROR = "ts_value"
_TS_TYPE = "must be an RFC 3339 string with offset or integer epoch milliseconds"


def load_json(text: str, what: str) -> Any:
    """Parse a JSON document from a device or network server.

    Raises:
        RejectedMessage: ``invalid_json`` for anything the parser refuses, including what it
            refuses with other exceptions than a decode error: nesting deeper than the
            interpreter's recursion limit, or an integer longer than its digit limit.
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        detail = f"{what} is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        raise RejectedMessage(Reason.INVALID_JSON, detail) from exc
    except RecursionError as exc:
        detail = f"{what} is JSON nested too deeply to read"
        raise RejectedMessage(Reason.INVALID_JSON, detail) from exc
    except ValueError as exc:
        detail = f"{what} is JSON citytel cannot read: {exc}"
        raise RejectedMessage(Reason.INVALID_JSON, detail) from exc


def _parse_ts(value: Any) -> datetime:
    # Integers are epoch milliseconds; strings are RFC 3339 with an explicit offset. Anything
    # else, floats included, is ambiguous and refused rather than guessed at. Aware datetimes
    # come only from Python callers (the simulators); JSON cannot produce them.
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC)
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value / 1000, tz=UTC)
        except (OverflowError, OSError, ValueError) as exc:
            raise PydanticCustomError(
                _TS_VALUE_ERROR,
                "ts {ts} is not a representable epoch-milliseconds time",
                {"ts": value},
            ) from exc
    if not isinstance(value, str):
        raise PydanticCustomError(_TS_TYPE_ERROR, _TS_TYPE)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise PydanticCustomError(
            _TS_VALUE_ERROR, "ts '{ts}' is not an RFC 3339 timestamp", {"ts": value}
        ) from exc
    if parsed.tzinfo is None:
        raise PydanticCustomError(
            _TS_VALUE_ERROR, "ts '{ts}' has no UTC offset; add 'Z' or '+01:00'", {"ts": value}
        )
    return parsed.astimezone(UTC)


class _Payload(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    ts: datetime
    battery_pct: Percent | None = None

    @field_validator("ts", mode="before")
    @classmethod
    def _ts(cls, value: Any) -> datetime:
        return _parse_ts(value)

    def wire(self) -> dict[str, Any]:
        """The JSON object this payload is sent as."""
        body = self.model_dump(exclude_none=True)
        body["ts"] = self.ts.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return body


class WastePayload(_Payload):
    """A fill-level reading as a gateway publishes it."""

    fill_pct: Percent
    temperature_c: Annotated[float, Field(ge=-60, le=120, allow_inf_nan=False)] | None = None


class ParkingPayload(_Payload):
    """An occupancy reading as a gateway publishes it."""

    occupied: bool


_MODELS: dict[DeviceKind, type[_Payload]] = {
    DeviceKind.WASTE: WastePayload,
    DeviceKind.PARKING: ParkingPayload,
}


def encode_native(payloads: Sequence[WastePayload | ParkingPayload]) -> bytes:
    """Serialise one payload as an object, or several as an array."""
    bodies = [p.wire() for p in payloads]
    return json.dumps(bodies[0] if len(bodies) == 1 else bodies, separators=(",", ":")).encode()


def _describe(error: ValidationError, index: int | None) -> RejectedMessage:
    first = error.errors(include_url=False)[0]
    field = ".".join(str(part) for part in first["loc"]) or "payload"
    where = f"reading {index}: " if index is not None else ""
    if first["type"] == "missing":
        return RejectedMessage(Reason.MISSING_FIELD, f"{where}required field {field!r} is missing")
    if first["type"] in {"greater_than_equal", "less_than_equal", "finite_number"}:
        got = first.get("input")
        return RejectedMessage(Reason.OUT_OF_RANGE, f"{where}{field}={got!r}: {first['msg']}")
    if first["type"] == _TS_VALUE_ERROR:
        return RejectedMessage(Reason.BAD_TIMESTAMP, f"{where}{first['msg']}")
    return RejectedMessage(Reason.WRONG_TYPE, f"{where}{field}: {first['msg']}")


def check_timestamp_window(
    ts: datetime,
    now: datetime,
    max_future: timedelta,
    index: int | None = None,
    *,
    max_age: timedelta | None = None,
) -> None:
    """Refuse a time before 2000 or more than ``max_future`` ahead of ``now`` (bad_timestamp),
    or more than ``max_age`` (the retention period) before it (too_old).

    A reading older than the retention period would be deleted by the next retention run
    after being acknowledged: it is refused instead, so that it is kept as a dead letter.
    """
    where = f"reading {index}: " if index is not None else ""
    if ts < EARLIEST_TS:
        detail = f"{where}ts {ts.isoformat()} is before 2000-01-01; is the sensor clock set?"
        raise RejectedMessage(Reason.BAD_TIMESTAMP, detail)
    if max_age is not None and ts < now - max_age:
        detail = (
            f"{where}ts {ts.isoformat()} is older than the retention period "
            f"({max_age.days} days, CITYTEL_TIMESCALE_RETENTION): it would be deleted"
        )
        raise RejectedMessage(Reason.TOO_OLD, detail)
    if ts > now + max_future:
        detail = (
            f"{where}ts {ts.isoformat()} is {(ts - now).total_seconds():.0f} s in the future "
            f"(at most {max_future.total_seconds():.0f} s is tolerated)"
        )
        raise RejectedMessage(Reason.BAD_TIMESTAMP, detail)


def decode_native(
    kind: DeviceKind,
    device_id: str,
    payload: bytes,
    *,
    now: datetime,
    max_future: timedelta,
    max_age: timedelta | None = None,
) -> list[Reading]:
    """Turn a native payload into readings of ``device_id``.

    The message is taken or refused whole: one bad reading in an array refuses all of it, so a
    dead letter can be replayed as the unit it arrived as.

    Raises:
        RejectedMessage: with a reason code and a sentence saying what is wrong.
    """
    if len(payload) > MAX_PAYLOAD_BYTES:
        detail = f"payload is {len(payload)} bytes; the limit is {MAX_PAYLOAD_BYTES}"
        raise RejectedMessage(Reason.PAYLOAD_TOO_LARGE, detail)
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        detail = f"payload is not UTF-8 (byte {exc.start}: {exc.reason})"
        raise RejectedMessage(Reason.NOT_UTF8, detail) from exc
    body = load_json(text, "payload")

    if isinstance(body, dict):
        items: list[Any] = [body]
        indexed = False
    elif isinstance(body, list) and body:
        items = body
        indexed = True
    else:
        detail = "payload must be a JSON object or a non-empty array of objects"
        raise RejectedMessage(Reason.WRONG_TYPE, detail)
    if len(items) > MAX_READINGS_PER_MESSAGE:
        detail = f"{len(items)} readings in one message; the limit is {MAX_READINGS_PER_MESSAGE}"
        raise RejectedMessage(Reason.PAYLOAD_TOO_LARGE, detail)

    model = _MODELS[kind]
    plain = _PLAIN[kind]
    # The window every reading's time must lie in (check_timestamp_window's bounds).
    earliest = EARLIEST_TS if max_age is None else max(EARLIEST_TS, now - max_age)
    latest = now + max_future
    readings: list[Reading] = []
    for position, item in enumerate(items):
        # Most readings are plainly valid: checked here without building a model, which made
        # validation most of the cost of a big message. Anything else, valid or not, goes
        # through the model, which decides and says what is wrong.
        reading = plain(item, device_id) if type(item) is dict else None
        if reading is None or not earliest <= reading.ts <= latest:
            index = position if indexed else None
            reading = _validated(model, device_id, item, position, index, now, max_future, max_age)
        readings.append(reading)
    return readings


def _validated(
    model: type[_Payload],
    device_id: str,
    item: Any,
    position: int,
    index: int | None,
    now: datetime,
    max_future: timedelta,
    max_age: timedelta | None,
) -> Reading:
    if not isinstance(item, dict):
        detail = f"reading {position} is a {type(item).__name__}, not a JSON object"
        raise RejectedMessage(Reason.WRONG_TYPE, detail)
    try:
        parsed = model.model_validate(item)
    except ValidationError as exc:
        raise _describe(exc, index) from exc
    check_timestamp_window(parsed.ts, now, max_future, index, max_age=max_age)
    return _to_reading(device_id, parsed)


# What the models take as a number in strict mode: int or float, never bool (a subclass of int).
_NUMBERS = frozenset({int, float})


def _plain_ts(value: Any) -> datetime | None:
    """``_parse_ts`` for the values it accepts, None for anything else."""
    kind = type(value)
    if kind is str:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return None
        if parsed.tzinfo is None:
            return None
        return parsed if parsed.tzinfo is UTC else parsed.astimezone(UTC)
    if kind is int:
        try:
            return datetime.fromtimestamp(value / 1000, tz=UTC)
        except (OverflowError, OSError, ValueError):
            return None
    return None


def _plain_waste(item: dict[str, Any], device_id: str) -> Reading | None:
    """The reading of a plainly valid waste item, as WastePayload would make it; else None.

    Accepts only what the model accepts (NaN and infinities fail the range comparisons).
    """
    ts = _plain_ts(item.get("ts"))
    fill: Any = item.get("fill_pct")
    battery: Any = item.get("battery_pct")
    temperature: Any = item.get("temperature_c")
    if (
        ts is None
        or type(fill) not in _NUMBERS
        or not 0 <= fill <= 100
        or (battery is not None and (type(battery) not in _NUMBERS or not 0 <= battery <= 100))
        or (
            temperature is not None
            and (type(temperature) not in _NUMBERS or not -60 <= temperature <= 120)
        )
    ):
        return None
    return WasteReading(
        container_id=device_id,
        ts=ts,
        fill_pct=float(fill),
        battery_pct=None if battery is None else float(battery),
        temperature_c=None if temperature is None else float(temperature),
    )


def _plain_parking(item: dict[str, Any], device_id: str) -> Reading | None:
    """The reading of a plainly valid parking item, as ParkingPayload would make it; else None."""
    ts = _plain_ts(item.get("ts"))
    occupied: Any = item.get("occupied")
    battery: Any = item.get("battery_pct")
    if (
        ts is None
        or type(occupied) is not bool
        or (battery is not None and (type(battery) not in _NUMBERS or not 0 <= battery <= 100))
    ):
        return None
    return ParkingReading(
        spot_id=device_id,
        ts=ts,
        occupied=occupied,
        battery_pct=None if battery is None else float(battery),
    )


_PLAIN = {DeviceKind.WASTE: _plain_waste, DeviceKind.PARKING: _plain_parking}


def _to_reading(device_id: str, parsed: _Payload) -> Reading:
    if isinstance(parsed, WastePayload):
        return WasteReading(
            container_id=device_id,
            ts=parsed.ts,
            fill_pct=parsed.fill_pct,
            battery_pct=parsed.battery_pct,
            temperature_c=parsed.temperature_c,
        )
    assert isinstance(parsed, ParkingPayload)  # noqa: S101 - _MODELS holds only these two
    return ParkingReading(
        spot_id=device_id, ts=parsed.ts, occupied=parsed.occupied, battery_pct=parsed.battery_pct
    )
