"""Read queries behind the HTTP API. Only this package acquires connections."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from citytel.errors import NotFoundError
from citytel.storage.pool import Connection, connection

_CONTAINER_COLUMNS = """
    c.id, c.zone, c.capacity_l, c.depth_mm, c.waste_kind,
    ST_Y(c.location::geometry) AS lat, ST_X(c.location::geometry) AS lon,
    l.fill_pct, l.battery_pct, l.temperature_c, l.ts AS measured_at, l.last_seen,
    l.cycle_started_at, l.cycle_start_fill_pct, l.last_cycle_rate_pct_h
"""


def _in_box(location: str, first: int) -> str:
    """SQL: ``location`` lies in the box of parameters ``$first`` to ``$first+3`` (GeoJSON order).

    Plain longitude and latitude comparisons, not a geography envelope: PostGIS draws a geography
    box's edges as great circles, which turns a box wider than a hemisphere inside out (and the
    whole world into an error). min_lon > max_lon is a box across the antimeridian.
    """
    min_lon, min_lat, max_lon, max_lat = (f"${first + i}" for i in range(4))
    lon, lat = f"ST_X({location}::geometry)", f"ST_Y({location}::geometry)"
    return (
        f"({lat} BETWEEN {min_lat} AND {max_lat} AND CASE WHEN {min_lon} <= {max_lon}"
        f" THEN {lon} BETWEEN {min_lon} AND {max_lon}"
        f" ELSE {lon} >= {min_lon} OR {lon} <= {max_lon} END)"
    )


_CONTAINER_FILTER = f"""
WHERE ($1::text IS NULL OR c.zone = $1)
  AND ($2::float8 IS NULL OR l.fill_pct >= $2)
  AND ($3::float8 IS NULL OR {_in_box("c.location", 3)})
"""

# The page and the total are two queries: a window count would make every match be joined,
# projected and kept in memory just to return one page.
LIST_CONTAINERS = f"""
SELECT {_CONTAINER_COLUMNS}
FROM containers c
LEFT JOIN container_latest l ON l.container_id = c.id
{_CONTAINER_FILTER}
ORDER BY l.fill_pct DESC NULLS LAST, c.id
LIMIT $7 OFFSET $8
"""  # noqa: S608 - the f-string only inserts our own SQL

COUNT_CONTAINERS = f"""
SELECT count(*)
FROM containers c
LEFT JOIN container_latest l ON l.container_id = c.id
{_CONTAINER_FILTER}
"""  # noqa: S608

# The same list when a fill threshold is given (dispatch's question): only containers with a
# fill level can match, so the walk starts from container_latest in the order of its index
# (migrations/0008_fill_order.sql) and stops after the page. $2 is never NULL here.
_FULL_ENOUGH = f"""
FROM container_latest l
JOIN containers c ON c.id = l.container_id
WHERE l.fill_pct >= $2
  AND ($1::text IS NULL OR c.zone = $1)
  AND ($3::float8 IS NULL OR {_in_box("c.location", 3)})
"""

LIST_FULL_CONTAINERS = f"""
SELECT {_CONTAINER_COLUMNS}
{_FULL_ENOUGH}
ORDER BY l.fill_pct DESC, l.container_id
LIMIT $7 OFFSET $8
"""

COUNT_FULL_CONTAINERS = f"SELECT count(*) {_FULL_ENOUGH}"

# Dispatch's page and its total in one round trip: the total is an uncorrelated subquery that
# runs once beside the page's index walk, and without the registry join when no zone or box is
# asked (every latest state has a container). An empty page carries no total: then it is counted
# on its own (COUNT_FULL_CONTAINERS).
LIST_FULL_CONTAINERS_WITH_TOTAL = f"""
WITH page AS ({LIST_FULL_CONTAINERS})
SELECT page.*,
       CASE WHEN $1::text IS NULL AND $3::float8 IS NULL
            THEN (SELECT count(*) FROM container_latest WHERE fill_pct >= $2)
            ELSE (SELECT count(*) {_FULL_ENOUGH})
       END AS total
FROM page
ORDER BY page.fill_pct DESC, page.id
"""  # noqa: S608

# The containers a collection round may include: every one with a fill level, in a zone or a
# box if asked. Which are due is decided in Python (citytel.collection), from the fill cycle.
COLLECTION_CANDIDATES = f"""
SELECT {_CONTAINER_COLUMNS}
FROM containers c
JOIN container_latest l ON l.container_id = c.id
WHERE l.fill_pct IS NOT NULL
  AND ($1::text IS NULL OR c.zone = $1)
  AND ($2::float8 IS NULL OR {_in_box("c.location", 2)})
