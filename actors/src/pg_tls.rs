//! TLS to PostgreSQL: libpq's `sslmode` and `sslrootcert`, read from `database.url`, and [`PgTls`], the rustls
//! connector (ring) that honours them on every connection hookgate opens, the pools', the probe's and the LISTEN
//! connections'.
//!
//! tokio-postgres knows `sslmode` `disable`, `prefer` and `require` only, and refuses `sslrootcert`. [`split_url`]
//! takes both out of the URL, in either of its forms (`postgres://…?sslmode=verify-full&sslrootcert=/ca.pem`, or
//! `host=… sslmode=verify-full sslrootcert=/ca.pem`), and hands the rest to tokio-postgres, which is told only
//! [`SslMode::driver`]: whether to ask the server for TLS, and whether to insist. What is verified is decided here,
//! as libpq decides it:
//!
//! | `sslmode` | TLS | the server's certificate |
//! |---|---|---|
//! | `disable` | never | — |
//! | `prefer` (the default) | when the server offers it | not verified |
//! | `require` | always | not verified; with `sslrootcert`, its chain is (as with `verify-ca`) |
//! | `verify-ca` | always | its chain, up to `sslrootcert` (the system's CA certificates when absent or `system`); any host name |
//! | `verify-full` | always | its chain, and the host name of the URL |
//!
//! `sslrootcert=system` without `sslmode` means `verify-full` (libpq's rule), and `disable` or `prefer` with it is
//! refused: they would never use it. TLS 1.2 and 1.3 only, ALPN `postgresql`, and SCRAM's channel binding
//! (`tls-server-end-point`) is offered, so `channel_binding=require` works over any of these modes.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use percent_encoding::percent_decode_str;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

use crate::tls::{add_system_roots, handshake_reason, provider, read_ca_file, rustls_error};

/// libpq's `sslmode`. (`allow`, which prefers plain text, is not supported.)
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self, PgUrlError> {
        Ok(match value {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            other => return Err(PgUrlError::SslMode(other.to_owned())),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    /// What tokio-postgres is told: never ask for TLS, ask for it, or insist on it.
    pub fn driver(self) -> tokio_postgres::config::SslMode {
        match self {
            Self::Disable => tokio_postgres::config::SslMode::Disable,
            Self::Prefer => tokio_postgres::config::SslMode::Prefer,
            Self::Require | Self::VerifyCa | Self::VerifyFull => tokio_postgres::config::SslMode::Require,
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the CA certificates that verify the server come from (`sslrootcert`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// `sslrootcert=system`: the operating system's store (`/etc/ssl/certs`, `SSL_CERT_FILE`, `SSL_CERT_DIR`).
    System,
    /// A PEM file of CA certificates: these and no others.
    File(PathBuf),
}

/// How the server's certificate is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// Not at all (`prefer`, `require` without `sslrootcert`): the session is encrypted, but any server that
    /// holds the key of the certificate it shows is accepted.
    None,
    /// Its chain up to these roots, whatever host name it carries (`verify-ca`, `require` with `sslrootcert`).
    Chain(RootCert),
    /// Its chain and the host name (`verify-full`).
    Full(RootCert),
}

/// What `database.url` says about TLS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PgTlsParams {
    pub mode: SslMode,
    pub root_cert: Option<RootCert>,
}

impl PgTlsParams {
    /// How the server's certificate is checked in this mode, with these roots.
    pub fn verification(&self) -> Verification {
        let roots = || self.root_cert.clone().unwrap_or(RootCert::System);
        match self.mode {
            SslMode::Disable | SslMode::Prefer => Verification::None,
            SslMode::Require => self.root_cert.clone().map_or(Verification::None, Verification::Chain),
            SslMode::VerifyCa => Verification::Chain(roots()),
            SslMode::VerifyFull => Verification::Full(roots()),
        }
    }

    /// `sslrootcert` names a file this mode never reads (`disable`, `prefer`): worth a warning at start.
    pub fn ignores_root_cert(&self) -> bool {
        self.root_cert.is_some() && matches!(self.mode, SslMode::Disable | SslMode::Prefer)
    }

    /// Reads and checks the `sslrootcert` file when this mode uses one (what `check-config` does; the system's
    /// store is read at start only).
    pub fn check(&self) -> Result<(), PgUrlError> {
        match self.verification() {
            Verification::Chain(RootCert::File(path)) | Verification::Full(RootCert::File(path)) => {
                read_ca_file(&path).map(drop).map_err(PgUrlError::RootCert)
            }
            _ => Ok(()),
        }
    }
}

/// What is wrong with the TLS parameters of `database.url`. (Never shows the URL: it may hold a password.)
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PgUrlError {
    #[error("sslmode must be disable, prefer, require, verify-ca or verify-full, not {0:?}")]
    SslMode(String),
    #[error(
        "sslrootcert=system asks for the server's certificate to be verified, which sslmode={0} never does: use \
         sslmode=verify-full (or verify-ca, require)"
    )]
    SystemRootsUnused(SslMode),
    #[error("{0} is not supported (hookgate reads sslmode and sslrootcert; client certificates are not supported)")]
    Unsupported(String),
    #[error("sslrootcert: {0}")]
    RootCert(String),
    #[error(
        "sslmode={0} verifies the server against the system's CA certificates (no sslrootcert file is given), but \
         the system store has no usable one{1}"
    )]
    NoSystemRoots(SslMode, String),
    #[error("cannot build the TLS configuration: {0}")]
    Config(String),
}

