-- Bulk replay jobs are fenced like delivery leases: taking a job (queued, or running with a stale heartbeat) sets a
-- new random lease_id, and every batch, heartbeat and final status update of the job applies only while the row
-- still carries the lease_id its runner took. A node whose job was taken over rolls its batch back and stops.
ALTER TABLE replay_jobs ADD COLUMN lease_id uuid;
