-- The event's type (a header, a JSON pointer into the body, or the CloudEvents `type`), when its source names one.
ALTER TABLE events ADD COLUMN type text;

-- Per-source options beyond verification and idempotency: event type extraction, dedupe window, CloudEvents mode
-- and the abuse-protection handshake's allowed origins and rate.
ALTER TABLE sources ADD COLUMN options jsonb NOT NULL DEFAULT '{}';
