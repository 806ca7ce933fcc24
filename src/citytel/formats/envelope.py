"""What a LoRaWAN network server says about one uplink, whichever server it was.

The Things Stack and ChirpStack wrap the same few facts in different envelopes; the parsers in
``ttn.py`` and ``chirpstack.py`` reduce them to one :class:`Uplink`. The helpers here check the
pieces every envelope shares (JSON body, base64, EUIs, timestamps) and turn what is wrong into a
:class:`RejectedMessage` with a sentence a person can act on.
"""

from __future__ import annotations

import base64
import binascii
import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from citytel.domain import Reason
from citytel.errors import RejectedMessage
from citytel.formats.native import MAX_PAYLOAD_BYTES, load_json

Network = Literal["ttn", "chirpstack_v4", "chirpstack_v3"]

_HEX_EUI = re.compile(r"^[0-9A-Fa-f]{16}$")


class EventKind(enum.StrEnum):
    """What a network server's event topic carries, as far as citytel is concerned."""

    UPLINK = "uplink"
    """A device's data frame: decode it."""
    STATUS = "status"
    """A ChirpStack device-status event: the MAC-layer battery level."""
    IGNORED = "ignored"
    """Joins, downlinks, acks, logs, locations: not readings, dropped without a dead letter."""


@dataclass(frozen=True, slots=True)
class LorawanTopic:
    """The parts of a network server's event topic."""

    application: str
    tenant: str | None
    device: str
    event: str
    kind: EventKind


@dataclass(frozen=True, slots=True)
class Uplink:
    """One uplink (or ChirpStack status event) of one device, reduced to what citytel uses.

    Attributes:
        network: which network server and envelope version it came from.
        application: the network server's application id (TTN id without ``@tenant``,
            ChirpStack v4 UUID, ChirpStack v3 number as text).
        tenant: the TTN tenant from ``{app}@{tenant}``, else ``None``.
        device_id: the TTN device id or the ChirpStack device name, when known.
        dev_eui: 16 upper-case hex digits, when known.
        received_at: when the network server received it (aware, UTC); the gateway time when
            the server gives none.
        f_cnt: the frame counter; ``0`` when omitted from a frame that has an ``f_port``,
            because both servers leave zero values out of their JSON.
        f_port: the LoRaWAN port, ``None`` for a frame without application payload.
        raw: the application payload bytes, ``None`` when there are none.
        network_decoded: the object the network server's own payload decoder produced, when
            it produced a non-empty one.
        battery_pct: the MAC-layer battery level of a ChirpStack status event.
    """

    network: Network
    application: str
    device_id: str | None
    dev_eui: str | None
    received_at: datetime
    f_cnt: int | None = None
    f_port: int | None = None
    raw: bytes | None = None
    network_decoded: dict[str, Any] | None = None
    battery_pct: float | None = None
    tenant: str | None = None


def share(topic: str, share_group: str | None) -> str:
    """``topic`` as a shared subscription of ``share_group``, or as is without a group."""
    return f"$share/{share_group}/{topic}" if share_group else topic


def load_envelope(payload: bytes, what: str) -> dict[str, Any]:
    """Parse a network server's JSON envelope, which must be an object.

    Raises:
        RejectedMessage: ``payload_too_large``, ``not_utf8``, ``invalid_json`` or ``wrong_type``.
    """
    if len(payload) > MAX_PAYLOAD_BYTES:
        detail = f"{what} is {len(payload)} bytes; the limit is {MAX_PAYLOAD_BYTES}"
        raise RejectedMessage(Reason.PAYLOAD_TOO_LARGE, detail)
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        detail = f"{what} is not UTF-8 (byte {exc.start}: {exc.reason})"
        raise RejectedMessage(Reason.NOT_UTF8, detail) from exc
    body = load_json(text, what)
    if not isinstance(body, dict):
        detail = f"{what} must be a JSON object, not {type(body).__name__}"
        raise RejectedMessage(Reason.WRONG_TYPE, detail)
    return body


def dig(body: dict[str, Any], path: str) -> Any:
    """The value at a dotted ``path`` of nested objects, or ``None`` where any step is missing."""
    value: Any = body
    for key in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def optional_str(body: dict[str, Any], path: str) -> str | None:
    """A string field that may be absent; an empty string counts as absent."""
    value = dig(body, path)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        detail = f"{path} must be a string, not {type(value).__name__}"
        raise RejectedMessage(Reason.WRONG_TYPE, detail)
    return value


