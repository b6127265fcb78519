//! The egress proxy of outbound deliveries (`delivery.proxy`, `delivery.no_proxy`): which destinations go through
//! it, and how a connection to it is opened.
//!
//! The SSRF guard (`crate::ssrf`) decides first, proxy or not: the destination's host is resolved by hookgate and
//! every address vetted against the policy before a byte is sent to the proxy. Then:
//!
//! - an `https://` destination is reached through a tunnel: `CONNECT host:port HTTP/1.1` to the proxy, a 2xx answer
//!   required, and the TLS handshake with the destination (SNI and certificate checks by the destination's host)
//!   runs inside the tunnel, so the proxy sees neither the request nor its signature;
//! - an `http://` destination's request is sent to the proxy in absolute form (`POST http://host:port/path
//!   HTTP/1.1`, `Host: host:port`), which forwards it.
//!
//! The proxy resolves the destination's name again itself and connects to whatever it finds: hookgate's check
//! holds for the addresses hookgate resolved, and a proxy that enforces an egress policy of its own closes that
//! gap. The proxy's own address is the operator's configuration and is not subject to the SSRF policy (it is
//! usually internal). Only `http://` proxies are supported (the connection to the proxy is plain TCP).
//!
//! The proxy URL may hold credentials (`http://user:password@proxy:3128`): they are sent as `Proxy-Authorization:
//! Basic …` and kept in a [`SecretString`], never printed; messages name the proxy by `host:port` only.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};

use actix_rt::net::TcpStream;
use actix_service::Service;
use actix_tls::connect::{
    tcp::TcpConnectorService, ConnectError as TcpConnectError, ConnectInfo, Connection as TcpConnection,
};
use awc::http::{header::HeaderValue, uri::PathAndQuery, uri::Uri};
use base64::Engine as _;
use hickory_resolver::TokioResolver;
use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The largest answer head to a CONNECT that is read; a longer one fails the attempt.
const MAX_ANSWER_HEAD: usize = 8 * 1024;

/// Why a connection through the egress proxy could not be opened (the attempt's error kind is `proxy`).
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("egress proxy {proxy}: DNS resolution failed: {reason}")]
    Resolve { proxy: String, reason: String },
    #[error("egress proxy {proxy}: cannot connect: {reason}")]
    Connect { proxy: String, reason: String },
    #[error("egress proxy {proxy} refused CONNECT {target}: {status}")]
    Refused { proxy: String, target: String, status: String },
    #[error("egress proxy {proxy}: {reason} (CONNECT {target})")]
    Protocol { proxy: String, target: String, reason: String },
    #[error("egress proxy {proxy}: {target} cannot be written in absolute form for the proxy")]
    NotAbsoluteForm { proxy: String, target: String },
}

/// `delivery.no_proxy`: the destination hosts reached directly although a proxy is set.
///
/// Entries are host names and domains (`example.com` and `.example.com` both match `example.com` and every name
/// under it, as curl does; `*.example.com` is read as `.example.com`), IP addresses, networks in CIDR notation
/// (matching IP-literal hosts only: names are not resolved to be matched), or `*` (every destination). Names are
/// compared without regard to case or a trailing dot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NoProxy {
    all: bool,
    domains: Vec<String>,
    networks: Vec<IpNet>,
}

impl NoProxy {
    /// Reads the entries (each may itself be a comma-separated list); an entry that is none of the accepted forms
    /// is an error naming it.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, String> {
        let mut parsed = Self::default();
        for entry in entries.iter().flat_map(|e| e.as_ref().split(',')).map(str::trim).filter(|e| !e.is_empty()) {
            if entry == "*" {
                parsed.all = true;
            } else if let Ok(net) = entry.parse::<IpNet>() {
                parsed.networks.push(net);
            } else if let Ok(ip) = unbracketed(entry).parse::<IpAddr>() {
                parsed.networks.push(IpNet::from(ip));
            } else {
                let name = entry.strip_prefix("*.").or_else(|| entry.strip_prefix('.')).unwrap_or(entry);
                let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
                let valid = !name.is_empty()
                    && name.split('.').all(|label| {
                        !label.is_empty() && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                    });
                if !valid {
                    return Err(format!(
                        "delivery.no_proxy: {entry:?} is not a host name, domain, IP address, network (CIDR) or *"
                    ));
                }
                parsed.domains.push(name);
            }
        }
        Ok(parsed)
    }

    /// Whether `host` (a URL's host: a name, an IPv4 address or a bracketed IPv6 address) is listed.
    pub fn matches(&self, host: &str) -> bool {
        if self.all {
            return true;
        }
        let bare = unbracketed(host);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return self.networks.iter().any(|net| net.contains(&ip));
        }
        let name = bare.strip_suffix('.').unwrap_or(bare).to_ascii_lowercase();
        self.domains.iter().any(|d| name == *d || name.strip_suffix(d.as_str()).is_some_and(|rest| rest.ends_with('.')))
    }
}

