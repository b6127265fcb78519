//! Standard Webhooks signatures, both ways: hookgate signs its outbound deliveries with them, and its
//! `standard_webhooks` sources are verified with them (the verifier in [`crate::verify`] calls
//! [`SigningSecret::verify`]).
//!
//! `webhook-signature` is `v1,<base64 HMAC-SHA256 of "{webhook-id}.{webhook-timestamp}.{body}">`; while a secret
//! rotates, one such value per active secret, separated by spaces (receivers accept any one of them). A destination
//! may also (or instead) sign asymmetrically: `v1a,<base64 ed25519 signature of the same content>` per
//! [`SigningKey`] (`whsk_…`), which receivers verify with its public key (`whpk_…`) and cannot forge.
//!
//! [`decode_secret`] is the one key rule for Standard Webhooks secrets, for those hookgate signs with and for those its
//! sources verify with.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

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

/// The prefix of Standard Webhooks ed25519 secret keys.
pub const SIGNING_KEY_PREFIX: &str = "whsk_";
/// The prefix of Standard Webhooks ed25519 public keys.
pub const PUBLIC_KEY_PREFIX: &str = "whpk_";

/// A destination's ed25519 signing key (Standard Webhooks `v1a`): `whsk_<base64>` of the 32-byte seed, or of the
/// 64 bytes of seed and public key that libsodium calls a secret key (the public half must then match).
#[derive(Clone)]
pub struct SigningKey(ed25519_dalek::SigningKey);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey([REDACTED])")
    }
}

impl SigningKey {
    /// Parses `whsk_<base64>` (the prefix is optional).
    pub fn parse(text: &str) -> Result<Self, &'static str> {
        let b64 = text.strip_prefix(SIGNING_KEY_PREFIX).unwrap_or(text);
        let raw = STANDARD.decode(b64).map_err(|_| "an ed25519 signing key must be whsk_ followed by base64")?;
        let seed: [u8; 32] = raw.get(..32).and_then(|s| s.try_into().ok()).unwrap_or_default();
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        match raw.len() {
            32 => Ok(Self(key)),
            64 if raw[32..] == key.verifying_key().to_bytes() => Ok(Self(key)),
            64 => Err("an ed25519 signing key of 64 bytes must end with its own public key"),
            _ => Err("an ed25519 signing key must hold 32 bytes (seed) or 64 bytes (seed and public key)"),
        }
    }

    /// A new random key, formatted `whsk_<base64 of seed and public key>` (64 bytes, as libsodium keeps them).
    pub fn generate() -> String {
        let key = ed25519_dalek::SigningKey::from_bytes(&rand::random());
        format!("{SIGNING_KEY_PREFIX}{}", STANDARD.encode(key.to_keypair_bytes()))
    }

    /// The public key receivers verify with: `whpk_<base64 of 32 bytes>`.
    pub fn public_key(&self) -> String {
        format!("{PUBLIC_KEY_PREFIX}{}", STANDARD.encode(self.0.verifying_key().to_bytes()))
    }

    /// The base64 `v1a` signature of `{msg_id}.{timestamp}.{body}`.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        use ed25519_dalek::Signer;
        let ts = timestamp.to_string();
        let mut content = Vec::with_capacity(msg_id.len() + ts.len() + body.len() + 2);
        for part in [msg_id.as_bytes(), b".", ts.as_bytes(), b".", body] {
            content.extend_from_slice(part);
        }
        STANDARD.encode(self.0.sign(&content).to_bytes())
    }
}

