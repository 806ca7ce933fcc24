"""The citytel command: migrate, ingest, api, simulate, fleet, keys, demo, settings, nats."""

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
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from citytel.config import Settings, describe_invalid_settings, get_settings
from citytel.errors import CitytelError, ConfigurationError
from citytel.settings_help import describe_settings, mask_url, settings_epilog

if TYPE_CHECKING:
    from datetime import datetime

    from citytel.keys import ApiKey

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
    from citytel.ingest.metrics import IngestMetrics
    from citytel.ingest.pipeline import run_ingest

    metrics = None
    if settings.ingest_metrics_port:
        metrics = IngestMetrics()
        metrics.serve(settings.ingest_metrics_host, settings.ingest_metrics_port)

    async def main() -> None:
        stop = await _until_signalled()
        await run_ingest(settings, stop=stop, metrics=metrics)

    _run(main())
    return 0


async def _check_database(settings: Settings) -> None:
    """Stop a server before it starts on a database that refuses it for good or lacks tables.

    A database that is merely unreachable is not a reason: the API starts, answers 503 and
    keeps trying.
    """
    from citytel.errors import TransientStorageError
    from citytel.storage.migrate import require_migrated
    from citytel.storage.pool import create_pool

    try:
        pool = await create_pool(settings)
    except TransientStorageError as exc:
        log.warning("%s; starting anyway, and trying again", exc)
        return
    try:
        await require_migrated(pool)
    finally:
        await pool.close()


def _nats_setup(settings: Settings, args: argparse.Namespace) -> int:
    from citytel.ingest.jetstream import setup_stream

    async def main() -> None:
        report = await setup_stream(settings, update=args.update)
        for verb, things in (
            ("created", report.created),
            ("updated", report.updated),
            ("matches the settings", report.unchanged),
        ):
            for thing in things:
                log.info("%s: %s", thing, verb)

    _run(main())
    return 0


def _api(settings: Settings, _args: argparse.Namespace) -> int:
    import uvicorn

    from citytel.api.app import create_app

    _run(_check_database(settings))

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


def _keys(settings: Settings, args: argparse.Namespace) -> int:
    from citytel.keys import check_name, generate_key, hash_key, parse_scopes
    from citytel.storage import api_keys
    from citytel.storage.pool import create_pool

    if args.keys_command == "create":
        try:
            name, scopes = check_name(args.name), parse_scopes(args.scope)
        except ValueError as exc:
            log.error("%s", exc)  # noqa: TRY400 - a clear sentence, not a traceback
            return 2

    async def main() -> None:
        pool = await create_pool(settings)
        try:
            if args.keys_command == "create":
                key = generate_key()
                created = await api_keys.create_key(pool, name, scopes, hash_key(key))
                log.info("created key %r with scopes %s", created.name, ", ".join(sorted(scopes)))
                # The key itself, alone on standard output, this once: it is stored only hashed.
                sys.stdout.write(key + "\n")
            elif args.keys_command == "revoke":
                revoked = await api_keys.revoke_key(pool, args.name)
                log.info("revoked key %r", revoked.name)
            else:
                sys.stdout.write(_key_table(await api_keys.list_keys(pool)))
        finally:
            await pool.close()

    _run(main())
    return 0


def _dead_letters(settings: Settings, _args: argparse.Namespace) -> int:
    from citytel.storage.dead_letters import prune_dead_letters
    from citytel.storage.pool import create_pool

    async def main() -> None:
        pool = await create_pool(settings)
        try:
            days = settings.dead_letter_retention_days
            pruned = await prune_dead_letters(pool, timedelta(days=days))
            log.info("pruned %d dead letter(s) last received over %d days ago", pruned, days)
        finally:
            await pool.close()

    _run(main())
    return 0


