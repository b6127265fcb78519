//! Guards outbound HTTP against server-side request forgery: [`guarded_client`] builds an awc client that connects
//! only to addresses the policy (`hookgate_core::ssrf::SsrfPolicy`, which decides) accepted, whatever the URL said
//! and however the host resolved.
//!
//! # Where the check happens
//!
//! The check is made on the socket addresses that are about to be connected to, not on the URL text, so
//! DNS rebinding (a name that resolves to a public address when checked and to 127.0.0.1 when connected) and
//! alternative spellings (`http://2130706433/`, `http://[::ffff:127.0.0.1]/`) gain nothing:
//!
//! 1. hostnames are resolved by our own resolver (hickory, honouring `/etc/hosts`), which drops forbidden
//!    addresses and fails with [`SsrfError`] when none is left;
//! 2. before any TCP connect, a final gate vets **every** socket address handed to the TCP connector — this
//!    covers IP-literal hosts, which actix-tls never passes to a resolver, bracketed IPv6 literals, and
//!    addresses preset with awc's `ClientRequest::address`, which skip resolution altogether;
//! 3. the TCP connector receives only vetted addresses, so no second lookup can happen.
//!
//! Redirects are not followed: a 3xx is returned to the caller as a response.
//!
//! # HTTPS
//!
//! TLS wraps this connector rather than replacing it: awc's TLS service (rustls, `crate::tls`) calls the guarded
//! TCP connector and runs the handshake over the connection it returns, so an `https://` destination is vetted
//! exactly like an `http://` one. The server name sent (SNI) and verified is the URL's host, never the address.
//!
//! # Egress proxy
//!
//! With `delivery.proxy` set, a destination that `delivery.no_proxy` does not list is resolved and vetted just the
//! same, and only then is the connection opened to the proxy instead (`crate::proxy`): a CONNECT tunnel that TLS
//! then runs over for `https://`, the request in absolute form for `http://` ([`GuardedClient`] writes it). A
//! refused destination never reaches the proxy. Connections are pooled per destination either way, so each new one
//! is vetted.

use std::{
    error::Error as StdError,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use actix_service::Service;
use actix_tls::connect::{
    tcp::TcpConnectorService, ConnectError as TcpConnectError, ConnectInfo, Connection as TcpConnection, Resolve,
    Resolver, ResolverService,
};
use awc::{
    error::{ConnectError, SendRequestError},
    http::{header, Method, Uri},
};
use futures::future::LocalBoxFuture;
use hickory_resolver::{config::ResolverConfig, net::runtime::TokioRuntimeProvider, TokioResolver};
use hookgate_core::ssrf::{SsrfError, SsrfPolicy};
use rustls::ClientConfig;

use crate::proxy::{proxy_error, EgressProxy};
use crate::tls::{handshake_reason, rustls_error};

/// Resolves hostnames with hickory and returns only the addresses the policy accepts.
struct PolicyResolver {
    policy: Arc<SsrfPolicy>,
    dns: TokioResolver,
}

impl Resolve for PolicyResolver {
    fn lookup<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> LocalBoxFuture<'a, Result<Vec<SocketAddr>, Box<dyn StdError>>> {
        Box::pin(async move {
            // http::Uri keeps the brackets of an IPv6 literal, so actix-tls hands "[::1]" to the resolver.
            let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
            let addrs: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
                Ok(ip) => vec![SocketAddr::new(ip, port)],
                Err(_) => match self.dns.lookup_ip(bare).await {
                    Ok(found) => found.iter().map(|ip| SocketAddr::new(ip, port)).collect(),
                    Err(e) if e.is_no_records_found() => return Err(SsrfError::NoAddress(bare.to_owned()).into()),
                    Err(e) => return Err(SsrfError::Resolve(format!("{bare}: {e}")).into()),
                },
            };
            Ok(self.policy.vet(addrs, bare)?)
        })
    }
}

/// The TCP connector service given to awc: resolve (via [`PolicyResolver`]), vet every final address, connect
/// (to the egress proxy instead, when one applies to the host).
#[derive(Clone)]
struct GuardedConnector {
    policy: Arc<SsrfPolicy>,
    resolver: ResolverService,
    tcp: TcpConnectorService,
    /// The egress proxy, and the resolver of its own name.
    proxy: Option<(Arc<EgressProxy>, TokioResolver)>,
}

