-- Change tracking for the API's push stream (src/citytel/api/events.py): as for spots
-- (migrations/0005_spot_changes.sql), every write to a container's latest state records the id of
-- the transaction that made it, so that an API process reads only what a snapshot did not see.
--
-- Not indexed, for the reason 0005 gives: an index on a column every update changes would cost
-- the writes more than a scan of container_latest costs a refresh.

ALTER TABLE container_latest ADD COLUMN changed_xid xid8 NOT NULL DEFAULT pg_current_xact_id();
