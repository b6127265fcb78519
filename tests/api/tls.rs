//! HTTPS destinations against local TLS receivers, with a CA and certificates generated here: trusted through a
//! destination's own CA, handshake failures as attempts of kind `tls` with their reason, mutual TLS, destination
//! headers, and the checks of TLS settings and headers in the configuration and the admin API.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{ExtendedKeyUsagePurpose, SanType};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use serde_json::{json, Value};

use crate::admin::{with_tokens, READ, WRITE};
use crate::certs::{Ca, Leaf};
use crate::helpers::{destination, eventually, route, spawn_app_with, TempConfig, TestApp};
use crate::receiver::Receiver;

const DELIVERED: &str = "SELECT count(*) FROM deliveries WHERE state = 'delivered'";

/// The server certificate of a receiver, which the test can replace while it runs.
#[derive(Debug)]
struct Switchable(Mutex<Arc<CertifiedKey>>);

impl Switchable {
    fn new(leaf: &Leaf) -> Arc<Self> {
        Arc::new(Self(Mutex::new(leaf.certified())))
    }

    fn set(&self, leaf: &Leaf) {
        *self.0.lock().unwrap() = leaf.certified();
    }
}

impl ResolvesServerCert for Switchable {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.lock().unwrap().clone())
    }
}

