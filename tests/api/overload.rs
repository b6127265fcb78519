//! Ingest under overload and hostile clients: bodies that trickle in, more connections than the node takes, and
//! requests whose clients have given up before their events were written.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::helpers::{connect, eventually, spawn_app_with, TestApp};
use crate::poison::{answer as writer_answer, event, id_of, persist};

/// A raw HTTP/1.1 answer: its head (status line and headers) and its body as JSON (`null` when it is not).
struct Raw {
    head: String,
    json: serde_json::Value,
}

impl Raw {
    fn status(&self) -> &str {
        self.head.lines().next().unwrap_or_default()
    }

    fn assert_problem(&self, status: u16, slug: &str) {
        assert!(self.status().starts_with(&format!("HTTP/1.1 {status} ")), "{}\n{}", self.head, self.json);
        assert!(self.head.to_ascii_lowercase().contains("content-type: application/problem+json"), "{}", self.head);
        assert_eq!(self.json["type"], format!("urn:hookgate:problem:{slug}"), "{}", self.json);
        assert_eq!(self.json["status"], status, "{}", self.json);
        assert!(self.json["detail"].as_str().is_some_and(|d| !d.is_empty()), "{}", self.json);
    }
}

/// Reads one HTTP/1.1 response with a `Content-Length` body (or up to the end of the connection). Panics after
/// 60 s.
async fn read_response(stream: &mut TcpStream) -> Raw {
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&response).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                .and_then(|v| v.parse::<usize>().ok());
            if length.is_some_and(|n| response.len() >= end + 4 + n) {
                break;
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(60), stream.read(&mut buf))
            .await
            .expect("the server answers within 60 s")
            .expect("read the response");
        if n == 0 {
            break;
        }
        response.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&response).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no complete head: {text:?}"));
    Raw { head: head.to_owned(), json: serde_json::from_str(body).unwrap_or(serde_json::Value::Null) }
}

#[actix_rt::test]
async fn a_body_that_stalls_gets_408_and_gives_its_admission_permit_back() {
    const GIB: u64 = 1 << 30;
    let app = spawn_app_with(|s| {
        s.server.max_inflight_ingest = 1;
        s.server.body_timeout_ms = 500;
        // `open` takes bodies up to 2 GiB, so the declared gigabyte below is not refused up front.
        s.server.max_body_bytes = i32::MAX as usize;
        s.sources.iter_mut().filter(|src| src.slug == "open").for_each(|src| src.max_body_bytes = i32::MAX as usize);
    })
    .await;

    // Declares a gigabyte, sends ten bytes, then nothing: the one admission permit is this request's.
    let mut stalled = TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    let head = format!("POST /ingest/open HTTP/1.1\r\nHost: x\r\nContent-Length: {GIB}\r\n\r\n0123456789");
    stalled.write_all(head.as_bytes()).await.unwrap();
    read_response(&mut stalled).await.assert_problem(408, "request-timeout");

    // The stalled client is still connected, yet the permit is free: a legitimate request gets it.
    let ok = app.http.post(app.url("/ingest/open")).send_body("after the stall").await.unwrap();
    let ok = crate::helpers::answer(ok).await;
    assert_eq!(ok.status, 202, "{ok:?}");
    assert_eq!(app.event_count().await, 1);

    // A declared length over the source's limit is refused before any body is awaited: 413, not 408.
    let mut too_big = TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    let head = format!(
        "POST /ingest/hmac HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {GIB}\r\n\r\n"
    );
    too_big.write_all(head.as_bytes()).await.unwrap();
    read_response(&mut too_big).await.assert_problem(413, "payload-too-large");
    drop(stalled);
    assert_eq!(app.event_count().await, 1);
}

#[actix_rt::test]
async fn past_max_connections_a_new_connection_waits_until_one_closes() {
    let app = spawn_app_with(|s| {
        s.server.workers = Some(1);
        s.server.max_connections = 1;
        s.server.body_timeout_ms = 120_000;
    })
    .await;
    // The only connection: a health check (answered, so it is accepted), then a body that never comes, pipelined
    // so that the connection is never idle (an idle one would be closed by keep-alive).
    let mut first = TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    first
        .write_all(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n\
              POST /ingest/open HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789",
        )
        .await
        .unwrap();
    let health = read_response(&mut first).await;
    assert!(health.status().starts_with("HTTP/1.1 200 "), "{}", health.head);

    // The kernel completes the second connection, but hookgate does not take it while the first is open. (A broken
    // limit answers within milliseconds; a slow machine can only make this check pass, never fail.)
    let mut second = TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    second.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(300), second.read(&mut buf)).await;
    assert!(early.is_err(), "the second connection was served while the first held the only slot: {early:?}");

    drop(first);
    let health = read_response(&mut second).await;
    assert!(health.status().starts_with("HTTP/1.1 200 "), "{}", health.head);
}

