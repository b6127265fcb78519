//! The console's session cookie and its CSRF token, valid on every replica with no shared state.
//!
//! A session is `v1.<role>.<expires>.<token id>.<nonce>.<mac>`: the role (`r` or `w`), the expiry in Unix seconds,
//! the public id of the admin token it was opened with, 16 random bytes, and an HMAC-SHA256 of all that under a key
//! derived from that token. Every replica configured with the token derives the same key, so it can check the
//! cookie; a token removed from the configuration leaves its sessions without a key, so they end there. The role is
//! the token's role at login and must still be its role: a token demoted to `read` ends its `write` sessions.
//!
//! The CSRF token is another HMAC under the same key, of the whole session: the page reads it from
//! `GET /console/session` (same origin only) and sends it in `X-CSRF-Token` with every write.

use actix_web::http::header::HeaderMap;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::config::AdminRole;
use crate::http::admin::auth::Tokens;

/// The cookie's name.
pub const COOKIE: &str = "hookgate_session";
/// The header a write authenticated by the cookie must carry.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a session lasts (8 hours).
pub const TTL_SECS: i64 = 8 * 3600;
/// Length of a token's public id in a cookie.
pub const ID_LEN: usize = 9;

type HmacSha256 = Hmac<Sha256>;

/// What the console derives from one admin token: the key that signs its sessions and the id that names it.
pub struct SessionKey {
    key: [u8; 32],
    id: [u8; ID_LEN],
}

impl SessionKey {
    /// Derives the key and the id from the token (HMAC-SHA256 keyed by the token, one label each): neither reveals
    /// the token, and they differ from the digest the bearer check uses.
    pub fn derive(token: &[u8]) -> Self {
        let key: [u8; 32] = mac(token, &[b"hookgate console session key v1"]);
        let full: [u8; 32] = mac(token, &[b"hookgate console token id v1"]);
        let mut id = [0u8; ID_LEN];
        id.copy_from_slice(&full[..ID_LEN]);
        Self { key, id }
    }

    pub fn id(&self) -> &[u8; ID_LEN] {
        &self.id
    }
}

fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes a key of any length");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// A verified (or just opened) session.
pub struct Session {
    pub role: AdminRole,
    /// Unix seconds.
    pub expires: i64,
    /// The signed part of the cookie (all but the MAC).
    payload: String,
    key: [u8; 32],
}

impl Session {
    /// Opens a session for a token with this role and key, expiring `TTL_SECS` after `now`.
    pub fn open(role: AdminRole, key: &SessionKey, now: i64) -> Self {
        let nonce = uuid::Uuid::new_v4();
        let r = if role == AdminRole::Write { "w" } else { "r" };
        let expires = now + TTL_SECS;
        let payload = format!("v1.{r}.{expires}.{}.{}", B64.encode(key.id), B64.encode(nonce.as_bytes()));
        Self { role, expires, payload, key: key.key }
    }

    /// The cookie's value.
    pub fn cookie_value(&self) -> String {
        format!("{}.{}", self.payload, B64.encode(mac(&self.key, &[self.payload.as_bytes()])))
    }

    /// The session's CSRF token.
    pub fn csrf_token(&self) -> String {
        B64.encode(mac(&self.key, &[b"csrf.", self.payload.as_bytes()]))
    }

    /// Whether `presented` is this session's CSRF token (constant time).
    pub fn csrf_matches(&self, presented: &[u8]) -> bool {
        bool::from(self.csrf_token().as_bytes().ct_eq(presented.trim_ascii()))
    }

    /// The session a cookie value stands for, if its MAC checks under a configured token's key, it has not expired
    /// at `now`, and its role is still that token's role.
    pub fn verify(tokens: &Tokens, value: &str, now: i64) -> Option<Self> {
        let (payload, tag) = value.rsplit_once('.')?;
        let mut parts = payload.split('.');
        let (version, role, expires, id, nonce) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version != "v1" || parts.next().is_some() {
            return None;
        }
        let id: [u8; ID_LEN] = B64.decode(id).ok()?.try_into().ok()?;
        let (configured, key) = tokens.by_session_id(&id)?;
        let tag = B64.decode(tag).ok()?;
        let expected = mac(&key.key, &[payload.as_bytes()]);
        if !bool::from(expected.as_slice().ct_eq(&tag)) {
            return None;
        }
        let role = match role {
            "w" => AdminRole::Write,
            "r" => AdminRole::Read,
            _ => return None,
        };
        let expires: i64 = expires.parse().ok()?;
        if expires <= now || role != configured || B64.decode(nonce).ok()?.len() != 16 {
            return None;
        }
        Some(Self { role, expires, payload: payload.to_owned(), key: key.key })
    }
}