"""  # noqa: S608

GET_CONTAINER = f"""
SELECT {_CONTAINER_COLUMNS}
FROM containers c
LEFT JOIN container_latest l ON l.container_id = c.id
WHERE c.id = $1
"""  # noqa: S608

CONTAINER_READINGS = """
SELECT ts, fill_pct, battery_pct, temperature_c
FROM waste_readings
WHERE container_id = $1 AND ts >= $2 AND ts < $3
ORDER BY ts
LIMIT $4
"""

# History per bucket reads rows of one shape, ``(device, bucket, sums and counts)``: from the
# hourly or daily continuous aggregates (migrations/0009_history_aggregates.sql) when the bucket
# is a whole number of their buckets, or from the raw readings, each a bucket of one. The same
# outer query combines either, and every sum is a numeric sum, exact, so both give the same
# answer to the last bit. date_bin rather than TimescaleDB's time_bucket: the same query runs on
# plain PostgreSQL, where only the raw readings exist. Its origin is a UTC midnight, as
# time_bucket's hours and days are.
_WASTE_RAW = """
SELECT container_id, ts AS bucket, fill_pct::numeric AS fill_sum, fill_pct AS min_fill_pct,
       fill_pct AS max_fill_pct, 1::bigint AS readings, battery_pct::numeric AS battery_sum,
       (battery_pct IS NOT NULL)::int::bigint AS battery_readings,
       temperature_c::numeric AS temperature_sum,
       (temperature_c IS NOT NULL)::int::bigint AS temperature_readings
FROM waste_readings
"""

_WASTE_BUCKETS = """
SELECT date_bin($4::interval, h.bucket, TIMESTAMPTZ '2000-01-01') AS ts,
       (sum(h.fill_sum) / sum(h.readings))::float8 AS fill_pct,
       min(h.min_fill_pct) AS min_fill_pct, max(h.max_fill_pct) AS max_fill_pct,
       (sum(h.battery_sum) / nullif(sum(h.battery_readings), 0))::float8 AS battery_pct,
       (sum(h.temperature_sum) / nullif(sum(h.temperature_readings), 0))::float8 AS temperature_c,
       sum(h.readings)::bigint AS readings
FROM ({source}) h
WHERE h.container_id = $1 AND h.bucket >= $2 AND h.bucket < $3
GROUP BY 1
ORDER BY 1
"""

_PARKING_RAW = """
SELECT spot_id, ts AS bucket, occupied::int::bigint AS occupied_readings, 1::bigint AS readings
FROM parking_readings
"""

# A zone's occupancy per bucket: each reporting spot's share of readings that said occupied,
# averaged over the spots (so a chatty sensor weighs no more than a quiet one).
_ZONE_OCCUPANCY = """
WITH per_spot AS (
    SELECT h.spot_id, date_bin($4::interval, h.bucket, TIMESTAMPTZ '2000-01-01') AS ts,
           sum(h.occupied_readings) AS occupied, sum(h.readings) AS readings
    FROM ({source}) h
    JOIN parking_spots s ON s.id = h.spot_id
    WHERE s.zone = $1 AND h.bucket >= $2 AND h.bucket < $3
    GROUP BY 1, 2
)
SELECT ts, avg(occupied / readings)::float8 AS occupied_ratio, count(*) AS spots_reporting,
       sum(readings)::bigint AS readings
FROM per_spot
GROUP BY ts
ORDER BY ts
"""

# A zone's typical week: per hour of the week in the time zone $4 (ISO day 1 = Monday), the mean
# over the spot-hours of the range of each spot's share of occupied readings in that hour.
_ZONE_WEEK = """
WITH per_spot AS (
    SELECT h.spot_id, date_bin(INTERVAL '1 hour', h.bucket, TIMESTAMPTZ '2000-01-01') AS ts,
           sum(h.occupied_readings) AS occupied, sum(h.readings) AS readings
    FROM ({source}) h
    JOIN parking_spots s ON s.id = h.spot_id
    WHERE s.zone = $1 AND h.bucket >= $2 AND h.bucket < $3
    GROUP BY 1, 2
)
SELECT extract(isodow FROM ts AT TIME ZONE $4)::int AS day_of_week,
       extract(hour FROM ts AT TIME ZONE $4)::int AS hour,
       avg(occupied / readings)::float8 AS occupied_ratio, count(*) AS spot_hours
