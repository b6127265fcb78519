//! The built-in fast receiver: answers every request `204` at once, counts them, and records each one's
//! ingest-to-delivered latency from the `sent_ns` stamp the load generator put in the body.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};
use hdrhistogram::Histogram;

use crate::load::histogram;
use crate::workload::{now_ns, sent_ns};

#[derive(Debug)]
pub struct ReceiverState {
    received: AtomicU64,
    /// When the latest request arrived, in ns after [`epoch`] (0: none yet).
    last_arrival_ns: AtomicU64,
    latency: Mutex<Histogram<u64>>,
}

/// The monotonic instant arrival times count from (the first use in this process).
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl ReceiverState {
    /// Requests received since start.
    pub fn received(&self) -> u64 {
        // Acquire: pairs with the arrival's Release, so a count read here comes with its arrival stamp.
        self.received.load(Ordering::Acquire)
    }

    /// When the latest request arrived (`None`: none yet). A drain timed to it ends at its last delivery, not at
    /// the next time someone looked.
    pub fn last_arrival(&self) -> Option<Instant> {
        match self.last_arrival_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(epoch() + Duration::from_nanos(ns)),
        }
    }

    /// Takes the latency histogram recorded so far (µs) and starts a new one.
    pub fn take_latency(&self) -> Histogram<u64> {
        std::mem::replace(&mut *self.latency.lock().expect("not poisoned"), histogram())
    }
}

/// A running receiver on its own thread(s).
pub struct Receiver {
    pub port: u16,
    pub state: Arc<ReceiverState>,
    handle: actix_web::dev::ServerHandle,
}

impl Receiver {
    /// Binds `127.0.0.1:port` (0: any free port) and serves plain HTTP with `workers` threads.
    pub fn start(port: u16, workers: usize) -> std::io::Result<Self> {
        Self::serve(port, workers, None)
    }

    /// The same over HTTPS, with `tls`.
    pub fn start_tls(port: u16, workers: usize, tls: rustls::ServerConfig) -> std::io::Result<Self> {
        Self::serve(port, workers, Some(tls))
    }

    fn serve(port: u16, workers: usize, tls: Option<rustls::ServerConfig>) -> std::io::Result<Self> {
        // A backlog for a burst of new connections (every deliverer opening its pool at once): past the standard
        // library's 128, the kernel drops handshakes and each waits a second for its retry, which a drain then
        // reports as a second of nothing.
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into())?;
        socket.listen(4096)?;
        let listener: TcpListener = socket.into();
        let port = listener.local_addr()?.port();
        epoch();
        let state = Arc::new(ReceiverState {
            received: AtomicU64::new(0),
            last_arrival_ns: AtomicU64::new(0),
            latency: Mutex::new(histogram()),
        });
        let data = web::Data::from(state.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new().name("bench-receiver".into()).spawn(move || {
            let system = actix_rt::System::new();
            system.block_on(async move {
                let server = HttpServer::new(move || {
                    App::new().app_data(data.clone()).app_data(web::PayloadConfig::new(16 << 20)).default_service(
                        web::to(|s: web::Data<ReceiverState>, body: web::Bytes| async move {
                            if let Some(sent) = sent_ns(&body) {
                                let us = now_ns().saturating_sub(sent) / 1000;
                                let _ = s.latency.lock().expect("not poisoned").record(us.max(1));
                            }
                            // Stamped before the count: whoever sees the count sees a stamp at least this late.
                            let at = epoch().elapsed().as_nanos().max(1) as u64;
                            s.last_arrival_ns.fetch_max(at, Ordering::Relaxed);
                            s.received.fetch_add(1, Ordering::Release);
                            HttpResponse::NoContent().finish()
                        }),
                    )
                })
                .workers(workers.max(1))
                .disable_signals();
                let server = match tls {
                    Some(config) => server.listen_rustls_0_23(listener, config),
                    None => server.listen(listener),
                };
                match server {
                    Ok(server) => {
                        let server = server.run();
                        let _ = tx.send(Ok(server.handle()));
                        let _ = server.await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            });
        })?;
        let handle = rx.recv().map_err(std::io::Error::other)??;
        Ok(Self { port, state, handle })
    }

    /// Stops serving (without waiting for the server thread).
    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}
