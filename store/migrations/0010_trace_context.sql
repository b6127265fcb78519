-- Events: the trace context of the request that stored each one (its ingest span's, as a W3C traceparent), so
-- that every delivery attempt, on any node and however late, is a span of the event's trace. NULL for events stored
-- before it, or with tracing off and no producer context: their attempts use the trace the event id names.
ALTER TABLE events ADD COLUMN traceparent text;