/// `delivery.no_proxy` as written: a list of entries, or one comma-separated string (as in the `NO_PROXY`
/// convention, handy in an environment variable).
pub fn deserialize_no_proxy<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Form::deserialize(d)? {
        Form::One(list) => vec![list],
        Form::Many(entries) => entries,
    })
}

fn unbracketed(host: &str) -> &str {
    host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host)
}

/// The egress proxy (`delivery.proxy`) with its `no_proxy` list.
#[derive(Debug)]
pub struct EgressProxy {
    /// `host:port`, the proxy's name in messages (never with the credentials).
    address: String,
    /// The host, without the brackets of an IPv6 literal.
    host: String,
    port: u16,
    /// `Basic base64(user:password)`, when the URL has credentials.
    authorization: Option<SecretString>,
    no_proxy: NoProxy,
}

impl EgressProxy {
    /// Reads the proxy URL, `http://[user:password@]host[:port]` (port 80 when omitted; user and password
    /// percent-decoded). Errors never repeat the URL, which may hold a password.
    pub fn parse(url: &str, no_proxy: NoProxy) -> Result<Self, String> {
        const FORM: &str = "http://[user:password@]host[:port]";
        let parsed =
            url::Url::parse(url).map_err(|e| format!("delivery.proxy is not a valid URL ({e}); expected {FORM}"))?;
        match parsed.scheme() {
            "http" => {}
            "https" => {
                return Err(format!(
                    "delivery.proxy: https:// proxies (TLS to the proxy) are not supported; use {FORM} \
                     (https destinations stay encrypted end to end inside the CONNECT tunnel)"
                ))
            }
            _ => return Err(format!("delivery.proxy must be an http:// URL: {FORM}")),
        }
        let host = match parsed.host() {
            Some(url::Host::Domain(d)) if !d.is_empty() => d.to_owned(),
            Some(url::Host::Ipv4(v4)) => v4.to_string(),
            Some(url::Host::Ipv6(v6)) => v6.to_string(),
            _ => return Err(format!("delivery.proxy has no host; expected {FORM}")),
        };
        if !matches!(parsed.path(), "" | "/") || parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(format!("delivery.proxy must not have a path, query or fragment; expected {FORM}"));
        }
        let port = parsed.port_or_known_default().unwrap_or(80);
        let address = match parsed.host() {
            Some(url::Host::Ipv6(_)) => format!("[{host}]:{port}"),
            _ => format!("{host}:{port}"),
        };
        let authorization = if parsed.username().is_empty() && parsed.password().is_none() {
            None
        } else {
            let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
            let pair = format!("{}:{}", decode(parsed.username()), decode(parsed.password().unwrap_or("")));
            let value = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair));
            Some(SecretString::from(value))
        };
        Ok(Self { address, host, port, authorization, no_proxy })
    }

    /// `host:port` of the proxy (what messages and logs name it by).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Whether a request to `host` (a URL's host) goes through the proxy: unless `no_proxy` lists it.
    pub fn applies_to(&self, host: &str) -> bool {
        !self.no_proxy.matches(host)
    }

    /// The `Proxy-Authorization` value of an absolute-form request, when the proxy URL has credentials (marked
    /// sensitive).
    pub fn authorization_header(&self) -> Option<HeaderValue> {
        let secret = self.authorization.as_ref()?;
        let mut value = HeaderValue::from_str(secret.expose_secret()).ok()?;
        value.set_sensitive(true);
        Some(value)
    }

    /// `uri` (an `http://` URL) as the proxy wants it: the same URI whose request target is the absolute URL, so
    /// that awc writes `POST http://host:port/path HTTP/1.1` and still takes `Host` and its connection pool key from
    /// the destination's authority. `None` when the URI has no authority or the target cannot be written so.
    pub fn absolute_form(uri: &Uri) -> Option<Uri> {
        let authority = uri.authority()?;
        let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
        let target: PathAndQuery = format!("http://{authority}{path}").parse().ok()?;
        let mut parts = uri.clone().into_parts();
        parts.path_and_query = Some(target);
        Uri::from_parts(parts).ok()
    }

    /// Opens a connection through the proxy for `req`, whose destination the SSRF guard already vetted: TCP to the
    /// proxy, then, for anything but `http://`, a CONNECT tunnel to the destination. The returned connection
    /// carries `req`'s URI, so TLS (SNI, certificate checks) is about the destination.
    ///
    /// Runs inside awc's connect time-out (and the attempt's own), which bound the CONNECT exchange too.
    pub(crate) async fn open(
        &self,
        req: ConnectInfo<Uri>,
        dns: &TokioResolver,
        tcp: &TcpConnectorService,
    ) -> Result<TcpConnection<Uri, TcpStream>, TcpConnectError> {
        let target = format!("{}:{}", req.hostname(), req.port());
        let plain = req.request().scheme_str() == Some("http");
        // A plain request must be in absolute form: written so by `GuardedClient`, never origin form to a proxy.
        if plain && req.request().path_and_query().is_none_or(|pq| pq.as_str().starts_with('/')) {
            return Err(fail(ProxyError::NotAbsoluteForm { proxy: self.address.clone(), target }));
        }
        let addrs = self.resolve(dns).await.map_err(fail)?;
        let mut conn = tcp
            .call(req.set_addrs(addrs))
            .await
            .map_err(|e| fail(ProxyError::Connect { proxy: self.address.clone(), reason: e.to_string() }))?;
        if !plain {
            self.tunnel(conn.io_mut(), &target).await.map_err(fail)?;
        }
        Ok(conn)
    }

    /// The proxy's addresses: its IP literal, or its name resolved (not vetted: the proxy is configuration).
    async fn resolve(&self, dns: &TokioResolver) -> Result<Vec<SocketAddr>, ProxyError> {
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, self.port)]);
        }
        let resolve = |reason: String| ProxyError::Resolve { proxy: self.address.clone(), reason };
        let found = dns.lookup_ip(self.host.as_str()).await.map_err(|e| resolve(e.to_string()))?;
        let addrs: Vec<SocketAddr> = found.iter().map(|ip| SocketAddr::new(ip, self.port)).collect();
        if addrs.is_empty() {
            return Err(resolve("no address".into()));
        }
        Ok(addrs)
    }

    /// Asks the proxy for a tunnel to `target` (`host:port`) and reads its answer: a 2xx opens the tunnel, anything
    /// else is a refusal naming the status.
    async fn tunnel(&self, io: &mut TcpStream, target: &str) -> Result<(), ProxyError> {
        let protocol =
            |reason: String| ProxyError::Protocol { proxy: self.address.clone(), target: target.to_owned(), reason };
        let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some(auth) = &self.authorization {
            request.push_str("Proxy-Authorization: ");
            request.push_str(auth.expose_secret());
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        io.write_all(request.as_bytes()).await.map_err(|e| protocol(format!("sending CONNECT failed: {e}")))?;

        let mut head = Vec::with_capacity(256);
        let mut buf = [0u8; 1024];
        let (status, reason, len) = loop {
            let n = io.read(&mut buf).await.map_err(|e| protocol(format!("reading its answer failed: {e}")))?;
            if n == 0 {
                return Err(protocol("closed the connection before answering".into()));
            }
            head.extend_from_slice(&buf[..n]);
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut answer = httparse::Response::new(&mut headers);
            match answer.parse(&head) {
                Ok(httparse::Status::Complete(len)) => {
                    let status = answer.code.unwrap_or(0);
                    break (status, answer.reason.unwrap_or("").to_owned(), len);
                }
                Ok(httparse::Status::Partial) if head.len() <= MAX_ANSWER_HEAD => {}
                Ok(httparse::Status::Partial) => {
                    return Err(protocol(format!("its answer's head is longer than {MAX_ANSWER_HEAD} bytes")))
                }
                Err(e) => return Err(protocol(format!("malformed answer: {e}"))),
            }
        };
        if !(200..300).contains(&status) {
            let status = format!("{status} {reason}").trim_end().to_owned();
            return Err(ProxyError::Refused { proxy: self.address.clone(), target: target.to_owned(), status });
        }
        // The destination speaks only after the TLS client's hello: nothing may follow the answer yet.
        if head.len() > len {
            return Err(protocol("it sent data after its answer, before the tunnel was used".into()));
        }
        Ok(())
    }
}

