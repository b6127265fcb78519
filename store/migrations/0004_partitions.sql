-- Retention by daily partitions: events, deliveries and attempts are partitioned by day, and the janitor drops whole
-- partitions past the retention age (cheap: no row-by-row delete, no vacuum debt).
--
-- A unique constraint on a partitioned table must include the partition key, so (source_id, idempotency_key) can no
-- longer be unique on `events` itself. Dedupe moves to `event_keys`, a small unpartitioned table whose primary key is
-- exactly (source_id, idempotency_key): PostgreSQL stays the truth about duplicates, and keys older than the dedupe
-- window are pruned in bounded batches.

CREATE TABLE event_keys (
    source_id        uuid NOT NULL,
    idempotency_key  text NOT NULL,
    event_id         uuid NOT NULL,
    received_at      timestamptz NOT NULL,
    PRIMARY KEY (source_id, idempotency_key)
);
CREATE INDEX event_keys_received ON event_keys (received_at);
INSERT INTO event_keys (source_id, idempotency_key, event_id, received_at)
SELECT source_id, idempotency_key, id, received_at FROM events;

-- Foreign keys into partitioned tables would need the partition key; rows are linked by id.
ALTER TABLE deliveries DROP CONSTRAINT deliveries_event_id_fkey;
ALTER TABLE attempts DROP CONSTRAINT attempts_delivery_id_fkey;

-- The old tables keep their data until it is copied; their index names are freed for the new tables.
ALTER INDEX events_pkey RENAME TO events_unpartitioned_pkey;
ALTER TABLE events RENAME CONSTRAINT events_source_idempotency_key TO events_unpartitioned_key;
ALTER INDEX deliveries_pkey RENAME TO deliveries_unpartitioned_pkey;
ALTER INDEX attempts_pkey RENAME TO attempts_unpartitioned_pkey;

-- events
ALTER TABLE events RENAME TO events_unpartitioned;
CREATE TABLE events (LIKE events_unpartitioned INCLUDING DEFAULTS) PARTITION BY RANGE (received_at);
ALTER TABLE events ADD PRIMARY KEY (id, received_at);
ALTER TABLE events ADD CONSTRAINT events_source_fkey FOREIGN KEY (source_id) REFERENCES sources (id);
CREATE INDEX events_source_received ON events (source_id, received_at);
CREATE TABLE events_default PARTITION OF events DEFAULT;

-- deliveries
ALTER TABLE deliveries RENAME TO deliveries_unpartitioned;
CREATE TABLE deliveries (LIKE deliveries_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (created_at);
ALTER TABLE deliveries ADD PRIMARY KEY (id, created_at);
ALTER TABLE deliveries ADD CONSTRAINT deliveries_route_fkey FOREIGN KEY (route_id) REFERENCES routes (id);
ALTER TABLE deliveries ADD CONSTRAINT deliveries_destination_fkey
    FOREIGN KEY (destination_id) REFERENCES destinations (id);
CREATE TABLE deliveries_default PARTITION OF deliveries DEFAULT;

-- attempts
ALTER TABLE attempts RENAME TO attempts_unpartitioned;
CREATE TABLE attempts (LIKE attempts_unpartitioned INCLUDING DEFAULTS) PARTITION BY RANGE (started_at);
ALTER TABLE attempts ADD PRIMARY KEY (id, started_at);
CREATE TABLE attempts_default PARTITION OF attempts DEFAULT;

-- Creates the daily partitions of events, deliveries and attempts from `from_day` to `days_ahead` days after today
-- (UTC days). Returns how many it created.
CREATE FUNCTION hookgate_ensure_partitions(from_day date, days_ahead int) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    d date;
    t text;
    created int := 0;
BEGIN
    FOR d IN SELECT generate_series(from_day, (now() AT TIME ZONE 'UTC')::date + days_ahead, interval '1 day')::date
    LOOP
        FOREACH t IN ARRAY ARRAY['events', 'deliveries', 'attempts'] LOOP
            IF to_regclass(format('%I', t || '_p' || to_char(d, 'YYYYMMDD'))) IS NULL THEN
                EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                               t || '_p' || to_char(d, 'YYYYMMDD'), t,
                               d::text || ' 00:00:00+00', (d + 1)::text || ' 00:00:00+00');
                created := created + 1;
            END IF;
        END LOOP;
    END LOOP;
    RETURN created;
END $$;

-- Drops the daily partitions whose whole day is before `before` (UTC). Returns how many it dropped.
CREATE FUNCTION hookgate_drop_partitions(before date) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    p record;
    dropped int := 0;
BEGIN
    FOR p IN
        SELECT c.relname FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        JOIN pg_class parent ON parent.oid = i.inhparent
        WHERE parent.relname IN ('events', 'deliveries', 'attempts')
          AND c.relname ~ '_p[0-9]{8}$'
          AND to_date(right(c.relname, 8), 'YYYYMMDD') < before
    LOOP
        EXECUTE format('DROP TABLE %I', p.relname);
        dropped := dropped + 1;
    END LOOP;
    RETURN dropped;
END $$;

SELECT hookgate_ensure_partitions((now() AT TIME ZONE 'UTC')::date - 1, 3);

INSERT INTO events SELECT * FROM events_unpartitioned;
INSERT INTO deliveries SELECT * FROM deliveries_unpartitioned;
INSERT INTO attempts SELECT * FROM attempts_unpartitioned;
DROP TABLE attempts_unpartitioned;
DROP TABLE deliveries_unpartitioned;
DROP TABLE events_unpartitioned;

CREATE INDEX deliveries_due ON deliveries (destination_id, next_attempt_at) WHERE state = 'pending';
CREATE INDEX deliveries_fifo ON deliveries (destination_id, seq) WHERE state = 'pending';
CREATE INDEX deliveries_leased ON deliveries (destination_id, lease_expires_at)
    WHERE state = 'pending' AND lease_expires_at IS NOT NULL;
CREATE INDEX deliveries_event ON deliveries (event_id);
CREATE INDEX attempts_delivery ON attempts (delivery_id, attempt);
ALTER SEQUENCE deliveries_seq OWNED BY deliveries.seq;
