"""History per time bucket: the same answers from the continuous aggregates and the raw readings."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import httpx
import psycopg
import pytest

from citytel.config import Settings
from citytel.storage import queries
from citytel.storage.migrate import HISTORY_AGGREGATES, migrate
from tests.integration.conftest import Fleet
from tests.integration.services import running_cluster, with_database

pytestmark = pytest.mark.integration

# A UTC midnight ten days ago: every reading is well inside the retention period.
DAY = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=10)

INSERT_WASTE = """
INSERT INTO waste_readings (container_id, ts, fill_pct, battery_pct, temperature_c, received_at)
VALUES ($1, $2, $3, $4, $5, now())
"""
INSERT_PARKING = """
INSERT INTO parking_readings (spot_id, ts, occupied, received_at) VALUES ($1, $2, $3, now())
"""


async def refresh(pool: asyncpg.Pool, store: str) -> None:
    """Materialise every aggregate over all time (TimescaleDB), as the refresh jobs would."""
    if store != "timescaledb":
        return
    for view in HISTORY_AGGREGATES:
        await pool.execute(f"CALL refresh_continuous_aggregate('{view}', NULL, NULL)")


def at(days: int, hours: int, minutes: int = 0) -> datetime:
    return DAY + timedelta(days=days, hours=hours, minutes=minutes)


def iso(ts: datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")


async def buckets(api: httpx.AsyncClient, path: str, **params: Any) -> list[dict[str, Any]]:
    response = await api.get(path, params=params)
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["buckets"]
    return found


async def test_container_history_per_hour_and_day(
    pool: asyncpg.Pool, fleet: Fleet, api: httpx.AsyncClient, store: str
) -> None:
    """Hourly, daily and 90-minute buckets of a container equal the hand-computed means, on
    either store (aggregates for the first two on TimescaleDB, raw readings otherwise)."""
    container = fleet.containers[0]
    await pool.executemany(
        INSERT_WASTE,
        [
            (container, at(0, 10, 10), 20.0, 90.0, None),
            (container, at(0, 10, 40), 30.0, None, 21.5),
            (container, at(0, 11, 20), 50.0, 80.0, 22.5),
            (container, at(1, 9), 70.0, None, None),
        ],
    )
    await refresh(pool, store)
    path = f"/v1/containers/{container}/readings"
    hourly = await buckets(
        api, path, **{"from": iso(at(0, 0)), "to": iso(at(2, 0)), "bucket": "1h"}
    )
    # Without a battery or temperature reading in the bucket, those fields are left out.
    assert hourly == [
        {
            "ts": iso(at(0, 10)),
            "fill_pct": 25.0,
            "min_fill_pct": 20.0,
            "max_fill_pct": 30.0,
            "battery_pct": 90.0,
            "temperature_c": 21.5,
            "readings": 2,
        },
        {
            "ts": iso(at(0, 11)),
            "fill_pct": 50.0,
            "min_fill_pct": 50.0,
            "max_fill_pct": 50.0,
            "battery_pct": 80.0,
            "temperature_c": 22.5,
            "readings": 1,
        },
        {
            "ts": iso(at(1, 9)),
            "fill_pct": 70.0,
            "min_fill_pct": 70.0,
            "max_fill_pct": 70.0,
            "readings": 1,
        },
    ]
    daily = await buckets(api, path, **{"from": iso(at(0, 0)), "to": iso(at(2, 0)), "bucket": "1d"})
    assert [
        (b["ts"], b["fill_pct"], b.get("battery_pct"), b.get("temperature_c")) for b in daily
    ] == [
        (iso(at(0, 0)), 100 / 3, 85.0, 22.0),
        (iso(at(1, 0)), 70.0, None, None),
    ]
    # 90 minutes is no whole number of hours: the raw readings answer.
    odd = await buckets(api, path, **{"from": iso(at(0, 9)), "to": iso(at(0, 12)), "bucket": "90m"})
    assert [(b["ts"], b["fill_pct"], b["readings"]) for b in odd] == [
        (iso(at(0, 9)), 20.0, 1),
        (iso(at(0, 10, 30)), 40.0, 2),
    ]


async def test_zone_occupancy_per_hour_and_day(
    pool: asyncpg.Pool, fleet: Fleet, api: httpx.AsyncClient, store: str
) -> None:
    """A zone's occupied ratio is each reporting spot's share of occupied readings, averaged over
    the spots; spots of other zones do not count. Hand-computed, on either store."""
    one, two, elsewhere = fleet.spots[0], fleet.spots[1], fleet.spots[25]
    await pool.executemany(
        INSERT_PARKING,
        [
            (one, at(0, 8, 5), True),
            (one, at(0, 8, 30), False),
            (one, at(0, 8, 50), True),
            (two, at(0, 8, 15), True),
            (two, at(0, 9, 15), False),
            (elsewhere, at(0, 8, 10), False),
        ],
    )
    await refresh(pool, store)
    path = "/v1/zones/sidi-belyout/occupancy"
    # 08:00: spot one said occupied 2 times of 3, spot two 1 of 1: (2/3 + 1) / 2 = 5/6; the day:
    # (2/3 + 1/2) / 2 = 7/12. Sums are exact, so the ratio is the correctly rounded fraction.
    hourly = await buckets(
        api, path, **{"from": iso(at(0, 0)), "to": iso(at(1, 0)), "bucket": "1h"}
    )
    assert hourly == [
        {
            "ts": iso(at(0, 8)),
            "occupied_ratio": 5 / 6,
            "spots_reporting": 2,
            "readings": 4,
            "arrivals": 1,  # spot one at 08:50 (test_zone_reports.py covers turnover)
            "turnover": 1 / 20,
        },
        {
            "ts": iso(at(0, 9)),
            "occupied_ratio": 0.0,
            "spots_reporting": 1,
            "readings": 1,
            "arrivals": 0,
            "turnover": 0.0,
        },
    ]
    daily = await buckets(api, path, **{"from": iso(at(0, 0)), "to": iso(at(1, 0)), "bucket": "1d"})
    assert daily == [
        {
            "ts": iso(at(0, 0)),
            "occupied_ratio": 7 / 12,
            "spots_reporting": 2,
            "readings": 5,
            "arrivals": 1,
            "turnover": 1 / 20,
        }
    ]
    missing = await api.get("/v1/zones/nowhere/occupancy")
    assert missing.status_code == 404


async def test_zone_typical_week(
    pool: asyncpg.Pool, fleet: Fleet, api: httpx.AsyncClient, store: str
) -> None:
    """The typical week averages each spot's occupied share over the same hour of the last
    weeks, in the time zone asked for. Hand-computed, on either store."""
    one, two = fleet.spots[0], fleet.spots[1]
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=2, hours=3)
    week = timedelta(weeks=1)
    await pool.executemany(
        INSERT_PARKING,
        [
            (one, hour + timedelta(minutes=5), True),
            (one, hour + timedelta(minutes=35), False),
            (two, hour + timedelta(minutes=10), True),
            (one, hour - week + timedelta(minutes=5), True),
        ],
    )
    await refresh(pool, store)
    path = "/v1/zones/sidi-belyout/occupancy/week"
    for tz, weeks, ratio, spot_hours in (
        ("UTC", 4, 5 / 6, 3),  # (1/2 + 1 + 1) / 3
        ("Etc/GMT-2", 4, 5 / 6, 3),
        ("UTC", 1, 3 / 4, 2),  # (1/2 + 1) / 2, a week ago left out
    ):
        response = await api.get(path, params={"weeks": weeks, "tz": tz})
        assert response.status_code == 200, response.text
        local = hour.astimezone(ZoneInfo(tz))
        assert response.json()["hours"] == [
            {
                "day_of_week": local.isoweekday(),
                "hour": local.hour,
                "occupied_ratio": ratio,
                "spot_hours": spot_hours,
            }
        ]
    refused = await api.get(path, params={"tz": "Mars/Olympus"})
    assert refused.status_code == 422
    assert "IANA time zone" in refused.text


def random_history(
    fleet: Fleet, *, seed: int, start: datetime, days: int
) -> tuple[list[Any], list[Any]]:
    """Readings at random times for five containers and ten spots over ``days`` days."""
    rng = random.Random(seed)
    span = int(timedelta(days=days).total_seconds())
    waste = {
        (c, start + timedelta(seconds=rng.randrange(span)))
        for c in fleet.containers[:5]
        for _ in range(40 * days)
    }
    parking = {
        (s, start + timedelta(seconds=rng.randrange(span)))
        for s in fleet.spots[:10]
        for _ in range(30 * days)
    }
    return (
        [
            (
                c,
                ts,
                round(rng.uniform(0, 100), 3),
                rng.choice([None, rng.uniform(5, 100)]),
                rng.choice([None, rng.uniform(-5, 45)]),
            )
            for c, ts in sorted(waste)
        ],
        [(s, ts, rng.random() < 0.6) for s, ts in sorted(parking)],
    )


TURNOVER = ("arrivals", "turnover")


def as_served(row: asyncpg.Record) -> dict[str, Any]:
    """A row as the API serves it: time in RFC 3339, empty fields left out."""
    return {k: iso(v) if k == "ts" else v for k, v in row.items() if v is not None}


async def answers_from_raw_and_api(
    pool: asyncpg.Pool, api: httpx.AsyncClient, fleet: Fleet, start: datetime, end: datetime
) -> tuple[list[Any], list[Any]]:
    """Every container's and zone's buckets as the API gives them, and from the raw readings."""
    raw, served = [], []
    for bucket, step in (
        ("1h", timedelta(hours=1)),
        ("3h", timedelta(hours=3)),
        ("1d", timedelta(days=1)),
        ("7d", timedelta(days=7)),
    ):
        params = {"from": iso(start), "to": iso(end), "bucket": bucket}
        for container in fleet.containers[:5]:
            rows = await pool.fetch(queries.CONTAINER_BUCKETS["raw"], container, start, end, step)
            raw.append([as_served(r) for r in rows])
            served.append(await buckets(api, f"/v1/containers/{container}/readings", **params))
        rows = await pool.fetch(queries.ZONE_OCCUPANCY["raw"], "sidi-belyout", start, end, step)
        raw.append([as_served(r) for r in rows])
        # Arrivals come from the raw readings either way (test_zone_reports.py).
        zone = await buckets(api, "/v1/zones/sidi-belyout/occupancy", **params)
        served.append([{k: v for k, v in b.items() if k not in TURNOVER} for b in zone])
    return raw, served


@pytest.fixture
def _on_timescaledb(store: str) -> None:
    if store != "timescaledb":
        pytest.skip("the aggregates exist on TimescaleDB only (the store here is plain PostgreSQL)")


@pytest.mark.usefixtures("_on_timescaledb")
async def test_aggregates_answer_as_the_raw_readings_even_for_late_readings(
    pool: asyncpg.Pool, fleet: Fleet, api: httpx.AsyncClient
) -> None:
    """On a random history, then after readings days late into materialised buckets and the
    refresh jobs, every hourly, 3-hour, daily and weekly answer equals the raw readings' one."""
    start, end = DAY - timedelta(days=14), DAY + timedelta(days=7)
    waste, parking = random_history(fleet, seed=12, start=start, days=21)
    await pool.executemany(INSERT_WASTE, waste)
    await pool.executemany(INSERT_PARKING, parking)
    await refresh(pool, "timescaledb")
    raw, served = await answers_from_raw_and_api(pool, api, fleet, start, end)
    assert served == raw
    assert sum(len(b) for b in served) > 1000

    late_waste, late_parking = random_history(fleet, seed=13, start=start, days=3)
    await pool.executemany(INSERT_WASTE + " ON CONFLICT DO NOTHING", late_waste)
    await pool.executemany(INSERT_PARKING + " ON CONFLICT DO NOTHING", late_parking)
    # Until a refresh, the materialised buckets do not know of them: proof that the API reads
    # the aggregates, and the delay docs/operations.md states (at most the refresh interval).
    raw, served = await answers_from_raw_and_api(pool, api, fleet, start, end)
    assert served != raw
    jobs = await pool.fetch(
        "SELECT job_id FROM timescaledb_information.jobs"
        " WHERE proc_name = 'policy_refresh_continuous_aggregate'"
    )
    assert len(jobs) == len(HISTORY_AGGREGATES)
    for job in jobs:
        await pool.execute(f"CALL run_job({int(job['job_id'])})")
    raw, served = await answers_from_raw_and_api(pool, api, fleet, start, end)
    assert served == raw


