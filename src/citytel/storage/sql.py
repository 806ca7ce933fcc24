"""Named SQL. Every identifier here is ours; values only ever travel as ``$n`` parameters."""

# With each device's gateway: the binding is checked against the registry row the batch already
# reads, in the batch's own transaction, so a rebinding applies to the very next batch.
KNOWN_CONTAINERS = "SELECT id, gateway_id FROM containers WHERE id = ANY($1::text[])"
KNOWN_SPOTS = "SELECT id, gateway_id FROM parking_spots WHERE id = ANY($1::text[])"

# One round trip stores a kind's readings and moves each device's latest state forward.
#
# - A reading already stored (same device and ts: a redelivery or a duplicate) is skipped, and so
#   is a LoRaWAN retransmission: the same frame counter from the same device within ten minutes.
# - The latest state is computed from the rows actually inserted, and moves only for a strictly
#   newer reading, so a late, out-of-order reading is kept in the history without overwriting
#   the present; last_seen still records that the device spoke.
# - A spot's changed_xid marks it for the API's live index (migrations/0005_spot_changes.sql), a
#   container's for the API's push stream (0015_container_changes.sql).
# A batch's readings first go by COPY into a temporary table of the connection's own, emptied at
# each commit: COPY sends rows far more cheaply than the same values as array parameters (the
# driver checks every array element's type), which made the arrays most of ingest's cost for
# messages of hundreds of readings. Then one statement moves them as before. A second batch stored
# in the same transaction would find the first one's rows still staged: storing them again adds
# nothing (they conflict), so that stays correct; emptying the table as it is read (DELETE ...
# RETURNING) cost the database more per row in the one run that measured it.
STAGE_WASTE = """
CREATE TEMPORARY TABLE IF NOT EXISTS waste_batch (
    container_id text, ts timestamptz, fill_pct float8, battery_pct float8,
    temperature_c float8, received_at timestamptz, f_cnt bigint
) ON COMMIT DELETE ROWS
"""
STAGE_PARKING = """
CREATE TEMPORARY TABLE IF NOT EXISTS parking_batch (
    spot_id text, ts timestamptz, occupied boolean, battery_pct float8,
    received_at timestamptz, f_cnt bigint
) ON COMMIT DELETE ROWS
"""
WASTE_BATCH_COLUMNS = (
    "container_id",
    "ts",
    "fill_pct",
    "battery_pct",
    "temperature_c",
    "received_at",
    "f_cnt",
)
PARKING_BATCH_COLUMNS = ("spot_id", "ts", "occupied", "battery_pct", "received_at", "f_cnt")

