-- Destinations: internal services that receive events.
CREATE TABLE destinations (
    id                uuid PRIMARY KEY,
    slug              text NOT NULL UNIQUE,
    url               text NOT NULL,
    timeout_ms        integer NOT NULL CHECK (timeout_ms > 0),
    max_in_flight     integer NOT NULL CHECK (max_in_flight > 0),
    rate_limit        double precision CHECK (rate_limit IS NULL OR rate_limit > 0),
    retry             jsonb NOT NULL,
    signing_secrets   jsonb NOT NULL DEFAULT '[]',
    fifo              boolean NOT NULL DEFAULT false,
    state             text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'paused', 'disabled')),
    disabled_reason   text,
    failing_since     timestamptz,
    declared          boolean NOT NULL DEFAULT false,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- Routes: which source's events go to which destination, with optional jq filter and transform.
CREATE TABLE routes (
    id              uuid PRIMARY KEY,
    slug            text NOT NULL UNIQUE,
    source_id       uuid NOT NULL REFERENCES sources (id),
    destination_id  uuid NOT NULL REFERENCES destinations (id),
    filter          text,
    transform       text,
    enabled         boolean NOT NULL DEFAULT true,
    declared        boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX routes_source ON routes (source_id) WHERE enabled;

-- Commit-independent creation order of deliveries, for FIFO destinations (a plain sequence rather than an identity
-- column, so that the table can be partitioned on PostgreSQL 15).
CREATE SEQUENCE deliveries_seq;

-- Deliveries: one per (event, route). `pending` rows with an unexpired lease are being attempted by lease_owner.
CREATE TABLE deliveries (
    id                uuid PRIMARY KEY,
    -- Creation order, for FIFO destinations (ids are time-based and nodes' clocks differ).
    seq               bigint NOT NULL DEFAULT nextval('deliveries_seq'),
    event_id          uuid NOT NULL REFERENCES events (id),
    route_id          uuid NOT NULL REFERENCES routes (id),
    destination_id    uuid NOT NULL REFERENCES destinations (id),
    state             text NOT NULL CHECK (state IN ('pending', 'delivered', 'dead', 'failed', 'cancelled')),
    attempts          integer NOT NULL DEFAULT 0,
    next_attempt_at   timestamptz NOT NULL DEFAULT now(),
    lease_owner       text,
    -- A new id per claim: a late result of an earlier claim never touches a newer lease.
    lease_id          uuid,
    lease_expires_at  timestamptz,
    payload           bytea,
    last_error        text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX deliveries_due ON deliveries (destination_id, next_attempt_at) WHERE state = 'pending';
CREATE INDEX deliveries_fifo ON deliveries (destination_id, seq) WHERE state = 'pending';
CREATE INDEX deliveries_leased ON deliveries (destination_id, lease_expires_at)
    WHERE state = 'pending' AND lease_expires_at IS NOT NULL;
CREATE INDEX deliveries_event ON deliveries (event_id);

-- Attempts: every HTTP attempt of a delivery, never updated.
CREATE TABLE attempts (
    id                uuid PRIMARY KEY,
    delivery_id       uuid NOT NULL REFERENCES deliveries (id),
    attempt           integer NOT NULL,
    node_id           text NOT NULL,
    started_at        timestamptz NOT NULL,
    status            integer,
    latency_ms        integer NOT NULL,
    response_headers  jsonb NOT NULL DEFAULT '{}',
    response_excerpt  bytea,
    error_kind        text,
    error             text
);
CREATE INDEX attempts_delivery ON attempts (delivery_id, attempt);
