"""On the real extension: compressed chunks, retention, and policies kept across migrations."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import psycopg
import pytest

from citytel.config import Settings
from citytel.domain import DeadLetter, DecodedMessage, DeviceKind, Reason, WasteReading
from citytel.storage.migrate import HISTORY_AGGREGATES, migrate
from citytel.storage.writer import store_batch
from tests.integration.conftest import Fleet

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _on_timescaledb(store: str) -> None:
    if store != "timescaledb":
        pytest.skip("runs on TimescaleDB only (the store chosen here is plain PostgreSQL)")


def jobs(url: str) -> dict[tuple[str, str], tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            # next_start as text: a job due at once has -infinity, which Python cannot hold.
            "SELECT proc_name, hypertable_name, job_id, config, next_start::text"
            " FROM timescaledb_information.jobs WHERE hypertable_name IS NOT NULL"
        ).fetchall()
    return {(str(r[0]), str(r[1])): tuple(r[2:]) for r in rows}


def test_migrate_again_keeps_every_job(database_url: str) -> None:
    """A second `citytel migrate` changes no job: same ids, configuration and next run."""
    before = jobs(database_url)
    assert set(before) == {
        (proc, table)
        for proc in ("policy_compression", "policy_retention")
        for table in ("waste_readings", "parking_readings")
    } | {
        (proc, view)
        for proc in ("policy_refresh_continuous_aggregate", "policy_retention")
        for view in HISTORY_AGGREGATES
    }
    report = migrate(Settings(), database_url=database_url)
    assert report.policies_changed == []
    assert jobs(database_url) == before


def test_a_changed_setting_alters_the_job_in_place(database_url: str) -> None:
    """A new retention period becomes the same job's configuration; nothing else changes."""
    before = jobs(database_url)
    report = migrate(Settings(timescale_retention="500 days"), database_url=database_url)
    # The aggregates' refresh looks back over the retention period, so it follows too; their
    # own retention is another setting, unchanged.
    assert report.policies_changed == [
        "waste_readings: retention",
        "parking_readings: retention",
        *(f"{view}: refresh" for view in HISTORY_AGGREGATES),
    ]
    after = jobs(database_url)
    assert set(after) == set(before)
    for key, (job_id, config, _next_start) in after.items():
        assert job_id == before[key][0]
        if key[0] == "policy_retention" and key[1] not in HISTORY_AGGREGATES:
            assert config["drop_after"] == "500 days"
        elif key[0] == "policy_refresh_continuous_aggregate":
            assert config["start_offset"] == "500 days"
        else:
            assert config == before[key][1]


def test_a_changed_aggregate_retention_alters_only_their_retention(database_url: str) -> None:
    """CITYTEL_TIMESCALE_AGGREGATE_RETENTION becomes the aggregates' retention jobs, in place."""
    before = jobs(database_url)
    report = migrate(Settings(timescale_aggregate_retention="3 years"), database_url=database_url)
    assert report.policies_changed == [f"{view}: retention" for view in HISTORY_AGGREGATES]
    after = jobs(database_url)
    for key, (job_id, config, _next_start) in after.items():
        assert job_id == before[key][0]
        if key[0] == "policy_retention" and key[1] in HISTORY_AGGREGATES:
            assert config["drop_after"] == "3 years"
        else:
            assert config == before[key][1]


NOW = datetime.now(UTC).replace(microsecond=0)


def waste(container: str, ts: datetime, fill_pct: float) -> DecodedMessage:
    reading = WasteReading(container_id=container, ts=ts, fill_pct=fill_pct)
    return DecodedMessage(
        kind=DeviceKind.WASTE,
        device_id=container,
        readings=(reading,),
        topic=f"t/gw/waste/{container}",
        payload=f"{ts.isoformat()} {fill_pct}".encode(),
        received_at=NOW,
    )


async def history(pool: asyncpg.Pool, container: str) -> list[tuple[datetime, float]]:
    rows = await pool.fetch(
        "SELECT ts, fill_pct FROM waste_readings WHERE container_id = $1 ORDER BY ts", container
    )
    return [(r["ts"], r["fill_pct"]) for r in rows]


