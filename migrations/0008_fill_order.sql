-- The dispatch list (GET /v1/containers?min_fill_pct=...) walks containers fullest first and
-- stops after a page: this index is that order, so a page costs its own rows, not every match.
-- It replaces the fill-only index of 0002, which could not give the order of ties.

CREATE INDEX container_latest_fill_order_idx ON container_latest (fill_pct DESC, container_id);
DROP INDEX container_latest_fill_idx;