@pytest.mark.usefixtures("_on_timescaledb")
async def test_aggregates_outlive_the_raw_readings_until_their_own_retention(
    pool: asyncpg.Pool, database_url: str, fleet: Fleet, api: httpx.AsyncClient
) -> None:
    """The raw retention job drops old readings but not their daily history; the aggregates'
    retention job (CITYTEL_TIMESCALE_AGGREGATE_RETENTION) drops that later."""
    container = fleet.containers[0]
    old = DAY - timedelta(days=420)
    await pool.executemany(
        INSERT_WASTE,
        [(container, old + timedelta(hours=h), 10.0 + h, None, None) for h in range(3)],
    )
    await refresh(pool, "timescaledb")
    path = f"/v1/containers/{container}/readings"
    params = {"from": iso(old), "to": iso(old + timedelta(days=1)), "bucket": "1d"}
    expected = [(iso(old), 11.0, 3)]

    async def run_jobs(proc: str, views: tuple[str, ...]) -> None:
        for row in await pool.fetch(
            "SELECT job_id FROM timescaledb_information.jobs"
            " WHERE proc_name = $1 AND hypertable_name = ANY($2::text[])",
            proc,
            list(views),
        ):
            await pool.execute(f"CALL run_job({int(row['job_id'])})")

    await run_jobs("policy_retention", ("waste_readings",))
    assert await pool.fetchval("SELECT count(*) FROM waste_readings") == 0
    daily = await buckets(api, path, **params)
    assert [(b["ts"], b["fill_pct"], b["readings"]) for b in daily] == expected
    # The refresh jobs look back over the raw retention only, so they leave that history be.
    await run_jobs("policy_refresh_continuous_aggregate", HISTORY_AGGREGATES)
    daily = await buckets(api, path, **params)
    assert [(b["ts"], b["fill_pct"], b["readings"]) for b in daily] == expected

    migrate(Settings(timescale_aggregate_retention="401 days"), database_url=database_url)
    await run_jobs("policy_retention", HISTORY_AGGREGATES)
    assert await buckets(api, path, **params) == []


