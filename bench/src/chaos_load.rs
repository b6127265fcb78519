//! The chaos suite's load: concurrent posters, each sending signed JSON events with unique idempotency keys
//! (`<prefix>-<poster>-<seq>`, also in the body's `"key"` field) at a share of a total rate, and a ledger of what
//! came back: every key answered 202 (acknowledged) with the time of its answer, the other statuses, and the
//! requests that got no answer. Bounded: it stops at its deadline or when told, each request waits at most
//! [`REQUEST_TIMEOUT`], and at most `rate × duration` (plus one per poster) requests are sent.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::client::Conn;
use crate::workload::{hmac_hex, now_ns};

pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// Where and how the load posts.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub secret: String,
}

/// One answer that was not a 202: its time and status (`None`: no answer: refused, reset or timed out).
#[derive(Clone, Copy, Debug)]
pub struct Other {
    pub at: Instant,
    pub status: Option<u16>,
}

#[derive(Debug, Default)]
pub struct Ledger {
    /// Key → time its 202 came back.
    pub acked: HashMap<String, Instant>,
    /// Every answer other than 202, in order.
    pub others: Vec<Other>,
}

impl Ledger {
    /// "503x12, no answer x3", or "-".
    pub fn others_text(&self, within: impl Fn(&Other) -> bool) -> String {
        let mut by: BTreeMap<String, u64> = BTreeMap::new();
        for o in self.others.iter().filter(|o| within(o)) {
            let k = o.status.map_or_else(|| "no answer ".to_string(), |s| s.to_string());
            *by.entry(k).or_default() += 1;
        }
        if by.is_empty() {
            return "-".into();
        }
        by.iter().map(|(k, n)| format!("{k}x{n}")).collect::<Vec<_>>().join(", ")
    }

    pub fn merge(&mut self, other: Ledger) {
        self.acked.extend(other.acked);
        self.others.extend(other.others);
    }
}

/// A signed request for `source` carrying `key`.
pub fn request(target: &Target, source: &str, key: &str, body_size: usize) -> Vec<u8> {
    let mut body = format!(r#"{{"key":"{key}","sent_ns":{},"pad":""#, now_ns());
    let pad = body_size.saturating_sub(body.len() + 2);
    body.extend(std::iter::repeat_n('x', pad));
    body.push_str("\"}");
    let sig = hmac_hex(target.secret.as_bytes(), body.as_bytes());
    format!(
        "POST /ingest/{source} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         X-Request-Id: {key}\r\nX-Signature: sha256={sig}\r\n\r\n{body}",
        target.addr,
        body.len()
    )
    .into_bytes()
}

/// Sends one request with the [`REQUEST_TIMEOUT`]; `None` when no answer came.
pub async fn send_once(conn: &mut Conn, addr: SocketAddr, req: &[u8]) -> Option<u16> {
    match tokio::time::timeout(REQUEST_TIMEOUT, conn.send(req)).await {
        Ok(Ok(status)) => Some(status),
        Ok(Err(_)) => None,
        Err(_) => {
            // The connection may be in the middle of a response: start a fresh one.
            *conn = Conn::new(addr);
            None
        }
    }
}

/// A running load.
pub struct Load {
    stop: Arc<AtomicBool>,
    ledger: Arc<Mutex<Ledger>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// `posters` concurrent posters sending `rate` events/s in all to `source` for at most `duration`.
    pub fn start(target: &Target, source: &str, prefix: &str, rate: f64, posters: usize, duration: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ledger: Arc<Mutex<Ledger>> = Arc::default();
        let posters = posters.max(1);
        let interval = Duration::from_secs_f64(posters as f64 / rate.max(0.1));
        let start = Instant::now();
        let end = start + duration;
        let tasks = (0..posters)
            .map(|p| {
                let (target, source, stop, ledger) = (target.clone(), source.to_string(), stop.clone(), ledger.clone());
                let prefix = format!("{prefix}-{p}");
                tokio::spawn(async move {
                    let mut conn = Conn::new(target.addr);
                    let mut due = start + interval.mul_f64(p as f64 / posters as f64);
                    let mut seq = 0u64;
                    loop {
                        tokio::time::sleep_until(due.into()).await;
                        let now = Instant::now();
                        if now >= end || stop.load(Ordering::Relaxed) {
                            break;
                        }
                        // Behind schedule (a slow answer, an outage): resume the pace from now, no burst.
                        due = (due + interval).max(now);
                        seq += 1;
                        let key = format!("{prefix}-{seq}");
                        let req = request(&target, &source, &key, 256);
                        let status = send_once(&mut conn, target.addr, &req).await;
                        let at = Instant::now();
                        {
                            let mut l = ledger.lock().expect("not poisoned");
                            match status {
                                Some(202) => {
                                    l.acked.insert(key, at);
                                }
                                status => l.others.push(Other { at, status }),
                            }
                        }
                        if status.is_none() {
                            // Nobody answering (hookgate killed): do not spin.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                })
            })
            .collect();
        Self { stop, ledger, tasks }
    }

    /// Acknowledged so far.
    pub fn acked(&self) -> usize {
        self.ledger.lock().expect("not poisoned").acked.len()
    }

    /// Waits until the load's duration is over (the posters stop by themselves) and returns the ledger.
    pub async fn join(mut self) -> Ledger {
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
        std::mem::take(&mut *self.ledger.lock().expect("not poisoned"))
    }

    /// Stops the posters (each finishes the request it is in, bounded by [`REQUEST_TIMEOUT`]) and returns the
    /// ledger.
    pub async fn finish(mut self) -> Ledger {
        self.stop.store(true, Ordering::Relaxed);
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
        std::mem::take(&mut *self.ledger.lock().expect("not poisoned"))
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
