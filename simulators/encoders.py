"""Sensor payloads as the devices send them: the inverse of citytel's codecs.

Each encoder takes physical values, quantises them the way the device does, and returns a
:class:`Frame`: the fPort and bytes on the air, the fields citytel's codec reads back from
them, and the object the vendor's payload formatter makes of them on the network server. The
unit tests hold every encoder to citytel's own decoders, so the contract is shared, not copied.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

MILESIGHT_PORT = 85
DECENTLAB_PORT = 1
DECENTLAB_PROTOCOL = 2
DRAGINO_PORT = 2
# The LDDS75 probe cannot hear an echo closer than this; Dragino's formatter says so.
DRAGINO_MIN_MM = 280
STATUS_PORT = 1
HEARTBEAT_PORT = 2
RESERVED_NPS405 = bytes([0x00, 0x59, 0x0B])

_U16 = 0xFFFF


@dataclass(frozen=True, slots=True)
class Frame:
    """One uplink's application payload and what it means.

    Attributes:
        f_port: the LoRaWAN port.
        raw: the application payload bytes.
        fields: what citytel reads from it: its codec's output, or, for a model decoded on the
            network server only, the fields its profile finds in ``network``.
        network: the object the vendor's payload formatter returns on the network server.
    """

    f_port: int
    raw: bytes
    fields: dict[str, Any]
    network: dict[str, Any] = field(default_factory=dict)


def _clamp(value: float, low: int, high: int) -> int:
    return min(max(round(value), low), high)


def _js_number(value: float) -> str:
    # How JavaScript prints a number: no ".0" on whole numbers, else the shortest round trip.
    return str(int(value)) if value == int(value) else repr(value)


# Milesight channel format (EM310-UDL, EM400-MUD, EM500-UDL), little-endian.


def _milesight_battery(battery_pct: float) -> tuple[bytes, int]:
    battery = _clamp(battery_pct, 0, 100)
    return bytes([0x01, 0x75, battery]), battery


def _milesight_distance(channel: int, distance_mm: int) -> tuple[bytes, int]:
    distance = _clamp(distance_mm, 0, _U16)
    return bytes([channel, 0x82]) + struct.pack("<H", distance), distance


def milesight_em310(distance_mm: int, battery_pct: float, *, tilted: bool = False) -> Frame:
    """An EM310-UDL periodic report: battery, distance, position."""
    battery_bytes, battery = _milesight_battery(battery_pct)
    distance_bytes, distance = _milesight_distance(0x03, distance_mm)
    position = "tilt" if tilted else "normal"
    raw = battery_bytes + distance_bytes + bytes([0x04, 0x00, int(tilted)])
    fields = {"battery": battery, "distance": distance, "position": position}
    return Frame(MILESIGHT_PORT, raw, fields, dict(fields))


def milesight_em400(
    distance_mm: int, battery_pct: float, temperature_c: float, *, tilted: bool = False
) -> Frame:
    """An EM400-MUD periodic report: battery, temperature, distance, position."""
    battery_bytes, battery = _milesight_battery(battery_pct)
    tenths = _clamp(temperature_c * 10, -0x8000, 0x7FFF)
    distance_bytes, distance = _milesight_distance(0x04, distance_mm)
    position = "tilt" if tilted else "normal"
    raw = (
        battery_bytes
        + bytes([0x03, 0x67])
        + struct.pack("<h", tenths)
        + distance_bytes
        + bytes([0x05, 0x00, int(tilted)])
    )
    fields = {
        "battery": battery,
        "temperature": tenths / 10,
        "distance": distance,
        "position": position,
    }
    return Frame(MILESIGHT_PORT, raw, fields, dict(fields))


def milesight_em500(distance_mm: int, battery_pct: float) -> Frame:
    """An EM500-UDL periodic report: battery, distance."""
    battery_bytes, battery = _milesight_battery(battery_pct)
    distance_bytes, distance = _milesight_distance(0x03, distance_mm)
    fields = {"battery": battery, "distance": distance}
    return Frame(MILESIGHT_PORT, battery_bytes + distance_bytes, fields, dict(fields))


def milesight_battery_byte(frame: Frame, battery: int) -> Frame:
    """The same report with another raw battery byte (over 100 is what a faulty unit sends)."""
    raw = bytearray(frame.raw)
    raw[2] = battery
    return Frame(frame.f_port, bytes(raw), {**frame.fields, "battery": battery}, {})


# Decentlab DL-MBX, protocol version 2, big-endian.


def decentlab_mbx(
    device_id: int,
    *,
    distance_mm: int | None = None,
    valid_samples: int = 1,
    battery_v: float | None = None,
) -> Frame:
    """A DL-MBX uplink with the distance, the battery voltage, or both."""
    flags = 0
    words: list[int] = []
    fields: dict[str, Any] = {"protocol_version": DECENTLAB_PROTOCOL, "device_id": device_id}
    network: dict[str, Any] = {"device_id": device_id, "protocol_version": DECENTLAB_PROTOCOL}
    if distance_mm is not None:
        flags |= 0x01
        distance = _clamp(distance_mm, 0, _U16)
        words += [distance, valid_samples]
        fields |= {"distance": distance, "number_of_valid_samples": valid_samples}
        network |= {
            "distance": {"displayName": "Distance", "unit": "mm", "value": distance},
            "number_of_valid_samples": {
                "displayName": "Number of valid samples",
                "value": valid_samples,
            },
        }
    if battery_v is not None:
        flags |= 0x02
        millivolts = _clamp(battery_v * 1000, 0, _U16)
        words.append(millivolts)
        fields["battery_voltage"] = millivolts / 1000
        network["battery_voltage"] = {
            "displayName": "Battery voltage",
            "unit": "V",
            "value": millivolts / 1000,
        }
    raw = struct.pack(f">BHH{len(words)}H", DECENTLAB_PROTOCOL, device_id, flags, *words)
    return Frame(DECENTLAB_PORT, raw, fields, network)


# Dragino LDDS75: decoded on the network server only. The bytes are sent all the same.


def dragino_ldds75(distance_mm: int, battery_v: float) -> Frame:
    """An LDDS75 uplink (fPort 2, 8 bytes) and what Dragino's formatter makes of it.

    ``fields`` holds what citytel's profile reads from the formatter's strings with units.
    """
    millivolts = _clamp(battery_v * 1000, 0, 0x3FFF)
    distance = _clamp(distance_mm, 0, _U16)
    raw = struct.pack(">HHBhB", millivolts, distance, 0, 0, 1)
    volts = millivolts / 1000
    if distance == 0:
        shown: str = "No Sensor"
    elif distance < DRAGINO_MIN_MM:
        shown = "Invalid Reading"
    else:
        shown = f"{distance} mm"
    network = {
        "Bat": f"{_js_number(volts)} V",
        "Distance": shown,
        "Interrupt_flag": 0,
        "Sensor_flag": 1,
        "TempC_DS18B20": "0.00",
    }
    read: float | str = float(distance) if shown.endswith(" mm") else shown
    return Frame(DRAGINO_PORT, raw, {"distance": read, "battery": volts}, network)


# In-ground parking sensors: status on fPort 1, heartbeat on fPort 2.


def bosch_tps110_status(*, occupied: bool) -> Frame:
    """A TPS110 parking status."""
    fields = {"type": "parking_status", "occupied": occupied}
    # The formatter in The Things Network's device repository spells the type with a space.
    network = {"type": "parking status", "occupied": occupied}
    return Frame(STATUS_PORT, bytes([int(occupied)]), fields, network)


def bosch_tps110_heartbeat(*, occupied: bool, temperature_c: float) -> Frame:
    """A TPS110 heartbeat with the temperature byte of current firmware (int8, °C)."""
    temperature = _clamp(temperature_c, -128, 127)
    raw = bytes([int(occupied)]) + struct.pack(">b", temperature)
    fields = {"type": "heartbeat", "occupied": occupied, "temperature": temperature}
    return Frame(HEARTBEAT_PORT, raw, fields, dict(fields))


def nwave_nps310_status(*, occupied: bool) -> Frame:
    """An NPS310SM parking status."""
    fields = {"type": "parking_status", "occupied": occupied}
    return Frame(STATUS_PORT, bytes([int(occupied)]), fields, dict(fields))


def nwave_nps310_heartbeat(*, occupied: bool) -> Frame:
    """An NPS310SM heartbeat."""
    fields = {"type": "heartbeat", "occupied": occupied}
    return Frame(HEARTBEAT_PORT, bytes([int(occupied)]), fields, dict(fields))


def compress_duration(minutes: float) -> tuple[int, int]:
    """NPS405's seven-bit duration code of ``minutes`` and the minutes it reads back as.

    Exact below 90, then steps of 5 up to 240, then of 60 up to 660, the ceiling.
    """
    whole = max(0, int(minutes))
    if whole < 90:
        return whole, whole
    if whole < 240:
        code = 90 + (whole - 90) // 5
        return code, 90 + (code - 90) * 5
    code = min(127, 120 + (whole - 240) // 60)
    return code, 240 + (code - 120) * 60


def nwave_nps405_status(*, occupied: bool, previous_state_min: float) -> Frame:
    """An NPS405 parking status with how long the previous state lasted."""
    code, duration = compress_duration(previous_state_min)
    raw = bytes([code << 1 | int(occupied)])
    fields = {"type": "parking_status", "occupied": occupied, "previous_state_duration": duration}
    return Frame(STATUS_PORT, raw, fields, dict(fields))


def nwave_nps405_heartbeat(*, occupied: bool, battery_v: float, temperature_c: float) -> Frame:
    """An NPS405 heartbeat: battery in 4 mV steps above 2.5 V, temperature in half degrees."""
    battery = _clamp((battery_v * 1000 - 2500) / 4, 0, 255)
    half_degrees = _clamp((temperature_c - 10) * 2, -128, 127)
    # The last three bytes are reserved; these are the vendor's example's.
    raw = bytes([int(occupied), battery]) + struct.pack(">b", half_degrees) + RESERVED_NPS405
    millivolts = 2500 + 4 * battery
    temperature = half_degrees / 2 + 10
    low, critical = (3000, 2900) if temperature >= -5 else (2900, 2800)
    health = "normal" if millivolts >= low else "low" if millivolts >= critical else "critical"
    fields = {
        "type": "heartbeat",
        "occupied": occupied,
        "battery_voltage": millivolts / 1000,
        "temperature": temperature,
        "battery_health": health,
    }
    return Frame(HEARTBEAT_PORT, raw, fields, dict(fields))
