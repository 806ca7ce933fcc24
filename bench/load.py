"""The workload and the load generator: simulated readings, published by worker processes.

Messages come from the project's own simulator (``simulators.stream``), generated once per run.
Each benchmark phase publishes them under a topic root of its own, so that the sessions of one
phase never see another phase's messages. Publishers are forked processes (the message lists
are inherited, not pickled), each with its own MQTT connection.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing as mp
import os
import queue
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from multiprocessing.sharedctypes import SynchronizedArray
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from citytel.domain import DeviceKind
from citytel.ingest import wire
from simulators.fleet import Fleet, generate_fleet
from simulators.stream import StreamConfig, simulate

_GENERATED_ROOT = "citytel/v1"
_ACK_TIMEOUT_S = 120.0
_PACE_S = 0.002  # paced publishers write what is due every 2 ms


@dataclass(frozen=True)
class Workload:
    """Simulated messages, one reading each, and the fleet they come from.

    Attributes:
        fleet_geojson: the fleet, as ``citytel fleet import`` reads it.
        suffixes: each message's topic after the root (``gw-01/parking/CAS-PS-00042``).
        payloads: each message's payload.
        kinds: each message's device kind.
        keys: each message's reading as stored: (device id, ts).
    """

    fleet_geojson: dict[str, Any]
    suffixes: list[str]
    payloads: list[bytes]
    kinds: list[DeviceKind]
    keys: list[tuple[str, datetime]]

    def topic(self, root: str, index: int) -> str:
        return f"{root}/{self.suffixes[index]}"


def build_workload(*, containers: int, spots: int, messages: int, seed: int = 2026) -> Workload:
    """``messages`` valid readings of a generated fleet, all timestamped in the recent past.

    The simulated window starts two hours ago and advances 60 times faster than the 5,000/s
    schedule, so no reading is ever ahead of the clock, however fast it is published.
    """
    collection = generate_fleet(seed=seed, containers=containers, spots=spots)
    fleet = Fleet.from_geojson(collection)
    config = StreamConfig(seed=seed, rate=5000, speedup=60, topic_root=_GENERATED_ROOT)
    start = datetime.now(UTC) - timedelta(hours=2)
    suffixes, payloads, kinds, keys = [], [], [], []
    cut = len(_GENERATED_ROOT) + 1
    for message in itertools.islice(simulate(fleet, start, config), messages):
        suffixes.append(message.topic[cut:])
        payloads.append(message.payload)
        kinds.append(message.device_kind)
        keys.append((message.device_id, message.readings[0].ts))
    return Workload(collection, suffixes, payloads, kinds, keys)


class _Acks:
    """CONNACK and PUBACKs, counted on paho's thread and awaited on ours."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.connected: ReasonCode | None = None
        self.acked = 0

    def on_connect(
        self, _c: mqtt.Client, _u: Any, _f: Any, code: ReasonCode, _p: Properties | None
    ) -> None:
        with self.cond:
            self.connected = code
            self.cond.notify_all()

    def on_publish(
        self, _c: mqtt.Client, _u: Any, _mid: int, _code: ReasonCode, _p: Properties | None
    ) -> None:
        with self.cond:
            self.acked += 1
            self.cond.notify_all()

    def wait(self, acked: int, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.acked >= acked, timeout)


def _connect(port: int) -> tuple[mqtt.Client, _Acks]:
    acks = _Acks()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    client.on_connect = acks.on_connect
    client.on_publish = acks.on_publish
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port, keepalive=30, clean_start=True)
    client.loop_start()
    with acks.cond:
        acks.cond.wait_for(lambda: acks.connected is not None, 10)
    if acks.connected is None or acks.connected.is_failure:
        client.loop_stop()
        message = f"the broker did not accept a publisher: {acks.connected}"
        raise RuntimeError(message)
    return client, acks


# Set by the parent before forking; the children inherit it instead of receiving a copy.
_JOB: Workload | None = None


