"""MQTT 5 packets, as bytes: what a persistent QoS 1 subscriber sends and reads.

Pure functions and a an incremental reader, without I/O: the consumer in :mod:`citytel.ingest.mqtt`
owns the socket. Only what a subscriber needs is here (CONNECT, SUBSCRIBE, PUBACK, PINGREQ,
DISCONNECT out; CONNACK, SUBACK, PUBLISH, PINGRESP, DISCONNECT in), per the OASIS MQTT 5.0
standard, chapter 3.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Final

from citytel.errors import MqttProtocolError as ProtocolError


class PacketType(IntEnum):
    """Control packet types (the fixed header's upper four bits)."""

    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14
    AUTH = 15


# Property identifiers used here (MQTT 5.0, 2.2.2.2).
SESSION_EXPIRY_INTERVAL: Final = 0x11
SERVER_KEEP_ALIVE: Final = 0x13
REASON_STRING: Final = 0x1F
RECEIVE_MAXIMUM: Final = 0x21
MAXIMUM_QOS: Final = 0x24
SHARED_SUBSCRIPTION_AVAILABLE: Final = 0x2A

PROTOCOL_ERROR: Final = 0x82  # a DISCONNECT reason code; malformed packets are 0x81

# How each property's value is encoded, to read the ones we use and step over the others.
_BYTE, _TWO, _FOUR, _VARINT, _STRING, _BINARY, _PAIR = range(7)
_PROPERTY_KINDS: Final = {
    0x01: _BYTE, 0x02: _FOUR, 0x03: _STRING, 0x08: _STRING, 0x09: _BINARY, 0x0B: _VARINT,
    0x11: _FOUR, 0x12: _STRING, 0x13: _TWO, 0x15: _STRING, 0x16: _BINARY, 0x17: _BYTE,
    0x18: _FOUR, 0x19: _BYTE, 0x1A: _STRING, 0x1C: _STRING, 0x1F: _STRING, 0x21: _TWO,
    0x22: _TWO, 0x23: _TWO, 0x24: _BYTE, 0x25: _BYTE, 0x26: _PAIR, 0x27: _FOUR, 0x28: _BYTE,
    0x29: _BYTE, 0x2A: _BYTE,
}  # fmt: skip

# Reason codes a broker may answer a CONNECT or SUBSCRIBE with, for log lines a person can act on.
REASONS: Final = {
    0x80: "unspecified error",
    0x81: "malformed packet",
    0x82: "protocol error",
    0x83: "implementation specific error",
    0x84: "unsupported protocol version",
    0x85: "client identifier not valid",
    0x86: "bad user name or password",
    0x87: "not authorized",
    0x88: "server unavailable",
    0x89: "server busy",
    0x8A: "banned",
    0x8B: "server shutting down",
    0x8C: "bad authentication method",
    0x8D: "keep alive timeout",
    0x8E: "session taken over",
    0x8F: "topic filter invalid",
    0x90: "topic name invalid",
    0x93: "receive maximum exceeded",
    0x95: "packet too large",
    0x97: "quota exceeded",
    0x98: "administrative action",
    0x99: "payload format invalid",
    0x9C: "use another server",
    0x9D: "server moved",
    0x9E: "shared subscriptions not supported",
    0x9F: "connection rate exceeded",
    0xA1: "subscription identifiers not supported",
    0xA2: "wildcard subscriptions not supported",
}

PINGREQ: Final = b"\xc0\x00"
DISCONNECT: Final = b"\xe0\x00"  # reason 0: normal disconnection, the session is kept


def encode_disconnect(reason: int) -> bytes:
    """A DISCONNECT with a reason code and no properties."""
    return bytes([0xE0, 2, reason, 0])


def describe_reason(code: int) -> str:
    """A reason code as words, with its number."""
    return f"{REASONS.get(code, 'reason')} (0x{code:02x})"


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        value, byte = divmod(value, 128)
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _string(value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    if len(raw) > 0xFFFF:
        message = f"an MQTT string holds at most 65535 bytes, got {len(raw)}"
        raise ValueError(message)
    return len(raw).to_bytes(2, "big") + raw


def _packet(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + _varint(len(body)) + body


def encode_connect(
    client_id: str,
    *,
    keepalive: int,
    clean_start: bool,
    session_expiry: int = 0,
    receive_maximum: int | None = None,
    username: str | None = None,
    password: str | None = None,
) -> bytes:
    """A CONNECT packet for MQTT 5."""
    flags = 0x02 if clean_start else 0
    payload = _string(client_id)
    if username is not None:
        flags |= 0x80
        payload += _string(username)
    if password is not None:
        flags |= 0x40
        payload += _string(password)
    properties = b""
    if session_expiry:
        properties += bytes([SESSION_EXPIRY_INTERVAL]) + session_expiry.to_bytes(4, "big")
    if receive_maximum is not None:
        properties += bytes([RECEIVE_MAXIMUM]) + receive_maximum.to_bytes(2, "big")
    variable = _string("MQTT") + bytes([5, flags]) + keepalive.to_bytes(2, "big")
    return _packet(0x10, variable + _varint(len(properties)) + properties + payload)


def encode_publish(
    topic: str,
    payload: bytes,
    *,
    packet_id: int = 0,
    qos: int = 1,
    properties: bytes = b"",
    retain: bool = False,
    dup: bool = False,
) -> bytes:
    """A PUBLISH packet. The service only receives them; tools and tests send them."""
    body = _string(topic)
    if qos:
        body += packet_id.to_bytes(2, "big")
    body += _varint(len(properties)) + properties + payload
    first = 0x30 | (qos << 1) | (0x01 if retain else 0) | (0x08 if dup else 0)
    return _packet(first, body)


def encode_subscribe(packet_id: int, topic_filters: list[str], qos: int = 1) -> bytes:
    """A SUBSCRIBE packet asking for each filter at ``qos``."""
    payload = b"".join(_string(topic) + bytes([qos]) for topic in topic_filters)
    return _packet(0x82, packet_id.to_bytes(2, "big") + b"\x00" + payload)


def encode_pubacks(packet_ids: list[int]) -> bytes:
    """PUBACKs (success, no properties: the two-byte short form) for many messages at once."""
    return b"".join(b"\x40\x02" + pid.to_bytes(2, "big") for pid in packet_ids)


@dataclass(frozen=True, slots=True)
class Publish:
    """An application message delivered by the broker."""

    topic: str
    payload: bytes
    packet_id: int  # 0 for QoS 0
    qos: int
    retain: bool
    dup: bool


@dataclass(frozen=True, slots=True)
class Packet:
    """Any other control packet: its type, the fixed header's flags and its body."""

    kind: int
    flags: int
    body: bytes


@dataclass(frozen=True, slots=True)
class ConnAck:
    """The broker's answer to CONNECT."""

    session_present: bool
    reason: int
    server_keep_alive: int | None = None
    reason_string: str | None = None
    maximum_qos: int = 2  # absent: the broker supports QoS 2
    shared_subscriptions: bool = True  # Shared Subscription Available; absent: available


@dataclass(frozen=True, slots=True)
class SubAck:
    """The broker's answer to SUBSCRIBE: one reason code per topic filter."""

    packet_id: int
    reasons: tuple[int, ...] = field(default_factory=tuple)


def _read_varint(data: bytes | bytearray, pos: int, end: int) -> tuple[int, int] | None:
    """A variable byte integer at ``pos``: (value, next position), None if incomplete."""
    value = 0
    for shift in range(4):
        if pos >= end:
            return None
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << (7 * shift)
        if not byte & 0x80:
            return value, pos
    message = "a variable byte integer longer than four bytes"
    raise ProtocolError(message)


_FIXED_SIZES: Final = {_BYTE: 1, _TWO: 2, _FOUR: 4}
TOPIC_ALIAS: Final = 0x23


def _need(pos: int, end: int) -> None:
    if pos > end:
        message = "a property runs past the end of its block"
        raise ProtocolError(message)


def _utf8(raw: bytes | bytearray) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError as exc:
        message = f"a string that is not valid UTF-8: {exc}"
        raise ProtocolError(message) from exc


def read_properties(body: bytes, pos: int) -> tuple[dict[int, int | str | bytes], int]:
    """The property block at ``pos``: (the properties we may use, the position after it)."""
    parsed = _read_varint(body, pos, len(body))
    if parsed is None:
        message = "properties run past the end of the packet"
        raise ProtocolError(message)
    length, pos = parsed
    end = pos + length
    if end > len(body):
        message = "properties run past the end of the packet"
        raise ProtocolError(message)
    found: dict[int, int | str | bytes] = {}
    while pos < end:
        ident = body[pos]
        pos += 1
        kind = _PROPERTY_KINDS.get(ident)
        value: int | str | bytes
        if kind in _FIXED_SIZES:
            size = _FIXED_SIZES[kind]
            _need(pos + size, end)
            value, pos = int.from_bytes(body[pos : pos + size], "big"), pos + size
        elif kind == _VARINT:
            number = _read_varint(body, pos, end)
            if number is None:
                message = "a property runs past the end of its block"
                raise ProtocolError(message)
            value, pos = number
        elif kind in (_STRING, _BINARY):
            _need(pos + 2, end)
            size = int.from_bytes(body[pos : pos + 2], "big")
            _need(pos + 2 + size, end)
            raw = body[pos + 2 : pos + 2 + size]
            value = _utf8(raw) if kind == _STRING else raw
            pos += 2 + size
        elif kind == _PAIR:
            for _ in range(2):
                _need(pos + 2, end)
                pos += 2 + int.from_bytes(body[pos : pos + 2], "big")
                _need(pos, end)
            continue
        else:
            message = f"unknown property identifier 0x{ident:02x}"
            raise ProtocolError(message)
        found[ident] = value
    if pos != end:
        message = "a property runs past the end of its block"
        raise ProtocolError(message)
    return found, end


def parse_connack(body: bytes) -> ConnAck:
    """Read a CONNACK's body."""
    if len(body) < 2:  # acknowledge flags and reason code
        message = "CONNACK shorter than two bytes"
        raise ProtocolError(message)
    properties: dict[int, int | str | bytes] = {}
    if len(body) > 2:
        properties, _ = read_properties(body, 2)
    keep_alive = properties.get(SERVER_KEEP_ALIVE)
    reason_string = properties.get(REASON_STRING)
    maximum_qos = properties.get(MAXIMUM_QOS, 2)
    shared = properties.get(SHARED_SUBSCRIPTION_AVAILABLE, 1)
    return ConnAck(
        session_present=bool(body[0] & 0x01),
        reason=body[1],
        server_keep_alive=keep_alive if isinstance(keep_alive, int) else None,
        reason_string=reason_string if isinstance(reason_string, str) else None,
        maximum_qos=maximum_qos if isinstance(maximum_qos, int) else 2,
        shared_subscriptions=shared != 0,
    )


def parse_suback(body: bytes) -> SubAck:
    """Read a SUBACK's body."""
    if len(body) < 3:  # packet id and an empty property block at least
        message = "SUBACK shorter than three bytes"
        raise ProtocolError(message)
    _, pos = read_properties(body, 2)
    return SubAck(int.from_bytes(body[:2], "big"), tuple(body[pos:]))


def disconnect_reason(body: bytes) -> str:
    """Why the broker closed the connection, from its DISCONNECT body."""
    if not body:
        return "normal disconnection (0x00)"
    words = describe_reason(body[0])
    if len(body) > 1:
        properties, _ = read_properties(body, 1)
        detail = properties.get(REASON_STRING)
        if isinstance(detail, str):
            words += f": {detail}"
    return words


class PacketReader:
    """Turns a byte stream into packets, however the stream was cut into reads.

    PUBLISH packets, the hot path, are parsed here in one pass over the buffer; other packets
    are returned whole for the caller to read.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Publish | Packet]:
        """Add what was read; return every packet now complete, in order."""
        buffer = self._buffer
        buffer += data
        packets: list[Publish | Packet] = []
        pos = 0
        end = len(buffer)
        while end - pos >= 2:  # the smallest packet
            first = buffer[pos]
            header = _read_varint(buffer, pos + 1, end)
            if header is None:
                break
            length, start = header
            stop = start + length
            if stop > end:
                break
            kind = first >> 4
            if kind == PacketType.PUBLISH:
                packets.append(_parse_publish(first & 0x0F, buffer, start, stop))
            else:
                packets.append(Packet(kind, first & 0x0F, bytes(buffer[start:stop])))
            pos = stop
        if pos:
            del buffer[:pos]
        return packets

    def __len__(self) -> int:
        """Bytes read but not yet part of a complete packet."""
        return len(self._buffer)


def _parse_publish(flags: int, buffer: bytearray, start: int, stop: int) -> Publish:
    qos = (flags >> 1) & 0x03
    if qos == 3:
        message = "PUBLISH with QoS 3"
        raise ProtocolError(message)
    if qos == 2:
        # We subscribe at QoS 1: a broker must never send more than it granted.
        message = "PUBLISH with QoS 2 on a QoS 1 subscription"
        raise ProtocolError(message, PROTOCOL_ERROR)
    topic_length = int.from_bytes(buffer[start : start + 2], "big")
    pos = start + 2 + topic_length
    if not topic_length:
        # Only a Topic Alias may stand for an empty topic, and we allow none.
        message = "PUBLISH with an empty topic"
        raise ProtocolError(message)
    topic = _utf8(buffer[start + 2 : pos])
    packet_id = 0
    if qos:
        packet_id = int.from_bytes(buffer[pos : pos + 2], "big")
        if not packet_id:
            message = "PUBLISH at QoS 1 with packet id 0"
            raise ProtocolError(message)
        pos += 2
    properties = _read_varint(buffer, pos, stop)
    if properties is None or properties[0] + properties[1] > stop:
        message = "PUBLISH properties run past the end of the packet"
        raise ProtocolError(message)
    if properties[0]:
        # Rare (brokers forward properties only when publishers set them): read them, since a
        # Topic Alias would change the topic and we announced a Topic Alias Maximum of 0.
        found, _ = read_properties(bytes(buffer[pos:stop]), 0)
        if TOPIC_ALIAS in found:
            message = "PUBLISH with a Topic Alias, which this client does not allow"
            raise ProtocolError(message, PROTOCOL_ERROR)
    pos = properties[0] + properties[1]
    return Publish(
        topic=topic,
        payload=bytes(buffer[pos:stop]),
        packet_id=packet_id,
        qos=qos,
        retain=bool(flags & 0x01),
        dup=bool(flags & 0x08),
    )
