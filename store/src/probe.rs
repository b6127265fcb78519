//! The readiness probe's own PostgreSQL connection: one round trip per probe, reconnected when lost.
//!
//! It is not a pooled connection on purpose: a probe that waited for a pool's slot would report "PostgreSQL down"
//! whenever the pool was busy (slow admin queries, a burst of ingest), and take a healthy node out of the load
//! balancer exactly when it is working hardest.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, Config, Socket};

/// A dedicated connection for the readiness probe. Opened at the first [`Probe::ping`], and again after any failure.
pub struct Probe<T> {
    config: Config,
    tls: T,
    /// The open connection and the task driving it.
    open: Option<(Client, JoinHandle<()>)>,
}

impl<T> Probe<T>
where
    T: MakeTlsConnect<Socket> + Clone + 'static,
    T::Stream: 'static,
{
    /// `config` and `tls` as the pool's connections are made (its TLS, its time-outs); nothing is opened yet.
    pub fn new(config: Config, tls: T) -> Self {
        Self { config, tls, open: None }
    }

    /// One round trip (`SELECT 1`), connecting first when there is no open connection, all within `limit`. On any
    /// failure the connection is closed, so that the next probe starts from a fresh one. Must run on a `LocalSet` (an
    /// actix arbiter): the connection is driven by a local task.
    pub async fn ping(&mut self, limit: Duration) -> Result<(), String> {
        let result = match tokio::time::timeout(limit, self.round_trip()).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {} ms", limit.as_millis())),
        };
        if result.is_err() {
            self.close();
        }
        result
    }

    async fn round_trip(&mut self) -> Result<(), String> {
        if self.open.as_ref().is_some_and(|(client, _)| client.is_closed()) {
            self.close();
        }
        if self.open.is_none() {
            let (client, connection) = self.config.connect(self.tls.clone()).await.map_err(|e| e.to_string())?;
            let driver = tokio::task::spawn_local(async move {
                // Its end is noticed by the next probe (`is_closed`, or the round trip failing).
                let _ = connection.await;
            });
            self.open = Some((client, driver));
        }
        let Some((client, _)) = &self.open else { return Err("not connected".into()) };
        client.simple_query("SELECT 1").await.map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Closes the connection at once (even one that stopped answering).
    fn close(&mut self) {
        if let Some((client, driver)) = self.open.take() {
            driver.abort();
            drop(client);
        }
    }
}

impl<T> Drop for Probe<T> {
    fn drop(&mut self) {
        if let Some((_, driver)) = self.open.take() {
            driver.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn the_probe_reconnects_after_its_connection_is_killed() {
        let base = std::env::var("HGTEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
        let (admin, conn) = tokio_postgres::connect(&format!("{base}/postgres"), tokio_postgres::NoTls).await.unwrap();
        actix_rt::spawn(conn);
        let app = format!("hgtest-probe-{}", uuid::Uuid::new_v4().simple());
        let mut config: Config = format!("{base}/postgres").parse().unwrap();
        config.application_name(&app);
        let mut probe = Probe::new(config, tokio_postgres::NoTls);
        let limit = Duration::from_secs(20);

        probe.ping(limit).await.expect("first probe");
        probe.ping(limit).await.expect("the same connection again");
        let pids: Vec<i32> = admin
            .query("SELECT pid FROM pg_stat_activity WHERE application_name = $1", &[&app])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(pids.len(), 1, "one connection, the probe's own");
        admin.execute("SELECT pg_terminate_backend($1)", &[&pids[0]]).await.unwrap();
        // The killed connection fails at most one probe; the next one reconnects.
        if probe.ping(limit).await.is_err() {
            probe.ping(limit).await.expect("reconnected");
        }
        let fresh: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND pid <> $2",
                &[&app, &pids[0]],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(fresh, 1, "a new connection answered");
    }
}