/// `url` without `sslmode` and `sslrootcert`, for tokio-postgres to parse (the caller then sets
/// [`SslMode::driver`] on its `Config`), and what they said. Either form: a URL (`postgres://` or `postgresql://`,
/// parameters percent-encoded) or `key=value` pairs (a value quoted with `'…'` when it holds spaces, `\` escaping).
/// Text it cannot read is handed on as it is, for tokio-postgres to refuse with its own reason.
pub fn split_url(url: &str) -> Result<(String, PgTlsParams), PgUrlError> {
    let mut mode = None;
    let mut root_cert = None;
    // Takes a TLS parameter out of the URL (true), or leaves another where it is (false).
    let mut take = |key: &str, value: &str| -> Result<bool, PgUrlError> {
        match key {
            "sslmode" => mode = Some(SslMode::parse(value)?),
            "sslrootcert" => {
                root_cert = match value {
                    "" => None,
                    "system" => Some(RootCert::System),
                    path => Some(RootCert::File(path.into())),
                }
            }
            // tokio-postgres's own.
            "sslnegotiation" => return Ok(false),
            other if other.starts_with("ssl") => return Err(PgUrlError::Unsupported(other.to_owned())),
            _ => return Ok(false),
        }
        Ok(true)
    };
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        split_url_form(url, &mut take)?
    } else {
        split_keyword_form(url, &mut take)?
    };
    let mode = match (mode, &root_cert) {
        (None, Some(RootCert::System)) => SslMode::VerifyFull,
        (Some(m @ (SslMode::Disable | SslMode::Prefer)), Some(RootCert::System)) => {
            return Err(PgUrlError::SystemRootsUnused(m))
        }
        (m, _) => m.unwrap_or_default(),
    };
    Ok((rest, PgTlsParams { mode, root_cert }))
}

/// What `split_url` does with each parameter: takes it out (true) or leaves it in the URL (false).
type Take<'a> = dyn FnMut(&str, &str) -> Result<bool, PgUrlError> + 'a;

/// The URL form, read as tokio-postgres reads it: the credentials end at the first `@`, the parameters start at the
/// first `?` after them and are separated by `&`.
fn split_url_form(url: &str, take: &mut Take<'_>) -> Result<String, PgUrlError> {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let after_credentials = url[after_scheme..].find('@').map_or(after_scheme, |i| after_scheme + i + 1);
    let Some(query) = url[after_credentials..].find('?').map(|i| after_credentials + i) else {
        return Ok(url.to_owned());
    };
    let mut kept = Vec::new();
    for pair in url[query + 1..].split('&') {
        let Some((key, value)) = pair.split_once('=') else {
            kept.push(pair);
            continue;
        };
        let (key, value) = (percent_decode_str(key).decode_utf8_lossy(), percent_decode_str(value).decode_utf8_lossy());
        if !take(&key, &value)? {
            kept.push(pair);
        }
    }
    let mut rest = url[..query].to_owned();
    if !kept.is_empty() {
        rest.push('?');
        rest.push_str(&kept.join("&"));
    }
    Ok(rest)
}

