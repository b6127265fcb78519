//! Ingest admission: whether this node takes one more request, decided by time and by bytes, never by a count of
//! connections a slow client can fill.
//!
//! - **Time**: the [`EventWriter`](crate::EventWriter) publishes when the oldest unit still waiting in its buffer
//!   arrived ([`Admission::set_oldest`]). While that unit has waited longer than the target
//!   (`server.admission_target_ms`), the queue is standing, not a burst: ingest refuses new requests with 503 before
//!   reading their bodies, so the writer's queue, and every accepted request's wait, stays near the target while the
//!   database goes on committing at its full rate. The moment the head of the queue is younger than the target,
//!   requests are taken again. This is CoDel's signal (sojourn time over a target) used for admission at the edge,
//!   where a refusal costs almost nothing, instead of for dropping what was already queued.
//! - **Bytes**: request bodies held by ingest requests in progress, from their first byte to the answer, share one
//!   budget (`server.max_ingest_bytes`): each chunk is reserved as it arrives, so a slow client holds what it sent,
//!   and a request whose next chunk does not fit is refused with 503. The writer bounds the bytes it holds on its
//!   own (`writer.max_pending_bytes`).
//!
//! See `docs/adr/0016-admission-by-time-and-bytes.md`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The default budget of a byte bound when the process has no cgroup memory limit.
pub const DEFAULT_BYTE_BUDGET: u64 = 64 * 1024 * 1024;
/// A byte bound derived from a cgroup memory limit takes this share of it (`limit / 8`)…
const LIMIT_SHARE: u64 = 8;
/// …but never less than this,
const MIN_DERIVED_BUDGET: u64 = 8 * 1024 * 1024;
/// …nor more than this.
const MAX_DERIVED_BUDGET: u64 = 1024 * 1024 * 1024;

/// The admission state one node's ingest handlers and its EventWriter share.
#[derive(Debug)]
pub struct Admission {
    epoch: Instant,
    target: Duration,
    /// When the oldest unit waiting in the writer's buffer arrived, in microseconds since `epoch` plus one (0: the
    /// buffer is empty).
    oldest: AtomicU64,
    bodies: Arc<Semaphore>,
    body_budget: usize,
}

/// The bytes of one request's body, reserved against the node's budget until dropped.
#[derive(Debug)]
pub struct BodyReservation {
    permit: Option<OwnedSemaphorePermit>,
    bodies: Arc<Semaphore>,
    budget: usize,
}

/// Why a body's next bytes were not reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverBudget {
    /// Not now: other bodies in progress hold the rest of the budget (a retry can succeed: 503).
    Busy,
    /// Never: this body alone needs more than the whole budget (413).
    TooLarge { budget: usize },
}

impl Admission {
    /// `target` zero turns admission by time off (only the byte budget and the writer's own bounds refuse).
    pub fn new(target: Duration, body_budget: usize) -> Self {
        // A semaphore holds at most `Semaphore::MAX_PERMITS`, and a chunk is reserved with a u32 count.
        let body_budget = body_budget.clamp(1, Semaphore::MAX_PERMITS);
        // The epoch lies before any arrival the writer can report (it dates them up to a minute back).
        let now = Instant::now();
        Self {
            epoch: now.checked_sub(Duration::from_secs(3600)).unwrap_or(now),
            target,
            oldest: AtomicU64::new(0),
            bodies: Arc::new(Semaphore::new(body_budget)),
            body_budget,
        }
    }

    /// How long the oldest unit still waiting in the writer's buffer has waited (zero when none waits).
    pub fn queue_delay(&self) -> Duration {
        match self.oldest.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            stamp => self.epoch.elapsed().saturating_sub(Duration::from_micros(stamp - 1)),
        }
    }

    /// Whether a new request is taken now: its body is not read otherwise.
    pub fn admits(&self) -> bool {
        self.target.is_zero() || self.queue_delay() <= self.target
    }

    /// The writer's buffer now starts with a unit that arrived at `arrived` (`None`: the buffer is empty).
    pub fn set_oldest(&self, arrived: Option<Instant>) {
        let stamp = arrived.map_or(0, |at| {
            let since = at.saturating_duration_since(self.epoch).as_micros();
            u64::try_from(since).unwrap_or(u64::MAX - 1) + 1
        });
        self.oldest.store(stamp, Ordering::Relaxed);
    }

    /// An empty reservation, grown chunk by chunk with [`BodyReservation::grow`].
    pub fn reserve_body(&self) -> BodyReservation {
        BodyReservation { permit: None, bodies: Arc::clone(&self.bodies), budget: self.body_budget }
    }

    /// Bytes of request bodies reserved now.
    pub fn body_bytes_in_use(&self) -> usize {
        self.body_budget - self.bodies.available_permits()
    }

    /// The byte budget of request bodies in progress.
    pub fn body_budget(&self) -> usize {
        self.body_budget
    }
}

