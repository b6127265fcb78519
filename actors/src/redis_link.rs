//! A Redis connection of the delivery side's own (circuit breakers, rate limits), with its own response timeout,
//! that reconnects when the connection is lost *or* stops answering.
//!
//! The idempotency cache has its connection with a short timeout (a miss is cheap); the limits need a longer one
//! (`delivery.limits_timeout_ms`), and must not share the cache's fate. A Redis that accepts connections but never
//! answers (a blackhole: a dead proxy, a partition that drops packets) closes nothing, so a connection that only
//! reconnects on errors would stay stuck forever, and every claim round would pay the timeout. A watchdog task
//! PINGs every `ping_interval`; after [`FAILURES_BEFORE_RECONNECT`] PINGs in a row fail or time out it drops the
//! connection and connects again, with back-off. Meanwhile [`RedisLink::get`] answers `None`, and the limits use
//! their local fallback at once instead of waiting for a timeout per call.

use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use hookgate_core::internal_events::{emit, RedisReconnectReason, RedisReconnecting};
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;

use hookgate_core::backoff::Backoff;

/// The longest wait for one watchdog PING.
pub const PING_TIMEOUT: Duration = Duration::from_millis(500);

/// Failed PINGs in a row after which the connection is replaced.
pub const FAILURES_BEFORE_RECONNECT: u32 = 3;

/// How the link reaches Redis.
#[derive(Debug, Clone)]
pub struct RedisLinkConfig {
    /// What the connection is for, in logs and metrics (`limits`, `tail`).
    pub name: &'static str,
    /// Longest wait for one command on this connection.
    pub response_timeout: Duration,
    /// Longest wait for a connection attempt.
    pub connect_timeout: Duration,
    /// How often the watchdog PINGs.
    pub ping_interval: Duration,
}

/// The current connection, kept fresh by a watchdog task that ends when the link is dropped.
pub struct RedisLink {
    conn: RwLock<Option<MultiplexedConnection>>,
}

impl std::fmt::Debug for RedisLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLink").field("connected", &self.get().is_some()).finish()
    }
}

impl RedisLink {
    /// A link that never connects (the limits always use their local fallback).
    pub fn disconnected() -> Arc<Self> {
        Arc::new(Self { conn: RwLock::new(None) })
    }

    /// Connects in the background and keeps the connection fresh. Must be called within a tokio runtime.
    pub fn start(client: redis::Client, cfg: RedisLinkConfig) -> Arc<Self> {
        let link = Self::disconnected();
        tokio::spawn(watch(Arc::downgrade(&link), client, cfg));
        link
    }

    /// The connection, when there is a live one.
    pub fn get(&self) -> Option<MultiplexedConnection> {
        self.conn.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, conn: Option<MultiplexedConnection>) {
        *self.conn.write().unwrap_or_else(|e| e.into_inner()) = conn;
    }
}

async fn watch(link: Weak<RedisLink>, client: redis::Client, cfg: RedisLinkConfig) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(cfg.connect_timeout))
        .set_response_timeout(Some(cfg.response_timeout));
    let mut failures = 0u32;
    loop {
        let Some(strong) = link.upgrade() else { return };
        match strong.get() {
            None => {
                drop(strong);
                let connected = tokio::time::timeout(
                    cfg.connect_timeout + cfg.response_timeout,
                    client.get_multiplexed_async_connection_with_config(&config),
                )
                .await;
                let Some(strong) = link.upgrade() else { return };
                match connected {
                    Ok(Ok(conn)) => {
                        strong.set(Some(conn));
                        failures = 0;
                        tracing::info!(message = "Connected to Redis.", link = cfg.name);
                    }
                    Ok(Err(error)) => {
                        tracing::debug!(message = "Cannot reach Redis.", link = cfg.name, %error);
                        drop(strong);
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                    Err(_) => {
                        tracing::debug!(message = "Connecting to Redis timed out.", link = cfg.name);
                        drop(strong);
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                }
            }
            Some(mut conn) => {
                drop(strong);
                tokio::time::sleep(cfg.ping_interval).await;
                let pong =
                    tokio::time::timeout(cfg.response_timeout, redis::cmd("PING").query_async::<String>(&mut conn))
                        .await;
                let Some(strong) = link.upgrade() else { return };
                match pong {
                    Ok(Ok(_)) => {
                        failures = 0;
                        backoff.reset();
                    }
                    Ok(Err(error)) if !error.is_timeout() => {
                        // The connection is broken (closed, reset): replace it now.
                        emit(RedisReconnecting { link: cfg.name, reason: RedisReconnectReason::Broken(&error) });
                        strong.set(None);
                        failures = 0;
                    }
                    _ => {
                        failures += 1;
                        if failures >= FAILURES_BEFORE_RECONNECT {
                            let reason = RedisReconnectReason::Unanswered { failed_pings: failures };
                            emit(RedisReconnecting { link: cfg.name, reason });
                            strong.set(None);
                            failures = 0;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;
    use tokio::io::AsyncReadExt;

    fn cfg() -> RedisLinkConfig {
        RedisLinkConfig {
            name: "test",
            response_timeout: Duration::from_millis(200),
            connect_timeout: Duration::from_millis(500),
            ping_interval: Duration::from_millis(50),
        }
    }

    async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn redis_link_connects_and_answers() {
        let url = std::env::var("HGTEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let link = RedisLink::start(redis::Client::open(url).unwrap(), cfg());
        wait_for("a connection", || link.get().is_some()).await;
        let mut conn = link.get().unwrap();
        let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
        assert_eq!(pong, "PONG");
    }

    /// A server that accepts connections and reads forever without answering.
    async fn blackhole() -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while matches!(sock.read(&mut buf).await, Ok(n) if n > 0) {}
                });
            }
        });
        (addr, accepted)
    }

    #[tokio::test]
    async fn a_blackholed_redis_is_left_and_retried() {
        let (addr, accepted) = blackhole().await;
        let link = RedisLink::start(redis::Client::open(format!("redis://{addr}")).unwrap(), cfg());
        // Whatever the handshake does against a server that never answers, the link keeps trying new connections
        // instead of waiting on the first one forever, and never hands out a connection that does not answer.
        wait_for("several connection attempts", || accepted.load(std::sync::atomic::Ordering::SeqCst) >= 2).await;
        if let Some(mut conn) = link.get() {
            let r =
                tokio::time::timeout(Duration::from_secs(5), redis::cmd("PING").query_async::<String>(&mut conn)).await;
            assert!(!matches!(r, Ok(Ok(_))), "a blackhole cannot answer PING");
        }
    }
}
