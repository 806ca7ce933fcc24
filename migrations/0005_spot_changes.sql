-- Change tracking for the API's live view of free spots (src/citytel/api/live_spots.py).
--
-- Every write to a spot's registry entry or latest state records the id of the transaction that
-- made it. An API process that has read everything visible to a snapshot S then asks only for
-- rows whose changed_xid >= xmin(S): any transaction S could not see was either running when S
-- was taken or started after it, so its xid is at least xmin(S). Nothing committed later is
-- missed, however long its transaction ran.
--
-- spot_latest.changed_xid is deliberately not indexed: an index on a column that every update
-- changes would stop those updates from being HOT updates, and that cost ingestion about a tenth
-- of its write rate when measured. A refresh scans spot_latest instead (a few milliseconds for
-- 50,000 spots). The registry changes rarely, so its index costs nothing that matters.

ALTER TABLE parking_spots ADD COLUMN changed_xid xid8 NOT NULL DEFAULT pg_current_xact_id();
ALTER TABLE spot_latest ADD COLUMN changed_xid xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX parking_spots_changed_idx ON parking_spots (changed_xid);
