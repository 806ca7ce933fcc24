-- API keys: a name, the scopes it grants, and the SHA-256 of the key, never the key itself (the
-- key is shown once, when it is created). Keys are 256 random bits, so a plain hash is enough:
-- nothing can be guessed from it. A revoked key stays listed, and its name stays taken.

CREATE TABLE api_keys (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
    scopes       text[] NOT NULL CHECK (cardinality(scopes) > 0),
    key_sha256   bytea NOT NULL UNIQUE CHECK (octet_length(key_sha256) = 32),
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);
