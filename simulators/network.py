"""The fleet's sensors seen through a LoRaWAN network server: frames, counters, envelopes.

The stream decides what happens in the city and when; this module turns each report into the
uplink the device's sensor model sends, wraps it in the envelope of the chosen network server,
and says what citytel should make of it: readings and health events at the time the server
received the uplink, or, for a spoiled one, the dead-letter reason.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from citytel.decoding import DeviceProfile
from citytel.domain import DeviceKind, Reason
from simulators.city import ContainerModel, SpotModel, local_hours
from simulators.encoders import Frame
from simulators.envelopes import (
    LorawanFormat,
    NetworkApplication,
    Radio,
    UplinkSpec,
    dump,
    envelope,
)
from simulators.faults import ENVELOPE_FAULTS, LORAWAN_FAULTS
from simulators.fleet import DEV_EUI_PREFIX, Container, Sensor, Spot
from simulators.sensors import (
    ExpectedHealth,
    LevelMeasurement,
    Measurement,
    Payload,
    SpotMeasurement,
    distance_for,
    expected,
    sensor_model,
)

# A valid uplink skips this many frame counters: frames no gateway heard in time, which is
# where a late (out-of-order) frame fits, with a counter below the newest and unused.
LATE_SLOTS = 3
_OMEGA = 2 * math.pi / 24


@dataclass(frozen=True, slots=True)
class Uplink:
    """One uplink as published, and what citytel should make of it."""

    topic: str
    payload: bytes
    f_cnt: int | None
    readings: tuple[Payload, ...] = ()
    health: tuple[ExpectedHealth, ...] = ()
    fault: str | None = None
    reason: Reason | None = None


@dataclass(slots=True)
class _Device:
    """What one sensor has sent: its frame counters and its last measurements."""

    next_f_cnt: int
    late_floor: int = 0  # late frames take counters strictly between these two
    newest_f_cnt: int = 0
    newest: Measurement | None = None
    before: Measurement | None = None
    uplinks: int = 0
    occupied: bool | None = None
    since: datetime | None = None


def ground_temperature(ts: datetime) -> float:
    """The temperature in a road surface: milder than the air, and later in the day."""
    return 19 + 5 * math.cos(_OMEGA * (local_hours(ts) - 17))


@dataclass(slots=True)
class Network:
    """The LoRaWAN side of a stream: one network server, the fleet's sensors and their state."""

    fmt: LorawanFormat
    app: NetworkApplication
    decoded_ratio: float
    gateways: int
    profiles: Mapping[str, DeviceProfile]
    rng: random.Random
    devices: dict[int, _Device] = field(default_factory=dict)

    def check(self, model: ContainerModel | SpotModel) -> None:
        """Refuse a device the network cannot send for.

        Raises:
            ValueError: a device without a sensor, a model without a profile or encoder, a
                container without a usable depth.
        """
        device = _device(model)
        sensor = device.sensor
        if sensor is None:
            message = f"{device.id} has no sensor (device_model, dev_eui); regenerate the fleet"
            raise ValueError(message)
        sensor_model(sensor.model)
        profile = self.profiles.get(sensor.model)
        if profile is None:
            message = f"{device.id}: no device profile for model {sensor.model!r}"
            raise ValueError(message)
        if isinstance(device, Container):
            level = profile.level
            depth, full_mark = device.depth_mm, device.full_mark_mm
            if level is not None and (depth is None or depth <= (full_mark or level.full_mark_mm)):
                message = f"{device.id} needs a depth_mm above its full mark"
                raise ValueError(message)

    def _state(self, index: int) -> _Device:
        state = self.devices.get(index)
        if state is None:
            # Sensors have been on the air for a while before the simulation starts.
            state = _Device(next_f_cnt=self.rng.randrange(1, 5000))
            self.devices[index] = state
        return state

    def valid(
        self, index: int, model: ContainerModel | SpotModel, reading: Payload, clock: datetime
    ) -> Uplink:
        """The uplink of a report; ``reading`` is what the device's state is at ``clock``."""
        state = self._state(index)
        measurement = self._measure(state, model, reading, clock)
        health_only = isinstance(measurement, LevelMeasurement) and measurement.battery_only
        # A health message's counter is its own; the late slots stay the last reading's.
        f_cnt = state.next_f_cnt + (0 if health_only else LATE_SLOTS)
        uplink = self._uplink(model, measurement, clock, f_cnt)
        if uplink.readings and not health_only:
            state.late_floor, state.newest_f_cnt = state.next_f_cnt - 1, f_cnt
            state.before, state.newest = state.newest, measurement
        state.next_f_cnt = f_cnt + 1
        state.uplinks += 1
        return uplink

    def late(self, index: int, model: ContainerModel | SpotModel, ts: datetime) -> Uplink | None:
        """A frame the device sent before its newest, arriving now; ``None`` without room."""
        state = self.devices.get(index)
        if state is None or state.newest is None or state.late_floor + 1 >= state.newest_f_cnt:
            return None
        state.late_floor += 1
        measurement = state.before or state.newest
        return self._uplink(model, measurement, ts, state.late_floor)

    def malformed(
        self, index: int, model: ContainerModel | SpotModel, clock: datetime, due: datetime
    ) -> tuple[Uplink, DeviceKind, str]:
        """A spoiled uplink of a device, with the kind and id of the device it names."""
        device = _device(model)
        sensor = _sensor(device)
        behaviour = sensor_model(sensor.model)
        faults = [f for f in LORAWAN_FAULTS if f != "out_of_range" or behaviour.out_of_range]
        fault = self.rng.choice(faults)
        state = self._state(index)
        measurement = self._sound(model, clock)
        frame = behaviour.encode(measurement, self._profile(sensor), _number(sensor))
        decoded = self._decoded(behaviour.network_only, frame)
        if fault == "undecodable":
            frame, decoded = behaviour.garble(frame), None
        elif fault == "out_of_range" and behaviour.out_of_range is not None:
            frame, decoded = behaviour.out_of_range(frame), None
        kind, device_id = _identity(device)
        if fault == "unknown_device":
            number = self.rng.randrange(1 << 40)
            sensor = Sensor(sensor.model, f"{DEV_EUI_PREFIX}FF{number:010X}", f"cas-x-{number}")
            device_id = sensor.network_device_id.upper()
        f_cnt = state.next_f_cnt
        state.next_f_cnt += 1
        spec = self._spec(sensor, frame, decoded, clock, f_cnt)
        topic, body = envelope(self.fmt, self.app, spec)
        if fault == "topic_mismatch":
            number = self.rng.randrange(1 << 40)
            stranger = Sensor(sensor.model, f"{DEV_EUI_PREFIX}FE{number:010X}", f"cas-y-{number}")
            topic, _ = envelope(self.fmt, self.app, self._spec(stranger, frame, None, clock, 1))
        payload = ENVELOPE_FAULTS[fault](self.fmt, body, due) if fault in ENVELOPE_FAULTS else None
        uplink = Uplink(
            topic,
            dump(body) if payload is None else payload,
            f_cnt,
            fault=fault,
            reason=LORAWAN_FAULTS[fault],
        )
        return uplink, kind, device_id

    def _profile(self, sensor: Sensor) -> DeviceProfile:
        return self.profiles[sensor.model]

    def _measure(
        self, state: _Device, model: ContainerModel | SpotModel, reading: Payload, clock: datetime
    ) -> Measurement:
        if isinstance(model, ContainerModel):
            container = model.container
            sensor = _sensor(container)
            every = sensor_model(sensor.model).battery_only_every
            depth, full_mark = self._geometry(container, sensor)
            fill = getattr(reading, "fill_pct", 0.0)
            return LevelMeasurement(
                distance_mm=distance_for(fill, depth, full_mark),
                battery_pct=reading.battery_pct or 0.0,
                temperature_c=getattr(reading, "temperature_c", None) or 0.0,
                # Each sensor at its own phase, so that some send one early in a run.
                battery_only=every is not None and (state.uplinks + _number(sensor)) % every == 0,
            )
        occupied = bool(getattr(reading, "occupied", False))
        changed = state.occupied is None or occupied != state.occupied
        since = state.since or clock
        previous = (clock - since) / timedelta(minutes=1)
        if changed:
            state.occupied, state.since = occupied, clock
        return SpotMeasurement(
            occupied=occupied,
            heartbeat=not changed,
            battery_pct=reading.battery_pct or 0.0,
            temperature_c=ground_temperature(clock),
            previous_state_min=previous,
        )

    def _sound(self, model: ContainerModel | SpotModel, clock: datetime) -> Measurement:
        if isinstance(model, ContainerModel):
            container = model.container
            depth, full_mark = self._geometry(container, _sensor(container))
            return LevelMeasurement(
                distance_mm=distance_for(min(model.fill, 100.0), depth, full_mark),
                battery_pct=model.battery,
                temperature_c=20.0,
            )
        return SpotMeasurement(
            occupied=model.occupied,
            heartbeat=False,
            battery_pct=model.battery,
            temperature_c=ground_temperature(clock),
        )

    def _geometry(self, container: Container, sensor: Sensor) -> tuple[int, int]:
        level = self._profile(sensor).level
        default = 0 if level is None else level.full_mark_mm
        full_mark = default if container.full_mark_mm is None else container.full_mark_mm
        return container.depth_mm or 0, full_mark

    def _decoded(self, network_only: bool, frame: Frame) -> dict[str, Any] | None:
        wanted = self.rng.random() < self.decoded_ratio
        return dict(frame.network) if network_only or wanted else None

    def _uplink(
        self, model: ContainerModel | SpotModel, measurement: Measurement, ts: datetime, f_cnt: int
    ) -> Uplink:
        device = _device(model)
        sensor = _sensor(device)
        behaviour = sensor_model(sensor.model)
        profile = self._profile(sensor)
        frame = behaviour.encode(measurement, profile, _number(sensor))
        decoded = self._decoded(behaviour.network_only, frame)
        spec = self._spec(sensor, frame, decoded, ts, f_cnt)
        topic, body = envelope(self.fmt, self.app, spec)
        depth, full_mark = (
            (device.depth_mm, device.full_mark_mm)
            if isinstance(device, Container)
            else (None, None)
        )
        readings, health = expected(
            profile, frame.fields, ts=ts, depth_mm=depth, full_mark_mm=full_mark
        )
        return Uplink(topic, dump(body), f_cnt, readings, health)

    def _spec(
        self,
        sensor: Sensor,
        frame: Frame,
        decoded: dict[str, Any] | None,
        ts: datetime,
        f_cnt: int,
    ) -> UplinkSpec:
        radio = Radio(
            gateway=self.rng.randrange(self.gateways) + 1,
            rssi=self.rng.randrange(-118, -60),
            snr=round(self.rng.uniform(-12.0, 10.0), 1),
            spreading_factor=self.rng.choice((7, 7, 8, 9, 10, 11, 12)),
            channel=self.rng.randrange(8),
            nanoseconds=self.rng.randrange(1, 1000),
        )
        return UplinkSpec(
            device_id=sensor.network_device_id,
            dev_eui=sensor.dev_eui,
            model=sensor.model,
            received_at=ts,
            f_cnt=f_cnt,
            f_port=frame.f_port,
            raw=frame.raw,
            decoded=decoded,
            radio=radio,
        )


def _device(model: ContainerModel | SpotModel) -> Container | Spot:
    return model.container if isinstance(model, ContainerModel) else model.spot


def _sensor(device: Container | Spot) -> Sensor:
    if device.sensor is None:
        message = f"{device.id} has no sensor"
        raise ValueError(message)
    return device.sensor


def _identity(device: Container | Spot) -> tuple[DeviceKind, str]:
    kind = DeviceKind.WASTE if isinstance(device, Container) else DeviceKind.PARKING
    return kind, device.id


def _number(sensor: Sensor) -> int:
    return int(sensor.dev_eui, 16)