STORE_WASTE = """
WITH batch AS (
    SELECT container_id, ts, fill_pct, battery_pct, temperature_c, received_at, f_cnt
    FROM pg_temp.waste_batch
), inserted AS (
    INSERT INTO waste_readings
        (container_id, ts, fill_pct, battery_pct, temperature_c, received_at, f_cnt)
    SELECT b.container_id, b.ts, b.fill_pct, b.battery_pct, b.temperature_c, b.received_at, b.f_cnt
    FROM batch b
    WHERE b.f_cnt IS NULL OR NOT EXISTS (
        SELECT 1 FROM waste_readings w
        WHERE w.container_id = b.container_id AND w.f_cnt = b.f_cnt
          AND w.ts BETWEEN b.ts - INTERVAL '10 minutes' AND b.ts + INTERVAL '10 minutes')
    ON CONFLICT (container_id, ts) DO NOTHING
    RETURNING *
), cycles AS (
    SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::float8[], $4::float8[])
        AS y(container_id, cycle_started_at, cycle_start_fill_pct, last_cycle_rate_pct_h)
), latest AS (
    INSERT INTO container_latest AS cur
        (container_id, ts, fill_pct, battery_pct, temperature_c, last_seen,
         cycle_started_at, cycle_start_fill_pct, last_cycle_rate_pct_h)
    SELECT DISTINCT ON (i.container_id)
           i.container_id, i.ts, i.fill_pct, i.battery_pct, i.temperature_c,
           max(i.received_at) OVER (PARTITION BY i.container_id),
           y.cycle_started_at, y.cycle_start_fill_pct, y.last_cycle_rate_pct_h
    FROM inserted i
    LEFT JOIN cycles y ON y.container_id = i.container_id
    ORDER BY i.container_id, i.ts DESC
    ON CONFLICT (container_id) DO UPDATE SET
        -- Computed by the writer from this row, locked (LOCK_CONTAINER_CYCLES).
        cycle_started_at = EXCLUDED.cycle_started_at,
        cycle_start_fill_pct = EXCLUDED.cycle_start_fill_pct,
        last_cycle_rate_pct_h = EXCLUDED.last_cycle_rate_pct_h,
        fill_pct = CASE WHEN cur.ts IS NULL OR EXCLUDED.ts > cur.ts
                        THEN EXCLUDED.fill_pct ELSE cur.fill_pct END,
        battery_pct = CASE WHEN cur.ts IS NULL OR EXCLUDED.ts > cur.ts
                           THEN coalesce(EXCLUDED.battery_pct, cur.battery_pct)
                           ELSE cur.battery_pct END,
        temperature_c = CASE WHEN cur.ts IS NULL OR EXCLUDED.ts > cur.ts
                             THEN coalesce(EXCLUDED.temperature_c, cur.temperature_c)
                             ELSE cur.temperature_c END,
        ts = greatest(cur.ts, EXCLUDED.ts),
        last_seen = greatest(cur.last_seen, EXCLUDED.last_seen),
        changed_xid = pg_current_xact_id()
    RETURNING 1
)
SELECT (SELECT count(*) FROM inserted) AS inserted, (SELECT count(*) FROM latest) AS devices
"""

STORE_PARKING = """
WITH batch AS (
    SELECT spot_id, ts, occupied, battery_pct, received_at, f_cnt FROM pg_temp.parking_batch
), inserted AS (
    INSERT INTO parking_readings (spot_id, ts, occupied, battery_pct, received_at, f_cnt)
    SELECT b.spot_id, b.ts, b.occupied, b.battery_pct, b.received_at, b.f_cnt
    FROM batch b
    WHERE b.f_cnt IS NULL OR NOT EXISTS (
        SELECT 1 FROM parking_readings p
        WHERE p.spot_id = b.spot_id AND p.f_cnt = b.f_cnt
          AND p.ts BETWEEN b.ts - INTERVAL '10 minutes' AND b.ts + INTERVAL '10 minutes')
    ON CONFLICT (spot_id, ts) DO NOTHING
    RETURNING *
), latest AS (
    INSERT INTO spot_latest AS cur (spot_id, ts, occupied, battery_pct, last_seen)
    SELECT DISTINCT ON (spot_id)
           spot_id, ts, occupied, battery_pct, max(received_at) OVER (PARTITION BY spot_id)
    FROM inserted
    ORDER BY spot_id, ts DESC
    ON CONFLICT (spot_id) DO UPDATE SET
        occupied = CASE WHEN cur.ts IS NULL OR EXCLUDED.ts > cur.ts
                        THEN EXCLUDED.occupied ELSE cur.occupied END,
        battery_pct = CASE WHEN cur.ts IS NULL OR EXCLUDED.ts > cur.ts
                           THEN coalesce(EXCLUDED.battery_pct, cur.battery_pct)
                           ELSE cur.battery_pct END,
        ts = greatest(cur.ts, EXCLUDED.ts),
        last_seen = greatest(cur.last_seen, EXCLUDED.last_seen),
        changed_xid = pg_current_xact_id()
    RETURNING 1
)
SELECT (SELECT count(*) FROM inserted) AS inserted, (SELECT count(*) FROM latest) AS devices
"""

# The fill cycles of a batch's containers, locked until the batch commits, so that the writer can
# advance them (citytel.collection.advance_cycle) without racing another batch. In id order, as
# every writer of container_latest locks, so that two batches cannot deadlock.
LOCK_CONTAINER_CYCLES = """
SELECT container_id, ts, fill_pct, cycle_started_at, cycle_start_fill_pct, last_cycle_rate_pct_h
FROM container_latest
WHERE container_id = ANY($1::text[])
ORDER BY container_id
FOR UPDATE
"""

