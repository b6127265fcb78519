//! The circuit breaker against a receiver with a tiny accept queue: a backlog built while the circuit was open is
//! drained without the breaker thrashing (ramp after the probe, a burst of timeouts counted once, short opens).

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use hookgate_actors::limits::{CircuitConfig, CircuitState, Limits};
use socket2::{Domain, Socket, Type};

use crate::helpers::{destination, eventually, route, spawn_app_with};

const DELIVERED: &str = "SELECT count(*) FROM deliveries WHERE state = 'delivered'";
const EVENTS: usize = 3_000;

/// An HTTP receiver that answers one request per connection, one connection at a time (each costs it a round trip
/// with the client, plus `per_request`), behind a listen backlog of 5: concurrent connections beyond a handful
/// overflow its accept queue and sit in SYN retransmission (1 s, then 3 s: past a 2 s timeout if dropped twice).
/// Bound but not listening, it refuses connections until `listen`.
struct SerialReceiver {
    addr: SocketAddr,
    socket: Option<Socket>,
    stop: Arc<AtomicBool>,
    /// `webhook-id`s answered 200.
    seen: Arc<Mutex<HashSet<String>>>,
}

impl SerialReceiver {
    fn bind() -> Self {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        socket.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into()).unwrap();
        let addr = socket.local_addr().unwrap().as_socket().unwrap();
        Self { addr, socket: Some(socket), stop: Arc::default(), seen: Arc::default() }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Starts listening (backlog 5) and serving, serially, on a thread of its own.
    fn listen(&mut self, per_request: Duration) {
        let socket = self.socket.take().expect("listening once");
        socket.listen(5).unwrap();
        let listener: TcpListener = socket.into();
        let (stop, seen) = (self.stop.clone(), self.seen.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                // A connection whose client gave up reads as EOF or an error: skipped.
                let Some(id) = read_request(&mut stream) else { continue };
                std::thread::sleep(per_request);
                let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";
                if stream.write_all(reply).and_then(|()| stream.flush()).is_ok() {
                    seen.lock().unwrap().insert(id);
                }
            }
        });
    }

    fn distinct(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

impl Drop for SerialReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees `stop`.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

/// Reads one request (headers and a `content-length` body); returns its `webhook-id`.
fn read_request(stream: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let header = |name: &str| {
                head.lines().find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')).map(str::trim))
            };
            let len: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
            let id = header("webhook-id")?.to_owned();
            while buf.len() < end + 4 + len {
                let n = stream.read(&mut chunk).ok().filter(|n| *n > 0)?;
                buf.extend_from_slice(&chunk[..n]);
            }
            return Some(id);
        }
        let n = stream.read(&mut chunk).ok().filter(|n| *n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[actix_rt::test]
async fn a_backlog_built_while_the_circuit_was_open_drains_without_thrashing_into_a_small_accept_queue() {
    let mut rx = SerialReceiver::bind();
    // The defaults: threshold 5, ratio 0.5 over 20, ramp 2..64, first open 1 s doubling up to open_secs = 30 s.
    let circuit = CircuitConfig::default();
    let url = rx.url();
    let app = spawn_app_with(move |s| {
        s.delivery.circuit = circuit;
        let mut d = destination("small-queue", &url);
        d.timeout_ms = 2_000;
        d.max_in_flight = 64;
        d.retry = hookgate_core::retry::RetryPolicy { delays_ms: vec![100], max_attempts: 10_000, jitter: 0.0 };
        s.destinations.push(d);
        s.routes.push(route("r", "hmac", "small-queue"));
    })
    .await;
    let dest: uuid::Uuid = app.db.query_one("SELECT id FROM destinations", &[]).await.unwrap().get(0);
    let limits = Limits::new(&app.settings.redis.key_prefix, circuit);
    let conn =
        redis::Client::open(crate::helpers::redis_url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let state = || async { limits.state(Some(conn.clone()), dest).await.0 };

    // The backlog, while the receiver refuses connections: the circuit opens and the deliveries wait.
    let app_ref = &app;
    let statuses: Vec<u16> =
        futures::stream::iter(0..EVENTS)
            .map(|i| async move {
                app_ref.post_signed(format!(r#"{{"i":{i}}}"#).as_bytes(), &format!("c-{i}")).await.status
            })
            .buffer_unordered(16)
            .collect()
            .await;
    assert!(statuses.iter().all(|s| *s == 202), "every event accepted");
    app.wait_count("every delivery created", "SELECT count(*) FROM deliveries", EVENTS as i64).await;
    eventually("the circuit to open", Duration::from_secs(60), || async {
        matches!(state().await, CircuitState::Open | CircuitState::HalfOpen).then_some(())
    })
    .await;
    let delivered: i64 = app.db.query_one(DELIVERED, &[]).await.unwrap().get(0);
    assert_eq!(delivered, 0);

    // The receiver comes back, slow and with a small accept queue; the next probe succeeds.
    // Serial service alone makes it slow enough (no extra delay: on a loaded machine the debug build needs most of
    // the 15 s for 3,000 deliveries through one serial receiver).
    rx.listen(Duration::ZERO);
    eventually("the probe to succeed", Duration::from_secs(60), || async {
        matches!(state().await, CircuitState::Ramping | CircuitState::Closed).then_some(())
    })
    .await;
    let opens_at_close = opens_total(&app).await;
    // From the breaker's close, the whole backlog drains without the breaker opening again. The old breaker closed
    // fully on the probe's success and sent 64 connections at once; when those whose SYN was dropped twice timed out
    // together at 2 s it counted them as 5+ consecutive failures and re-opened for open_secs (30 s), again and again
    // (~300-400 delivered per 31 s). Emulated here (burst rule, ramp and back-off off) it re-opened in one run of
    // two; the unit tests in limits.rs pin each rule. The deadline is a hang guard, not a measurement: the debug
    // build on a loaded 2-core machine took 10.6 to 15.3 s (the release build's figure is in the chaos suite).
    eventually(&format!("all {EVENTS} delivered"), Duration::from_secs(90), || async {
        let n: i64 = app.db.query_one(DELIVERED, &[]).await.unwrap().get(0);
        (n == EVENTS as i64).then_some(())
    })
    .await;
    assert_eq!(opens_total(&app).await, opens_at_close, "the breaker opened again while the backlog drained");
    assert_eq!(rx.distinct(), EVENTS, "every delivery reached the receiver");

    // The breaker is visible in the metrics.
    let mut resp = app.http.get(app.url("/metrics")).send().await.unwrap();
    let text = String::from_utf8(resp.body().limit(1 << 24).await.unwrap().to_vec()).unwrap();
    let label = r#"destination="small-queue""#;
    for name in ["hookgate_circuit_state{", "hookgate_circuit_opens_total{"] {
        assert!(text.lines().any(|l| l.starts_with(name) && l.contains(label)), "no {name}{label}}} in /metrics");
    }
}

/// `hookgate_circuit_opens_total` of the destination, as this node's /metrics shows it (0 when absent).
async fn opens_total(app: &crate::helpers::TestApp) -> u64 {
    let mut resp = app.http.get(app.url("/metrics")).send().await.unwrap();
    let text = String::from_utf8(resp.body().limit(1 << 24).await.unwrap().to_vec()).unwrap();
    let label = r#"destination="small-queue""#;
    text.lines()
        .find(|l| l.starts_with("hookgate_circuit_opens_total{") && l.contains(label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or(0)
}
