-- LoRaWAN sensors: which sensor (DevEUI, network device id, model) sits on which container or
-- spot; frame counters kept with readings; health events (heartbeats, start-ups, a tilted or
-- blind level sensor, battery reports) that are not fill or occupancy readings.

CREATE TABLE sensors (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    container_id       text UNIQUE REFERENCES containers (id) ON DELETE CASCADE,
    spot_id            text UNIQUE REFERENCES parking_spots (id) ON DELETE CASCADE,
    model              text NOT NULL,
    dev_eui            text UNIQUE CHECK (dev_eui ~ '^[0-9A-F]{16}$'),
    network_device_id  text UNIQUE,
    CHECK ((container_id IS NULL) <> (spot_id IS NULL)),
    CHECK (dev_eui IS NOT NULL OR network_device_id IS NOT NULL)
);

-- The distance at which a container counts as full, when its sensor's profile default is wrong
-- for this container (a sensor mounted lower, a different lid).
ALTER TABLE containers ADD COLUMN full_mark_mm integer CHECK (full_mark_mm >= 0);

-- With the network's reception time as ts, a device's retransmission of a frame has a new ts but
-- the same frame counter: the counter is what recognises it.
ALTER TABLE waste_readings ADD COLUMN f_cnt bigint;
ALTER TABLE parking_readings ADD COLUMN f_cnt bigint;

-- A device that has only sent health messages so far has a last-seen time and a battery level,
-- but no measurement yet.
ALTER TABLE container_latest ALTER COLUMN ts DROP NOT NULL, ALTER COLUMN fill_pct DROP NOT NULL;
ALTER TABLE spot_latest ALTER COLUMN ts DROP NOT NULL, ALTER COLUMN occupied DROP NOT NULL;

CREATE TABLE device_events (
    device_kind    text NOT NULL CHECK (device_kind IN ('waste', 'parking')),
    device_id      text NOT NULL,
    ts             timestamptz NOT NULL,
    event          text NOT NULL,
    battery_pct    double precision CHECK (battery_pct BETWEEN 0 AND 100),
    temperature_c  double precision,
    detail         text NOT NULL DEFAULT '',
    f_cnt          bigint,
    received_at    timestamptz NOT NULL,
    PRIMARY KEY (device_kind, device_id, ts, event)
);