/// The `webhook-signature` header value: one `v1,<sig>` per secret, then one `v1a,<sig>` per key, space-separated;
/// `None` when the destination has neither (its deliveries are then unsigned).
pub fn signature_header(
    secrets: &[SigningSecret],
    keys: &[SigningKey],
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> Option<String> {
    let v1 = secrets.iter().map(|s| format!("v1,{}", s.sign(msg_id, timestamp, body)));
    let v1a = keys.iter().map(|k| format!("v1a,{}", k.sign(msg_id, timestamp, body)));
    let all: Vec<String> = v1.chain(v1a).collect();
    (!all.is_empty()).then(|| all.join(" "))
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
        let header =
            signature_header(std::slice::from_ref(&secret), &[], "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", ts, body).unwrap();

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
        let header = signature_header(&secrets, &[], "msg_1", ts, b"{}").unwrap();
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
        let header = signature_header(&[secret], &[], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(header.as_deref(), Some("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="));
    }

    #[test]
    fn bad_secrets_are_refused_and_never_printed() {
        assert!(SigningSecret::parse("whsec_not base64!").is_err());
        assert!(SigningSecret::parse("whsec_c2hvcnQ=").is_err(), "too short");
        let s = SigningSecret::parse(&SigningSecret::generate()).unwrap();
        assert_eq!(format!("{s:?}"), "SigningSecret([REDACTED])");
    }

    /// Verifies a `v1a` signature with ring's ed25519, an implementation independent of the one that signed.
    fn ring_verifies(public_key: &str, msg_id: &str, ts: i64, body: &[u8], signature: &str) -> bool {
        let pk = STANDARD.decode(public_key.strip_prefix(PUBLIC_KEY_PREFIX).unwrap()).unwrap();
        let sig = STANDARD.decode(signature).unwrap();
        let content = [msg_id.as_bytes(), b".", ts.to_string().as_bytes(), b".", body].concat();
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, pk).verify(&content, &sig).is_ok()
    }

    #[test]
    fn v1a_signatures_verify_with_an_independent_ed25519_implementation() {
        let key = SigningKey::parse(&SigningKey::generate()).unwrap();
        let public = key.public_key();
        let ts = chrono::Utc::now().timestamp();
        let body = br#"{"type":"order.created"}"#;
        let header = signature_header(&[], std::slice::from_ref(&key), "msg_1", ts, body).unwrap();
        let sig = header.strip_prefix("v1a,").expect("only a v1a signature");
        assert!(ring_verifies(&public, "msg_1", ts, body, sig));
        assert!(!ring_verifies(&public, "msg_1", ts, b"tampered", sig));
        assert!(!ring_verifies(&public, "msg_2", ts, body, sig));
    }

    #[test]
    fn v1_and_v1a_sign_side_by_side() {
        let secret = SigningSecret::parse(&SigningSecret::generate()).unwrap();
        let keys =
            [SigningKey::parse(&SigningKey::generate()).unwrap(), SigningKey::parse(&SigningKey::generate()).unwrap()];
        let header = signature_header(&[secret], &keys, "msg_1", 1_700_000_000, b"{}").unwrap();
        let schemes: Vec<&str> = header.split(' ').map(|s| s.split(',').next().unwrap()).collect();
        assert_eq!(schemes, ["v1", "v1a", "v1a"]);
        assert_eq!(signature_header(&[], &[], "msg_1", 1_700_000_000, b"{}"), None);
    }

    #[test]
    fn signing_keys_take_a_seed_or_a_keypair_and_are_never_printed() {
        let seed = [5u8; 32];
        let pair = ed25519_dalek::SigningKey::from_bytes(&seed).to_keypair_bytes();
        let from_seed = SigningKey::parse(&format!("whsk_{}", STANDARD.encode(seed))).unwrap();
        let from_pair = SigningKey::parse(&STANDARD.encode(pair)).unwrap();
        assert_eq!(from_seed.public_key(), from_pair.public_key());
        assert!(from_seed.public_key().starts_with("whpk_"));
        let mut wrong = pair;
        wrong[40] ^= 1;
        assert!(SigningKey::parse(&STANDARD.encode(wrong)).is_err(), "a public half that does not match");
        assert!(SigningKey::parse(&STANDARD.encode([1u8; 31])).is_err());
        assert!(SigningKey::parse("whsk_not base64!").is_err());
        assert_eq!(format!("{from_seed:?}"), "SigningKey([REDACTED])");
    }
}