/// The `key=value` form: the pairs hookgate does not take, each as it was written, separated by a space.
fn split_keyword_form(text: &str, take: &mut Take<'_>) -> Result<String, PgUrlError> {
    let mut kept = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            return Ok(kept.join(" "));
        }
        let Some((key, value, len)) = keyword_pair(rest) else { return Ok(text.to_owned()) };
        if !take(key, &value)? {
            kept.push(&rest[..len]);
        }
        rest = &rest[len..];
    }
}

/// The first `key = value` pair of `text` as tokio-postgres reads it: the key, the value (unquoted, unescaped),
/// and the pair's length in `text`. `None` when it is not one.
fn keyword_pair(text: &str) -> Option<(&str, String, usize)> {
    let key_len = text.find(|c: char| c.is_whitespace() || c == '=').unwrap_or(text.len());
    let key = &text[..key_len];
    let value_text = text[key_len..].trim_start().strip_prefix('=')?.trim_start();
    let quoted = value_text.starts_with('\'');
    let mut chars = value_text.char_indices().skip(usize::from(quoted));
    let mut value = String::new();
    let mut end = None;
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => value.extend(chars.next().map(|(_, escaped)| escaped)),
            '\'' if quoted => {
                end = Some(i + 1);
                break;
            }
            c if !quoted && c.is_whitespace() => {
                end = Some(i);
                break;
            }
            c => value.push(c),
        }
    }
    let end = match end {
        Some(end) => end,
        None if quoted => return None,
        None => value_text.len(),
    };
    if key.is_empty() || (!quoted && value.is_empty()) {
        return None;
    }
    Some((key, value, text.len() - value_text.len() + end))
}

/// How to reach PostgreSQL: the driver's settings and the TLS connector, for the connections hookgate opens
/// besides the pool's (LISTEN).
#[derive(Clone)]
pub struct PgConnect {
    pub config: tokio_postgres::Config,
    pub tls: PgTls,
}

/// The TLS connector of every PostgreSQL connection: one rustls configuration for the `sslmode` and
/// `sslrootcert` of `database.url`. Cheap to clone.
#[derive(Clone)]
pub struct PgTls(Arc<Inner>);

struct Inner {
    mode: SslMode,
    verification: Verification,
    config: Arc<ClientConfig>,
}

impl fmt::Debug for PgTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgTls").field("mode", &self.0.mode).field("verification", &self.0.verification).finish()
    }
}

