//! Bearer tokens with a role, compared in constant time, checked for the whole `/admin/v1` scope.
//!
//! The role a request needs follows from its method: `GET`/`HEAD` read, everything else writes. So a route added to
//! the table cannot be left unguarded or given the wrong role by mistake. With no token configured the API is closed.
//!
//! A request without an `Authorization` header may instead carry the console's session cookie
//! ([`crate::http::console::session`]): same roles, and every write so authenticated must also carry the session's
//! CSRF token in `X-CSRF-Token`. A request with an `Authorization` header is decided by it alone.

use actix_web::body::BoxBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method};
use actix_web::middleware::Next;
use actix_web::{web, ResponseError};
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{AdminError, AdminState};
use crate::config::{AdminRole, AdminToken};
use crate::http::console::session::{self, SessionKey};

/// One configured token: its SHA-256 digest (comparing digests in constant time leaks neither the contents nor the
/// lengths of the tokens), its role, and the console's session key derived from it.
struct Known {
    digest: [u8; 32],
    role: AdminRole,
    session: SessionKey,
}

/// The configured tokens.
pub struct Tokens(Vec<Known>);

impl Tokens {
    pub fn new(tokens: &[AdminToken]) -> Self {
        Self(
            tokens
                .iter()
                .map(|t| {
                    let secret = t.token.expose_secret().as_bytes();
                    Known { digest: digest(secret), role: t.role, session: SessionKey::derive(secret) }
                })
                .collect(),
        )
    }

    /// The role of `presented`, if it is a configured token. Every configured token is compared.
    pub fn role_of(&self, presented: &[u8]) -> Option<AdminRole> {
        self.known(presented).map(|k| k.role)
    }

    fn known(&self, presented: &[u8]) -> Option<&Known> {
        let d = digest(presented);
        let mut found = None;
        for known in &self.0 {
            if bool::from(known.digest.ct_eq(&d)) {
                found = Some(known);
            }
        }
        found
    }

    /// The role and session key of `presented`, if it is a configured token (a console login).
    pub fn session_of(&self, presented: &[u8]) -> Option<(AdminRole, &SessionKey)> {
        self.known(presented).map(|k| (k.role, &k.session))
    }

    /// The role and session key of the token whose public id a session cookie names.
    pub fn by_session_id(&self, id: &[u8; session::ID_LEN]) -> Option<(AdminRole, &SessionKey)> {
        let mut found = None;
        for known in &self.0 {
            if bool::from(known.session.id().ct_eq(id)) {
                found = Some((known.role, &known.session));
            }
        }
        found
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// POSTs (paths under `/admin/v1`) that change nothing, so a `read` token may make them: they only evaluate.
pub const READ_ONLY_POSTS: &[&str] = &["/routes/test"];

/// The role a request needs (`path` is under `/admin/v1`).
pub fn required_role(method: &Method, path: &str) -> AdminRole {
    if method == Method::GET || method == Method::HEAD || (method == Method::POST && READ_ONLY_POSTS.contains(&path)) {
        AdminRole::Read
    } else {
        AdminRole::Write
    }
}

/// Decides a request: `Ok` to go on, or the 401/403 to answer.
pub fn authorize(tokens: &Tokens, method: &Method, path: &str, authorization: Option<&[u8]>) -> Result<(), AdminError> {
    let presented = authorization
        .and_then(|v| v.strip_prefix(b"Bearer ").or_else(|| v.strip_prefix(b"bearer ")))
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
        .ok_or(AdminError::Unauthorized)?;
    let role = tokens.role_of(presented).ok_or(AdminError::Unauthorized)?;
    match (required_role(method, path), role) {
        (AdminRole::Write, AdminRole::Read) => Err(AdminError::Forbidden),
        _ => Ok(()),
    }
}

/// Decides a request that carries the console's session cookie and no `Authorization` header: the session's role
/// as for a token, and anything but GET/HEAD (a read-only POST too) must also carry the session's CSRF token.
pub fn authorize_session(
    tokens: &Tokens,
    method: &Method,
    path: &str,
    cookie: &str,
    csrf: Option<&[u8]>,
    now: i64,
) -> Result<(), AdminError> {
    let session = session::Session::verify(tokens, cookie, now).ok_or(AdminError::Unauthorized)?;
    if method != Method::GET && method != Method::HEAD && !csrf.is_some_and(|c| session.csrf_matches(c)) {
        return Err(AdminError::CsrfMissing);
    }
    if required_role(method, path) == AdminRole::Write && session.role == AdminRole::Read {
        return Err(AdminError::Forbidden);
    }
    Ok(())
}

/// The scope-wide middleware.
pub async fn guard(req: ServiceRequest, next: Next<BoxBody>) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let decision = match req.app_data::<web::Data<AdminState>>() {
        Some(state) => {
            let authorization = req.headers().get(header::AUTHORIZATION).map(|v| v.as_bytes());
            let path = req.path().strip_prefix("/admin/v1").unwrap_or(req.path());
            match (authorization, session::cookie_of(req.headers())) {
                (None, Some(cookie)) => authorize_session(
                    &state.tokens,
                    req.method(),
                    path,
                    &cookie,
                    req.headers().get(session::CSRF_HEADER).map(|v| v.as_bytes()),
                    chrono::Utc::now().timestamp(),
                ),
                _ => authorize(&state.tokens, req.method(), path, authorization),
            }
        }
        None => Err(AdminError::Unauthorized),
    };
    match decision {
        Ok(()) => next.call(req).await,
        Err(e) => Ok(req.into_response(e.error_response())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    fn tokens() -> Tokens {
        Tokens::new(&[
            AdminToken { token: SecretString::from("read-token-0123456789"), role: AdminRole::Read },
            AdminToken { token: SecretString::from("write-token-0123456789"), role: AdminRole::Write },
        ])
    }

    #[test]
    fn roles_follow_the_method_and_the_token() {
        let t = tokens();
        let read = Some(&b"Bearer read-token-0123456789"[..]);
        let write = Some(&b"Bearer write-token-0123456789"[..]);
        assert!(authorize(&t, &Method::GET, "/events", read).is_ok());
        assert!(matches!(authorize(&t, &Method::POST, "/sources", read), Err(AdminError::Forbidden)));
        assert!(matches!(authorize(&t, &Method::DELETE, "/routes/test", read), Err(AdminError::Forbidden)));
        assert!(authorize(&t, &Method::PUT, "/sources/x", write).is_ok());
        assert!(authorize(&t, &Method::GET, "/events", write).is_ok());
        // A POST that only evaluates is a read.
        assert!(authorize(&t, &Method::POST, "/routes/test", read).is_ok());
        for bad in [None, Some(&b"Bearer nope"[..]), Some(b"read-token-0123456789"), Some(b"Bearer "), Some(b"Basic x")]
        {
            assert!(matches!(authorize(&t, &Method::GET, "/events", bad), Err(AdminError::Unauthorized)), "{bad:?}");
        }
    }

    #[test]
    fn with_no_token_configured_everything_is_refused() {
        let t = Tokens::new(&[]);
        assert!(matches!(
            authorize(&t, &Method::GET, "/events", Some(b"Bearer anything")),
            Err(AdminError::Unauthorized)
        ));
    }
}
