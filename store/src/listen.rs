//! A dedicated PostgreSQL connection that LISTENs on channels and reconnects with back-off when it is lost.

use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{AsyncMessage, Socket};

use hookgate_core::backoff::Backoff;

/// What the listener reports.
#[derive(Debug, Clone)]
pub enum ListenEvent {
    /// (Re)connected and listening: anything may have changed while it was away.
    Connected,
    Notification {
        channel: String,
        payload: String,
    },
}

/// Starts listening on the current arbiter; events arrive on the returned receiver. Notifications that find the
/// receiver full are dropped: they only mean "look again", and a full queue already says so.
///
/// The connection lives exactly as long as the receiver: once it is dropped (its actor stopped or restarted), the
/// connection is closed at once, even while PostgreSQL has nothing to say. `tls` is the pool's connector (the TLS
/// that `database.url` asks for), so that this connection is made exactly like the pool's.
pub fn spawn_listener<T>(
    config: tokio_postgres::Config,
    tls: T,
    channels: &'static [&'static str],
) -> mpsc::Receiver<ListenEvent>
where
    T: MakeTlsConnect<Socket> + Clone + 'static,
    T::Stream: 'static,
{
    let (tx, rx) = mpsc::channel(64);
    tokio::task::spawn_local(async move {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        while !tx.is_closed() {
            match config.connect(tls.clone()).await {
                Ok((client, mut conn)) => {
                    let events = tx.clone();
                    let driver = tokio::task::spawn_local(async move {
                        let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
                        while let Some(message) = messages.next().await {
                            match message {
                                Ok(AsyncMessage::Notification(n)) => {
                                    let _ = events.try_send(ListenEvent::Notification {
                                        channel: n.channel().to_owned(),
                                        payload: n.payload().to_owned(),
                                    });
                                }
                                Ok(_) => {}
                                Err(error) => {
                                    tracing::warn!(message = "LISTEN connection lost.", %error);
                                    break;
                                }
                            }
                        }
                    });
                    let sql: String = channels.iter().map(|c| format!("LISTEN {c};")).collect();
                    match client.batch_execute(&sql).await {
                        Ok(()) => {
                            backoff.reset();
                            let _ = tx.try_send(ListenEvent::Connected);
                            let mut driver = driver;
                            tokio::select! {
                                _ = &mut driver => {}
                                _ = tx.closed() => {
                                    // Nobody listens any more: close the connection (dropping the driver does).
                                    driver.abort();
                                    drop(client);
                                    return;
                                }
                            }
                        }
                        Err(error) => {
                            tracing::warn!(message = "LISTEN failed.", %error);
                            driver.abort();
                        }
                    }
                }
                Err(error) => tracing::debug!(message = "LISTEN connection failed.", %error),
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    });
    rx
}

/// Adapts the receiver for `ctx.add_stream`.
pub fn stream(mut rx: mpsc::Receiver<ListenEvent>) -> impl futures::Stream<Item = ListenEvent> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    async fn listen_connections(admin: &tokio_postgres::Client, app: &str) -> i64 {
        admin
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", &[&app])
            .await
            .unwrap()
            .get(0)
    }

    #[actix_rt::test]
    async fn the_listen_connection_closes_when_its_receiver_is_dropped() {
        let base = std::env::var("HGTEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
        let (admin, conn) = tokio_postgres::connect(&format!("{base}/postgres"), tokio_postgres::NoTls).await.unwrap();
        actix_rt::spawn(conn);
        let app = format!("hgtest-listen-{}", uuid::Uuid::new_v4().simple());
        let mut config: tokio_postgres::Config = format!("{base}/postgres").parse().unwrap();
        config.application_name(&app);

        let deadline = Instant::now() + Duration::from_secs(20);
        let mut rx = spawn_listener(config, tokio_postgres::NoTls, &["hgtest_listen_leak"]);
        assert!(matches!(rx.recv().await, Some(ListenEvent::Connected)));
        assert_eq!(listen_connections(&admin, &app).await, 1);
        drop(rx);
        while listen_connections(&admin, &app).await != 0 {
            assert!(Instant::now() < deadline, "the LISTEN connection outlived its receiver");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
