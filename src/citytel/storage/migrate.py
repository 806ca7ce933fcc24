"""Schema migrations: numbered SQL files, each applied once and recorded.

Migrations run through psycopg, synchronously: they happen once at deployment, not on a hot path,
and some TimescaleDB statements must run outside a transaction, which a plain synchronous
autocommit connection makes easy to express.

A file may start with directive comments:

- ``-- citytel: requires timescaledb``: applied only where the extension can be loaded, and retried
  on every run until it has been, so that installing TimescaleDB later upgrades in place.
- ``-- citytel: no-transaction``: run statement by statement in autocommit (needed for continuous
  aggregates); such a file must be written so that repeating it is harmless.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import asyncpg
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from citytel.config import Settings
from citytel.errors import ConfigurationError, StorageError
from citytel.storage.pool import connection

log = logging.getLogger(__name__)

NOT_MIGRATED = "database not migrated: run `citytel migrate`"

_FILE_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_DIRECTIVE = re.compile(r"^--\s*citytel:\s*(.+?)\s*$", re.MULTILINE)
# Any fixed number: it only has to be the same for every citytel process migrating one database.
_LOCK_KEY = 0x63697479
_ATTEMPTS = 5


@dataclass(frozen=True)
class Migration:
    """One SQL file of ``migrations/``."""

    version: str
    name: str
    sql: str
    requires_timescaledb: bool
    transactional: bool

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass(frozen=True)
class MigrationReport:
    """What a run of :func:`migrate` did."""

    applied: list[str]
    skipped: list[str]
    timescaledb: bool
    policies_changed: list[str] = field(default_factory=list)


def migrations_dir() -> Path:
    """Where the SQL files are: inside an installed wheel, or at the top of a source checkout."""
    packaged = resources.files("citytel") / "migrations"
    if packaged.is_dir():
        return Path(str(packaged))
    checkout = Path(__file__).resolve().parents[3] / "migrations"
    if checkout.is_dir():
        return checkout
    message = f"cannot find the migrations directory (looked in the package and at {checkout})"
    raise ConfigurationError(message)


def load_migrations(directory: Path) -> list[Migration]:
    """Every migration in ``directory``, in version order."""
    found = []
    for path in sorted(directory.iterdir()):
        match = _FILE_NAME.match(path.name)
        if path.suffix != ".sql":
            continue
        if match is None:
            message = f"migration file {path.name!r} must be named NNNN_lower_snake.sql"
            raise ConfigurationError(message)
        text = path.read_text(encoding="utf-8")
        directives = set(_DIRECTIVE.findall(text))
        unknown = directives - {"requires timescaledb", "no-transaction"}
        if unknown:
            message = f"{path.name}: unknown directive(s) {sorted(unknown)}"
            raise ConfigurationError(message)
        found.append(
            Migration(
                version=match.group(1),
                name=path.stem,
                sql=text,
                requires_timescaledb="requires timescaledb" in directives,
                transactional="no-transaction" not in directives,
            )
        )
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        message = f"two migrations share a version number in {directory}"
        raise ConfigurationError(message)
    return found


def _split_statements(text: str) -> list[str]:
    # Good enough for our own migration files, which keep to one statement per ';'-terminated
    # paragraph and contain no ';' inside literals or dollar-quoted bodies.
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    return [s.strip() for s in body.split(";") if s.strip()]


def timescaledb_available(conn: psycopg.Connection[tuple[object, ...]]) -> bool:
    """Whether the timescaledb extension is installed, or can be (available and preloaded)."""
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'),"
        " EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'),"
        " current_setting('shared_preload_libraries')"
    ).fetchone()
    assert row is not None  # noqa: S101 - a SELECT without FROM returns one row
    installed, available, preload = row
    return bool(installed) or (bool(available) and "timescaledb" in str(preload))


def _apply(conn: psycopg.Connection[tuple[object, ...]], migration: Migration) -> None:
    record = (
        "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
        (migration.version, migration.name, migration.checksum),
    )
    if migration.transactional:
        with conn.transaction():
            conn.execute(migration.sql.encode())
            conn.execute(*record)
        return
    for statement in _split_statements(migration.sql):
        conn.execute(statement.encode())
    conn.execute(*record)


# The continuous aggregates of migrations/0009_history_aggregates.sql, which the API reads.
HISTORY_AGGREGATES = (
    "waste_fill_hourly",
    "parking_occupancy_hourly",
    "waste_fill_daily",
    "parking_occupancy_daily",
)

_FIND_JOB = (
    "SELECT job_id, config FROM timescaledb_information.jobs"
    " WHERE proc_name = %s AND hypertable_name = %s"
)


def _keep_policy(
    conn: psycopg.Connection[tuple[object, ...]],
    table: str,
    proc: str,
    key: str,
    wanted: str,
    add: str,
) -> bool:
    # One job per (table, policy), created once and kept: its id, history and schedule survive
    # every later run. A changed setting alters the job's configuration in place. True when
    # something changed.
    found = conn.execute(_FIND_JOB, (proc, table)).fetchone()
    if found is None:
        conn.execute(add, (table, wanted))
        return True
    job_id, config = found
    assert isinstance(config, dict)  # noqa: S101 - jobs.config is jsonb, read as a dict
    same = conn.execute("SELECT %s::interval = %s::interval", (config.get(key), wanted)).fetchone()
    if same is not None and same[0]:
        return False
    conn.execute(
        "SELECT alter_job(%s, config => %s::jsonb || jsonb_build_object(%s::text, %s::text))",
        (job_id, Jsonb(config), key, wanted),
    )
    return True


def _apply_timescale_policies(
    conn: psycopg.Connection[tuple[object, ...]], settings: Settings
) -> list[str]:
    # Settings, not migrations: an operator changes retention without writing SQL.
    changed: list[str] = []
    for table in ("waste_readings", "parking_readings"):
        conn.execute(
            "SELECT set_chunk_time_interval(%s::regclass, %s::interval)",
            (table, settings.timescale_chunk_interval),
        )
        if _keep_policy(
            conn,
            table,
            "policy_compression",
            "compress_after",
            settings.timescale_compress_after,
            "SELECT add_compression_policy(%s::regclass, %s::interval)",
        ):
            changed.append(f"{table}: compression")
        if _keep_policy(
            conn,
            table,
            "policy_retention",
            "drop_after",
            settings.timescale_retention,
            "SELECT add_retention_policy(%s::regclass, %s::interval)",
        ):
            changed.append(f"{table}: retention")
    # The refresh policies of 0003 looked back 3 days: a reading arriving later never reached
    # its bucket. Looking back over the whole retention period costs little, because a refresh
    # re-materialises only the buckets TimescaleDB logged as changed by late inserts; and it never
    # reaches back past the raw readings' retention, where it would empty the buckets the
    # aggregates keep longer (CITYTEL_TIMESCALE_AGGREGATE_RETENTION).
    for view in HISTORY_AGGREGATES:
        found = conn.execute(
            "SELECT 1 FROM timescaledb_information.continuous_aggregates"
            " WHERE view_schema = 'public' AND view_name = %s",
            (view,),
        ).fetchone()
        if found is None:
            continue
        if _keep_policy(
            conn,
            view,
            "policy_refresh_continuous_aggregate",
            "start_offset",
            settings.timescale_retention,
            "SELECT add_continuous_aggregate_policy(%s::regclass, start_offset => %s::interval,"
            " end_offset => INTERVAL '1 hour', schedule_interval => INTERVAL '30 minutes')",
        ):
            changed.append(f"{view}: refresh")
        if _keep_policy(
            conn,
            view,
            "policy_retention",
            "drop_after",
            settings.timescale_aggregate_retention,
            "SELECT add_retention_policy(%s::regclass, %s::interval)",
        ):
            changed.append(f"{view}: retention")
    return changed


def _apply_roles(conn: psycopg.Connection[tuple[object, ...]], settings: Settings) -> None:
    # After every run: the aggregates exist only once TimescaleDB is there, and a password is a
    # setting, not a migration.
    roles = {
        str(name)
        for (name,) in conn.execute(
            "SELECT rolname FROM pg_roles WHERE rolname IN ('citytel_ingest', 'citytel_api')"
        ).fetchall()
    }
    if "citytel_api" in roles:
        for view in HISTORY_AGGREGATES:
            if conn.execute("SELECT to_regclass(%s)", (view,)).fetchone() != (None,):
                conn.execute(
                    sql.SQL("GRANT SELECT ON {} TO citytel_api").format(sql.Identifier(view))
                )
    passwords = {
        "citytel_ingest": settings.database_ingest_password,
        "citytel_api": settings.database_api_password,
    }
    for role, password in passwords.items():
        if role in roles and password is not None:
            conn.execute(
                sql.SQL("ALTER ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(role), sql.Literal(password.get_secret_value())
                )
            )


def migrate(settings: Settings, *, database_url: str | None = None) -> MigrationReport:
    """Apply every pending migration to the configured database; a no-op when none is pending.

    Raises:
        StorageError: the database cannot be reached or a migration fails.
        ConfigurationError: a recorded migration's file has changed since it was applied.
    """
    url = database_url or settings.database_url.get_secret_value()
    attempt = 1
    while True:
        try:
            conn = _connect(url, patient=attempt > 1)
        except psycopg.OperationalError as exc:
            message = f"cannot connect to the database to migrate it: {exc}"
            raise StorageError(message) from exc
        with conn:
            try:
                return _migrate(conn, settings)
            except psycopg.Error as exc:
                if attempt == _ATTEMPTS or not (_raced_a_job(exc) or conn.closed):
                    message = f"migration failed: {exc}"
                    raise StorageError(message) from exc
                log.warning("migration interrupted (%s); running it again", exc)
        time.sleep(0.2 * attempt)
        attempt += 1


def _connect(url: str, *, patient: bool) -> psycopg.Connection[tuple[object, ...]]:
    # Patient after an interrupted run: a server that crashed is in recovery for a moment.
    deadline = time.monotonic() + (30 if patient else 0)
    while True:
        try:
            return psycopg.connect(url, autocommit=True)
        except psycopg.OperationalError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.5)


def _raced_a_job(exc: psycopg.Error) -> bool:
    # TimescaleDB's scheduler may be running a policy job (one 0003 has just created, say) while
    # a later statement drops or alters that job; its catalog row then fails to update with
    # "tuple concurrently updated" or "... deleted", an internal error, instead of waiting. On
    # TimescaleDB 2.28.3 with PostgreSQL 15 the same race was once seen to crash the server
    # process instead (a segfault in the extension; the connection closes). Every step of a
    # run can be repeated, so the run is, on a new connection.
    return exc.sqlstate == "XX000" and "concurrently" in str(exc)


def _migrate(conn: psycopg.Connection[tuple[object, ...]], settings: Settings) -> MigrationReport:
    # Two processes migrating at once (two replicas starting) take turns instead of racing.
    conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        rows = conn.execute("SELECT version, checksum FROM schema_migrations").fetchall()
        recorded = {str(version): str(checksum) for version, checksum in rows}
        timescale = timescaledb_available(conn)
        applied: list[str] = []
        skipped: list[str] = []
        for migration in load_migrations(migrations_dir()):
            if migration.version in recorded:
                if recorded[migration.version] != migration.checksum:
                    message = (
                        f"migration {migration.name} was changed after it was applied; "
                        "add a new migration instead of editing an applied one"
                    )
                    raise ConfigurationError(message)
                continue
            if migration.requires_timescaledb and not timescale:
                skipped.append(migration.name)
                continue
            log.info("applying migration %s", migration.name)
            _apply(conn, migration)
            applied.append(migration.name)
        changed: list[str] = []
        _apply_roles(conn, settings)
        if timescale:
            changed = _apply_timescale_policies(conn, settings)
            version = conn.execute(
                "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
            ).fetchone()
            log.info(
                "TimescaleDB %s: readings in hypertables with compression after %s, retention %s;"
                " hourly and daily continuous aggregates kept %s",
                version[0] if version else "?",
                settings.timescale_compress_after,
                settings.timescale_retention,
                settings.timescale_aggregate_retention,
            )
        else:
            log.info(
                "TimescaleDB not available: running on plain PostgreSQL (same tables and"
                " queries; no compression, retention policy or continuous aggregates)"
            )
        return MigrationReport(
            applied=applied, skipped=skipped, timescaledb=timescale, policies_changed=changed
        )
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))


def ensure_database(settings: Settings) -> bool:
    """Create the configured database if it does not exist yet; True when it was created.

    Connects to the server's ``postgres`` database for that, as ``createdb`` would.
    """
    url = settings.database_url.get_secret_value()
    info = psycopg.conninfo.conninfo_to_dict(url)
    name = info.get("dbname")
    if not name:
        message = "CITYTEL_DATABASE_URL must name a database"
        raise ConfigurationError(message)
    admin_url = psycopg.conninfo.make_conninfo(url, dbname="postgres")
    try:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
            ).fetchone()
            if exists:
                return False
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(str(name))))
            return True
    except psycopg.Error as exc:
        message = f"cannot create database {name!r}: {exc}"
        raise StorageError(message) from exc


async def missing_migrations(pool: asyncpg.Pool) -> list[str]:
    """The migrations every citytel database needs that this one has not had, in order.

    Those that require TimescaleDB are left out: a plain PostgreSQL database never gets them.
    Empty when the database is ready for this version of citytel.

    Raises:
        StorageError: the database could not be read.
    """
    needed = [m for m in load_migrations(migrations_dir()) if not m.requires_timescaledb]
    async with connection(pool) as conn:
        if await conn.fetchval("SELECT to_regclass('schema_migrations') IS NULL"):
            return [m.name for m in needed]
        rows = await conn.fetch("SELECT version FROM schema_migrations")
    applied = {row["version"] for row in rows}
    return [m.name for m in needed if m.version not in applied]


async def require_migrated(pool: asyncpg.Pool) -> None:
    """Refuse to work on a database that lacks some of this version's migrations.

    Raises:
        ConfigurationError: saying which are missing and to run ``citytel migrate``.
    """
    missing = await missing_migrations(pool)
    if missing:
        message = f"{NOT_MIGRATED} (missing: {', '.join(missing)})"
        raise ConfigurationError(message)
