"""Milesight channel format (EM310-UDL, EM400-MUD, EM500-UDL): ``channel, type, value``...

Values are little-endian. A channel this table does not know has a length nobody can tell,
so the whole payload is refused rather than half-read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from citytel.decoding.codecs.reader import ByteReader

NAME = "milesight"

Channel = Callable[[ByteReader], dict[str, Any]]


def _position(reader: ByteReader) -> dict[str, Any]:
    return {"position": "tilt" if reader.u8("position") else "normal"}


def _temperature(reader: ByteReader) -> dict[str, Any]:
    return {"temperature": reader.i16le("temperature") / 10}


def _distance(reader: ByteReader) -> dict[str, Any]:
    return {"distance": reader.u16le("distance")}


def _version(reader: ByteReader, name: str) -> dict[str, Any]:
    major, minor = reader.take(2, name)
    return {name: f"{major}.{minor}"}


# Device-information channels (0xFF xx) come in the frame a sensor sends when it powers on;
# their lengths are the same on every Milesight sensor, so they can be read past safely.
_CHANNELS: dict[tuple[int, int], Channel] = {
    (0x01, 0x75): lambda r: {"battery": r.u8("battery")},
    (0x03, 0x82): _distance,
    (0x04, 0x82): _distance,
    (0x04, 0x00): _position,
    (0x05, 0x00): _position,
    (0x03, 0x67): _temperature,
    (0x83, 0x67): lambda r: {
        **_temperature(r),
        "temperature_abnormal": bool(r.u8("temperature alarm")),
    },
    (0x84, 0x82): lambda r: {**_distance(r), "distance_alarming": bool(r.u8("distance alarm"))},
    (0xFF, 0x01): lambda r: {"ipso_version": r.u8("IPSO version")},
    (0xFF, 0x09): lambda r: _version(r, "hardware_version"),
    (0xFF, 0x0A): lambda r: _version(r, "firmware_version"),
    (0xFF, 0x0B): lambda r: {"device_status": "on" if r.u8("device status") else "off"},
    (0xFF, 0x0F): lambda r: {"lorawan_class": r.u8("LoRaWAN class")},
    (0xFF, 0x16): lambda r: {"sn": r.take(8, "serial number").hex().upper()},
    (0xFF, 0xFF): lambda r: _version(r, "tsl_version"),
}


def decode(f_port: int, raw: bytes) -> dict[str, Any]:
    """Decode a Milesight channel-format payload into named fields.

    Raises:
        RejectedMessage: ``undecodable`` for an empty payload, an unknown channel or a
            truncated value.
    """
    reader = ByteReader(NAME, f_port, raw)
    if not raw:
        problem = "no channels"
        raise reader.fail(problem)
    fields: dict[str, Any] = {}
    while reader.remaining:
        at = reader.position
        channel_id, channel_type = reader.take(2, "channel header")
        read = _CHANNELS.get((channel_id, channel_type))
        if read is None:
            problem = (
                f"unknown channel {channel_id:02X} {channel_type:02X} at offset {at}; "
                "its length is unknown, so the payload is not read"
            )
            raise reader.fail(problem)
        fields.update(read(reader))
    return fields
