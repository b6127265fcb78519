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
//! - **Grace**, CoDel's interval: a queue that stands past the target only while the database stalls for a moment (a
//!   checkpoint's fsync holds every commit for a few hundred milliseconds) is a burst, not overload. The first
//!   refusal comes only once the queue has stood past the target for `server.admission_grace_ms` without a break
//!   (every head the writer took meanwhile already past the target when it became the head); from then on, and until
//!   ten graces pass without a refusal, the target alone decides, so a standing queue is still held at the target.
//! - **Bytes**: request bodies held by ingest requests in progress, from their first byte to the answer, share one
//!   budget (`server.max_ingest_bytes`): each chunk is reserved as it arrives, so a slow client holds what it sent,
//!   and a request whose next chunk does not fit is refused with 503. The writer bounds the bytes it holds on its
//!   own (`writer.max_pending_bytes`).
//!
//! See `docs/adr/0016-admission-by-time-and-bytes.md` and `docs/adr/0026-admission-rides-out-a-brief-stall.md`.

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
    grace: Duration,
    /// When this node last refused by time, in microseconds since `epoch` plus one (0: never).
    last_refusal: AtomicU64,
    /// Since when the queue has stood past the target, as far as the heads seen tell, in microseconds since `epoch`
    /// plus one (0: it does not).
    above_since: AtomicU64,
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

/// A time since the epoch as stored in an atomic: microseconds plus one (0 stands for none).
fn stamp(since_epoch: Duration) -> u64 {
    u64::try_from(since_epoch.as_micros()).unwrap_or(u64::MAX - 1) + 1
}

/// After a refusal by time, the grace is given again only once this many graces passed without another.
const GRACE_RECOVERY: u32 = 10;

impl Admission {
    /// `target` zero turns admission by time off (only the byte budget and the writer's own bounds refuse); `grace`
    /// is how much longer than the target the queue may stand before the first refusal (zero: none).
    pub fn new(target: Duration, grace: Duration, body_budget: usize) -> Self {
        // A semaphore holds at most `Semaphore::MAX_PERMITS`, and a chunk is reserved with a u32 count.
        let body_budget = body_budget.clamp(1, Semaphore::MAX_PERMITS);
        // The epoch lies before any arrival the writer can report (it dates them up to a minute back).
        let now = Instant::now();
        Self {
            epoch: now.checked_sub(Duration::from_secs(3600)).unwrap_or(now),
            target,
            grace,
            last_refusal: AtomicU64::new(0),
            above_since: AtomicU64::new(0),
            oldest: AtomicU64::new(0),
            bodies: Arc::new(Semaphore::new(body_budget)),
            body_budget,
        }
    }

    /// How long the oldest unit still waiting in the writer's buffer has waited (zero when none waits).
    pub fn queue_delay(&self) -> Duration {
        self.delay_at(self.epoch.elapsed())
    }

