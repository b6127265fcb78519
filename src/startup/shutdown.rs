//! Stopping a node in order, at SIGTERM or SIGINT.

use std::time::Duration;

use hookgate_actors::shut_down;

use super::Application;

impl Application {
    /// Serves until SIGTERM or SIGINT, then shuts down in order:
    ///
    /// 1. readiness turns false at once (`/readyz` answers 503) while ingest keeps serving for `drain_delay_ms`,
    ///    so that load balancers stop sending before anything is refused;
    /// 2. live tail streams end; ingest stops accepting; requests in progress finish (each waits for its COMMIT), for at most
    ///    `shutdown_timeout_secs`;
    /// 3. the EventWriter flushes what it holds;
    /// 4. the Scheduler stops claiming; attempts in flight finish, and those still running when the rest of the
    ///    grace period is over give their leases back so that another node takes them over at once;
    /// 5. the ResultWriter flushes the last attempt results;
    /// 6. the Janitor stops; the Notifier stores the notifications it holds (its last `delivery.dead` window too);
    /// 7. the Router, the Cache and Health stop.
    ///
    /// Each step is one [`Shutdown`](hookgate_actors::Shutdown) with the same deadline, answered when the actor is
    /// done.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let Self {
            server, admin_server, actors, prober, health, drain_delay, shutdown_timeout, arbiters, tail, ..
        } = self;
        let handle = server.handle();
        let mut serving = actix_rt::spawn(server);
        // The operators' listener keeps answering (`/metrics`, `/readyz`) until the node has stopped.
        let admin_handle = admin_server.map(|(server, _)| {
            let handle = server.handle();
            (handle, actix_rt::spawn(server))
        });
        tokio::select! {
            result = &mut serving => {
                return result.unwrap_or_else(|e| Err(std::io::Error::other(e)));
            }
            signal = shutdown_signal() => {
                tracing::info!(message = "Shutting down.", signal);
            }
        }
        let deadline = tokio::time::Instant::now() + drain_delay + shutdown_timeout;
        health.set_draining();
        tokio::time::sleep(drain_delay).await;
        tracing::info!(message = "Ingest stops accepting.");
        // Live tail streams never end on their own: they end now, so the server's graceful stop does not wait on them.
        tail.close();
        handle.stop(true).await;
        let _ = serving.await;

        shut_down(&actors.writer, deadline).await;
        if let Some(scheduler) = &actors.scheduler {
            shut_down(scheduler, deadline).await;
        }
        if let Some(results) = &actors.result_writer {
            // The last results arrive as the attempts end, possibly after the deadline: they get time of their own.
            shut_down(results, tokio::time::Instant::now() + Duration::from_secs(5)).await;
        }
        shut_down(&actors.janitor, deadline).await;
        if let Some(notifier) = &actors.notifier {
            // After the ResultWriter and the Janitor, the last to tell it anything: it stores what it holds.
            shut_down(notifier, deadline.max(tokio::time::Instant::now() + Duration::from_secs(2))).await;
        }
        shut_down(&actors.router, deadline).await;
        shut_down(&actors.cache, deadline).await;
        shut_down(&prober, deadline).await;
        if let Some((handle, serving)) = admin_handle {
            handle.stop(true).await;
            let _ = serving.await;
        }
        drop(arbiters);
        tracing::info!(message = "Stopped.");
        Ok(())
    }
}

/// Resolves on the first SIGTERM or SIGINT, with its name.
async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use actix_rt::signal::unix::{signal, SignalKind};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(mut term), Ok(mut int)) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            },
            _ => std::future::pending().await,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = actix_rt::signal::ctrl_c().await;
        "ctrl-c"
    }
}
