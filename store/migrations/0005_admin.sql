-- The admin API: indexes behind its list queries, secret rotation with a grace period, and bulk replay jobs.

-- Events listed newest first by id (UUIDv7: time-ordered), with or without a source filter.
CREATE INDEX events_source_id ON events (source_id, id);
CREATE INDEX events_type ON events (type, id) WHERE type IS NOT NULL;
-- Deliveries of a destination by state (dead-letter listing, retry-all, cancel-all, health backlog).
CREATE INDEX deliveries_destination_state ON deliveries (destination_id, state, created_at);
-- Attempts in a recent window (destination health).
CREATE INDEX attempts_started ON attempts (started_at);

-- Sources: while an HMAC secret rotates, the previous one is accepted until `previous_secret_until`.
ALTER TABLE sources ADD COLUMN previous_secret text;
ALTER TABLE sources ADD COLUMN previous_secret_until timestamptz;

-- Destinations: rotated-out signing secrets, `[{"secret": "whsec_…", "until": "<timestamptz>"}]`. They still sign
-- (beside `signing_secrets`) until `until`; the admin task removes them after that and notifies every node.
ALTER TABLE destinations ADD COLUMN retiring_secrets jsonb NOT NULL DEFAULT '[]';

-- Bulk replay: one row per job, run by the admin task of whichever node claims it.
CREATE TABLE replay_jobs (
    id              uuid PRIMARY KEY,
    source_id       uuid NOT NULL REFERENCES sources (id),
    from_time       timestamptz NOT NULL,
    to_time         timestamptz NOT NULL,
    filter          text,
    destinations    uuid[],
    status          text NOT NULL DEFAULT 'queued'
                    CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    cancel_requested boolean NOT NULL DEFAULT false,
    -- Last event id handled: a job taken over after a crash resumes after it.
    cursor_id       uuid,
    events_scanned  bigint NOT NULL DEFAULT 0,
    events_matched  bigint NOT NULL DEFAULT 0,
    deliveries_created bigint NOT NULL DEFAULT 0,
    error           text,
    owner           text,
    heartbeat_at    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX replay_jobs_open ON replay_jobs (created_at) WHERE status IN ('queued', 'running');
