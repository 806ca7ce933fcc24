"""The ``citytel`` command: migrate, ingest, api, simulate, fleet, demo."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import subprocess
import sys
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from citytel.config import Settings, get_settings
from citytel.errors import CitytelError

log = logging.getLogger("citytel")


def _run(main: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine to completion on uvloop where it is installed, else asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        factory = None
    else:
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main)


def _configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _migrate(settings: Settings, _args: argparse.Namespace) -> int:
    from citytel.storage.migrate import ensure_database, migrate

    if ensure_database(settings):
        log.info("created the database")
    report = migrate(settings)
    applied = ", ".join(report.applied) or "none (up to date)"
    log.info("migrations applied: %s", applied)
    if report.skipped:
        log.info("skipped without TimescaleDB: %s", ", ".join(report.skipped))
    return 0


async def _until_signalled() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def _ingest(settings: Settings, _args: argparse.Namespace) -> int:
    from citytel.ingest.pipeline import run_ingest

    async def main() -> None:
        stop = await _until_signalled()
        await run_ingest(settings, stop=stop)

    _run(main())
    return 0


def _api(settings: Settings, _args: argparse.Namespace) -> int:
    import uvicorn

    from citytel.api.app import create_app

    if settings.api_workers > 1:
        # Worker processes import the app themselves, each building it from the environment.
        uvicorn.run(
            "citytel.api.app:create_app_from_env",
            factory=True,
            workers=settings.api_workers,
            host=settings.api_host,
            port=settings.api_port,
            log_level=settings.log_level.lower(),
            access_log=False,
        )
        return 0
    uvicorn.run(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        log_level=settings.log_level.lower(),
        access_log=False,
    )
    return 0


def _simulate(settings: Settings, args: argparse.Namespace) -> int:
    from simulators.cli import run

    return run(args, settings)


def _fleet_import(settings: Settings, args: argparse.Namespace) -> int:
    from citytel.storage.fleet import import_fleet
    from citytel.storage.pool import create_pool

    async def main() -> None:
        pool = await create_pool(settings)
        try:
            result = await import_fleet(pool, Path(args.file))
        finally:
            await pool.close()
        log.info("imported %d containers and %d parking spots", result.containers, result.spots)

    _run(main())
    return 0


def _fleet_generate(_settings: Settings, args: argparse.Namespace) -> int:
    from simulators.fleet import write_fleet

    write_fleet(Path(args.out), seed=args.seed, containers=args.containers, spots=args.spots)
    log.info("wrote %s", args.out)
    return 0


def _demo(settings: Settings, args: argparse.Namespace) -> int:
    _migrate(settings, args)
    _fleet_import(settings, argparse.Namespace(file=settings.fleet_file))
    me = [sys.executable, "-m", "citytel"]
    processes = {
        "ingest": subprocess.Popen([*me, "ingest"]),  # noqa: S603
        "api": subprocess.Popen([*me, "api"]),  # noqa: S603
        "simulate": subprocess.Popen(  # noqa: S603
            [*me, "simulate", "--rate", str(args.rate), "--speedup", str(args.speedup)]
        ),
    }
    base = f"http://{settings.api_host}:{settings.api_port}"
    sys.stdout.write(
        "\ncitytel demo is running (Ctrl-C stops it):\n"
        f"  console         {base}/\n"
        f"  API docs        {base}/docs\n"
        f"  fullest bins    {base}/v1/containers?min_fill_pct=80\n"
        f"  free parking    {base}/v1/parking/free?lat=33.5731&lon=-7.5898&radius_m=800\n"
        f"  a zone          {base}/v1/zones/maarif\n"
        f"  readiness       {base}/readyz\n\n"
    )
    sys.stdout.flush()
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    try:
        while not stopping.is_set() and all(p.poll() is None for p in processes.values()):
            stopping.wait(0.5)
    finally:
        for proc in processes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in processes.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
    failed = [name for name, p in processes.items() if p.returncode not in (0, -signal.SIGTERM)]
    if failed:
        log.error("demo process(es) exited with an error: %s", ", ".join(failed))
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``citytel`` command."""
    parser = argparse.ArgumentParser(prog="citytel", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("migrate", help="create the database if needed and apply migrations")
    commands.add_parser("ingest", help="consume readings from MQTT into the database")
    commands.add_parser("api", help="serve the HTTP API")

    simulate = commands.add_parser("simulate", help="publish simulated sensor readings")
    from simulators.cli import add_arguments

    add_arguments(simulate)

    fleet = commands.add_parser("fleet", help="the registry of containers and spots")
    fleet_commands = fleet.add_subparsers(dest="fleet_command", required=True, metavar="ACTION")
    fleet_import = fleet_commands.add_parser("import", help="upsert a GeoJSON FeatureCollection")
    fleet_import.add_argument("file", help="GeoJSON file of containers and spots")
    generate = fleet_commands.add_parser("generate", help="write the deterministic demo fleet")
    generate.add_argument("--out", default="sensors/fleet/casablanca.geojson")
    generate.add_argument("--seed", type=int, default=2026)
    generate.add_argument("--containers", type=int, default=2000)
    generate.add_argument("--spots", type=int, default=5000)

    demo = commands.add_parser("demo", help="migrate, import the demo fleet, run everything")
    demo.add_argument("--rate", type=float, default=300, help="simulated messages per second")
    demo.add_argument("--speedup", type=float, default=60, help="simulated seconds per second")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``citytel`` console script."""
    args = build_parser().parse_args(argv)
    settings = get_settings()
    _configure_logging(settings)
    handlers = {
        "migrate": _migrate,
        "ingest": _ingest,
        "api": _api,
        "simulate": _simulate,
        "demo": _demo,
    }
    try:
        if args.command == "fleet":
            action = _fleet_import if args.fleet_command == "import" else _fleet_generate
            return action(settings, args)
        return handlers[args.command](settings, args)
    except CitytelError as exc:
        log.error("%s", exc)  # noqa: TRY400 - a clear sentence, not a traceback, for known errors
        return 2
