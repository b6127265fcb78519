//! Live tail across the cluster (ADR-0012): after COMMIT the EventWriter and the ResultWriter *offer* what they
//! committed to the node's [`TailPublisher`], which publishes it on a Redis pub/sub channel; every node's
//! subscription fans what it hears out to its own SSE clients through the [`TailHub`].
//!
//! - Nothing is done while nobody tails: a node with tail clients keeps a presence key (`<prefix>:tail:active`) alive
//!   with a TTL, and every node reads it each `presence_interval_ms`; until then [`TailPublisher::active`] is false
//!   and the writers skip even building the summaries.
//! - Publishing never blocks or fails ingest or delivery: the writers `try_send` into a bounded queue
//!   (`publish_queue`); a full queue, a Redis error or a time-out drops the batch, counted in
//!   `hookgate_tail_dropped_total{stage="publish"}`. The publishing task does the serializing and the I/O, on its
//!   own Redis connection (a [`RedisLink`]).
//! - The hub is a `tokio::sync::broadcast` of `buffer` items: a client that falls behind loses the oldest items and
//!   learns how many (`hookgate_tail_dropped_total{stage="client"}`); the sender never waits for anyone.
//! - The subscription has a connection of its own, reconnected with back-off; while it is down the hub tells its
//!   clients so ([`TailItem::Down`], then [`TailItem::Up`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use hookgate_core::backoff::Backoff;
use hookgate_core::internal_events::{emit, TailClients, TailNotPublished, TailSubscriptionLost};
use hookgate_core::tail::{channel, presence_key, TailBody, TailEvent, TailMessage, TailOutcome};
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc, Notify};
use uuid::Uuid;

use crate::redis_link::{RedisLink, RedisLinkConfig};
use crate::sources::SourceRegistry;

/// The `[tail]` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TailSettings {
    /// Items (events, outcomes) each SSE client may fall behind by before it loses the oldest ones.
    pub buffer: usize,
    /// Milliseconds between SSE heartbeats (comment lines) on an idle stream.
    pub heartbeat_ms: u64,
    /// Body bytes a tail shows; longer bodies are cut (and flagged `truncated`).
    pub max_body_bytes: usize,
    /// SSE clients one node serves at once; past it a new stream answers 503.
    pub max_clients: usize,
    /// Committed batches waiting to be published; past it batches are dropped (and counted).
    pub publish_queue: usize,
    /// Milliseconds between checks of the cluster-wide presence key (and refreshes of it by nodes with clients).
    pub presence_interval_ms: u64,
    /// Longest wait for one Redis command of the tail (PUBLISH, the presence key).
    pub op_timeout_ms: u64,
}

impl Default for TailSettings {
    fn default() -> Self {
        Self {
            buffer: 1_024,
            heartbeat_ms: 15_000,
            max_body_bytes: 64 * 1024,
            max_clients: 64,
            publish_queue: 256,
            presence_interval_ms: 1_000,
            op_timeout_ms: 1_000,
        }
    }
}

impl TailSettings {
    pub fn presence_interval(&self) -> Duration {
        Duration::from_millis(self.presence_interval_ms.max(10))
    }

    /// The presence key lives a few intervals: a node that stopped refreshing it is forgotten soon after.
    pub fn presence_ttl(&self) -> Duration {
        (self.presence_interval() * 5).max(Duration::from_secs(3))
    }
}

/// An event committed now, as the EventWriter offers it (cheap clones of what it holds).
#[derive(Debug, Clone)]
pub struct EventBrief {
    pub id: Uuid,
    pub source_id: Uuid,
    pub event_type: Option<String>,
    pub received_at: DateTime<Utc>,
    pub headers: Arc<serde_json::Value>,
    pub body: Bytes,
}

/// What the writers offer after a COMMIT.
#[derive(Debug)]
pub enum Publish {
    Events(Vec<EventBrief>),
    Outcomes(Vec<TailOutcome>),
}

impl Publish {
    fn kind_and_len(&self) -> (&'static str, usize) {
        match self {
            Self::Events(e) => ("events", e.len()),
            Self::Outcomes(o) => ("outcomes", o.len()),
        }
    }
}

/// The writers' side: whether anyone tails, and a bounded queue to the publishing task.
pub struct TailPublisher {
    active: AtomicBool,
    queue: mpsc::Sender<Publish>,
}

impl TailPublisher {
    /// A publisher that is never active (tests, tools).
    pub fn inactive() -> Arc<Self> {
        let (queue, _) = mpsc::channel(1);
        Arc::new(Self { active: AtomicBool::new(false), queue })
    }

