-- Destinations: headers sent on every attempt, and their own TLS material (PEM text): extra trusted CA
-- certificates, and a client certificate with its private key for mutual TLS. The key is a secret like the
-- signing secrets: the admin API never shows it.
ALTER TABLE destinations ADD COLUMN headers jsonb NOT NULL DEFAULT '{}';
ALTER TABLE destinations ADD COLUMN tls_ca_pem text;
ALTER TABLE destinations ADD COLUMN tls_cert_pem text;
ALTER TABLE destinations ADD COLUMN tls_key_pem text;
ALTER TABLE destinations ADD CONSTRAINT destinations_tls_client_pair
    CHECK ((tls_cert_pem IS NULL) = (tls_key_pem IS NULL));
