"""The suite runs on the store it was asked for: a silent fallback cannot pass for TimescaleDB."""

from __future__ import annotations

import os

import psycopg
import pytest

from tests.integration.services import timescaledb_installed

pytestmark = pytest.mark.integration


def test_the_suite_runs_on_the_chosen_store(database_url: str, store: str) -> None:
    """On TimescaleDB the readings are hypertables; on plain PostgreSQL there is no extension."""
    requested = os.environ.get("CITYTEL_TEST_STORE", "")
    if requested:
        assert store == requested
    elif timescaledb_installed():
        # Installed here, so the suite must run on it rather than quietly on plain tables.
        assert store == "timescaledb"
    with psycopg.connect(database_url) as conn:
        extension = conn.execute(
            "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
        ).fetchone()
        hypertables = (
            conn.execute(
                "SELECT hypertable_name::text FROM timescaledb_information.hypertables ORDER BY 1"
            ).fetchall()
            if extension
            else []
        )
    if store == "timescaledb":
        assert extension is not None
        assert hypertables == [("parking_readings",), ("waste_readings",)]
    else:
        assert extension is None
