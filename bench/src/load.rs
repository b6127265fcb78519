//! The load patterns: closed loop (each connection sends its next request when the previous one is answered) and
//! open loop (requests are due at fixed times whatever happens; latency counts from the time a request was due, so
//! a stalled server is not hidden by a stalled generator: no coordinated omission).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::client::Conn;
use crate::workload::Workload;

/// Microseconds, 1 µs to 10 min, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

/// What one run observed.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Answers by status code.
    pub statuses: BTreeMap<u16, u64>,
    /// Requests that got no answer (connection refused, reset, closed early).
    pub errors: u64,
    /// Latency of 2xx answers (µs). Open loop: from the time the request was due.
    pub ok: Histogram<u64>,
    /// Latency of 503 answers (µs), measured like `ok`.
    pub unavailable: Histogram<u64>,
    /// Service time of every answer (µs): from the moment the request was written.
    pub service: Histogram<u64>,
    /// Service time of the 503 answers alone (µs): how fast the server refuses, without generator-side waiting.
    pub service_503: Histogram<u64>,
    /// Wall time of the run.
    pub elapsed: Duration,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            statuses: BTreeMap::new(),
            errors: 0,
            ok: histogram(),
            unavailable: histogram(),
            service: histogram(),
            service_503: histogram(),
            elapsed: Duration::ZERO,
        }
    }
}

impl Stats {
    fn record(&mut self, result: std::io::Result<u16>, latency: Duration, service: Duration) {
        match result {
            Ok(status) => {
                *self.statuses.entry(status).or_default() += 1;
                let us = |d: Duration| (d.as_micros() as u64).max(1);
                let _ = self.service.record(us(service));
                if (200..300).contains(&status) {
                    let _ = self.ok.record(us(latency));
                } else if status == 503 {
                    let _ = self.unavailable.record(us(latency));
                    let _ = self.service_503.record(us(service));
                }
            }
            Err(_) => self.errors += 1,
        }
    }

    fn merge(&mut self, other: &Stats) {
        for (s, n) in &other.statuses {
            *self.statuses.entry(*s).or_default() += n;
        }
        self.errors += other.errors;
        let _ = self.ok.add(&other.ok);
        let _ = self.unavailable.add(&other.unavailable);
        let _ = self.service.add(&other.service);
        let _ = self.service_503.add(&other.service_503);
    }

    /// 2xx answers.
    pub fn ok_count(&self) -> u64 {
        self.statuses.range(200..300).map(|(_, n)| n).sum()
    }

    pub fn count(&self, status: u16) -> u64 {
        self.statuses.get(&status).copied().unwrap_or(0)
    }

    /// All answers plus errors.
    pub fn total(&self) -> u64 {
        self.statuses.values().sum::<u64>() + self.errors
    }

    /// 2xx answers per second.
    pub fn ok_rate(&self) -> f64 {
        self.ok_count() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Closed loop: `connections` connections each send the next request as soon as the previous one is answered, for
/// `duration`. Latency is service time.
pub async fn closed_loop(w: Arc<Workload>, connections: usize, duration: Duration) -> Stats {
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..connections.max(1))
        .map(|_| {
            let w = w.clone();
            tokio::spawn(async move {
                let mut conn = Conn::new(w.addr);
                let mut stats = Stats::default();
                let (mut req, mut scratch) = (Vec::new(), Vec::new());
                while Instant::now() < deadline {
                    w.next_request(&mut req, &mut scratch);
                    let t0 = Instant::now();
                    let result = conn.send(&req).await;
                    let took = t0.elapsed();
                    if result.is_err() {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    stats.record(result, took, took);
                }
                stats
            })
        })
        .collect();
    finish(tasks, started).await
}

/// Open loop: `rate` requests per second for `duration`, request *i* due at `start + i / rate`, spread over a pool
/// of `connections` (a request waits for a free connection when all are busy, and that wait counts).
pub async fn open_loop(w: Arc<Workload>, rate: f64, connections: usize, duration: Duration) -> Stats {
    let started = Instant::now() + Duration::from_millis(20);
    let total = (rate * duration.as_secs_f64()).round() as u64;
    let next = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..connections.max(1))
        .map(|_| {
            let (w, next) = (w.clone(), next.clone());
            tokio::spawn(async move {
                let mut conn = Conn::new(w.addr);
                let mut stats = Stats::default();
                let (mut req, mut scratch) = (Vec::new(), Vec::new());
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let due = started + Duration::from_secs_f64(i as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                    w.next_request(&mut req, &mut scratch);
                    let t0 = Instant::now();
                    let result = conn.send(&req).await;
                    let done = Instant::now();
                    stats.record(result, done - due, done - t0);
                }
                stats
            })
        })
        .collect();
    finish(tasks, started).await
}

async fn finish(tasks: Vec<tokio::task::JoinHandle<Stats>>, started: Instant) -> Stats {
    let mut all = Stats::default();
    for t in tasks {
        if let Ok(s) = t.await {
            all.merge(&s);
        }
    }
    all.elapsed = Instant::now().saturating_duration_since(started);
    all
}
