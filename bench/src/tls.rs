//! TLS for the bench's HTTPS receivers: a CA and a server certificate for `127.0.0.1` and `localhost` generated for
//! one run (hookgate trusts the CA through the destination's `tls.ca_file`), or a certificate and key read from PEM
//! files (`hookgate-bench sink --tls-cert … --tls-key …`).

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

/// A CA made for one run and a server configuration whose certificate it signed.
pub struct RunPki {
    /// The CA certificate (PEM) to trust.
    pub ca_pem: String,
    pub server: ServerConfig,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server configuration presenting `chain` with `key` (TLS 1.2 and 1.3, HTTP/1.1).
pub fn server_config(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> anyhow::Result<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the server certificate and key do not go together")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Generates a CA and a server certificate for `127.0.0.1` and `localhost`.
pub fn generate() -> anyhow::Result<RunPki> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name.push(DnType::CommonName, "hookgate-bench run CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key)?;
    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(vec!["localhost".to_owned()])?;
    leaf.subject_alt_names.push(SanType::IpAddress([127, 0, 0, 1].into()));
    leaf.distinguished_name.push(DnType::CommonName, "hookgate-bench receiver");
    let leaf = leaf.signed_by(&key, &ca_cert, &ca_key)?;
    let chain = vec![leaf.der().clone()];
    let key = PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(RunPki { ca_pem: ca_cert.pem(), server: server_config(chain, key)? })
}

/// A server configuration from PEM files: the certificate chain (leaf first) and its private key.
pub fn from_files(cert: &Path, key: &Path) -> anyhow::Result<ServerConfig> {
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: not a PEM certificate chain", cert.display()))?;
    anyhow::ensure!(!chain.is_empty(), "{}: no certificate", cert.display());
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| format!("{}: no private key", key.display()))?;
    server_config(chain, key)
}
