-- citytel: requires timescaledb
-- citytel: no-transaction
--
-- Applied only where the timescaledb extension can be loaded; elsewhere citytel runs on the
-- tables of 0002 as plain PostgreSQL tables and `citytel migrate` says so. It is retried on each
-- `citytel migrate` until it has been applied, so installing TimescaleDB later upgrades in place.
-- No transaction: continuous aggregates cannot be created inside one. Every statement is
-- idempotent so that a run interrupted half-way can simply be repeated.
--
-- Compression and retention policies are not here: their intervals are settings, applied by
-- `citytel migrate` after the migrations (see storage/migrate.py).

CREATE EXTENSION IF NOT EXISTS timescaledb;

SELECT create_hypertable('waste_readings', 'ts',
    chunk_time_interval => INTERVAL '7 days', if_not_exists => TRUE, migrate_data => TRUE);
SELECT create_hypertable('parking_readings', 'ts',
    chunk_time_interval => INTERVAL '7 days', if_not_exists => TRUE, migrate_data => TRUE);

-- Segment by device: the queries read one device's history, and a device's rows then compress
-- together, ordered by time.
ALTER TABLE waste_readings SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'container_id',
    timescaledb.compress_orderby = 'ts DESC'
);
ALTER TABLE parking_readings SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'spot_id',
    timescaledb.compress_orderby = 'ts DESC'
);

CREATE MATERIALIZED VIEW IF NOT EXISTS waste_fill_hourly
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT container_id,
       time_bucket(INTERVAL '1 hour', ts) AS bucket,
       avg(fill_pct) AS mean_fill_pct,
       max(fill_pct) AS max_fill_pct,
       count(*) AS readings
FROM waste_readings
GROUP BY container_id, bucket
WITH NO DATA;

CREATE MATERIALIZED VIEW IF NOT EXISTS parking_occupancy_hourly
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT spot_id,
       time_bucket(INTERVAL '1 hour', ts) AS bucket,
       avg(occupied::int)::float8 AS occupied_ratio,
       count(*) AS readings
FROM parking_readings
GROUP BY spot_id, bucket
WITH NO DATA;

SELECT add_continuous_aggregate_policy('waste_fill_hourly',
    start_offset => INTERVAL '3 days', end_offset => INTERVAL '1 hour',
    schedule_interval => INTERVAL '30 minutes', if_not_exists => TRUE);
SELECT add_continuous_aggregate_policy('parking_occupancy_hourly',
    start_offset => INTERVAL '3 days', end_offset => INTERVAL '1 hour',
    schedule_interval => INTERVAL '30 minutes', if_not_exists => TRUE);
