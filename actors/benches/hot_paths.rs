//! Criterion micro-benchmarks of the delivery and write hot paths: the Standard Webhooks signature of an outbound
//! delivery, jq filter and transform evaluation on a 1 KiB event, and the encoding of one writer batch's UNNEST
//! parameter arrays (the same arrays `writer.rs` builds, encoded as tokio-postgres sends them).
//!
//! `cargo bench -p hookgate-actors --bench hot_paths`

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use chrono::Utc;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use hookgate_actors::writer::event_rows;
use hookgate_actors::NewEvent;
use hookgate_core::jq::{route_input, JqProgram};
use hookgate_core::signing::{signature_header, SigningKey, SigningSecret};
use hookgate_store::events::EventColumns;
use uuid::Uuid;

fn body_1k() -> Vec<u8> {
    let mut body = br#"{"ref":"refs/heads/main","after":"9f2c","repository":{"full_name":"acme/api"},"pad":""#.to_vec();
    body.resize(1022, b'x');
    body.extend_from_slice(b"\"}");
    body
}

fn signing(c: &mut Criterion) {
    let body = body_1k();
    let one = vec![SigningSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap()];
    let two = vec![one[0].clone(), SigningSecret::parse(&SigningSecret::generate()).unwrap()];
    let mut g = c.benchmark_group("signature_header");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("1 KiB, one secret", |b| {
        b.iter(|| signature_header(black_box(&one), &[], "msg_2a1b", 1_700_000_000, black_box(&body)))
    });
    g.bench_function("1 KiB, two secrets (rotation)", |b| {
        b.iter(|| signature_header(black_box(&two), &[], "msg_2a1b", 1_700_000_000, black_box(&body)))
    });
    let key = vec![SigningKey::parse(&SigningKey::generate()).unwrap()];
    g.bench_function("1 KiB, one ed25519 key (v1a)", |b| {
        b.iter(|| signature_header(&[], black_box(&key), "msg_2a1b", 1_700_000_000, black_box(&body)))
    });
    g.finish();
}

fn jq(c: &mut Criterion) {
    let body = body_1k();
    let headers = [("X-GitHub-Event", "push"), ("Content-Type", "application/json")];
    let input = route_input(&body, headers, "github", Some("push"));
    let filter = JqProgram::compile(r#".headers["x-github-event"] == "push""#).unwrap();
    let transform = JqProgram::compile("{repo: .body.repository.full_name, after: .body.after}").unwrap();
    let mut g = c.benchmark_group("jq");
    g.bench_function("route_input (1 KiB JSON body)", |b| {
        b.iter(|| route_input(black_box(&body), headers, "github", Some("push")))
    });
    g.bench_function("filter first_output", |b| b.iter(|| filter.first_output(black_box(&input), 1 << 20).unwrap()));
    g.bench_function("transform first_output", |b| {
        b.iter(|| transform.first_output(black_box(&input), 1 << 20).unwrap())
    });
    g.finish();
}

fn event(i: usize, body: &Bytes, source: Uuid) -> NewEvent {
    NewEvent {
        id: Uuid::now_v7(),
        source_id: source,
        idempotency_key: format!("bench-{i}"),
        dedupe_ttl: None,
        received_at: Utc::now(),
        content_type: Some("application/json".into()),
        headers: serde_json::json!({"content-type": "application/json", "x-request-id": format!("bench-{i}"),
                                    "x-signature": "sha256=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"})
        .into(),
        body: body.clone(),
        deliveries: Vec::new(),
        event_type: Some("bench.event".into()),
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
    }
}

/// The event insert's parameters of one batch, built as the writer builds them and encoded.
fn encode_batch(events: &[&NewEvent], out: &mut BytesMut) {
    let rows = event_rows(events);
    let columns = EventColumns::new(&rows);
    for (param, ty) in columns.params().iter().zip(EventColumns::TYPES.iter()) {
        param.to_sql_checked(ty, out).unwrap();
    }
}

fn batch_encoding(c: &mut Criterion) {
    let body = Bytes::from(body_1k());
    let source = Uuid::now_v7();
    let mut g = c.benchmark_group("writer batch encoding");
    for n in [1usize, 64, 512] {
        let events: Vec<NewEvent> = (0..n).map(|i| event(i, &body, source)).collect();
        let refs: Vec<&NewEvent> = events.iter().collect();
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("{n} events of 1 KiB"), |b| {
            b.iter_batched_ref(
                || BytesMut::with_capacity(n * 1400),
                |out| encode_batch(black_box(&refs), out),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, signing, jq, batch_encoding);
criterion_main!(benches);