FROM per_spot
GROUP BY 1, 2
ORDER BY 1, 2
"""

_HISTORY_SOURCES = {
    "raw": (_WASTE_RAW, _PARKING_RAW),
    "hourly": (
        "SELECT * FROM waste_fill_hourly",
        "SELECT spot_id, bucket, occupied_readings, readings FROM parking_occupancy_hourly",
    ),
    "daily": (
        "SELECT * FROM waste_fill_daily",
        "SELECT spot_id, bucket, occupied_readings, readings FROM parking_occupancy_daily",
    ),
}
CONTAINER_BUCKETS = {
    name: _WASTE_BUCKETS.format(source=waste) for name, (waste, _) in _HISTORY_SOURCES.items()
}
ZONE_OCCUPANCY = {
    name: _ZONE_OCCUPANCY.format(source=parking) for name, (_, parking) in _HISTORY_SOURCES.items()
}
ZONE_WEEK = {
    name: _ZONE_WEEK.format(source=parking) for name, (_, parking) in _HISTORY_SOURCES.items()
}

# Arrivals per bucket in a zone: readings that say occupied where the spot's reading before said
# free (parking turnover counts vehicles parked, and each is one free-to-occupied transition).
# The reading before a spot's first one in the range is looked up at most $5 back, so an arrival
# at the very start of the range counts too. From the raw readings: a transition needs each
# reading in order, which no sum or count of an aggregate keeps.
ZONE_ARRIVALS = """
WITH zone_spots AS (
    SELECT id FROM parking_spots WHERE zone = $1
), ordered AS (
    SELECT s.id AS spot_id, before.ts, before.occupied
    FROM zone_spots s
    CROSS JOIN LATERAL (
        SELECT p.ts, p.occupied FROM parking_readings p
        WHERE p.spot_id = s.id AND p.ts < $2 AND p.ts >= $2 - $5::interval
        ORDER BY p.ts DESC LIMIT 1
    ) before
    UNION ALL
    SELECT p.spot_id, p.ts, p.occupied
    FROM parking_readings p
    JOIN zone_spots s ON s.id = p.spot_id
    WHERE p.ts >= $2 AND p.ts < $3
), steps AS (
    SELECT ts, occupied, lag(occupied) OVER (PARTITION BY spot_id ORDER BY ts) AS was_occupied
    FROM ordered
)
SELECT date_bin($4::interval, ts, TIMESTAMPTZ '2000-01-01') AS ts, count(*) AS arrivals
FROM steps
WHERE ts >= $2 AND occupied AND NOT was_occupied
GROUP BY 1
ORDER BY 1
"""

# A zone's spots as they stood at $2: each spot's last reading at or before $2, if it is at most
# $3 old (older: the state is unknown). The parking forecast starts from this.
ZONE_PARKING_AT = """
SELECT count(*) AS spots_total,
       count(r.occupied) AS spots_known,
       count(*) FILTER (WHERE NOT r.occupied) AS spots_free
FROM parking_spots s
LEFT JOIN LATERAL (
    SELECT p.occupied FROM parking_readings p
    WHERE p.spot_id = s.id AND p.ts <= $2 AND p.ts > $2 - $3::interval
    ORDER BY p.ts DESC LIMIT 1
) r ON true
WHERE s.zone = $1
"""

# Waste KPIs of a zone per local day (time zone $4) in [$2, $3), both local midnights:
# - a collection is a reading more than $5 points below the container's reading before it
#   (citytel.collection.EMPTIED_DROP_PCT), on the day of that lower reading; the fill at
#   collection is the reading before it;
# - overflow time: a reading at 100 % holds from its time until the container's next reading,
#   at most $6 later and never past $3 or now, split at local midnights.
# The reading before the range (at most $6 back) is looked up, so that a collection or an
# overflow running across the start of the range counts.
ZONE_WASTE_KPIS = """
WITH zone_containers AS (
    SELECT id FROM containers WHERE zone = $1
), ordered AS (
    SELECT c.id AS container_id, before.ts, before.fill_pct
    FROM zone_containers c
    CROSS JOIN LATERAL (
        SELECT w.ts, w.fill_pct FROM waste_readings w
        WHERE w.container_id = c.id AND w.ts < $2 AND w.ts >= $2 - $6::interval
        ORDER BY w.ts DESC LIMIT 1
    ) before
    UNION ALL
    SELECT w.container_id, w.ts, w.fill_pct
    FROM waste_readings w
    JOIN zone_containers c ON c.id = w.container_id
    WHERE w.ts >= $2 AND w.ts < $3
), steps AS (
    SELECT container_id, ts, fill_pct,
           lag(fill_pct) OVER w AS fill_before,
           greatest(ts, least(lead(ts) OVER w, ts + $6::interval, $3, now())) AS held_until
    FROM ordered
    WINDOW w AS (PARTITION BY container_id ORDER BY ts)
), pieces AS (
    SELECT s.container_id, s.fill_pct, s.fill_before, day,
           s.ts >= day AT TIME ZONE $4 AS reading_that_day,
           least(s.held_until, (day + INTERVAL '1 day') AT TIME ZONE $4)
               - greatest(s.ts, day AT TIME ZONE $4) AS held
    FROM steps s
    CROSS JOIN LATERAL generate_series(
        date_trunc('day', s.ts AT TIME ZONE $4), s.held_until AT TIME ZONE $4, INTERVAL '1 day'
    ) day
), per_day AS (
    SELECT day,
           count(DISTINCT container_id) FILTER (WHERE reading_that_day) AS containers_reporting,
           count(*) FILTER (WHERE reading_that_day AND fill_pct < fill_before - $5)
               AS collections,
           avg(fill_before) FILTER (WHERE reading_that_day AND fill_pct < fill_before - $5)
               AS mean_fill_at_collection_pct,
           sum(extract(epoch FROM held)) FILTER (WHERE fill_pct >= 100 AND held > INTERVAL '0')
               / 3600 AS overflow_hours
    FROM pieces
    GROUP BY day
)
SELECT d::date AS day,
       coalesce(p.containers_reporting, 0) AS containers_reporting,
       coalesce(p.collections, 0) AS collections,
       coalesce(p.overflow_hours, 0)::float8 AS overflow_hours,
       p.mean_fill_at_collection_pct::float8 AS mean_fill_at_collection_pct
