-- The admin API's recent windows (events per source, attempts per destination) are read through the primary keys'
-- UUIDv7 ids instead of indexes of their own (ADR-0024). `events_source_received` and `attempts_started` were read by
-- nothing else, and every ingested event and every attempt paid an index entry in each on the hot path.
--
-- hookgate_v7_floor(ts) is the smallest UUIDv7 of the millisecond `ts` falls in: every UUIDv7 generated at `ts` or
-- later sorts at or after it (uuid order is byte order, and a UUIDv7 starts with its 48-bit Unix time in ms).
CREATE FUNCTION hookgate_v7_floor(ts timestamptz) RETURNS uuid
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT (lpad(to_hex(greatest(floor(extract(epoch FROM ts) * 1000), 0)::bigint), 12, '0')
                  || '00000000000000000000')::uuid $$;

DROP INDEX events_source_received;
DROP INDEX attempts_started;
