//! Bearer tokens with a role, compared in constant time, checked for the whole `/admin/v1` scope.
//!
//! The role a request needs follows from its method: `GET`/`HEAD` read, everything else writes. So a route added to
//! the table cannot be left unguarded or given the wrong role by mistake. With no token configured the API is closed.

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

/// The configured tokens, kept as SHA-256 digests: comparing digests in constant time leaks neither the contents
/// nor the lengths of the tokens.
pub struct Tokens(Vec<([u8; 32], AdminRole)>);

impl Tokens {
    pub fn new(tokens: &[AdminToken]) -> Self {
        Self(tokens.iter().map(|t| (digest(t.token.expose_secret().as_bytes()), t.role)).collect())
    }

    /// The role of `presented`, if it is a configured token. Every configured token is compared.
    pub fn role_of(&self, presented: &[u8]) -> Option<AdminRole> {
        let d = digest(presented);
        let mut found = None;
        for (known, role) in &self.0 {
            if bool::from(known.ct_eq(&d)) {
                found = Some(*role);
            }
        }
        found
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The role a request needs.
pub fn required_role(method: &Method) -> AdminRole {
    if method == Method::GET || method == Method::HEAD {
        AdminRole::Read
    } else {
        AdminRole::Write
    }
}

/// Decides a request: `Ok` to go on, or the 401/403 to answer.
pub fn authorize(tokens: &Tokens, method: &Method, authorization: Option<&[u8]>) -> Result<(), AdminError> {
    let presented = authorization
        .and_then(|v| v.strip_prefix(b"Bearer ").or_else(|| v.strip_prefix(b"bearer ")))
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
        .ok_or(AdminError::Unauthorized)?;
    let role = tokens.role_of(presented).ok_or(AdminError::Unauthorized)?;
    match (required_role(method), role) {
        (AdminRole::Write, AdminRole::Read) => Err(AdminError::Forbidden),
        _ => Ok(()),
    }
}

/// The scope-wide middleware.
pub async fn guard(req: ServiceRequest, next: Next<BoxBody>) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let decision = match req.app_data::<web::Data<AdminState>>() {
        Some(state) => {
            authorize(&state.tokens, req.method(), req.headers().get(header::AUTHORIZATION).map(|v| v.as_bytes()))
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
        assert!(authorize(&t, &Method::GET, read).is_ok());
        assert!(matches!(authorize(&t, &Method::POST, read), Err(AdminError::Forbidden)));
        assert!(matches!(authorize(&t, &Method::DELETE, read), Err(AdminError::Forbidden)));
        assert!(authorize(&t, &Method::PUT, write).is_ok());
        assert!(authorize(&t, &Method::GET, write).is_ok());
        for bad in [None, Some(&b"Bearer nope"[..]), Some(b"read-token-0123456789"), Some(b"Bearer "), Some(b"Basic x")]
        {
            assert!(matches!(authorize(&t, &Method::GET, bad), Err(AdminError::Unauthorized)), "{bad:?}");
        }
    }

    #[test]
    fn with_no_token_configured_everything_is_refused() {
        let t = Tokens::new(&[]);
        assert!(matches!(authorize(&t, &Method::GET, Some(b"Bearer anything")), Err(AdminError::Unauthorized)));
    }
}
