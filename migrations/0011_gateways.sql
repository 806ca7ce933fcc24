-- Gateways: who may report which device.
--
-- Every container and spot is bound to one gateway; ingest refuses (wrong_gateway) a native
-- reading published under another gateway's topic segment. A LoRaWAN device is bound through
-- its gateway's network-server application instead: an uplink of another application is
-- refused the same way. The broker's password and ACL files are generated from this table
-- (`citytel gateways`), so password_hash is in Mosquitto's own format (PBKDF2-SHA512, $7$).
--
-- Devices registered before gateways existed are bound to the gateway 'default', created here
-- without a password: until it is given one (`citytel gateways rotate default`) nobody can
-- publish for them, and their fleet entries can name their real gateway at the next import.

CREATE TABLE gateways (
    id                   text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$'),
    name                 text NOT NULL DEFAULT '',
    enabled              boolean NOT NULL DEFAULT true,
    lorawan_application  text UNIQUE CHECK (lorawan_application <> ''),
    password_hash        text,
    credential_version   integer NOT NULL DEFAULT 0,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    last_seen_at         timestamptz
);

INSERT INTO gateways (id, name) VALUES ('default', 'devices imported without a gateway');

ALTER TABLE containers
    ADD COLUMN gateway_id text NOT NULL DEFAULT 'default' REFERENCES gateways (id);
ALTER TABLE parking_spots
    ADD COLUMN gateway_id text NOT NULL DEFAULT 'default' REFERENCES gateways (id);
CREATE INDEX containers_gateway_idx ON containers (gateway_id);
CREATE INDEX parking_spots_gateway_idx ON parking_spots (gateway_id);