impl PgTls {
    /// Reads the trust roots `params` ask for (`sslrootcert`'s file, or the system's store) and builds the
    /// configuration. Fails on an unreadable file, a file without a certificate, or a system store without a usable
    /// one.
    pub fn new(params: &PgTlsParams) -> Result<Self, PgUrlError> {
        let provider = provider();
        let algorithms = provider.signature_verification_algorithms;
        let verification = params.verification();
        let verifier: Arc<dyn ServerCertVerifier> = match &verification {
            Verification::None => Arc::new(Unverified(algorithms)),
            Verification::Chain(roots) => {
                Arc::new(ChainOnly { roots: Arc::new(load_roots(roots, params.mode)?), algorithms })
            }
            Verification::Full(roots) => {
                WebPkiServerVerifier::builder_with_provider(Arc::new(load_roots(roots, params.mode)?), provider.clone())
                    .build()
                    .map_err(|e| PgUrlError::Config(e.to_string()))?
            }
        };
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| PgUrlError::Config(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        // PostgreSQL 17's direct TLS (`sslnegotiation=direct`) requires it; earlier servers ignore it.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(Self(Arc::new(Inner { mode: params.mode, verification, config: Arc::new(config) })))
    }

    /// What a failed handshake with `host` says.
    fn failure(&self, host: String, error: io::Error) -> PgTlsError {
        let reason = rustls_error(&error).map_or_else(|| error.to_string(), |e| handshake_reason(e).to_owned());
        let trust = match &self.0.verification {
            Verification::None => "the certificate is not verified".to_owned(),
            Verification::Chain(roots) => format!("trusting {}, any host name", describe(roots)),
            Verification::Full(roots) => format!("trusting {}, for host {host}", describe(roots)),
        };
        PgTlsError::Handshake { host, reason, mode: self.0.mode, trust, source: error }
    }
}

fn describe(roots: &RootCert) -> String {
    match roots {
        RootCert::System => "the system's CA certificates".to_owned(),
        RootCert::File(path) => format!("the CA certificates in sslrootcert {}", path.display()),
    }
}

fn load_roots(roots: &RootCert, mode: SslMode) -> Result<RootCertStore, PgUrlError> {
    let mut store = RootCertStore::empty();
    match roots {
        RootCert::File(path) => {
            for cert in read_ca_file(path).map_err(PgUrlError::RootCert)? {
                store.add(cert).map_err(|e| {
                    PgUrlError::RootCert(format!("{}: not a usable CA certificate: {e}", path.display()))
                })?;
            }
        }
        RootCert::System => {
            let (added, errors) = add_system_roots(&mut store);
            if added == 0 {
                let errors = if errors.is_empty() { String::new() } else { format!(" ({})", errors.join("; ")) };
                return Err(PgUrlError::NoSystemRoots(mode, errors));
            }
        }
    }
    Ok(store)
}

/// Accepts any certificate (`prefer`, `require` without `sslrootcert`). The handshake's signatures are still
/// checked: the session is with the holder of the certificate's key, whoever that is.
#[derive(Debug)]
struct Unverified(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// Verifies the certificate's chain up to `roots` and its validity period, not the host name it names
/// (`verify-ca`, `require` with `sslrootcert`).
#[derive(Debug)]
struct ChainOnly {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Why TLS with PostgreSQL failed, in the words start's error shows.
#[derive(Debug, thiserror::Error)]
pub enum PgTlsError {
    /// A Unix-domain socket, or a host that is neither a DNS name nor an IP address.
    #[error("TLS with PostgreSQL needs a host name or an IP address, not {0:?}")]
    ServerName(String),
    #[error("TLS handshake with PostgreSQL at {host} failed: {reason} (sslmode={mode}, {trust})")]
    Handshake {
        host: String,
        /// `unknown issuer`, `name mismatch`, `certificate expired`, … (see `tls::handshake_reason`), or the I/O
        /// error that ended the handshake.
        reason: String,
        mode: SslMode,
        /// What was trusted.
        trust: String,
        #[source]
        source: io::Error,
    },
}

/// The TLS failure somewhere in an error's chain of sources (a pool error, a store error), if there is one.
pub fn tls_failure<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a PgTlsError> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<PgTlsError>() {
            return Some(tls);
        }
        next = e.source();
    }
    None
}

impl<S> MakeTlsConnect<S> for PgTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type TlsConnect = PgTlsConnect;
    type Error = PgTlsError;

    fn make_tls_connect(&mut self, host: &str) -> Result<PgTlsConnect, PgTlsError> {
        // A Unix-domain socket has no host (""): PostgreSQL never offers TLS there, so its name is checked only
        // when a handshake is really made.
        Ok(PgTlsConnect { tls: self.clone(), host: host.to_owned() })
    }
}

/// One connection's handshake, with the host it was opened to (sent as SNI; the name `verify-full` checks).
pub struct PgTlsConnect {
    tls: PgTls,
    host: String,
}

impl<S> TlsConnect<S> for PgTlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type Error = PgTlsError;
    type Future = Pin<Box<dyn Future<Output = Result<PgTlsStream<S>, PgTlsError>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let name =
                ServerName::try_from(self.host.clone()).map_err(|_| PgTlsError::ServerName(self.host.clone()))?;
            let connector = tokio_rustls::TlsConnector::from(self.tls.0.config.clone());
            match connector.connect(name, stream).await {
                Ok(stream) => Ok(PgTlsStream(stream)),
                Err(error) => Err(self.tls.failure(self.host, error)),
            }
        })
    }
}

