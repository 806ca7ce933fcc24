"""Storage: bytes per stored reading on TimescaleDB (before and after compression) and on plain
PostgreSQL, and the ingest drain rate on each, in the same run.

A fleet of 2,000 containers and 5,000 spots reports into a database of its own on each cluster,
generated straight into the reading tables by SQL (``generate_series``, not through MQTT), one
day per statement in time order, as ingestion would write it. The readings follow the city
simulator's models (``simulators/city.py``), because compression depends on how smooth the
values are:

- a container reports every hour, at its own minute (plus up to 2 s of jitter): its fill rises
  along the day's rhythm (fastest in the evening) at its own rate, 12-60 % a day (a few busy
  sites two to three times faster), is emptied by the zone's night round to 0-5 %, and is read
  with the sensor's noise (1.5 % standard deviation), clipped to 0-100, in 0.1 %; the battery
  drains 0.3-1 % a day; the temperature follows the day (18 +- 7 degC, 0.7 noise), in 0.1;
- a spot reports on each change, 4-20 times a day (its own rate, mean 12) between 06:00 and
  24:00, occupied and free in turn; the battery loses 0.002 % per uplink, in 0.1 %;
- ``received_at`` is the reading's time plus 0.3-3 s, to the microsecond.

The window is whole weeks ending at the last chunk boundary before now, so that every 7-day
chunk is full: a chunk holds the same rows whether the history is 4 weeks or 52 long, so the
bytes per reading measured on a few full weeks are those of a year (the indexes are per chunk on
TimescaleDB; on plain PostgreSQL one B-tree grows with the table, by the same bytes per entry).
The default is 2 weeks (``--storage-weeks``; 1 with ``--quick``; 52 is the year itself);
the summary gives the readings of a full year and the bytes they would take.

On TimescaleDB the sizes are ``hypertable_detailed_size`` (table, indexes, TOAST: every chunk)
after ``VACUUM ANALYZE``, then again after ``compress_chunk`` on every chunk; the continuous
aggregates are refreshed and their size given apart. Plain PostgreSQL has no compression of its
own (TOAST compresses single values over about 2 kB; a reading is a few dozen bytes): its
``pg_total_relation_size`` is reported as is. The policy jobs of the TimescaleDB database are
paused first, so that no scheduled compression or refresh runs during the measurement.

The drain is ``bench/drain.py``'s: one ``citytel ingest`` worker drains the same backlog into
each store's database (the same fleet imported in both), in ABBA order when ``rounds`` is 2.

    python -m bench --only storage [--storage-weeks 52]
"""

from __future__ import annotations

import logging
import statistics
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from bench import drain
from bench.database import connect, import_fleet
from bench.load import Workload
from bench.services import PgCluster, Services, Store

log = logging.getLogger("bench")

CONTAINERS = 2_000
SPOTS = 5_000
_WEEK = timedelta(days=7)
_TABLES = ("waste_readings", "parking_readings")

# Each container's daily fill rate: by waste kind (glass, recyclable, organic, mixed), times its
# own factor, busy sites (8 in 100) two to three times faster; its night round's local hour; its
# minute of the hour; its battery.
_CONTAINER_MODELS = sql.SQL("""
CREATE TEMP TABLE bench_containers AS
SELECT 'CAS-WC-' || lpad(n::text, 5, '0') AS id,
       (CASE n % 10 WHEN 0 THEN 12 WHEN 1 THEN 30 WHEN 2 THEN 60 ELSE 55 END)
         * (0.7 + 0.6 * random())
         * (CASE WHEN random() < 0.08 THEN 2 + random() ELSE 1 END) AS daily_pct,
       21 + (n % 6) * 0.75 + 1.5 * random() AS round_h,
       3590 * random() AS minute_s,
       55 + 45 * random() AS battery0,
       (0.3 + 0.7 * random()) / 24 AS drain_per_h
FROM generate_series(1, {count}) n
""")

_SPOT_MODELS = sql.SQL("""
CREATE TEMP TABLE bench_spots AS
SELECT 'CAS-PS-' || lpad(n::text, 5, '0') AS id,
       2 * (2 + floor(9 * random()))::int AS changes_per_day,
       (random() < 0.5)::int AS occupied_at_night,
       60 + 40 * random() AS battery0
FROM generate_series(1, {count}) n
""")

