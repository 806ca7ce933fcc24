"""Device profiles: one declarative TOML file per sensor model, and what its fields mean.

A profile names the codec for the model's bytes, says which decoded fields hold the distance
or the occupancy, the battery and the temperature, how to read the network server's own
decoded object, and carries the vendor's published test vectors. :meth:`DeviceProfile.interpret`
turns decoded fields into readings and health events.
"""

from __future__ import annotations

import enum
import re
import tomllib
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from citytel.decoding.codecs import CODECS
from citytel.domain import (
    DeviceKind,
    HealthEvent,
    HealthKind,
    Outcome,
    ParkingReading,
    Reason,
    WasteReading,
)
from citytel.errors import ConfigurationError, RejectedMessage

MM_PER_UNIT = {"mm": 1.0, "cm": 10.0, "m": 1000.0}
MIN_TEMPERATURE_C = -60.0
MAX_TEMPERATURE_C = 120.0

_MODEL_ID = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


class Measure(enum.StrEnum):
    """What a sensor model measures."""

    BIN_LEVEL = "bin_level"
    SPOT_OCCUPANCY = "spot_occupancy"

    @property
    def device_kind(self) -> DeviceKind:
        """The kind of device this measure belongs to."""
        return DeviceKind.WASTE if self is Measure.BIN_LEVEL else DeviceKind.PARKING


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LevelFields(_Section):
    """How a level sensor's decoded fields become a fill level."""

    distance_field: str
    distance_unit: Literal["mm", "cm", "m"] = "mm"
    full_mark_mm: Annotated[int, Field(ge=0)]
    tilt_field: str | None = None
    tilt_values: list[str | int | bool] = ["tilt"]
    no_echo_values: list[str] = []
    samples_field: str | None = None


class OccupancyFields(_Section):
    """Which decoded field says whether a spot is taken."""

    field: str


class BatteryFields(_Section):
    """Where the battery is, and how a voltage becomes a percentage (linear, clamped)."""

    field: str
    unit: Literal["percent", "volt"]
    empty_v: float | None = None
    full_v: float | None = None

    @model_validator(mode="after")
    def _voltage_range(self) -> BatteryFields:
        if self.unit == "volt" and (
            self.empty_v is None or self.full_v is None or self.empty_v >= self.full_v
        ):
            message = "a battery in volts needs empty_v < full_v"
            raise ValueError(message)
        return self

    def percent(self, value: float) -> float:
        """The battery level in percent of a decoded value."""
        if self.unit == "percent":
            if not 0 <= value <= 100:
                detail = f"battery {value!r} % is outside 0-100"
                raise RejectedMessage(Reason.OUT_OF_RANGE, detail)
            return float(value)
        assert self.empty_v is not None  # noqa: S101 - checked by _voltage_range
        assert self.full_v is not None  # noqa: S101 - checked by _voltage_range
        share = (value - self.empty_v) / (self.full_v - self.empty_v)
        return round(min(max(share, 0.0), 1.0) * 100, 1)


class FrameFields(_Section):
    """Which decoded field names the kind of frame, and which kinds are health events."""

    field: str
    heartbeat: list[str] = []
    startup: list[str] = []
    detail_fields: list[str] = []


class NetworkFields(_Section):
    """How to read the object the network server's payload formatter produced.

    ``aliases`` maps a field name of this profile to the names to look for in that object,
    first found wins; a field without aliases is looked for under its own name. Values may be
    plain, Decentlab-style ``{"value": ..., "unit": ...}`` objects, or strings with a unit
    (``"1234 mm"``, ``"3.3 V"``); units are converted to the profile's.
    """

    aliases: dict[str, list[str]] = {}


class Vector(_Section):
    """A published example: input, the fields it decodes to, and what it becomes."""

    description: str
    f_port: int | None = None
    payload_hex: str | None = None
    network: dict[str, Any] | None = None
    decoded: dict[str, Any]
    depth_mm: int | None = None
    outcomes: list[str]
    fill_pct: float | None = None
    occupied: bool | None = None
    battery_pct: float | None = None
    temperature_c: float | None = None

    @model_validator(mode="after")
    def _one_input(self) -> Vector:
        if (self.payload_hex is None) == (self.network is None):
            message = "a vector has either payload_hex (with f_port) or network, not both"
            raise ValueError(message)
        if self.payload_hex is not None:
            if self.f_port is None:
                message = "a vector with payload_hex needs f_port"
                raise ValueError(message)
            bytes.fromhex(self.payload_hex)
        return self

    @property
    def raw(self) -> bytes | None:
        """The payload bytes, when the vector has them."""
        return None if self.payload_hex is None else bytes.fromhex(self.payload_hex)


