//! What identifies an event as received: its idempotency key and its type, extracted as the source says (a header,
//! a JSON pointer into the body, the CloudEvents attributes, a hash of the body), and checked once, as newtypes.

use sha2::{Digest, Sha256};

use crate::cloudevents::Attributes;
use crate::source::{EventTypeConfig, IdempotencyConfig};
use crate::verify::{visible_ascii, RequestHeaders};

/// Longest accepted idempotency key, in bytes.
pub const MAX_KEY_LEN: usize = 256;
/// Longest accepted event type, in bytes.
pub const MAX_TYPE_LEN: usize = 256;

/// Why a key or a type could not be taken from a request; the message names where it was looked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtractError {
    /// The request lacks it or holds something unusable (400).
    #[error("{0}")]
    Invalid(String),
    /// It is read from the body, which is not JSON (400, `invalid-json`).
    #[error("{0}")]
    NotJson(String),
    /// The source takes the key from CloudEvents attributes, and the request is no CloudEvent.
    #[error("this source takes its idempotency key from CloudEvents, and the request is no CloudEvent")]
    NotACloudEvent,
}

/// 1 to `max` bytes, no control characters: the rule of keys and types.
fn checked(what: &str, value: String, max: usize) -> Result<String, ExtractError> {
    if value.is_empty() || value.len() > max || value.chars().any(char::is_control) {
        return Err(ExtractError::Invalid(format!("{what} must hold 1 to {max} bytes without control characters")));
    }
    Ok(value)
}

