//! The CloudEvents decoders: structured and batch bodies, and binary mode from `name: value` header lines.
#![no_main]
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = hookgate_core::cloudevents::decode_structured(data);
    let _ = hookgate_core::cloudevents::decode_batch(data, 1000);
    let mut headers = HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else { continue };
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(&line[..colon]), HeaderValue::from_bytes(&line[colon + 1..]))
        else {
            continue;
        };
        headers.append(name, value);
    }
    let _ = hookgate_core::cloudevents::mode(&headers);
    let _ = hookgate_core::cloudevents::decode_binary(&headers);
});