def _gateways(settings: Settings, args: argparse.Namespace) -> int:
    from citytel.broker import write_broker_files
    from citytel.storage import gateways
    from citytel.storage.pool import create_pool

    async def main() -> None:
        pool = await create_pool(settings)
        try:
            password = None
            if args.gateways_command == "add":
                password = await gateways.add_gateway(
                    pool, args.id, name=args.name, lorawan_application=args.lorawan_application
                )
            elif args.gateways_command == "rotate":
                password = await gateways.rotate_gateway(pool, args.id)
            elif args.gateways_command == "disable":
                await gateways.disable_gateway(pool, args.id)
            elif args.gateways_command == "list":
                for g in await gateways.list_gateways(pool):
                    state = "enabled" if g.enabled and g.has_password else "no password"
                    state = state if g.enabled else "disabled"
                    seen = g.last_seen_at.isoformat() if g.last_seen_at else "never"
                    app = f" application={g.lorawan_application}" if g.lorawan_application else ""
                    sys.stdout.write(
                        f"{g.id}\t{state}\tdevices={g.devices}\tcredential={g.credential_version}"
                        f"\tlast_seen={seen}{app}\t{g.name}\n"
                    )
            users = await gateways.broker_users(pool)
        finally:
            await pool.close()
        if password is not None:
            # The one time the password exists outside the gateway: on standard output only.
            sys.stdout.write(f"password for gateway {args.id} (shown once): {password}\n")
            sys.stdout.flush()
        if write_broker_files(settings, users):
            log.info("broker files written: %d gateway(s) may connect", len(users))
        elif args.gateways_command != "list":
            log.warning(
                "CITYTEL_BROKER_PASSWORD_FILE and CITYTEL_BROKER_ACL_FILE are not set: "
                "the registry changed but the broker was not updated"
            )

    _run(main())
    return 0


def _key_table(keys: list[ApiKey]) -> str:
    def when(value: datetime | None) -> str:
        return value.isoformat(timespec="seconds") if value is not None else "-"

    lines = [f"{'NAME':<24} {'SCOPES':<40} {'CREATED':<26} {'LAST USED':<26} REVOKED"]
    lines += [
        f"{k.name:<24} {','.join(sorted(k.scopes)):<40} {when(k.created_at):<26} "
        f"{when(k.last_used_at):<26} {when(k.revoked_at)}"
        for k in keys
    ]
    return "\n".join(lines) + "\n"


def _demo_key(settings: Settings) -> tuple[str, str]:
    """A new admin key for this demo run, named after the time it started: (name, key)."""
    from datetime import UTC, datetime

    from citytel.keys import Scope, generate_key, hash_key
    from citytel.storage import api_keys
    from citytel.storage.pool import create_pool

    key = generate_key()
    name = f"demo-{datetime.now(UTC):%Y%m%d-%H%M%S}"

    async def main() -> None:
        pool = await create_pool(settings)
        try:
            await api_keys.create_key(pool, name, frozenset({Scope.ADMIN}), hash_key(key))
        finally:
            await pool.close()

    _run(main())
    return name, key


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


def demo_simulator(me: list[str], args: argparse.Namespace) -> list[str]:
    """The demo's simulator command: the city at ``--rate``, with a few broken messages.

    Malformed messages at ``--malformed-ratio`` give the operator view dead letters to look at
    (and to replay nothing from: they stay refused), as a real fleet's firmware bugs do.
    """
    return [
        *me,
        "simulate",
        "--rate",
        str(args.rate),
        "--speedup",
        str(args.speedup),
        "--malformed-ratio",
        str(args.malformed_ratio),
    ]


