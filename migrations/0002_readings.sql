-- Readings, the latest state of each device, and the dead-letter store.
--
-- Readings are keyed on (device, ts): a redelivered or duplicated reading is the same row, which
-- is what makes ingestion idempotent. The key includes ts so that it stays valid when
-- 0003_timescaledb turns these tables into hypertables partitioned on ts.

CREATE TABLE waste_readings (
    container_id   text NOT NULL,
    ts             timestamptz NOT NULL,
    fill_pct       double precision NOT NULL CHECK (fill_pct BETWEEN 0 AND 100),
    battery_pct    double precision CHECK (battery_pct BETWEEN 0 AND 100),
    temperature_c  double precision,
    received_at    timestamptz NOT NULL,
    PRIMARY KEY (container_id, ts)
);

CREATE TABLE parking_readings (
    spot_id      text NOT NULL,
    ts           timestamptz NOT NULL,
    occupied     boolean NOT NULL,
    battery_pct  double precision CHECK (battery_pct BETWEEN 0 AND 100),
    received_at  timestamptz NOT NULL,
    PRIMARY KEY (spot_id, ts)
);

-- One row per device, rewritten by every newer reading. The free space the fillfactor leaves on
-- each page lets PostgreSQL update these rows in place (HOT) instead of growing the indexes.
CREATE TABLE container_latest (
    container_id   text PRIMARY KEY REFERENCES containers (id) ON DELETE CASCADE,
    ts             timestamptz NOT NULL,
    fill_pct       double precision NOT NULL,
    battery_pct    double precision,
    temperature_c  double precision,
    last_seen      timestamptz NOT NULL
) WITH (fillfactor = 70);
CREATE INDEX container_latest_fill_idx ON container_latest (fill_pct DESC);

CREATE TABLE spot_latest (
    spot_id      text PRIMARY KEY REFERENCES parking_spots (id) ON DELETE CASCADE,
    ts           timestamptz NOT NULL,
    occupied     boolean NOT NULL,
    battery_pct  double precision,
    last_seen    timestamptz NOT NULL
) WITH (fillfactor = 70);

-- What could not become readings, byte for byte, with the reason. One row per distinct
-- (topic, payload): a redelivered message counts again instead of adding a row.
CREATE TABLE dead_letters (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic              text NOT NULL,
    payload            bytea NOT NULL,
    payload_sha256     bytea NOT NULL,
    reason             text NOT NULL,
    detail             text NOT NULL,
    first_received_at  timestamptz NOT NULL,
    last_received_at   timestamptz NOT NULL,
    times_received     integer NOT NULL DEFAULT 1,
    UNIQUE (topic, payload_sha256)
);
CREATE INDEX dead_letters_reason_idx ON dead_letters (reason, last_received_at DESC);
CREATE INDEX dead_letters_received_idx ON dead_letters (last_received_at DESC);