/// `hookgate_writer_abandoned_total` as this process's /metrics shows it (0 before the first).
async fn abandoned_total(app: &TestApp) -> f64 {
    let text = app.http.get(app.url("/metrics")).send().await.unwrap().body().limit(1 << 24).await.unwrap();
    String::from_utf8_lossy(&text)
        .lines()
        .filter(|l| l.starts_with("hookgate_writer_abandoned_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn stored(app: &TestApp, key: &str) -> i64 {
    app.db.query_one("SELECT count(*) FROM events WHERE idempotency_key = $1", &[&key]).await.unwrap().get(0)
}

#[actix_rt::test]
async fn events_whose_requests_gave_up_are_dropped_before_their_flush_and_counted() {
    let app = spawn_app_with(|s| {
        s.server.ingest_timeout_ms = 300;
        s.writer.max_inflight_flushes = 1;
        s.database.statement_timeout_ms = 120_000;
        s.writer.flush_timeout_ms = 120_000;
    })
    .await;
    let source = id_of(&app, "SELECT id FROM sources WHERE slug = 'hmac'").await;
    let writer = app.actors.writer.clone();
    let before = abandoned_total(&app).await;

    // Hold the events table, then fill the writer's only flush slot with an event whose sender waits for it (the
    // test's own receiver, no HTTP deadline); once its flush waits for the lock, later units stay buffered.
    let locker = connect(&app._db.url()).await;
    locker.batch_execute("BEGIN; LOCK TABLE events IN ACCESS EXCLUSIVE MODE").await.unwrap();
    let in_flight = persist(&writer, event(source, "in-flight", chrono::Utc::now(), vec![]));
    // (The janitor may wait for the lock too: only the writer's statement counts.)
    eventually("the first flush to wait for the lock", Duration::from_secs(60), || async {
        let waiting: i64 = app
            .db
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'
                 AND pid <> pg_backend_pid() AND query LIKE '%INSERT INTO events %'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        (waiting > 0).then_some(())
    })
    .await;

    // Four requests time out while buffered: 503, nothing acknowledged.
    let keys: Vec<String> = (0..4).map(|i| format!("gave-up-{i}")).collect();
    let answers = futures::future::join_all(keys.iter().map(|k| app.post_signed(br#"{"late":true}"#, k))).await;
    for a in &answers {
        a.assert_problem(503, "storage-unavailable");
    }
    // A CloudEvents-like unit of two whose sender is gone too.
    let (reply, gone) = oneshot::channel();
    let now = chrono::Utc::now();
    let pair = vec![event(source, "gave-up-pair-1", now, vec![]), event(source, "gave-up-pair-2", now, vec![])];
    writer.try_send(hookgate_actors::PersistMany { events: pair, reply }).map_err(|_| "mailbox full").unwrap();
    drop(gone);
    // And one whose sender still waits.
    let waiting = persist(&writer, event(source, "still-waiting", chrono::Utc::now(), vec![]));

    locker.batch_execute("COMMIT").await.unwrap();
    let first = writer_answer(in_flight).await.expect("the event in flight is committed");
    let last = writer_answer(waiting).await.expect("the event still awaited is committed");
    assert!(!first.duplicate && !last.duplicate);
    assert_eq!(stored(&app, "in-flight").await, 1);
    assert_eq!(stored(&app, "still-waiting").await, 1);
    for key in keys.iter().map(String::as_str).chain(["gave-up-pair-1", "gave-up-pair-2"]) {
        assert_eq!(stored(&app, key).await, 0, "{key} was abandoned by its sender and must not be stored");
    }
    assert_eq!(app.event_count().await, 2);
    let keys_kept: i64 = app.db.query_one("SELECT count(*) FROM event_keys", &[]).await.unwrap().get(0);
    assert_eq!(keys_kept, 2, "no idempotency key of a dropped event is kept");
    // The abandoned units were ahead of the last one in the buffer: dropped (and counted) before it was answered.
    let counted = abandoned_total(&app).await - before;
    assert!(counted >= 6.0, "4 requests and a unit of 2 abandoned, {counted} counted");
}