class DeviceProfile(_Section):
    """One sensor model: its codec, the meaning of its fields, and its test vectors."""

    model: str
    vendor: str
    product: str
    measures: Measure
    codec: str | None = None
    temperature_field: str | None = None
    level: LevelFields | None = None
    occupancy: OccupancyFields | None = None
    battery: BatteryFields | None = None
    frames: FrameFields | None = None
    network: NetworkFields = NetworkFields()
    vectors: list[Vector] = []

    @model_validator(mode="after")
    def _consistent(self) -> DeviceProfile:
        if not _MODEL_ID.match(self.model):
            message = f"model {self.model!r} must be lower-case words joined by '-'"
            raise ValueError(message)
        if self.codec is not None and self.codec not in CODECS:
            message = f"codec {self.codec!r} is not one of {sorted(CODECS)}"
            raise ValueError(message)
        if self.measures is Measure.BIN_LEVEL and self.level is None:
            message = "a bin_level profile needs a [level] table"
            raise ValueError(message)
        if self.measures is Measure.SPOT_OCCUPANCY and self.occupancy is None:
            message = "a spot_occupancy profile needs an [occupancy] table"
            raise ValueError(message)
        return self

    @property
    def device_kind(self) -> DeviceKind:
        """Whether this model sits in a waste container or a parking spot."""
        return self.measures.device_kind

    def field_roles(self) -> dict[str, str]:
        """The decoded fields this profile reads, each with the role that fixes its unit."""
        roles: dict[str, str] = {}
        if self.level is not None:
            roles[self.level.distance_field] = "distance"
            for name in (self.level.tilt_field, self.level.samples_field):
                if name is not None:
                    roles[name] = "plain"
        if self.occupancy is not None:
            roles[self.occupancy.field] = "plain"
        if self.battery is not None:
            roles[self.battery.field] = "volt" if self.battery.unit == "volt" else "percent"
        if self.temperature_field is not None:
            roles[self.temperature_field] = "temperature"
        if self.frames is not None:
            roles[self.frames.field] = "plain"
            roles.update(dict.fromkeys(self.frames.detail_fields, "plain"))
        return roles

    def interpret(
        self,
        fields: Mapping[str, Any],
        *,
        device_id: str,
        ts: datetime,
        depth_mm: int | None = None,
        full_mark_mm: int | None = None,
    ) -> tuple[Outcome, ...]:
        """Turn decoded fields into a reading, health events, or both.

        A level becomes a :class:`WasteReading` with fill = (D - distance) / (D - F), clamped
        to 0-100 %, where D is the container's inner depth ``depth_mm`` and F the full mark
        (``full_mark_mm``, else the profile's default). A tilted sensor, no echo, or a distance
        beyond D is a health event instead. An occupancy becomes a :class:`ParkingReading`.
        Heartbeat and start-up frames add a health event; a frame with nothing but battery or
        temperature is a ``battery`` health event.

        Raises:
            RejectedMessage: ``undecodable`` when the fields hold nothing this profile reads,
                ``out_of_range`` for impossible values, ``misconfigured_device`` for a level
                sensor without a usable container depth.
        """
        context = _Context(self, fields, device_id, ts)
        outcomes: list[Outcome] = []
        if self.level is not None:
            outcomes.extend(context.level(self.level, depth_mm, full_mark_mm))
        if self.occupancy is not None:
            outcomes.extend(context.occupancy(self.occupancy))
        if self.frames is not None:
            outcomes.extend(context.frame(self.frames))
        if outcomes:
            return tuple(outcomes)
        if context.battery_pct is not None or context.temperature_c is not None:
            return (context.health(HealthKind.BATTERY, "no measurement in this frame"),)
        detail = (
            f"decoded fields {sorted(fields)} hold nothing profile {self.model} reads "
            f"(expected some of {sorted(self.field_roles())})"
        )
        raise RejectedMessage(Reason.UNDECODABLE, detail)


