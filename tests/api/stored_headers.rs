//! The headers stored with an event never hold a credential, for every verification kind: not in `events.headers`,
//! not in the admin API's view of the event (read-only tokens see it), not in what route programs (jq) read.
//! Signature headers (a MAC or a signature of that one body) are not credentials and are kept.

use awc::http::header::HeaderValue;
use base64::Engine;
use hookgate::config::Settings;
use hookgate_core::verify::{hmac_sha256_hex, standard_webhooks_v1};
use secrecy::SecretString;
use serde_json::Value;
use uuid::Uuid;

use crate::admin::{with_tokens, READ};
use crate::helpers::{answer, destination, route, sign, spawn_app_with, TestApp};
use crate::receiver::Receiver;

const B64: base64::engine::general_purpose::GeneralPurpose = base64::engine::general_purpose::STANDARD;
const SWH_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// One source per verification kind, beside the helpers' `open` (`none`) and `hmac` (`hmac_sha256`).
fn sources() -> Settings {
    Settings::from_toml(&format!(
        r#"
        [[sources]]
        slug = "generic"
        verification = {{ kind = "hmac", header = "X-Sig", secret = "generic-secret" }}
        [[sources]]
        slug = "github"
        verification = {{ kind = "github", secret = "github-secret" }}
        [[sources]]
        slug = "shopify"
        verification = {{ kind = "shopify", secret = "shopify-secret" }}
        [[sources]]
        slug = "stripe"
        verification = {{ kind = "stripe", secret = "whsec_stripe_secret" }}
        [[sources]]
        slug = "swh"
        verification = {{ kind = "standard_webhooks", secret = "{SWH_SECRET}" }}
        [[sources]]
        slug = "basic"
        verification = {{ kind = "basic", username = "hook", password = "basic-password" }}
        [[sources]]
        slug = "bearer"
        verification = {{ kind = "bearer", token = "bearer-token-1" }}
        [[sources]]
        slug = "apikey"
        verification = {{ kind = "api_key", header = "X-Api-Key", key = "api-key-123" }}
        [[sources]]
        slug = "cekey"
        cloudevents = true
        verification = {{ kind = "api_key", header = "X-Ce-Key", key = "ce-key-456" }}
        "#
    ))
    .expect("the test's sources")
}

/// A valid request to one source, and what must and must not be stored of its headers.
struct Case {
    kind: &'static str,
    source: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    /// Headers that must not be stored (lower-case).
    dropped: Vec<&'static str>,
    /// Headers that must be stored (lower-case).
    kept: Vec<&'static str>,
    /// A secret (or its encoding) that must appear nowhere.
    secret: String,
}

fn cases() -> Vec<Case> {
    let t = chrono::Utc::now().timestamp();
    let mac_b64 =
        |secret: &str, body: &[u8]| B64.encode(hex::decode(hmac_sha256_hex(secret.as_bytes(), body)).unwrap());
    let basic = B64.encode("hook:basic-password");
    let mut cases = Vec::new();
    let body = br#"{"kind":"none"}"#.to_vec();
    cases.push(Case {
        kind: "none",
        source: "open",
        headers: vec![("Authorization", "Bearer not-for-hookgate".into()), ("Cookie", "session=s3cr3t".into())],
        body,
        dropped: vec!["authorization", "cookie"],
        kept: vec![],
        secret: "not-for-hookgate".into(),
    });
    let body = br#"{"kind":"hmac_sha256"}"#.to_vec();
    cases.push(Case {
        kind: "hmac_sha256",
        source: "hmac",
        headers: vec![
            ("Content-Type", "application/json".into()),
            ("X-Signature", sign(&body)),
            ("X-Request-Id", "hmac-1".into()),
        ],
        body,
        dropped: vec![],
        kept: vec!["x-signature"],
        secret: crate::helpers::HMAC_SECRET.into(),
    });
    let body = br#"{"kind":"hmac"}"#.to_vec();
    cases.push(Case {
        kind: "hmac",
        source: "generic",
        headers: vec![("X-Sig", hmac_sha256_hex(b"generic-secret", &body))],
        body,
        dropped: vec![],
        kept: vec!["x-sig"],
        secret: "generic-secret".into(),
    });
    let body = br#"{"kind":"github"}"#.to_vec();
    cases.push(Case {
        kind: "github",
        source: "github",
        headers: vec![
            ("X-Hub-Signature-256", format!("sha256={}", hmac_sha256_hex(b"github-secret", &body))),
            ("X-GitHub-Delivery", "gh-1".into()),
            ("X-GitHub-Event", "push".into()),
        ],
        body,
        dropped: vec![],
        kept: vec!["x-hub-signature-256"],
        secret: "github-secret".into(),
    });
    let body = br#"{"kind":"shopify"}"#.to_vec();
    cases.push(Case {
        kind: "shopify",
        source: "shopify",
        headers: vec![
            ("X-Shopify-Hmac-Sha256", mac_b64("shopify-secret", &body)),
            ("X-Shopify-Webhook-Id", "shop-1".into()),
        ],
        body,
        dropped: vec![],
        kept: vec!["x-shopify-hmac-sha256"],
        secret: "shopify-secret".into(),
    });
    let body = br#"{"id":"evt_1","type":"charge.succeeded"}"#.to_vec();
    let signed = [format!("{t}.").as_bytes(), &body].concat();
    cases.push(Case {
        kind: "stripe",
        source: "stripe",
        headers: vec![("Stripe-Signature", format!("t={t},v1={}", hmac_sha256_hex(b"whsec_stripe_secret", &signed)))],
        body,
        dropped: vec![],
        kept: vec!["stripe-signature"],
        secret: "whsec_stripe_secret".into(),
    });
    let body = br#"{"kind":"standard_webhooks"}"#.to_vec();
    let signature = standard_webhooks_v1(&SecretString::from(SWH_SECRET), "msg_1", t, &body).unwrap();
    cases.push(Case {
        kind: "standard_webhooks",
        source: "swh",
        headers: vec![
            ("webhook-id", "msg_1".into()),
            ("webhook-timestamp", t.to_string()),
            ("webhook-signature", signature),
        ],
        body,
        dropped: vec![],
        kept: vec!["webhook-signature"],
        secret: SWH_SECRET.into(),
    });
    cases.push(Case {
        kind: "basic",
        source: "basic",
        headers: vec![("Authorization", format!("Basic {basic}"))],
        body: br#"{"kind":"basic"}"#.to_vec(),
        dropped: vec!["authorization"],
        kept: vec![],
        secret: basic.clone(),
    });
    cases.push(Case {
        kind: "bearer",
        source: "bearer",
        headers: vec![("Authorization", "Bearer bearer-token-1".into())],
        body: br#"{"kind":"bearer"}"#.to_vec(),
        dropped: vec!["authorization"],
        kept: vec![],
        secret: "bearer-token-1".into(),
    });
    cases.push(Case {
        kind: "api_key",
        source: "apikey",
        headers: vec![("X-Api-Key", "api-key-123".into())],
        body: br#"{"kind":"api_key"}"#.to_vec(),
        dropped: vec!["x-api-key"],
        kept: vec![],
        secret: "api-key-123".into(),
    });
    cases
}

