//! Verification cost per scheme on a 1 KiB body: `cargo bench --bench verify`.

use base64::Engine;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use ed25519_dalek::Signer;
use hookgate_core::source::VerificationConfig;
use hookgate_core::verify::{hmac_sha256_hex, standard_webhooks_v1, Verifier};
use http::{HeaderMap, HeaderName, HeaderValue};
use secrecy::SecretString;

const NOW: i64 = 1_700_000_000;
const SWH_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn verifier(json: serde_json::Value) -> Verifier {
    let cfg: VerificationConfig = serde_json::from_value(json).unwrap();
    Verifier::from_config(&cfg).unwrap()
}

fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(HeaderName::from_static(k), HeaderValue::from_str(v).unwrap());
    }
    h
}

fn bench(c: &mut Criterion) {
    let body = vec![b'x'; 1024];
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut group = c.benchmark_group("verify_1KiB");

    let github = verifier(serde_json::json!({"kind": "github", "secret": "s"}));
    let h = headers(&[("x-hub-signature-256", format!("sha256={}", hmac_sha256_hex(b"s", &body)))]);
    group.bench_function("github_hmac_sha256", |b| b.iter(|| github.verify_at(black_box(&h), black_box(&body), NOW)));

    let stripe = verifier(serde_json::json!({"kind": "stripe", "secret": "whsec_s"}));
    let signed = [format!("{NOW}.").into_bytes(), body.clone()].concat();
    let h = headers(&[("stripe-signature", format!("t={NOW},v1={}", hmac_sha256_hex(b"whsec_s", &signed)))]);
    group.bench_function("stripe_hmac_sha256", |b| b.iter(|| stripe.verify_at(black_box(&h), black_box(&body), NOW)));

    let swh = verifier(serde_json::json!({"kind": "standard_webhooks", "secret": SWH_SECRET}));
    let sig = standard_webhooks_v1(&SecretString::from(SWH_SECRET), "msg_1", NOW, &body).unwrap();
    let h =
        headers(&[("webhook-id", "msg_1".into()), ("webhook-timestamp", NOW.to_string()), ("webhook-signature", sig)]);
    group.bench_function("standard_webhooks_v1_hmac", |b| {
        b.iter(|| swh.verify_at(black_box(&h), black_box(&body), NOW))
    });

    let sk = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let pk = format!("whpk_{}", b64.encode(sk.verifying_key().to_bytes()));
    let swh_a = verifier(serde_json::json!({"kind": "standard_webhooks", "public_key": pk}));
    let msg = [format!("msg_1.{NOW}.").into_bytes(), body.clone()].concat();
    let sig = format!("v1a,{}", b64.encode(sk.sign(&msg).to_bytes()));
    let h =
        headers(&[("webhook-id", "msg_1".into()), ("webhook-timestamp", NOW.to_string()), ("webhook-signature", sig)]);
    group.bench_function("standard_webhooks_v1a_ed25519", |b| {
        b.iter(|| swh_a.verify_at(black_box(&h), black_box(&body), NOW))
    });

    let basic = verifier(serde_json::json!({"kind": "basic", "username": "u", "password": "p"}));
    let h = headers(&[("authorization", format!("Basic {}", b64.encode("u:p")))]);
    group.bench_function("basic", |b| b.iter(|| basic.verify_at(black_box(&h), black_box(&body), NOW)));
    group.finish();

    for v in [&github, &stripe, &swh, &swh_a, &basic] {
        assert!(format!("{v:?}").contains("REDACTED"));
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