/// A receiver's TLS: its certificate, and, with `client_ca`, a client certificate from that CA required.
fn server_tls(cert: Arc<Switchable>, client_ca: Option<&Ca>) -> ServerConfig {
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
fn pem_file(text: &str) -> TempConfig {
    TempConfig::new(text)
}

fn tls_files(
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

/// (error_kind, error) of the attempts made to the destination `slug`, in order.
async fn attempts_to(app: &TestApp, slug: &str) -> Vec<(Option<String>, Option<String>)> {
    app.db
        .query(
            "SELECT a.error_kind, a.error FROM attempts a
             JOIN deliveries d ON d.id = a.delivery_id JOIN destinations t ON t.id = d.destination_id
             WHERE t.slug = $1 ORDER BY a.started_at, a.attempt",
            &[&slug],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Waits until `slug` has at least two failed attempts (the failure was retried on schedule); answers them.
async fn failed_twice(app: &TestApp, slug: &str) -> Vec<(Option<String>, Option<String>)> {
    eventually(&format!("two failed attempts to {slug}"), Duration::from_secs(60), || async {
        let got = attempts_to(app, slug).await;
        (got.len() >= 2).then_some(got)
    })
    .await
}

async fn delivered_to(app: &TestApp, slug: &str) {
    eventually(&format!("a delivery to {slug} delivered"), Duration::from_secs(60), || async {
        let n: i64 = app
            .db
            .query_one(
                "SELECT count(*) FROM deliveries d JOIN destinations t ON t.id = d.destination_id
                 WHERE t.slug = $1 AND d.state = 'delivered'",
                &[&slug],
            )
            .await
            .unwrap()
            .get(0);
        (n > 0).then_some(())
    })
    .await
}

/// Retries every 300 ms without jitter, long enough for a test to fix the cause meanwhile.
fn patient(mut d: hookgate_core::catalog::DestinationSpec) -> hookgate_core::catalog::DestinationSpec {
    d.retry = hookgate_core::retry::RetryPolicy { delays_ms: vec![300], max_attempts: 100, jitter: 0.0 };
    d
}

#[actix_rt::test]
async fn an_https_destination_trusted_through_its_ca_file_is_delivered_signed_and_with_its_headers() {
    let ca = Ca::new("hookgate test CA");
    let rx = Receiver::start_tls(server_tls(Switchable::new(&ca.server()), None));
    assert!(rx.url.starts_with("https://127.0.0.1:"), "{}", rx.url);
    let ca_file = pem_file(&ca.pem());
    let secret = hookgate_core::signing::SigningSecret::generate();
    let (url, secret2, files) = (rx.url.clone(), secret.clone(), tls_files(Some(&ca_file), None, None));
    let app = spawn_app_with(move |s| {
        let mut d = destination("secure", &url);
        d.signing_secrets = vec![secret2];
        d.tls = Some(files);
        d.headers = [("X-Env".to_owned(), "prod".to_owned()), ("Authorization".to_owned(), "Bearer t0k".to_owned())]
            .into_iter()
            .collect();
        s.destinations.push(d);
        s.routes.push(route("to-secure", "hmac", "secure"));
    })
    .await;
    let body = br#"{"order":7}"#;
    assert_eq!(app.post_signed(body, "tls-1").await.status, 202);
    app.wait_count("the https delivery to be delivered", DELIVERED, 1).await;

    let got = rx.requests();
    assert_eq!(got.len(), 1);
    let req = &got[0];
    assert_eq!(&req.body[..], body);
    let mut headers = http::HeaderMap::new();
    for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        headers.insert(name, req.header(name).unwrap().parse().unwrap());
    }
    standardwebhooks::Webhook::new(&secret).unwrap().verify(&req.body, &headers).expect("signature verifies");
    assert_eq!(req.header("x-env"), Some("prod"), "destination headers are sent: {:?}", req.headers);
    assert_eq!(req.header("authorization"), Some("Bearer t0k"));
    assert_eq!(req.header("content-type"), Some("application/json"), "hookgate's own headers stay");
    assert_eq!(app.attempts().await, vec![(1, Some(200), None)]);
}

#[actix_rt::test]
async fn handshake_failures_are_tls_attempts_with_their_reason_retried_until_the_cause_is_fixed() {
    let ca = Ca::new("the receivers' CA");
    // Unknown issuer: the destination trusts only the shared roots (none in tests) until its CA is added.
    let unknown = Receiver::start_tls(server_tls(Switchable::new(&ca.server()), None));
    // Expired, and a name that is not 127.0.0.1: the destinations trust the CA; the receivers' certificates are
    // replaced by good ones once the failures are seen.
    let expired_cert = Switchable::new(&ca.issue(
        SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        ExtendedKeyUsagePurpose::ServerAuth,
        true,
    ));
    let expired = Receiver::start_tls(server_tls(expired_cert.clone(), None));
    let other_name = Switchable::new(&ca.issue(
        SanType::DnsName("other.example".try_into().unwrap()),
        ExtendedKeyUsagePurpose::ServerAuth,
        false,
    ));
    let mismatch = Receiver::start_tls(server_tls(other_name.clone(), None));

    let ca_file = pem_file(&ca.pem());
    let (expired_url, mismatch_url) = (expired.url.clone(), mismatch.url.clone());
    let (files1, files2) = (tls_files(Some(&ca_file), None, None), tls_files(Some(&ca_file), None, None));
    let app = spawn_app_with(move |s| {
        with_tokens(s);
        let mut d = patient(destination("expired", &expired_url));
        d.tls = Some(files1);
        s.destinations.push(d);
        let mut d = patient(destination("mismatch", &mismatch_url));
        d.tls = Some(files2);
        s.destinations.push(d);
        s.routes.push(route("to-expired", "hmac", "expired"));
        s.routes.push(route("to-mismatch", "hmac", "mismatch"));
    })
    .await;
    let input = |tls: Option<Value>| {
        let mut v = json!({"slug": "unknown", "url": unknown.url, "retry": {"delays_ms": [300], "max_attempts": 100, "jitter": 0.0}});
        if let Some(t) = tls {
            v["tls"] = t;
        }
        v
    };
    let created = app.admin_ok("post", "/destinations", Some(input(None))).await;
    let id = created["destination"]["id"].as_str().unwrap().to_owned();
    app.admin_ok("post", "/routes", Some(json!({"slug": "to-unknown", "source": "hmac", "destination": "unknown"})))
        .await;
    // The route reaches every node with the catalog's NOTIFY: events are sent until one is routed to it.
    let n = std::cell::Cell::new(0);
    eventually("an event routed to the admin-made destination", Duration::from_secs(30), || async {
        n.set(n.get() + 1);
        let key = format!("tls-fail-{}", n.get());
        assert_eq!(app.post_signed(br#"{"n":1}"#, &key).await.status, 202);
        let routed: i64 = app
            .db
            .query_one(
                "SELECT count(*) FROM deliveries d JOIN destinations t ON t.id = d.destination_id WHERE t.slug = 'unknown'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        (routed > 0).then_some(())
    })
    .await;

    for (slug, reason) in
        [("unknown", "unknown issuer"), ("expired", "certificate expired"), ("mismatch", "name mismatch")]
    {
        let failed = failed_twice(&app, slug).await;
        for (kind, error) in &failed {
            assert_eq!(kind.as_deref(), Some("tls"), "{slug}: {failed:?}");
            assert!(
                error.as_deref().is_some_and(|e| e.starts_with(reason)),
                "{slug}: expected {reason:?} in {failed:?}"
            );
        }
    }
    assert_eq!(unknown.count() + expired.count() + mismatch.count(), 0, "no request was sent over a failed handshake");

    // Fixed: the CA added through the admin API, the receivers given valid certificates.
    let updated =
        app.admin_ok("put", &format!("/destinations/{id}"), Some(input(Some(json!({"ca_pem": ca.pem()}))))).await;
    assert_eq!(updated["tls"]["ca_pem"], ca.pem().as_str(), "{updated}");
    assert_eq!(updated["tls"]["has_client_key"], false);
    expired_cert.set(&ca.server());
    other_name.set(&ca.server());
    for slug in ["unknown", "expired", "mismatch"] {
        delivered_to(&app, slug).await;
    }
    assert!(unknown.count() >= 1 && expired.count() >= 1 && mismatch.count() >= 1);
}

#[actix_rt::test]
async fn a_receiver_requiring_a_client_certificate_refuses_a_destination_without_one_and_takes_one_with_it() {
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let rx = Receiver::start_tls(server_tls(Switchable::new(&server_ca.server()), Some(&client_ca)));
    let client = client_ca.client(false);
    let (ca_file, cert_file, key_file) =
        (pem_file(&server_ca.pem()), pem_file(&client.cert_pem), pem_file(&client.key_pem));
    let url = rx.url.clone();
    let (without, with) =
        (tls_files(Some(&ca_file), None, None), tls_files(Some(&ca_file), Some(&cert_file), Some(&key_file)));
    let app = spawn_app_with(move |s| {
        let mut d = patient(destination("anonymous", &url));
        d.tls = Some(without);
        s.destinations.push(d);
        let mut d = destination("mutual", &url);
        d.tls = Some(with);
        s.destinations.push(d);
        s.routes.push(route("to-anonymous", "hmac", "anonymous"));
        s.routes.push(route("to-mutual", "hmac", "mutual"));
    })
    .await;
    assert_eq!(app.post_signed(br#"{"mtls":true}"#, "mtls-1").await.status, 202);
    delivered_to(&app, "mutual").await;
    assert_eq!(attempts_to(&app, "mutual").await, vec![(None, None)]);
    let refused = failed_twice(&app, "anonymous").await;
    for (kind, error) in &refused {
        assert_eq!(kind.as_deref(), Some("tls"), "{refused:?}");
        assert!(error.as_deref().is_some_and(|e| e.contains("client certificate")), "{refused:?}");
    }
    assert_eq!(rx.count(), 1, "only the destination with a client certificate got through");
}

#[actix_rt::test]
async fn the_admin_api_checks_tls_settings_and_headers_and_never_shows_the_key() {
    let app = spawn_app_with(with_tokens).await;
    let ca = Ca::new("admin CA");
    let client = ca.client(false);
    let other = ca.client(false);
    let expired = ca.client(true);
    let dest = |tls: Value, headers: Value| json!({"slug": "partner", "url": "https://partner.example/hook", "tls": tls, "headers": headers});
    let refused = |field: &'static str, needle: &'static str| {
        move |a: crate::helpers::Answer| {
            a.assert_problem(422, "validation-failed");
            let detail = a.json["detail"].as_str().unwrap().to_owned();
            assert!(detail.contains(field) && detail.contains(needle), "expected {field} / {needle}: {detail}");
        }
    };
    let post = |body: Value| app.admin("post", "/destinations", Some(WRITE), Some(body));

    refused("tls.ca_pem", "")(post(dest(json!({"ca_pem": "not a certificate"}), json!({}))).await);
    let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    refused("tls.ca_pem", "certificate")(post(dest(json!({"ca_pem": garbage}), json!({}))).await);
    refused("tls.key_pem", "needs")(post(dest(json!({"cert_pem": client.cert_pem}), json!({}))).await);
    refused("tls.cert_pem", "needs")(post(dest(json!({"key_pem": client.key_pem}), json!({}))).await);
    refused("tls.key_pem", "private key")(
        post(dest(json!({"cert_pem": client.cert_pem, "key_pem": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"}), json!({}))).await,
    );
    refused("tls.key_pem", "does not match")(
        post(dest(json!({"cert_pem": client.cert_pem, "key_pem": other.key_pem}), json!({}))).await,
    );
    refused("tls.cert_pem", "expired")(
        post(dest(json!({"cert_pem": expired.cert_pem, "key_pem": expired.key_pem}), json!({}))).await,
    );
    for name in
        ["Webhook-Signature", "traceparent", "Content-Length", "Host", "Transfer-Encoding", "Proxy-Authorization"]
    {
        let mut headers = serde_json::Map::new();
        headers.insert(name.to_owned(), json!("x"));
        refused(name, "cannot be set")(post(dest(json!({}), Value::Object(headers))).await);
    }
    refused("bad name", "not a valid header name")(post(dest(json!({}), json!({"bad name": "x"}))).await);
    assert_eq!(app.db.query_one("SELECT count(*) FROM destinations", &[]).await.unwrap().get::<_, i64>(0), 0);

    let tls = json!({"ca_pem": ca.pem(), "cert_pem": client.cert_pem, "key_pem": client.key_pem});
    let created = app.admin_ok("post", "/destinations", Some(dest(tls, json!({"X-Env": "prod"})))).await;
    let id = created["destination"]["id"].as_str().unwrap().to_owned();
    let key_body = client.key_pem.lines().nth(1).unwrap().to_owned();
    let shown = created.to_string();
    assert!(!shown.contains(&key_body) && !shown.contains("key_pem") && !shown.contains("PRIVATE KEY"), "{shown}");
    let view = &created["destination"];
    assert_eq!(view["tls"]["has_client_key"], true, "{view}");
    assert_eq!(view["tls"]["cert_pem"], client.cert_pem.as_str());
    assert!(view["tls"]["client_cert_subject"].as_str().unwrap().contains("hookgate test"), "{view}");
    assert!(view["tls"]["client_cert_not_after"].as_str().is_some(), "{view}");
    assert_eq!(view["headers"], json!({"X-Env": "prod"}));
    for path in [format!("/destinations/{id}"), "/destinations".to_owned()] {
        let got = app.admin("get", &path, Some(READ), None).await;
        assert_eq!(got.status, 200);
        let text = got.json.to_string();
        assert!(!text.contains(&key_body) && !text.contains("PRIVATE KEY"), "{path}: {text}");
    }
    // An update without `tls` keeps it; `{}` removes it.
    let kept = app
        .admin_ok(
            "put",
            &format!("/destinations/{id}"),
            Some(json!({"slug": "partner", "url": "https://partner.example/hook"})),
        )
        .await;
    assert_eq!(kept["tls"]["has_client_key"], true, "{kept}");
    assert_eq!(kept["headers"], json!({}), "headers are replaced like every other setting");
    let stored: Option<String> = app.db.query_one("SELECT tls_key_pem FROM destinations", &[]).await.unwrap().get(0);
    assert_eq!(stored.as_deref(), Some(client.key_pem.as_str()), "the key is stored for the deliverers");
    let cleared = app
        .admin_ok(
            "put",
            &format!("/destinations/{id}"),
            Some(json!({"slug": "partner", "url": "https://partner.example/hook", "tls": {}})),
        )
        .await;
    assert!(cleared["tls"].is_null(), "{cleared}");
}

fn hookgate_check_config(toml: &str) -> std::process::Output {
    let file = TempConfig::new(toml);
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_hookgate"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("HOOKGATE_")) {
        cmd.env_remove(k);
    }
    cmd.arg("check-config").arg(&file.0).output().unwrap()
}

#[test]
fn check_config_refuses_bad_tls_files_and_forbidden_headers_naming_them() {
    let ca = Ca::new("config CA");
    let good = ca.client(false);
    let expired = ca.client(true);
    let other = ca.client(false);
    let files: Vec<TempConfig> = [
        &ca.pem(),
        &good.cert_pem,
        &good.key_pem,
        &expired.cert_pem,
        &expired.key_pem,
        &other.key_pem,
        &"garbage".to_owned(),
    ]
    .iter()
    .map(|t| pem_file(t))
    .collect();
    let path = |i: usize| files[i].0.display().to_string();
    let config = |extra: &str| {
        format!(
            "{}\n[[destinations]]\nslug = \"partner\"\nurl = \"https://partner.example/hook\"\n{extra}\n",
            crate::helpers::test_config_toml()
        )
    };
    let ok = hookgate_check_config(&config(&format!(
        "tls = {{ ca_file = \"{}\", cert_file = \"{}\", key_file = \"{}\" }}\nheaders = {{ \"X-Env\" = \"prod\" }}",
        path(0),
        path(1),
        path(2)
    )));
    assert!(ok.status.success(), "{ok:?}");
    let cases = [
        (format!("tls = {{ cert_file = \"{}\", key_file = \"{}\" }}", path(3), path(4)), "tls.cert_file", "expired"),
        (
            format!("tls = {{ cert_file = \"{}\", key_file = \"{}\" }}", path(1), path(5)),
            "tls.key_file",
            "does not match",
        ),
        (format!("tls = {{ cert_file = \"{}\" }}", path(1)), "tls.key_file", "needs"),
        (format!("tls = {{ ca_file = \"{}\" }}", path(6)), "tls.ca_file", "certificate"),
        ("tls = { ca_file = \"/nonexistent/ca.pem\" }".to_owned(), "tls.ca_file", "cannot read"),
        ("headers = { \"Host\" = \"evil.example\" }".to_owned(), "\"Host\"", "cannot be set"),
        ("headers = { \"webhook-signature\" = \"v1,forged\" }".to_owned(), "\"webhook-signature\"", "cannot be set"),
    ];
    for (extra, field, needle) in cases {
        let out = hookgate_check_config(&config(&extra));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra}: {out:?}");
        assert!(stderr.contains("partner") && stderr.contains(field) && stderr.contains(needle), "{extra}: {stderr}");
        assert!(!stderr.contains("PRIVATE KEY"), "{stderr}");
    }
}
