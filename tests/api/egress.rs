//! The egress proxy (`delivery.proxy`, `delivery.no_proxy`) against a small forward proxy run by the test: an https
//! delivery tunnelled with CONNECT and the proxy's credentials, an http one in absolute form, `no_proxy` hosts going
//! direct, destinations the SSRF policy forbids refused before the proxy sees anything, a proxy's refusal as the
//! attempt's reason, and the checks of the settings.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use secrecy::SecretString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::certs::{pem_file, server_tls, tls_files, Ca, Switchable};
use crate::helpers::{
    attempts_to, delivered_to, destination, failed_twice, hookgate_check_config, patient, route, spawn_app_with,
    test_config_toml,
};
use crate::receiver::Receiver;

/// What the proxy does with the requests it accepts.
#[derive(Debug, Clone, Copy)]
enum Policy {
    /// Tunnels CONNECT, forwards absolute-form requests.
    Forward,
    /// Answers every request with this status.
    Refuse(u16, &'static str),
}

/// A request head the proxy received (header names in lower case).
#[derive(Debug, Clone)]
struct Seen {
    line: String,
    headers: Vec<(String, String)>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// A forward proxy on 127.0.0.1: CONNECT tunnels and absolute-form requests (forwarded in origin form, one per
/// connection), each request head recorded; with `credentials`, other requests get 407.
struct ForwardProxy {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicUsize>,
}

impl ForwardProxy {
    async fn start(policy: Policy, credentials: Option<String>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (seen, connections) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicUsize::new(0)));
        let (seen2, connections2) = (seen.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                connections2.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(client, policy, credentials.clone(), seen2.clone()));
            }
        });
        Self { port, seen, connections }
    }

    /// The proxy's URL, with `userinfo` (`user:password@`, percent-encoded) before the host.
    fn url(&self, userinfo: &str) -> String {
        format!("http://{userinfo}127.0.0.1:{}", self.port)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// The head of a request (through its blank line) and whatever was read after it; `None` if the peer went away.
async fn read_head(stream: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Some((String::from_utf8_lossy(&buf).into_owned(), rest));
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn answer(client: &mut TcpStream, status: u16, reason: &str, extra: &str) {
    let head = format!("HTTP/1.1 {status} {reason}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n");
    let _ = client.write_all(head.as_bytes()).await;
}

async fn serve(mut client: TcpStream, policy: Policy, credentials: Option<String>, seen: Arc<Mutex<Vec<Seen>>>) {
    let Some((head, rest)) = read_head(&mut client).await else { return };
    let mut lines = head.split("\r\n").filter(|l| !l.is_empty());
    let line = lines.next().unwrap_or_default().to_owned();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let request = Seen { line: line.clone(), headers };
    seen.lock().unwrap().push(request.clone());
    if credentials.is_some() && request.header("proxy-authorization") != credentials.as_deref() {
        return answer(&mut client, 407, "Proxy Authentication Required", "Proxy-Authenticate: Basic realm=\"t\"\r\n")
            .await;
    }
    if let Policy::Refuse(status, reason) = policy {
        return answer(&mut client, status, reason, "").await;
    }
    let mut parts = line.splitn(3, ' ');
    let (method, target, version) =
        (parts.next().unwrap_or_default(), parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    if method == "CONNECT" {
        let Ok(mut upstream) = TcpStream::connect(target).await else {
            return answer(&mut client, 502, "Bad Gateway", "").await;
        };
        if client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await.is_ok() {
            let _ = upstream.write_all(&rest).await;
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        }
        return;
    }
    // Absolute form: http://authority/path, forwarded as `METHOD /path` with the proxy's own headers removed.
    let Some(absolute) = target.strip_prefix("http://") else {
        return answer(&mut client, 400, "Bad Request", "").await;
    };
    let (authority, path) = absolute.split_at(absolute.find('/').unwrap_or(absolute.len()));
    let Ok(mut upstream) = TcpStream::connect(authority).await else {
        return answer(&mut client, 502, "Bad Gateway", "").await;
    };
    let mut forwarded = format!("{method} {} {version}\r\n", if path.is_empty() { "/" } else { path });
    for header in head.split("\r\n").skip(1).filter(|l| !l.is_empty()) {
        let name = header.split(':').next().unwrap_or_default().trim().to_ascii_lowercase();
        if !matches!(name.as_str(), "proxy-authorization" | "connection" | "keep-alive") {
            forwarded.push_str(header);
            forwarded.push_str("\r\n");
        }
    }
    forwarded.push_str("Connection: close\r\n\r\n");
    if upstream.write_all(forwarded.as_bytes()).await.is_ok() && upstream.write_all(&rest).await.is_ok() {
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    }
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
}

/// `host:port` of a receiver's URL.
fn authority(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

#[actix_rt::test]
async fn an_https_delivery_is_tunnelled_through_the_proxy_with_its_credentials() {
    let ca = Ca::new("egress CA");
    let rx = Receiver::start_tls(server_tls(Switchable::new(&ca.server()), None));
    // The proxy answers 407 to any request without these credentials.
    let proxy = ForwardProxy::start(Policy::Forward, Some(basic("hookgate", "pa:ss w0rd"))).await;
    let ca_file = pem_file(&ca.pem());
    let (url, files, proxy_url) =
        (rx.url.clone(), tls_files(Some(&ca_file), None, None), proxy.url("hookgate:pa%3Ass%20w0rd@"));
    let app = spawn_app_with(move |s| {
        s.delivery.proxy = Some(SecretString::from(proxy_url));
        let mut d = destination("secure", &url);
        d.tls = Some(files);
        s.destinations.push(d);
        s.routes.push(route("to-secure", "hmac", "secure"));
    })
    .await;
    assert_eq!(app.post_signed(br#"{"via":"tunnel"}"#, "egress-1").await.status, 202);
    delivered_to(&app, "secure").await;

    let target = authority(&rx.url);
    let seen = proxy.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].line, format!("CONNECT {target} HTTP/1.1"));
    assert_eq!(seen[0].header("host"), Some(target));
    assert_eq!(seen[0].header("proxy-authorization"), Some(basic("hookgate", "pa:ss w0rd").as_str()));
    // The request itself went inside the tunnel, TLS end to end, without the proxy's credentials.
    let got = rx.requests();
    assert_eq!(got.len(), 1);
    assert!(got[0].header("webhook-id").is_some(), "{:?}", got[0].headers);
    assert_eq!(got[0].header("proxy-authorization"), None);
    assert_eq!(app.attempts().await, vec![(1, Some(200), None)]);
}

#[actix_rt::test]
async fn an_http_delivery_goes_to_the_proxy_in_absolute_form_and_no_proxy_hosts_go_direct() {
    let rx = Receiver::start(vec![], None);
    let proxy = ForwardProxy::start(Policy::Forward, None).await;
    let port = authority(&rx.url).rsplit_once(':').unwrap().1.to_owned();
    let (proxy_url, p) = (proxy.url(""), port.clone());
    let app = spawn_app_with(move |s| {
        s.delivery.proxy = Some(SecretString::from(proxy_url));
        s.delivery.no_proxy = vec!["example.com, 127.0.0.1".into()];
        // `localhost` resolves to 127.0.0.1 and possibly ::1: both allowed, so that hookgate lets it through.
        s.delivery.allow_private.push("::1/128".parse().unwrap());
        s.destinations.push(destination("proxied", &format!("http://localhost:{p}/hook?via=proxy")));
        s.destinations.push(destination("direct", &format!("http://127.0.0.1:{p}/hook?via=direct")));
        s.routes.push(route("to-proxied", "hmac", "proxied"));
        s.routes.push(route("to-direct", "hmac", "direct"));
    })
    .await;
    assert_eq!(app.post_signed(br#"{"via":"either"}"#, "egress-2").await.status, 202);
    delivered_to(&app, "proxied").await;
    delivered_to(&app, "direct").await;

    let seen = proxy.seen();
    assert_eq!(seen.len(), 1, "only the destination outside no_proxy went through the proxy: {seen:?}");
    assert_eq!(seen[0].line, format!("POST http://localhost:{port}/hook?via=proxy HTTP/1.1"));
    assert_eq!(seen[0].header("host"), Some(format!("localhost:{port}").as_str()));
    assert_eq!(seen[0].header("proxy-authorization"), None, "no credentials configured, none sent");
    assert!(seen[0].header("webhook-id").is_some(), "hookgate's own headers are sent: {:?}", seen[0].headers);
    let got = rx.wait_for(2).await;
    assert_eq!(got.len(), 2);
}

#[actix_rt::test]
async fn a_destination_the_policy_forbids_is_refused_before_the_proxy_sees_anything() {
    let proxy = ForwardProxy::start(Policy::Forward, None).await;
    let proxy_url = proxy.url("");
    let app = spawn_app_with(move |s| {
        s.delivery.proxy = Some(SecretString::from(proxy_url));
        // No private network allowed, so `localhost` is refused (the proxy's own address is configuration, and
        // never vetted).
        s.delivery.allow_private.clear();
        s.destinations.push(patient(destination("tls-local", "https://localhost:9/hook")));
        s.destinations.push(patient(destination("plain-local", "http://localhost:9/hook")));
        s.routes.push(route("to-tls-local", "hmac", "tls-local"));
        s.routes.push(route("to-plain-local", "hmac", "plain-local"));
    })
    .await;
    assert_eq!(app.post_signed(br#"{"to":"inside"}"#, "egress-3").await.status, 202);
    for slug in ["tls-local", "plain-local"] {
        let failed = failed_twice(&app, slug).await;
        for (kind, error) in &failed {
            assert_eq!(kind.as_deref(), Some("ssrf"), "{slug}: {failed:?}");
            assert!(error.as_deref().is_some_and(|e| e.contains("forbidden (loopback)")), "{slug}: {failed:?}");
        }
    }
    assert_eq!(proxy.connections(), 0, "the proxy saw nothing of a refused destination");
}

#[actix_rt::test]
async fn a_proxy_refusing_the_tunnel_gives_attempts_naming_its_answer() {
    let ca = Ca::new("refused CA");
    let rx = Receiver::start_tls(server_tls(Switchable::new(&ca.server()), None));
    let plain = Receiver::start(vec![], None);
    let proxy = ForwardProxy::start(Policy::Refuse(403, "Forbidden"), None).await;
    let ca_file = pem_file(&ca.pem());
    let (url, plain_url, files, proxy_url) =
        (rx.url.clone(), plain.url.clone(), tls_files(Some(&ca_file), None, None), proxy.url(""));
    let app = spawn_app_with(move |s| {
        s.delivery.proxy = Some(SecretString::from(proxy_url));
        let mut d = patient(destination("tunnelled", &url));
        d.tls = Some(files);
        s.destinations.push(d);
        s.destinations.push(patient(destination("forwarded", &plain_url)));
        s.routes.push(route("to-tunnelled", "hmac", "tunnelled"));
        s.routes.push(route("to-forwarded", "hmac", "forwarded"));
    })
    .await;
    assert_eq!(app.post_signed(br#"{"to":"blocked"}"#, "egress-4").await.status, 202);

    // https: the tunnel was refused, so no request was made; the attempt names the proxy's answer.
    let expected = format!("refused CONNECT {}: 403 Forbidden", authority(&rx.url));
    let failed = failed_twice(&app, "tunnelled").await;
    for (kind, error) in &failed {
        assert_eq!(kind.as_deref(), Some("proxy"), "{failed:?}");
        let error = error.as_deref().unwrap_or_default();
        assert!(error.contains(&expected) && error.contains(&format!("127.0.0.1:{}", proxy.port)), "{failed:?}");
    }
    // http: the proxy's refusal is the response to the request itself.
    failed_twice(&app, "forwarded").await;
    let statuses: Vec<Option<i32>> = app
        .db
        .query(
            "SELECT a.status FROM attempts a JOIN deliveries d ON d.id = a.delivery_id
             JOIN destinations t ON t.id = d.destination_id WHERE t.slug = 'forwarded'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(statuses.iter().all(|s| *s == Some(403)), "{statuses:?}");
    assert!(attempts_to(&app, "forwarded").await.iter().all(|(kind, _)| kind.as_deref() == Some("http_status")));
    assert_eq!(rx.count() + plain.count(), 0, "nothing reached the receivers");
}

#[test]
fn check_config_checks_the_proxy_settings_from_the_environment_without_showing_credentials() {
    let config = test_config_toml();
    let ok = hookgate_check_config(
        &config,
        &[
            ("HOOKGATE_DELIVERY__PROXY", "http://hookgate:hunter2@proxy.internal:3128"),
            ("HOOKGATE_DELIVERY__NO_PROXY", ".internal,10.0.0.0/8,*.svc.cluster.local"),
        ],
    );
    assert!(ok.status.success(), "{ok:?}");
    assert!(!String::from_utf8_lossy(&ok.stdout).contains("hunter2"));
    let cases = [
        ("HOOKGATE_DELIVERY__PROXY", "https://hookgate:hunter2@proxy.internal:3128", "https:// proxies"),
        ("HOOKGATE_DELIVERY__PROXY", "socks5://hookgate:hunter2@proxy.internal:1080", "must be an http:// URL"),
        ("HOOKGATE_DELIVERY__PROXY", "http://hookgate:hunter2@proxy.internal:3128/path", "path"),
        ("HOOKGATE_DELIVERY__NO_PROXY", "example.com:8080", "\"example.com:8080\""),
    ];
    for (name, value, needle) in cases {
        let out = hookgate_check_config(&config, &[(name, value)]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{value}: {out:?}");
        assert!(stderr.contains(needle), "{value}: {stderr}");
        assert!(!stderr.contains("hunter2"), "{value}: {stderr}");
    }
}
