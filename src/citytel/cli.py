"""The citytel command: migrate, ingest, api, simulate, fleet, demo, settings."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from citytel.config import Settings, get_settings
from citytel.errors import CitytelError, ConfigurationError
from citytel.settings_help import describe_settings, mask_url, settings_epilog

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
    from citytel.decoding.profiles import load_profiles
    from citytel.storage.fleet import import_fleet
    from citytel.storage.pool import create_pool

    dry_run = bool(getattr(args, "dry_run", False))
    models = set(load_profiles(settings.profiles_dir))

    async def main() -> None:
        pool = await create_pool(settings)
        try:
            result = await import_fleet(
                pool, Path(args.file), models=models, area=settings.service_area, dry_run=dry_run
            )
        finally:
            await pool.close()
        verb = "would import (dry run, nothing written)" if dry_run else "imported"
        sys.stdout.write(
            f"{verb} {result.containers} containers and {result.spots} parking spots "
            f"from {args.file}:\n{result.changes.summary()}\n"
        )
        sys.stdout.flush()

    log.info("%s fleet file %s", "checking" if dry_run else "importing", args.file)
    _run(main())
    return 0


def _fleet_generate(_settings: Settings, args: argparse.Namespace) -> int:
    from simulators.fleet import write_fleet

    out = Path(args.out)
    if out.exists() and not args.force:
        message = f"{out} exists; pass --force to overwrite it, or name another file with --out"
        raise ConfigurationError(message)
    write_fleet(out, seed=args.seed, containers=args.containers, spots=args.spots)
    log.info("wrote %s", out)
    return 0


def _settings_command(settings: Settings, _args: argparse.Namespace) -> int:
    sys.stdout.write(describe_settings(settings))
    sys.stdout.flush()
    return 0


def _demo_environment() -> tuple[dict[str, str], bool]:
    """The demo's child processes' environment, and whether their MQTT session is the demo's own.

    Unless CITYTEL_MQTT_CLIENT_ID is set, ingest runs as a client id of the demo's own, whose
    persistent session the demo ends on a clean exit instead of leaving it on the broker.
    """
    env = dict(os.environ)
    if "CITYTEL_MQTT_CLIENT_ID" in env:
        return env, False
    env["CITYTEL_MQTT_CLIENT_ID"] = f"citytel-demo-{socket.gethostname()}"[:128]
    return env, True


def _end_demo_session(settings: Settings, client_id: str, *, own: bool) -> None:
    from citytel.ingest.mqtt import probe_broker

    if not own:
        log.info(
            "the broker keeps ingest's persistent session (client id %s) for %d s "
            "(CITYTEL_MQTT_SESSION_EXPIRY_S); the next run resumes it",
            client_id,
            settings.mqtt_session_expiry_s,
        )
        return

    async def end() -> str | None:
        return await probe_broker(settings, within=5.0, client_id=client_id)

    with asyncio.Runner() as runner:
        failure = runner.run(end())
    if failure is None:
        log.info("ended the demo's MQTT session (client id %s) on the broker", client_id)
    else:
        log.warning(
            "the demo's MQTT session (client id %s) stays on the broker for up to %d s: %s",
            client_id,
            settings.mqtt_session_expiry_s,
            failure,
        )


def _demo(settings: Settings, args: argparse.Namespace) -> int:
    log.info("step 1 of 3: migrating the database")
    _migrate(settings, args)
    log.info("step 2 of 3: importing the demo fleet %s", settings.fleet_file)
    _fleet_import(settings, argparse.Namespace(file=settings.fleet_file))
    log.info("step 3 of 3: starting ingest, the API and the simulator")
    env, own_session = _demo_environment()
    me = [sys.executable, "-m", "citytel"]
    processes = {
        "ingest": subprocess.Popen([*me, "ingest"], env=env),  # noqa: S603
        "api": subprocess.Popen([*me, "api"], env=env),  # noqa: S603
        "simulate": subprocess.Popen(  # noqa: S603
            [*me, "simulate", "--rate", str(args.rate), "--speedup", str(args.speedup)], env=env
        ),
    }
    base = f"http://{settings.api_host}:{settings.api_port}"
    sys.stdout.write(
        "\ncitytel demo is running (Ctrl-C stops it):\n"
        f"  API docs        {base}/docs\n"
        f"  fullest bins    {base}/v1/containers?min_fill_pct=80\n"
        f"  free parking    {base}/v1/parking/free?lat=33.5731&lon=-7.5898&radius_m=800\n"
        f"  a zone          {base}/v1/zones/maarif\n"
        f"  readiness       {base}/readyz\n"
        f"  MQTT broker     {mask_url(settings.mqtt_url)}\n\n"
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
    _end_demo_session(settings, env["CITYTEL_MQTT_CLIENT_ID"], own=own_session)
    return 0


DESCRIPTION = (
    "citytel: smart-city telemetry. Waste-container fill levels and parking occupancy arrive "
    "over MQTT, are stored in PostgreSQL/TimescaleDB and served over HTTP. Every setting is an "
    "environment variable CITYTEL_*: 'citytel settings' prints the effective ones, and each "
    "command's --help lists those it reads."
)


def _command(
    commands: Any, name: str, summary: str, detail: str, settings: tuple[str, ...] | None
) -> argparse.ArgumentParser:
    """A sub-command whose help says what it does and lists the settings it reads."""
    return commands.add_parser(  # type: ignore[no-any-return]
        name,
        help=summary,
        description=textwrap.fill(f"{summary[0].upper()}{summary[1:]}. {detail}".strip(), 79),
        epilog=settings_epilog(settings),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("citytel")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``citytel`` command."""
    parser = argparse.ArgumentParser(prog="citytel", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"citytel {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _command(
        commands,
        "migrate",
        "create the database if needed and apply migrations",
        "Safe to run again: applied migrations are skipped.",
        ("database_url", "timescale_*", "log_level"),
    )
    _command(
        commands,
        "ingest",
        "consume readings from MQTT into the database",
        "Runs until SIGINT or SIGTERM; a reading ends stored or in the dead-letter store.",
        (
            "database_*",
            "mqtt_*",
            "ingest_*",
            "sensor_profiles_dir",
            "timescale_retention",
            "log_level",
        ),
    )
    _command(
        commands,
        "api",
        "serve the HTTP API",
        "The OpenAPI documentation is at /docs.",
        ("database_*", "api_*", "log_level"),
    )
    _command(
        commands,
        "settings",
        "print the effective settings, secrets masked",
        "Each CITYTEL_* setting with its value and whether it comes from the environment.",
        None,
    )

    simulate = _command(
        commands,
        "simulate",
        "publish simulated sensor readings",
        "Readings for the devices of the fleet file, published to the broker.",
        ("mqtt_*", "fleet_file", "log_level"),
    )
    from simulators.cli import add_arguments

    add_arguments(simulate)

    fleet = commands.add_parser(
        "fleet",
        help="the registry of containers and spots",
        description="The registry of containers and parking spots, from GeoJSON files.",
    )
    fleet_commands = fleet.add_subparsers(dest="fleet_command", required=True, metavar="ACTION")
    fleet_import = _command(
        fleet_commands,
        "import",
        "upsert a GeoJSON FeatureCollection",
        "The file is checked whole and written in one transaction: a refused file changes "
        "nothing, and the refusal names each feature, the property and the fix.",
        ("database_url", "fleet_service_area", "sensor_profiles_dir", "log_level"),
    )
    fleet_import.add_argument("file", help="GeoJSON file of containers and spots")
    fleet_import.add_argument(
        "--dry-run",
        action="store_true",
        help="check the file and report what would be added, moved, changed and rebound; "
        "write nothing",
    )
    generate = _command(
        fleet_commands,
        "generate",
        "write a deterministic demo fleet to a file",
        "Refuses to overwrite an existing file unless --force is given.",
        (),
    )
    generate.add_argument("--out", required=True, help="the GeoJSON file to write")
    generate.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    generate.add_argument("--seed", type=int, default=2026, help="default: %(default)s")
    generate.add_argument("--containers", type=int, default=2000, help="default: %(default)s")
    generate.add_argument("--spots", type=int, default=5000, help="default: %(default)s")

    demo = _command(
        commands,
        "demo",
        "migrate, import the demo fleet, run everything",
        "Runs ingest, the API and the simulator until Ctrl-C.",
        ("*",),
    )
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
        "settings": _settings_command,
    }
    try:
        if args.command == "fleet":
            action = _fleet_import if args.fleet_command == "import" else _fleet_generate
            return action(settings, args)
        return handlers[args.command](settings, args)
    except CitytelError as exc:
        log.error("%s", exc)  # noqa: TRY400 - a clear sentence, not a traceback, for known errors
        return 2