def _blast(port: int, root: str, indices: range, out: mp.Queue[dict[str, float]]) -> None:
    assert _JOB is not None  # noqa: S101
    client, acks = _connect(port)
    try:
        first = time.time()
        for i in indices:
            client.publish(_JOB.topic(root, i), _JOB.payloads[i], qos=1)
        complete = acks.wait(len(indices), _ACK_TIMEOUT_S)
        out.put({"first": first, "last": time.time(), "acked": acks.acked, "ok": complete})
    finally:
        client.disconnect()
        client.loop_stop()


class _LeanPublisher:
    """A minimal MQTT 5 QoS 1 publisher on a plain socket, for paced load.

    paho's publisher cost about half a core per 2,500 messages/s on this machine, taking CPU
    from the service it was meant to load. This one writes every message that is due in one
    ``sendall`` and counts PUBACKs on a reader thread; it keeps within the broker's Receive
    Maximum, so it never has more unacknowledged messages in flight than the broker allows.
    """

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(
            wire.encode_connect(f"bench-paced-{os.getpid()}", keepalive=60, clean_start=True)
        )
        self.reader = wire.PacketReader()
        connack = self._read_one()
        if connack.kind != wire.PacketType.CONNACK:
            message = f"expected CONNACK, got packet type {connack.kind}"
            raise RuntimeError(message)
        answer = wire.parse_connack(connack.body)
        if answer.reason >= 0x80:
            message = f"the broker refused a publisher: {wire.describe_reason(answer.reason)}"
            raise RuntimeError(message)
        properties, _ = wire.read_properties(connack.body, 2)
        receive_maximum = properties.get(wire.RECEIVE_MAXIMUM, 65535)
        self.window = int(receive_maximum) if isinstance(receive_maximum, int) else 65535
        self.sent = 0
        self.acked = 0
        self.cond = threading.Condition()
        self.sock.settimeout(None)
        threading.Thread(target=self._read_acks, daemon=True).start()

    def _read_one(self) -> wire.Packet:
        while True:
            data = self.sock.recv(65536)
            if not data:
                message = "the broker closed the connection"
                raise ConnectionError(message)
            packets = self.reader.feed(data)
            if packets:
                first = packets[0]
                assert isinstance(first, wire.Packet)  # noqa: S101 - nothing subscribed
                return first

    def _read_acks(self) -> None:
        with contextlib.suppress(OSError):
            while data := self.sock.recv(65536):
                acks = sum(
                    1
                    for packet in self.reader.feed(data)
                    if isinstance(packet, wire.Packet) and packet.kind == wire.PacketType.PUBACK
                )
                with self.cond:
                    self.acked += acks
                    self.cond.notify_all()

    def publish(self, messages: list[tuple[str, bytes]]) -> None:
        """Publish at QoS 1, waiting for the broker's window where it is full."""
        for start in range(0, len(messages), self.window):
            chunk = messages[start : start + self.window]
            room = self.window - len(chunk)

            def has_room(room: int = room) -> bool:
                return self.sent - self.acked <= room

            with self.cond:
                self.cond.wait_for(has_room)
            data = b"".join(
                wire.encode_publish(topic, payload, packet_id=(self.sent + i) % 65535 + 1)
                for i, (topic, payload) in enumerate(chunk)
            )
            self.sent += len(chunk)
            self.sock.sendall(data)

    def wait(self, acked: int, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.acked >= acked, timeout)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(wire.DISCONNECT)
            self.sock.close()