impl Service<ConnectInfo<Uri>> for GuardedConnector {
    type Response = TcpConnection<Uri, actix_rt::net::TcpStream>;
    type Error = TcpConnectError;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    actix_service::always_ready!();

    fn call(&self, req: ConnectInfo<Uri>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let via = this.proxy.as_ref().filter(|(proxy, _)| proxy.applies_to(req.hostname()));
            // Sets the address itself for IP literals and preset addresses; calls PolicyResolver otherwise.
            let mut req = this.resolver.call(req).await?;
            // The final gate: whatever the source of the addresses, only vetted ones reach connect().
            let host = req.hostname().to_owned();
            let vetted =
                this.policy.vet(req.take_addrs(), &host).map_err(|e| TcpConnectError::Resolver(Box::new(e)))?;
            match via {
                None => this.tcp.call(req.set_addrs(vetted)).await,
                // The destination passed the policy; the proxy connects to it (and resolves its name again).
                Some((proxy, dns)) => proxy.open(req, dns, &this.tcp).await,
            }
        })
    }
}

/// The system resolver configuration (`/etc/resolv.conf`), or, when it cannot be read, one that answers only
/// from `/etc/hosts` (every other name fails to resolve, visibly, rather than going to some public resolver).
fn system_resolver() -> TokioResolver {
    match TokioResolver::builder_tokio().and_then(|b| b.build()) {
        Ok(dns) => dns,
        Err(e) => {
            tracing::warn!(error = %e, "no usable system DNS configuration; outbound DNS answers only from /etc/hosts");
            hosts_only_resolver()
        }
    }
}

/// A resolver without name servers: `/etc/hosts` and the built-in `localhost` answers only.
fn hosts_only_resolver() -> TokioResolver {
    TokioResolver::builder_with_config(
        ResolverConfig::from_parts(None, vec![], vec![]),
        TokioRuntimeProvider::default(),
    )
    .build()
    .expect("a resolver without name servers always builds")
}

/// The outbound HTTP client that [`guarded_client`] builds: awc over the guarded connector, and the egress proxy's
/// request form. Cheap to clone (`!Send`, like awc's client).
#[derive(Clone)]
pub struct GuardedClient {
    client: awc::Client,
    proxy: Option<Arc<EgressProxy>>,
}

impl GuardedClient {
    /// A POST to `url`.
    pub fn post(&self, url: impl AsRef<str>) -> awc::ClientRequest {
        self.request(Method::POST, url.as_ref())
    }

    /// A GET of `url`.
    pub fn get(&self, url: impl AsRef<str>) -> awc::ClientRequest {
        self.request(Method::GET, url.as_ref())
    }

    /// A request to `url`. When the egress proxy applies to an `http://` URL, the request is written in absolute
    /// form (`POST http://host:port/path HTTP/1.1`, `Host: host:port`) with the proxy's `Proxy-Authorization`;
    /// `https://` requests are written as usual and tunnelled by the connector. A URL awc cannot parse is passed
    /// on as it is, and sending it fails.
    pub fn request(&self, method: Method, url: &str) -> awc::ClientRequest {
        let Some(proxy) = &self.proxy else { return self.client.request(method, url) };
        let Ok(uri) = Uri::try_from(url) else { return self.client.request(method, url) };
        if uri.scheme_str() != Some("http") || !uri.host().is_some_and(|host| proxy.applies_to(host)) {
            return self.client.request(method, uri);
        }
        // Should the URI not be writable in absolute form, it goes as it is and the connector refuses it.
        let target = EgressProxy::absolute_form(&uri).unwrap_or(uri);
        let req = self.client.request(method, target);
        match proxy.authorization_header() {
            Some(credentials) => req.insert_header((header::PROXY_AUTHORIZATION, credentials)),
            None => req,
        }
    }
}