/// The session cookie's value in a request's `Cookie` headers, if there is one.
pub fn cookie_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(actix_web::http::header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim_matches('"').to_owned())
        .filter(|v| !v.is_empty())
}

/// The `Set-Cookie` value that stores a session: HttpOnly, SameSite=Strict, `Secure` over HTTPS, for the whole
/// host (the admin API under `/admin/v1` needs it as much as the console's pages).
pub fn set_cookie(value: &str, max_age: i64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}")
}

/// The `Set-Cookie` value that removes the session cookie.
pub fn clear_cookie(secure: bool) -> String {
    set_cookie("", 0, secure)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AdminToken;
    use secrecy::SecretString;

    fn tokens(list: &[(&str, AdminRole)]) -> Tokens {
        let list: Vec<AdminToken> =
            list.iter().map(|(t, role)| AdminToken { token: SecretString::from(*t), role: *role }).collect();
        Tokens::new(&list)
    }

    #[test]
    fn a_session_verifies_until_it_expires_and_only_with_its_token_configured() {
        let t = tokens(&[("write-token-0123456789", AdminRole::Write), ("read-token-0123456789", AdminRole::Read)]);
        let (role, key) = t.session_of(b"write-token-0123456789").unwrap();
        let s = Session::open(role, key, 1_000);
        let cookie = s.cookie_value();
        let v = Session::verify(&t, &cookie, 1_001).expect("verifies");
        assert_eq!(v.role, AdminRole::Write);
        assert_eq!(v.csrf_token(), s.csrf_token());
        assert!(v.csrf_matches(s.csrf_token().as_bytes()));
        assert!(!v.csrf_matches(b""));
        assert!(Session::verify(&t, &cookie, 1_000 + TTL_SECS).is_none(), "expired");
        // Another replica with the same tokens accepts it; one without this token does not.
        let same = tokens(&[("read-token-0123456789", AdminRole::Read), ("write-token-0123456789", AdminRole::Write)]);
        assert!(Session::verify(&same, &cookie, 1_001).is_some());
        assert!(Session::verify(&tokens(&[("read-token-0123456789", AdminRole::Read)]), &cookie, 1_001).is_none());
        // The token demoted to read: its write sessions end.
        assert!(Session::verify(&tokens(&[("write-token-0123456789", AdminRole::Read)]), &cookie, 1_001).is_none());
    }

    #[test]
    fn a_changed_cookie_does_not_verify() {
        let t = tokens(&[("read-token-0123456789", AdminRole::Read)]);
        let (role, key) = t.session_of(b"read-token-0123456789").unwrap();
        let cookie = Session::open(role, key, 1_000).cookie_value();
        let forged_role = cookie.replacen("v1.r.", "v1.w.", 1);
        let later = {
            let exp = 1_000 + TTL_SECS;
            cookie.replacen(&format!(".{exp}."), &format!(".{}.", exp + 1_000_000), 1)
        };
        for bad in [forged_role, later, format!("{cookie}x"), cookie.replace("v1.", "v2."), String::new(), "...".into()]
        {
            assert!(Session::verify(&t, &bad, 1_001).is_none(), "{bad}");
        }
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(actix_web::http::header::COOKIE, "a=1; hookgate_session=abc.def; b=2".parse().unwrap());
        assert_eq!(cookie_of(&h).as_deref(), Some("abc.def"));
        assert!(set_cookie("v", 60, true).ends_with("HttpOnly; SameSite=Strict; Secure"));
        assert!(clear_cookie(false).contains("Max-Age=0"));
    }
}
