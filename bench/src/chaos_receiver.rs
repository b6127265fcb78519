//! The chaos suite's receivers: minimal HTTP/1.1 servers with a listen backlog of 5 (as small services have), each
//! with one behaviour (answer 200 at once, answer after a delay, never answer, answer a fixed status). Each counts
//! the deliveries per idempotency key, read from the delivered JSON body's `"key"` field, with the first arrival's
//! time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;

use crate::load::histogram;

/// The listen backlog of every receiver.
pub const BACKLOG: u32 = 5;
/// Longest a `Hang` receiver holds a connection it never answers.
const HANG_CAP: Duration = Duration::from_secs(120);
/// Longest a connection may stay idle between requests.
const IDLE_CAP: Duration = Duration::from_secs(120);

#[derive(Clone, Copy, Debug)]
pub enum Behavior {
    /// 200 at once.
    Ok,
    /// 200 after this delay.
    Slow(Duration),
    /// Never answers: holds the connection until the client gives up.
    Hang,
    /// This status at once.
    Status(u16),
}

#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    pub count: u32,
    pub first: Instant,
}

#[derive(Debug, Default)]
pub struct RxState {
    requests: AtomicU64,
    keys: Mutex<HashMap<String, Arrival>>,
}

impl RxState {
    /// Requests received (with or without a key).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    fn record(&self, key: Option<String>) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if let Some(key) = key {
            let now = Instant::now();
            self.keys
                .lock()
                .expect("not poisoned")
                .entry(key)
                .and_modify(|a| a.count += 1)
                .or_insert(Arrival { count: 1, first: now });
        }
    }

    pub fn arrival(&self, key: &str) -> Option<Arrival> {
        self.keys.lock().expect("not poisoned").get(key).copied()
    }

    /// Of `keys`: how many arrived at least once, and the extra arrivals (duplicates) among them.
    pub fn tally<'a>(&self, keys: impl Iterator<Item = &'a String>) -> (u64, u64) {
        let map = self.keys.lock().expect("not poisoned");
        let (mut delivered, mut dups) = (0, 0);
        for k in keys {
            if let Some(a) = map.get(k) {
                delivered += 1;
                dups += u64::from(a.count - 1);
            }
        }
        (delivered, dups)
    }

    /// Of `acked` (key → time its 202 came back): how many first arrived within `[from, to)`.
    pub fn first_arrivals_between(&self, acked: &HashMap<String, Instant>, from: Instant, to: Instant) -> u64 {
        let map = self.keys.lock().expect("not poisoned");
        acked.keys().filter_map(|k| map.get(k)).filter(|a| a.first >= from && a.first < to).count() as u64
    }

    /// Latency from each acknowledged key's 202 to its first arrival here (µs).
    pub fn latency(&self, acked: &HashMap<String, Instant>) -> Histogram<u64> {
        let map = self.keys.lock().expect("not poisoned");
        let mut h = histogram();
        for (k, acked_at) in acked {
            if let Some(a) = map.get(k) {
                let us = a.first.saturating_duration_since(*acked_at).as_micros() as u64;
                let _ = h.record(us.max(1));
            }
        }
        h
    }

    /// The `n` slowest of these events: when each was acknowledged (seconds after the first acknowledgement) and
    /// how long it took to arrive (ms), slowest first. Tells a burst (all at one moment) from a steady tail.
    pub fn slowest(&self, acked: &HashMap<String, Instant>, n: usize) -> Vec<(f64, f64)> {
        let Some(start) = acked.values().min().copied() else { return Vec::new() };
        let map = self.keys.lock().expect("not poisoned");
        let mut all: Vec<(f64, f64)> = acked
            .iter()
            .filter_map(|(k, at)| {
                let a = map.get(k)?;
                Some((
                    at.duration_since(start).as_secs_f64(),
                    a.first.saturating_duration_since(*at).as_secs_f64() * 1e3,
                ))
            })
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1));
        all.truncate(n);
        all
    }
}

/// A running receiver on 127.0.0.1:`port`; stops when dropped.
pub struct ChaosReceiver {
    pub port: u16,
    pub state: Arc<RxState>,
    stop: watch::Sender<bool>,
}

