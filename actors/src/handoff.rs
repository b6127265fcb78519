//! The hand-off: how the EventWriter gives the deliveries it just committed to its own node's Scheduler, so that
//! the first attempt of a fresh delivery needs no claim round (see `docs/adr/0009-delivery-hand-off.md`).
//!
//! The writer inserts each delivery that can be attempted at once (its destination active and not FIFO, its route's
//! programs evaluated) already leased to this node, in the same transaction as its event, and after COMMIT sends
//! the [`HandOff`] in memory. A lease taken at insert is an ordinary lease: claim rounds on every node skip it and
//! count it against the destination's `max_in_flight`, the result is applied only while it holds, and when this node
//! dies before attempting it the lease expires and any node claims the delivery. The Scheduler applies the same
//! limits as a claim round (node capacity, fair share, rate limit, circuit breaker). A delivery whose destination
//! has no free slot here waits on the Scheduler for one (leased, up to one more round of the destination's slots,
//! for at most half the lease margin); whatever the limits refuse, or waits past those bounds, is given back as a
//! released lease and goes the claim path (see `docs/adr/0023-hand-offs-wait-for-a-slot.md`).
//!
//! The port is closed while the Scheduler is not taking work (before it starts, during a restart's back-off, after
//! `Shutdown`): the writer then inserts deliveries unleased and wakes the claimers with NOTIFY, as before.
//!
//! The Scheduler also tells the writer which destinations would refuse a hand-off now ([`Blocked`]), so that their
//! deliveries are inserted unleased rather than leased, handed off and released again, which would cost two more
//! statements per event while a circuit is open or a slow destination is full (its waiting room too). A block lasts
//! until the Scheduler lifts it (room to wait again, the limits admitted again) or for at most [`BLOCK_FOR`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use actix::prelude::*;
use hookgate_core::delivery::Job;
use hookgate_store::deliveries::Lease;
use uuid::Uuid;

/// The longest a destination stays blocked without the Scheduler renewing it.
pub const BLOCK_FOR: Duration = Duration::from_secs(1);

/// Why the Scheduler would refuse a destination's hand-off now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocked {
    /// Its circuit breaker or rate limit admits nothing: cluster-wide, so no node should be woken for it.
    Limits,
    /// No slot on this node (its `max_in_flight` or fair share): another node may have room.
    Full,
}

/// Attempt these deliveries: committed just now, already leased to this node.
#[derive(Message)]
#[rtype(result = "()")]
pub struct HandOff {
    pub jobs: Vec<Job>,
    /// Taken before the transaction that leased them began: their leases run from no earlier than this.
    pub leased_at: Instant,
}

/// Where the EventWriter sends its [`HandOff`]s, shared by the writer and the Scheduler.
pub struct HandOffPort {
    to: OnceLock<Recipient<HandOff>>,
    open: AtomicBool,
    owner: String,
    margin_ms: u64,
    blocked: Mutex<HashMap<Uuid, (Blocked, Instant)>>,
}

/// What a lease taken at insert needs: the owner and the margin added to the destination's timeout.
#[derive(Debug, Clone, Copy)]
pub struct LeaseTerms<'a> {
    pub owner: &'a str,
    pub margin_ms: u64,
}

impl HandOffPort {
    /// A closed port for node `owner`, whose leases last the destination's timeout plus `margin_ms`.
    pub fn new(owner: String, margin_ms: u64) -> Arc<Self> {
        Arc::new(Self {
            to: OnceLock::new(),
            open: AtomicBool::new(false),
            owner,
            margin_ms,
            blocked: Mutex::new(HashMap::new()),
        })
    }

    /// Connects the Scheduler (once; it is supervised, so its address outlives its restarts).
    pub fn connect(&self, to: Recipient<HandOff>) {
        let _ = self.to.set(to);
    }

    /// Opened by the Scheduler while it takes work, closed otherwise.
    pub fn set_open(&self, open: bool) {
        self.open.store(open, Ordering::Release);
    }

    /// The terms of a lease taken at insert, or `None` when nobody would attempt it now.
    pub fn terms(&self) -> Option<LeaseTerms<'_>> {
        (self.to.get().is_some() && self.open.load(Ordering::Acquire))
            .then_some(LeaseTerms { owner: &self.owner, margin_ms: self.margin_ms })
    }

    /// Marks `destination` as refusing hand-offs for `why`, for at most [`BLOCK_FOR`].
    pub fn block(&self, destination: Uuid, why: Blocked) {
        let mut blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        // A full node does not hide limits that admit nothing (those wake no node when inserting unleased).
        if why == Blocked::Full
            && blocked.get(&destination).is_some_and(|(b, until)| *b == Blocked::Limits && *until > now)
        {
            return;
        }
        blocked.insert(destination, (why, now + BLOCK_FOR));
    }

    /// Lifts a block (of any reason, or only of `only`).
    pub fn unblock(&self, destination: Uuid, only: Option<Blocked>) {
        let mut blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((why, _)) = blocked.get(&destination) {
            if only.is_none_or(|only| only == *why) {
                blocked.remove(&destination);
            }
        }
    }

    /// The destinations refusing hand-offs now, with why (expired blocks are dropped).
    pub fn blocked(&self) -> HashMap<Uuid, Blocked> {
        let mut blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        if blocked.is_empty() {
            return HashMap::new();
        }
        let now = Instant::now();
        blocked.retain(|_, (_, until)| *until > now);
        blocked.iter().map(|(id, (why, _))| (*id, *why)).collect()
    }

    /// Hands committed, leased deliveries to the Scheduler (`leased_at`: taken before their transaction began); gives
    /// them back when its mailbox refuses them.
    pub fn send(&self, jobs: Vec<Job>, leased_at: Instant) -> Result<(), Vec<Job>> {
        let Some(to) = self.to.get() else { return Err(jobs) };
        to.try_send(HandOff { jobs, leased_at }).map_err(|e| e.into_inner().jobs)
    }
}

/// Gives handed-off deliveries back: releases their leases, so that any node claims them now, and (with `wake`)
/// wakes the claimers. Best effort: a lease not released expires.
pub(crate) async fn give_back(pool: hookgate_store::Pool, jobs: Vec<Job>, wake: bool) {
    let leases: Vec<Lease> = jobs
        .iter()
        .map(|j| Lease { delivery_id: j.delivery_id, created_at: j.created_at, lease_id: j.lease_id })
        .collect();
    let released = async {
        let client = hookgate_store::connect(&pool).await?;
        hookgate_store::deliveries::release_leases(&client, &leases).await?;
        if wake {
            hookgate_store::channels::notify_deliveries(&client, "").await?;
        }
        Ok::<_, hookgate_store::error::StoreError>(())
    };
    if let Err(error) = released.await {
        tracing::warn!(message = "Could not release handed-off leases; they will expire.", %error);
    }
}
