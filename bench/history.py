"""History: the same questions answered from the continuous aggregates and from the raw readings.

A history is generated straight into the database (not through MQTT): one reading every 15
minutes for 90 days from 100 containers, and a parking zone of 300 spots reporting every 10
minutes for 30 days. The aggregates are then refreshed, and two questions are timed, each with
the very query the API runs (``citytel.storage.queries``) from the aggregate and from the raw
readings: a 90-day hourly history of one container, and a 30-day hourly occupancy of the zone.
Both answers are compared; the ratio of median times is printed. The same is done in the same
run on a plain-PostgreSQL cluster (no aggregates: only the raw times), and the plain store's
times are compared with TimescaleDB's.

    python -m bench --only history
"""

from __future__ import annotations

import asyncio
import statistics
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from bench.services import Services
from citytel.storage import queries
from citytel.storage.migrate import HISTORY_AGGREGATES

CONTAINERS = 100
SPOTS = 300
ZONE = "bench-history"
REPEATS = 15

_GENERATE = """
INSERT INTO waste_readings (container_id, ts, fill_pct, battery_pct, temperature_c, received_at)
SELECT 'BH-WC-' || c, t, (extract(epoch FROM t)::bigint / 900 * 7 + c) % 101, 80, 20, t
FROM generate_series(1, $1) c,
     generate_series($2::timestamptz - INTERVAL '90 days', $2 - INTERVAL '15 minutes',
                     INTERVAL '15 minutes') t;
"""
_GENERATE_SPOTS = """
INSERT INTO parking_spots (id, location, zone)
SELECT 'BH-PS-' || s, ST_SetSRID(ST_MakePoint(-7.6 + s * 1e-5, 33.57), 4326)::geography, $2
FROM generate_series(1, $1) s;
"""
_GENERATE_PARKING = """
INSERT INTO parking_readings (spot_id, ts, occupied, received_at)
SELECT 'BH-PS-' || s, t, (extract(epoch FROM t)::bigint / 600 + s) % 3 <> 0, t
FROM generate_series(1, $1) s,
     generate_series($2::timestamptz - INTERVAL '30 days', $2 - INTERVAL '10 minutes',
                     INTERVAL '10 minutes') t;
"""


async def _median_ms(conn: asyncpg.Connection, query: str, *args: Any) -> tuple[float, Any]:
    times, rows = [], None
    for _ in range(REPEATS):
        started = time.perf_counter()
        rows = await conn.fetch(query, *args)
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 2), rows


async def _run(url: str, end: datetime) -> dict[str, Any]:
    conn = await asyncpg.connect(url)
    try:
        started = time.perf_counter()
        await conn.execute(_GENERATE, CONTAINERS, end)
        await conn.execute(_GENERATE_SPOTS, SPOTS, ZONE)
        await conn.execute(_GENERATE_PARKING, SPOTS, end)
        await conn.execute("ANALYZE")
        generated_s = time.perf_counter() - started
        aggregates = bool(await conn.fetchval(queries.HAS_AGGREGATES))
        if aggregates:
            for view in HISTORY_AGGREGATES:
                await conn.execute(f"CALL refresh_continuous_aggregate('{view}', NULL, NULL)")
        questions = {
            "container_90_days_hourly": (
                queries.CONTAINER_BUCKETS,
                ("BH-WC-1", end - timedelta(days=90), end, timedelta(hours=1)),
            ),
            "zone_occupancy_30_days_hourly": (
                queries.ZONE_OCCUPANCY,
                (ZONE, end - timedelta(days=30), end, timedelta(hours=1)),
            ),
        }
        result: dict[str, Any] = {
            "readings": {
                "waste": await conn.fetchval("SELECT count(*) FROM waste_readings"),
                "parking": await conn.fetchval("SELECT count(*) FROM parking_readings"),
                "generated_s": round(generated_s, 1),
            },
            "store": "timescaledb" if aggregates else "postgres",
        }
        for name, (by_source, args) in questions.items():
            raw_ms, raw_rows = await _median_ms(conn, by_source["raw"], *args)
            answer = [tuple(r) for r in raw_rows]
            entry: dict[str, Any] = {"raw_ms": raw_ms, "buckets": len(raw_rows), "answer": answer}
            if aggregates:
                hourly_ms, hourly_rows = await _median_ms(conn, by_source["hourly"], *args)
                entry["aggregate_ms"] = hourly_ms
                entry["raw_over_aggregate"] = round(raw_ms / hourly_ms, 1)
                entry["same_answer"] = answer == [tuple(r) for r in hourly_rows]
            result[name] = entry
        return result
    finally:
        await conn.close()


def run(services: Services) -> dict[str, Any]:
    """On each store, generate the history in a database of its own and time the answers."""
    clusters = [services.cluster]
    second = services.plain_cluster()
    if second is not services.cluster:
        clusters.append(second)
    result: dict[str, Any] = {}
    # One end for both stores, so that both generate the same readings and can be compared.
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    for cluster in clusters:
        url = cluster.create_database("citytel_history")
        result[cluster.store] = asyncio.run(_run(url, end))
    timescale, plain = result.get("timescaledb"), result.get("postgres")
    if timescale and plain:
        result["postgres_over_timescaledb"] = {
            name: {
                "raw_over_raw": round(plain[name]["raw_ms"] / timescale[name]["raw_ms"], 2),
                "raw_over_aggregate": round(
                    plain[name]["raw_ms"] / timescale[name]["aggregate_ms"], 2
                ),
                "same_answer": plain[name]["answer"] == timescale[name]["answer"],
            }
            for name in ("container_90_days_hourly", "zone_occupancy_30_days_hourly")
        }
    for found in result.values():
        for entry in found.values():
            if isinstance(entry, dict):
                entry.pop("answer", None)
    return result
