"""API: the two hot reads at a fixed concurrency, against ``citytel api`` and against asyncpg.

Free-spot searches are measured three ways: the API as it runs (answering from its live,
in-memory view), the API with that view switched off (each search a database query), and the
query alone through asyncpg.

The load runs in a process of its own: ``wrk`` when it is installed (C, so the client costs
little CPU on a small machine), else the small asyncio HTTP/1.1 keep-alive client below. The
baseline runs the very same SQL (``citytel.storage.queries``) with the same parameters straight
through an asyncpg pool as large as the API's, from its own process, at the same concurrency.

    python -m bench.api_load http --base http://127.0.0.1:8080 --paths FILE ...
    python -m bench.api_load db --url postgresql://... --query parking --params FILE ...
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import random
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import asyncpg

from bench.database import populate_latest
from bench.services import Services, auth_headers, citytel_api, create_api_key
from citytel.config import Settings
from citytel.storage.queries import (
    FREE_SPOTS_NEAR_JSON,
    LIST_FULL_CONTAINERS,
    LIST_FULL_CONTAINERS_WITH_TOTAL,
)

_PARAMETER_SETS = 256
_RADIUS_M = 500
_SPOTS_LIMIT = 20  # the API's default
_CONTAINERS_LIMIT = 100  # the API's default


def parameters(fleet: dict[str, Any], seed: int = 7) -> dict[str, list[dict[str, Any]]]:
    """Query parameters: points near random spots of the fleet, fill thresholds of 60-95 %."""
    rng = random.Random(seed)  # noqa: S311 - reproducible query points, not secrets
    spots = [f for f in fleet["features"] if f["properties"]["kind"] == "parking_spot"]
    parking = []
    for feature in rng.sample(spots, _PARAMETER_SETS):
        lon, lat = feature["geometry"]["coordinates"]
        parking.append(
            {
                "lat": round(lat + rng.uniform(-0.002, 0.002), 6),
                "lon": round(lon + rng.uniform(-0.002, 0.002), 6),
                "radius_m": _RADIUS_M,
                "limit": _SPOTS_LIMIT,
            }
        )
    containers = [
        {"min_fill_pct": round(rng.uniform(60, 95), 1), "limit": _CONTAINERS_LIMIT}
        for _ in range(_PARAMETER_SETS)
    ]
    return {"parking": parking, "containers": containers}


def _paths(query: str, sets: list[dict[str, Any]]) -> list[str]:
    prefix = "/v1/parking/free" if query == "parking" else "/v1/containers"
    return [f"{prefix}?{urlencode(p)}" for p in sets]


def _sql_args(query: str, p: dict[str, Any]) -> tuple[str, tuple[Any, ...]]:
    if query == "parking":
        return FREE_SPOTS_NEAR_JSON, (p["lat"], p["lon"], float(p["radius_m"]), p["limit"], None)
    # The route's SQL: the page and its total in one statement; "containers_page" is the page
    # alone, the baseline of earlier runs (then the route also counted in a second round trip).
    sql = LIST_FULL_CONTAINERS_WITH_TOTAL if query == "containers" else LIST_FULL_CONTAINERS
    return sql, (
        None,
        p["min_fill_pct"],
        None,
        None,
        None,
        None,
        p["limit"],
        0,
    )


def _summary(latencies: list[float], errors: int, seconds: float) -> dict[str, Any]:
    ordered = sorted(latencies)

    def pct(p: float) -> float:
        if not ordered:
            return float("nan")
        return round(1000 * ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))], 2)

    return {
        "requests": len(ordered),
        "errors": errors,
        "rps": round(len(ordered) / seconds, 1),
        "p50_ms": pct(50),
        "p90_ms": pct(90),
        "p99_ms": pct(99),
        "max_ms": round(1000 * ordered[-1], 2) if ordered else float("nan"),
    }


async def _closed_loop(
    call: Callable[[int], Awaitable[bool]], concurrency: int, warmup: float, duration: float
) -> dict[str, Any]:
    """``concurrency`` loops, each calling ``call`` back to back; latency after ``warmup``."""
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + duration
    latencies: list[float] = []
    errors = 0

    async def loop(k: int) -> None:
        nonlocal errors
        i = k
        while (began := time.perf_counter()) < stop_at:
            ok = await call(i)
            i += concurrency
            if began >= measure_from:
                latencies.append(time.perf_counter() - began)
                errors += not ok

    await asyncio.gather(*(loop(k) for k in range(concurrency)))
    return _summary(latencies, errors, duration)


async def _http(
    base: str, paths: list[str], concurrency: int, warmup: float, duration: float, key: str | None
) -> dict[str, Any]:
    parts = urlsplit(base)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    streams = [await asyncio.open_connection(host, port) for _ in range(concurrency)]
    length = re.compile(rb"content-length:\s*(\d+)", re.I)
    extra = "".join(f"{k}: {v}\r\n" for k, v in auth_headers(key).items())

    async def call(i: int) -> bool:
        reader, writer = streams[i % concurrency]
        writer.write(
            f"GET {paths[i % len(paths)]} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        found = length.search(head)
        await reader.readexactly(int(found[1]) if found else 0)
        return head.startswith(b"HTTP/1.1 200")

    try:
        return await _closed_loop(call, concurrency, warmup, duration)
    finally:
        for _, writer in streams:
            writer.close()


async def _db(
    url: str, query: str, sets: list[dict[str, Any]], args: argparse.Namespace
) -> dict[str, Any]:
    pool = await asyncpg.create_pool(url, min_size=args.pool, max_size=args.pool)
    prepared = [_sql_args(query, p) for p in sets]

    async def call(i: int) -> bool:
        statement, values = prepared[i % len(prepared)]
        async with pool.acquire() as conn:
            await conn.fetch(statement, *values)
        return True

    try:
        return await _closed_loop(call, args.concurrency, args.warmup, args.duration)
    finally:
        await pool.close()


def _wrk_script(paths: list[str], target: Path, key: str | None) -> Path:
    listed = ",\n".join(f'  "{p}"' for p in paths)
    headers = ", ".join(f'["{k}"] = "{v}"' for k, v in auth_headers(key).items())
    target.write_text(
        "local paths = {\n" + listed + "\n}\n"
        "local headers = {" + headers + "}\n"
        "local i = 0\n"
        "request = function()\n"
        "  i = i + 1\n"
        '  return wrk.format("GET", paths[(i % #paths) + 1], headers)\n'
        "end\n"
        "done = function(summary, latency, requests)\n"
        "  local e = summary.errors\n"
        '  io.write(string.format("BENCHJSON {\\"requests\\":%d,\\"duration_us\\":%d,'
        '\\"errors\\":%d,\\"p50_us\\":%d,\\"p90_us\\":%d,\\"p99_us\\":%d,\\"max_us\\":%d}\\n",'
        " summary.requests, summary.duration,"
        " e.connect + e.read + e.write + e.status + e.timeout,"
        " latency:percentile(50), latency:percentile(90), latency:percentile(99),"
        " latency.max))\n"
        "end\n"
    )
    return target


def _run_wrk(
    base: str,
    paths: list[str],
    concurrency: int,
    warmup: float,
    duration: float,
    work: Path,
    key: str | None,
) -> dict[str, Any]:
    wrk = shutil.which("wrk")
    assert wrk is not None  # noqa: S101
    script = _wrk_script(paths, work / "paths.lua", key)
    common = [wrk, "-t1", f"-c{concurrency}", "--timeout", "5s", "-s", str(script)]
    if warmup > 0:
        subprocess.run(  # noqa: S603
            [*common, f"-d{max(1, round(warmup))}s", base], capture_output=True, check=True
        )
    done = subprocess.run(  # noqa: S603
        [*common, f"-d{round(duration)}s", base],
        capture_output=True,
        check=True,
        timeout=duration + 60,
    )
    line = next(x for x in done.stdout.decode().splitlines() if x.startswith("BENCHJSON "))
    raw = json.loads(line.removeprefix("BENCHJSON "))
    seconds = raw["duration_us"] / 1e6
    return {
        "requests": raw["requests"],
        "errors": raw["errors"],
        "rps": round(raw["requests"] / seconds, 1),
        "p50_ms": round(raw["p50_us"] / 1000, 2),
        "p90_ms": round(raw["p90_us"] / 1000, 2),
        "p99_ms": round(raw["p99_us"] / 1000, 2),
        "max_ms": round(raw["max_us"] / 1000, 2),
    }


def _subprocess_json(args: list[str], within: float) -> dict[str, Any]:
    done = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "bench.api_load", *args],
        capture_output=True,
        timeout=within,
        check=False,
    )
    if done.returncode != 0:
        message = f"the load process failed: {done.stderr.decode()[-2000:]}"
        raise RuntimeError(message)
    result: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return result


def http_load(
    base: str,
    paths: list[str],
    *,
    concurrency: int,
    warmup: float,
    duration: float,
    work: Path,
    key: str | None,
) -> dict[str, Any]:
    """Closed-loop HTTP load from a separate process: wrk if installed, else our client."""
    if shutil.which("wrk"):
        result = _run_wrk(base + "/", paths, concurrency, warmup, duration, work, key)
        return {"client": "wrk", **result}
    listing = work / "paths.json"
    listing.write_text(json.dumps(paths))
    result = _subprocess_json(
        [
            "http",
            "--base",
            base,
            "--paths",
            str(listing),
            "--concurrency",
            str(concurrency),
            "--warmup",
            str(warmup),
            "--duration",
            str(duration),
            *(["--key", key] if key else []),
        ],
        within=warmup + duration + 60,
    )
    return {"client": "python-asyncio", **result}


def _sample(base: str, path: str, key: str) -> dict[str, Any]:
    request = urllib.request.Request(base + path, headers=auth_headers(key))  # noqa: S310
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
        body = json.loads(response.read())
    items = body.get("items", [])
    return {"status": response.status, "items": len(items), "total": body.get("total")}


# The bound off and no cache: the API as it was before CITYTEL_API_PLANNING_CONCURRENCY.
_UNBOUNDED = {"api_planning_concurrency": "64", "api_planning_cache_s": "0"}


def light_beside_heavy(
    services: Services,
    parking: list[str],
    key: str,
    *,
    concurrency: int,
    duration: float,
    warmup: float,
    planners: int = 8,
) -> dict[str, Any]:
    """Free-spot searches alone, then while ``planners`` clients loop on collection rounds.

    Every round asks for a different threshold, so no answer comes from the plan cache: the
    worst case for the bound. Refused rounds (429) count as the rounds' errors.
    """
    rounds = [
        f"/v1/collection/round?{urlencode({'threshold_pct': 50 + i / 10})}" for i in range(400)
    ]
    result: dict[str, Any] = {"planners": planners}
    for name, planning in (("bounded", None), ("unbounded", _UNBOUNDED)):
        work = services.workdir / f"rounds-{name}"
        (work / "light").mkdir(parents=True, exist_ok=True)
        (work / "heavy").mkdir(exist_ok=True)
        with citytel_api(services, key=key, planning=planning) as base:
            load = functools.partial(http_load, base, warmup=warmup, work=work / "light", key=key)
            alone = load(parking, concurrency=concurrency, duration=duration)
            with ThreadPoolExecutor(1) as background:
                heavy = background.submit(
                    http_load,
                    base,
                    rounds,
                    concurrency=planners,
                    warmup=warmup,
                    duration=duration + warmup + 2,
                    work=work / "heavy",
                    key=key,
                )
                time.sleep(warmup)
                loaded = load(parking, concurrency=concurrency, duration=duration)
                planned = heavy.result()
        result[name] = {
            "free_spots_alone": alone,
            "free_spots_beside_rounds": loaded,
            "rounds": planned,
            "ratio_p99_beside_rounds_vs_alone": round(loaded["p99_ms"] / alone["p99_ms"], 2),
            "ratio_rps_beside_rounds_vs_alone": round(loaded["rps"] / alone["rps"], 3),
        }
    return result


def run(
    services: Services,
    fleet: dict[str, Any],
    *,
    concurrency: int,
    duration: float,
    warmup: float,
    worker_counts: tuple[int, ...] = (1, 2),
    queries: tuple[str, ...] = ("parking", "containers"),
) -> dict[str, Any]:
    """Both endpoints through the API (1 and more workers) and straight through asyncpg."""
    work = services.workdir
    populated = populate_latest(services.database_url)
    sets = parameters(fleet)
    pool_size = Settings().database_pool_size
    key = create_api_key(services, "bench")
    result: dict[str, Any] = {
        "fleet": populated,
        "concurrency": concurrency,
        "duration_s": duration,
        "db_pool": pool_size,
    }
    for query in (q for q in queries if q != "rounds"):
        paths = _paths(query, sets[query])
        entry: dict[str, Any] = {}
        variants: list[tuple[str, int, bool, str | None]] = [
            (f"api_{workers}_worker", workers, True, key) for workers in worker_counts
        ]
        if query == "parking":
            # The same API with its live view off: each search is the database's query.
            variants.append(("api_1_worker_database_view", 1, False, key))
            # Parking opened to anonymous callers: the same searches without the key check.
            variants.append(("api_1_worker_anonymous", 1, True, None))
        for name, workers, live, sent in variants:
            with citytel_api(
                services,
                key=sent,
                workers=workers,
                live_spots=live,
                anonymous_parking=sent is None,
            ) as base:
                entry.setdefault("sample_response", _sample(base, paths[0], key))
                entry[name] = http_load(
                    base,
                    paths,
                    concurrency=concurrency,
                    warmup=warmup,
                    duration=duration,
                    work=work,
                    key=sent,
                )
        listing = work / f"{query}-params.json"
        listing.write_text(json.dumps(sets[query]))
        baselines = {"asyncpg": query}
        if query == "containers":
            baselines["asyncpg_page_only"] = "containers_page"
        for key, sql in baselines.items():
            entry[key] = _subprocess_json(
                [
                    "db",
                    "--url",
                    services.database_url,
                    "--query",
                    sql,
                    "--params",
                    str(listing),
                    "--concurrency",
                    str(concurrency),
                    "--pool",
                    str(pool_size),
                    "--warmup",
                    str(warmup),
                    "--duration",
                    str(duration),
                ],
                within=warmup + duration + 60,
            )
        api, db = entry["api_1_worker"], entry["asyncpg"]
        entry["ratio_api_vs_asyncpg_rps"] = round(api["rps"] / db["rps"], 3)
        if "asyncpg_page_only" in entry:
            page_only = entry["asyncpg_page_only"]["rps"]
            entry["ratio_api_vs_page_only_sql_rps"] = round(api["rps"] / page_only, 3)
        if "api_2_worker" in entry:
            entry["ratio_2_workers_vs_1_rps"] = round(entry["api_2_worker"]["rps"] / api["rps"], 3)
        if "api_1_worker_database_view" in entry:
            database_view = entry["api_1_worker_database_view"]
            entry["ratio_live_vs_database_view_rps"] = round(api["rps"] / database_view["rps"], 3)
        if "api_1_worker_anonymous" in entry:
            # What the key check costs: the same run's searches with a key over without one.
            anonymous = entry["api_1_worker_anonymous"]
            entry["ratio_key_vs_anonymous_rps"] = round(api["rps"] / anonymous["rps"], 3)
            entry["ratio_key_vs_anonymous_p99"] = round(api["p99_ms"] / anonymous["p99_ms"], 3)
        result[query] = entry
    # Last: its unbounded half leaves the machine busiest.
    if "rounds" in queries:
        result["free_spots_beside_rounds"] = light_beside_heavy(
            services,
            _paths("parking", sets["parking"]),
            key,
            concurrency=concurrency,
            duration=duration,
            warmup=warmup,
        )
    return result


def main(argv: list[str] | None = None) -> int:
    """The load process: ``http`` against the API or ``db`` straight to PostgreSQL."""
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["http", "db"])
    parser.add_argument("--base")
    parser.add_argument("--paths")
    parser.add_argument("--url")
    parser.add_argument("--query", choices=["parking", "containers", "containers_page"])
    parser.add_argument("--params")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--pool", type=int, default=10)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--key", help="the API key to send (none: anonymous)")
    args = parser.parse_args(argv)
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    if args.mode == "http":
        paths = json.loads(Path(args.paths).read_text())
        result = asyncio.run(
            _http(args.base, paths, args.concurrency, args.warmup, args.duration, args.key)
        )
    else:
        sets = json.loads(Path(args.params).read_text())
        result = asyncio.run(_db(args.url, args.query, sets, args))
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
