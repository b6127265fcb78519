-- Deferred routing: a route whose filter or transform could not be evaluated in time at ingest (its time bound, or
-- its budget of runaway evaluations) is not failed: its delivery is stored `pending` with `needs_routing`, and the
-- Deliverer evaluates the route's programs again when the delivery is claimed. A time-out is never a verdict.
ALTER TABLE deliveries ADD COLUMN needs_routing boolean NOT NULL DEFAULT false;
