//! [`Shutdown`]: the one message that ends every actor's work, sent in order by the server at SIGTERM.

use std::time::Duration;

use actix::dev::ToEnvelope;
use actix::prelude::*;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Finish what you hold by `deadline` and take nothing new; answer on `reply` once done. What each actor finishes:
/// the EventWriter and the ResultWriter flush their buffers; the Scheduler stops claiming, waits for the attempts in
/// flight and, at the deadline, gives back the leases of those still running; a Deliverer waits for its attempts;
/// the Janitor, the Router and Health stop their timers and reloads; the Notifier stores what it holds; the Cache has
/// nothing buffered.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown {
    pub deadline: Instant,
    pub reply: oneshot::Sender<()>,
}

/// How long past its deadline an actor may take to give back what it could not finish (the Scheduler releases the
/// leases of attempts still running at the deadline).
pub const GIVE_BACK: Duration = Duration::from_secs(5);

/// Sends [`Shutdown`] to `addr` and waits for its answer until `deadline` plus [`GIVE_BACK`] (an actor already gone
/// counts as done).
pub async fn shut_down<A>(addr: &Addr<A>, deadline: Instant)
where
    A: Actor + Handler<Shutdown>,
    A::Context: ToEnvelope<A, Shutdown>,
{
    let (reply, answered) = oneshot::channel();
    let give_up = deadline + GIVE_BACK;
    if tokio::time::timeout_at(give_up, addr.send(Shutdown { deadline, reply })).await.is_ok_and(|r| r.is_ok()) {
        let _ = tokio::time::timeout_at(give_up, answered).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{cache, deliverer, health, janitor, notifier, result_writer, router, scheduler, writer};

    fn handles_shutdown<A: Actor + Handler<Shutdown>>() {}

    /// Every actor takes the one shutdown message; this does not compile if one of them stops handling it.
    #[test]
    fn every_actor_handles_the_one_shutdown_message() {
        handles_shutdown::<writer::EventWriter>();
        handles_shutdown::<cache::Cache>();
        handles_shutdown::<health::Health>();
        handles_shutdown::<router::Router>();
        handles_shutdown::<scheduler::Scheduler>();
        handles_shutdown::<deliverer::Deliverer>();
        handles_shutdown::<janitor::Janitor>();
        handles_shutdown::<result_writer::ResultWriter>();
        handles_shutdown::<notifier::Notifier>();
    }

    struct Silent;
    impl Actor for Silent {
        type Context = Context<Self>;
    }
    impl Handler<Shutdown> for Silent {
        type Result = ();
        fn handle(&mut self, msg: Shutdown, ctx: &mut Self::Context) {
            // Holds the reply without answering, as an actor stuck in its work would.
            ctx.run_later(Duration::from_secs(3600), move |_, _| drop(msg.reply));
        }
    }

    #[actix_rt::test]
    async fn an_actor_that_never_answers_is_given_up_on_after_its_deadline() {
        let addr = Silent.start();
        let deadline = Instant::now();
        shut_down(&addr, deadline).await;
        assert!(Instant::now() >= deadline + GIVE_BACK, "waited for the give-back time past the deadline");
    }
}
