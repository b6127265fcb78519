//! The CloudEvents 1.0 HTTP binding: binary mode (`ce-*` headers, the body is the data), structured mode
//! (`application/cloudevents+json`, the body is the event) and batch mode (`application/cloudevents-batch+json`, a
//! JSON array of structured events). The decoders are public so that the fuzz targets call exactly what ingest calls.

use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::verify::{visible_ascii, RequestHeaders};

/// Longest accepted `id` or `source`, in bytes. The `type` is an event type like any other: at most
/// [`MAX_TYPE_LEN`](crate::event::MAX_TYPE_LEN) (256) bytes.
pub const MAX_ATTRIBUTE_LEN: usize = 1024;
/// Longest idempotency key built from `source` and `id` before it is hashed.
const MAX_KEY_LEN: usize = 256;

/// How a request carries its event(s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Binary,
    Structured,
    Batch,
}

/// The required context attributes of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes {
    pub id: String,
    pub source: String,
    pub event_type: String,
}

impl Attributes {
    /// The idempotency key: `source` and `id` together, unambiguously (`<len(source)>:<source><id>`); a key that would
    /// pass 256 bytes is `ce-sha256:<hex>` of that text instead.
    pub fn idempotency_key(&self) -> String {
        let key = format!("{}:{}{}", self.source.len(), self.source, self.id);
        if key.len() <= MAX_KEY_LEN {
            key
        } else {
            format!("ce-sha256:{}", hex::encode(Sha256::digest(key.as_bytes())))
        }
    }
}

/// Why a request is not a valid CloudEvent. The message names the attribute and is safe to return.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloudEventError {
    #[error("this source accepts CloudEvents only: send ce-* headers (binary mode) or Content-Type application/cloudevents+json or application/cloudevents-batch+json")]
    NotACloudEvent,
    #[error("{prefix}the required attribute {name} is missing")]
    Missing { prefix: String, name: &'static str },
    #[error("{prefix}the attribute {name} is invalid: {why}")]
    Invalid { prefix: String, name: &'static str, why: &'static str },
    #[error("{0}")]
    Malformed(String),
    #[error("the batch holds {0} events, more than the {1} accepted")]
    TooMany(usize, usize),
}

/// The mode of a request, from its `Content-Type` and `ce-specversion`; `None` when it is no CloudEvent.
pub fn mode(headers: &impl RequestHeaders) -> Option<Mode> {
    let essence = headers
        .values("content-type")
        .next()
        .and_then(visible_ascii)
        .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase());
    match essence.as_deref() {
        Some("application/cloudevents+json") => Some(Mode::Structured),
        Some("application/cloudevents-batch+json") => Some(Mode::Batch),
        _ if headers.values("ce-specversion").next().is_some() => Some(Mode::Binary),
        _ => None,
    }
}

fn check(prefix: &str, name: &'static str, value: Option<&str>) -> Result<String, CloudEventError> {
    let value = value.ok_or_else(|| CloudEventError::Missing { prefix: prefix.into(), name })?;
    let invalid = |why| CloudEventError::Invalid { prefix: prefix.into(), name, why };
    if value.is_empty() {
        return Err(invalid("it is empty"));
    }
    if name == "type" && value.len() > crate::event::MAX_TYPE_LEN {
        return Err(invalid("it is longer than 256 bytes"));
    }
    if value.len() > MAX_ATTRIBUTE_LEN {
        return Err(invalid("it is longer than 1024 bytes"));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid("it contains control characters"));
    }
    Ok(value.to_owned())
}

fn check_specversion(prefix: &str, value: Option<&str>) -> Result<(), CloudEventError> {
    let v = check(prefix, "specversion", value)?;
    if v != "1.0" {
        return Err(CloudEventError::Invalid {
            prefix: prefix.into(),
            name: "specversion",
            why: "only 1.0 is supported",
        });
    }
    Ok(())
}

/// Reads the attributes of a binary-mode event from its `ce-*` headers (each must appear once).
pub fn decode_binary(headers: &impl RequestHeaders) -> Result<Attributes, CloudEventError> {
    let get = |name: &'static str| -> Result<Option<&str>, CloudEventError> {
        let mut values = headers.values(name);
        let Some(v) = values.next() else { return Ok(None) };
        let attr = name.trim_start_matches("ce-");
        let invalid = |why| CloudEventError::Invalid { prefix: String::new(), name: attr_name(attr), why };
        if values.next().is_some() {
            return Err(invalid("the header appears more than once"));
        }
        visible_ascii(v).map(Some).ok_or_else(|| invalid("the header is not visible ASCII (percent-encode it)"))
    };
    check_specversion("", get("ce-specversion")?)?;
    Ok(Attributes {
        id: check("", "id", get("ce-id")?)?,
        source: check("", "source", get("ce-source")?)?,
        event_type: check("", "type", get("ce-type")?)?,
    })
}

fn attr_name(attr: &str) -> &'static str {
    match attr {
        "specversion" => "specversion",
        "id" => "id",
        "source" => "source",
        _ => "type",
    }
}

fn from_object(prefix: &str, value: &serde_json::Value) -> Result<Attributes, CloudEventError> {
    let obj = value
        .as_object()
        .ok_or_else(|| CloudEventError::Malformed(format!("{prefix}the event is not a JSON object")))?;
    let get = |name: &'static str| -> Result<Option<&str>, CloudEventError> {
        match obj.get(name) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(CloudEventError::Invalid { prefix: prefix.into(), name, why: "it is not a string" }),
        }
    };
    check_specversion(prefix, get("specversion")?)?;
    Ok(Attributes {
        id: check(prefix, "id", get("id")?)?,
        source: check(prefix, "source", get("source")?)?,
        event_type: check(prefix, "type", get("type")?)?,
    })
}

