-- Least privilege: the ingest workers and the API connect as roles of their own, never as the
-- owner of the schema (the role `citytel migrate` runs as, which also creates extensions).
--
-- Every grant names its tables: a table added by a later migration is readable by nobody but
-- its owner until a migration grants it, so a new table of secrets (API keys, say) is not
-- exposed to ingest or the API by default. Roles are cluster-wide: an existing role is kept.
-- `citytel migrate` sets their passwords from CITYTEL_DATABASE_INGEST_PASSWORD and
-- CITYTEL_DATABASE_API_PASSWORD, and grants the TimescaleDB aggregates where they exist.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'citytel_ingest') THEN
        CREATE ROLE citytel_ingest LOGIN;
    END IF;
    -- NOINHERIT: the API holds only its own grants; a dead-letter replay borrows ingest's
    -- writes for its transaction with SET LOCAL ROLE (storage/dead_letters.py).
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'citytel_api') THEN
        CREATE ROLE citytel_api LOGIN NOINHERIT;
    END IF;
END
$$;

GRANT citytel_ingest TO citytel_api;
GRANT USAGE ON SCHEMA public TO citytel_ingest, citytel_api;

-- Ingest: read the registry, write readings, latest state, health events and dead letters.
-- Gateways: never their password hashes, which only the owner (`citytel gateways`) handles.
GRANT SELECT ON containers, parking_spots, sensors TO citytel_ingest;
GRANT SELECT (id, enabled, lorawan_application, last_seen_at) ON gateways TO citytel_ingest;
GRANT UPDATE (last_seen_at) ON gateways TO citytel_ingest;
GRANT SELECT, INSERT ON waste_readings, parking_readings, device_events TO citytel_ingest;
GRANT SELECT, INSERT, UPDATE ON container_latest, spot_latest, dead_letters TO citytel_ingest;

-- API: read what it serves; lock and delete the dead letters a replay resolves.
GRANT SELECT ON containers, parking_spots, sensors, waste_readings, parking_readings,
    container_latest, spot_latest, dead_letters, device_events, schema_migrations
    TO citytel_api;
GRANT SELECT (id, name, enabled, lorawan_application, created_at, last_seen_at) ON gateways
    TO citytel_api;
GRANT UPDATE, DELETE ON dead_letters TO citytel_api;