def required_str(body: dict[str, Any], path: str) -> str:
    """A string field that must be present and non-empty."""
    value = optional_str(body, path)
    if value is None:
        detail = f"required field {path!r} is missing"
        raise RejectedMessage(Reason.MISSING_FIELD, detail)
    return value


def optional_int(body: dict[str, Any], path: str) -> int | None:
    """A non-negative integer field that may be absent."""
    value = dig(body, path)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        detail = f"{path} must be a non-negative integer, not {value!r}"
        raise RejectedMessage(Reason.WRONG_TYPE, detail)
    return value


def frame_counters(
    body: dict[str, Any], f_cnt_path: str, f_port_path: str
) -> tuple[int | None, int | None]:
    """``(f_cnt, f_port)``, with an omitted counter read as 0 on a frame that has a port.

    Both servers drop zero values from their JSON, so a data frame without ``f_cnt`` is the
    device's first frame after a join. Without a port there is no application data, and a
    missing counter stays unknown.
    """
    f_port = optional_int(body, f_port_path)
    f_cnt = optional_int(body, f_cnt_path)
    if f_cnt is None and f_port is not None:
        f_cnt = 0
    return f_cnt, f_port


def payload_bytes(body: dict[str, Any], path: str) -> bytes | None:
    """The base64 application payload at ``path``; ``None`` when absent or empty."""
    text = optional_str(body, path)
    if text is None:
        return None
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        detail = f"{path} is not valid base64: {text[:40]!r}"
        raise RejectedMessage(Reason.WRONG_TYPE, detail) from exc
    return raw or None


def dev_eui(value: str, where: str, *, base64_allowed: bool = False) -> str:
    """A DevEUI as 16 upper-case hex digits, from hex or (ChirpStack v3) base64 of 8 bytes."""
    if _HEX_EUI.match(value):
        return value.upper()
    if base64_allowed:
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) == 8:
            return raw.hex().upper()
    form = "16 hex digits or base64 of 8 bytes" if base64_allowed else "16 hex digits"
    detail = f"{where} {value[:40]!r} is not a DevEUI ({form})"
    raise RejectedMessage(Reason.WRONG_TYPE, detail)


def timestamp(value: Any, where: str) -> datetime:
    """An RFC 3339 time with an offset, as an aware UTC datetime (nanoseconds truncated)."""
    if not isinstance(value, str):
        detail = f"{where} must be an RFC 3339 string, not {type(value).__name__}"
        raise RejectedMessage(Reason.BAD_TIMESTAMP, detail)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        detail = f"{where} {value[:40]!r} is not an RFC 3339 timestamp"
        raise RejectedMessage(Reason.BAD_TIMESTAMP, detail) from exc
    if parsed.tzinfo is None:
        detail = f"{where} {value!r} has no UTC offset"
        raise RejectedMessage(Reason.BAD_TIMESTAMP, detail)
    return parsed.astimezone(UTC)


def first_time(candidates: Iterable[tuple[str, Any]], now: datetime) -> datetime:
    """The first present time among ``(where, value)`` candidates, else ``now``.

    A present but malformed time is refused rather than skipped: a network server that writes
    garbage there is misconfigured, and guessing would hide it. ``now`` is the last resort for
    envelopes that carry no time at all (ChirpStack v3 behind gateways without a clock).
    """
    for where, value in candidates:
        if value is not None and value != "":
            return timestamp(value, where)
    return now


def rx_times(rx: Any, *keys: str) -> list[tuple[str, Any]]:
    """The gateway times of a ``rxInfo``/``rx_metadata`` array, as candidates for
    :func:`first_time`."""
    if not isinstance(rx, list):
        return []
    return [
        (f"rx[{index}].{key}", item.get(key))
        for index, item in enumerate(rx)
        if isinstance(item, dict)
        for key in keys
    ]


def decoded_object(value: Any, where: str) -> dict[str, Any] | None:
    """The network server's decoded payload, when it is a non-empty object.

    ChirpStack v3 sends it as a JSON document inside a string; an empty string means no codec.
    """
    if isinstance(value, str):
        if not value.strip():
            return None
        value = load_json(value, where)
    if value is None or value == {}:
        return None
    if not isinstance(value, dict):
        detail = f"{where} must be a JSON object, not {type(value).__name__}"
        raise RejectedMessage(Reason.WRONG_TYPE, detail)
    return value


def check_same(what: str, topic_value: str, body_value: str) -> None:
    """Refuse a message whose body names another device or application than its topic."""
    if topic_value.lower() != body_value.lower():
        detail = f"topic names {what} {topic_value!r} but the body names {body_value!r}"
        raise RejectedMessage(Reason.BAD_TOPIC, detail)
