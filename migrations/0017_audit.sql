-- Provisioning over HTTP (admin scope) and its audit trail.
--
-- Every change the API makes to the registry (containers, spots, their sensors, gateways) writes
-- one row here in the same transaction as the change: who (the API key's name), what, on which
-- object, and the object before and after as JSON. The API may add rows and read them, never
-- change or delete one.

CREATE TABLE audit (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT now(),
    actor        text NOT NULL,
    action       text NOT NULL,
    object_kind  text NOT NULL,
    object_id    text,
    before       jsonb,
    after        jsonb
);

GRANT SELECT, INSERT ON audit TO citytel_api;

-- Provisioning: the API creates, updates and deletes containers and spots and binds their
-- sensors, as `citytel fleet import` does. A device's latest state and sensor go with it
-- (ON DELETE CASCADE, which needs no grant of its own); its readings stay.
GRANT INSERT, UPDATE, DELETE ON containers, parking_spots TO citytel_api;
GRANT INSERT, DELETE ON sensors TO citytel_api;

-- Gateways: the API adds and disables them and writes the broker's password file, which holds
-- every enabled gateway's password hash. Those hashes are of 192-bit random passwords; the API
-- never shows them. Ingest's grants are unchanged.
GRANT INSERT ON gateways TO citytel_api;
GRANT SELECT (password_hash, credential_version) ON gateways TO citytel_api;
GRANT UPDATE (enabled, password_hash, credential_version, updated_at) ON gateways TO citytel_api;
