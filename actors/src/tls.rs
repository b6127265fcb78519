//! TLS for outbound deliveries (rustls 0.23 over ring): the trust roots every destination shares
//! (`delivery.tls_roots`), a destination's own TLS material (extra CA certificates, a client certificate and key for
//! mutual TLS) checked when it is set and turned into a `ClientConfig`, and the reason a handshake failed. The
//! datastores' TLS (`crate::pg_tls`, Redis's `rediss://`) reads its CA files and the system's roots with the helpers
//! here.
//!
//! TLS 1.2 and 1.3 only, server names from the URL's host (SNI, and the name the certificate must carry: hostname
//! verification is always on), ALPN `http/1.1`. The handshake runs over the connection the SSRF guard opened
//! (`crate::ssrf::guarded_client`), so it only ever reaches vetted addresses.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use hookgate_core::catalog::{DestinationTls, TlsFieldError};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::{AlertDescription, CertificateError, ClientConfig, RootCertStore};
use secrecy::ExposeSecret;
use serde::Deserialize;

/// Which CA certificates every destination trusts (`delivery.tls_roots`); a destination's `ca` adds to them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsRoots {
    /// Mozilla's roots, built in (webpki-roots).
    Webpki,
    /// The operating system's store (rustls-native-certs: `/etc/ssl/certs`, `SSL_CERT_FILE`, `SSL_CERT_DIR`).
    Native,
    /// Both.
    #[default]
    Both,
}

/// Installs ring as the process's rustls crypto provider (once; later calls change nothing).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The process's crypto provider, ring when none was installed yet.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default().cloned().unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// The names a caller's form gives the three TLS fields, for its error messages: `("ca_file", "cert_file",
/// "key_file")` in the configuration file, `("ca_pem", "cert_pem", "key_pem")` in the admin API.
pub type FieldNames<'a> = (&'a str, &'a str, &'a str);

/// The trust roots all destinations share, and the client configuration of destinations without TLS settings of
/// their own. Loaded once at start; cheap to clone.
#[derive(Clone)]
pub struct OutboundTls {
    roots: Arc<RootCertStore>,
    shared: Arc<ClientConfig>,
}