READINGS_SUMMARY = """
SELECT (SELECT count(*) FROM waste_readings), (SELECT count(*) FROM parking_readings),
       (SELECT sum(fill_pct::numeric) FROM waste_readings)
"""


def materialised_equals_raw(url: str) -> None:
    """Each aggregate's materialised rows (real-time union off) equal the raw aggregation."""
    checks = {
        "waste_fill_hourly": ("waste_readings", "container_id", "1 hour"),
        "waste_fill_daily": ("waste_readings", "container_id", "1 day"),
        "parking_occupancy_hourly": ("parking_readings", "spot_id", "1 hour"),
        "parking_occupancy_daily": ("parking_readings", "spot_id", "1 day"),
    }
    with psycopg.connect(url, autocommit=True) as conn:
        for view, (table, device, size) in checks.items():
            conn.execute(
                f"ALTER MATERIALIZED VIEW {view} SET (timescaledb.materialized_only = true)"
            )
            counted = (
                "sum(occupied::int)" if table == "parking_readings" else "sum(fill_pct::numeric)"
            )
            from_raw = conn.execute(
                f"SELECT {device}, time_bucket(INTERVAL '{size}', ts) AS b, {counted}, count(*)"
                f" FROM {table} GROUP BY 1, 2 ORDER BY 1, 2"
            ).fetchall()
            summed = "occupied_readings" if table == "parking_readings" else "fill_sum"
            materialised = conn.execute(
                f"SELECT {device}, bucket, {summed}, readings FROM {view} ORDER BY 1, 2"
            ).fetchall()
            conn.execute(
                f"ALTER MATERIALIZED VIEW {view} SET (timescaledb.materialized_only = false)"
            )
            assert materialised == from_raw, view
            assert len(materialised) > 100