    /// The queue delay at `now` (time since `epoch`).
    fn delay_at(&self, now: Duration) -> Duration {
        match self.oldest.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            stamp => now.saturating_sub(Duration::from_micros(stamp - 1)),
        }
    }

    /// Whether a new request is taken now: its body is not read otherwise.
    pub fn admits(&self) -> bool {
        self.admits_at(self.epoch.elapsed())
    }

    /// Whether a new request is taken at `now` (time since `epoch`).
    fn admits_at(&self, now: Duration) -> bool {
        if self.target.is_zero() {
            return true;
        }
        let delay = self.delay_at(now);
        if delay <= self.target {
            return true;
        }
        // The queue stands past the target: since an earlier head crossed it, as the writer noted when it took the
        // heads, or else since the current head did.
        let since = match self.above_since.load(Ordering::Relaxed) {
            0 => now.saturating_sub(delay) + self.target,
            s => Duration::from_micros(s - 1),
        };
        let refused_recently = match self.last_refusal.load(Ordering::Relaxed) {
            0 => false,
            stamp => now.saturating_sub(Duration::from_micros(stamp - 1)) < self.grace * GRACE_RECOVERY,
        };
        if !refused_recently && now.saturating_sub(since) <= self.grace {
            return true;
        }
        // The latest refusal wins: a handler that read an earlier clock never moves it back.
        self.last_refusal.fetch_max(stamp(now), Ordering::Relaxed);
        false
    }

    /// The writer's buffer now starts with a unit that arrived at `arrived` (`None`: the buffer is empty).
    pub fn set_oldest(&self, arrived: Option<Instant>) {
        self.set_head_at(arrived.map(|at| at.saturating_duration_since(self.epoch)), self.epoch.elapsed());
    }

    /// The buffer's head arrived at `arrived` (time since `epoch`), seen at `now`. Only the writer calls this, and
    /// only here is `above_since` written: a head within the target, or none, ends the queue's standing past it; a head
    /// already past the target when it is taken carries the standing on, from when the head before it crossed the
    /// target if that one was past it too.
    fn set_head_at(&self, arrived: Option<Duration>, now: Duration) {
        match arrived {
            Some(at) if now.saturating_sub(at) > self.target => {
                if self.above_since.load(Ordering::Relaxed) == 0 {
                    let previous = match self.oldest.load(Ordering::Relaxed) {
                        0 => None,
                        s => Some(Duration::from_micros(s - 1)),
                    };
                    let crossed = match previous {
                        Some(p) if now.saturating_sub(p) > self.target => p.min(at),
                        _ => at,
                    } + self.target;
                    self.above_since.store(stamp(crossed), Ordering::Relaxed);
                }
            }
            _ => self.above_since.store(0, Ordering::Relaxed),
        }
        self.oldest.store(arrived.map_or(0, stamp), Ordering::Relaxed);
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
        let a = Admission::new(Duration::from_millis(50), Duration::ZERO, 1024);
        assert!(a.admits(), "an empty writer buffer admits");
        a.set_oldest(Some(Instant::now() - Duration::from_secs(1)));
        assert!(a.queue_delay() >= Duration::from_secs(1));
        assert!(!a.admits(), "a head of the queue a second old refuses");
        a.set_oldest(Some(Instant::now()));
        assert!(a.admits(), "a fresh head admits");
        a.set_oldest(None);
        assert_eq!(a.queue_delay(), Duration::ZERO);
        let off = Admission::new(Duration::ZERO, Duration::from_secs(1), 1024);
        off.set_oldest(Some(Instant::now() - Duration::from_secs(60)));
        assert!(off.admits(), "a zero target turns admission by time off");
    }

    #[test]
    fn a_stall_shorter_than_the_grace_is_ridden_out_but_once_refused_the_target_alone_decides() {
        let a = Admission::new(Duration::from_millis(50), Duration::from_secs(1), 1024);
        // The clock is passed in: `at(ms)` is that long after the test began, and `head(arrived, seen)` tells the
        // admission that the writer's buffer starts with a unit that arrived at `arrived`, at `seen`.
        let start = a.epoch.elapsed();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let head = |arrived: u64, seen: u64| a.set_head_at(Some(at(arrived)), at(seen));
        head(0, 0);
        assert!(a.admits_at(at(40)), "within the target");
        assert!(a.admits_at(at(600)), "past the target but within the grace: a stall, taken");
        assert!(a.admits_at(at(1049)), "past the target for almost the whole grace: still taken");
        assert!(!a.admits_at(at(1060)), "past the target for longer than the grace: refused");
        assert!(!a.admits_at(at(1070)), "and refused while the queue stands");
        head(1100, 1100);
        assert!(a.admits_at(at(1110)), "a young head admits");
        assert!(!a.admits_at(at(1200)), "refused a moment ago: past the target alone refuses, no grace");
        head(10_000, 10_000);
        assert!(!a.admits_at(at(10_100)), "each refusal keeps the grace away");
        head(20_000, 20_000);
        assert!(!a.admits_at(at(20_099)), "until ten graces pass without one");
        head(30_200, 30_200);
        assert!(a.admits_at(at(30_300)), "ten graces after the last refusal, a stall within the grace is taken again");
        assert!(a.admits_at(at(31_000)));
        assert!(!a.admits_at(at(31_300)), "and past it, refused again");
    }

    #[test]
    fn a_queue_that_stands_past_the_target_but_never_past_the_grace_is_refused_after_the_grace() {
        // Overload from a bounded number of clients: the queue holds about what they have in flight, half a second
        // here, never the target plus the grace; but every head is past the target when the writer takes it.
        let a = Admission::new(Duration::from_millis(50), Duration::from_secs(1), 1024);
        let start = a.epoch.elapsed();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut refused_at = None;
        for now in (500..3000).step_by(10) {
            a.set_head_at(Some(at(now - 500)), at(now));
            if !a.admits_at(at(now + 5)) {
                refused_at.get_or_insert(now);
            } else {
                assert!(refused_at.is_none(), "once refused, a queue that still stands is refused ({now} ms)");
            }
        }
        // Past the target since 50 ms (the first head crossed it then): the grace ends at 1,050 ms.
        assert_eq!(refused_at, Some(1050), "refused once the queue stood past the target for the grace");
        // A head within the target ends the standing: the next stall gets the grace again, once the refusals are
        // ten graces old.
        a.set_head_at(Some(at(3000)), at(3000));
        assert!(a.admits_at(at(3010)));
        a.set_head_at(Some(at(13_500)), at(13_500));
        assert!(a.admits_at(at(14_000)), "ten graces after the last refusal: a stall gets the grace again");
    }

    #[test]
    fn bodies_share_one_byte_budget_and_give_it_back_when_dropped() {
        let a = Admission::new(Duration::ZERO, Duration::ZERO, 1000);
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