async def test_late_and_duplicate_readings_in_a_compressed_chunk(
    pool: asyncpg.Pool, fleet: Fleet
) -> None:
    """Into a compressed chunk, a duplicate is stored once and a late reading is added; the
    latest state stays the newest reading's."""
    container = fleet.containers[0]
    old = NOW - timedelta(days=20)
    await store_batch(pool, [waste(container, old, 30.0), waste(container, NOW, 60.0)], [])
    compressed = await pool.fetch(
        "SELECT compress_chunk(c) FROM show_chunks('waste_readings', older_than => $1::interval) c",
        timedelta(days=10),
    )
    assert len(compressed) == 1
    assert await pool.fetchval(
        "SELECT bool_and(is_compressed) FROM timescaledb_information.chunks"
        " WHERE hypertable_name = 'waste_readings' AND range_end <= $1",
        NOW - timedelta(days=10),
    )
    late = old + timedelta(hours=1)
    outcome = await store_batch(
        pool, [waste(container, old, 30.0), waste(container, late, 35.0)], []
    )
    assert (outcome.stored, outcome.duplicates) == (1, 1)
    assert await history(pool, container) == [(old, 30.0), (late, 35.0), (NOW, 60.0)]
    latest = await pool.fetchrow(
        "SELECT ts, fill_pct FROM container_latest WHERE container_id = $1", container
    )
    assert latest is not None
    assert (latest["ts"], latest["fill_pct"]) == (NOW, 60.0)


async def test_retention_drops_old_chunks_and_nothing_else(
    pool: asyncpg.Pool, fleet: Fleet
) -> None:
    """The retention job removes readings past the period; registry, latest state, fill cycles
    and dead letters stay as they were."""
    container = fleet.containers[0]
    ancient, recent = NOW - timedelta(days=430), NOW - timedelta(days=1)
    letter = DeadLetter("t/x", b"junk", Reason.INVALID_JSON, "not JSON", ancient)
    await store_batch(
        pool, [waste(container, ancient, 10.0), waste(container, recent, 20.0)], [letter]
    )
    kept_tables = (
        "containers",
        "parking_spots",
        "container_latest",
        "spot_latest",
        "dead_letters",
        "sensors",
    )

    async def snapshot() -> dict[str, list[Any]]:
        return {
            table: [tuple(r) for r in await pool.fetch(f"SELECT * FROM {table} ORDER BY 1")]
            for table in kept_tables
        }

    before = await snapshot()
    job = await pool.fetchval(
        "SELECT job_id FROM timescaledb_information.jobs"
        " WHERE proc_name = 'policy_retention' AND hypertable_name = 'waste_readings'"
    )
    await pool.execute(f"CALL run_job({int(job)})")
    assert await history(pool, container) == [(recent, 20.0)]
    assert await snapshot() == before


HOURLY_FROM_RAW = """
SELECT container_id, time_bucket(INTERVAL '1 hour', ts) AS bucket, avg(fill_pct), max(fill_pct),
       count(*)
FROM waste_readings GROUP BY 1, 2 ORDER BY 1, 2
"""
HOURLY_AGGREGATE = """
SELECT container_id, bucket, (fill_sum / readings)::float8, max_fill_pct, readings
FROM waste_fill_hourly ORDER BY 1, 2
"""


async def test_a_reading_days_late_reaches_the_hourly_aggregate(
    pool: asyncpg.Pool, fleet: Fleet
) -> None:
    """After the refresh job, the hourly aggregate equals the raw readings' aggregation, even
    for a reading five days late into a bucket already materialised."""
    container = fleet.containers[0]
    six_days_ago = (NOW - timedelta(days=6)).replace(minute=0, second=0)
    # A recent reading moves the aggregate's watermark past the old hour once materialised:
    # from then on only materialised data answers for that hour.
    first = [waste(container, six_days_ago + timedelta(minutes=10), 40.0)]
    first.append(waste(container, NOW - timedelta(hours=3), 50.0))
    await store_batch(pool, first, [])
    job = await pool.fetchval(
        "SELECT job_id FROM timescaledb_information.jobs"
        " WHERE proc_name = 'policy_refresh_continuous_aggregate'"
        " AND hypertable_name = 'waste_fill_hourly'"
    )
    await pool.execute(f"CALL run_job({int(job)})")
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM waste_fill_hourly WHERE bucket < $1", NOW - timedelta(hours=2)
        )
        == 2
    )
    # Five days later, a reading for that same hour arrives.
    await store_batch(pool, [waste(container, six_days_ago + timedelta(minutes=40), 80.0)], [])
    await pool.execute(f"CALL run_job({int(job)})")
    expected = [tuple(r) for r in await pool.fetch(HOURLY_FROM_RAW)]
    assert [tuple(r) for r in await pool.fetch(HOURLY_AGGREGATE)] == expected
    assert (expected[0][2], expected[0][4]) == (60.0, 2)
