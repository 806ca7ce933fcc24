"""Decentlab DL-MBX: ``version (u8 = 2), device id (u16), sensor flags (u16)``, then words.

Every value is big-endian. Each flag bit set announces one sensor's words, in bit order.
"""

from __future__ import annotations

from typing import Any

from citytel.decoding.codecs.reader import ByteReader

NAME = "decentlab-mbx"
PROTOCOL_VERSION = 2
_DISTANCE = 0x01
_BATTERY = 0x02


def decode(f_port: int, raw: bytes) -> dict[str, Any]:
    """Decode a DL-MBX payload into named fields.

    Raises:
        RejectedMessage: ``undecodable`` for another protocol version, an unknown sensor flag,
            or a length that does not match the flags.
    """
    reader = ByteReader(NAME, f_port, raw)
    version = reader.u8("protocol version")
    if version != PROTOCOL_VERSION:
        problem = f"protocol version {version}; only {PROTOCOL_VERSION} is known"
        raise reader.fail(problem)
    fields: dict[str, Any] = {"protocol_version": version, "device_id": reader.u16be("device id")}
    flags = reader.u16be("sensor flags")
    unknown = flags & ~(_DISTANCE | _BATTERY)
    if unknown:
        problem = f"sensor flags 0x{flags:04X} announce unknown sensors (0x{unknown:04X})"
        raise reader.fail(problem)
    if flags & _DISTANCE:
        fields["distance"] = reader.u16be("distance")
        fields["number_of_valid_samples"] = reader.u16be("number of valid samples")
    if flags & _BATTERY:
        fields["battery_voltage"] = reader.u16be("battery voltage") / 1000
    reader.end()
    return fields
