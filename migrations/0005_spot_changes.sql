-- Change tracking for the API's live index of free spots (src/citytel/api/live_spots.py).
--
-- Every write to a spot's registry entry or latest state records the id of the transaction that
-- made it. An API process that has read everything visible to a snapshot S then asks only for
-- rows whose changed_xid >= xmin(S): any transaction S could not see was either running when S
-- was taken or started after it, so its xid is at least xmin(S). Nothing committed later is
-- missed, however long its transaction ran, and nothing is read twice for long.
--
-- No index on changed_xid, on purpose: an index would stop the updates of spot_latest (several
-- per spot per hour) from being HOT updates, and scanning a few tens of thousands of narrow rows
-- twice a second costs the database less than that would.

ALTER TABLE parking_spots ADD COLUMN changed_xid xid8 NOT NULL DEFAULT pg_current_xact_id();
ALTER TABLE spot_latest ADD COLUMN changed_xid xid8 NOT NULL DEFAULT pg_current_xact_id();
