"""Drain: a backlog queued in the broker while ingestion was stopped, then consumed.

Compared in the same run with a bare paho subscriber draining the same backlog (the ceiling
set by the broker and paho), with the same rows written straight to PostgreSQL (COPY, and the
service's own ``store_batch`` without MQTT), and with the decoding alone.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from pydantic import SecretStr

from bench import profile
from bench.database import dead_letters, first_received, reset, wait_for_count
from bench.load import Workload, publish_backlog
from bench.services import Services, Store, cpu_seconds
from citytel.config import Settings
from citytel.domain import DecodedMessage, WasteReading
from citytel.ingest.mqtt import InboundMessage
from citytel.ingest.pipeline import triage
from citytel.storage.pool import create_pool
from citytel.storage.writer import store_batch

_BATCH = 1000  # citytel's default CITYTEL_INGEST_BATCH_SIZE: the direct writes use the same
_ROOT = "bench/direct"
_WASTE_COLUMNS = ["container_id", "ts", "fill_pct", "battery_pct", "temperature_c", "received_at"]
_PARKING_COLUMNS = ["spot_id", "ts", "occupied", "battery_pct", "received_at"]


def _bare(services: Services, args: list[str], within: float) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.bare_subscriber", "--port", str(services.broker.port)]
    done = subprocess.run(  # noqa: S603
        [*command, *args], capture_output=True, timeout=within, check=False
    )
    if done.returncode != 0:
        message = f"the bare subscriber failed: {done.stdout!r} {done.stderr!r}"
        raise RuntimeError(message)
    result: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return result


def drain_bare(
    services: Services, workload: Workload, *, count: int, publishers: int
) -> dict[str, Any]:
    """The baseline: a bare manual-ack paho subscriber drains a backlog of ``count``."""
    root, client_id = "bench/bare", "bench-bare-0"
    session = ["--root", root, "--client-id", client_id]
    _bare(services, [*session, "--expect", "0"], within=30)
    load = publish_backlog(
        workload, port=services.broker.port, root=root, count=count, processes=publishers
    )
    broker_cpu = cpu_seconds(services.broker.pid)
    result = _bare(services, [*session, "--expect", str(count)], within=120 + count / 1000)
    seconds = result["last"] - result["first"]
    return {
        "messages": count,
        "received": result["received"],
        "seconds": round(seconds, 3),
        "rate": round(count / seconds),
        "seconds_from_start": round(result["last"] - result["started"], 3),
        "broker_cpu_s": round(cpu_seconds(services.broker.pid) - broker_cpu, 2),
        "loadgen": _rounded(load),
    }


def drain_citytel(
    services: Services,
    workload: Workload,
    *,
    count: int,
    publishers: int,
    workers: int,
    label: str,
    profile_to: Path | None = None,
    store: Store | None = None,
    readings: int | None = None,
) -> dict[str, Any]:
    """``workers`` real ``citytel ingest`` processes drain a backlog of ``count`` messages.

    Each message holds one reading unless ``readings`` says how many the backlog holds in all.

    The workers' sessions are created first (start, subscribe, stop), so the broker queues the
    backlog for them; the clock runs from the first message received to the moment the last
    reading is seen committed. ``store``: another database than the run's main one (one on
    the plain-PostgreSQL cluster, say), with the same fleet imported.
    """
    cluster = store.cluster if store else services.cluster
    url = store.url if store else services.database_url
    root = f"bench/{label}"
    reset(url)
    procs = [services.worker(root, f"bench-{label}-{i}", database_url=url) for i in range(workers)]
    for worker in procs:
        worker.start()
    for worker in procs:
        worker.stop()
    load = publish_backlog(
        workload, port=services.broker.port, root=root, count=count, processes=publishers
    )
    broker_cpu, pg_cpu = cpu_seconds(services.broker.pid), cluster.cpu_seconds()
    spawned = time.time()
    for worker in procs:
        worker.start(wait=False)
    recorder = profile.attach(procs[0].pid, profile_to) if profile_to else None
    expected = readings if readings is not None else count
    try:
        seen_at, committed = wait_for_count(url, expected, within=120 + expected / 500)
        ingest_cpu = sum(cpu_seconds(w.pid) for w in procs)
        pg_cpu = cluster.cpu_seconds() - pg_cpu
        broker_cpu = cpu_seconds(services.broker.pid) - broker_cpu
    finally:
        for worker in procs:
            worker.stop()
        if recorder is not None:
            profile.finish(recorder)
    first = first_received(url)
    seconds = seen_at - first
    return {
        "workers": workers,
        "messages": count,
        "readings": expected,
        "committed": committed,
        "complete": committed >= expected,
        "dead_letters": dead_letters(url),
        "seconds": round(seconds, 3),
        "rate": round(count / seconds),
        "readings_rate": round(expected / seconds),
        "seconds_from_start": round(seen_at - spawned, 3),
        "cpu_s": {
            "ingest": round(ingest_cpu, 2),
            "postgres": round(pg_cpu, 2),
            "broker": round(broker_cpu, 2),
        },
        "cores_busy": {
            "ingest": round(ingest_cpu / seconds, 2),
            "postgres": round(pg_cpu / seconds, 2),
            "broker": round(broker_cpu / seconds, 2),
        },
        "loadgen": _rounded(load),
    }


def decoded_batches(workload: Workload, count: int) -> tuple[list[list[DecodedMessage]], float]:
    """The workload decoded by citytel's own ``triage``, in batches; and what that took."""
    now = datetime.now(UTC)
    inbound = [
        InboundMessage(workload.topic(_ROOT, i), workload.payloads[i], now, i % 65535 + 1, 1, 1)
        for i in range(count)
    ]
    batches = []
    started = time.perf_counter()
    for lo in range(0, count, _BATCH):
        outcome: Any = triage(
            inbound[lo : lo + _BATCH], root=_ROOT, now=now, max_future=timedelta(minutes=5)
        )
        # ``triage`` returned a (decoded, dead) pair before it grew a result object.
        decoded, dead = (outcome.decoded, outcome.dead) if hasattr(outcome, "decoded") else outcome
        if dead:
            message = f"the workload has {len(dead)} undecodable messages: {dead[0].detail}"
            raise RuntimeError(message)
        batches.append(decoded)
    return batches, time.perf_counter() - started