# Health events are history in device_events and, for the latest state, a sign of life and a
# battery level: they never touch fill or occupancy.
STORE_EVENTS = """
WITH batch AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::float8[],
                         $6::float8[], $7::text[], $8::bigint[], $9::timestamptz[])
        AS e(device_kind, device_id, ts, event, battery_pct, temperature_c, detail, f_cnt,
             received_at)
), inserted AS (
    INSERT INTO device_events AS cur
        (device_kind, device_id, ts, event, battery_pct, temperature_c, detail, f_cnt, received_at)
    SELECT * FROM batch
    ON CONFLICT (device_kind, device_id, ts, event) DO NOTHING
    RETURNING device_kind, device_id, ts, battery_pct, received_at
), newest AS (
    SELECT DISTINCT ON (device_kind, device_id) device_kind, device_id, battery_pct,
           max(received_at) OVER (PARTITION BY device_kind, device_id) AS last_seen
    FROM inserted
    ORDER BY device_kind, device_id, (battery_pct IS NULL), ts DESC
), containers AS (
    INSERT INTO container_latest AS cur (container_id, battery_pct, last_seen)
    SELECT device_id, battery_pct, last_seen FROM newest WHERE device_kind = 'waste'
    ORDER BY device_id
    ON CONFLICT (container_id) DO UPDATE SET
        battery_pct = coalesce(EXCLUDED.battery_pct, cur.battery_pct),
        last_seen = greatest(cur.last_seen, EXCLUDED.last_seen),
        changed_xid = pg_current_xact_id()
    RETURNING 1
), spots AS (
    INSERT INTO spot_latest AS cur (spot_id, battery_pct, last_seen)
    SELECT device_id, battery_pct, last_seen FROM newest WHERE device_kind = 'parking'
    ORDER BY device_id
    ON CONFLICT (spot_id) DO UPDATE SET
        battery_pct = coalesce(EXCLUDED.battery_pct, cur.battery_pct),
        last_seen = greatest(cur.last_seen, EXCLUDED.last_seen),
        changed_xid = pg_current_xact_id()
    RETURNING 1
)
SELECT count(*) FROM inserted
"""

# The registry entry behind each LoRaWAN device, by DevEUI or by network device id.
RESOLVE_SENSORS = """
SELECT s.dev_eui, s.network_device_id, s.model,
       coalesce(s.container_id, s.spot_id) AS device_id,
       CASE WHEN s.container_id IS NOT NULL THEN 'waste' ELSE 'parking' END AS device_kind,
       c.depth_mm, c.full_mark_mm,
       g.id AS gateway_id, g.lorawan_application
FROM sensors s
LEFT JOIN containers c ON c.id = s.container_id
LEFT JOIN parking_spots p ON p.id = s.spot_id
JOIN gateways g ON g.id = coalesce(c.gateway_id, p.gateway_id)
WHERE s.dev_eui = ANY($1::text[]) OR s.network_device_id = ANY($2::text[])
"""

REGISTERED_APPLICATIONS = """
SELECT lorawan_application FROM gateways WHERE lorawan_application = ANY($1::text[])
"""

STORE_DEAD_LETTERS = """
INSERT INTO dead_letters AS cur
    (topic, payload, payload_sha256, payload_bytes, reason, detail, first_received_at,
     last_received_at, times_received)
SELECT topic, payload, payload_sha256, payload_bytes, reason, detail, received_at, received_at,
       times
FROM unnest($1::text[], $2::bytea[], $3::bytea[], $4::bigint[], $5::text[], $6::text[],
            $7::timestamptz[], $8::integer[])
    AS d(topic, payload, payload_sha256, payload_bytes, reason, detail, received_at, times)
ON CONFLICT (topic, payload_sha256) DO UPDATE SET
    times_received = cur.times_received + EXCLUDED.times_received,
    last_received_at = greatest(cur.last_received_at, EXCLUDED.last_received_at),
    reason = EXCLUDED.reason,
    detail = EXCLUDED.detail
"""
