-- Destinations: ed25519 keys (`whsk_…`, Standard Webhooks `v1a`) that sign each delivery beside or instead of the
-- HMAC secrets. Secrets like those: the admin API shows only their public keys.
ALTER TABLE destinations ADD COLUMN signing_keys jsonb NOT NULL DEFAULT '[]';
