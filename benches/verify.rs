//! Criterion micro-benchmarks of ingest signature verification: `Verifier::verify` (HMAC-SHA256, constant-time
//! compare) on 1 KiB and 64 KiB bodies, and `hmac_sha256_hex`.
//!
//! `cargo bench -p hookgate --bench verify`

use std::hint::black_box;

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hookgate::sources::{hmac_sha256_hex, Verifier};
use secrecy::SecretString;

fn verify(c: &mut Criterion) {
    let secret = "bench-secret";
    let verifier = Verifier::HmacSha256 {
        header: HeaderName::from_static("x-signature"),
        prefix: Some("sha256=".into()),
        secret: SecretString::from(secret),
    };
    let mut g = c.benchmark_group("ingest signature");
    for size in [1024usize, 64 * 1024] {
        let body = vec![b'x'; size];
        let mut headers = HeaderMap::new();
        let sig = format!("sha256={}", hmac_sha256_hex(secret.as_bytes(), &body));
        headers.insert(HeaderName::from_static("x-signature"), HeaderValue::from_str(&sig).unwrap());
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("Verifier::verify {size} B"), |b| {
            b.iter(|| verifier.verify(black_box(&headers), black_box(&body)).unwrap())
        });
        g.bench_function(format!("hmac_sha256_hex {size} B"), |b| {
            b.iter(|| hmac_sha256_hex(black_box(secret.as_bytes()), black_box(&body)))
        });
    }
    g.finish();
}

criterion_group!(benches, verify);
criterion_main!(benches);