impl ChaosReceiver {
    pub fn start(behavior: Behavior) -> anyhow::Result<Self> {
        let socket = TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(([127, 0, 0, 1], 0).into())?;
        let port = socket.local_addr()?.port();
        let listener = socket.listen(BACKLOG)?;
        let state = Arc::new(RxState::default());
        let (stop, stop_rx) = watch::channel(false);
        let st = state.clone();
        tokio::spawn(async move {
            let mut stop_rx2 = stop_rx.clone();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let _ = stream.set_nodelay(true);
                        tokio::spawn(serve(stream, behavior, st.clone(), stop_rx.clone()));
                    }
                    _ = stop_rx2.changed() => break,
                }
            }
        });
        Ok(Self { port, state, stop })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for ChaosReceiver {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// The `"key":"…"` field of a delivered body.
pub fn key_of(body: &[u8]) -> Option<String> {
    const KEY: &[u8] = b"\"key\":\"";
    let at = body.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let end = body[at..].iter().position(|&b| b == b'"')? + at;
    String::from_utf8(body[at..end].to_vec()).ok()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        410 => "Gone",
        500 => "Internal Server Error",
        _ => "Status",
    }
}

async fn serve(mut stream: TcpStream, behavior: Behavior, state: Arc<RxState>, mut stop: watch::Receiver<bool>) {
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    loop {
        // One request: the head, then Content-Length bytes of body.
        let (head_len, body_len, close) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let mut len = 0usize;
                    let mut close = req.version == Some(0);
                    for h in req.headers.iter() {
                        if h.name.eq_ignore_ascii_case("content-length") {
                            len = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(0);
                        } else if h.name.eq_ignore_ascii_case("connection") {
                            close = h.value.eq_ignore_ascii_case(b"close");
                        }
                    }
                    break (n, len, close);
                }
                Ok(httparse::Status::Partial) => {}
                Err(_) => return,
            }
            if !read_more(&mut stream, &mut buf, &mut stop).await {
                return;
            }
        };
        while buf.len() < head_len + body_len {
            if !read_more(&mut stream, &mut buf, &mut stop).await {
                return;
            }
        }
        let key = key_of(&buf[head_len..head_len + body_len]);
        buf.drain(..head_len + body_len);
        state.record(key);
        let status = match behavior {
            Behavior::Ok => 200,
            Behavior::Status(s) => s,
            Behavior::Slow(d) => {
                tokio::select! {
                    _ = tokio::time::sleep(d) => 200,
                    _ = stop.changed() => return,
                }
            }
            Behavior::Hang => {
                // Hold the connection, unanswered, until the client closes it (its timeout) or the cap.
                let mut sink = [0u8; 1024];
                let _ = tokio::time::timeout(HANG_CAP, async {
                    loop {
                        tokio::select! {
                            r = stream.read(&mut sink) => {
                                if matches!(r, Ok(0) | Err(_)) {
                                    return;
                                }
                            }
                            _ = stop.changed() => return,
                        }
                    }
                })
                .await;
                return;
            }
        };
        let response = format!(
            "HTTP/1.1 {status} {}\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n{}\r\nok",
            reason(status),
            if close { "connection: close\r\n" } else { "" }
        );
        if stream.write_all(response.as_bytes()).await.is_err() || close {
            return;
        }
    }
}

/// Reads more bytes; false on EOF, error, stop or an idle connection.
async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>, stop: &mut watch::Receiver<bool>) -> bool {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(8192);
    }
    tokio::select! {
        r = tokio::time::timeout(IDLE_CAP, stream.read_buf(buf)) => matches!(r, Ok(Ok(n)) if n > 0),
        _ = stop.changed() => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_key_from_a_body() {
        assert_eq!(key_of(br#"{"key":"s1-3-17","sent_ns":1}"#).as_deref(), Some("s1-3-17"));
        assert_eq!(key_of(b"{}"), None);
    }

    #[tokio::test]
    async fn counts_deliveries_per_key_and_answers_keep_alive() {
        let rx = ChaosReceiver::start(Behavior::Ok).unwrap();
        let mut conn = crate::client::Conn::new(([127, 0, 0, 1], rx.port).into());
        for key in ["a", "b", "a"] {
            let body = format!(r#"{{"key":"{key}"}}"#);
            let req = format!(
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            assert_eq!(conn.send(req.as_bytes()).await.unwrap(), 200);
        }
        assert_eq!(rx.state.requests(), 3);
        let keys = ["a".to_string(), "b".to_string(), "c".to_string()];
        assert_eq!(rx.state.tally(keys.iter()), (2, 1));
    }
}
