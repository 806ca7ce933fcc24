-- Fill cycles, for forecasting when a container will be full (src/citytel/collection.py).
--
-- A cycle starts with a container's first fill reading and again each time it is emptied (a
-- reading more than 15 points below the one before). The latest state keeps where the current
-- cycle started and the mean fill rate of the cycle before it; storage/sql.py maintains them as
-- readings are stored. Existing containers start their first cycle at their next reading.

ALTER TABLE container_latest
    ADD COLUMN cycle_started_at timestamptz,
    ADD COLUMN cycle_start_fill_pct double precision,
    ADD COLUMN last_cycle_rate_pct_h double precision;
