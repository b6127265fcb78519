//! `Authorization: Basic …` and `Authorization: Bearer …` parsers.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = hookgate_core::verify::parse_basic_authorization(s);
        let _ = hookgate_core::verify::parse_bearer_authorization(s);
    }
});