impl fmt::Display for EgressProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.address)
    }
}

/// A proxy failure as the TCP connector's error; `crate::ssrf::classify_send_error` finds it again (kind `proxy`).
fn fail(e: ProxyError) -> TcpConnectError {
    TcpConnectError::Io(io::Error::other(e))
}

/// The proxy failure inside a connect error, if it is one.
pub fn proxy_error(io: &io::Error) -> Option<&ProxyError> {
    io.get_ref().and_then(|inner| inner.downcast_ref::<ProxyError>())
}

#[cfg(test)]
pub(crate) mod tests {
    use tokio::net::TcpListener;

    use super::*;

    /// Reads a request or reply head (up to its blank line) from a test's peer; `None` when the peer closed first.
    pub(crate) async fn read_head(stream: &mut TcpStream) -> Option<Vec<u8>> {
        let mut seen = Vec::new();
        let mut buf = [0u8; 1024];
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
        Some(seen)
    }

    fn proxy(url: &str) -> Result<EgressProxy, String> {
        EgressProxy::parse(url, NoProxy::default())
    }

    #[test]
    fn proxy_urls_are_checked_and_never_repeated_in_errors() {
        let p = proxy("http://proxy.internal:3128").unwrap();
        assert_eq!((p.address(), p.host.as_str(), p.port), ("proxy.internal:3128", "proxy.internal", 3128));
        assert!(p.authorization.is_none());
        assert_eq!(proxy("http://10.0.0.5/").unwrap().address(), "10.0.0.5:80");
        let v6 = proxy("http://[fd00::5]:8080").unwrap();
        assert_eq!((v6.address(), v6.host.as_str()), ("[fd00::5]:8080", "fd00::5"));
        // Credentials, percent-decoded, become the Basic value; Debug never shows them.
        let p = proxy("http://hook%40gate:p%3Ass@proxy:3128").unwrap();
        let expected = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("hook@gate:p:ss"));
        assert_eq!(p.authorization.as_ref().unwrap().expose_secret(), expected);
        assert!(p.authorization_header().unwrap().is_sensitive());
        let shown = format!("{p:?} {p}");
        assert!(!shown.contains("p%3Ass") && !shown.contains("p:ss") && !shown.contains(&expected), "{shown}");

