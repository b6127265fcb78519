//! What `actix::Supervisor` lacks: restart back-off with a cap and a restart budget.
//!
//! actix restarts a supervised actor as soon as it stops. An actor that stops because its connection was lost would
//! then reconnect in a tight loop; instead each actor asks its [`ActorStatus`](crate::ActorStatus) for the delay
//! before it resumes work ([`ActorStatus::record_restart`](crate::ActorStatus::record_restart)), which grows
//! exponentially up to a cap. More than `budget` restarts within `window` marks the actor as failed: readiness turns
//! false (for a critical actor) and an error is logged once.
//!
//! actix does not catch panics: a panic inside an actor's future ends the actor's task, its supervisor with it, and
//! leaves every address pointing at nothing. Each actor therefore runs its fallible futures through [`guarded`],
//! which turns a panic into an `Err` that the actor answers by counting it ([`ActorStatus::record_panic`]) and
//! stopping itself, so that its supervisor restarts it with back-off like any other failure.
//!
//! [`ActorStatus::record_panic`]: crate::ActorStatus::record_panic

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;
use hookgate_core::backoff::Backoff;
use serde::Deserialize;

/// How an actor is restarted after it stops.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(default)]
pub struct RestartPolicy {
    /// First delay before a restarted actor resumes, in milliseconds.
    pub backoff_initial_ms: u64,
    /// Upper bound of the delay, in milliseconds.
    pub backoff_max_ms: u64,
    /// Restarts tolerated within `window_secs` before the actor counts as failed.
    pub budget: u32,
    /// The sliding window over which restarts are counted, in seconds.
    pub window_secs: u64,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self { backoff_initial_ms: 100, backoff_max_ms: 10_000, budget: 5, window_secs: 60 }
    }
}

impl RestartPolicy {
    pub fn window(&self) -> Duration {
        Duration::from_secs(self.window_secs)
    }

    pub fn backoff(&self) -> Backoff {
        Backoff::new(Duration::from_millis(self.backoff_initial_ms), Duration::from_millis(self.backoff_max_ms))
    }
}

/// Makes an actor fail as a bug would, to test its supervision: a panic inside its guarded work, which the actor
/// counts and answers by stopping, so that its supervisor restarts it with back-off. Built only with the
/// `fault-injection` feature (the integration tests turn it on; release builds never have it).
#[cfg(feature = "fault-injection")]
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct InjectPanic;

/// Handles [`InjectPanic`] the way each actor handles a real panic in its guarded futures.
#[cfg(feature = "fault-injection")]
macro_rules! inject_panic {
    ($($actor:ty),* $(,)?) => {$(
        impl actix::Handler<InjectPanic> for $actor {
            type Result = ();
            fn handle(&mut self, _: InjectPanic, ctx: &mut Self::Context) {
                use actix::{ActorFutureExt, AsyncContext, WrapFuture};
                let fut = guarded(async { panic!("injected by a test") });
                ctx.spawn(fut.into_actor(self).map(|res: Result<(), Panicked>, act, ctx| {
                    if let Err(Panicked(what)) = res {
                        act.status.record_panic(&what);
                        actix::ActorContext::stop(ctx);
                    }
                }));
            }
        }
    )*};
}

#[cfg(feature = "fault-injection")]
inject_panic!(
    crate::writer::EventWriter,
    crate::cache::Cache,
    crate::router::Router,
    crate::janitor::Janitor,
    crate::scheduler::Scheduler,
    crate::result_writer::ResultWriter,
);

/// A panic caught by [`guarded`], with its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Panicked(pub String);

/// Runs `fut`, turning a panic inside it into `Err(Panicked)`.
pub async fn guarded<F: Future>(fut: F) -> Result<F::Output, Panicked> {
    AssertUnwindSafe(fut).catch_unwind().await.map_err(|payload| {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_owned());
        Panicked(what)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn guarded_turns_a_panic_into_an_error() {
        assert_eq!(guarded(async { 7 }).await, Ok(7));
        let caught = guarded(async {
            let v: Option<u8> = std::hint::black_box(None);
            v.expect("a NULL where a value was expected")
        })
        .await;
        assert_eq!(caught, Err(Panicked("a NULL where a value was expected".into())));
    }

    mod restart {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        use std::time::{Duration, Instant};

        use actix::prelude::*;

        use super::super::{guarded, Panicked, RestartPolicy};
        use crate::health::ActorStatus;

        struct Flaky {
            status: Arc<ActorStatus>,
            starts: Arc<AtomicUsize>,
        }

        impl Actor for Flaky {
            type Context = Context<Self>;
            fn started(&mut self, _: &mut Self::Context) {
                self.starts.fetch_add(1, Ordering::SeqCst);
            }
        }

        impl actix::Supervised for Flaky {
            fn restarting(&mut self, _: &mut Self::Context) {
                self.status.record_restart();
            }
        }

        #[derive(Message)]
        #[rtype(result = "()")]
        struct Work(bool);

        impl Handler<Work> for Flaky {
            type Result = ();
            fn handle(&mut self, msg: Work, ctx: &mut Self::Context) {
                let fut = guarded(async move {
                    let row: Option<Vec<u8>> = std::hint::black_box(None);
                    if msg.0 {
                        row.expect("NULL in a NOT NULL column");
                    }
                });
                ctx.spawn(fut.into_actor(self).map(|res, act, ctx| {
                    if let Err(Panicked(what)) = res {
                        act.status.record_panic(&what);
                        ctx.stop();
                    }
                }));
            }
        }

        #[actix_rt::test]
        async fn a_panic_in_a_guarded_future_is_counted_and_the_actor_restarted_behind_the_same_address() {
            let status = ActorStatus::new("flaky", true, RestartPolicy::default());
            let starts = Arc::new(AtomicUsize::new(0));
            let addr = {
                let (status, starts) = (status.clone(), starts.clone());
                Supervisor::start(move |_| Flaky { status, starts })
            };
            addr.send(Work(true)).await.unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            while starts.load(Ordering::SeqCst) < 2 {
                assert!(Instant::now() < deadline, "the actor was not restarted");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!((status.panics(), status.restarts()), (1, 1));
            // The same address reaches the restarted actor.
            addr.send(Work(false)).await.expect("the restarted actor answers");
            assert_eq!(status.panics(), 1);
        }
    }
}