/// An awc client that never follows redirects and connects only to addresses vetted by `policy`:
/// it resolves hostnames itself (hickory-resolver, honouring /etc/hosts) and hands awc only the vetted socket
/// addresses (no second lookup). `max_connections` bounds the connector's pool (0 means unbounded, as in awc).
///
/// IP-literal hosts are vetted too: actix-tls does not send them to a resolver, so the connector checks every
/// socket address right before connecting, whatever produced it (see the module documentation). A refusal comes
/// back as `SendRequestError::Connect(ConnectError::Resolver(SsrfError))`; [`classify_send_error`] names it
/// `"ssrf"`. `https://` URLs are handshaken with `tls` over the guarded connection (see the module
/// documentation). With `proxy`, destinations it applies to are reached through it once vetted; its failures are
/// of kind `"proxy"`. awc's defaults otherwise apply (5 s connect and TLS handshake time-outs; the connect time-out
/// covers the exchange with the proxy).
pub fn guarded_client(
    policy: Arc<SsrfPolicy>,
    proxy: Option<Arc<EgressProxy>>,
    max_connections: usize,
    tls: Arc<ClientConfig>,
) -> GuardedClient {
    guarded_client_with_dns(policy, proxy, max_connections, tls, system_resolver())
}

fn guarded_client_with_dns(
    policy: Arc<SsrfPolicy>,
    proxy: Option<Arc<EgressProxy>>,
    max_connections: usize,
    tls: Arc<ClientConfig>,
    dns: TokioResolver,
) -> GuardedClient {
    let connector = GuardedConnector {
        policy: Arc::clone(&policy),
        resolver: Resolver::custom(PolicyResolver { policy, dns: dns.clone() }).service(),
        tcp: TcpConnectorService::default(),
        proxy: proxy.clone().map(|p| (p, dns)),
    };
    // The TLS service awc builds from `rustls_0_23` calls this TCP connector first: TLS wraps the guard.
    let connector = awc::Connector::new().connector(connector).rustls_0_23(tls).limit(max_connections);
    let client = awc::Client::builder().connector(connector).disable_redirects().finish();
    GuardedClient { client, proxy }
}

fn classify_ssrf(e: &SsrfError) -> (&'static str, String) {
    let kind = match e {
        SsrfError::Forbidden { .. } | SsrfError::BadUrl(_) => "ssrf",
        SsrfError::Resolve(_) | SsrfError::NoAddress(_) => "dns",
    };
    (kind, e.to_string())
}

/// A TLS failure (handshake, or a server's alert right after it, as TLS 1.3 sends when it refuses a client
/// certificate): kind `"tls"`, the reason first (`crate::tls::handshake_reason`), then rustls' own words.
fn classify_tls(io: &std::io::Error) -> Option<(&'static str, String)> {
    let e = rustls_error(io)?;
    Some(("tls", format!("{}: {e}", handshake_reason(e))))
}