/// Decodes a structured-mode body (one JSON object).
pub fn decode_structured(body: &[u8]) -> Result<Attributes, CloudEventError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| CloudEventError::Malformed(format!("the body is not a JSON CloudEvent: {e}")))?;
    from_object("", &value)
}

/// Decodes a batch-mode body (a JSON array of structured events) into each event's attributes and exact bytes.
/// At most `max` events; an empty batch is valid.
pub fn decode_batch(body: &[u8], max: usize) -> Result<Vec<(Attributes, Box<RawValue>)>, CloudEventError> {
    let items: Vec<Box<RawValue>> = serde_json::from_slice(body)
        .map_err(|e| CloudEventError::Malformed(format!("the body is not a JSON array of CloudEvents: {e}")))?;
    if items.len() > max {
        return Err(CloudEventError::TooMany(items.len(), max));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, raw)| {
            let prefix = format!("event {i}: ");
            let value: serde_json::Value = serde_json::from_str(raw.get())
                .map_err(|e| CloudEventError::Malformed(format!("{prefix}not JSON: {e}")))?;
            Ok((from_object(&prefix, &value)?, raw))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderName, HeaderValue};

    #[test]
    fn structured_events_name_the_missing_or_invalid_attribute() {
        let ok = br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{}}"#;
        assert_eq!(decode_structured(ok).unwrap().event_type, "t");
        for (body, needle) in [
            (&br#"{"id":"1","source":"/s","type":"t"}"#[..], "specversion is missing"),
            (br#"{"specversion":"0.3","id":"1","source":"/s","type":"t"}"#, "specversion is invalid"),
            (br#"{"specversion":"1.0","source":"/s","type":"t"}"#, "id is missing"),
            (br#"{"specversion":"1.0","id":"","source":"/s","type":"t"}"#, "id is invalid"),
            (br#"{"specversion":"1.0","id":"1","type":"t"}"#, "source is missing"),
            (br#"{"specversion":"1.0","id":"1","source":"/s","type":7}"#, "type is invalid"),
            (
                format!(r#"{{"specversion":"1.0","id":"1","source":"/s","type":"{}"}}"#, "t".repeat(257)).as_bytes(),
                "longer than 256",
            ),
            (br#"[]"#, "not a JSON object"),
        ] {
            let e = decode_structured(body).unwrap_err().to_string();
            assert!(e.contains(needle), "{e} should contain {needle}");
        }
    }

    #[test]
    fn batches_keep_each_events_bytes_and_name_the_bad_one() {
        let body = br#"[ {"specversion":"1.0","id":"1","source":"/s","type":"t"} , {"specversion":"1.0","id":"2","source":"/s","type":"u", "x" : 1} ]"#;
        let events = decode_batch(body, 10).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[1].1.get(), r#"{"specversion":"1.0","id":"2","source":"/s","type":"u", "x" : 1}"#);
        let bad = br#"[{"specversion":"1.0","id":"1","source":"/s","type":"t"},{"specversion":"1.0","id":"2","source":"/s"}]"#;
        assert_eq!(decode_batch(bad, 10).unwrap_err().to_string(), "event 1: the required attribute type is missing");
        assert!(matches!(decode_batch(body, 1), Err(CloudEventError::TooMany(2, 1))));
    }

    #[test]
    fn binary_mode_reads_ce_headers() {
        let mut h = HeaderMap::new();
        for (k, v) in [("ce-specversion", "1.0"), ("ce-id", "a"), ("ce-source", "/x"), ("ce-type", "t")] {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        assert_eq!(mode(&h), Some(Mode::Binary));
        assert_eq!(decode_binary(&h).unwrap().idempotency_key(), "2:/xa");
        h.remove("ce-source");
        assert_eq!(decode_binary(&h).unwrap_err().to_string(), "the required attribute source is missing");
    }

    #[test]
    fn long_keys_are_hashed() {
        let a = Attributes { id: "i".repeat(300), source: "/s".into(), event_type: "t".into() };
        assert!(a.idempotency_key().starts_with("ce-sha256:"));
        assert_eq!(a.idempotency_key().len(), 10 + 64);
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

            #[test]
            fn decoders_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..400)) {
                let _ = decode_structured(&raw);
                let _ = decode_batch(&raw, 100);
            }

            #[test]
            fn json_shaped_events_never_panic(
                spec in proptest::option::of("(1\\.0|0\\.3|)"),
                id in proptest::option::of("\\PC{0,20}"),
                source in proptest::option::of(".{0,20}"),
                ty in proptest::option::of(any::<i64>()),
            ) {
                let mut obj = serde_json::Map::new();
                if let Some(s) = spec { obj.insert("specversion".into(), s.into()); }
                if let Some(s) = id { obj.insert("id".into(), s.into()); }
                if let Some(s) = source { obj.insert("source".into(), s.into()); }
                if let Some(t) = ty { obj.insert("type".into(), t.into()); }
                let one = serde_json::to_vec(&obj).unwrap();
                let _ = decode_structured(&one);
                let _ = decode_batch(&serde_json::to_vec(&vec![obj]).unwrap(), 10);
            }
        }
    }
}
