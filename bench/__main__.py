"""Run the whole benchmark and print its JSON summary.

    python -m bench            # full run: 200,000-reading drains, 30 s steady, 20 s per API load
    python -m bench --quick    # smoke run: 20,000 readings, 10 s steady, 5 s per API load
    python -m bench --only batched   # messages of 50-500 readings against COPY of the same rows

It starts its own Mosquitto (the project's ``deploy/mosquitto.conf``), its own PostgreSQL
cluster (TimescaleDB preloaded when installed), a second one without TimescaleDB for the store
comparisons (history, storage) and, for the JetStream drain, its own ``nats-server`` on free
ports on 127.0.0.1, imports
a generated fleet of 50,000 spots and 20,000 containers, runs every scenario with its baseline,
and stops everything on exit. The summary is printed and written to
``bench/results/latest.json``, the chart to ``bench/results/``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import (
    api_load,
    batched,
    drain,
    forecast,
    history,
    jetstream_drain,
    profile,
    push,
    report,
    steady,
    storage,
)
from bench.database import import_fleet
from bench.load import build_workload
from bench.services import REPO, Services

log = logging.getLogger("bench")

# Every scenario, in the order a run takes them.
SCENARIOS = (
    "drain",
    "jetstream",
    "batched",
    "steady",
    "api",
    "profile",
    "history",
    "push",
    "forecast",
    "storage",
)

CONTAINERS = 20_000
SPOTS = 50_000


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("-n", "--messages", type=int, help="drain backlog size (default 200000)")
    parser.add_argument("--rate", type=float, default=5000, help="steady publication rate, msg/s")
    parser.add_argument("--steady-seconds", type=float, help="steady duration (default 30)")
    parser.add_argument("--api-seconds", type=float, help="each API load's duration (default 20)")
    parser.add_argument("--concurrency", type=int, default=32, help="API load concurrency")
    parser.add_argument("--publishers", type=int, default=4, help="backlog publisher processes")
    parser.add_argument("--paced-publishers", type=int, default=2, help="steady publishers")
    parser.add_argument(
        "--only",
        action="append",
        choices=SCENARIOS,
        help="run only these scenarios (repeatable)",
    )
    parser.add_argument(
        "--api-query",
        action="append",
        choices=["parking", "containers", "rounds"],
        help="with the api scenario, only these endpoints (repeatable; default parking and "
        "containers); rounds: free-spot searches while 8 clients loop on collection rounds",
    )
    parser.add_argument(
        "--api-profile",
        action="store_true",
        help="with the api scenario, also profile the API process (py-spy) under each load",
    )
    parser.add_argument(
        "--push-clients", type=int, help="push: SSE subscribers (default 1000, quick 100)"
    )
    parser.add_argument(
        "--push-rate", type=float, help="push: readings/s beside them (default 5000, quick 1000)"
    )
    parser.add_argument(
        "--storage-weeks",
        type=int,
        help="storage: weeks of the fleet's readings generated on each store (default 2, quick 1;"
        " 52 is a year)",
    )
    parser.add_argument(
        "--batched-readings",
        type=int,
        help="batched: readings in the backlog of 50-500-reading messages (default 1000000)",
    )
    parser.add_argument(
        "--profile-batched", action="store_true", help="batched: record the worker with py-spy"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory and logs")
    parser.add_argument(
        "--no-ingest-metrics",
        action="store_true",
        help="ingest workers without /metrics (CITYTEL_INGEST_METRICS_PORT=0)",
    )
    parser.add_argument("--out", default=str(REPO / "bench" / "results"), help="results directory")
    parser.add_argument(
        "--name", help="the results file's name (default latest.json, quick.json with --quick)"
    )
    return parser


def _version(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, timeout=10, check=False)  # noqa: S603
    except OSError:
        return "unknown"
    text = (done.stdout or done.stderr).decode().strip().splitlines()
    return text[0] if text else "unknown"


def _machine(services: Services) -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "postgresql": services.cluster.version,
        "store": services.cluster.store,
        "mosquitto": _version(["mosquitto", "-h"]).removeprefix("mosquitto version "),
        "http_load_client": "wrk" if shutil.which("wrk") else "python-asyncio",
    }


class _Partial:
    """Keeps a long run's results: a scenario that fails is recorded and the next one runs.

    The summary so far is written to ``partial.json`` after each scenario, so that a run
    stopped half-way (or a scenario that raised) does not lose what was already measured.
    """

    def __init__(self, summary: dict[str, Any], path: Path) -> None:
        self.summary = summary
        self.path = path

    @contextlib.contextmanager
    def scenario(self, name: str) -> Iterator[None]:
        """Run one scenario's block; record its failure instead of ending the run."""
        try:
            yield
        except Exception as exc:
            log.exception("scenario %s failed; going on with the next", name)
            self.summary.setdefault("failed", {})[name] = f"{type(exc).__name__}: {exc}"
        finally:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.summary, indent=2) + "\n")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every selected scenario, in one set of services; returns the summary."""
    count = args.messages or (20_000 if args.quick else 200_000)
    steady_s = args.steady_seconds or (10.0 if args.quick else 30.0)
    api_s = args.api_seconds or (5.0 if args.quick else 20.0)
    only = set(args.only or SCENARIOS)
    batched_readings = args.batched_readings or (200_000 if args.quick else 1_000_000)
    steady_count = int(args.rate * steady_s) if "steady" in only else 0
    push_rate = args.push_rate or (1000.0 if args.quick else 5000.0)
    push_clients = args.push_clients or (100 if args.quick else 1000)
    # Two runs, without and with subscribers, each with readings of its own.
    push_count = 2 * int(push_rate * steady_s) if "push" in only else 0

    started = time.monotonic()
    # The history and the forecast write their own data straight into databases of their own.
    needs_fleet = bool(
        only & {"drain", "jetstream", "batched", "steady", "api", "profile", "push", "storage"}
    )
    if needs_fleet:
        log.info("generating %d simulated readings", count + steady_count)
        workload = build_workload(
            containers=CONTAINERS, spots=SPOTS, messages=count + steady_count + push_count
        )
    summary: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "settings": {
            "ingest": "citytel defaults: batch 1000, flush 100 ms, receive maximum 4000, pool 10",
            "postgres": "private cluster, defaults + shared_buffers 256MB, fsync on",
            "broker": "private Mosquitto with deploy/mosquitto.conf",
            "ingest_metrics": not args.no_ingest_metrics,
        },
    }
    partial = _Partial(summary, Path(args.out) / "partial.json")
    with Services(keep=args.keep, ingest_metrics=not args.no_ingest_metrics) as services:
        summary["machine"] = _machine(services)
        if needs_fleet:
            summary["fleet"] = {"containers": CONTAINERS, "spots": SPOTS}
            log.info("importing the fleet")
            import_fleet(services.database_url, workload.fleet_geojson, services.workdir)
        if "drain" in only:
            with partial.scenario("drain"):
                log.info("drain: %d readings, baselines, one and two workers", count)
                summary["drain"] = drain.run(
                    services, workload, count=count, publishers=args.publishers
                )
        if "jetstream" in only:
            with partial.scenario("jetstream"):
                log.info("jetstream drain: %d readings, a bare consumer, 1 and 2 workers", count)
                summary["jetstream_drain"] = jetstream_drain.run(services, workload, count=count)
        if "batched" in only:
            with partial.scenario("batched"):
                log.info("batched: %d readings, 50-500 a message, against COPY", batched_readings)
                summary["batched"] = _batched(services, workload, batched_readings, args)
        if "profile" in only:
            with partial.scenario("profile"):
                log.info("profile: a drain of %d readings under py-spy", count)
                summary["profile"] = _profile(services, workload, count, args.publishers)
        if "steady" in only:
            with partial.scenario("steady"):
                log.info("steady: %g msg/s for %g s", args.rate, steady_s)
                summary["steady"] = steady.run(
                    services,
                    workload,
                    base=count,
                    rate=args.rate,
                    seconds=steady_s,
                    publishers=args.paced_publishers,
                )
        if "api" in only:
            with partial.scenario("api"):
                log.info("api: %d concurrent, %g s per load", args.concurrency, api_s)
                summary["api"] = api_load.run(
                    services,
                    workload.fleet_geojson,
                    concurrency=args.concurrency,
                    duration=api_s,
                    warmup=2.0 if args.quick else 3.0,
                    queries=tuple(args.api_query or ("parking", "containers")),
                    profiled=args.api_profile,
                )
        if "push" in only:
            with partial.scenario("push"):
                log.info("push: %d SSE subscribers beside %g readings/s", push_clients, push_rate)
                summary["push"] = push.run(
                    services,
                    workload,
                    base=count + steady_count,
                    rate=push_rate,
                    seconds=steady_s,
                    clients=push_clients,
                    concurrency=args.concurrency,
                    publishers=args.paced_publishers,
                )
        if "history" in only:
            with partial.scenario("history"):
                log.info("history: 90 days of readings, from the aggregates and the raw tables")
                summary["history"] = history.run(services)
        if "forecast" in only:
            with partial.scenario("forecast"):
                log.info("forecast: %d simulated weeks, backtest of the last ones", forecast.WEEKS)
                summary["forecast"] = forecast.run(services, quick=args.quick)
        if "storage" in only:
            with partial.scenario("storage"):
                weeks = args.storage_weeks or (1 if args.quick else 2)
                log.info("storage: %d weeks of the fleet's readings on each store, a drain", weeks)
                summary["storage"] = storage.run(
                    services,
                    workload,
                    weeks=weeks,
                    count=count,
                    rounds=1 if args.quick else 2,
                    publishers=args.publishers,
                )
    summary["targets"] = report.verdicts(summary)
    summary["elapsed_s"] = round(time.monotonic() - started, 1)
    return summary


def _profile(services: Services, workload: Any, count: int, publishers: int) -> dict[str, Any]:
    if profile.py_spy() is None:
        return {"skipped": "py-spy is not installed (pip install 'citytel[bench]')"}
    raw = services.workdir / "ingest-profile.txt"
    result = drain.drain_citytel(
        services,
        workload,
        count=count,
        publishers=publishers,
        workers=1,
        label="profiled",
        profile_to=raw,
    )
    if not raw.exists():
        return {"skipped": "py-spy wrote no profile (ptrace not permitted?)"}
    return {"drain_rate_under_profiler": result["rate"], **profile.summarize(raw)}


def _batched(
    services: Services, workload: Any, readings: int, args: argparse.Namespace
) -> dict[str, Any]:
    raw = services.workdir / "batched-profile.txt"
    profiling = args.profile_batched and profile.py_spy() is not None
    result = batched.run(
        services,
        workload.fleet_geojson,
        readings=readings,
        publishers=args.publishers,
        profile_to=raw if profiling else None,
    )
    if profiling and raw.exists():
        result["profile"] = profile.summarize(raw)
    return result


def main(argv: list[str] | None = None) -> int:
    """Run, print the JSON summary, save it and the chart."""
    args = _parser().parse_args(argv)
    # Stopped from outside, still stop the private broker, cluster and workers on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s bench: %(message)s", stream=sys.stderr
    )
    summary = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = args.name or ("quick.json" if args.quick else "latest.json")
    (out / name).write_text(json.dumps(summary, indent=2) + "\n")
    try:
        report.chart(summary, out / name.replace(".json", ".png"))
    except ImportError:
        log.warning("matplotlib is not installed: no chart (pip install 'citytel[bench]')")
    sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