    /// Some node of the cluster has tail clients: offering is worth it.
    pub fn active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// Queues `what` for publishing, or drops it (counted) when the queue is full. Never waits.
    pub fn offer(&self, what: Publish) {
        let (kind, count) = what.kind_and_len();
        if count == 0 {
            return;
        }
        if self.queue.try_send(what).is_err() {
            emit(TailNotPublished { kind, count, reason: "the publish queue is full" });
        }
    }
}

/// What a node's SSE clients receive from the hub.
#[derive(Debug)]
pub enum TailItem {
    Event {
        node: Arc<str>,
        event: TailEvent,
    },
    Outcome {
        node: Arc<str>,
        outcome: TailOutcome,
    },
    /// The Redis subscription is down (the reason); nothing arrives until [`TailItem::Up`].
    Down(String),
    /// The subscription is back.
    Up,
    /// The node is shutting down: streams end.
    Closed,
}

#[derive(Debug, Clone, PartialEq)]
enum Link {
    Connecting,
    Up,
    Down(String),
}

/// The node's fan-out to its SSE clients.
pub struct TailHub {
    tx: broadcast::Sender<Arc<TailItem>>,
    clients: AtomicUsize,
    max_clients: usize,
    link: Mutex<Link>,
    closed: AtomicBool,
    /// Wakes the publishing task when a first client joins, so the presence key is set at once.
    joined: Arc<Notify>,
}

impl TailHub {
    fn new(buffer: usize, max_clients: usize, joined: Arc<Notify>) -> Self {
        let (tx, _) = broadcast::channel(buffer.max(1));
        Self {
            tx,
            clients: AtomicUsize::new(0),
            max_clients,
            link: Mutex::new(Link::Connecting),
            closed: AtomicBool::new(false),
            joined,
        }
    }

    /// A new client, or `None` when the node serves `max_clients` already or is shutting down.
    pub fn join(self: &Arc<Self>) -> Option<TailClient> {
        if self.closed.load(Ordering::Acquire) {
            return None;
        }
        let reserved =
            self.clients.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max_clients).then_some(n + 1));
        let count = reserved.ok()? + 1;
        emit(TailClients { count });
        self.joined.notify_one();
        Some(TailClient { rx: self.tx.subscribe(), hub: self.clone() })
    }

    /// SSE clients now.
    pub fn clients(&self) -> usize {
        self.clients.load(Ordering::Acquire)
    }

    /// Why the subscription is down, when it is.
    pub fn down_reason(&self) -> Option<String> {
        match &*self.link.lock().unwrap_or_else(PoisonError::into_inner) {
            Link::Down(reason) => Some(reason.clone()),
            _ => None,
        }
    }

    /// Ends every stream (at shutdown) and refuses new ones.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let _ = self.tx.send(Arc::new(TailItem::Closed));
    }

    fn set_link(&self, now: Link) {
        let mut link = self.link.lock().unwrap_or_else(PoisonError::into_inner);
        if *link == now || matches!((&*link, &now), (Link::Down(_), Link::Down(_))) {
            return;
        }
        let was_down = matches!(*link, Link::Down(_));
        *link = now.clone();
        drop(link);
        match now {
            Link::Down(reason) => {
                emit(TailSubscriptionLost { reason: &reason });
                let _ = self.tx.send(Arc::new(TailItem::Down(reason)));
            }
            Link::Up if was_down => {
                tracing::info!(message = "Live tail: the Redis subscription is back.");
                let _ = self.tx.send(Arc::new(TailItem::Up));
            }
            _ => {}
        }
    }

    /// Fans one channel message out to the clients (nothing is parsed while there are none).
    fn fan_out(&self, payload: &[u8]) {
        if self.tx.receiver_count() == 0 {
            return;
        }
        let message: TailMessage = match serde_json::from_slice(payload) {
            Ok(m) => m,
            Err(error) => {
                tracing::debug!(message = "Live tail: an unreadable message was ignored.", %error);
                return;
            }
        };
        match message {
            TailMessage::Events { node, events } => {
                let node: Arc<str> = node.into();
                for event in events {
                    let _ = self.tx.send(Arc::new(TailItem::Event { node: node.clone(), event }));
                }
            }
            TailMessage::Outcomes { node, outcomes } => {
                let node: Arc<str> = node.into();
                for outcome in outcomes {
                    let _ = self.tx.send(Arc::new(TailItem::Outcome { node: node.clone(), outcome }));
                }
            }
        }
    }
}