FROM generate_series($2 AT TIME ZONE $4, $3 AT TIME ZONE $4 - INTERVAL '1 day', INTERVAL '1 day') d
LEFT JOIN per_day p ON p.day = d
ORDER BY d
"""

ZONE_CONTAINER_COUNT = "SELECT count(*) FROM containers WHERE zone = $1"

# The aggregates exist where migrations/0009_history_aggregates.sql was applied (TimescaleDB).
HAS_AGGREGATES = "SELECT to_regclass('public.waste_fill_daily') IS NOT NULL"

ZONE_SPOT_COUNT = "SELECT count(*) FROM parking_spots WHERE zone = $1"

_SPOT_COLUMNS = """
    s.id, s.zone, s.category,
    ST_Y(s.location::geometry) AS lat, ST_X(s.location::geometry) AS lon,
    l.occupied, l.battery_pct, l.ts AS status_since, l.last_seen
"""


def _rfc3339(column: str) -> str:
    """SQL rendering a timestamptz as the API's JSON does: UTC, ``Z``, microseconds if any."""
    return (
        f"CASE WHEN date_trunc('second', {column}) = {column}"
        f" THEN to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"
        f" ELSE to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') END"
    )


# The hottest read of the API answers with the JSON array of ``FreeSpot`` items built by the
# database: one text value to decode instead of a row per spot, and no model per spot in Python.
#
# The plan that matters: the GiST index walked nearest-first (``<->``) inside a bounding box of
# the search circle, each spot checked for being free, stopping after LIMIT. ST_DWithin would
# give the same answer, but the planner underestimates how many spots it keeps (by a factor of
# several hundred in a dense district) and then prefers to fetch every spot in the circle and
# sort them: 27 ms instead of 0.5 ms downtown. So the box is explicit (degrees of latitude are
# at least 110,574 m; longitude shrinks with cos(lat); 5 % margin; clamped to valid
# coordinates, so a circle across the antimeridian is cut there) and the exact sphere
# distance, the one ``<->`` orders by, is a plain filter.
FREE_SPOTS_NEAR_JSON = f"""
SELECT '[' || coalesce(string_agg(row_to_json(f)::text, ',' ORDER BY f.distance_m), '') || ']'
       AS items,
       now() AS as_of
FROM (
    SELECT n.id, n.zone, n.category,
           (SELECT row_to_json(point) FROM (SELECT n.lat, n.lon) point) AS location,
           'free' AS status,
           {_rfc3339("n.ts")} AS status_since,
           n.battery_pct,
           {_rfc3339("n.last_seen")} AS last_seen,
           round(n.distance_m::numeric, 1) AS distance_m
    FROM (
        SELECT s.id, s.zone, s.category,
               ST_Y(s.location::geometry) AS lat, ST_X(s.location::geometry) AS lon,
               l.ts, l.battery_pct, l.last_seen,
               ST_Distance(s.location, p.here, false) AS distance_m
        FROM (
            SELECT ST_SetSRID(ST_MakePoint($2, $1), 4326)::geography AS here,
                   ST_MakeEnvelope(
                       greatest($2 - d.lon, -180), greatest($1 - d.lat, -90),
                       least($2 + d.lon, 180), least($1 + d.lat, 90), 4326
                   )::geography AS box
            FROM (SELECT $3 * 1.05 / 110574 AS lat,
                         $3 * 1.05 / (111320 * greatest(cos(radians($1)), 0.01)) AS lon) d
        ) p,
        parking_spots s
        JOIN spot_latest l ON l.spot_id = s.id
        WHERE NOT l.occupied
          AND s.location && p.box
          AND ST_Distance(s.location, p.here, false) <= $3
          AND ($5::text IS NULL OR s.category = $5)
        ORDER BY s.location <-> p.here
        LIMIT $4
    ) n
) f
"""  # noqa: S608

# The API's live view of parking reads spots in a REPEATABLE READ transaction, so that the
# snapshot it records is the one the rows were read under (migrations/0005_spot_changes.sql).
#
# On a hot standby (a read replica) the snapshot has no list of running transactions:
# PostgreSQL keeps every xid a standby knows to be running in the snapshot's subtransaction
# array, which pg_current_snapshot() does not export, so pg_visible_in_snapshot() would call a
# transaction running at the read "visible" and its rows would never be read. There the
# snapshot is recorded as "xmin:xmin:", which sees nothing at or after xmin: the next read asks
# again for every row written since xmin (xmin is right on a standby, and re-applying a spot's
# state is harmless), so nothing is missed. And a standby's data are as of its last replayed
# commit while it has received WAL it has not replayed yet, not as of now().
SPOT_SNAPSHOT = """
SELECT
    CASE WHEN pg_is_in_recovery()
        THEN format('%s:%s:', pg_snapshot_xmin(s), pg_snapshot_xmin(s))
        ELSE s::text
    END AS snapshot,
    CASE WHEN pg_is_in_recovery()
            AND pg_last_wal_receive_lsn() IS DISTINCT FROM pg_last_wal_replay_lsn()
        THEN least(now(), pg_last_xact_replay_timestamp())
        ELSE now()
    END AS as_of
FROM pg_current_snapshot() AS s
"""

