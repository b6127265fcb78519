//! Generic HMAC signature header parser (prefix + hex or base64).
#![no_main]
use hookgate_core::source::SignatureEncoding;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        for prefix in [None, Some("sha256="), Some("v1=")] {
            let _ = hookgate_core::verify::parse_hmac_signature(s, prefix, SignatureEncoding::Hex);
            let _ = hookgate_core::verify::parse_hmac_signature(s, prefix, SignatureEncoding::Base64);
        }
    }
});
