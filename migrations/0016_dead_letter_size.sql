-- Dead letters stay small: a payload over 64 KiB keeps only its first 64 KiB, with its full
-- size; payload_sha256 stays the hash of the whole payload, so a redelivered oversized message
-- still counts on its own row. A truncated letter cannot be replayed (storage/dead_letters.py).
-- The table's grants (0012_roles.sql) cover the new columns.

ALTER TABLE dead_letters ADD COLUMN payload_bytes bigint;
UPDATE dead_letters SET payload_bytes = length(payload);
UPDATE dead_letters SET payload = substring(payload FROM 1 FOR 65536)
WHERE length(payload) > 65536;
ALTER TABLE dead_letters ALTER COLUMN payload_bytes SET NOT NULL;

-- A writer that does not give the size (an operator's own INSERT) stores a whole payload.
CREATE FUNCTION dead_letter_size() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.payload_bytes := coalesce(NEW.payload_bytes, length(NEW.payload));
    RETURN NEW;
END
$$;
CREATE TRIGGER dead_letter_size BEFORE INSERT ON dead_letters
    FOR EACH ROW EXECUTE FUNCTION dead_letter_size();
ALTER TABLE dead_letters ADD COLUMN payload_truncated boolean
    GENERATED ALWAYS AS (length(payload) < payload_bytes) STORED;
