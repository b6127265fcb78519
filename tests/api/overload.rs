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
async fn a_body_that_stalls_gets_408_and_gives_its_reserved_bytes_back() {
    const GIB: u64 = 1 << 30;
    let app = spawn_app_with(|s| {
        // The stalled body's first reservation (its declared 4 KiB) is the whole budget.
        s.server.max_ingest_bytes = Some(4096);
        s.server.body_timeout_ms = 500;
    })
    .await;

    // Declares 4 KiB (`open`'s limit), sends ten bytes, then nothing: the byte budget is this request's.
    let mut stalled = TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    let head = "POST /ingest/open HTTP/1.1\r\nHost: x\r\nContent-Length: 4096\r\n\r\n0123456789";
    stalled.write_all(head.as_bytes()).await.unwrap();
    read_response(&mut stalled).await.assert_problem(408, "request-timeout");

    // The stalled client is still connected, yet its bytes are given back: a legitimate request fits.
    eventually("the stalled body's bytes to be given back", Duration::from_secs(60), || async {
        (app.admission.body_bytes_in_use() == 0).then_some(())
    })
    .await;
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

/// An app that takes one connection at a time, and that connection, taken and kept busy: a health check (answered,
/// so it is accepted), then a body that never comes, pipelined so that the connection is never idle (an idle one
/// would be closed by keep-alive).
async fn app_with_its_only_connection_taken() -> (TestApp, TcpStream) {
    let app = spawn_app_with(|s| {
        s.server.workers = Some(1);
        s.server.max_connections = 1;
        s.server.body_timeout_ms = 120_000;
    })
    .await;
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
    (app, first)
}

#[actix_rt::test]
async fn past_max_connections_a_new_connection_waits_until_one_closes() {
    let (app, first) = app_with_its_only_connection_taken().await;

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

#[actix_rt::test]
async fn connections_past_the_accepted_ones_wait_in_a_backlog_larger_than_the_standard_librarys() {
    let (app, first) = app_with_its_only_connection_taken().await;
    // 300 more connections, none of them accepted by hookgate: the kernel completes each handshake into the
    // listening socket's backlog (4,096 by default, capped by `net.core.somaxconn`: 4,096 on the kernels this runs
    // on, checked first). With the standard library's 128, the 130th would hang.
    let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn").unwrap().trim().parse().unwrap();
    assert!(somaxconn > 300, "net.core.somaxconn is {somaxconn}: this kernel caps every backlog below the test's 300");
    let mut waiting = Vec::new();
    for i in 0..300 {
        let connect = TcpStream::connect(("127.0.0.1", app.port));
        let stream = tokio::time::timeout(Duration::from_secs(30), connect)
            .await
            .unwrap_or_else(|_| panic!("connection {i} was not completed: the backlog is full"))
            .unwrap();
        waiting.push(stream);
    }
    drop(first);
    // And they are served once hookgate takes them.
    let last = waiting.last_mut().unwrap();
    last.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    drop(waiting.drain(..waiting.len() - 1));
    let health = read_response(waiting.last_mut().unwrap()).await;
    assert!(health.status().starts_with("HTTP/1.1 200 "), "{}", health.head);
}

/// The sum of a metric's series as this process's /metrics shows it (0 before the first sample). Every app of the
/// test process shares one recorder: only counters that grow are safe to compare this way.
async fn metric_sum(app: &TestApp, name: &str) -> f64 {
    let text = app.http.get(app.url("/metrics")).send().await.unwrap().body().limit(1 << 24).await.unwrap();
    String::from_utf8_lossy(&text)
        .lines()
        .filter(|l| l.split([' ', '{']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Sends a request head (and the first bytes of its body) on a connection of its own, and leaves the body unfinished.
async fn start_post(app: &TestApp, source: &str, declared: usize, sent: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    let head = format!("POST /ingest/{source} HTTP/1.1\r\nHost: x\r\nContent-Length: {declared}\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(sent).await.unwrap();
    stream
}

/// Holds the `events` table (in the transaction of the connection returned) and fills the writer's only flush slot
/// with an event whose sender waits (the receiver returned): once that flush waits for the lock, later units stay
/// in the writer's buffer.
async fn stall_the_writer(
    app: &TestApp,
    source: uuid::Uuid,
) -> (tokio_postgres::Client, oneshot::Receiver<Result<hookgate_actors::Persisted, hookgate_actors::PersistError>>) {
    let locker = connect(&app._db.url()).await;
    locker.batch_execute("BEGIN; LOCK TABLE events IN ACCESS EXCLUSIVE MODE").await.unwrap();
    let in_flight = persist(&app.actors.writer, event(source, "in-flight", chrono::Utc::now(), vec![]));
    // (The janitor may wait for the lock too: only the writer's statement counts.)
    eventually("the first flush to wait for the lock", Duration::from_secs(60), || async {
        (app.waiting_for_a_lock("INSERT INTO events ").await > 0).then_some(())
    })
    .await;
    (locker, in_flight)
}

#[actix_rt::test]
async fn while_the_writers_queue_stands_past_its_target_requests_are_refused_before_their_bodies() {
    let app = spawn_app_with(|s| {
        s.server.admission_target_ms = 100;
        s.server.admission_grace_ms = 400;
        s.server.ingest_timeout_ms = 120_000;
        s.server.body_timeout_ms = 120_000;
        s.writer.max_inflight_flushes = 1;
        s.database.statement_timeout_ms = 120_000;
        s.writer.flush_timeout_ms = 120_000;
    })
    .await;
    let source = id_of(&app, "SELECT id FROM sources WHERE slug = 'hmac'").await;
    let (locker, in_flight) = stall_the_writer(&app, source).await;
    // An event waits in the buffer behind the stalled flush: the queue stands, and ages.
    let queued = persist(&app.actors.writer, event(source, "queued", chrono::Utc::now(), vec![]));
    eventually("the writer's queue to stand past the target and the grace", Duration::from_secs(60), || async {
        (app.admission.queue_delay() > Duration::from_millis(100 + 400)).then_some(())
    })
    .await;

    // A request whose body has not been sent (and never will be) is refused at once: the decision comes before the
    // body is read, and nothing is stored.
    let mut refused = start_post(&app, "open", 100, b"").await;
    let answer = read_response(&mut refused).await;
    answer.assert_problem(503, "overloaded");
    let retry_after = answer
        .head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("retry-after:").map(|v| v.trim().to_owned()))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no Retry-After: {}", answer.head));
    assert!((1..=2).contains(&retry_after), "Retry-After between 1 and 2 s (jittered), got {retry_after}");

    // The queue clears: requests are taken again.
    locker.batch_execute("COMMIT").await.unwrap();
    writer_answer(in_flight).await.expect("the stalled event is committed");
    writer_answer(queued).await.expect("the queued event is committed");
    eventually("the writer's queue to clear", Duration::from_secs(60), || async {
        (app.admission.queue_delay().is_zero()).then_some(())
    })
    .await;
    let ok = app.http.post(app.url("/ingest/open")).send_body("after the queue cleared").await.unwrap();
    let ok = crate::helpers::answer(ok).await;
    assert_eq!(ok.status, 202, "{ok:?}");
    assert_eq!(app.event_count().await, 3, "the two written directly and the one accepted after; none refused");
}

#[actix_rt::test]
async fn bodies_in_progress_share_a_byte_budget_and_one_past_it_is_refused_with_503() {
    let app = spawn_app_with(|s| {
        s.server.max_ingest_bytes = Some(16 * 1024);
        s.server.body_timeout_ms = 120_000;
        s.sources.iter_mut().filter(|src| src.slug == "open").for_each(|src| src.max_body_bytes = 1 << 20);
    })
    .await;
    // A slow client has sent 6,000 bytes of a 7,000-byte body: its buffer (8 KiB) is reserved.
    let mut slow = start_post(&app, "open", 7000, &[b'a'; 6000]).await;
    eventually("the slow body's bytes to be reserved", Duration::from_secs(60), || async {
        (app.admission.body_bytes_in_use() >= 6000).then_some(())
    })
    .await;
    // A 10,000-byte body needs 16 KiB of buffer: it does not fit beside the slow one.
    let big = vec![b'b'; 10_000];
    let refused = crate::helpers::answer(app.http.post(app.url("/ingest/open")).send_body(big.clone()).await.unwrap());
    let refused = refused.await;
    assert_eq!(refused.status, 503, "{refused:?}");
    assert_eq!(refused.json["type"], "urn:hookgate:problem:overloaded", "{refused:?}");

    // The slow body completes and is stored; its bytes come back, and the big body fits.
    slow.write_all(&[b'a'; 1000]).await.unwrap();
    let done = read_response(&mut slow).await;
    assert!(done.status().starts_with("HTTP/1.1 202 "), "{}\n{}", done.head, done.json);
    eventually("the slow body's bytes to be given back", Duration::from_secs(60), || async {
        (app.admission.body_bytes_in_use() == 0).then_some(())
    })
    .await;
    let ok = crate::helpers::answer(app.http.post(app.url("/ingest/open")).send_body(big).await.unwrap()).await;
    assert_eq!(ok.status, 202, "{ok:?}");
    assert_eq!(app.event_count().await, 2);
}

#[actix_rt::test]
async fn bodies_still_arriving_hold_no_slot_so_a_complete_request_gets_through() {
    let app = spawn_app_with(|s| {
        s.server.max_inflight_ingest = 2;
        s.server.body_timeout_ms = 120_000;
    })
    .await;
    // More slow clients than slots, each with ten bytes of a hundred sent (100 bytes reserved each); the bodies
    // differ (`open` de-duplicates by the body's hash).
    let mut slow = Vec::new();
    for i in 0..3 {
        slow.push(start_post(&app, "open", 100, format!("slow-{i}....").as_bytes()).await);
    }
    eventually("every slow body to be in progress", Duration::from_secs(60), || async {
        (app.admission.body_bytes_in_use() >= 300).then_some(())
    })
    .await;
    let ok = crate::helpers::answer(app.http.post(app.url("/ingest/open")).send_body("complete").await.unwrap()).await;
    assert_eq!(ok.status, 202, "a complete request beside slow bodies: {ok:?}");
    // The slow ones finish too, each answered 202.
    for stream in &mut slow {
        stream.write_all(&[b'x'; 90]).await.unwrap();
        let done = read_response(stream).await;
        assert!(done.status().starts_with("HTTP/1.1 202 "), "{}\n{}", done.head, done.json);
    }
    assert_eq!(app.event_count().await, 4);
}

#[actix_rt::test]
async fn the_writer_refuses_an_event_past_its_byte_bound_and_takes_one_that_fits() {
    let app = spawn_app_with(|s| {
        s.writer.max_pending_bytes = Some(2000);
        s.writer.max_inflight_flushes = 1;
        s.database.statement_timeout_ms = 120_000;
        s.writer.flush_timeout_ms = 120_000;
    })
    .await;
    let source = id_of(&app, "SELECT id FROM sources WHERE slug = 'hmac'").await;
    let (locker, in_flight) = stall_the_writer(&app, source).await;
    let sized = |key: &str, n: usize| {
        let mut e = event(source, key, chrono::Utc::now(), vec![]);
        e.body = bytes::Bytes::from(vec![b'x'; n]);
        e
    };
    // The stalled event holds a few bytes; 1,500 more fit, then 600 more do not, then 400 do.
    let first = persist(&app.actors.writer, sized("fits", 1500));
    let over = persist(&app.actors.writer, sized("over", 600));
    let last = persist(&app.actors.writer, sized("fits-too", 400));
    assert_eq!(writer_answer(over).await, Err(hookgate_actors::PersistError::Overloaded));
    locker.batch_execute("COMMIT").await.unwrap();
    for rx in [in_flight, first, last] {
        writer_answer(rx).await.expect("committed");
    }
    assert_eq!(stored(&app, "over").await, 0);
    assert_eq!(app.event_count().await, 3);
}

async fn stored(app: &TestApp, key: &str) -> i64 {
    app.db.query_one("SELECT count(*) FROM events WHERE idempotency_key = $1", &[&key]).await.unwrap().get(0)
}

#[actix_rt::test]
async fn events_whose_requests_gave_up_are_dropped_before_their_flush_and_counted() {
    let app = spawn_app_with(|s| {
        s.server.ingest_timeout_ms = 300;
        // The requests below must reach the stalled writer (admission by time would refuse them first).
        s.server.admission_target_ms = 0;
        s.writer.max_inflight_flushes = 1;
        s.database.statement_timeout_ms = 120_000;
        s.writer.flush_timeout_ms = 120_000;
    })
    .await;
    let source = id_of(&app, "SELECT id FROM sources WHERE slug = 'hmac'").await;
    let writer = app.actors.writer.clone();
    let before = metric_sum(&app, "hookgate_writer_abandoned_total").await;
    // Once the only flush waits for the lock, later units stay buffered.
    let (locker, in_flight) = stall_the_writer(&app, source).await;

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
    writer
        .try_send(hookgate_actors::PersistMany { events: pair, reply, sent_at: std::time::Instant::now() })
        .map_err(|_| "mailbox full")
        .unwrap();
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
    let counted = metric_sum(&app, "hookgate_writer_abandoned_total").await - before;
    assert!(counted >= 6.0, "4 requests and a unit of 2 abandoned, {counted} counted");
}