# One day of hourly readings. Hours are local (UTC+1, as the simulator's); ``since_h`` is the
# time since the container's last night round, whose cycle number seeds the level it was emptied
# to. The fill grows by the integral of 1 + 0.8 cos(w (h - 19)) (the evening peak) times the
# daily rate / 24, capped at 130 (bags beside the container); the sensor clips at 100.
_WASTE_DAY = """
INSERT INTO waste_readings (container_id, ts, fill_pct, battery_pct, temperature_c, received_at)
SELECT id, ts,
       round(least(100, greatest(0, fill + 1.5 * gauss1))::numeric, 1)::float8,
       round(greatest(1, battery0 - drain_per_h * age_h)::numeric, 1)::float8,
       round((18 + 7 * cos(w * (local_h - 15)) + 0.7 * gauss2)::numeric, 1)::float8,
       ts + make_interval(secs => 0.3 + 2.7 * random())
FROM (
    SELECT c.id, t.ts, c.battery0, c.drain_per_h, k.local_h, k.w,
           extract(epoch FROM t.ts - %(start)s::timestamptz) / 3600 AS age_h,
           least(130, (hashint8(hashtext(c.id)::int8 * 100003 + k.cycle::int8)::int8
                       + 2147483648) %% 500 / 100.0
               + c.daily_pct / 24 * (k.since_h + 0.8 / k.w
                   * (sin(k.w * (k.local_h - 19)) - sin(k.w * (k.local_h - k.since_h - 19)))))
             AS fill,
           sqrt(-2 * ln(1 - random())) * cos(2 * pi() * random()) AS gauss1,
           sqrt(-2 * ln(1 - random())) * cos(2 * pi() * random()) AS gauss2
    FROM bench_containers c
    CROSS JOIN generate_series(%(day)s::timestamptz, %(day)s::timestamptz + INTERVAL '23 hours',
                               INTERVAL '1 hour') h
    CROSS JOIN LATERAL (
        SELECT h + make_interval(secs => c.minute_s + 2 * random()) AS ts) t
    CROSS JOIN LATERAL (
        SELECT l.local_h, 2 * pi() / 24 AS w,
               floor((l.local_h - c.round_h) / 24) AS cycle,
               (l.local_h - c.round_h) - 24 * floor((l.local_h - c.round_h) / 24) AS since_h
        FROM (SELECT extract(epoch FROM t.ts) / 3600 + 1 AS local_h) l) k
) r
ORDER BY ts
"""

# One day of parking changes: a spot's changes fall one in each equal slice of 06:00-24:00, at a
# random moment of its slice, occupied and free in turn (half the spots are taken overnight).
_PARKING_DAY = """
INSERT INTO parking_readings (spot_id, ts, occupied, battery_pct, received_at)
SELECT id, ts, occupied, battery, ts + make_interval(secs => 0.3 + 2.7 * random())
FROM (
    SELECT s.id,
           %(day)s::timestamptz + INTERVAL '6 hours'
             + (i + random()) * (INTERVAL '18 hours' / s.changes_per_day) AS ts,
           (i + s.occupied_at_night) %% 2 = 1 AS occupied,
           round(greatest(1, s.battery0
               - 0.002 * (%(day_index)s * s.changes_per_day + i))::numeric, 1)::float8 AS battery
    FROM bench_spots s
    CROSS JOIN LATERAL generate_series(0, s.changes_per_day - 1) i
) r
ORDER BY ts
"""

