"""The simulated message stream: deterministic, free of I/O, and carrying its own ground truth.

Time. Message ``i`` is due on the wall clock at ``start + i / rate``; the simulated clock runs
``speedup`` times faster from ``start - history``. Simulating a window that lies in the past is
what lets a speed-up coexist with an ingest that refuses readings from the future: the simulated
clock is clamped to the due wall-clock time, so once it has caught up with the present it simply
runs in real time. A message is never published before it is due, so no reading is ever ahead of
the wall clock. ``history_for`` chooses the window so that a run of known length ends exactly at
the present.

Formats. ``native`` publishes citytel's own JSON under ``{topic_root}/...``. The LoRaWAN
formats (``ttn``, ``chirpstack_v4``, ``chirpstack_v3``) publish what each device's sensor
model really sends, in the envelope and on the topics of that network server (see
``simulators.network``); the readings are then dated by the network server's reception time,
and the ground truth is computed back from the bytes sent.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal, get_args

from citytel.decoding import DeviceProfile
from citytel.domain import DeviceKind, HealthKind, Reason
from citytel.formats.native import ParkingPayload, WastePayload, encode_native
from citytel.formats.topics import native_topic
from simulators.city import ContainerModel, SpotModel
from simulators.envelopes import NetworkApplication
from simulators.faults import FAULT_REASONS, FAULTS, PAYLOAD_FAULTS
from simulators.fleet import Fleet
from simulators.network import Network, Uplink
from simulators.sensors import ExpectedHealth, bundled_profiles

Payload = WastePayload | ParkingPayload
MessageKind = Literal["valid", "malformed", "duplicate", "out_of_order"]
Format = Literal["native", "ttn", "chirpstack_v4", "chirpstack_v3"]
DeviceKey = tuple[DeviceKind, str]

_MS = timedelta(milliseconds=1)
_CONTAINER_INTERVAL = timedelta(minutes=15)
_SPOT_HEARTBEAT = timedelta(minutes=30)
_RECENT = 512  # how far back duplicates and late readings reach, in valid messages
_DEFAULT_HISTORY = timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class SimulatedMessage:
    """One MQTT message of the stream and what the service should make of it.

    Attributes:
        topic: where it is published.
        payload: the bytes published.
        kind: ``valid``; ``malformed`` (belongs in dead letters); ``duplicate`` (an exact
            re-send of an earlier valid message); ``out_of_order`` (a valid reading older than
            one already sent for its device).
        device_kind: waste or parking.
        device_id: the device the topic names.
        readings: what must be stored: the readings of a valid, duplicate or out-of-order
            message; empty for a malformed one.
        fault: for a malformed message, which fault (``simulators.faults.FAULTS``, or
            ``LORAWAN_FAULTS`` for a network server's format).
        due: the wall-clock time before which the message must not be published.
        health: the health events citytel should record (LoRaWAN formats: heartbeats,
            battery-only frames).
        reason: for a malformed message, the dead-letter reason citytel should give it.
        f_cnt: the LoRaWAN frame counter of the uplink, for the network servers' formats.
    """

    topic: str
    payload: bytes
    kind: MessageKind
    device_kind: DeviceKind
    device_id: str
    readings: tuple[Payload, ...]
    due: datetime
    fault: str | None = None
    health: tuple[ExpectedHealth, ...] = ()
    reason: Reason | None = None
    f_cnt: int | None = None


@dataclass(frozen=True, slots=True)
class StreamConfig:
    """How a stream is shaped; the ratios are shares of all messages.

    ``format`` chooses citytel's own JSON or a network server's envelope; for the latter,
    ``network_decoded_ratio`` is the share of uplinks that also carry the object of the
    server's payload formatter (models decoded on the server only always carry it), and
    ``network_application``/``network_tenant`` name the application the sensors belong to.
    """

    seed: int = 2026
    rate: float = 200.0
    speedup: float = 60.0
    history: timedelta = _DEFAULT_HISTORY
    gateways: int = 4
    topic_root: str = "citytel/v1"
    malformed_ratio: float = 0.0
    duplicate_ratio: float = 0.0
    out_of_order_ratio: float = 0.0
    format: Format = "native"
    network_decoded_ratio: float = 0.0
    network_application: str = "citytel-casablanca"
    network_tenant: str = "ttn"

    def check(self, devices: int) -> None:
        """Refuse settings that would break the stream's guarantees.

        Raises:
            ValueError: a rate, speed-up or ratio out of bounds, or an empty fleet.
        """
        ratios = (self.malformed_ratio, self.duplicate_ratio, self.out_of_order_ratio)
        problem = None
        if devices == 0:
            problem = "the fleet has no devices to simulate"
        elif not 0 < self.rate <= 500 * devices:
            # Two readings of one device less than a millisecond apart would share a wire ts.
            problem = f"rate must be in (0, {500 * devices}] messages/s for {devices} devices"
        elif self.history < timedelta(0):
            problem = "history must not be negative"
        elif self.speedup < 1:
            problem = "speedup must be at least 1"
        elif self.gateways < 1:
            problem = "gateways must be at least 1"
        elif min(ratios) < 0 or sum(ratios) > 1:
            problem = "fault ratios must be non-negative and add up to at most 1"
        elif self.format not in get_args(Format):
            problem = f"format must be one of {', '.join(get_args(Format))}"
        elif not 0 <= self.network_decoded_ratio <= 1:
            problem = "network_decoded_ratio must be between 0 and 1"
        if problem:
            raise ValueError(problem)


def history_for(seconds: float | None, speedup: float) -> timedelta:
    """The simulated window that makes a run of ``seconds`` (None: open-ended) end now."""
    if not seconds:
        return _DEFAULT_HISTORY
    return timedelta(seconds=seconds * (speedup - 1))


def _floor_ms(ts: datetime) -> datetime:
    # The wire carries milliseconds; a ts that survives the round trip unchanged keeps the
    # ground truth comparable with what the service stores.
    return ts.replace(microsecond=ts.microsecond // 1000 * 1000)


@dataclass(slots=True)
class _Sent:
    """What a device has sent: enough to make a late reading that fits before its newest."""

    newest: Payload
    floor: datetime  # late readings go strictly between this and newest.ts
    before: Payload | None = None


@dataclass(slots=True)
class _Stream:
    fleet: Fleet
    start: datetime
    config: StreamConfig
    profiles: Mapping[str, DeviceProfile] | None = None
    rng: random.Random = field(init=False)
    network: Network | None = None
    models: list[ContainerModel | SpotModel] = field(default_factory=list)
    queue: list[tuple[datetime, int]] = field(default_factory=list)
    sent: dict[int, _Sent] = field(default_factory=dict)
    recent: deque[SimulatedMessage] = field(default_factory=lambda: deque(maxlen=_RECENT))
    recent_devices: deque[int] = field(default_factory=lambda: deque(maxlen=_RECENT))

    def __post_init__(self) -> None:
        self.config.check(len(self.fleet.containers) + len(self.fleet.spots))
        if self.start.utcoffset() is None:
            message = "start must be a timezone-aware datetime"
            raise ValueError(message)
        self.rng = random.Random(self.config.seed)
        origin = self.start - self.config.history
        for container in self.fleet.containers:
            self.models.append(ContainerModel.start(container, origin, self.rng))
            first = origin + self.rng.random() * _CONTAINER_INTERVAL
            self.queue.append((first, len(self.models) - 1))
        for spot in self.fleet.spots:
            model = SpotModel.start(spot, origin, self.rng)
            self.models.append(model)
            first = min(model.change_at, origin + self.rng.random() * _SPOT_HEARTBEAT)
            self.queue.append((first, len(self.models) - 1))
        heapq.heapify(self.queue)
        if self.config.format != "native":
            self.network = self._network(self.config.format)

    def _network(self, fmt: Literal["ttn", "chirpstack_v4", "chirpstack_v3"]) -> Network:
        config = self.config
        network = Network(
            fmt=fmt,
            app=NetworkApplication(config.network_application, config.network_tenant),
            decoded_ratio=config.network_decoded_ratio,
            gateways=config.gateways,
            profiles=bundled_profiles() if self.profiles is None else self.profiles,
            # A stream of its own, so the city behaves the same whatever the format.
            rng=random.Random(f"{config.seed}/{fmt}"),
        )
        for model in self.models:
            network.check(model)
        return network

    def _address(self, index: int) -> tuple[DeviceKind, str, str]:
        model = self.models[index]
        if isinstance(model, ContainerModel):
            kind, device_id = DeviceKind.WASTE, model.container.id
        else:
            kind, device_id = DeviceKind.PARKING, model.spot.id
        return (
            kind,
            device_id,
            native_topic(self.config.topic_root, self._gateway(index), kind, device_id),
        )

    def _gateway(self, index: int) -> str:
        # The gateway the device is bound to: ingest refuses a reading from any other.
        model = self.models[index]
        return model.container.gateway if isinstance(model, ContainerModel) else model.spot.gateway

    def _report(self, index: int, clock: datetime) -> Payload:
        model = self.models[index]
        if isinstance(model, ContainerModel):
            model.advance(clock, self.rng)
            self.queue_push(clock + _CONTAINER_INTERVAL * self.rng.uniform(0.8, 1.2), index)
            return model.reading(clock, self.rng)
        model.advance(clock, self.rng)
        self.queue_push(min(model.change_at, clock + _SPOT_HEARTBEAT), index)
        return model.reading(clock)

    def queue_push(self, due: datetime, index: int) -> None:
        heapq.heappush(self.queue, (due, index))

    def valid(self, clock: datetime, due: datetime) -> SimulatedMessage:
        # A device that reported within this millisecond waits: its next reading needs a new ts.
        waiting: list[tuple[datetime, int]] = []
        while True:
            entry = heapq.heappop(self.queue)
            previous = self.sent.get(entry[1])
            if previous is None or previous.newest.ts < clock:
                break
            waiting.append(entry)
        for held in waiting:
            heapq.heappush(self.queue, held)
        index = entry[1]
        reading = self._report(index, clock)
        kind, device_id, topic = self._address(index)
        if self.network is None:
            message = SimulatedMessage(
                topic, encode_native([reading]), "valid", kind, device_id, (reading,), due
            )
        else:
            uplink = self.network.valid(index, self.models[index], reading, clock)
            message = _lorawan_message(uplink, "valid", kind, device_id, due)
        self.recent.append(message)
        if message.readings:
            sent = message.readings[0]
            floor = previous.newest.ts if previous else clock - _CONTAINER_INTERVAL
            self.sent[index] = _Sent(sent, floor, previous.newest if previous else None)
            self.recent_devices.append(index)
        return message

    def out_of_order(self, due: datetime) -> SimulatedMessage | None:
        if not self.recent_devices:
            return None
        index = self.rng.choice(self.recent_devices)
        sent = self.sent[index]
        ts = _floor_ms(sent.floor + (sent.newest.ts - sent.floor) / 2)
        if not sent.floor < ts < sent.newest.ts:
            return None
        if self.network is not None:
            uplink = self.network.late(index, self.models[index], ts)
            if uplink is None:
                return None
            sent.floor = ts
            kind, device_id, _ = self._address(index)
            return _lorawan_message(uplink, "out_of_order", kind, device_id, due)
        sent.floor = ts
        late: Payload
        if isinstance(sent.newest, WastePayload):
            before = sent.before if isinstance(sent.before, WastePayload) else sent.newest
            late = sent.newest.model_copy(update={"ts": ts, "fill_pct": before.fill_pct})
        else:
            # Whatever the spot reported before its newest reading held until that reading.
            state = sent.before.occupied if isinstance(sent.before, ParkingPayload) else None
            occupied = sent.newest.occupied if state is None else state
            late = sent.newest.model_copy(update={"ts": ts, "occupied": occupied})
        kind, device_id, topic = self._address(index)
        payload = encode_native([late])
        return SimulatedMessage(topic, payload, "out_of_order", kind, device_id, (late,), due)

    def duplicate(self, due: datetime) -> SimulatedMessage | None:
        if not self.recent:
            return None
        original = self.rng.choice(self.recent)
        return SimulatedMessage(
            original.topic,
            original.payload,
            "duplicate",
            original.device_kind,
            original.device_id,
            original.readings,
            due,
            health=original.health,
            f_cnt=original.f_cnt,
        )

    def malformed(self, clock: datetime, due: datetime) -> SimulatedMessage:
        index = self.rng.randrange(len(self.models))
        kind, device_id, topic = self._address(index)
        model = self.models[index]
        if self.network is not None:
            uplink, kind, device_id = self.network.malformed(index, model, clock, due)
            return _lorawan_message(uplink, "malformed", kind, device_id, due)
        sound: Payload = (
            WastePayload(ts=clock, fill_pct=round(min(model.fill, 100.0), 1))
            if isinstance(model, ContainerModel)
            else ParkingPayload(ts=clock, occupied=model.occupied)
        )
        fault = self.rng.choice(FAULTS)
        payload = encode_native([sound])
        if fault in PAYLOAD_FAULTS:
            payload = PAYLOAD_FAULTS[fault](sound.wire(), kind, due)
        elif fault == "bad_topic":
            topic = topic.replace(f"/{kind.value}/", "/bins/")
        else:
            prefix = device_id.rsplit("-", 1)[0]
            device_id = f"{prefix}-X{self.rng.randrange(100_000):05d}"  # never a fleet id
            root, gateway = self.config.topic_root, self._gateway(index)
            topic = native_topic(root, gateway, kind, device_id)
        reason = FAULT_REASONS[fault]
        return SimulatedMessage(
            topic, payload, "malformed", kind, device_id, (), due, fault, reason=reason
        )


def _lorawan_message(
    uplink: Uplink, kind: MessageKind, device_kind: DeviceKind, device_id: str, due: datetime
) -> SimulatedMessage:
    return SimulatedMessage(
        uplink.topic,
        uplink.payload,
        kind,
        device_kind,
        device_id,
        uplink.readings,
        due,
        uplink.fault,
        health=uplink.health,
        reason=uplink.reason,
        f_cnt=uplink.f_cnt,
    )


def simulate(
    fleet: Fleet,
    start: datetime,
    config: StreamConfig,
    *,
    profiles: Mapping[str, DeviceProfile] | None = None,
) -> Iterator[SimulatedMessage]:
    """The endless stream of messages a fleet sends from wall-clock time ``start`` on.

    The same fleet, start and config give the same messages. Take as many as needed with
    ``itertools.islice``; publish each no earlier than its ``due`` time. The LoRaWAN formats
    read the sensor models' ``profiles`` (default: those in ``sensors/profiles``).

    Raises:
        ValueError: from ``StreamConfig.check``, for a naive ``start``, or, for a LoRaWAN
            format, a device without a sensor the simulator can send as; at the call rather
            than at the first message.
    """
    return _messages(_Stream(fleet, start, config, profiles))


def _messages(stream: _Stream) -> Iterator[SimulatedMessage]:
    config = stream.config
    origin = stream.start - config.history
    bad, dup, late = config.malformed_ratio, config.duplicate_ratio, config.out_of_order_ratio
    for index in itertools.count():
        offset = timedelta(seconds=index / config.rate)
        due = stream.start + offset
        clock = _floor_ms(min(origin + offset * config.speedup, due))
        roll = stream.rng.random()
        message: SimulatedMessage | None = None
        if roll < bad:
            message = stream.malformed(clock, due)
        elif roll < bad + dup:
            message = stream.duplicate(due)
        elif roll < bad + dup + late:
            message = stream.out_of_order(due)
        yield message or stream.valid(clock, due)


@dataclass(slots=True)
class GroundTruth:
    """What the service should hold after ingesting a set of simulated messages.

    Attributes:
        readings: every distinct reading, by (device kind, device id, ts); each is stored once.
        latest: the newest reading of each device, by (device kind, device id).
        rejected: the malformed messages, each of which belongs in the dead letters.
        health: every distinct health event, by (device kind, device id, ts, event).
    """

    readings: dict[tuple[DeviceKind, str, datetime], Payload] = field(default_factory=dict)
    latest: dict[DeviceKey, Payload] = field(default_factory=dict)
    rejected: list[SimulatedMessage] = field(default_factory=list)
    health: dict[tuple[DeviceKind, str, datetime, HealthKind], ExpectedHealth] = field(
        default_factory=dict
    )

    def add(self, message: SimulatedMessage) -> None:
        """Account for one message."""
        if message.kind == "malformed":
            self.rejected.append(message)
            return
        key = (message.device_kind, message.device_id)
        for reading in message.readings:
            self.readings[(*key, reading.ts)] = reading
            newest = self.latest.get(key)
            if newest is None or reading.ts > newest.ts:
                self.latest[key] = reading
        for event in message.health:
            self.health[(*key, event.ts, event.event)] = event


def ground_truth(messages: Iterable[SimulatedMessage]) -> GroundTruth:
    """The ground truth of a sequence of messages."""
    truth = GroundTruth()
    for message in messages:
        truth.add(message)
    return truth
