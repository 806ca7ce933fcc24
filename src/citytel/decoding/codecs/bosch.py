"""Bosch TPS110 parking lot sensor: status (fPort 1), heartbeat (2), start-up (3)."""

from __future__ import annotations

from typing import Any

from citytel.decoding.codecs.reader import ByteReader

NAME = "bosch-tps110"
_RESET_CAUSES = {1: "watchdog", 2: "power_on", 3: "system_request", 4: "other"}
_STARTUP_BYTES = 17


def decode(f_port: int, raw: bytes) -> dict[str, Any]:
    """Decode a TPS110 payload into named fields.

    Raises:
        RejectedMessage: ``undecodable`` for another port or a length its layout does not have.
    """
    reader = ByteReader(NAME, f_port, raw)
    if f_port == 1:
        reader.exactly(1, "a parking status")
        return {"type": "parking_status", "occupied": bool(raw[0] & 0x01)}
    if f_port == 2:
        # The temperature byte came with a later firmware; older heartbeats are one byte.
        if len(raw) not in {1, 2}:
            problem = f"a heartbeat is 1 or 2 bytes, not {len(raw)}"
            raise reader.fail(problem)
        fields: dict[str, Any] = {"type": "heartbeat", "occupied": bool(reader.u8("status") & 1)}
        if reader.remaining:
            fields["temperature"] = reader.i8("temperature")
        return fields
    if f_port == 3:
        return _startup(reader)
    problem = "only fPort 1 (status), 2 (heartbeat) and 3 (start-up) are decoded"
    raise reader.fail(problem)


def _startup(reader: ByteReader) -> dict[str, Any]:
    reader.exactly(_STARTUP_BYTES, "a start-up message")
    debug = reader.take(12, "debug codes")
    # Three 4-byte debug records; the code is the low 12 bits of the first two bytes.
    codes = [((debug[i + 1] & 0x0F) << 8) | debug[i] for i in range(0, 12, 4)]
    major, minor, patch = reader.take(3, "firmware version")
    cause = reader.u8("reset cause")
    return {
        "type": "startup",
        "debug_codes": [code for code in codes if code],
        "firmware_version": f"{major}.{minor}.{patch}",
        "reset_cause": _RESET_CAUSES.get(cause, f"unknown ({cause})"),
        "occupied": bool(reader.u8("status") & 0x01),
    }