_HYPERTABLE_SIZE = (
    "SELECT table_bytes, index_bytes, toast_bytes, total_bytes"
    " FROM hypertable_detailed_size(%s::regclass)"
)
_TABLE_SIZE = (
    "SELECT pg_relation_size(%(t)s::regclass) + pg_relation_size(%(t)s::regclass, 'fsm')"
    " + pg_relation_size(%(t)s::regclass, 'vm'),"
    " pg_indexes_size(%(t)s::regclass),"
    " pg_table_size(%(t)s::regclass) - pg_relation_size(%(t)s::regclass)"
    " - pg_relation_size(%(t)s::regclass, 'fsm') - pg_relation_size(%(t)s::regclass, 'vm'),"
    " pg_total_relation_size(%(t)s::regclass)"
)
_AGGREGATES = (
    "SELECT view_name, hypertable_size(format('%I.%I', materialization_hypertable_schema,"
    " materialization_hypertable_name)::regclass)"
    " FROM timescaledb_information.continuous_aggregates ORDER BY view_name"
)
_CHUNKS = "SELECT count(*) FROM show_chunks(%s::regclass)"
_COMPRESS = "SELECT count(compress_chunk(c)) FROM show_chunks(%s::regclass) c"
# TimescaleDB's own account of the compressed chunks, as a check on the sizes measured.
_COMPRESSION_STATS = (
    "SELECT total_chunks, number_compressed_chunks, before_compression_total_bytes,"
    " after_compression_total_bytes FROM hypertable_compression_stats(%s::regclass)"
)
_PAUSE_JOBS = (
    "SELECT alter_job(job_id, scheduled => false) FROM timescaledb_information.jobs"
    " WHERE job_id >= 1000"  # the policies; TimescaleDB's own jobs have ids under 1000
)


def window(weeks: int, now: datetime | None = None) -> tuple[datetime, datetime]:
    """``weeks`` whole weeks ending at the last 7-day chunk boundary before ``now``.

    TimescaleDB cuts chunks at multiples of the chunk interval since the Unix epoch.
    """
    now = now or datetime.now(UTC)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    end = epoch + (now - epoch) // _WEEK * _WEEK
    return end - weeks * _WEEK, end


def readings_per_year() -> dict[str, int]:
    """What the generated fleet reports in 365 days (spots: mean 12 changes a day)."""
    return {"waste": CONTAINERS * 24 * 365, "parking": SPOTS * 12 * 365}


def _sizes(
    conn: psycopg.Connection[tuple[Any, ...]], table: str, *, hypertable: bool
) -> dict[str, int]:
    if hypertable:
        row = conn.execute(_HYPERTABLE_SIZE, (table,)).fetchone()
    else:
        row = conn.execute(_TABLE_SIZE, {"t": table}).fetchone()
    assert row is not None  # noqa: S101 - an aggregate function returns a row
    names = ("table_bytes", "index_bytes", "toast_bytes", "total_bytes")
    return {name: int(value or 0) for name, value in zip(names, row, strict=True)}