/// One SSE client's place in the hub; leaving is dropping it.
pub struct TailClient {
    pub rx: broadcast::Receiver<Arc<TailItem>>,
    hub: Arc<TailHub>,
}

impl Drop for TailClient {
    fn drop(&mut self) {
        let count = self.hub.clients.fetch_sub(1, Ordering::AcqRel).saturating_sub(1);
        emit(TailClients { count });
    }
}

/// What [`start`] needs besides the settings.
pub struct TailContext {
    pub client: redis::Client,
    pub key_prefix: String,
    pub node_id: String,
    pub connect_timeout: Duration,
    pub sources: Arc<SourceRegistry>,
}

/// Starts the node's publishing task and its subscription; must run within a tokio runtime. Both tasks end once
/// the returned publisher and hub are dropped.
pub fn start(settings: &TailSettings, ctx: TailContext) -> (Arc<TailPublisher>, Arc<TailHub>) {
    let joined = Arc::new(Notify::new());
    let hub = Arc::new(TailHub::new(settings.buffer, settings.max_clients, joined.clone()));
    let (queue, rx) = mpsc::channel(settings.publish_queue.max(1));
    let publisher = Arc::new(TailPublisher { active: AtomicBool::new(false), queue });
    let op_timeout = Duration::from_millis(settings.op_timeout_ms.max(1));
    let link = RedisLink::start(
        ctx.client.clone(),
        RedisLinkConfig {
            name: "tail",
            response_timeout: op_timeout,
            connect_timeout: ctx.connect_timeout,
            ping_interval: settings.presence_interval().max(Duration::from_millis(100)),
        },
    );
    let publishing = Publishing {
        link,
        channel: channel(&ctx.key_prefix),
        presence_key: presence_key(&ctx.key_prefix),
        presence_ttl: settings.presence_ttl(),
        node: ctx.node_id,
        max_body_bytes: settings.max_body_bytes,
        op_timeout,
        sources: ctx.sources,
        publisher: Arc::downgrade(&publisher),
        hub: Arc::downgrade(&hub),
    };
    tokio::spawn(publishing.run(rx, joined, settings.presence_interval()));
    tokio::spawn(subscribe(ctx.client, channel(&ctx.key_prefix), Arc::downgrade(&hub), ctx.connect_timeout));
    (publisher, hub)
}

struct Publishing {
    link: Arc<RedisLink>,
    channel: String,
    presence_key: String,
    presence_ttl: Duration,
    node: String,
    max_body_bytes: usize,
    op_timeout: Duration,
    sources: Arc<SourceRegistry>,
    publisher: Weak<TailPublisher>,
    hub: Weak<TailHub>,
}

impl Publishing {
    async fn run(self, mut rx: mpsc::Receiver<Publish>, joined: Arc<Notify>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                what = rx.recv() => match what {
                    Some(what) => self.publish(what).await,
                    None => return,
                },
                _ = tick.tick() => {
                    if !self.presence().await {
                        return;
                    }
                }
                _ = joined.notified() => {
                    if !self.presence().await {
                        return;
                    }
                }
            }
        }
    }

    /// Refreshes the presence key when this node has clients, else reads it; sets the publisher's flag. Answers
    /// false once the node is gone.
    async fn presence(&self) -> bool {
        let (Some(publisher), Some(hub)) = (self.publisher.upgrade(), self.hub.upgrade()) else { return false };
        let local = hub.clients() > 0;
        let Some(mut conn) = self.link.get() else {
            // No Redis: publishing would only fail. Local clients are told by the subscription.
            publisher.active.store(false, Ordering::Relaxed);
            return true;
        };
        let active = if local {
            let ttl = self.presence_ttl.as_millis() as u64;
            let mut set = redis::cmd("SET");
            set.arg(&self.presence_key).arg(1).arg("PX").arg(ttl);
            match tokio::time::timeout(self.op_timeout, set.query_async::<()>(&mut conn)).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::debug!(message = "Live tail: the presence key was not set.", %error),
                Err(_) => tracing::debug!(message = "Live tail: setting the presence key timed out."),
            }
            true
        } else {
            let mut exists = redis::cmd("EXISTS");
            exists.arg(&self.presence_key);
            matches!(tokio::time::timeout(self.op_timeout, exists.query_async::<bool>(&mut conn)).await, Ok(Ok(true)))
        };
        publisher.active.store(active, Ordering::Relaxed);
        true
    }

    async fn publish(&self, what: Publish) {
        let (kind, count) = what.kind_and_len();
        let message = match what {
            Publish::Events(events) => {
                let sources = self.sources.get();
                let slugs: HashMap<Uuid, &str> = sources.values().map(|s| (s.id, s.slug.as_str())).collect();
                let events = events
                    .into_iter()
                    .map(|e| TailEvent {
                        id: e.id,
                        source_id: e.source_id,
                        source: slugs.get(&e.source_id).copied().unwrap_or("unknown").to_owned(),
                        event_type: e.event_type,
                        received_at: e.received_at,
                        size: e.body.len(),
                        headers: (*e.headers).clone(),
                        body: TailBody::of(&e.body, self.max_body_bytes),
                    })
                    .collect();
                TailMessage::Events { node: self.node.clone(), events }
            }
            Publish::Outcomes(outcomes) => TailMessage::Outcomes { node: self.node.clone(), outcomes },
        };
        let payload = match serde_json::to_vec(&message) {
            Ok(p) => p,
            Err(error) => {
                emit(TailNotPublished { kind, count, reason: &error.to_string() });
                return;
            }
        };
        let Some(mut conn) = self.link.get() else {
            emit(TailNotPublished { kind, count, reason: "Redis is unreachable" });
            return;
        };
        let mut publish = redis::cmd("PUBLISH");
        publish.arg(&self.channel).arg(payload);
        match tokio::time::timeout(self.op_timeout, publish.query_async::<i64>(&mut conn)).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => emit(TailNotPublished { kind, count, reason: &error.to_string() }),
            Err(_) => emit(TailNotPublished { kind, count, reason: "PUBLISH timed out" }),
        }
    }
}