class _Context:
    """The fields of one frame, read for one profile."""

    def __init__(
        self, profile: DeviceProfile, fields: Mapping[str, Any], device_id: str, ts: datetime
    ) -> None:
        self.profile = profile
        self.fields = fields
        self.device_id = device_id
        self.ts = ts
        battery = profile.battery
        value = None if battery is None else self.number(battery.field)
        self.battery_pct = None if battery is None or value is None else battery.percent(value)
        self.temperature_c = self._temperature()

    def number(self, name: str) -> float | None:
        value = self.fields.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            detail = f"field {name!r} is {value!r}, not a number"
            raise RejectedMessage(Reason.UNDECODABLE, detail)
        return float(value)

    def _temperature(self) -> float | None:
        name = self.profile.temperature_field
        value = None if name is None else self.number(name)
        if value is not None and not MIN_TEMPERATURE_C <= value <= MAX_TEMPERATURE_C:
            detail = f"temperature {value} °C is outside {MIN_TEMPERATURE_C}-{MAX_TEMPERATURE_C}"
            raise RejectedMessage(Reason.OUT_OF_RANGE, detail)
        return value

    def health(self, event: HealthKind, detail: str) -> HealthEvent:
        return HealthEvent(
            device_kind=self.profile.device_kind,
            device_id=self.device_id,
            ts=self.ts,
            event=event,
            battery_pct=self.battery_pct,
            temperature_c=self.temperature_c,
            detail=detail,
        )

    def level(
        self, level: LevelFields, depth_mm: int | None, full_mark_mm: int | None
    ) -> list[Outcome]:
        name = level.distance_field
        raw = self.fields.get(name)
        if level.tilt_field is not None and self.fields.get(level.tilt_field) in level.tilt_values:
            return [self.health(HealthKind.TILTED, f"sensor tilted; {name}={raw!r} not used")]
        if isinstance(raw, str) and raw in level.no_echo_values:
            return [self.health(HealthKind.NO_ECHO, f"{name} is {raw!r}")]
        samples = None if level.samples_field is None else self.number(level.samples_field)
        if samples == 0:
            return [self.health(HealthKind.NO_ECHO, f"{level.samples_field} is 0")]
        value = self.number(name)
        if value is None:
            return []
        if value < 0:
            detail = f"{name} {value} {level.distance_unit} is negative"
            raise RejectedMessage(Reason.OUT_OF_RANGE, detail)
        distance_mm = value * MM_PER_UNIT[level.distance_unit]
        depth, full_mark = self._geometry(depth_mm, full_mark_mm, level.full_mark_mm)
        if distance_mm > depth:
            detail = f"distance {distance_mm:g} mm is beyond the container depth {depth} mm"
            return [self.health(HealthKind.DISTANCE_BEYOND_DEPTH, detail)]
        fill = min(max((depth - distance_mm) / (depth - full_mark), 0.0), 1.0)
        reading = WasteReading(
            container_id=self.device_id,
            ts=self.ts,
            fill_pct=round(fill * 100, 1),
            battery_pct=self.battery_pct,
            temperature_c=self.temperature_c,
        )
        return [reading]

    def _geometry(
        self, depth_mm: int | None, full_mark_mm: int | None, default_full_mark_mm: int
    ) -> tuple[int, int]:
        full_mark = default_full_mark_mm if full_mark_mm is None else full_mark_mm
        if depth_mm is None or depth_mm <= full_mark:
            detail = (
                f"container {self.device_id} needs an inner depth above its full mark "
                f"({full_mark} mm) to turn a distance into a fill level; it has {depth_mm}"
            )
            raise RejectedMessage(Reason.MISCONFIGURED_DEVICE, detail)
        return depth_mm, full_mark

    def occupancy(self, occupancy: OccupancyFields) -> list[Outcome]:
        value = self.fields.get(occupancy.field)
        if value is None:
            return []
        if value not in (True, False):
            detail = f"field {occupancy.field!r} is {value!r}, not a boolean"
            raise RejectedMessage(Reason.UNDECODABLE, detail)
        reading = ParkingReading(
            spot_id=self.device_id, ts=self.ts, occupied=bool(value), battery_pct=self.battery_pct
        )
        return [reading]

    def frame(self, frames: FrameFields) -> list[Outcome]:
        kind = self.fields.get(frames.field)
        if kind in frames.heartbeat:
            event = HealthKind.HEARTBEAT
        elif kind in frames.startup:
            event = HealthKind.STARTUP
        else:
            return []
        detail = ", ".join(
            f"{name}={self.fields[name]}" for name in frames.detail_fields if name in self.fields
        )
        return [self.health(event, detail)]


def profile_for(profiles: Mapping[str, DeviceProfile], model: str) -> DeviceProfile:
    """The profile of ``model``.

    Raises:
        RejectedMessage: ``unknown_model`` when no profile has that model id, so the device's
            messages are kept until a profile is added or the device's model is corrected.
    """
    profile = profiles.get(model)
    if profile is None:
        detail = f"no device profile for model {model!r}; known: {', '.join(sorted(profiles))}"
        raise RejectedMessage(Reason.UNKNOWN_MODEL, detail)
    return profile


def load_profiles(directory: Path) -> dict[str, DeviceProfile]:
    """Read and check every ``*.toml`` profile in ``directory``, keyed by model id.

    Raises:
        ConfigurationError: naming the file and the field when a profile cannot be used.
    """
    if not directory.is_dir():
        message = f"device profile directory {directory} does not exist"
        raise ConfigurationError(message)
    profiles: dict[str, DeviceProfile] = {}
    for path in sorted(directory.glob("*.toml")):
        profile = load_profile(path)
        if profile.model in profiles:
            message = f"{path.name}: model {profile.model!r} is already defined by another file"
            raise ConfigurationError(message)
        profiles[profile.model] = profile
    if not profiles:
        message = f"no device profiles (*.toml) in {directory}"
        raise ConfigurationError(message)
    return profiles


def load_profile(path: Path) -> DeviceProfile:
    """Read and check one profile file; its model id must be its file name.

    Raises:
        ConfigurationError: naming the file and the field when the profile cannot be used.
    """
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        message = f"{path.name}: cannot read device profile: {exc}"
        raise ConfigurationError(message) from exc
    try:
        profile = DeviceProfile.model_validate(document)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "profile"
        message = f"{path.name}: {where}: {first['msg']}"
        raise ConfigurationError(message) from exc
    if profile.model != path.stem:
        message = f"{path.name}: model {profile.model!r} must match the file name {path.stem!r}"
        raise ConfigurationError(message)
    return profile
