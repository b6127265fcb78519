//! A local HTTP receiver for delivery tests: records every request and answers from a script.

use std::collections::VecDeque;
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use bytes::Bytes;

use crate::helpers::eventually;

/// One scripted answer.
#[derive(Debug, Clone)]
pub enum Reply {
    Status(u16),
    /// Status with extra headers.
    With(u16, Vec<(&'static str, String)>),
    /// Wait, then answer with the status.
    Sleep(Duration, u16),
    /// Hold the request until the test adds a permit to the gate, then answer with the status.
    Gate(Arc<tokio::sync::Semaphore>, u16),
}

/// A request as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
pub struct ReceiverState {
    pub requests: Mutex<Vec<Received>>,
    script: Mutex<VecDeque<Reply>>,
    default: Mutex<Option<Reply>>,
    /// Requests being answered right now, per `webhook-id`; a second concurrent one is recorded in `overlaps`.
    in_progress: Mutex<std::collections::HashSet<String>>,
    pub overlaps: AtomicUsize,
    pub completed: AtomicUsize,
    /// The most requests ever being answered at once.
    pub most_at_once: AtomicUsize,
}

pub struct Receiver {
    pub url: String,
    pub state: Arc<ReceiverState>,
}

async fn handle(req: HttpRequest, body: Bytes, state: web::Data<ReceiverState>) -> HttpResponse {
    let headers = req
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let received = Received { at: Instant::now(), headers, body };
    let id = received.header("webhook-id").unwrap_or_default().to_owned();
    {
        let mut in_progress = state.in_progress.lock().unwrap();
        if !in_progress.insert(id.clone()) {
            state.overlaps.fetch_add(1, Ordering::SeqCst);
        }
        state.most_at_once.fetch_max(in_progress.len(), Ordering::SeqCst);
    }
    state.requests.lock().unwrap().push(received);
    let reply = state
        .script
        .lock()
        .unwrap()
        .pop_front()
        .or_else(|| state.default.lock().unwrap().clone())
        .unwrap_or(Reply::Status(200));
    let resp = match reply {
        Reply::Status(s) => HttpResponse::build(actix_web::http::StatusCode::from_u16(s).unwrap()).body("ok"),
        Reply::With(s, headers) => {
            let mut b = HttpResponse::build(actix_web::http::StatusCode::from_u16(s).unwrap());
            for (k, v) in headers {
                b.insert_header((k, v));
            }
            b.body("scripted")
        }
        Reply::Sleep(d, s) => {
            tokio::time::sleep(d).await;
            HttpResponse::build(actix_web::http::StatusCode::from_u16(s).unwrap()).body("slept")
        }
        Reply::Gate(gate, s) => {
            let _ = gate.acquire().await.map(|p| p.forget());
            HttpResponse::build(actix_web::http::StatusCode::from_u16(s).unwrap()).body("released")
        }
    };
    state.in_progress.lock().unwrap().remove(&id);
    state.completed.fetch_add(1, Ordering::SeqCst);
    resp
}

impl Receiver {
    /// Starts a receiver on 127.0.0.1:0 answering `script` in order, then `default` (200 if none).
    pub fn start(script: Vec<Reply>, default: Option<Reply>) -> Self {
        Self::serve(script, default, None)
    }

    /// Starts an HTTPS receiver on 127.0.0.1:0 (TLS with `tls`) answering 200.
    pub fn start_tls(tls: rustls::ServerConfig) -> Self {
        Self::serve(vec![], None, Some(tls))
    }

    fn serve(script: Vec<Reply>, default: Option<Reply>, tls: Option<rustls::ServerConfig>) -> Self {
        let state = Arc::new(ReceiverState::default());
        *state.script.lock().unwrap() = script.into();
        *state.default.lock().unwrap() = default;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let data = web::Data::from(state.clone());
        let server = HttpServer::new(move || App::new().app_data(data.clone()).default_service(web::to(handle)))
            .workers(1)
            .disable_signals();
        let (server, scheme) = match tls {
            Some(config) => (server.listen_rustls_0_23(listener, config).unwrap(), "https"),
            None => (server.listen(listener).unwrap(), "http"),
        };
        actix_rt::spawn(server.run());
        Self { url: format!("{scheme}://127.0.0.1:{port}/hook"), state }
    }

    pub fn requests(&self) -> Vec<Received> {
        self.state.requests.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.state.requests.lock().unwrap().len()
    }

    /// Waits until at least `n` requests arrived.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        eventually(&format!("{n} request(s) at {}", self.url), Duration::from_secs(60), || {
            let got = self.requests();
            async move { (got.len() >= n).then_some(got) }
        })
        .await
    }
}