impl BodyReservation {
    /// Reserves `bytes` more, or refuses at once when they do not fit in what is left of the budget.
    pub fn grow(&mut self, bytes: usize) -> Result<(), OverBudget> {
        if bytes == 0 {
            return Ok(());
        }
        let too_large = OverBudget::TooLarge { budget: self.budget };
        if self.bytes().saturating_add(bytes) > self.budget {
            return Err(too_large);
        }
        let n = u32::try_from(bytes).map_err(|_| too_large)?;
        let more = Arc::clone(&self.bodies).try_acquire_many_owned(n).map_err(|_| OverBudget::Busy)?;
        match &mut self.permit {
            Some(permit) => permit.merge(more),
            None => self.permit = Some(more),
        }
        Ok(())
    }

    /// Bytes this reservation holds.
    pub fn bytes(&self) -> usize {
        self.permit.as_ref().map_or(0, OwnedSemaphorePermit::num_permits)
    }

    /// The whole budget: a body larger than this can never be taken.
    pub fn budget(&self) -> usize {
        self.budget
    }
}

/// The default of a byte bound: an eighth of the cgroup memory limit (clamped to 8 MiB … 1 GiB), or
/// [`DEFAULT_BYTE_BUDGET`] when the process has none.
pub fn derived_byte_budget(memory_limit: Option<u64>) -> u64 {
    memory_limit
        .map_or(DEFAULT_BYTE_BUDGET, |limit| (limit / LIMIT_SHARE).clamp(MIN_DERIVED_BUDGET, MAX_DERIVED_BUDGET))
}

/// This process's cgroup memory limit in bytes (cgroup v2 `memory.max`, else v1 `memory.limit_in_bytes`), if it has
/// one.
pub fn cgroup_memory_limit() -> Option<u64> {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    read("/sys/fs/cgroup/memory.max")
        .or_else(|| read("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
        .and_then(|text| parse_memory_limit(&text))
}

/// A cgroup limit file's value: `max` (v2) and v1's "unlimited" (a page-rounded `i64::MAX`) are no limit.
fn parse_memory_limit(text: &str) -> Option<u64> {
    let limit = text.trim().parse::<u64>().ok()?;
    (limit < 1 << 60).then_some(limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_older_than_the_target_refuses_and_an_empty_one_admits() {
        let a = Admission::new(Duration::from_millis(50), 1024);
        assert!(a.admits(), "an empty writer buffer admits");
        a.set_oldest(Some(Instant::now() - Duration::from_secs(1)));
        assert!(a.queue_delay() >= Duration::from_secs(1));
        assert!(!a.admits(), "a head of the queue a second old refuses");
        a.set_oldest(Some(Instant::now()));
        assert!(a.admits(), "a fresh head admits");
        a.set_oldest(None);
        assert_eq!(a.queue_delay(), Duration::ZERO);
        let off = Admission::new(Duration::ZERO, 1024);
        off.set_oldest(Some(Instant::now() - Duration::from_secs(60)));
        assert!(off.admits(), "a zero target turns admission by time off");
    }

    #[test]
    fn bodies_share_one_byte_budget_and_give_it_back_when_dropped() {
        let a = Admission::new(Duration::ZERO, 1000);
        let mut slow = a.reserve_body();
        slow.grow(600).unwrap();
        slow.grow(0).unwrap();
        assert_eq!((slow.bytes(), a.body_bytes_in_use()), (600, 600));
        let mut other = a.reserve_body();
        other.grow(300).unwrap();
        assert_eq!(other.grow(101), Err(OverBudget::Busy), "past what is left: refused, not queued");
        assert_eq!(other.grow(1001), Err(OverBudget::TooLarge { budget: 1000 }), "past the whole budget: never");
        assert_eq!(other.bytes(), 300, "a refused chunk reserves nothing");
        drop(slow);
        other.grow(101).unwrap();
        assert_eq!(a.body_bytes_in_use(), 401);
        drop(other);
        assert_eq!(a.body_bytes_in_use(), 0);
    }

    #[test]
    fn byte_budgets_come_from_the_cgroup_limit_when_there_is_one() {
        assert_eq!(derived_byte_budget(None), DEFAULT_BYTE_BUDGET);
        assert_eq!(derived_byte_budget(Some(512 << 20)), 64 << 20, "an eighth of the limit");
        assert_eq!(derived_byte_budget(Some(16 << 20)), 8 << 20, "never under 8 MiB");
        assert_eq!(derived_byte_budget(Some(64 << 30)), 1 << 30, "never over 1 GiB");
        assert_eq!(parse_memory_limit("max\n"), None);
        assert_eq!(parse_memory_limit("9223372036854771712\n"), None, "cgroup v1's unlimited");
        assert_eq!(parse_memory_limit("536870912\n"), Some(512 << 20));
    }
}