# The ids written by a transaction that an earlier snapshot $1 did not see: running then, or
# begun since (either way, at or after its xmin). The registry is walked by its index; spot_latest
# is scanned (see migrations/0005_spot_changes.sql for why it has no index).
CHANGED_SPOT_IDS = """
SELECT id FROM parking_spots
WHERE changed_xid >= pg_snapshot_xmin($1::text::pg_snapshot)
  AND NOT pg_visible_in_snapshot(changed_xid, $1::text::pg_snapshot)
UNION
SELECT spot_id FROM spot_latest
WHERE changed_xid >= pg_snapshot_xmin($1::text::pg_snapshot)
  AND NOT pg_visible_in_snapshot(changed_xid, $1::text::pg_snapshot)
"""

_SPOT_STATE = f"""
SELECT {_SPOT_COLUMNS}
FROM parking_spots s
LEFT JOIN spot_latest l ON l.spot_id = s.id
"""  # noqa: S608

SPOT_STATES = _SPOT_STATE + "WHERE s.id = ANY($1::text[])\n"
ALL_SPOT_STATES = _SPOT_STATE

_SPOT_FILTER = """
WHERE ($1::text IS NULL OR s.zone = $1)
  AND ($2::float8 IS NULL
       OR ST_Intersects(s.location, ST_MakeEnvelope($2, $3, $4, $5, 4326)::geography))
"""

LIST_SPOTS = _SPOT_STATE + _SPOT_FILTER + "ORDER BY s.id\nLIMIT $6 OFFSET $7\n"
COUNT_SPOTS = "SELECT count(*) FROM parking_spots s\n" + _SPOT_FILTER  # noqa: S608

GET_SPOT = f"""
SELECT {_SPOT_COLUMNS}
FROM parking_spots s
LEFT JOIN spot_latest l ON l.spot_id = s.id
WHERE s.id = $1
"""  # noqa: S608

ZONE_CONTAINERS = """
SELECT count(*) AS containers_total,
       count(l.container_id) AS containers_reporting,
       avg(l.fill_pct)::float8 AS mean_fill_pct
FROM containers c
LEFT JOIN container_latest l ON l.container_id = c.id
WHERE c.zone = $1
"""

ZONE_FULL_CONTAINERS = """
SELECT c.id, l.fill_pct
FROM containers c
JOIN container_latest l ON l.container_id = c.id
WHERE c.zone = $1 AND l.fill_pct >= $2
ORDER BY l.fill_pct DESC, c.id
"""

ZONE_SPOTS = """
SELECT count(*) AS spots_total,
       count(*) FILTER (WHERE l.occupied = false) AS spots_free,
       count(*) FILTER (WHERE l.occupied) AS spots_occupied,
       count(*) FILTER (WHERE l.spot_id IS NULL) AS spots_unknown
FROM parking_spots s
LEFT JOIN spot_latest l ON l.spot_id = s.id
WHERE s.zone = $1
"""

LIST_ZONES = """
SELECT zone, sum(containers)::int AS containers, sum(spots)::int AS spots
FROM (SELECT zone, 1 AS containers, 0 AS spots FROM containers
      UNION ALL
      SELECT zone, 0, 1 FROM parking_spots) z
GROUP BY zone
ORDER BY zone
"""


# Devices an operator should look at: silent since $4 (or never heard from, though registered
# before $4), battery under $5, or a fault reported since $3 and not followed by a measurement.
# $1: 'waste' or 'parking' or NULL; $2: a zone or NULL.
DEVICES_NEEDING_ATTENTION = """
WITH faults AS (
    SELECT DISTINCT ON (device_kind, device_id) device_kind, device_id, ts, event, detail
    FROM device_events
    WHERE event IN ('tilted', 'no_echo', 'distance_beyond_depth') AND ts >= $3
    ORDER BY device_kind, device_id, ts DESC
), devices AS (
    SELECT 'waste' AS device_kind, c.id, c.zone, c.location, c.created_at,
           l.ts AS measured_at, l.last_seen, l.battery_pct
    FROM containers c LEFT JOIN container_latest l ON l.container_id = c.id
    WHERE $1::text IS NULL OR $1 = 'waste'
    UNION ALL
    SELECT 'parking', s.id, s.zone, s.location, s.created_at, l.ts, l.last_seen, l.battery_pct
    FROM parking_spots s LEFT JOIN spot_latest l ON l.spot_id = s.id
    WHERE $1::text IS NULL OR $1 = 'parking'
)
SELECT d.device_kind, d.id, d.zone,
       ST_Y(d.location::geometry) AS lat, ST_X(d.location::geometry) AS lon,
       d.created_at, d.last_seen, d.battery_pct,
       f.ts AS fault_at, f.event AS fault, f.detail AS fault_detail
FROM devices d
LEFT JOIN faults f
       ON f.device_kind = d.device_kind AND f.device_id = d.id
      AND f.ts > coalesce(d.measured_at, '-infinity')
WHERE ($2::text IS NULL OR d.zone = $2)
  AND ((d.last_seen IS NULL AND d.created_at < $4)
       OR d.last_seen < $4
       OR d.battery_pct < $5
       OR f.ts IS NOT NULL)
"""


@dataclass(frozen=True)
class BBox:
    """A longitude/latitude box, in GeoJSON order."""

    min_lon: float
    min_lat: float
    max_lon: float
    max_lat: float


