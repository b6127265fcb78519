//! A dedicated PostgreSQL connection that LISTENs on channels and reconnects with back-off when it is lost.

use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

use crate::supervision::Backoff;

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
pub fn spawn_listener(
    config: tokio_postgres::Config,
    channels: &'static [&'static str],
) -> mpsc::Receiver<ListenEvent> {
    let (tx, rx) = mpsc::channel(64);
    actix_rt::spawn(async move {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        while !tx.is_closed() {
            match config.connect(tokio_postgres::NoTls).await {
                Ok((client, mut conn)) => {
                    let events = tx.clone();
                    let driver = actix_rt::spawn(async move {
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
                            let _ = driver.await;
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
