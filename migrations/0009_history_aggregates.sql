-- citytel: requires timescaledb
-- citytel: no-transaction
--
-- The history the API reports from: hourly and daily continuous aggregates of fill and
-- occupancy, filled from the history already there when they are created.
--
-- They replace the hourly aggregates of 0003, which were created empty and held averages: an
-- average of averages is not the average of a day. These hold sums and counts (sums as numeric,
-- which adds exactly), so any whole number of hours or days combines into the same answer the
-- raw readings give, to the last bit (see CONTAINER_BUCKETS and ZONE_OCCUPANCY in
-- src/citytel/storage/queries.py). The daily ones read the hypertables directly, so each can be
-- refreshed on its own.
--
-- WITH DATA materialises every bucket of the existing history on creation: adding TimescaleDB to
-- a database with readings gives the same buckets as the raw data. Real-time aggregation
-- (materialized_only = false) answers for the buckets not materialised yet from the raw readings,
-- so the latest hours are current. A reading that arrives late for a materialised bucket is
-- logged by TimescaleDB as an invalidation, and the refresh policy (storage/migrate.py, every 30
-- minutes, looking back over the retention period) re-materialises exactly those buckets.
-- Refresh and retention policies are settings, applied by `citytel migrate` after migrations.
--
-- Every statement can be repeated: a run interrupted half-way simply recreates the views.

DROP MATERIALIZED VIEW IF EXISTS waste_fill_hourly;
DROP MATERIALIZED VIEW IF EXISTS parking_occupancy_hourly;
DROP MATERIALIZED VIEW IF EXISTS waste_fill_daily;
DROP MATERIALIZED VIEW IF EXISTS parking_occupancy_daily;

CREATE MATERIALIZED VIEW waste_fill_hourly
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT container_id,
       time_bucket(INTERVAL '1 hour', ts) AS bucket,
       sum(fill_pct::numeric) AS fill_sum,
       min(fill_pct) AS min_fill_pct,
       max(fill_pct) AS max_fill_pct,
       count(*) AS readings,
       sum(battery_pct::numeric) AS battery_sum,
       count(battery_pct) AS battery_readings,
       sum(temperature_c::numeric) AS temperature_sum,
       count(temperature_c) AS temperature_readings
FROM waste_readings
GROUP BY container_id, bucket
WITH DATA;

CREATE MATERIALIZED VIEW waste_fill_daily
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT container_id,
       time_bucket(INTERVAL '1 day', ts) AS bucket,
       sum(fill_pct::numeric) AS fill_sum,
       min(fill_pct) AS min_fill_pct,
       max(fill_pct) AS max_fill_pct,
       count(*) AS readings,
       sum(battery_pct::numeric) AS battery_sum,
       count(battery_pct) AS battery_readings,
       sum(temperature_c::numeric) AS temperature_sum,
       count(temperature_c) AS temperature_readings
FROM waste_readings
GROUP BY container_id, bucket
WITH DATA;

CREATE MATERIALIZED VIEW parking_occupancy_hourly
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT spot_id,
       time_bucket(INTERVAL '1 hour', ts) AS bucket,
       sum(occupied::int) AS occupied_readings,
       count(*) AS readings
FROM parking_readings
GROUP BY spot_id, bucket
WITH DATA;

CREATE MATERIALIZED VIEW parking_occupancy_daily
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT spot_id,
       time_bucket(INTERVAL '1 day', ts) AS bucket,
       sum(occupied::int) AS occupied_readings,
       count(*) AS readings
FROM parking_readings
GROUP BY spot_id, bucket
WITH DATA;
