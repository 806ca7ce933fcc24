-- Ingest checks at start-up that the database is migrated (storage/migrate.py,
-- require_migrated), which reads schema_migrations: without this, `citytel ingest` under its
-- own role could not start.

GRANT SELECT ON schema_migrations TO citytel_ingest;
