-- Sources: producers that may POST to /ingest/{slug}. Declared in the TOML config (declared = true) or created
-- through the admin API.
CREATE TABLE sources (
    id              uuid PRIMARY KEY,
    slug            text NOT NULL UNIQUE,
    max_body_bytes  integer NOT NULL CHECK (max_body_bytes > 0),
    require_json    boolean NOT NULL DEFAULT false,
    idempotency     jsonb NOT NULL,
    verification    jsonb NOT NULL,
    enabled         boolean NOT NULL DEFAULT true,
    declared        boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Events: exactly what was received. The id is a UUIDv7, so primary-key order is arrival order.
CREATE TABLE events (
    id               uuid PRIMARY KEY,
    source_id        uuid NOT NULL REFERENCES sources (id),
    idempotency_key  text NOT NULL,
    received_at      timestamptz NOT NULL,
    content_type     text,
    headers          jsonb NOT NULL,
    body             bytea NOT NULL,
    CONSTRAINT events_source_idempotency_key UNIQUE (source_id, idempotency_key)
);
