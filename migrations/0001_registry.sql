-- The registry: every waste container and parking spot citytel knows, where it is and what it is.
-- Readings for a device that is not registered here go to the dead-letter store.

CREATE EXTENSION IF NOT EXISTS postgis;

CREATE TABLE containers (
    id          text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$'),
    location    geography(Point, 4326) NOT NULL,
    zone        text NOT NULL CHECK (zone <> ''),
    capacity_l  integer NOT NULL CHECK (capacity_l > 0),
    depth_mm    integer NOT NULL CHECK (depth_mm > 0),
    waste_kind  text NOT NULL DEFAULT 'mixed',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX containers_location_idx ON containers USING gist (location);
CREATE INDEX containers_zone_idx ON containers (zone);

CREATE TABLE parking_spots (
    id          text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$'),
    location    geography(Point, 4326) NOT NULL,
    zone        text NOT NULL CHECK (zone <> ''),
    category    text NOT NULL DEFAULT 'standard',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX parking_spots_location_idx ON parking_spots USING gist (location);
CREATE INDEX parking_spots_zone_idx ON parking_spots (zone);
