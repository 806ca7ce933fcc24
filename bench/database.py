"""What the benchmark asks of the database directly: resets, counts, fleet, latest states."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from bench.services import clean_env, start_group
from simulators.fleet import dump_fleet

_TABLES = "waste_readings, parking_readings, container_latest, spot_latest, dead_letters"
_COUNT = "SELECT (SELECT count(*) FROM waste_readings) + (SELECT count(*) FROM parking_readings)"


def connect(url: str) -> psycopg.Connection[tuple[Any, ...]]:
    """An autocommit connection whose counts do not spawn parallel workers (less noise)."""
    conn = psycopg.connect(url, autocommit=True)
    conn.execute("SET max_parallel_workers_per_gather = 0")
    return conn


def reset(url: str) -> None:
    """Empty the reading, latest-state and dead-letter tables; the registry stays."""
    with connect(url) as conn:
        conn.execute(f"TRUNCATE {_TABLES}")
        conn.execute("CHECKPOINT")


def count_readings(conn: psycopg.Connection[tuple[Any, ...]]) -> int:
    """Readings committed so far, both kinds."""
    row = conn.execute(_COUNT).fetchone()
    return int(row[0]) if row else 0


def dead_letters(url: str) -> int:
    with connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM dead_letters").fetchone()
    return int(row[0]) if row else 0


def first_received(url: str) -> float:
    """Wall-clock time ingestion received its first message of the current tables."""
    with connect(url) as conn:
        row = conn.execute(
            "SELECT extract(epoch FROM least("
            "(SELECT min(received_at) FROM waste_readings),"
            "(SELECT min(received_at) FROM parking_readings)))::float8"
        ).fetchone()
    return float(row[0]) if row and row[0] is not None else 0.0


def wait_for_count(url: str, target: int, *, within: float) -> tuple[float, int]:
    """Poll until ``target`` readings are committed; returns (when it was seen, count).

    Polls every 250 ms while far from the target and every 20 ms over its last 5 %, so that the
    count's own load on the database stays small and the end is still seen within ~20 ms.
    """
    deadline = time.monotonic() + within
    with connect(url) as conn:
        while True:
            seen_at = time.time()
            count = count_readings(conn)
            if count >= target or time.monotonic() > deadline:
                return seen_at, count
            time.sleep(0.02 if count >= 0.95 * target else 0.25)


def import_fleet(url: str, collection: dict[str, Any], workdir: Path) -> None:
    """``citytel fleet import`` of a generated fleet, as an operator would run it."""
    with tempfile.NamedTemporaryFile(
        "w", suffix=".geojson", dir=workdir, delete=False, encoding="utf-8"
    ) as f:
        f.write(dump_fleet(collection))
    log = workdir / "fleet-import.log"
    with log.open("ab") as out:
        process = start_group(
            [sys.executable, "-m", "citytel", "fleet", "import", f.name],
            env=clean_env(database_url=url),
            out=out,
        )
    if process.wait(timeout=300) != 0:
        message = f"citytel fleet import failed:\n{log.read_text()}"
        raise RuntimeError(message)


def populate_latest(url: str, *, free_ratio: float = 0.4, hours_ago: float = 0) -> dict[str, int]:
    """A latest state for every spot and container, as after a day of readings.

    ``free_ratio`` of the spots are free; fills are uniform in 0-100 %. Seeded, so every run
    queries the same data. Measured within the hour before ``hours_ago`` hours ago.
    """
    with connect(url) as conn:
        conn.execute("TRUNCATE container_latest, spot_latest")
        conn.execute("SELECT setseed(0.2026)")
        conn.execute(
            "INSERT INTO spot_latest (spot_id, ts, occupied, battery_pct, last_seen)"
            " SELECT id, now() - (%s + random()) * interval '1 hour', random() >= %s, 80, now()"
            " FROM parking_spots ORDER BY id",
            (hours_ago, free_ratio),
        )
        conn.execute(
            "INSERT INTO container_latest"
            " (container_id, ts, fill_pct, battery_pct, temperature_c, last_seen)"
            " SELECT id, now() - (%s + random()) * interval '1 hour',"
            " round((random() * 100)::numeric, 1), 80, 20, now() FROM containers ORDER BY id",
            (hours_ago,),
        )
        conn.execute("VACUUM ANALYZE container_latest")
        conn.execute("VACUUM ANALYZE spot_latest")
        spots = conn.execute("SELECT count(*) FROM spot_latest").fetchone()
        containers = conn.execute("SELECT count(*) FROM container_latest").fetchone()
    return {
        "spots": int(spots[0]) if spots else 0,
        "containers": int(containers[0]) if containers else 0,
    }