/// The node's subscription: reconnects with back-off, tells the hub when it is down and when it is back.
async fn subscribe(client: redis::Client, channel: String, hub: Weak<TailHub>, connect_timeout: Duration) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let set = |link: Link| match hub.upgrade() {
        Some(h) => {
            h.set_link(link);
            true
        }
        None => false,
    };
    loop {
        let subscribed = tokio::time::timeout(connect_timeout.max(Duration::from_millis(100)) * 2, async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        })
        .await;
        let pubsub = match subscribed {
            Ok(Ok(p)) => p,
            Ok(Err(error)) => {
                if !set(Link::Down(format!("Redis is unreachable: {error}"))) {
                    return;
                }
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
            Err(_) => {
                if !set(Link::Down("Redis did not answer in time".into())) {
                    return;
                }
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        if !set(Link::Up) {
            return;
        }
        backoff.reset();
        let mut messages = pubsub.into_on_message();
        loop {
            // Wakes now and then to notice that the node is gone.
            match tokio::time::timeout(Duration::from_secs(5), messages.next()).await {
                Err(_) if hub.strong_count() == 0 => return,
                Err(_) => {}
                Ok(None) => break,
                Ok(Some(msg)) => match hub.upgrade() {
                    Some(h) => h.fan_out(msg.get_payload_bytes()),
                    None => return,
                },
            }
        }
        if !set(Link::Down("the connection to Redis was lost".into())) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hookgate_core::tail::TailBody;

    fn event(n: u8) -> TailEvent {
        TailEvent {
            id: Uuid::now_v7(),
            source_id: Uuid::nil(),
            source: "s".into(),
            event_type: None,
            received_at: Utc::now(),
            size: 1,
            headers: serde_json::json!({}),
            body: TailBody::Json(serde_json::json!(n)),
        }
    }

    #[tokio::test]
    async fn a_client_that_falls_behind_learns_how_much_it_missed() {
        let hub = Arc::new(TailHub::new(2, 8, Arc::new(Notify::new())));
        let mut client = hub.join().unwrap();
        let events: Vec<TailEvent> = (0..5).map(event).collect();
        hub.fan_out(&serde_json::to_vec(&TailMessage::Events { node: "a".into(), events }).unwrap());
        assert!(matches!(client.rx.recv().await, Err(broadcast::error::RecvError::Lagged(3))));
        assert!(
            matches!(&*client.rx.recv().await.unwrap(), TailItem::Event { event, .. } if event.body == TailBody::Json(3.into()))
        );
    }

    #[test]
    fn clients_are_bounded_and_counted() {
        let hub = Arc::new(TailHub::new(4, 2, Arc::new(Notify::new())));
        let (a, _b) = (hub.join().unwrap(), hub.join().unwrap());
        assert!(hub.join().is_none());
        drop(a);
        assert_eq!(hub.clients(), 1);
        assert!(hub.join().is_some());
        hub.close();
        assert!(hub.join().is_none());
    }
}