def _demo(settings: Settings, args: argparse.Namespace) -> int:
    log.info("step 1 of 3: migrating the database")
    _migrate(settings, args)
    log.info("step 2 of 3: importing the demo fleet %s", settings.fleet_file)
    _fleet_import(settings, argparse.Namespace(file=settings.fleet_file))
    key_name, key = _demo_key(settings)
    log.info("step 3 of 3: starting ingest, the API and the simulator")
    env, own_session = _demo_environment()
    me = [sys.executable, "-m", "citytel"]
    processes = {
        "ingest": subprocess.Popen([*me, "ingest"], env=env),  # noqa: S603
        "api": subprocess.Popen([*me, "api"], env=env),  # noqa: S603
        "simulate": subprocess.Popen(demo_simulator(me, args), env=env),  # noqa: S603
    }
    base = f"http://{settings.api_host}:{settings.api_port}"
    auth = f'-H "Authorization: Bearer {key}"'
    sys.stdout.write(
        "\ncitytel demo is running (Ctrl-C stops it).\n"
        f"An API key with every scope was created for it (revoke it with "
        f"`citytel keys revoke {key_name}`):\n  {key}\n\n"
        f"  console         {base}/  (paste the key)\n"
        f"  API docs        {base}/docs  (Authorize: paste the key)\n"
        f"  fullest bins    curl {auth} '{base}/v1/containers?min_fill_pct=80'\n"
        f"  free parking    curl {auth} "
        f"'{base}/v1/parking/free?lat=33.5731&lon=-7.5898&radius_m=800'\n"
        f"  a zone          curl {auth} '{base}/v1/zones/maarif'\n"
        f"  readiness       curl '{base}/readyz'\n"
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
        "consume readings from MQTT (or JetStream) into the database",
        "Runs until SIGINT or SIGTERM; a reading ends stored or in the dead-letter store.",
        (
            "database_*",
            "mqtt_*",
            "ingest_*",
            "nats_*",
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

    keys = _command(
        commands,
        "keys",
        "API keys: create, list, revoke",
        "A key is printed once, when it is created; only its SHA-256 is stored.",
        ("database_url", "log_level"),
    )
    keys_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = keys_commands.add_parser("create", help="create a key and print it (this once)")
    create.add_argument("--name", required=True, help="a unique name, e.g. dispatch-app")
    create.add_argument(
        "--scope",
        action="extend",
        nargs="+",
        required=True,
        help="parking:read, containers:read, ops or admin (repeat for several)",
    )
    keys_commands.add_parser("list", help="list keys (never the keys themselves)")
    revoke = keys_commands.add_parser("revoke", help="revoke a key by name, at once")
    revoke.add_argument("name")

    dead_letters = _command(
        commands,
        "dead-letters",
        "dead letters: prune the old ones",
        "Run it daily (cron, a systemd timer): letters last received longer ago than the "
        "retention are deleted.",
        ("database_url", "dead_letter_retention_days", "log_level"),
    )
    dead_letter_commands = dead_letters.add_subparsers(
        dest="dead_letters_command", required=True, metavar="ACTION"
    )
    dead_letter_commands.add_parser("prune", help="delete letters older than the retention")

    gateways = commands.add_parser("gateways", help="gateways and their broker credentials")
    gateway_commands = gateways.add_subparsers(
        dest="gateways_command", required=True, metavar="ACTION"
    )
    add = gateway_commands.add_parser("add", help="register a gateway; prints its password once")
    add.add_argument("id", help="gateway id: its broker user name and topic segment")
    add.add_argument("--name", default="", help="a description for people")
    add.add_argument(
        "--lorawan-application",
        default=None,
        help="the network-server application it stands for (ChirpStack application id, "
        "The Things Stack app@tenant)",
    )
    rotate = gateway_commands.add_parser(
        "rotate", help="new password (printed once), old one refused; re-enables"
    )
    rotate.add_argument("id")
    disable = gateway_commands.add_parser("disable", help="refuse the gateway at the broker")
    disable.add_argument("id")
    gateway_commands.add_parser("list", help="every gateway; rewrites the broker files")

    nats = _command(
        commands,
        "nats",
        "the NATS JetStream stream ingest reads from",
        "See docs/operations.md, 'Growing past one machine'.",
        (
            "nats_url",
            "nats_username",
            "nats_password",
            "nats_stream",
            "nats_durable",
            "nats_replicas",
            "nats_max_age_s",
            "nats_max_bytes",
            "nats_max_msgs",
            "nats_duplicate_window_s",
            "nats_ack_wait_s",
            "nats_max_ack_pending",
            "mqtt_topic_root",
            "mqtt_lorawan",
        ),
    )
    nats_commands = nats.add_subparsers(dest="nats_command", required=True, metavar="ACTION")
    nats_setup = nats_commands.add_parser(
        "setup", help="create the stream and consumer, or check them against the settings"
    )
    nats_setup.add_argument(
        "--update", action="store_true", help="change an existing stream or consumer to match"
    )

    demo = _command(
        commands,
        "demo",
        "migrate, import the demo fleet, run everything",
        "Runs ingest, the API and the simulator until Ctrl-C.",
        ("*",),
    )
    demo.add_argument("--rate", type=float, default=300, help="simulated messages per second")
    demo.add_argument("--speedup", type=float, default=60, help="simulated seconds per second")
    demo.add_argument(
        "--malformed-ratio",
        type=float,
        default=0.001,
        help="share of malformed messages, so that dead letters show (default: %(default)s)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``citytel`` console script."""
    args = build_parser().parse_args(argv)
    try:
        settings = get_settings()
    except ValidationError as exc:
        # Before logging is configured (the log level is a setting too): plain lines on stderr.
        sys.stderr.write("".join(f"citytel: {line}\n" for line in describe_invalid_settings(exc)))
        return 2
    _configure_logging(settings)
    handlers = {
        "migrate": _migrate,
        "ingest": _ingest,
        "api": _api,
        "simulate": _simulate,
        "demo": _demo,
        "settings": _settings_command,
        "nats": _nats_setup,
    }
    try:
        if args.command == "keys":
            return _keys(settings, args)
        if args.command == "dead-letters":
            return _dead_letters(settings, args)
        if args.command == "gateways":
            return _gateways(settings, args)
        if args.command == "fleet":
            action = _fleet_import if args.fleet_command == "import" else _fleet_generate
            return action(settings, args)
        return handlers[args.command](settings, args)
    except CitytelError as exc:
        log.error("%s", exc)  # noqa: TRY400 - a clear sentence, not a traceback, for known errors
        return 2