def _paced(
    port: int,
    root: str,
    indices: range,
    base: int,
    rate: float,
    t0: float,
    published_at: SynchronizedArray[float],
    published: SynchronizedArray[int],
    slot: int,
    out: mp.Queue[dict[str, float]],
) -> None:
    assert _JOB is not None  # noqa: S101
    publisher = _LeanPublisher(port)
    late = 0.0
    position = 0
    order = list(indices)
    try:
        while position < len(order):
            first_due = t0 + order[position] / rate
            ahead = first_due - time.time()
            if ahead > 0:
                time.sleep(ahead)
            now = time.time()
            late = max(late, now - first_due - _PACE_S)
            # Everything due by now goes out in one write.
            due = position
            while due < len(order) and t0 + order[due] / rate <= now:
                due += 1
            batch = order[position:due]
            for i in batch:
                published_at[i] = now
            publisher.publish(
                [(_JOB.topic(root, base + i), _JOB.payloads[base + i]) for i in batch]
            )
            published[slot] += len(batch)
            position = due
            time.sleep(_PACE_S)
        complete = publisher.wait(len(order), _ACK_TIMEOUT_S)
        out.put(
            {
                "acked": publisher.acked,
                "ok": complete,
                "max_behind_s": max(late, 0.0),
                "end": time.time(),
            }
        )
    finally:
        publisher.close()


def _collect(
    processes: Sequence[mp.process.BaseProcess], out: mp.Queue[dict[str, float]], within: float
) -> list[dict[str, float]]:
    results = []
    deadline = time.monotonic() + within
    try:
        for _ in processes:
            results.append(out.get(timeout=max(0.1, deadline - time.monotonic())))
    except queue.Empty:
        message = f"a publisher process did not report within {within:.0f} s"
        raise TimeoutError(message) from None
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join(timeout=5)
    return results


def publish_backlog(
    workload: Workload, *, port: int, root: str, count: int, processes: int
) -> dict[str, float]:
    """Publish the first ``count`` messages as fast as ``processes`` publishers can, all acked."""
    global _JOB
    _JOB = workload
    ctx = mp.get_context("fork")
    out: mp.Queue[dict[str, float]] = ctx.Queue()
    workers = [
        ctx.Process(target=_blast, args=(port, root, range(j, count, processes), out), daemon=True)
        for j in range(processes)
    ]
    for worker in workers:
        worker.start()
    results = _collect(workers, out, within=_ACK_TIMEOUT_S + count / 1000)
    acked = sum(int(r["acked"]) for r in results)
    if acked != count or not all(r["ok"] for r in results):
        message = f"the broker acknowledged {acked} of {count} backlog messages"
        raise RuntimeError(message)
    seconds = max(r["last"] for r in results) - min(r["first"] for r in results)
    return {"messages": count, "processes": processes, "seconds": seconds, "rate": count / seconds}


@dataclass
class PacedRun:
    """A paced publication under way: shared counters the parent reads while it runs."""

    published_at: SynchronizedArray[float]
    published: SynchronizedArray[int]
    processes: list[mp.process.BaseProcess]
    out: mp.Queue[dict[str, float]]

    def count(self) -> int:
        return sum(self.published[:])

    def finish(self, within: float) -> list[dict[str, float]]:
        return _collect(self.processes, self.out, within)

    def kill(self) -> None:
        for process in self.processes:
            if process.is_alive():
                process.kill()
            with contextlib.suppress(ValueError):
                process.join(timeout=5)


def start_paced(
    workload: Workload,
    *,
    port: int,
    root: str,
    base: int,
    count: int,
    rate: float,
    t0: float,
    processes: int,
) -> PacedRun:
    """Publish messages ``base .. base + count`` at ``rate``/s from wall-clock time ``t0``.

    Message ``i`` of the run is published by publisher ``i % processes`` no earlier than
    ``t0 + i / rate``; the time it was written to the socket is recorded in ``published_at[i]``.
    """
    global _JOB
    _JOB = workload
    ctx = mp.get_context("fork")
    published_at = ctx.Array("d", count, lock=False)
    published = ctx.Array("q", processes, lock=False)
    out: mp.Queue[dict[str, float]] = ctx.Queue()
    workers = [
        ctx.Process(
            target=_paced,
            args=(
                port,
                root,
                range(j, count, processes),
                base,
                rate,
                t0,
                published_at,
                published,
                j,
                out,
            ),
            daemon=True,
        )
        for j in range(processes)
    ]
    for worker in workers:
        worker.start()
    return PacedRun(published_at, published, workers, out)  # type: ignore[arg-type]
