-- The API checks keys on every request and manages them (admin scope): it reads them, creates
-- them, records their last use and revokes them. It never deletes one: a revoked key stays
-- listed. Ingest has no grant on this table.

GRANT SELECT, INSERT ON api_keys TO citytel_api;
GRANT UPDATE (last_used_at, revoked_at) ON api_keys TO citytel_api;
