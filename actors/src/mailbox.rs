//! [`Mailbox`]: an actor's address as a flood-prone sender holds it: `try_send` only, with the depth bookkeeping.

use std::sync::Arc;

use actix::dev::ToEnvelope;
use actix::prelude::*;

use crate::health::ActorStatus;

/// Why a message was not queued; either way the sender answers at once (the front end: 503).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The mailbox holds as many messages as it may.
    #[error("the mailbox is full")]
    Full,
    /// The actor is gone (stopping, or between restarts).
    #[error("the actor is not running")]
    Closed,
}

/// A bounded address: every send is a `try_send` (refused at once when the mailbox is full, never queued without
/// bound) and counted in the actor's mailbox depth (`hookgate_actor_mailbox_depth`), which the actor's handlers
/// count down as they take each message.
pub struct Mailbox<A: Actor> {
    addr: Addr<A>,
    status: Arc<ActorStatus>,
}

impl<A: Actor> Clone for Mailbox<A> {
    fn clone(&self) -> Self {
        Self { addr: self.addr.clone(), status: self.status.clone() }
    }
}

impl<A: Actor> Mailbox<A> {
    pub fn new(addr: Addr<A>, status: Arc<ActorStatus>) -> Self {
        Self { addr, status }
    }

    /// Queues `msg` if there is room.
    pub fn try_send<M>(&self, msg: M) -> Result<(), Refused>
    where
        A: Handler<M>,
        A::Context: ToEnvelope<A, M>,
        M: Message + Send + 'static,
        M::Result: Send,
    {
        self.status.enqueued();
        self.addr.try_send(msg).map_err(|e| {
            self.status.dequeued();
            match e {
                SendError::Full(_) => Refused::Full,
                SendError::Closed(_) => Refused::Closed,
            }
        })
    }

    /// The address itself, for the messages that are not on a flood-prone path (shutdown, tests).
    pub fn addr(&self) -> &Addr<A> {
        &self.addr
    }

    /// The actor's status (state, restarts, mailbox depth).
    pub fn status(&self) -> &Arc<ActorStatus> {
        &self.status
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RestartPolicy;

    struct Counter(Arc<ActorStatus>);
    impl Actor for Counter {
        type Context = Context<Self>;
        fn started(&mut self, ctx: &mut Self::Context) {
            ctx.set_mailbox_capacity(1);
        }
    }
    #[derive(Message)]
    #[rtype(result = "()")]
    struct Ping(tokio::sync::oneshot::Sender<()>);
    impl Handler<Ping> for Counter {
        type Result = ();
        fn handle(&mut self, msg: Ping, _: &mut Self::Context) {
            self.0.dequeued();
            let _ = msg.0.send(());
        }
    }

    #[actix_rt::test]
    async fn a_full_mailbox_refuses_and_the_depth_counts_only_what_was_queued() {
        let status = ActorStatus::new("counter", false, RestartPolicy::default());
        let mailbox = Mailbox::new(Counter(status.clone()).start(), status.clone());
        // The actor has not run yet (this task holds the thread): the first messages fill its mailbox.
        let mut answers = Vec::new();
        let mut refused = 0;
        for _ in 0..20 {
            let (tx, rx) = tokio::sync::oneshot::channel();
            match mailbox.try_send(Ping(tx)) {
                Ok(()) => answers.push(rx),
                Err(Refused::Full) => refused += 1,
                Err(Refused::Closed) => panic!("the actor runs"),
            }
        }
        assert!(refused > 0, "a bounded mailbox refuses");
        assert_eq!(status.mailbox_depth(), answers.len() as i64, "refused sends are not counted");
        for rx in answers {
            rx.await.expect("answered");
        }
        assert_eq!(status.mailbox_depth(), 0);
    }
}
