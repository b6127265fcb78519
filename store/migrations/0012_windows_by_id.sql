-- The admin API's recent windows (events per source, attempts per destination) are read through the rows' UUIDv7
-- ids instead of indexes of their own (ADR-0024), and so are a time range of one source's events (the event list's
-- `from`/`to`, a bulk replay's batches), which the planner could serve from `events_source_received`. Nothing else read
-- `events_source_received` or `attempts_started`, and every ingested event and every attempt paid an entry in each.
--
-- hookgate_v7_floor(ts) is the smallest UUIDv7 of the millisecond `ts` falls in: every UUIDv7 generated at `ts` or
-- later sorts at or after it (uuid order is byte order, and a UUIDv7 starts with its 48-bit Unix time in ms).
CREATE FUNCTION hookgate_v7_floor(ts timestamptz) RETURNS uuid
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT (lpad(to_hex(greatest(floor(extract(epoch FROM ts AT TIME ZONE 'UTC') * 1000), 0)::bigint), 12, '0')
                  || '00000000000000000000')::uuid $$;

DROP INDEX events_source_received;
DROP INDEX attempts_started;
