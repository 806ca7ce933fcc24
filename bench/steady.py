"""Steady state: a fixed publication rate into a running ``citytel ingest``; latency and lag.

Latency is measured without touching the service or the readings (``ts`` stays sensor time):

* Each publisher records, per message, the wall-clock time it handed the message to paho.
* Every ``SAMPLE_EVERY``-th message is *sampled*: from its due time on, a poller asks the
  database every ``POLL_S`` whether its reading, found by its primary key (device, ts), is
  there. The start time of the first query that sees it is the *commit observed* time; it is
  after the real commit by at most one polling period plus the query, so the figure is an upper
  bound, pessimistic by ~``POLL_S``. publish -> committed = observed - published.
* For every message, ``received_at`` (stamped by ingest when paho hands it over) minus the
  publish time gives the broker + network + paho part of the path, exactly.

Consumer lag is published - committed, sampled twice a second.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import asyncpg

from bench.database import reset
from bench.load import Workload, start_paced
from bench.services import Services, cpu_seconds

SAMPLE_EVERY = 25
POLL_S = 0.02
_LAG_EVERY_S = 0.5

_FOUND = """
SELECT k.i FROM unnest($1::int[], $2::text[], $3::timestamptz[]) AS k(i, id, ts)
WHERE EXISTS (SELECT 1 FROM waste_readings r WHERE r.container_id = k.id AND r.ts = k.ts)
   OR EXISTS (SELECT 1 FROM parking_readings r WHERE r.spot_id = k.id AND r.ts = k.ts)
