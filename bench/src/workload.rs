//! What one request looks like: the target URL, the JSON body (unique id, send time, padding to a fixed size), the
//! signature and the idempotency key.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How requests are signed.
#[derive(Clone, Debug)]
pub enum Signing {
    /// No signature: the plain workload any peer can take.
    None,
    /// hookgate's `hmac_sha256` source kind: hex HMAC-SHA256 of the body in `header`, after `prefix`.
    Hmac { header: String, prefix: String, secret: Vec<u8> },
    /// Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256 of
    /// "{id}.{ts}.{body}">`, keyed with the bytes behind `whsec_<base64>`.
    Standard { key: Vec<u8> },
}

impl Signing {
    /// Parses a Standard Webhooks secret (`whsec_<base64>`, the prefix optional).
    pub fn standard(secret: &str) -> anyhow::Result<Self> {
        let b64 = secret.strip_prefix("whsec_").unwrap_or(secret);
        Ok(Self::Standard { key: STANDARD.decode(b64)? })
    }
}

/// Hex HMAC-SHA256 of `body` (what an `hmac_sha256` source checks).
pub fn hmac_hex(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// The Standard Webhooks `webhook-signature` value for one key.
pub fn standard_signature(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// Nanoseconds since the Unix epoch (wall clock: the receiver compares it with its own on the same machine).
pub fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// The JSON body: `{"id":"<unique>","type":"bench.event","sent_ns":<unix ns>,"pad":"xxx…"}`, padded to `size`
/// bytes (never shorter than the fields themselves).
pub fn body(out: &mut Vec<u8>, id: &str, sent_ns: u64, size: usize) {
    use std::io::Write;
    out.clear();
    let _ = write!(out, r#"{{"sent_ns":{sent_ns},"id":"{id}","type":"bench.event","pad":""#);
    let pad = size.saturating_sub(out.len() + 2);
    out.resize(out.len() + pad, b'x');
    out.extend_from_slice(b"\"}");
}

/// Reads `"sent_ns":<digits>` from a body made by [`body`].
pub fn sent_ns(body: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"sent_ns\":";
    let at = body.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let digits: &[u8] = &body[at..body[at..].iter().position(|b| !b.is_ascii_digit()).map_or(body.len(), |p| at + p)];
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Everything needed to make requests against one target.
#[derive(Debug)]
pub struct Workload {
    pub addr: SocketAddr,
    host: String,
    path: String,
    pub signing: Signing,
    /// Header carrying the unique idempotency key (none: the id is only in the body, and in `webhook-id`).
    pub id_header: Option<String>,
    pub body_size: usize,
    /// Extra `Name: value` header lines sent with every request (e.g. a peer's `Authorization`).
    pub extra_headers: Vec<String>,
    run_id: String,
    seq: AtomicU64,
}

impl Workload {
    /// `url` is `http://host:port/path` (plain HTTP only).
    pub fn new(url: &str, signing: Signing, id_header: Option<String>, body_size: usize) -> anyhow::Result<Self> {
        let rest = url.strip_prefix("http://").ok_or_else(|| anyhow::anyhow!("only http:// URLs are supported"))?;
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let with_port = if host.contains(':') { host.to_owned() } else { format!("{host}:80") };
        let addr = with_port.to_socket_addrs()?.next().ok_or_else(|| anyhow::anyhow!("{host} does not resolve"))?;
        let run_id = format!("{:x}", now_ns() / 1000);
        Ok(Self {
            addr,
            host: host.to_owned(),
            path: path.to_owned(),
            signing,
            id_header,
            body_size,
            extra_headers: Vec::new(),
            run_id,
            seq: AtomicU64::new(0),
        })
    }

    /// Requests made so far (each used one unique id).
    pub fn issued(&self) -> u64 {
        self.seq.load(Ordering::Relaxed)
    }

    /// Writes the next request (a new unique id, the body stamped with the current time) into `out`; `body_buf`
    /// is scratch space.
    pub fn next_request(&self, out: &mut Vec<u8>, body_buf: &mut Vec<u8>) {
        use std::io::Write;
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{seq}", self.run_id);
        let sent = now_ns();
        body(body_buf, &id, sent, self.body_size);
        out.clear();
        let _ = write!(
            out,
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            self.path,
            self.host,
            body_buf.len()
        );
        for h in &self.extra_headers {
            let _ = write!(out, "{h}\r\n");
        }
        if let Some(h) = &self.id_header {
            let _ = write!(out, "{h}: {id}\r\n");
        }
        match &self.signing {
            Signing::None => {}
            Signing::Hmac { header, prefix, secret } => {
                let _ = write!(out, "{header}: {prefix}{}\r\n", hmac_hex(secret, body_buf));
            }
            Signing::Standard { key } => {
                let ts = (sent / 1_000_000_000) as i64;
                let sig = standard_signature(key, &id, ts, body_buf);
                let _ = write!(out, "webhook-id: {id}\r\nwebhook-timestamp: {ts}\r\nwebhook-signature: {sig}\r\n");
            }
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body_buf);
    }
}

/// A bare `GET path` request for `host`.
pub fn get_request(host: &str, path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_have_the_requested_size_and_carry_the_send_time() {
        let mut b = Vec::new();
        body(&mut b, "run-1", 1_700_000_000_123_456_789, 1024);
        assert_eq!(b.len(), 1024);
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["id"], "run-1");
        assert_eq!(sent_ns(&b), Some(1_700_000_000_123_456_789));
        body(&mut b, "run-2", 5, 10);
        assert!(serde_json::from_slice::<serde_json::Value>(&b).is_ok());
    }

    #[test]
    fn requests_have_unique_ids_and_valid_signatures() {
        let secret = b"bench-secret".to_vec();
        let hmac = Signing::Hmac { header: "X-Signature".into(), prefix: "sha256=".into(), secret: secret.clone() };
        let w = Workload::new("http://127.0.0.1:9/ingest/bench", hmac, Some("X-Request-Id".into()), 256).unwrap();
        let (mut a, mut b, mut scratch) = (Vec::new(), Vec::new(), Vec::new());
        w.next_request(&mut a, &mut scratch);
        let body_a = scratch.clone();
        w.next_request(&mut b, &mut scratch);
        assert_ne!(a, b);
        let text = String::from_utf8(a).unwrap();
        assert!(text.starts_with("POST /ingest/bench HTTP/1.1\r\n"));
        assert!(text.contains(&format!("X-Signature: sha256={}\r\n", hmac_hex(&secret, &body_a))));
        assert!(text.ends_with(std::str::from_utf8(&body_a).unwrap()));
    }

    #[test]
    fn standard_webhooks_signatures_verify_with_the_reference_library() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let w = Workload::new("http://127.0.0.1:9/x", Signing::standard(secret).unwrap(), None, 300).unwrap();
        let (mut req, mut scratch) = (Vec::new(), Vec::new());
        w.next_request(&mut req, &mut scratch);
        let text = String::from_utf8(req).unwrap();
        let mut headers = http::HeaderMap::new();
        for line in text.split("\r\n").skip(1).take_while(|l| !l.is_empty()) {
            let (k, v) = line.split_once(": ").unwrap();
            headers.insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        let wh = standardwebhooks::Webhook::new(secret).unwrap();
        wh.verify(&scratch, &headers).expect("signature verifies");
    }
}