def _per_reading(sizes: dict[str, dict[str, int]], rows: dict[str, int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for table, size in sizes.items():
        out[table] = {**size, "bytes_per_reading": round(size["total_bytes"] / rows[table], 1)}
    total = sum(size["total_bytes"] for size in sizes.values())
    out["all"] = {"total_bytes": total, "bytes_per_reading": round(total / sum(rows.values()), 1)}
    return out


def _generate(
    conn: psycopg.Connection[tuple[Any, ...]], start: datetime, weeks: int
) -> tuple[dict[str, int], float]:
    conn.execute("SELECT setseed(0.2026)")
    # A utility statement (CREATE TABLE AS) takes no parameters: the counts are literals.
    conn.execute(_CONTAINER_MODELS.format(count=sql.Literal(CONTAINERS)))
    conn.execute(_SPOT_MODELS.format(count=sql.Literal(SPOTS)))
    conn.execute("SET work_mem = '256MB'")
    started = time.perf_counter()
    for index in range(weeks * 7):
        day = start + timedelta(days=index)
        params = {"start": start, "day": day, "day_index": index}
        conn.execute(_WASTE_DAY, params)
        conn.execute(_PARKING_DAY, params)
        if index % 7 == 6:
            log.info("storage: week %d of %d generated", index // 7 + 1, weeks)
    seconds = time.perf_counter() - started
    conn.execute("VACUUM ANALYZE waste_readings")
    conn.execute("VACUUM ANALYZE parking_readings")
    rows = {}
    for table in _TABLES:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()  # noqa: S608 - ours
        rows[table.removesuffix("_readings")] = int(row[0]) if row else 0
    return rows, seconds


def _footprint_timescaledb(url: str, start: datetime, weeks: int) -> dict[str, Any]:
    with connect(url) as conn:
        paused = len(conn.execute(_PAUSE_JOBS).fetchall())
        rows, generate_s = _generate(conn, start, weeks)
        by_table = {t: rows[t.removesuffix("_readings")] for t in _TABLES}
        chunks = {}
        for table in _TABLES:
            found = conn.execute(
                "SELECT count(*) FROM show_chunks(%s::regclass)", (table,)
            ).fetchone()
            chunks[table] = int(found[0]) if found else 0
        before = {t: _sizes(conn, t, hypertable=True) for t in _TABLES}
        started = time.perf_counter()
        for view in ("waste_fill_hourly", "parking_occupancy_hourly"):
            conn.execute(f"CALL refresh_continuous_aggregate('{view}', NULL, NULL)")
        for view in ("waste_fill_daily", "parking_occupancy_daily"):
            conn.execute(f"CALL refresh_continuous_aggregate('{view}', NULL, NULL)")
        refresh_s = time.perf_counter() - started
        aggregates = {str(v): int(b) for v, b in conn.execute(_AGGREGATES).fetchall()}
        started = time.perf_counter()
        for table in _TABLES:
            conn.execute(
                "SELECT count(compress_chunk(c)) FROM show_chunks(%s::regclass) c", (table,)
            )
        compress_s = time.perf_counter() - started
        after = {t: _sizes(conn, t, hypertable=True) for t in _TABLES}
        stats = {}
        for table in _TABLES:
            row = conn.execute(_COMPRESSION_STATS, (table,)).fetchone()
            names = ("chunks", "compressed_chunks", "before_bytes", "after_bytes")
            stats[table] = dict(zip(names, row or (), strict=False))
    before_total = sum(s["total_bytes"] for s in before.values())
    after_total = sum(s["total_bytes"] for s in after.values())
    return {
        "readings": rows,
        "policy_jobs_paused": paused,
        "chunks": chunks,
        "generate_s": round(generate_s, 1),
        "generate_rate": round(sum(rows.values()) / generate_s),
        "uncompressed": _per_reading(before, by_table),
        "compressed": _per_reading(after, by_table),
        "compress_s": round(compress_s, 1),
        "compression_stats": stats,
        "compression_ratio": round(before_total / after_total, 1),
        "saved_pct": round(100 * (1 - after_total / before_total), 1),
        "aggregates": {
            "bytes": aggregates,
            "total_bytes": sum(aggregates.values()),
            "bytes_per_reading": round(sum(aggregates.values()) / sum(rows.values()), 1),
            "refresh_s": round(refresh_s, 1),
        },
    }


def _footprint_postgres(url: str, start: datetime, weeks: int) -> dict[str, Any]:
    with connect(url) as conn:
        rows, generate_s = _generate(conn, start, weeks)
        sizes = {t: _sizes(conn, t, hypertable=False) for t in _TABLES}
    return {
        "readings": rows,
        "generate_s": round(generate_s, 1),
        "generate_rate": round(sum(rows.values()) / generate_s),
        "stored": _per_reading(sizes, {t: rows[t.removesuffix("_readings")] for t in _TABLES}),
        "compression": "none: plain PostgreSQL does not compress rows (TOAST only values > ~2 kB)",
    }


def footprint(clusters: list[PgCluster], weeks: int) -> dict[str, Any]:
    """Bytes per reading on each cluster's store, the same readings generated into both."""
    start, end = window(weeks)
    per_year = readings_per_year()
    result: dict[str, Any] = {
        "generated": {
            "weeks": weeks,
            "from": start.isoformat(),
            "to": end.isoformat(),
            "containers": CONTAINERS,
            "spots": SPOTS,
            "reporting": "containers hourly; spots on each change, 4-20 a day (mean 12)",
        },
        "year": {"readings": per_year, "weeks_generated_over_year": round(weeks * 7 / 365, 3)},
    }
    year_readings = sum(per_year.values())
    for cluster in clusters:
        url = cluster.create_database("citytel_storage")
        log.info("storage: %d weeks of readings into %s", weeks, cluster.store)
        if cluster.store == "timescaledb":
            found = _footprint_timescaledb(url, start, weeks)
            for state in ("uncompressed", "compressed"):
                per_reading = found[state]["all"]["bytes_per_reading"]
                found[state]["year_bytes"] = round(per_reading * year_readings)
        else:
            found = _footprint_postgres(url, start, weeks)
            found["stored"]["year_bytes"] = round(
                found["stored"]["all"]["bytes_per_reading"] * year_readings
            )
        result[cluster.store] = found
    timescale, plain = result.get("timescaledb"), result.get("postgres")
    if timescale and plain:
        plain_bpr = plain["stored"]["all"]["bytes_per_reading"]
        result["ratios"] = {
            "postgres_over_timescaledb_compressed": round(
                plain_bpr / timescale["compressed"]["all"]["bytes_per_reading"], 1
            ),
            "postgres_over_timescaledb_uncompressed": round(
                plain_bpr / timescale["uncompressed"]["all"]["bytes_per_reading"], 2
            ),
        }
    return result


def drains(
    services: Services,
    workload: Workload,
    stores: list[Store],
    *,
    count: int,
    rounds: int,
    publishers: int,
) -> dict[str, Any]:
    """The one-worker drain of ``count`` readings into each store, ``rounds`` times (ABBA)."""
    order = stores if rounds == 1 else [*stores, *reversed(stores)]
    runs: dict[str, list[dict[str, Any]]] = {store.name: [] for store in stores}
    for index, store in enumerate(order):
        log.info("storage: drain of %d readings into %s", count, store.name)
        runs[store.name].append(
            drain.drain_citytel(
                services,
                workload,
                count=count,
                publishers=publishers,
                workers=1,
                label=f"store{index}",
                store=store,
            )
        )
    result: dict[str, Any] = {"messages": count, "workers": 1}
    for name, found in runs.items():
        result[name] = {
            "rate": round(statistics.mean(r["rate"] for r in found)),
            "rates": [r["rate"] for r in found],
            "complete": all(r["complete"] for r in found),
            "dead_letters": sum(r["dead_letters"] for r in found),
            "cores_busy_postgres": round(
                statistics.mean(r["cores_busy"]["postgres"] for r in found), 2
            ),
            "cores_busy_ingest": round(
                statistics.mean(r["cores_busy"]["ingest"] for r in found), 2
            ),
        }
    if "timescaledb" in runs and "postgres" in runs:
        result["timescaledb_over_postgres"] = round(
            result["timescaledb"]["rate"] / result["postgres"]["rate"], 3
        )
    return result


def _stores(services: Services, workload: Workload) -> list[Store]:
    stores = [Store(services.cluster, services.database_url)]
    plain = services.plain_cluster()
    if plain is not services.cluster:
        url = plain.create_database("citytel")
        log.info("storage: importing the fleet into the plain-PostgreSQL cluster")
        import_fleet(url, workload.fleet_geojson, services.workdir)
        stores.append(Store(plain, url))
    return stores


def run(
    services: Services,
    workload: Workload,
    *,
    weeks: int,
    count: int,
    rounds: int,
    publishers: int,
) -> dict[str, Any]:
    """Bytes per reading and drain rate on TimescaleDB and plain PostgreSQL, in one run."""
    stores = _stores(services, workload)
    result = footprint([store.cluster for store in stores], weeks)
    result["drain"] = drains(
        services, workload, stores, count=count, rounds=rounds, publishers=publishers
    )
    _log_summary(result)
    return result


def _log_summary(result: dict[str, Any]) -> None:
    timescale, plain = result.get("timescaledb"), result.get("postgres")
    if timescale:
        log.info(
            "storage: TimescaleDB %.1f B/reading uncompressed, %.1f compressed (x%.1f, %.1f %%"
            " saved); aggregates %.1f B/reading",
            timescale["uncompressed"]["all"]["bytes_per_reading"],
            timescale["compressed"]["all"]["bytes_per_reading"],
            timescale["compression_ratio"],
            timescale["saved_pct"],
            timescale["aggregates"]["bytes_per_reading"],
        )
    if plain:
        log.info(
            "storage: plain PostgreSQL %.1f B/reading (no compression)",
            plain["stored"]["all"]["bytes_per_reading"],
        )
    drained = result["drain"]
    if "timescaledb_over_postgres" in drained:
        log.info(
            "storage: drain %d/s on TimescaleDB, %d/s on plain PostgreSQL (x%.3f)",
            drained["timescaledb"]["rate"],
            drained["postgres"]["rate"],
            drained["timescaledb_over_postgres"],
        )
