"""Reading migration files: order, directives, naming."""

from __future__ import annotations

from pathlib import Path

import pytest

from citytel.errors import ConfigurationError
from citytel.storage.migrate import _split_statements, load_migrations, migrations_dir


def test_shipped_migrations_are_ordered_and_guarded() -> None:
    """Shipped files load in order; only the TimescaleDB ones are guarded and non-transactional."""
    migrations = load_migrations(migrations_dir())
    assert [m.version for m in migrations] == sorted(m.version for m in migrations)
    guarded = [m.name for m in migrations if m.requires_timescaledb]
    assert guarded == ["0003_timescaledb", "0009_history_aggregates"]
    assert [m.name for m in migrations if not m.transactional] == guarded


def test_timescale_migration_splits_into_statements() -> None:
    """The no-transaction migration splits into its statements, comments dropped."""
    [timescale] = [m for m in load_migrations(migrations_dir()) if m.name == "0003_timescaledb"]
    statements = _split_statements(timescale.sql)
    assert statements[0] == "CREATE EXTENSION IF NOT EXISTS timescaledb"
    assert sum("create_hypertable" in s for s in statements) == 2
    assert sum("timescaledb.continuous" in s for s in statements) == 2
    assert not any(s.startswith("--") for s in statements)


def test_badly_named_file_is_refused(tmp_path: Path) -> None:
    """A file that does not follow NNNN_name.sql is an error, not silently skipped."""
    (tmp_path / "0001_ok.sql").write_text("SELECT 1;")
    (tmp_path / "2-bad.sql").write_text("SELECT 1;")
    with pytest.raises(ConfigurationError, match="must be named"):
        load_migrations(tmp_path)


def test_unknown_directive_is_refused(tmp_path: Path) -> None:
    """A misspelt directive is an error rather than a migration applied the wrong way."""
    (tmp_path / "0001_x.sql").write_text("-- citytel: no-transactoin\nSELECT 1;")
    with pytest.raises(ConfigurationError, match="unknown directive"):
        load_migrations(tmp_path)