/// A TLS session with PostgreSQL.
pub struct PgTlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for PgTlsStream<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for PgTlsStream<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for PgTlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        let (_, session) = self.0.get_ref();
        session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|cert| tls_server_end_point(cert))
            .map_or_else(ChannelBinding::none, ChannelBinding::tls_server_end_point)
    }
}

/// RFC 5929's `tls-server-end-point`: the server certificate's hash, by the hash of its signature algorithm (SHA-256
/// for MD5 and SHA-1), as PostgreSQL computes it. `None` for an algorithm without one (Ed25519, RSA-PSS): SCRAM then
/// goes without channel binding, unless `channel_binding=require` refuses to.
fn tls_server_end_point(der: &[u8]) -> Option<Vec<u8>> {
    use x509_parser::oid_registry as oid;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let algorithm = &cert.signature_algorithm.algorithm;
    let is = |candidates: &[&x509_parser::der_parser::Oid<'_>]| candidates.contains(&algorithm);
    let digest = if is(&[
        &oid::OID_PKCS1_MD5WITHRSAENC,
        &oid::OID_PKCS1_SHA1WITHRSA,
        &oid::OID_PKCS1_SHA256WITHRSA,
        &oid::OID_SIG_ECDSA_WITH_SHA256,
    ]) {
        &ring::digest::SHA256
    } else if is(&[&oid::OID_PKCS1_SHA384WITHRSA, &oid::OID_SIG_ECDSA_WITH_SHA384]) {
        &ring::digest::SHA384
    } else if is(&[&oid::OID_PKCS1_SHA512WITHRSA, &oid::OID_SIG_ECDSA_WITH_SHA512]) {
        &ring::digest::SHA512
    } else {
        return None;
    };
    Some(ring::digest::digest(digest, der).as_ref().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(url: &str) -> (String, PgTlsParams) {
        split_url(url).unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    fn params(mode: SslMode, root_cert: Option<RootCert>) -> PgTlsParams {
        PgTlsParams { mode, root_cert }
    }

    #[test]
    fn the_url_form_loses_its_tls_parameters_and_keeps_the_rest() {
        let (rest, p) = split("postgres://u:p%3Fw@db.internal:5433/hg?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem");
        assert_eq!(rest, "postgres://u:p%3Fw@db.internal:5433/hg");
        assert_eq!(p, params(SslMode::VerifyFull, Some(RootCert::File("/etc/ca.pem".into()))));

        let (rest, p) =
            split("postgresql://u@h/db?application_name=x&sslmode=verify-ca&connect_timeout=3&sslnegotiation=postgres");
        assert_eq!(rest, "postgresql://u@h/db?application_name=x&connect_timeout=3&sslnegotiation=postgres");
        assert_eq!(p.mode, SslMode::VerifyCa);
        assert!(rest.parse::<tokio_postgres::Config>().is_ok());

        // A `?` or `&` in the password is not a parameter: the parameters start after the credentials.
        let (rest, p) = split("postgres://u:a?b&sslmode=disable@h/db?sslmode=require");
        assert_eq!(rest, "postgres://u:a?b&sslmode=disable@h/db");
        assert_eq!(p.mode, SslMode::Require);

        let (rest, p) = split("postgres://u@h/db");
        assert_eq!((rest.as_str(), p), ("postgres://u@h/db", PgTlsParams::default()));
    }

    #[test]
    fn the_keyword_form_loses_its_tls_parameters_and_keeps_the_rest_as_written() {
        let (rest, p) =
            split("host=db port=5433 password='a b\\'c' sslmode = verify-full sslrootcert='/etc/my ca.pem' dbname=hg");
        assert_eq!(rest, "host=db port=5433 password='a b\\'c' dbname=hg");
        assert_eq!(p, params(SslMode::VerifyFull, Some(RootCert::File("/etc/my ca.pem".into()))));
        let config: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(config.get_password(), Some(&b"a b'c"[..]));

        let (rest, p) = split("host=/var/run/postgresql user=hg sslmode=disable");
        assert_eq!(rest, "host=/var/run/postgresql user=hg");
        assert_eq!(p.mode, SslMode::Disable);
        let config: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(config.get_user(), Some("hg"));

        // Not a pair: handed on as it is, for tokio-postgres to refuse.
        let (rest, _) = split("host=db sslmode");
        assert_eq!(rest, "host=db sslmode");
    }

    #[test]
    fn modes_follow_libpq() {
        assert_eq!(split("host=h").1.mode, SslMode::Prefer, "absent means prefer");
        assert_eq!(split("host=h").1.verification(), Verification::None);
        assert_eq!(split("host=h sslmode=require").1.verification(), Verification::None);
        let file = RootCert::File("/ca.pem".into());
        assert_eq!(
            split("host=h sslmode=require sslrootcert=/ca.pem").1.verification(),
            Verification::Chain(file.clone())
        );
        assert_eq!(split("host=h sslmode=verify-ca").1.verification(), Verification::Chain(RootCert::System));
        assert_eq!(split("host=h sslmode=verify-full sslrootcert=/ca.pem").1.verification(), Verification::Full(file));
        assert_eq!(split("host=h sslrootcert=system").1.mode, SslMode::VerifyFull, "system means verify-full");
        assert_eq!(
            split("host=h sslrootcert=system sslmode=verify-ca").1.verification(),
            Verification::Chain(RootCert::System)
        );
        assert!(split("host=h sslmode=prefer sslrootcert=/ca.pem").1.ignores_root_cert());
        assert!(!split("host=h sslmode=require sslrootcert=/ca.pem").1.ignores_root_cert());

        assert_eq!(SslMode::VerifyFull.driver(), tokio_postgres::config::SslMode::Require);
        assert_eq!(SslMode::Prefer.driver(), tokio_postgres::config::SslMode::Prefer);
        assert_eq!(SslMode::Disable.driver(), tokio_postgres::config::SslMode::Disable);
    }

    #[test]
    fn bad_tls_parameters_are_refused_with_the_reason_and_never_the_url() {
        let cases = [
            ("postgres://u:hunter2@h/db?sslmode=verify_full", "sslmode must be disable, prefer"),
            ("host=h password=hunter2 sslmode=allow", "not \"allow\""),
            ("host=h password=hunter2 sslrootcert=system sslmode=prefer", "sslmode=prefer never does"),
            ("postgres://u:hunter2@h/db?sslcert=/c.pem", "sslcert is not supported"),
        ];
        for (url, needle) in cases {
            let err = split_url(url).unwrap_err().to_string();
            assert!(err.contains(needle), "{url}: {err}");
            assert!(!err.contains("hunter2"), "{url}: {err}");
        }
        let missing = params(SslMode::VerifyFull, Some(RootCert::File("/nonexistent/ca.pem".into())));
        let err = missing.check().unwrap_err().to_string();
        assert!(err.starts_with("sslrootcert: cannot read /nonexistent/ca.pem"), "{err}");
        // Modes that never verify never read it.
        assert!(params(SslMode::Prefer, Some(RootCert::File("/nonexistent/ca.pem".into()))).check().is_ok());
    }

    #[test]
    fn channel_binding_hashes_the_certificate_with_its_signature_hash() {
        for (algorithm, digest) in [
            (&rcgen::PKCS_ECDSA_P256_SHA256, &ring::digest::SHA256),
            (&rcgen::PKCS_ECDSA_P384_SHA384, &ring::digest::SHA384),
        ] {
            let key = rcgen::KeyPair::generate_for(algorithm).unwrap();
            let cert = rcgen::CertificateParams::new(vec!["db.test".into()]).unwrap().self_signed(&key).unwrap();
            let expected = ring::digest::digest(digest, cert.der());
            assert_eq!(tls_server_end_point(cert.der()).as_deref(), Some(expected.as_ref()));
        }
        let ed25519 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["db.test".into()]).unwrap().self_signed(&ed25519).unwrap();
        assert_eq!(tls_server_end_point(cert.der()), None, "Ed25519 defines no binding");
        assert_eq!(tls_server_end_point(b"not a certificate"), None);
    }
}