/// An event's idempotency key: 1 to [`MAX_KEY_LEN`] bytes, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Checks `value`; `what` names where it came from, for the message.
    pub fn parse(what: &str, value: impl Into<String>) -> Result<Self, ExtractError> {
        checked(what, value.into(), MAX_KEY_LEN).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// An event's type: 1 to [`MAX_TYPE_LEN`] bytes, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventType(String);

impl EventType {
    /// Checks `value`; `what` names where it came from, for the message.
    pub fn parse(what: &str, value: impl Into<String>) -> Result<Self, ExtractError> {
        checked(what, value.into(), MAX_TYPE_LEN).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// The request body parsed as JSON on first use (a body that is not JSON stays its bytes).
pub struct LazyJson<'a> {
    body: &'a [u8],
    value: Option<Option<serde_json::Value>>,
}

impl<'a> LazyJson<'a> {
    pub fn new(body: &'a [u8]) -> Self {
        Self { body, value: None }
    }

    /// The parsed document; `None` when the body is not JSON.
    pub fn get(&mut self) -> Option<&serde_json::Value> {
        let body = self.body;
        self.value.get_or_insert_with(|| serde_json::from_slice(body).ok()).as_ref()
    }

    /// The parsed document, or the raw bytes when the body is not JSON.
    pub fn value(&mut self) -> Result<&serde_json::Value, &'a [u8]> {
        let body = self.body;
        self.get().ok_or(body)
    }
}

/// A string (or number) at a JSON pointer of the body.
fn at_pointer(doc: &mut LazyJson<'_>, pointer: &str, what: &str) -> Result<Option<String>, ExtractError> {
    let value = doc
        .get()
        .ok_or_else(|| ExtractError::NotJson(format!("{what} is read from {pointer} but the body is not JSON")))?;
    match value.pointer(pointer) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(serde_json::Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(ExtractError::Invalid(format!("{what} at {pointer} must be a string or a number"))),
    }
}

/// A header's value as trimmed text; `Ok(None)` when absent.
fn header_text(headers: &impl RequestHeaders, header: &str) -> Result<Option<String>, ExtractError> {
    match headers.values(&header.to_ascii_lowercase()).next() {
        None => Ok(None),
        Some(v) => visible_ascii(v)
            .map(|s| Some(s.trim().to_owned()))
            .ok_or_else(|| ExtractError::Invalid(format!("the {header} header must be visible ASCII"))),
    }
}

/// The idempotency key of a request, where its source says it is.
pub fn idempotency_key(
    cfg: &IdempotencyConfig,
    headers: &impl RequestHeaders,
    body: &[u8],
    attributes: Option<&Attributes>,
    doc: &mut LazyJson<'_>,
) -> Result<IdempotencyKey, ExtractError> {
    match cfg {
        IdempotencyConfig::BodyHash => IdempotencyKey::parse("the body hash", hex::encode(Sha256::digest(body))),
        IdempotencyConfig::Cloudevents => match attributes {
            Some(a) => IdempotencyKey::parse("the CloudEvents source and id", a.idempotency_key()),
            None => Err(ExtractError::NotACloudEvent),
        },
        IdempotencyConfig::JsonPointer { pointer } => {
            let what = "the idempotency key";
            let key = at_pointer(doc, pointer, what)?
                .ok_or_else(|| ExtractError::Invalid(format!("{what} at {pointer} is missing")))?;
            IdempotencyKey::parse(&format!("{what} at {pointer}"), key)
        }
        IdempotencyConfig::Header { header } => {
            let key = header_text(headers, header)?
                .ok_or_else(|| ExtractError::Invalid(format!("the {header} header (idempotency key) is missing")))?;
            IdempotencyKey::parse(&format!("the {header} header"), key)
        }
    }
}

/// The event type of a request, when its source names where it comes from; absent is `None`.
pub fn event_type(
    cfg: Option<&EventTypeConfig>,
    headers: &impl RequestHeaders,
    doc: &mut LazyJson<'_>,
) -> Result<Option<EventType>, ExtractError> {
    let value = match cfg {
        None => return Ok(None),
        Some(EventTypeConfig::Header { header }) => header_text(headers, header)?,
        Some(EventTypeConfig::JsonPointer { pointer }) => at_pointer(doc, pointer, "the event type")?,
    };
    value.map(|v| EventType::parse("the event type", v)).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderName, HeaderValue};

    fn headers(pairs: &[(&'static str, &[u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_static(k), HeaderValue::from_bytes(v).unwrap());
        }
        h
    }

    #[test]
    fn keys_and_types_are_one_to_256_bytes_without_control_characters() {
        assert_eq!(IdempotencyKey::parse("k", "abc").unwrap().as_str(), "abc");
        assert!(IdempotencyKey::parse("k", "").is_err());
        assert!(IdempotencyKey::parse("k", "a\u{7}b").is_err());
        assert!(IdempotencyKey::parse("k", "x".repeat(257)).is_err());
        assert!(IdempotencyKey::parse("k", "x".repeat(256)).is_ok());
        assert!(EventType::parse("t", "push\n").is_err());
        let e = EventType::parse("the event type", "").unwrap_err().to_string();
        assert!(e.starts_with("the event type must hold 1 to 256 bytes"), "{e}");
    }

    #[test]
    fn a_key_comes_from_where_the_source_says() {
        let body = br#"{"id": 42, "type": "order.paid", "nested": {"x": [1]}}"#;
        let h = headers(&[("x-request-id", b" r-1 "), ("x-event", b"push")]);
        let key = |cfg: IdempotencyConfig| idempotency_key(&cfg, &h, body, None, &mut LazyJson::new(body));
        assert_eq!(key(IdempotencyConfig::Header { header: "X-Request-Id".into() }).unwrap().as_str(), "r-1");
        assert_eq!(key(IdempotencyConfig::JsonPointer { pointer: "/id".into() }).unwrap().as_str(), "42");
        assert_eq!(key(IdempotencyConfig::BodyHash).unwrap().as_str().len(), 64);
        assert_eq!(key(IdempotencyConfig::Cloudevents), Err(ExtractError::NotACloudEvent));
        let missing = key(IdempotencyConfig::Header { header: "X-Other".into() }).unwrap_err().to_string();
        assert!(missing.contains("X-Other header (idempotency key) is missing"), "{missing}");
        let object = key(IdempotencyConfig::JsonPointer { pointer: "/nested".into() }).unwrap_err().to_string();
        assert!(object.contains("must be a string or a number"), "{object}");
        let not_json = idempotency_key(
            &IdempotencyConfig::JsonPointer { pointer: "/id".into() },
            &h,
            b"not json",
            None,
            &mut LazyJson::new(b"not json"),
        );
        assert!(matches!(not_json, Err(ExtractError::NotJson(_))));
        let opaque = headers(&[("x-request-id", b"caf\xc3\xa9")]);
        let key = idempotency_key(
            &IdempotencyConfig::Header { header: "X-Request-Id".into() },
            &opaque,
            body,
            None,
            &mut LazyJson::new(body),
        );
        assert!(key.unwrap_err().to_string().contains("visible ASCII"));
    }

    #[test]
    fn a_type_is_optional_and_checked_when_present() {
        let body = br#"{"type": "order.paid"}"#;
        let h = headers(&[("x-event", b"push")]);
        let ty = |cfg: Option<EventTypeConfig>| event_type(cfg.as_ref(), &h, &mut LazyJson::new(body));
        assert_eq!(ty(None), Ok(None));
        assert_eq!(ty(Some(EventTypeConfig::Header { header: "X-Event".into() })).unwrap().unwrap().as_str(), "push");
        assert_eq!(ty(Some(EventTypeConfig::Header { header: "X-None".into() })), Ok(None));
        let pointer = Some(EventTypeConfig::JsonPointer { pointer: "/type".into() });
        assert_eq!(ty(pointer).unwrap().unwrap().as_str(), "order.paid");
    }

    mod properties {
        use super::super::*;
        use crate::source::Slug;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

            #[test]
            fn a_parsed_key_or_type_keeps_the_rule(text in "\\PC{0,300}|.{0,300}") {
                if let Ok(key) = IdempotencyKey::parse("k", text.clone()) {
                    prop_assert!(!key.as_str().is_empty() && key.as_str().len() <= MAX_KEY_LEN);
                    prop_assert!(!key.as_str().chars().any(char::is_control));
                    prop_assert_eq!(key.as_str(), text.as_str());
                }
                if let Ok(ty) = EventType::parse("t", text.clone()) {
                    prop_assert!(!ty.as_str().is_empty() && ty.as_str().len() <= MAX_TYPE_LEN);
                }
            }

            #[test]
            fn a_parsed_slug_keeps_the_rule(text in "[a-z0-9_-]{0,70}|.{0,10}") {
                if let Ok(slug) = Slug::parse(&text) {
                    prop_assert!((1..=64).contains(&slug.as_str().len()));
                    prop_assert!(slug.as_str().bytes().next().is_some_and(|b| b.is_ascii_alphanumeric()));
                }
            }
        }
    }
}