async def list_containers(
    pool: asyncpg.Pool,
    *,
    zone: str | None,
    min_fill_pct: float | None,
    bbox: BBox | None,
    limit: int,
    offset: int,
) -> tuple[list[asyncpg.Record], int]:
    """Containers matching the filters, fullest first, and how many match in all."""
    box = (bbox.min_lon, bbox.min_lat, bbox.max_lon, bbox.max_lat) if bbox else (None,) * 4
    async with connection(pool) as conn:
        if min_fill_pct is not None:
            rows = await conn.fetch(
                LIST_FULL_CONTAINERS_WITH_TOTAL, zone, min_fill_pct, *box, limit, offset
            )
            if rows:
                return rows, int(rows[0]["total"])
            total = await conn.fetchval(COUNT_FULL_CONTAINERS, zone, min_fill_pct, *box)
            return rows, int(total)
        rows = await conn.fetch(LIST_CONTAINERS, zone, min_fill_pct, *box, limit, offset)
        total = await conn.fetchval(COUNT_CONTAINERS, zone, min_fill_pct, *box)
    return rows, int(total)


async def devices_needing_attention(
    pool: asyncpg.Pool,
    *,
    kind: str | None,
    zone: str | None,
    faults_since: datetime,
    silent_since: datetime,
    battery_below_pct: float,
) -> list[asyncpg.Record]:
    """Devices silent, low on battery or reporting a fault (see DEVICES_NEEDING_ATTENTION)."""
    async with connection(pool) as conn:
        return await conn.fetch(
            DEVICES_NEEDING_ATTENTION, kind, zone, faults_since, silent_since, battery_below_pct
        )


async def get_container(pool: asyncpg.Pool, container_id: str) -> asyncpg.Record:
    """One container with its latest state.

    Raises:
        NotFoundError: no such container.
    """
    async with connection(pool) as conn:
        row = await conn.fetchrow(GET_CONTAINER, container_id)
    if row is None:
        raise NotFoundError(what="container", key=container_id)
    return row


# date_bin's origin in the history queries.
_ORIGIN = datetime(2000, 1, 1, tzinfo=UTC)


def history_source(*, start: datetime, end: datetime, bucket: timedelta, aggregates: bool) -> str:
    """Where buckets of ``bucket`` over ``[start, end)`` are read from: ``daily``, ``hourly``
    (continuous aggregates, when ``aggregates``) or ``raw``.

    An aggregate serves when the bucket is a whole number of its buckets and the range starts
    and ends on its bucket boundaries (UTC), so that it covers exactly the same readings.
    """
    if not aggregates:
        return "raw"
    for name, size in (("daily", timedelta(days=1)), ("hourly", timedelta(hours=1))):
        if bucket % size == timedelta(0) and all(
            (t - _ORIGIN) % size == timedelta(0) for t in (start, end)
        ):
            return name
    return "raw"


async def _history(
    conn: Connection,
    by_source: dict[str, str],
    key: str,
    start: datetime,
    end: datetime,
    bucket: timedelta,
) -> list[asyncpg.Record]:
    aggregates = bool(await conn.fetchval(HAS_AGGREGATES))
    source = history_source(start=start, end=end, bucket=bucket, aggregates=aggregates)
    return await conn.fetch(by_source[source], key, start, end, bucket)


async def container_readings(
    pool: asyncpg.Pool,
    container_id: str,
    *,
    start: datetime,
    end: datetime,
    bucket: timedelta | None,
    limit: int,
) -> list[asyncpg.Record]:
    """A container's readings in ``[start, end)``, raw or combined per bucket.

    Buckets come from the continuous aggregates where they can (see :func:`history_source`),
    from the raw readings otherwise: the same answer either way.

    Raises:
        NotFoundError: no such container.
    """
    async with connection(pool) as conn:
        exists = await conn.fetchval("SELECT 1 FROM containers WHERE id = $1", container_id)
        if exists is None:
            raise NotFoundError(what="container", key=container_id)
        if bucket is None:
            return await conn.fetch(CONTAINER_READINGS, container_id, start, end, limit)
        return await _history(conn, CONTAINER_BUCKETS, container_id, start, end, bucket)


async def zone_occupancy(
    pool: asyncpg.Pool,
    zone: str,
    *,
    start: datetime,
    end: datetime,
    bucket: timedelta,
) -> list[asyncpg.Record]:
    """A zone's parking occupancy per bucket in ``[start, end)``: occupied ratio, spots
    reporting, readings. From the aggregates where they can serve, as container_readings.

    Raises:
        NotFoundError: the zone has no parking spot.
    """
    async with connection(pool) as conn:
        if await conn.fetchval(ZONE_SPOT_COUNT, zone) == 0:
            raise NotFoundError(what="parking zone", key=zone)
        return await _history(conn, ZONE_OCCUPANCY, zone, start, end, bucket)


async def zone_arrivals(
    pool: asyncpg.Pool,
    zone: str,
    *,
    start: datetime,
    end: datetime,
    bucket: timedelta,
    look_back: timedelta,
) -> tuple[dict[datetime, int], int]:
    """A zone's arrivals (free-to-occupied transitions) per bucket in ``[start, end)``, each
    spot's reading before ``start`` looked up at most ``look_back`` earlier; and its spot count."""
    async with connection(pool) as conn:
        spots = int(await conn.fetchval(ZONE_SPOT_COUNT, zone))
        rows = await conn.fetch(ZONE_ARRIVALS, zone, start, end, bucket, look_back)
    return {r["ts"]: int(r["arrivals"]) for r in rows}, spots


