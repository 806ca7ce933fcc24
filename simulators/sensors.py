"""The sensor models of the fleet: what each sends for the simulated city, and what that means.

A device's state (a fill level, an occupancy) becomes a measurement in the sensor's own terms
(a distance down to the waste, a heartbeat), which its model's encoder turns into bytes. The
ground truth is then computed back from exactly what was encoded, with the model's profile:
the fill level from the whole millimetres on the wire, the battery percentage from the voltage
the way the profile maps it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

from citytel.decoding import DeviceProfile, load_profiles
from citytel.domain import HealthKind
from citytel.formats.native import ParkingPayload, WastePayload
from simulators import encoders
from simulators.encoders import Frame

PROFILES_DIR = Path(__file__).resolve().parents[1] / "sensors" / "profiles"
# An unknown channel: the Milesight codec cannot know its length, so it refuses the payload.
_UNKNOWN_MILESIGHT_CHANNEL = bytes([0x0A, 0xC8, 0x00])
_UNKNOWN_PORT = 9
# Over 100 %: what a Milesight unit with a corrupted battery register sends.
_BAD_BATTERY_PCT = 0xFA
# Above the warmest temperature citytel accepts: a TPS110 with a failing thermistor.
_BAD_TEMPERATURE_C = 127


@cache
def bundled_profiles() -> dict[str, DeviceProfile]:
    """The device profiles in ``sensors/profiles``, keyed by model id."""
    return load_profiles(PROFILES_DIR)


@dataclass(frozen=True, slots=True)
class LevelMeasurement:
    """What a level sensor measured: the distance down to the waste, its battery, the air.

    ``battery_only`` makes it an uplink without the distance, a health message.
    """

    distance_mm: int
    battery_pct: float
    temperature_c: float
    battery_only: bool = False


@dataclass(frozen=True, slots=True)
class SpotMeasurement:
    """What an in-ground sensor reports: occupancy, as a status change or a heartbeat."""

    occupied: bool
    heartbeat: bool
    battery_pct: float
    temperature_c: float
    previous_state_min: float = 0.0


Measurement = LevelMeasurement | SpotMeasurement


@dataclass(frozen=True, slots=True)
class ExpectedHealth:
    """A health event citytel should record for a message (its detail text is not predicted)."""

    event: HealthKind
    ts: datetime
    battery_pct: float | None = None
    temperature_c: float | None = None


def distance_for(fill_pct: float, depth_mm: int, full_mark_mm: int) -> int:
    """The distance a level sensor measures at ``fill_pct``: D - fill * (D - F), in whole mm."""
    return round(depth_mm - fill_pct / 100 * (depth_mm - full_mark_mm))


def fill_pct_for(distance_mm: float, depth_mm: int, full_mark_mm: int) -> float:
    """The fill level a distance reads as: (D - distance) / (D - F), clamped, in 0.1 %.

    The same arithmetic as the profile's, so that the ground truth is what citytel stores.
    """
    fill = min(max((depth_mm - float(distance_mm)) / (depth_mm - full_mark_mm), 0.0), 1.0)
    return round(fill * 100, 1)


def volts_for(profile: DeviceProfile, battery_pct: float) -> float:
    """The cell voltage at which ``profile`` reads ``battery_pct``."""
    battery = profile.battery
    if battery is None or battery.empty_v is None or battery.full_v is None:
        message = f"profile {profile.model} has no battery voltage range"
        raise ValueError(message)
    return battery.empty_v + battery_pct / 100 * (battery.full_v - battery.empty_v)


def _level(measurement: Measurement) -> LevelMeasurement:
    if not isinstance(measurement, LevelMeasurement):
        message = f"a level sensor cannot send {measurement!r}"
        raise TypeError(message)
    return measurement


def _spot(measurement: Measurement) -> SpotMeasurement:
    if not isinstance(measurement, SpotMeasurement):
        message = f"a parking sensor cannot send {measurement!r}"
        raise TypeError(message)
    return measurement


def _em310(m: Measurement, _profile: DeviceProfile, _number: int) -> Frame:
    level = _level(m)
    return encoders.milesight_em310(level.distance_mm, level.battery_pct)


def _em400(m: Measurement, _profile: DeviceProfile, _number: int) -> Frame:
    level = _level(m)
    return encoders.milesight_em400(level.distance_mm, level.battery_pct, level.temperature_c)


def _em500(m: Measurement, _profile: DeviceProfile, _number: int) -> Frame:
    level = _level(m)
    return encoders.milesight_em500(level.distance_mm, level.battery_pct)


def _dl_mbx(m: Measurement, profile: DeviceProfile, number: int) -> Frame:
    level = _level(m)
    distance = None if level.battery_only else level.distance_mm
    battery_v = volts_for(profile, level.battery_pct)
    return encoders.decentlab_mbx(number & 0xFFFF, distance_mm=distance, battery_v=battery_v)


def _ldds75(m: Measurement, profile: DeviceProfile, _number: int) -> Frame:
    level = _level(m)
    return encoders.dragino_ldds75(level.distance_mm, volts_for(profile, level.battery_pct))


def _tps110(m: Measurement, _profile: DeviceProfile, _number: int) -> Frame:
    spot = _spot(m)
    if spot.heartbeat:
        return encoders.bosch_tps110_heartbeat(
            occupied=spot.occupied, temperature_c=spot.temperature_c
        )
    return encoders.bosch_tps110_status(occupied=spot.occupied)


def _nps310(m: Measurement, _profile: DeviceProfile, _number: int) -> Frame:
    spot = _spot(m)
    if spot.heartbeat:
        return encoders.nwave_nps310_heartbeat(occupied=spot.occupied)
    return encoders.nwave_nps310_status(occupied=spot.occupied)


def _nps405(m: Measurement, profile: DeviceProfile, _number: int) -> Frame:
    spot = _spot(m)
    if spot.heartbeat:
        return encoders.nwave_nps405_heartbeat(
            occupied=spot.occupied,
            battery_v=volts_for(profile, spot.battery_pct),
            temperature_c=spot.temperature_c,
        )
    return encoders.nwave_nps405_status(
        occupied=spot.occupied, previous_state_min=spot.previous_state_min
    )


def _unknown_channel(frame: Frame) -> Frame:
    return Frame(frame.f_port, frame.raw + _UNKNOWN_MILESIGHT_CHANNEL, {})


def _truncated(frame: Frame) -> Frame:
    return Frame(frame.f_port, frame.raw[:-1], {})


def _too_long(frame: Frame) -> Frame:
    return Frame(frame.f_port, frame.raw + bytes(2), {})


def _unknown_port(frame: Frame) -> Frame:
    return Frame(_UNKNOWN_PORT, frame.raw, {})


def _formatter_missing(frame: Frame) -> Frame:
    return Frame(frame.f_port, frame.raw, {})


def _milesight_bad_battery(frame: Frame) -> Frame:
    return encoders.milesight_battery_byte(frame, _BAD_BATTERY_PCT)


def _tps110_too_warm(frame: Frame) -> Frame:
    occupied = bool(frame.raw[0] & 0x01)
    hot = encoders.bosch_tps110_heartbeat(occupied=occupied, temperature_c=_BAD_TEMPERATURE_C)
    return Frame(hot.f_port, hot.raw, hot.fields)


Encode = Callable[[Measurement, DeviceProfile, int], Frame]
Garble = Callable[[Frame], Frame]


@dataclass(frozen=True, slots=True)
class SensorModel:
    """How one model of sensor behaves in the simulation.

    Attributes:
        encode: its uplink for a measurement (with its profile and its device number).
        garble: the same uplink made into bytes citytel's codec refuses, without a
            network-decoded object (``undecodable``).
        out_of_range: the same uplink with a value citytel refuses as impossible, where the
            model's format can carry one (``out_of_range``).
        network_only: its bytes are read on the network server only, so every uplink carries
            the formatter's object.
        battery_only_every: one uplink in this many carries the battery only, a health message.
    """

    encode: Encode
    garble: Garble
    out_of_range: Garble | None = None
    network_only: bool = False
    battery_only_every: int | None = None


MODELS: dict[str, SensorModel] = {
    "milesight-em310-udl": SensorModel(_em310, _unknown_channel, _milesight_bad_battery),
    "milesight-em400-mud": SensorModel(_em400, _unknown_channel, _milesight_bad_battery),
    "milesight-em500-udl": SensorModel(_em500, _unknown_channel, _milesight_bad_battery),
    # The sensor flags choose what each uplink carries; a battery-only one now and then
    # exercises the battery health event.
    "decentlab-dl-mbx": SensorModel(_dl_mbx, _truncated, battery_only_every=12),
    "dragino-ldds75": SensorModel(_ldds75, _formatter_missing, network_only=True),
    "bosch-tps110": SensorModel(_tps110, _too_long, _tps110_too_warm),
    "nwave-nps310sm": SensorModel(_nps310, _unknown_port),
    "nwave-nps405": SensorModel(_nps405, _unknown_port),
}


def sensor_model(model: str) -> SensorModel:
    """The behaviour of ``model``.

    Raises:
        ValueError: for a model the simulator cannot send.
    """
    found = MODELS.get(model)
    if found is None:
        message = f"the simulator cannot send as sensor model {model!r}; known: {sorted(MODELS)}"
        raise ValueError(message)
    return found


Payload = WastePayload | ParkingPayload


def expected(
    profile: DeviceProfile,
    fields: Mapping[str, Any],
    *,
    ts: datetime,
    depth_mm: int | None = None,
    full_mark_mm: int | None = None,
) -> tuple[tuple[Payload, ...], tuple[ExpectedHealth, ...]]:
    """The readings and health events citytel should make of one frame's decoded fields."""
    battery_pct = None
    if profile.battery is not None and profile.battery.field in fields:
        battery_pct = profile.battery.percent(fields[profile.battery.field])
    temperature = fields.get(profile.temperature_field) if profile.temperature_field else None
    temperature_c = None if temperature is None else float(temperature)

    def health(event: HealthKind) -> ExpectedHealth:
        return ExpectedHealth(event, ts, battery_pct, temperature_c)

    readings: list[Payload] = []
    events: list[ExpectedHealth] = []
    level = profile.level
    if level is not None:
        distance = fields.get(level.distance_field)
        samples = fields.get(level.samples_field) if level.samples_field else None
        depth = 0 if depth_mm is None else depth_mm
        full_mark = level.full_mark_mm if full_mark_mm is None else full_mark_mm
        if level.tilt_field is not None and fields.get(level.tilt_field) in level.tilt_values:
            events.append(health(HealthKind.TILTED))
        elif isinstance(distance, str) or samples == 0:
            events.append(health(HealthKind.NO_ECHO))
        elif distance is not None and distance > depth:
            events.append(health(HealthKind.DISTANCE_BEYOND_DEPTH))
        elif distance is not None:
            fill = fill_pct_for(distance, depth, full_mark)
            readings.append(
                WastePayload(
                    ts=ts, fill_pct=fill, battery_pct=battery_pct, temperature_c=temperature_c
                )
            )
    occupancy = profile.occupancy
    if occupancy is not None and occupancy.field in fields:
        occupied = bool(fields[occupancy.field])
        readings.append(ParkingPayload(ts=ts, occupied=occupied, battery_pct=battery_pct))
    frames = profile.frames
    if frames is not None:
        kind = fields.get(frames.field)
        if kind in frames.heartbeat:
            events.append(health(HealthKind.HEARTBEAT))
        elif kind in frames.startup:
            events.append(health(HealthKind.STARTUP))
    if not readings and not events and (battery_pct is not None or temperature_c is not None):
        events.append(health(HealthKind.BATTERY))
    return tuple(readings), tuple(events)