async def _store_direct(url: str, batches: list[list[DecodedMessage]]) -> float:
    pool = await create_pool(Settings(database_url=SecretStr(url)), database_url=url)
    try:
        started = time.perf_counter()
        for batch in batches:
            await store_batch(pool, batch, [])
        return time.perf_counter() - started
    finally:
        await pool.close()


async def copy_rows(url: str, batches: list[list[DecodedMessage]]) -> float:
    """COPY the rows of each batch in a transaction of its own; the seconds it took."""
    conn = await asyncpg.connect(url)
    try:
        rows = []
        for batch in batches:
            waste, parking = [], []
            for message in batch:
                for r in message.readings:
                    if isinstance(r, WasteReading):
                        row = (r.container_id, r.ts, r.fill_pct, r.battery_pct, r.temperature_c)
                        waste.append((*row, message.received_at))
                    else:
                        parking.append(
                            (r.spot_id, r.ts, r.occupied, r.battery_pct, message.received_at)
                        )
            rows.append((waste, parking))
        started = time.perf_counter()
        for waste, parking in rows:
            async with conn.transaction():
                await conn.copy_records_to_table(
                    "waste_readings", records=waste, columns=_WASTE_COLUMNS
                )
                await conn.copy_records_to_table(
                    "parking_readings", records=parking, columns=_PARKING_COLUMNS
                )
        return time.perf_counter() - started
    finally:
        await conn.close()


def direct_writes(services: Services, workload: Workload, *, count: int) -> dict[str, Any]:
    """Decode cost, and the same rows written without MQTT: ``store_batch`` and bare COPY."""
    url = services.database_url
    batches, decode_s = decoded_batches(workload, count)
    reset(url)
    store_s = asyncio.run(_store_direct(url, batches))
    reset(url)
    copy_s = asyncio.run(copy_rows(url, batches))
    reset(url)
    return {
        "batch": _BATCH,
        "decode": {
            "rate": round(count / decode_s),
            "us_per_message": round(decode_s / count * 1e6, 1),
        },
        "store_batch": {"rate": round(count / store_s), "seconds": round(store_s, 3)},
        "copy": {"rate": round(count / copy_s), "seconds": round(copy_s, 3)},
    }


def _rounded(values: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in values.items()}


def run(services: Services, workload: Workload, *, count: int, publishers: int) -> dict[str, Any]:
    """The whole drain scenario: bare baseline, one and two workers, direct writes."""
    # The direct writes first: they are quick, and they check the workload decodes cleanly.
    direct = direct_writes(services, workload, count=count)
    bare = drain_bare(services, workload, count=count, publishers=publishers)
    one = drain_citytel(
        services, workload, count=count, publishers=publishers, workers=1, label="drain1"
    )
    two = drain_citytel(
        services, workload, count=count, publishers=publishers, workers=2, label="drain2"
    )
    return {
        "messages": count,
        "bare_paho": bare,
        "citytel_1_worker": one,
        "citytel_2_workers": two,
        "direct": direct,
        "ratios": {
            "citytel_vs_bare_paho": round(one["rate"] / bare["rate"], 3),
            "citytel_vs_copy": round(one["rate"] / direct["copy"]["rate"], 3),
            "citytel_vs_store_batch": round(one["rate"] / direct["store_batch"]["rate"], 3),
            "two_workers_vs_one": round(two["rate"] / one["rate"], 3),
        },
    }