@pytest.mark.usefixtures("_on_timescaledb")
def test_a_plain_database_with_history_upgrades_in_place() -> None:
    """Migrated on plain PostgreSQL with a history, then TimescaleDB is installed: `citytel
    migrate` turns the tables into hypertables, every reading stays, and the aggregates are
    materialised from that history (none of the 0003 bug's missing buckets)."""
    with running_cluster(timescaledb=False) as cluster:
        admin = with_database(cluster.url, "postgres")
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("CREATE DATABASE citytel_upgrade")
        url = with_database(cluster.url, "citytel_upgrade")
        plain = migrate(Settings(), database_url=url)
        assert not plain.timescaledb
        assert plain.skipped == ["0003_timescaledb", "0009_history_aggregates"]
        rng = random.Random(7)
        start = DAY - timedelta(days=30)
        with psycopg.connect(url) as conn, conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO waste_readings (container_id, ts, fill_pct, received_at)"
                " VALUES (%s, %s, %s, now()) ON CONFLICT DO NOTHING",
                [
                    (
                        f"C-{i}",
                        start + timedelta(seconds=rng.randrange(30 * 86400)),
                        rng.uniform(0, 100),
                    )
                    for i in range(20)
                    for _ in range(300)
                ],
            )
            cursor.executemany(
                "INSERT INTO parking_readings (spot_id, ts, occupied, received_at)"
                " VALUES (%s, %s, %s, now()) ON CONFLICT DO NOTHING",
                [
                    (
                        f"S-{i}",
                        start + timedelta(seconds=rng.randrange(30 * 86400)),
                        rng.random() < 0.5,
                    )
                    for i in range(20)
                    for _ in range(300)
                ],
            )
            before = conn.execute(READINGS_SUMMARY).fetchone()

        cluster.stop()
        cluster.timescaledb = True
        cluster.start()
        upgraded = migrate(Settings(), database_url=url)
        assert upgraded.timescaledb
        assert upgraded.applied == ["0003_timescaledb", "0009_history_aggregates"]
        with psycopg.connect(url) as conn:
            after = conn.execute(READINGS_SUMMARY).fetchone()
            hypertables = conn.execute(
                "SELECT hypertable_name FROM timescaledb_information.hypertables"
                " WHERE hypertable_name IN ('waste_readings', 'parking_readings') ORDER BY 1"
            ).fetchall()
            # Nothing left in the plain parent tables: the rows moved into chunks.
            outside_chunks = conn.execute(
                "SELECT (SELECT count(*) FROM ONLY waste_readings)"
                " + (SELECT count(*) FROM ONLY parking_readings)"
            ).fetchone()
        assert before is not None
        assert before[0] > 5000
        assert after == before
        assert hypertables == [("parking_readings",), ("waste_readings",)]
        assert outside_chunks == (0,)
        materialised_equals_raw(url)
