//! Memory of the process under test, from `/proc/PID/status`; PostgreSQL's CPU time, from `/proc/PID/stat`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Resident set size in KiB (`VmRSS`), if the process exists.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Samples RSS every `every` until [`RssSampler::stop`]: `(milliseconds since start, KiB)`.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<(u64, u64)>>>,
}

impl RssSampler {
    pub fn start(pid: u32, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (s, out) = (stop.clone(), samples.clone());
        tokio::spawn(async move {
            let t0 = Instant::now();
            while !s.load(Ordering::Relaxed) {
                if let Some(kib) = rss_kib(pid) {
                    out.lock().expect("not poisoned").push((t0.elapsed().as_millis() as u64, kib));
                }
                tokio::time::sleep(every).await;
            }
        });
        Self { stop, samples }
    }

    pub fn stop(self) -> Vec<(u64, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        std::mem::take(&mut *self.samples.lock().expect("not poisoned"))
    }
}

/// CPU seconds (user and system) used so far by every process named `postgres` on this machine: the server and its
/// backends, background workers and autovacuum. Processes that exit between two readings take their time with them.
pub fn postgres_cpu_secs() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0.0 };
    dir.flatten()
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("stat")).ok())
        .filter_map(|stat| cpu_secs(&stat, Some("postgres")))
        .sum()
}

/// CPU seconds (user and system) used so far by the process `pid`.
pub fn process_cpu_secs(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|s| cpu_secs(&s, None)).unwrap_or(0.0)
}

/// utime + stime of one `/proc/PID/stat` line, when its command is `name` (or any command).
fn cpu_secs(stat: &str, name: Option<&str>) -> Option<f64> {
    // USER_HZ: 100 on every Linux architecture this runs on.
    const TICKS_PER_SEC: f64 = 100.0;
    // `pid (comm) state ppid …`: comm may hold spaces, so the fields are counted after its closing parenthesis.
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    if name.is_some_and(|n| &stat[open + 1..close] != n) {
        return None;
    }
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line; after comm, at 11 and 12.
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / TICKS_PER_SEC)
}