@dataclass(frozen=True)
class ParkingAt:
    """A zone's spots as they stood at one moment, and its typical week up to that moment."""

    spots_total: int
    spots_known: int
    spots_free: int
    week: list[asyncpg.Record]


async def zone_parking_at(
    pool: asyncpg.Pool,
    zone: str,
    *,
    at: datetime,
    max_age: timedelta,
    weeks: int,
    time_zone: str,
) -> ParkingAt:
    """What the parking forecast of a zone at ``at`` starts from: each spot's last state at most
    ``max_age`` old, and the hour-of-week occupancy over the ``weeks`` whole weeks of hours
    before ``at`` (see ZONE_WEEK).

    Raises:
        NotFoundError: the zone has no parking spot.
    """
    end = at.replace(minute=0, second=0, microsecond=0)
    async with connection(pool) as conn:
        state = await conn.fetchrow(ZONE_PARKING_AT, zone, at, max_age)
        assert state is not None  # noqa: S101 - an aggregate without GROUP BY returns one row
        if state["spots_total"] == 0:
            raise NotFoundError(what="parking zone", key=zone)
        aggregates = bool(await conn.fetchval(HAS_AGGREGATES))
        start = end - timedelta(weeks=weeks)
        hour = timedelta(hours=1)
        source = history_source(start=start, end=end, bucket=hour, aggregates=aggregates)
        week = await conn.fetch(ZONE_WEEK[source], zone, start, end, time_zone)
    return ParkingAt(
        spots_total=int(state["spots_total"]),
        spots_known=int(state["spots_known"]),
        spots_free=int(state["spots_free"]),
        week=week,
    )


async def zone_waste_kpis(
    pool: asyncpg.Pool,
    zone: str,
    *,
    start: datetime,
    end: datetime,
    time_zone: str,
    emptied_drop_pct: float,
    max_hold: timedelta,
) -> list[asyncpg.Record]:
    """A zone's waste KPIs per local day in ``[start, end)`` (local midnights): collections,
    overflow hours, mean fill at collection (see ZONE_WASTE_KPIS).

    Raises:
        NotFoundError: the zone has no container.
    """
    async with connection(pool) as conn:
        if await conn.fetchval(ZONE_CONTAINER_COUNT, zone) == 0:
            raise NotFoundError(what="waste zone", key=zone)
        return await conn.fetch(
            ZONE_WASTE_KPIS, zone, start, end, time_zone, emptied_drop_pct, max_hold
        )


async def zone_week(
    pool: asyncpg.Pool, zone: str, *, start: datetime, end: datetime, time_zone: str
) -> list[asyncpg.Record]:
    """A zone's occupancy per hour of the week in ``time_zone`` over ``[start, end)``, from the
    hourly aggregate when ``start`` and ``end`` are on the hour.

    Raises:
        NotFoundError: the zone has no parking spot.
    """
    async with connection(pool) as conn:
        if await conn.fetchval(ZONE_SPOT_COUNT, zone) == 0:
            raise NotFoundError(what="parking zone", key=zone)
        aggregates = bool(await conn.fetchval(HAS_AGGREGATES))
        hour = timedelta(hours=1)
        source = history_source(start=start, end=end, bucket=hour, aggregates=aggregates)
        return await conn.fetch(ZONE_WEEK[source], zone, start, end, time_zone)


async def free_spots_near_json(
    pool: asyncpg.Pool,
    *,
    lat: float,
    lon: float,
    radius_m: float,
    limit: int,
    category: str | None,
) -> tuple[str, datetime]:
    """Free spots within ``radius_m`` of a point, nearest first, as a JSON array; and as of when."""
    async with connection(pool) as conn:
        row = await conn.fetchrow(FREE_SPOTS_NEAR_JSON, lat, lon, radius_m, limit, category)
    assert row is not None  # noqa: S101 - an aggregate without GROUP BY returns one row
    return row["items"], row["as_of"]


@dataclass(frozen=True)
class SpotChanges:
    """Spots as a snapshot saw them, and that snapshot: where the next read of changes starts."""

    rows: list[asyncpg.Record]
    snapshot: str
    as_of: datetime


