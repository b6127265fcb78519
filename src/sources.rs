//! The server's side of sources: the configuration's declared sources as the store applies them, and actix-web's
//! request headers as core's verifier reads them. The snapshot the front end serves from is
//! `hookgate_actors::sources`.

use anyhow::Context;
use hookgate_core::source::SourceConfig;
use hookgate_core::verify::RequestHeaders;
use hookgate_store::sources::SourceSettings;

/// The declared sources as the store applies them ([`hookgate_store::apply_declared`]).
pub fn declared_rows(declared: &[SourceConfig]) -> anyhow::Result<Vec<SourceSettings<'_>>> {
    declared.iter().map(|s| SourceSettings::of(s).with_context(|| format!("source {:?}", s.slug))).collect()
}

/// actix-web's request headers as the verifier reads them.
pub struct Headers<'a>(pub &'a actix_web::http::header::HeaderMap);

impl RequestHeaders for Headers<'_> {
    fn values<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a [u8]> {
        self.0.get_all(name).map(|v| v.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};

    #[test]
    fn actix_headers_reach_the_verifier_as_received() {
        let mut h = HeaderMap::new();
        let name = HeaderName::from_static("x-sig");
        h.append(name.clone(), HeaderValue::from_static("a"));
        h.append(name, HeaderValue::from_bytes(b"b\xff").unwrap());
        let headers = Headers(&h);
        let values: Vec<&[u8]> = headers.values("x-sig").collect();
        assert_eq!(values, [&b"a"[..], &b"b\xff"[..]]);
        assert_eq!(headers.values("x-other").count(), 0);
    }
}