"""
_COUNT = "SELECT (SELECT count(*) FROM waste_readings) + (SELECT count(*) FROM parking_readings)"


def _percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def _distribution_ms(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_ms": round(1000 * _percentile(values, 50), 1),
        "p90_ms": round(1000 * _percentile(values, 90), 1),
        "p99_ms": round(1000 * _percentile(values, 99), 1),
        "max_ms": round(1000 * max(values), 1) if values else float("nan"),
        "mean_ms": round(1000 * statistics.fmean(values), 1) if values else float("nan"),
    }


async def _watch(
    url: str,
    keys: list[tuple[str, datetime]],
    *,
    base: int,
    count: int,
    rate: float,
    t0: float,
    published: Any,
    until: float,
    cpu: Callable[[], dict[str, float]],
) -> tuple[dict[int, float], list[tuple[float, int, int]], dict[str, float]]:
    """Poll for the sampled readings and the committed count until all are seen or ``until``."""
    conn = await asyncpg.connect(url)
    await conn.execute("SET max_parallel_workers_per_gather = 0")
    observed: dict[int, float] = {}
    lag: list[tuple[float, int, int]] = []
    sampled = list(range(0, count, SAMPLE_EVERY))
    next_due = 0
    pending: list[int] = []
    next_lag = time.time()
    cpu_start = (time.time(), cpu())
    cpu_last = cpu_start
    try:
        while time.time() < until and (next_due < len(sampled) or pending):
            now = time.time()
            while next_due < len(sampled) and t0 + sampled[next_due] / rate <= now:
                pending.append(sampled[next_due])
                next_due += 1
            if pending:
                ids = [keys[base + i][0] for i in pending]
                stamps = [keys[base + i][1] for i in pending]
                found = {r["i"] for r in await conn.fetch(_FOUND, pending, ids, stamps)}
                for i in found:
                    observed[i] = now
                pending = [i for i in pending if i not in found]
            if now >= next_lag:
                sent = published()
                committed = int(await conn.fetchval(_COUNT))
                lag.append((now - t0, sent, committed))
                if sent < count or committed < count:
                    cpu_last = (time.time(), cpu())
                next_lag = now + _LAG_EVERY_S
            await asyncio.sleep(max(0.0, now + POLL_S - time.time()))
    finally:
        await conn.close()
    elapsed = max(1e-6, cpu_last[0] - cpu_start[0])
    busy = {k: round((v - cpu_start[1][k]) / elapsed, 2) for k, v in cpu_last[1].items()}
    return observed, lag, busy


async def _received(url: str) -> dict[tuple[str, datetime], float]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT container_id AS id, ts, extract(epoch FROM received_at)::float8 AS at"
            " FROM waste_readings UNION ALL"
            " SELECT spot_id, ts, extract(epoch FROM received_at)::float8 FROM parking_readings"
        )
    finally:
        await conn.close()
    return {(r["id"], r["ts"]): r["at"] for r in rows}


def _bare_baseline(
    services: Services,
    workload: Workload,
    *,
    base: int,
    count: int,
    rate: float,
    publishers: int,
    seconds: float,
) -> dict[str, Any]:
    """The same paced stream into a bare paho subscriber that acks and discards.

    What it measures is what any paho consumer of this shape gets on this machine under this
    load: how far behind the last publication it receives the last message.
    """
    root, client_id = "bench/steady-bare", "bench-steady-bare-0"
    command = [
        sys.executable,
        "-m",
        "bench.bare_subscriber",
        "--port",
        str(services.broker.port),
        "--root",
        root,
        "--client-id",
        client_id,
    ]
    subprocess.run([*command, "--expect", "0"], capture_output=True, timeout=30, check=True)  # noqa: S603
    subscriber = subprocess.Popen(  # noqa: S603
        [*command, "--expect", str(count), "--timeout", str(seconds + 120)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    t0 = time.time() + 1.0
    paced = start_paced(
        workload,
        port=services.broker.port,
        root=root,
        base=base,
        count=count,
        rate=rate,
        t0=t0,
        processes=publishers,
    )
    try:
        paced.finish(within=seconds + 60)
        out, _ = subscriber.communicate(timeout=seconds + 150)
        published_at = list(paced.published_at[:])
    finally:
        paced.kill()
        if subscriber.poll() is None:
            subscriber.kill()
    result = json.loads(out.decode().strip().splitlines()[-1])
    return {
        "received": result["received"],
        "complete": bool(result["ok"]),
        "last_received_after_last_publish_ms": round(
            1000 * (result["last"] - max(published_at)), 1
        ),
    }


def run(
    services: Services,
    workload: Workload,
    *,
    base: int,
    rate: float,
    seconds: float,
    publishers: int,
) -> dict[str, Any]:
    """Publish ``rate``/s for ``seconds`` into one running ingest worker and measure."""
    url = services.database_url
    count = int(rate * seconds)
    if base + count > len(workload.keys):
        message = "the workload is too small for this steady run"
        raise ValueError(message)
    reset(url)
    worker = services.worker("bench/steady", "bench-steady-0")
    worker.start()
    t0 = time.time() + 1.0
    paced = start_paced(
        workload,
        port=services.broker.port,
        root="bench/steady",
        base=base,
        count=count,
        rate=rate,
        t0=t0,
        processes=publishers,
    )
    try:
        observed, lag, cpu_used = asyncio.run(
            _watch(
                url,
                workload.keys,
                base=base,
                count=count,
                rate=rate,
                t0=t0,
                published=paced.count,
                until=t0 + seconds + 60,
                cpu=lambda: {
                    "ingest": cpu_seconds(worker.pid),
                    "postgres": services.cluster.cpu_seconds(),
                    "broker": cpu_seconds(services.broker.pid),
                    "publishers": sum(cpu_seconds(p.pid or 0) for p in paced.processes),
                },
            )
        )
        reports = paced.finish(within=60)
        published_at = list(paced.published_at[:])
    finally:
        paced.kill()
        worker.stop()
    received = asyncio.run(_received(url))
    baseline = _bare_baseline(
        services,
        workload,
        base=base,
        count=count,
        rate=rate,
        publishers=publishers,
        seconds=seconds,
    )
    latencies = [observed[i] - published_at[i] for i in observed]
    transit = [
        received[workload.keys[base + i]] - published_at[i]
        for i in range(count)
        if workload.keys[base + i] in received
    ]
    last_publish = max(published_at)
    committed_all = len(received)
    tail_ms = round(1000 * (max(observed.values(), default=last_publish) - last_publish), 1)
    bare_tail = baseline["last_received_after_last_publish_ms"]
    return {
        "rate_target": rate,
        "seconds": seconds,
        "messages": count,
        "committed": committed_all,
        "complete": committed_all >= count,
        "loadgen": {
            "processes": publishers,
            "achieved_rate": round(count / (last_publish - min(published_at)), 1),
            "max_behind_schedule_ms": round(1000 * max(r["max_behind_s"] for r in reports), 1),
        },
        "method": {
            "sampled_every": SAMPLE_EVERY,
            "poll_interval_ms": POLL_S * 1000,
            "sampled_seen": len(observed),
            "sampled_total": len(range(0, count, SAMPLE_EVERY)),
        },
        "cores_busy": cpu_used,
        "publish_to_committed": _distribution_ms(latencies),
        # Same-run baseline: how long after the last publication each consumer had it all.
        "last_committed_after_last_publish_ms": tail_ms,
        "bare_paho": baseline,
        "ratio_tail_vs_bare_paho": round(tail_ms / bare_tail, 2) if bare_tail > 0 else None,
        "publish_to_received": _distribution_ms(transit),
        "lag_messages": {
            "max": max((s - c for _, s, c in lag), default=0),
            "mean": round(statistics.fmean([s - c for _, s, c in lag]), 1) if lag else 0,
            "samples": [(round(t, 1), s - c) for t, s, c in lag],
        },
    }
