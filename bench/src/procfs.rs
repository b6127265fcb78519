//! Memory of the process under test, from `/proc/PID/status`.

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