        for (url, needle) in [
            ("https://user:hunter2@proxy:3128", "https:// proxies"),
            ("socks5://user:hunter2@proxy:1080", "http:// URL"),
            ("proxy:3128", "http:// URL"),
            ("http://user:hunter2@proxy:3128/path", "path"),
            ("http://user:hunter2@proxy:3128/?q=1", "path"),
            ("http://user:hunter2@:3128", "valid URL"),
            ("not a url hunter2", "valid URL"),
        ] {
            let err = proxy(url).unwrap_err();
            assert!(err.contains(needle), "{url}: {err}");
            assert!(!err.contains("hunter2"), "{url}: {err}");
        }
    }

    #[test]
    fn no_proxy_matches_names_domains_addresses_and_networks() {
        let list = NoProxy::parse(&[
            "Internal.Example.",
            ".corp.test, *.svc.local",
            "10.0.0.0/8",
            "192.168.1.7",
            "[fd00::1]",
            "2001:db8::/32",
        ])
        .unwrap();
        for host in [
            "internal.example",
            "api.internal.example",
            "API.Internal.Example.",
            "corp.test",
            "a.b.corp.test",
            "svc.local",
            "x.svc.local",
            "10.1.2.3",
            "192.168.1.7",
            "[fd00::1]",
            "[2001:db8::5]",
        ] {
            assert!(list.matches(host), "{host} should be listed");
        }
        for host in [
            "example",
            "xinternal.example",
            "internal.example.com",
            "corp.test.evil",
            "11.0.0.1",
            "192.168.1.8",
            "[fd00::2]",
        ] {
            assert!(!list.matches(host), "{host} should not be listed");
        }
        // Networks match IP literals only: names are not resolved.
        assert!(!NoProxy::parse(&["127.0.0.0/8"]).unwrap().matches("localhost"));
        assert!(NoProxy::parse(&["*"]).unwrap().matches("anything.example"));
        assert!(!NoProxy::default().matches("example.com"));
        for bad in ["example.com:8080", "http://example.com", "a..b", "exa mple.com", ".", "10.0.0.0/33"] {
            let err = NoProxy::parse(&[bad]).unwrap_err();
            assert!(err.contains("delivery.no_proxy") && err.contains(bad), "{bad}: {err}");
        }
    }

    #[test]
    fn no_proxy_reads_a_list_or_a_comma_separated_string() {
        #[derive(Deserialize)]
        struct S {
            #[serde(deserialize_with = "deserialize_no_proxy")]
            no_proxy: Vec<String>,
        }
        let one: S = serde_json::from_str(r#"{"no_proxy": "a.example, 10.0.0.0/8"}"#).unwrap();
        let many: S = serde_json::from_str(r#"{"no_proxy": ["a.example", "10.0.0.0/8"]}"#).unwrap();
        assert_eq!(NoProxy::parse(&one.no_proxy).unwrap(), NoProxy::parse(&many.no_proxy).unwrap());
        assert!(NoProxy::parse(&one.no_proxy).unwrap().matches("b.a.example"));
    }

    #[test]
    fn absolute_form_keeps_the_authority_and_writes_the_whole_url_as_target() {
        let uri: Uri = "http://hooks.example:8080/in/1?a=b".parse().unwrap();
        let abs = EgressProxy::absolute_form(&uri).unwrap();
        assert_eq!(abs.authority().unwrap().as_str(), "hooks.example:8080");
        assert_eq!(abs.scheme_str(), Some("http"));
        assert_eq!(abs.path_and_query().unwrap().as_str(), "http://hooks.example:8080/in/1?a=b");
        let bare: Uri = "http://[2001:db8::1]".parse().unwrap();
        assert_eq!(
            EgressProxy::absolute_form(&bare).unwrap().path_and_query().unwrap().as_str(),
            "http://[2001:db8::1]/"
        );
    }

    /// A proxy that answers the first request head with `answer`, and hands back what it read.
    async fn answering(answer: &'static [u8]) -> (u16, tokio::sync::oneshot::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            let Some(seen) = read_head(&mut stream).await else { return };
            let _ = tx.send(String::from_utf8_lossy(&seen).into_owned());
            let _ = stream.write_all(answer).await;
            let _ = stream.shutdown().await;
        });
        (port, rx)
    }

    async fn tunnel_to(answer: &'static [u8], url: &str) -> (Result<(), ProxyError>, String) {
        let (port, seen) = answering(answer).await;
        let p = EgressProxy::parse(&url.replace("PORT", &port.to_string()), NoProxy::default()).unwrap();
        let mut io = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let result = p.tunnel(&mut io, "hooks.example:443").await;
        (result, seen.await.unwrap_or_default())
    }

    #[actix_rt::test]
    async fn the_connect_exchange_opens_a_tunnel_on_2xx_and_names_any_refusal() {
        let (ok, sent) = tunnel_to(b"HTTP/1.1 200 Connection established\r\n\r\n", "http://u:pw@127.0.0.1:PORT").await;
        ok.unwrap();
        let auth = base64::engine::general_purpose::STANDARD.encode("u:pw");
        assert_eq!(
            sent,
            format!("CONNECT hooks.example:443 HTTP/1.1\r\nHost: hooks.example:443\r\nProxy-Authorization: Basic {auth}\r\n\r\n")
        );
        let (refused, sent) = tunnel_to(
            b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n",
            "http://127.0.0.1:PORT",
        )
        .await;
        assert!(!sent.contains("Proxy-Authorization"), "{sent}");
        let message = refused.unwrap_err().to_string();
        assert!(message.contains("407 Proxy Authentication Required") && message.contains("127.0.0.1:"), "{message}");
        let (closed, _) = tunnel_to(b"", "http://127.0.0.1:PORT").await;
        assert!(closed.unwrap_err().to_string().contains("closed the connection"));
        let (garbage, _) = tunnel_to(b"SSH-2.0-OpenSSH\r\n\r\n", "http://127.0.0.1:PORT").await;
        assert!(garbage.unwrap_err().to_string().contains("malformed"));
    }
}
