"""citytel's domain: what a reading is, what a device is. No I/O here."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

# The gateway of a device whose fleet entry names none (migrations/0011_gateways.sql).
DEFAULT_GATEWAY = "default"


class Reason(enum.StrEnum):
    """Why a message went to the dead-letter store: stable codes to filter and count by."""

    PAYLOAD_TOO_LARGE = "payload_too_large"
    NOT_UTF8 = "not_utf8"
    INVALID_JSON = "invalid_json"
    WRONG_TYPE = "wrong_type"
    MISSING_FIELD = "missing_field"
    OUT_OF_RANGE = "out_of_range"
    BAD_TIMESTAMP = "bad_timestamp"
    TOO_OLD = "too_old"
    BAD_TOPIC = "bad_topic"
    UNKNOWN_DEVICE = "unknown_device"
    WRONG_GATEWAY = "wrong_gateway"
    STORAGE_REJECTED = "storage_rejected"
    UNDECODABLE = "undecodable"
    UNKNOWN_MODEL = "unknown_model"
    MISCONFIGURED_DEVICE = "misconfigured_device"
    UNREADABLE = "unreadable"


class DeviceKind(enum.StrEnum):
    """The two kinds of device citytel knows; the value is the topic segment."""

    WASTE = "waste"
    PARKING = "parking"


@dataclass(frozen=True, slots=True)
class WasteReading:
    """One fill-level measurement of a waste container."""

    container_id: str
    ts: datetime
    fill_pct: float
    battery_pct: float | None = None
    temperature_c: float | None = None

    @property
    def device_id(self) -> str:
        return self.container_id


@dataclass(frozen=True, slots=True)
class ParkingReading:
    """One occupancy observation of a parking spot."""

    spot_id: str
    ts: datetime
    occupied: bool
    battery_pct: float | None = None

    @property
    def device_id(self) -> str:
        return self.spot_id


Reading = WasteReading | ParkingReading


class HealthKind(enum.StrEnum):
    """What a sensor frame that is not a measurement says about the sensor itself."""

    HEARTBEAT = "heartbeat"
    STARTUP = "startup"
    TILTED = "tilted"
    NO_ECHO = "no_echo"
    DISTANCE_BEYOND_DEPTH = "distance_beyond_depth"
    BATTERY = "battery"


@dataclass(frozen=True, slots=True)
class HealthEvent:
    """Something a sensor said about itself: alive, restarted, tilted, blind, or its battery.

    A level sensor that is tilted or hears no echo reports a distance that is no fill level;
    it becomes a health event instead of a reading, so the container's fill is not corrupted.
    """

    device_kind: DeviceKind
    device_id: str
    ts: datetime
    event: HealthKind
    battery_pct: float | None = None
    temperature_c: float | None = None
    detail: str = ""


Outcome = WasteReading | ParkingReading | HealthEvent


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that could not become readings, kept with its raw bytes and the reason."""

    topic: str
    payload: bytes
    reason: Reason
    detail: str
    received_at: datetime


@dataclass(frozen=True, slots=True)
class DecodedMessage:
    """The readings of one MQTT message about one device, before the registry check."""

    kind: DeviceKind
    device_id: str
    readings: tuple[Reading, ...]
    topic: str
    payload: bytes
    received_at: datetime
    events: tuple[HealthEvent, ...] = ()
    f_cnt: int | None = None
    gateway: str | None = None
    """The gateway segment of a native topic; ``None`` for a LoRaWAN uplink (bound by its
    network-server application, checked before this message is made)."""