async fn post(app: &TestApp, source: &str, headers: &[(&str, String)], body: &[u8]) -> crate::helpers::Answer {
    let mut req = app.http.post(app.url(&format!("/ingest/{source}")));
    for (k, v) in headers {
        req = req.append_header((*k, HeaderValue::from_str(v).expect("valid header")));
    }
    // Every request also carries an ordinary header, which is stored.
    req = req.append_header(("X-Trace", "trace-1"));
    answer(req.send_body(body.to_vec()).await.expect("request sent")).await
}

/// The stored headers of an event, and its headers as a read-only admin token sees them.
async fn headers_of(app: &TestApp, id: Uuid) -> (Value, Value) {
    let stored: Value = app.db.query_one("SELECT headers FROM events WHERE id = $1", &[&id]).await.unwrap().get(0);
    let view = app.admin("get", &format!("/events/{id}"), Some(READ), None).await;
    assert_eq!(view.status, 200, "{view:?}");
    (stored, view.json)
}

#[actix_rt::test]
async fn no_verification_kind_stores_or_shows_its_credential_header() {
    let rx = Receiver::start(vec![], None);
    let url = rx.url.clone();
    let extra = sources();
    let app = spawn_app_with(move |s| {
        with_tokens(s);
        s.sources.extend(extra.sources);
        s.destinations.push(destination("sink", &url));
        // What jq reads: the transform's output is the delivered body (stored with the delivery).
        for source in ["apikey", "bearer", "cekey"] {
            let mut r = route(&format!("headers-of-{source}"), source, "sink");
            r.transform = Some("{headers: .headers}".into());
            s.routes.push(r);
        }
    })
    .await;

    for case in cases() {
        let a = post(&app, case.source, &case.headers, &case.body).await;
        assert_eq!(a.status, 202, "{}: {a:?}", case.kind);
        let (stored, view) = headers_of(&app, a.id()).await;
        for (what, headers) in [("stored", &stored), ("admin view", &view["headers"])] {
            assert_eq!(headers["x-trace"], "trace-1", "{}: {what}: {headers}", case.kind);
            for name in &case.dropped {
                assert!(headers.get(*name).is_none(), "{}: {what} holds the credential {name}: {headers}", case.kind);
            }
            for name in &case.kept {
                assert!(headers.get(*name).is_some(), "{}: {what} lacks the signature {name}: {headers}", case.kind);
            }
        }
        assert!(!view.to_string().contains(&case.secret), "{}: the admin view holds the secret: {view}", case.kind);
        assert!(!stored.to_string().contains(&case.secret), "{}: the stored row holds the secret", case.kind);
    }

    // A CloudEvents batch to an api_key source: no event of it keeps the key.
    let batch = serde_json::json!([
        {"specversion": "1.0", "id": "1", "source": "/s", "type": "t"},
        {"specversion": "1.0", "id": "2", "source": "/s", "type": "t"},
    ]);
    let headers =
        [("Content-Type", "application/cloudevents-batch+json".to_owned()), ("X-Ce-Key", "ce-key-456".to_owned())];
    let a = post(&app, "cekey", &headers, batch.to_string().as_bytes()).await;
    assert_eq!(a.status, 202, "{a:?}");
    let ids: Vec<Uuid> =
        a.json["events"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().parse().unwrap()).collect();
    assert_eq!(ids.len(), 2);
    for id in ids {
        let (stored, view) = headers_of(&app, id).await;
        assert_eq!(stored["x-trace"], "trace-1", "{stored}");
        assert!(stored.get("x-ce-key").is_none() && view["headers"].get("x-ce-key").is_none(), "{stored} {view}");
        assert!(!view.to_string().contains("ce-key-456"), "{view}");
    }

    // What the routes' transforms read (delivered as the body, whether evaluated at ingest or deferred) had no
    // credential either: one delivery per event of apikey and bearer, and of the batch of two.
    for request in rx.wait_for(4).await {
        let payload: Value = serde_json::from_slice(&request.body).expect("the transform's output");
        assert_eq!(payload["headers"]["x-trace"], "trace-1", "{payload}");
        for name in ["x-api-key", "authorization", "x-ce-key"] {
            assert!(payload["headers"].get(name).is_none(), "jq read {name}: {payload}");
        }
    }
}
