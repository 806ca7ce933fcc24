"""Named SQL. Every identifier here is ours; values only ever travel as ``$n`` parameters."""

KNOWN_CONTAINERS = "SELECT id FROM containers WHERE id = ANY($1::text[])"
KNOWN_SPOTS = "SELECT id FROM parking_spots WHERE id = ANY($1::text[])"

# One round trip stores a kind's readings and moves each device's latest state forward. The
# state moves only for a strictly newer reading, so a late, out-of-order reading is kept in the
# history without overwriting the present; last_seen still records that the device spoke.
STORE_WASTE = """
WITH batch AS (
    SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::float8[], $4::float8[], $5::float8[],
                         $6::timestamptz[])
        AS r(container_id, ts, fill_pct, battery_pct, temperature_c, received_at)
), inserted AS (
    INSERT INTO waste_readings (container_id, ts, fill_pct, battery_pct, temperature_c, received_at)
    SELECT container_id, ts, fill_pct, battery_pct, temperature_c, received_at FROM batch
    ON CONFLICT (container_id, ts) DO NOTHING
    RETURNING 1
), latest AS (
    INSERT INTO container_latest AS cur
        (container_id, ts, fill_pct, battery_pct, temperature_c, last_seen)
    SELECT DISTINCT ON (container_id)
           container_id, ts, fill_pct, battery_pct, temperature_c,
           max(received_at) OVER (PARTITION BY container_id)
    FROM batch
    ORDER BY container_id, ts DESC
    ON CONFLICT (container_id) DO UPDATE SET
        fill_pct = CASE WHEN EXCLUDED.ts > cur.ts THEN EXCLUDED.fill_pct ELSE cur.fill_pct END,
        battery_pct = CASE WHEN EXCLUDED.ts > cur.ts
                           THEN coalesce(EXCLUDED.battery_pct, cur.battery_pct)
                           ELSE cur.battery_pct END,
        temperature_c = CASE WHEN EXCLUDED.ts > cur.ts
                             THEN coalesce(EXCLUDED.temperature_c, cur.temperature_c)
                             ELSE cur.temperature_c END,
        ts = greatest(cur.ts, EXCLUDED.ts),
        last_seen = greatest(cur.last_seen, EXCLUDED.last_seen)
    RETURNING 1
)
SELECT (SELECT count(*) FROM inserted) AS inserted, (SELECT count(*) FROM latest) AS devices
"""

STORE_PARKING = """
WITH batch AS (
    SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::boolean[], $4::float8[],
                         $5::timestamptz[])
        AS r(spot_id, ts, occupied, battery_pct, received_at)
), inserted AS (
    INSERT INTO parking_readings (spot_id, ts, occupied, battery_pct, received_at)
    SELECT spot_id, ts, occupied, battery_pct, received_at FROM batch
    ON CONFLICT (spot_id, ts) DO NOTHING
    RETURNING 1
), latest AS (
    INSERT INTO spot_latest AS cur (spot_id, ts, occupied, battery_pct, last_seen)
    SELECT DISTINCT ON (spot_id)
           spot_id, ts, occupied, battery_pct, max(received_at) OVER (PARTITION BY spot_id)
    FROM batch
    ORDER BY spot_id, ts DESC
    ON CONFLICT (spot_id) DO UPDATE SET
        occupied = CASE WHEN EXCLUDED.ts > cur.ts THEN EXCLUDED.occupied ELSE cur.occupied END,
        battery_pct = CASE WHEN EXCLUDED.ts > cur.ts
                           THEN coalesce(EXCLUDED.battery_pct, cur.battery_pct)
                           ELSE cur.battery_pct END,
        ts = greatest(cur.ts, EXCLUDED.ts),
        last_seen = greatest(cur.last_seen, EXCLUDED.last_seen)
    RETURNING 1
)
SELECT (SELECT count(*) FROM inserted) AS inserted, (SELECT count(*) FROM latest) AS devices
"""

STORE_DEAD_LETTERS = """
INSERT INTO dead_letters AS cur
    (topic, payload, payload_sha256, reason, detail, first_received_at, last_received_at,
     times_received)
SELECT topic, payload, sha256(payload), reason, detail, received_at, received_at, times
FROM unnest($1::text[], $2::bytea[], $3::text[], $4::text[], $5::timestamptz[], $6::integer[])
    AS d(topic, payload, reason, detail, received_at, times)
ON CONFLICT (topic, payload_sha256) DO UPDATE SET
    times_received = cur.times_received + EXCLUDED.times_received,
    last_received_at = greatest(cur.last_received_at, EXCLUDED.last_received_at),
    reason = EXCLUDED.reason,
    detail = EXCLUDED.detail
"""
