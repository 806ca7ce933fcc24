"""Nwave in-ground parking sensors: NPS310SM and NPS405.

Both send a parking status on fPort 1, a heartbeat on 2 and a start-up message on 3; bit 0 of
the first byte (of the fifth byte, in a start-up message) is the occupancy. Nwave documents
only the leading bytes read here and tells integrators to read those; what follows them is
reserved, so it is not an error.
"""

from __future__ import annotations

from typing import Any

from citytel.decoding.codecs.reader import ByteReader

NPS310_NAME = "nwave-nps310"
NPS405_NAME = "nwave-nps405"

_NPS310_RESET_CAUSES = {1: "watchdog", 2: "power_on", 3: "user_request", 4: "brownout", 5: "other"}
_NPS405_RESET_CAUSES = {
    0: "rejoining_lorawan_network",
    1: "watchdog",
    2: "power_on",
    3: "user_request",
    6: "brownout",
    7: "other",
}


def decode_nps310(f_port: int, raw: bytes) -> dict[str, Any]:
    """Decode an NPS310SM payload into named fields.

    Raises:
        RejectedMessage: ``undecodable`` for another port or a truncated payload.
    """
    reader = ByteReader(NPS310_NAME, f_port, raw)
    if f_port in {1, 2}:
        kind = "parking_status" if f_port == 1 else "heartbeat"
        return {"type": kind, "occupied": bool(reader.u8("status") & 0x01)}
    if f_port == 3:
        return _startup(reader, _NPS310_RESET_CAUSES)
    problem = "only fPort 1 (status), 2 (heartbeat) and 3 (start-up) are decoded"
    raise reader.fail(problem)


def decode_nps405(f_port: int, raw: bytes) -> dict[str, Any]:
    """Decode an NPS405 payload into named fields.

    Raises:
        RejectedMessage: ``undecodable`` for another port or a truncated payload.
    """
    reader = ByteReader(NPS405_NAME, f_port, raw)
    if f_port == 1:
        status = reader.u8("status")
        return {
            "type": "parking_status",
            "occupied": bool(status & 0x01),
            "previous_state_duration": _duration(status >> 1),
        }
    if f_port == 2:
        return _nps405_heartbeat(reader)
    if f_port == 3:
        return _startup(reader, _NPS405_RESET_CAUSES)
    problem = "only fPort 1 (status), 2 (heartbeat) and 3 (start-up) are decoded"
    raise reader.fail(problem)


def _duration(compressed: int) -> int:
    # Seven bits cover up to 11 hours: exact below 90, then steps of 5, then of 60; 127 means
    # "longer than that" and reads as the ceiling.
    if compressed < 90:
        return compressed
    if compressed < 120:
        return 90 + (compressed - 90) * 5
    return 240 + (compressed - 120) * 60


def _nps405_heartbeat(reader: ByteReader) -> dict[str, Any]:
    occupied = bool(reader.u8("status") & 0x01)
    battery_mv = 2500 + 4 * reader.u8("battery voltage")
    temperature = reader.i8("temperature") / 2 + 10
    # The vendor's battery health thresholds, lowered in the cold where cells sag.
    low_mv, critical_mv = (3000, 2900) if temperature >= -5 else (2900, 2800)
    if battery_mv >= low_mv:
        health = "normal"
    elif battery_mv >= critical_mv:
        health = "low"
    else:
        health = "critical"
    return {
        "type": "heartbeat",
        "occupied": occupied,
        "battery_voltage": battery_mv / 1000,
        "temperature": temperature,
        "battery_health": health,
    }


def _startup(reader: ByteReader, causes: dict[int, str]) -> dict[str, Any]:
    major, minor, patch = reader.take(3, "firmware version")
    cause = reader.u8("reset cause")
    return {
        "type": "startup",
        "firmware_version": f"{major}.{minor}.{patch}",
        "reset_cause": causes.get(cause, f"unknown ({cause})"),
        "occupied": bool(reader.u8("status") & 0x01),
    }
