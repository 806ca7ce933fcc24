"""Migrations apply to an empty database, re-apply as a no-op, and refuse an edited history."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from citytel.config import Settings
from citytel.errors import ConfigurationError, StorageError
from citytel.storage.migrate import _LOCK_KEY, MigrationReport, migrate
from tests.integration.services import drop_database, with_database

pytestmark = pytest.mark.integration

EXPECTED_COLUMNS = {
    "containers": {
        "id",
        "location",
        "zone",
        "capacity_l",
        "depth_mm",
        "waste_kind",
        "full_mark_mm",
        "created_at",
        "updated_at",
        "gateway_id",
    },
    "parking_spots": {
        "id",
        "location",
        "zone",
        "category",
        "created_at",
        "updated_at",
        "changed_xid",
        "gateway_id",
    },
    "waste_readings": {
        "container_id",
        "ts",
        "fill_pct",
        "battery_pct",
        "temperature_c",
        "received_at",
        "f_cnt",
    },
    "parking_readings": {"spot_id", "ts", "occupied", "battery_pct", "received_at", "f_cnt"},
    "container_latest": {
        "container_id",
        "ts",
        "fill_pct",
        "battery_pct",
        "temperature_c",
        "last_seen",
        "cycle_started_at",
        "cycle_start_fill_pct",
        "last_cycle_rate_pct_h",
        "changed_xid",
    },
    "spot_latest": {"spot_id", "ts", "occupied", "battery_pct", "last_seen", "changed_xid"},
    "dead_letters": {
        "id",
        "topic",
        "payload",
        "payload_sha256",
        "reason",
        "detail",
        "first_received_at",
        "last_received_at",
        "times_received",
        "payload_bytes",
        "payload_truncated",
    },
    "schema_migrations": {"version", "name", "checksum", "applied_at"},
    "audit": {"id", "at", "actor", "action", "object_kind", "object_id", "before", "after"},
    "api_keys": {"id", "name", "scopes", "key_sha256", "created_at", "last_used_at", "revoked_at"},
    "sensors": {"id", "container_id", "spot_id", "model", "dev_eui", "network_device_id"},
    "device_events": {
        "device_kind",
        "device_id",
        "ts",
        "event",
        "battery_pct",
        "temperature_c",
        "detail",
        "f_cnt",
        "received_at",
    },
    "gateways": {
        "id",
        "name",
        "enabled",
        "lorawan_application",
        "password_hash",
        "credential_version",
        "created_at",
        "updated_at",
        "last_seen_at",
    },
}


@pytest.fixture
def empty_database(pg_server_url: str) -> Iterator[str]:
    """A database with nothing in it."""
    name = f"citytel_empty_{uuid.uuid4().hex[:10]}"
    admin = with_database(pg_server_url, "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))
    yield with_database(pg_server_url, name)
    drop_database(pg_server_url, name)


def schema(url: str) -> dict[str, set[str]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = 'public' AND table_name = ANY(%s)",
            (list(EXPECTED_COLUMNS),),
        ).fetchall()
    found: dict[str, set[str]] = {}
    for table, column in rows:
        found.setdefault(table, set()).add(column)
    return found


PLAIN = ["0001", "0002", "0004", "0005", "0006", "0007", "0008"]
PLAIN += ["0010", "0011", "0012", "0013", "0014", "0015", "0016", "0017"]
TIMESCALEDB_ONLY = ["0003", "0009"]
NAMES = {
    "0001": "0001_registry",
    "0002": "0002_readings",
    "0003": "0003_timescaledb",
    "0004": "0004_sensors",
    "0005": "0005_spot_changes",
    "0006": "0006_fill_cycles",
    "0007": "0007_device_faults",
    "0008": "0008_fill_order",
    "0009": "0009_history_aggregates",
    "0010": "0010_api_keys",
    "0011": "0011_gateways",
    "0012": "0012_roles",
    "0013": "0013_api_role_keys",
    "0014": "0014_ingest_reads_migrations",
    "0015": "0015_container_changes",
    "0016": "0016_dead_letter_size",
    "0017": "0017_audit",
}


def test_apply_to_empty_then_reapply_is_a_no_op(empty_database: str, store: str) -> None:
    """The first run creates the expected schema; the second applies nothing and changes nothing.

    Both stores get the same migrations but the TimescaleDB-only ones, which plain PostgreSQL
    skips.
    """
    versions = sorted(PLAIN + TIMESCALEDB_ONLY) if store == "timescaledb" else PLAIN
    first = migrate(Settings(), database_url=empty_database)
    assert first.applied == [NAMES[v] for v in versions]
    assert first.timescaledb is (store == "timescaledb")
    assert first.skipped == ([] if store == "timescaledb" else [NAMES[v] for v in TIMESCALEDB_ONLY])
    assert schema(empty_database) == EXPECTED_COLUMNS

    second = migrate(Settings(), database_url=empty_database)
    assert second.applied == []
    assert schema(empty_database) == EXPECTED_COLUMNS
    with psycopg.connect(empty_database) as conn:
        recorded = conn.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
        geography = conn.execute(
            "SELECT type FROM geography_columns WHERE f_table_name = 'parking_spots'"
        ).fetchone()
    assert recorded == [(v,) for v in versions]
    assert geography == ("Point",)


def test_edited_applied_migration_is_refused(empty_database: str) -> None:
    """A migration whose file changed after it was applied stops the run with a clear message."""
    migrate(Settings(), database_url=empty_database)
    with psycopg.connect(empty_database) as conn:
        conn.execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = '0001'")
    with pytest.raises(ConfigurationError, match="was changed after it was applied"):
        migrate(Settings(), database_url=empty_database)


def test_a_run_whose_connection_is_lost_runs_again(empty_database: str, settings: Settings) -> None:
    """A migration's server process ended under it (once seen: a crash in TimescaleDB) is rerun.

    The run waits on the migration lock, held here; its backend is then terminated, as a crash
    would end it. It reconnects, waits again, and completes once the lock is released.
    """
    done: list[object] = []
    with psycopg.connect(empty_database, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        runner = threading.Thread(
            target=lambda: done.append(_outcome(settings, empty_database)), daemon=True
        )
        runner.start()
        waiting = _waiting_backend(holder, runner)
        holder.execute("SELECT pg_terminate_backend(%s)", (waiting,))
        # The rerun waits on the lock again, from a new backend.
        again = _waiting_backend(holder, runner, other_than=waiting)
        assert again != waiting
        holder.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
        runner.join(timeout=60)
    assert not runner.is_alive()
    assert isinstance(done[0], MigrationReport), done[0]
    assert schema(empty_database) == EXPECTED_COLUMNS


def _outcome(settings: Settings, url: str) -> object:
    try:
        return migrate(settings, database_url=url)
    except StorageError as exc:
        return exc


def _waiting_backend(
    holder: psycopg.Connection[tuple[object, ...]],
    runner: threading.Thread,
    other_than: int | None = None,
) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and runner.is_alive():
        row = holder.execute(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            " AND pid <> coalesce(%s, 0)",
            (other_than,),
        ).fetchone()
        if row is not None:
            pid: int = row[0]  # type: ignore[assignment]
            return pid
        time.sleep(0.05)
    message = "the migration never waited on its lock"
    raise AssertionError(message)
