//! Certificates for the HTTPS tests, made per test with rcgen: a CA, server and client certificates signed by it, a
//! receiver's rustls configuration whose certificate the test can switch while it runs, and PEM files for the
//! configuration's `tls` fields.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};

use crate::helpers::TempConfig;

/// A certificate authority made for one test.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        Self { cert, key }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    pub fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// A certificate signed by this CA: for a server (`san`) or a client, valid now unless `expired`.
    pub fn issue(&self, san: SanType, usage: ExtendedKeyUsagePurpose, expired: bool) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, "hookgate test");
        params.subject_alt_names = vec![san];
        params.extended_key_usages = vec![usage];
        if expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    }

    pub fn server(&self) -> Leaf {
        self.issue(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)), ExtendedKeyUsagePurpose::ServerAuth, false)
    }

    pub fn client(&self, expired: bool) -> Leaf {
        self.issue(SanType::DnsName("client.test".try_into().unwrap()), ExtendedKeyUsagePurpose::ClientAuth, expired)
    }
}

pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
    pub key_der: Vec<u8>,
}

impl Leaf {
    pub fn certified(&self) -> Arc<CertifiedKey> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()));
        let signing = rustls::crypto::ring::default_provider().key_provider.load_private_key(key).unwrap();
        Arc::new(CertifiedKey::new(vec![self.der.clone()], signing))
    }
}

/// The server certificate of a receiver, which the test can replace while it runs.
#[derive(Debug)]
pub struct Switchable(Mutex<Arc<CertifiedKey>>);

impl Switchable {
    pub fn new(leaf: &Leaf) -> Arc<Self> {
        Arc::new(Self(Mutex::new(leaf.certified())))
    }

    pub fn set(&self, leaf: &Leaf) {
        *self.0.lock().unwrap() = leaf.certified();
    }
}

impl ResolvesServerCert for Switchable {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.lock().unwrap().clone())
    }
}

/// A receiver's TLS: its certificate, and, with `client_ca`, a client certificate from that CA required.
pub fn server_tls(cert: Arc<Switchable>, client_ca: Option<&Ca>) -> ServerConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().unwrap();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            roots.add(ca.der()).unwrap();
            builder.with_client_cert_verifier(
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap(),
            )
        }
        None => builder.with_no_client_auth(),
    };
    builder.with_cert_resolver(cert)
}

/// A PEM file for the configuration's `tls` fields, removed when dropped.
pub fn pem_file(text: &str) -> TempConfig {
    TempConfig::new(text)
}

pub fn tls_files(
    ca: Option<&TempConfig>,
    cert: Option<&TempConfig>,
    key: Option<&TempConfig>,
) -> hookgate_core::catalog::TlsFiles {
    hookgate_core::catalog::TlsFiles {
        ca_file: ca.map(|f| f.0.clone()),
        cert_file: cert.map(|f| f.0.clone()),
        key_file: key.map(|f| f.0.clone()),
    }
}
