-- An attempt carries the destination it was made to (ADR-0030), so that the admin API's windows of attempts per
-- destination (`GET /stats`, a destination's health) read the window's attempt rows and nothing else. Joined to
-- `deliveries` by id alone, which cannot prune that table's partitions, the planner hashed every delivery of every day
-- whenever it expected a few hundred attempts (a window reaching across midnight UTC, for one).
--
-- Nullable and without a default: adding it rewrites nothing. Attempts written before it (or by a node not yet
-- upgraded) hold NULL; the windows count those through their delivery, in a branch of their own, until they have
-- left the windows (a week at most after the last node is upgraded).
ALTER TABLE attempts ADD COLUMN destination_id uuid;
