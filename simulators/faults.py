"""Malformed payloads of the kinds real gateways send, to exercise the dead-letter path.

Each payload fault is a function of a well-formed body; the topic faults (``bad_topic``,
``unknown_device``) keep a well-formed payload and are built by the stream, which owns topics.
Network-server envelopes have faults of their own (``LORAWAN_FAULTS``). Every fault says which
dead-letter reason citytel should give it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from citytel.domain import DeviceKind, Reason
from simulators.envelopes import (
    DATA_PATH,
    IDENTITY_PATH,
    TIME_PATH,
    LorawanFormat,
    dump,
    replace_at,
    rfc3339,
)

Body = dict[str, Any]


def _dump(body: Any) -> bytes:
    # allow_nan: a NaN on the wire is one of the faults we want the ingest to see.
    return json.dumps(body, separators=(",", ":"), allow_nan=True).encode()


def _value_field(kind: DeviceKind) -> str:
    return "fill_pct" if kind is DeviceKind.WASTE else "battery_pct"


def _not_json(body: Body, _kind: DeviceKind, _now: datetime) -> bytes:
    return _dump(body)[:-3]  # a gateway cut off mid-message


def _not_utf8(body: Body, _kind: DeviceKind, _now: datetime) -> bytes:
    return _dump(body).replace(b'"ts"', b'"ts\xe9"')  # Latin-1 from a misconfigured gateway


def _not_object(_body: Body, _kind: DeviceKind, _now: datetime) -> bytes:
    return b"[]"


def _wrong_type(body: Body, kind: DeviceKind, _now: datetime) -> bytes:
    if kind is DeviceKind.WASTE:
        return _dump({**body, "fill_pct": str(body["fill_pct"])})
    return _dump({**body, "occupied": "yes"})


def _missing_ts(body: Body, _kind: DeviceKind, _now: datetime) -> bytes:
    return _dump({k: v for k, v in body.items() if k != "ts"})


def _out_of_range(body: Body, kind: DeviceKind, _now: datetime) -> bytes:
    return _dump({**body, _value_field(kind): 140.0 if kind is DeviceKind.WASTE else -5.0})


def _not_finite(body: Body, kind: DeviceKind, _now: datetime) -> bytes:
    return _dump({**body, _value_field(kind): float("nan")})


def _ts_before_2000(body: Body, _kind: DeviceKind, _now: datetime) -> bytes:
    return _dump({**body, "ts": "1970-01-01T00:00:07.000Z"})  # a clock reset to the epoch


def _ts_far_future(body: Body, _kind: DeviceKind, now: datetime) -> bytes:
    future = now + timedelta(days=400)
    return _dump({**body, "ts": int(future.timestamp() * 1000)})


def _ts_without_offset(body: Body, _kind: DeviceKind, _now: datetime) -> bytes:
    return _dump({**body, "ts": str(body["ts"]).removesuffix("Z")})


def _oversize(body: Body, _kind: DeviceKind, _now: datetime) -> bytes:
    return _dump({**body, "debug_log": "x" * (70 * 1024)})


PayloadFault = Callable[[Body, DeviceKind, datetime], bytes]

PAYLOAD_FAULTS: dict[str, PayloadFault] = {
    "not_json": _not_json,
    "not_utf8": _not_utf8,
    "not_object": _not_object,
    "wrong_type": _wrong_type,
    "missing_ts": _missing_ts,
    "out_of_range": _out_of_range,
    "not_finite": _not_finite,
    "ts_before_2000": _ts_before_2000,
    "ts_far_future": _ts_far_future,
    "ts_without_offset": _ts_without_offset,
    "oversize": _oversize,
}
TOPIC_FAULTS = ("bad_topic", "unknown_device")
FAULTS = (*PAYLOAD_FAULTS, *TOPIC_FAULTS)

FAULT_REASONS: dict[str, Reason] = {
    "not_json": Reason.INVALID_JSON,
    "not_utf8": Reason.NOT_UTF8,
    "not_object": Reason.WRONG_TYPE,
    "wrong_type": Reason.WRONG_TYPE,
    "missing_ts": Reason.MISSING_FIELD,
    "out_of_range": Reason.OUT_OF_RANGE,
    "not_finite": Reason.OUT_OF_RANGE,
    "ts_before_2000": Reason.BAD_TIMESTAMP,
    "ts_far_future": Reason.BAD_TIMESTAMP,
    "ts_without_offset": Reason.BAD_TIMESTAMP,
    "oversize": Reason.PAYLOAD_TOO_LARGE,
    "bad_topic": Reason.BAD_TOPIC,
    "unknown_device": Reason.UNKNOWN_DEVICE,
}
"""The dead-letter reason citytel gives each fault of its own format."""


# Network-server envelopes (TTN v3, ChirpStack v4 and v3).


def _envelope_not_json(_fmt: LorawanFormat, body: Body, _now: datetime) -> bytes:
    return dump(body)[:-3]  # cut off mid-message by a bridge


def _envelope_not_utf8(_fmt: LorawanFormat, body: Body, _now: datetime) -> bytes:
    return dump(body)[:-1] + b',"location":"Ma\xe2rif"}'  # Latin-1 from a bridge


def _envelope_oversize(_fmt: LorawanFormat, body: Body, _now: datetime) -> bytes:
    return dump({**body, "debug": "x" * (70 * 1024)})


def _bad_base64(fmt: LorawanFormat, body: Body, _now: datetime) -> bytes:
    replace_at(body, DATA_PATH[fmt], "not base64!")
    return dump(body)


def _missing_device(fmt: LorawanFormat, body: Body, _now: datetime) -> bytes:
    replace_at(body, IDENTITY_PATH[fmt], None)
    return dump(body)


def _time_without_offset(fmt: LorawanFormat, body: Body, now: datetime) -> bytes:
    replace_at(body, TIME_PATH[fmt], rfc3339(now, suffix=""))
    return dump(body)


def _time_far_future(fmt: LorawanFormat, body: Body, now: datetime) -> bytes:
    replace_at(body, TIME_PATH[fmt], rfc3339(now + timedelta(days=400)))  # a gateway's bad clock
    return dump(body)


EnvelopeFault = Callable[[LorawanFormat, Body, datetime], bytes]

ENVELOPE_FAULTS: dict[str, EnvelopeFault] = {
    "not_json": _envelope_not_json,
    "not_utf8": _envelope_not_utf8,
    "oversize": _envelope_oversize,
    "bad_base64": _bad_base64,
    "missing_device": _missing_device,
    "ts_without_offset": _time_without_offset,
    "ts_far_future": _time_far_future,
}
# Built by the stream: the sensor's bytes spoiled by its model, or an identity it owns.
FRAME_FAULTS = ("undecodable", "out_of_range")
IDENTITY_FAULTS = ("topic_mismatch", "unknown_device")

LORAWAN_FAULTS: dict[str, Reason] = {
    "not_json": Reason.INVALID_JSON,
    "not_utf8": Reason.NOT_UTF8,
    "oversize": Reason.PAYLOAD_TOO_LARGE,
    "bad_base64": Reason.WRONG_TYPE,
    "missing_device": Reason.MISSING_FIELD,
    "ts_without_offset": Reason.BAD_TIMESTAMP,
    "ts_far_future": Reason.BAD_TIMESTAMP,
    "topic_mismatch": Reason.BAD_TOPIC,
    "unknown_device": Reason.UNKNOWN_DEVICE,
    "undecodable": Reason.UNDECODABLE,
    "out_of_range": Reason.OUT_OF_RANGE,
}
"""Each fault of a LoRaWAN stream and the dead-letter reason citytel should give it."""