async def spot_changes(pool: asyncpg.Pool, since: str | None) -> SpotChanges:
    """Every spot written by a transaction the snapshot ``since`` did not see (all when None)."""
    async with (
        connection(pool) as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        snapshot = await conn.fetchrow(SPOT_SNAPSHOT)
        if since is None:
            rows = await conn.fetch(ALL_SPOT_STATES)
        else:
            ids = [r["id"] for r in await conn.fetch(CHANGED_SPOT_IDS, since)]
            rows = await conn.fetch(SPOT_STATES, ids) if ids else []
    assert snapshot is not None  # noqa: S101 - a SELECT without FROM returns one row
    return SpotChanges(rows=rows, snapshot=snapshot["snapshot"], as_of=snapshot["as_of"])


# The containers whose latest state a transaction wrote that an earlier snapshot $1 did not see
# (migrations/0015_container_changes.sql), with their registry entry.
CHANGED_CONTAINERS = f"""
SELECT {_CONTAINER_COLUMNS}
FROM container_latest l
JOIN containers c ON c.id = l.container_id
WHERE l.changed_xid >= pg_snapshot_xmin($1::text::pg_snapshot)
  AND NOT pg_visible_in_snapshot(l.changed_xid, $1::text::pg_snapshot)
"""  # noqa: S608

ALL_CONTAINER_STATES = f"""
SELECT {_CONTAINER_COLUMNS}
FROM container_latest l
JOIN containers c ON c.id = l.container_id
"""  # noqa: S608


@dataclass(frozen=True)
class Changes:
    """Containers and spots as a snapshot saw them, and that snapshot (see :class:`SpotChanges`)."""

    containers: list[asyncpg.Record]
    spots: list[asyncpg.Record]
    snapshot: str
    as_of: datetime


async def changes(pool: asyncpg.Pool, since: str | None) -> Changes:
    """Containers with a latest state and spots written since the snapshot ``since`` (all when
    None), read under one snapshot."""
    async with (
        connection(pool) as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        snapshot = await conn.fetchrow(SPOT_SNAPSHOT)
        if since is None:
            containers = await conn.fetch(ALL_CONTAINER_STATES)
            spots = await conn.fetch(ALL_SPOT_STATES)
        else:
            containers = await conn.fetch(CHANGED_CONTAINERS, since)
            ids = [r["id"] for r in await conn.fetch(CHANGED_SPOT_IDS, since)]
            spots = await conn.fetch(SPOT_STATES, ids) if ids else []
    assert snapshot is not None  # noqa: S101 - a SELECT without FROM returns one row
    return Changes(
        containers=containers,
        spots=spots,
        snapshot=snapshot["snapshot"],
        as_of=snapshot["as_of"],
    )


async def list_spots(
    pool: asyncpg.Pool, *, zone: str | None, bbox: BBox | None, limit: int, offset: int
) -> tuple[list[asyncpg.Record], int]:
    """Spots in ``zone`` and ``bbox`` when given, by id, and how many match in all."""
    box = (bbox.min_lon, bbox.min_lat, bbox.max_lon, bbox.max_lat) if bbox else (None,) * 4
    async with connection(pool) as conn:
        rows = await conn.fetch(LIST_SPOTS, zone, *box, limit, offset)
        total = await conn.fetchval(COUNT_SPOTS, zone, *box)
    return rows, int(total)


async def get_spot(pool: asyncpg.Pool, spot_id: str) -> asyncpg.Record:
    """One parking spot with its latest state.

    Raises:
        NotFoundError: no such spot.
    """
    async with connection(pool) as conn:
        row = await conn.fetchrow(GET_SPOT, spot_id)
    if row is None:
        raise NotFoundError(what="parking spot", key=spot_id)
    return row


@dataclass(frozen=True)
class ZoneSummary:
    """A zone's containers and spots, aggregated."""

    containers: asyncpg.Record
    full: list[asyncpg.Record]
    spots: asyncpg.Record


async def zone_summary(pool: asyncpg.Pool, zone: str, *, threshold_pct: float) -> ZoneSummary:
    """Containers over ``threshold_pct``, mean fill, free and total spots of a zone.

    Raises:
        NotFoundError: no container or spot is in this zone.
    """
    async with (
        connection(pool) as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        containers = await conn.fetchrow(ZONE_CONTAINERS, zone)
        spots = await conn.fetchrow(ZONE_SPOTS, zone)
        full = await conn.fetch(ZONE_FULL_CONTAINERS, zone, threshold_pct)
    assert containers is not None  # noqa: S101 - aggregates always return a row
    assert spots is not None  # noqa: S101
    if containers["containers_total"] == 0 and spots["spots_total"] == 0:
        raise NotFoundError(what="zone", key=zone)
    return ZoneSummary(containers=containers, full=full, spots=spots)


async def list_zones(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    """Every zone with its number of containers and spots."""
    async with connection(pool) as conn:
        return await conn.fetch(LIST_ZONES)


# Where the primary's WAL ends, and how far a standby has replayed it (NULL on a server that is
# not a standby): the read replica's lag is measured from the two (storage/replica.py).
PRIMARY_WAL_POSITION = """
SELECT pg_current_wal_lsn() - '0/0'::pg_lsn AS position
"""

REPLAYED_WAL_POSITION = """
SELECT pg_last_wal_replay_lsn() - '0/0'::pg_lsn AS position
"""


async def primary_wal_position(pool: asyncpg.Pool) -> int:
    """The primary's current WAL position, in bytes from the start."""
    async with connection(pool) as conn:
        value = await conn.fetchval(PRIMARY_WAL_POSITION, timeout=2)
    return int(value)


async def replayed_wal_position(pool: asyncpg.Pool) -> int | None:
    """The WAL position a standby has replayed, in bytes; None when the server is no standby."""
    async with connection(pool) as conn:
        value = await conn.fetchval(REPLAYED_WAL_POSITION, timeout=2)
    return None if value is None else int(value)


async def ping(pool: asyncpg.Pool) -> None:
    """Round-trip to the database; raises StorageError when it does not answer."""
    async with connection(pool) as conn:
        await conn.fetchval("SELECT 1", timeout=2)
