//! One log line per HTTP request (method, path template, status, latency, request id) at target
//! `hookgate::access`, and the request's id echoed in `X-Request-Id` (the caller's, or a new UUIDv7).

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::HttpMessage;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The trace a request belongs to, when a handler knows it (ingest: its events' trace): the access log line shows
/// its `trace_id`.
#[derive(Debug, Clone)]
pub struct RequestTrace {
    pub trace_id: String,
}

impl RequestTrace {
    /// The trace of a W3C `traceparent` value (`00-<trace id>-<span id>-<flags>`).
    pub fn of(traceparent: &str) -> Self {
        Self { trace_id: traceparent.split('-').nth(1).unwrap_or_default().to_owned() }
    }
}

/// A caller's request id is kept when it is 1 to 200 visible ASCII characters; anything else is replaced, so that
/// what reaches the log is always one plain token.
fn usable(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    (1..=200).contains(&bytes.len()) && bytes.iter().all(|b| b.is_ascii_graphic())
}

/// The middleware (`actix_web::middleware::from_fn(access_log)`).
pub async fn access_log(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let request_id = req.headers().get(&REQUEST_ID).filter(|v| usable(v)).cloned().unwrap_or_else(|| {
        HeaderValue::from_str(&uuid::Uuid::now_v7().to_string()).expect("a UUID is a valid header value")
    });
    let method = req.method().clone();
    let mut res = next.call(req).await?;
    let path = res.request().match_pattern().unwrap_or_else(|| "(unmatched)".to_owned());
    let trace = res.request().extensions().get::<RequestTrace>().map(|t| t.trace_id.clone());
    tracing::info!(
        target: "hookgate::access",
        message = "HTTP request.",
        method = %method,
        path = %path,
        status = res.status().as_u16(),
        latency_ms = started.elapsed().as_secs_f64() * 1000.0,
        request_id = request_id.to_str().unwrap_or_default(),
        trace_id = trace.as_deref(),
    );
    res.headers_mut().insert(REQUEST_ID, request_id);
    Ok(res)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use actix_web::{middleware::from_fn, test, web, App, HttpResponse};

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[actix_web::test]
    async fn each_request_is_logged_with_its_path_template_and_its_id_echoed() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber =
            tracing_subscriber::fmt().json().flatten_event(true).with_writer(move || writer.clone()).finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let app = test::init_service(
            App::new()
                .wrap(from_fn(access_log))
                .route("/ingest/{source}", web::post().to(|| async { HttpResponse::Accepted().finish() })),
        )
        .await;

        let req = test::TestRequest::post().uri("/ingest/github").insert_header(("x-request-id", "order-42"));
        let res = test::call_service(&app, req.to_request()).await;
        assert_eq!(res.headers().get("x-request-id").unwrap(), "order-42");
        let bad = test::TestRequest::get().uri("/nowhere").insert_header(("x-request-id", "two words"));
        let res = test::call_service(&app, bad.to_request()).await;
        let generated = res.headers().get("x-request-id").unwrap().to_str().unwrap().to_owned();
        assert!(uuid::Uuid::parse_str(&generated).is_ok(), "{generated}");

        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["method"], "POST");
        assert_eq!(lines[0]["path"], "/ingest/{source}", "the template, not the slug");
        assert_eq!(lines[0]["status"], 202);
        assert_eq!(lines[0]["request_id"], "order-42");
        assert!(lines[0]["latency_ms"].as_f64().is_some());
        assert_eq!((lines[1]["path"].as_str(), lines[1]["status"].as_u64()), (Some("(unmatched)"), Some(404)));
        assert_eq!(lines[1]["request_id"], generated.as_str());
    }
}
