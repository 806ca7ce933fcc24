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
import queue
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
from simulators.fleet import Fleet, generate_fleet
from simulators.stream import StreamConfig, simulate

_GENERATED_ROOT = "citytel/v1"
_ACK_TIMEOUT_S = 120.0


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
    client, acks = _connect(port)
    late = 0.0
    try:
        for i in indices:
            due = t0 + i / rate
            ahead = due - time.time()
            if ahead > 0:
                time.sleep(ahead)
            else:
                late = max(late, -ahead)
            published_at[i] = time.time()
            client.publish(_JOB.topic(root, base + i), _JOB.payloads[base + i], qos=1)
            published[slot] += 1
        complete = acks.wait(len(indices), _ACK_TIMEOUT_S)
        out.put({"acked": acks.acked, "ok": complete, "max_behind_s": late, "end": time.time()})
    finally:
        client.disconnect()
        client.loop_stop()


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
    ``t0 + i / rate``; the time it was handed to paho is recorded in ``published_at[i]``.
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