/// Classifies a failed request for the attempt log: `"ssrf"` (refused by the policy), `"dns"`, `"connect"`,
/// `"proxy"` (the egress proxy could not be reached or refused the tunnel, naming its status), `"tls"` (the TLS
/// handshake failed: unknown issuer, expired, name mismatch, client certificate refused, …), `"timeout"`, `"io"`
/// (sending or reading the body failed) or `"protocol"` (malformed URL or response, HTTP/2 errors), with a human
/// message. Redirects are responses, not errors, so they never appear here.
pub fn classify_send_error(e: &SendRequestError) -> (&'static str, String) {
    if let SendRequestError::Connect(ConnectError::Io(io)) = e {
        if let Some(proxy) = proxy_error(io) {
            return ("proxy", proxy.to_string());
        }
    }
    let tls = match e {
        SendRequestError::Connect(ConnectError::Io(io)) | SendRequestError::Send(io) => classify_tls(io),
        SendRequestError::Response(actix_http::error::ParseError::Io(io)) => classify_tls(io),
        _ => None,
    };
    if let Some(found) = tls {
        return found;
    }
    match e {
        SendRequestError::Connect(ce) => match ce {
            ConnectError::Resolver(inner) => match inner.downcast_ref::<SsrfError>() {
                Some(ssrf) => classify_ssrf(ssrf),
                None => ("dns", ce.to_string()),
            },
            ConnectError::NoRecords | ConnectError::Unresolved => ("dns", ce.to_string()),
            ConnectError::Timeout => ("timeout", ce.to_string()),
            ConnectError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => ("timeout", ce.to_string()),
            ConnectError::H2(_) => ("protocol", ce.to_string()),
            _ => ("connect", ce.to_string()),
        },
        SendRequestError::Timeout => ("timeout", e.to_string()),
        SendRequestError::Send(_) | SendRequestError::Body(_) => ("io", e.to_string()),
        SendRequestError::Custom(inner, _) => match inner.downcast_ref::<SsrfError>() {
            Some(ssrf) => classify_ssrf(ssrf),
            None => ("io", e.to_string()),
        },
        SendRequestError::Url(_)
        | SendRequestError::Response(_)
        | SendRequestError::Http(_)
        | SendRequestError::H2(_)
        | SendRequestError::TunnelNotSupported => ("protocol", e.to_string()),
        _ => ("io", e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::{AtomicUsize, Ordering},
        time::Duration,
    };

    use tokio::{io::AsyncWriteExt, net::TcpListener};

    use super::*;
    use crate::proxy::tests::read_head;
    use crate::proxy::NoProxy;

    /// A listener on 127.0.0.1 that answers every request with `response` and counts the connections it accepts.
    async fn serve(response: String) -> (u16, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { return };
                counter.fetch_add(1, Ordering::SeqCst);
                let response = response.clone();
                tokio::spawn(async move {
                    if read_head(&mut stream).await.is_none() {
                        return;
                    }
                    let _ = stream.write_all(response.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        (port, accepted)
    }

    const OK: &str = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";

    /// The shared TLS configuration, trusting no CA (no handshake in these tests gets that far).
    fn tls() -> Arc<ClientConfig> {
        crate::tls::install_crypto_provider();
        crate::tls::OutboundTls::with_roots(rustls::RootCertStore::empty()).unwrap().shared()
    }

    fn loopback_allowed() -> Arc<SsrfPolicy> {
        Arc::new(SsrfPolicy::new(vec!["127.0.0.1/32".parse().unwrap()]))
    }

    async fn expect_ssrf(client: &GuardedClient, url: &str) {
        let err = client.get(url).send().await.expect_err(url);
        let (kind, message) = classify_send_error(&err);
        assert_eq!(kind, "ssrf", "{url}: {message}");
        assert!(message.contains("forbidden"), "{url}: {message}");
    }

    #[actix_rt::test]
    async fn ssrf_guarded_client_refuses_internal_destinations() {
        let (port, accepted) = serve(OK.to_owned()).await;
        let client = guarded_client(Arc::new(SsrfPolicy::default()), None, 8, tls());
        expect_ssrf(&client, &format!("http://127.0.0.1:{port}/")).await;
        expect_ssrf(&client, &format!("http://127.0.0.2:{port}/")).await;
        expect_ssrf(&client, &format!("http://[::ffff:127.0.0.1]:{port}/")).await;
        expect_ssrf(&client, &format!("http://[::1]:{port}/")).await;
        // https goes through the same guard: TLS wraps the guarded connector, so nothing is connected to.
        expect_ssrf(&client, &format!("https://127.0.0.1:{port}/")).await;
        expect_ssrf(&client, &format!("https://[::ffff:127.0.0.1]:{port}/")).await;
        // A preset socket address skips resolution in actix-tls; the final gate still refuses it.
        let preset = client.get("http://example.com/").address(SocketAddr::from(([127, 0, 0, 1], port)));
        let (kind, _) = classify_send_error(&preset.send().await.unwrap_err());
        assert_eq!(kind, "ssrf");
        // Hostnames: resolved from /etc/hosts and the built-in localhost answers, never from the network.
        let hosts_only =
            guarded_client_with_dns(Arc::new(SsrfPolicy::default()), None, 8, tls(), hosts_only_resolver());
        expect_ssrf(&hosts_only, &format!("http://localhost:{port}/")).await;
        expect_ssrf(&hosts_only, &format!("http://[::ffff:127.0.0.1]:{port}/")).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 0, "no refused request may reach the listener");
    }

    #[actix_rt::test]
    async fn ssrf_guarded_client_allowlisted_destination_succeeds() {
        let (port, accepted) = serve(OK.to_owned()).await;
        let client = guarded_client(loopback_allowed(), None, 8, tls());
        let mut res = client.get(format!("http://127.0.0.1:{port}/")).send().await.unwrap();
        assert_eq!(res.status().as_u16(), 200);
        assert_eq!(res.body().await.unwrap().as_ref(), b"ok");
        expect_ssrf(&client, &format!("http://127.0.0.2:{port}/")).await;
        // localhost resolves to 127.0.0.1 (allowed) and ::1 (not allowed): one forbidden address refuses the host.
        let hosts_only = guarded_client_with_dns(loopback_allowed(), None, 8, tls(), hosts_only_resolver());
        expect_ssrf(&hosts_only, &format!("http://localhost:{port}/")).await;
        // With both loopback addresses allowed it goes through.
        let both = Arc::new(SsrfPolicy::new(vec!["127.0.0.1/32".parse().unwrap(), "::1/128".parse().unwrap()]));
        let hosts_only = guarded_client_with_dns(both, None, 8, tls(), hosts_only_resolver());
        let res = hosts_only.get(format!("http://localhost:{port}/")).send().await.unwrap();
        assert_eq!(res.status().as_u16(), 200);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[actix_rt::test]
    async fn ssrf_guarded_client_does_not_follow_redirects() {
        let (other_port, other_accepted) = serve(OK.to_owned()).await;
        let redirect = format!(
            "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{other_port}/\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let (port, _) = serve(redirect).await;
        let client = guarded_client(loopback_allowed(), None, 8, tls());
        let res = client.get(format!("http://127.0.0.1:{port}/")).send().await.unwrap();
        assert_eq!(res.status().as_u16(), 302);
        assert_eq!(res.headers().get("location").unwrap().to_str().unwrap(), format!("http://127.0.0.1:{other_port}/"));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(other_accepted.load(Ordering::SeqCst), 0, "the redirect must not be followed");
    }

    /// A listener on 127.0.0.1 playing an egress proxy: it records every request head, answers CONNECT with 403 and
    /// anything else with 200.
    async fn proxy_recording() -> (u16, Arc<std::sync::Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
        let recorded = Arc::clone(&heads);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let recorded = Arc::clone(&recorded);
                tokio::spawn(async move {
                    let Some(seen) = read_head(&mut stream).await else { return };
                    let head = String::from_utf8_lossy(&seen).into_owned();
                    let answer = if head.starts_with("CONNECT ") {
                        "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    } else {
                        OK
                    };
                    recorded.lock().unwrap().push(head);
                    let _ = stream.write_all(answer.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        (port, heads)
    }

    #[actix_rt::test]
    async fn ssrf_the_proxy_gets_vetted_destinations_only_http_in_absolute_form() {
        let (proxy_port, heads) = proxy_recording().await;
        let (port, accepted) = serve(OK.to_owned()).await;
        let no_proxy = NoProxy::parse(&["127.0.0.1"]).unwrap();
        let proxy = EgressProxy::parse(&format!("http://hook:pw@127.0.0.1:{proxy_port}"), no_proxy).unwrap();
        let both = Arc::new(SsrfPolicy::new(vec!["127.0.0.1/32".parse().unwrap(), "::1/128".parse().unwrap()]));
        let client = guarded_client_with_dns(both, Some(Arc::new(proxy)), 8, tls(), hosts_only_resolver());

        // Proxied: the absolute URL as the target, the destination as Host, the proxy's credentials.
        let res = client.post(format!("http://localhost:{port}/in?x=1")).send().await.unwrap();
        assert_eq!(res.status().as_u16(), 200);
        let head = heads.lock().unwrap()[0].clone();
        assert!(head.starts_with(&format!("POST http://localhost:{port}/in?x=1 HTTP/1.1\r\n")), "{head}");
        assert!(head.contains(&format!("\r\nhost: localhost:{port}\r\n")), "{head}");
        assert!(head.contains("\r\nproxy-authorization: Basic aG9vazpwdw==\r\n"), "{head}");
        assert_eq!(accepted.load(Ordering::SeqCst), 0, "the proxy answered, not the destination");
        // Listed in no_proxy: straight to the destination, without the proxy's credentials.
        let res = client.post(format!("http://127.0.0.1:{port}/")).send().await.unwrap();
        assert_eq!(res.status().as_u16(), 200);
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        // Refused by the policy before the proxy sees a byte, http or https.
        expect_ssrf(&client, &format!("http://127.0.0.2:{port}/")).await;
        expect_ssrf(&client, &format!("https://127.0.0.2:{port}/")).await;
        assert_eq!(heads.lock().unwrap().len(), 1);
        // A tunnel the proxy refuses: kind "proxy", naming its answer.
        let err = client.post(format!("https://localhost:{port}/")).send().await.unwrap_err();
        let (kind, message) = classify_send_error(&err);
        assert_eq!(kind, "proxy", "{message}");
        assert!(
            message.contains("403 Forbidden") && message.contains(&format!("CONNECT localhost:{port}")),
            "{message}"
        );
        let heads = heads.lock().unwrap();
        assert!(heads[1].starts_with(&format!("CONNECT localhost:{port} HTTP/1.1\r\nHost: localhost:{port}\r\n")));
        assert!(!heads.iter().any(|h| h.contains("hook:pw")), "credentials only ever go base64 in their header");
    }

    #[actix_rt::test]
    async fn ssrf_the_proxy_address_is_configuration_and_its_failures_are_named() {
        // Nothing private allowed: the proxy on 127.0.0.1 is still used (its address is not vetted), for a public
        // destination, which the recording proxy answers itself.
        let (proxy_port, heads) = proxy_recording().await;
        let proxy = EgressProxy::parse(&format!("http://127.0.0.1:{proxy_port}"), NoProxy::default()).unwrap();
        let client = guarded_client(Arc::new(SsrfPolicy::default()), Some(Arc::new(proxy)), 8, tls());
        let res = client.get("http://1.1.1.1:8080/status").send().await.unwrap();
        assert_eq!(res.status().as_u16(), 200);
        assert!(heads.lock().unwrap()[0].starts_with("GET http://1.1.1.1:8080/status HTTP/1.1\r\n"));
        // A proxy nobody listens on: kind "proxy", naming it.
        let down = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let proxy = EgressProxy::parse(&format!("http://127.0.0.1:{down}"), NoProxy::default()).unwrap();
        let client = guarded_client(Arc::new(SsrfPolicy::default()), Some(Arc::new(proxy)), 8, tls());
        for url in ["http://1.1.1.1/", "https://1.1.1.1/"] {
            let err = client.get(url).send().await.unwrap_err();
            let (kind, message) = classify_send_error(&err);
            assert_eq!(kind, "proxy", "{url}: {message}");
            assert!(message.starts_with(&format!("egress proxy 127.0.0.1:{down}: cannot connect")), "{message}");
        }
    }

    #[actix_rt::test]
    async fn ssrf_classify_other_failures() {
        // A port on 127.0.0.1 nobody listens on: bind, note the port, close.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let client = guarded_client(loopback_allowed(), None, 8, tls());
        let err = client.get(format!("http://127.0.0.1:{port}/")).send().await.unwrap_err();
        assert_eq!(classify_send_error(&err).0, "connect");
        let hosts_only = guarded_client_with_dns(loopback_allowed(), None, 8, tls(), hosts_only_resolver());
        let err = hosts_only.get("http://no-such-host.invalid/").send().await.unwrap_err();
        assert_eq!(classify_send_error(&err).0, "dns", "{err}");
        // A server that answers the ClientHello with plain HTTP: the handshake fails, and says so.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let plain = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let _ = stream.write_all(OK.as_bytes()).await;
                let _ = stream.shutdown().await;
            }
        });
        let err = client.get(format!("https://127.0.0.1:{plain}/")).send().await.unwrap_err();
        let (kind, message) = classify_send_error(&err);
        assert_eq!(kind, "tls", "{err}: {message}");
    }
}