impl OutboundTls {
    /// Loads the roots `which` names. `native` fails when the system store has no usable certificate; with `both`
    /// an empty system store only logs a warning.
    pub fn load(which: TlsRoots) -> anyhow::Result<Self> {
        let mut store = RootCertStore::empty();
        if matches!(which, TlsRoots::Webpki | TlsRoots::Both) {
            store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        if matches!(which, TlsRoots::Native | TlsRoots::Both) {
            let (added, errors) = add_system_roots(&mut store);
            if added == 0 {
                if which == TlsRoots::Native {
                    anyhow::bail!(
                        "delivery.tls_roots = \"native\": the system certificate store has no usable CA certificate{}",
                        if errors.is_empty() { String::new() } else { format!(" ({})", errors.join("; ")) }
                    );
                }
                tracing::warn!(
                    message = "No CA certificate in the system store; HTTPS destinations trust the built-in roots.",
                    errors = %errors.join("; ")
                );
            }
        }
        Self::with_roots(store)
    }

    /// No shared roots: for checking a destination's own material (`check`) without reading the system store.
    pub fn for_checks() -> anyhow::Result<Self> {
        Self::with_roots(RootCertStore::empty())
    }

    /// These roots and nothing else (tests trust no public CA).
    pub fn with_roots(store: RootCertStore) -> anyhow::Result<Self> {
        let roots = Arc::new(store);
        let shared = build(&roots, None, None).context("Failed to build the TLS client configuration")?;
        Ok(Self { roots, shared })
    }

    /// The configuration of destinations without TLS settings of their own.
    pub fn shared(&self) -> Arc<ClientConfig> {
        self.shared.clone()
    }

    /// The configuration of a destination with TLS settings of its own: the shared roots plus its CA
    /// certificates, and its client certificate. Errors name the field at fault with `names`.
    pub fn for_destination(
        &self,
        tls: &DestinationTls,
        names: FieldNames<'_>,
    ) -> Result<Arc<ClientConfig>, TlsFieldError> {
        tls.check_pairing(names)?;
        let extra = tls.ca_pem.as_deref().map(|pem| certificates(pem, names.0)).transpose()?;
        let client = match (&tls.cert_pem, &tls.key_pem) {
            (Some(cert), Some(key)) => Some(client_identity(cert, key.expose_secret(), names)?),
            _ => None,
        };
        build(&self.roots, extra, client).map_err(|e| TlsFieldError::new(names.0, e.to_string()))
    }
}

fn build(
    roots: &RootCertStore,
    extra: Option<Vec<CertificateDer<'static>>>,
    client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<Arc<ClientConfig>, rustls::Error> {
    let mut store = roots.clone();
    for cert in extra.into_iter().flatten() {
        store.add(cert)?;
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(store);
    let mut config = match client {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Adds the operating system's CA certificates (rustls-native-certs: `/etc/ssl/certs`, `SSL_CERT_FILE`,
/// `SSL_CERT_DIR`) to `store`: how many were usable, and what could not be read.
pub fn add_system_roots(store: &mut RootCertStore) -> (usize, Vec<String>) {
    let found = rustls_native_certs::load_native_certs();
    let errors = found.errors.iter().map(|e| e.to_string()).collect();
    let (added, _ignored) = store.add_parsable_certificates(found.certs);
    (added, errors)
}

/// Every certificate of a PEM bundle (at least one), each a parsable X.509 certificate; the error says why not.
pub fn pem_certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("unreadable PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate (-----BEGIN CERTIFICATE-----) in the PEM text".into());
    }
    for (i, cert) in certs.iter().enumerate() {
        x509_parser::parse_x509_certificate(cert)
            .map_err(|e| format!("certificate {} is not a valid X.509 certificate: {e}", i + 1))?;
    }
    Ok(certs)
}

/// The CA certificates of a PEM file (the datastores' `sslrootcert` and `redis.tls_ca_file`), checked like
/// [`pem_certificates`]; the error names the file.
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    pem_certificates(&pem).map_err(|e| format!("{}: {e}", path.display()))
}

/// [`pem_certificates`], its error naming `field`.
fn certificates(pem: &str, field: &str) -> Result<Vec<CertificateDer<'static>>, TlsFieldError> {
    pem_certificates(pem).map_err(|e| TlsFieldError::new(field, e))
}

/// The client certificate chain and its key, checked to belong together.
fn client_identity(
    cert_pem: &str,
    key_pem: &str,
    names: FieldNames<'_>,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsFieldError> {
    let chain = certificates(cert_pem, names.1)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| {
        TlsFieldError::new(names.2, format!("no private key in the PEM text (PKCS#8, PKCS#1 or SEC1 expected): {e}"))
    })?;
    let signing = provider()
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| TlsFieldError::new(names.2, format!("not a usable private key: {e}")))?;
    match CertifiedKey::new(chain.clone(), signing).keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(TlsFieldError::new(
                names.2,
                format!("the private key does not match the certificate in {}", names.1),
            ))
        }
        // The key cannot tell its public half: nothing to compare, the server will decide.
        Err(_) => {}
    }
    Ok((chain, key))
}

/// What the admin API shows of a client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    pub subject: String,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
}

/// The first certificate of a PEM bundle, described; `None` when there is none or it cannot be read.
pub fn describe_certificate(pem: &str) -> Option<CertificateInfo> {
    let der = CertificateDer::pem_slice_iter(pem.as_bytes()).next()?.ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    let validity = cert.validity();
    Some(CertificateInfo {
        subject: cert.subject().to_string(),
        not_before: DateTime::from_timestamp(validity.not_before.timestamp(), 0)?,
        not_after: DateTime::from_timestamp(validity.not_after.timestamp(), 0)?,
    })
}

