//! Standard Webhooks signatures, both ways: hookgate signs its outbound deliveries with them, and its
//! `standard_webhooks` sources are verified with them (the verifier in [`crate::verify`] calls
//! [`SigningSecret::verify`]). Also the W3C `traceparent` of a delivery.
//!
//! `webhook-signature` is `v1,<base64 HMAC-SHA256 of "{webhook-id}.{webhook-timestamp}.{body}">`; while a secret
//! rotates, one such value per active secret, separated by spaces (receivers accept any one of them).
//!
//! [`decode_secret`] is the one key rule for Standard Webhooks secrets, for those hookgate signs with and for those its
//! sources verify with.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

/// The prefix of Standard Webhooks secrets.
pub const SECRET_PREFIX: &str = "whsec_";

/// Decodes a Standard Webhooks secret, `whsec_<base64>` (the prefix is optional): 24 to 64 bytes, as the
/// specification asks of its keys.
pub fn decode_secret(text: &str) -> Result<Vec<u8>, &'static str> {
    let b64 = text.strip_prefix(SECRET_PREFIX).unwrap_or(text);
    let key = STANDARD.decode(b64).map_err(|_| "a Standard Webhooks secret must be whsec_ followed by base64")?;
    if !(24..=64).contains(&key.len()) {
        return Err("a Standard Webhooks secret must hold 24 to 64 bytes");
    }
    Ok(key)
}

/// A destination's signing secret: the bytes behind `whsec_<base64>`.
#[derive(Clone)]
pub struct SigningSecret(Vec<u8>);

impl std::fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningSecret([REDACTED])")
    }
}

impl SigningSecret {
    /// Parses `whsec_<base64>` (the prefix is optional); the key must be 24 to 64 bytes.
    pub fn parse(text: &str) -> Result<Self, &'static str> {
        decode_secret(text).map(Self)
    }

    /// A new random secret, formatted `whsec_<base64 of 32 bytes>`.
    pub fn generate() -> String {
        let key: [u8; 32] = rand::random();
        format!("{SECRET_PREFIX}{}", STANDARD.encode(key))
    }

    /// The MAC over `{msg_id}.{timestamp}.{body}`, `timestamp` as the text of the `webhook-timestamp` header.
    fn mac(&self, msg_id: &str, timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC accepts keys of any length");
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The base64 `v1` signature of a message.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        STANDARD.encode(self.mac(msg_id, &timestamp.to_string(), body).finalize().into_bytes())
    }

    /// Whether `signature` (the decoded bytes of a `v1` signature) signs the message, compared in constant time.
    pub fn verify(&self, msg_id: &str, timestamp: &str, body: &[u8], signature: &[u8]) -> bool {
        self.mac(msg_id, timestamp, body).verify_slice(signature).is_ok()
    }
}

/// The `webhook-signature` header value: one `v1,<sig>` per secret, space-separated.
pub fn signature_header(secrets: &[SigningSecret], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets.iter().map(|s| format!("v1,{}", s.sign(msg_id, timestamp, body))).collect::<Vec<_>>().join(" ")
}

/// A W3C `traceparent` whose trace id is the event id, so one event's deliveries share a trace.
pub fn traceparent(event_id: Uuid) -> String {
    let span: u64 = rand::random::<u64>().max(1);
    format!("00-{}-{span:016x}-01", event_id.simple())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_hold_24_to_64_bytes_with_or_without_their_prefix() {
        let b64 = |n: usize| STANDARD.encode(vec![1u8; n]);
        assert_eq!(decode_secret(&format!("whsec_{}", b64(24))).unwrap().len(), 24);
        assert_eq!(decode_secret(&b64(64)).unwrap().len(), 64);
        assert!(decode_secret(&b64(23)).is_err());
        assert!(decode_secret(&b64(65)).is_err());
        assert!(decode_secret("whsec_not base64!").is_err());
    }

    #[test]
    fn signatures_verify_with_the_reference_standard_webhooks_library() {
        let secret_text = SigningSecret::generate();
        let secret = SigningSecret::parse(&secret_text).unwrap();
        let body = br#"{"type":"order.created","id":42}"#;
        let ts = chrono::Utc::now().timestamp();
        let header = signature_header(std::slice::from_ref(&secret), "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", ts, body);

        let wh = standardwebhooks::Webhook::new(&secret_text).unwrap();
        let mut headers = http::HeaderMap::new();
        headers.insert("webhook-id", "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W".parse().unwrap());
        headers.insert("webhook-timestamp", ts.to_string().parse().unwrap());
        headers.insert("webhook-signature", header.parse().unwrap());
        wh.verify(body, &headers).expect("the reference implementation accepts our signature");
        assert!(wh.verify(b"tampered", &headers).is_err());
    }

    #[test]
    fn while_a_secret_rotates_either_one_verifies() {
        let (old_text, new_text) = (SigningSecret::generate(), SigningSecret::generate());
        let secrets = [SigningSecret::parse(&new_text).unwrap(), SigningSecret::parse(&old_text).unwrap()];
        let ts = chrono::Utc::now().timestamp();
        let header = signature_header(&secrets, "msg_1", ts, b"{}");
        assert_eq!(header.split(' ').count(), 2);
        for text in [old_text, new_text] {
            let mut headers = http::HeaderMap::new();
            headers.insert("webhook-id", "msg_1".parse().unwrap());
            headers.insert("webhook-timestamp", ts.to_string().parse().unwrap());
            headers.insert("webhook-signature", header.parse().unwrap());
            standardwebhooks::Webhook::new(&text).unwrap().verify(b"{}", &headers).unwrap();
        }
    }

    #[test]
    fn the_spec_example_signature_is_reproduced() {
        // The example in the Standard Webhooks specification (spec/standard-webhooks.md, "Signature scheme").
        let secret = SigningSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        let header = signature_header(&[secret], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(header, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn bad_secrets_are_refused_and_never_printed() {
        assert!(SigningSecret::parse("whsec_not base64!").is_err());
        assert!(SigningSecret::parse("whsec_c2hvcnQ=").is_err(), "too short");
        let s = SigningSecret::parse(&SigningSecret::generate()).unwrap();
        assert_eq!(format!("{s:?}"), "SigningSecret([REDACTED])");
    }

    #[test]
    fn traceparent_carries_the_event_id() {
        let id = Uuid::now_v7();
        let tp = traceparent(id);
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!(parts[1], id.simple().to_string());
        assert_eq!(parts[2].len(), 16);
    }
}