/// Checks a destination's TLS material as it is set (configuration file, admin API): every field readable PEM, a
/// client certificate with its matching key, the client certificate valid at `now`, and a configuration rustls
/// accepts. The error names the field at fault with `names`.
pub fn check(
    outbound: &OutboundTls,
    tls: &DestinationTls,
    names: FieldNames<'_>,
    now: SystemTime,
) -> Result<(), TlsFieldError> {
    outbound.for_destination(tls, names)?;
    if let Some(cert) = &tls.cert_pem {
        let info = describe_certificate(cert)
            .ok_or_else(|| TlsFieldError::new(names.1, "the client certificate's validity cannot be read"))?;
        let now: DateTime<Utc> = now.into();
        if info.not_after < now {
            return Err(TlsFieldError::new(names.1, format!("the client certificate expired at {}", info.not_after)));
        }
        if info.not_before > now {
            return Err(TlsFieldError::new(
                names.1,
                format!("the client certificate is not valid before {}", info.not_before),
            ));
        }
    }
    Ok(())
}

/// Why a handshake failed, in words an operator reads in the attempt row: `unknown issuer`, `certificate
/// expired`, `certificate not valid yet`, `name mismatch`, `client certificate required`, `client certificate
/// refused`, or `handshake failure`.
pub fn handshake_reason(e: &rustls::Error) -> &'static str {
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => "unknown issuer",
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "certificate expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => "certificate not valid yet",
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => "name mismatch",
            _ => "invalid certificate",
        },
        rustls::Error::AlertReceived(alert) => match alert {
            AlertDescription::CertificateRequired => "client certificate required",
            AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnknownCA
            | AlertDescription::AccessDenied => "client certificate refused",
            _ => "handshake failure",
        },
        _ => "handshake failure",
    }
}

/// The rustls error inside an I/O error (tokio-rustls wraps them so), if any.
pub fn rustls_error(io: &std::io::Error) -> Option<&rustls::Error> {
    io.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: FieldNames<'static> = ("ca_pem", "cert_pem", "key_pem");

    fn outbound() -> OutboundTls {
        install_crypto_provider();
        OutboundTls::with_roots(RootCertStore::empty()).unwrap()
    }

    #[test]
    fn unreadable_material_is_refused_naming_the_field() {
        let out = outbound();
        let bad_ca = DestinationTls { ca_pem: Some("not pem".into()), ..Default::default() };
        let err = check(&out, &bad_ca, NAMES, SystemTime::now()).unwrap_err();
        assert_eq!(err.field, "ca_pem", "{err}");
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let bad_cert = DestinationTls {
            cert_pem: Some(garbage.into()),
            key_pem: Some("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".to_owned().into()),
            ..Default::default()
        };
        let err = check(&out, &bad_cert, NAMES, SystemTime::now()).unwrap_err();
        assert_eq!(err.field, "cert_pem", "{err}");
        assert!(err.to_string().starts_with("tls.cert_pem: "), "{err}");
    }

    #[test]
    fn handshake_reasons_name_the_cause() {
        let e = |c| rustls::Error::InvalidCertificate(c);
        assert_eq!(handshake_reason(&e(CertificateError::UnknownIssuer)), "unknown issuer");
        assert_eq!(handshake_reason(&e(CertificateError::Expired)), "certificate expired");
        assert_eq!(handshake_reason(&e(CertificateError::NotValidForName)), "name mismatch");
        let alert = rustls::Error::AlertReceived(AlertDescription::CertificateRequired);
        assert_eq!(handshake_reason(&alert), "client certificate required");
        assert_eq!(handshake_reason(&rustls::Error::HandshakeNotComplete), "handshake failure");
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, e(CertificateError::UnknownIssuer));
        assert!(matches!(rustls_error(&io), Some(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer))));
    }
}
