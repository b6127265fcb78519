//! The web console, `/console`: a single-page app (plain HTML, CSS and JavaScript modules compiled into the binary)
//! over the admin API, with a login that turns an admin token into a session cookie.
//!
//! - `session.rs`: the signed, expiring session cookie and its CSRF token (no state shared between replicas).
//! - `assets/`: the pages, the style sheet and the scripts, served by [`asset`]; nothing is fetched from elsewhere.
//!
//! The console reads and acts only through `/admin/v1`, whose guard accepts the session cookie
//! ([`crate::http::admin::auth`]). Every answer under `/console` carries a Content-Security-Policy without
//! `unsafe-inline`, `X-Frame-Options: DENY`, `X-Content-Type-Options: nosniff` and `Referrer-Policy: no-referrer`.

pub mod session;

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};

use super::admin::{AdminError, AdminState};
use session::Session;

/// The policy every console answer carries: only this origin's scripts, styles, images and API; no framing.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                       connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
                       frame-ancestors 'none'";

/// The console's files: (name under `/console/assets/`, content type, contents).
const ASSETS: &[(&str, &str, &str)] = &[
    ("console.css", "text/css; charset=utf-8", include_str!("assets/console.css")),
    ("app.js", "text/javascript; charset=utf-8", include_str!("assets/app.js")),
    ("api.js", "text/javascript; charset=utf-8", include_str!("assets/api.js")),
    ("ui.js", "text/javascript; charset=utf-8", include_str!("assets/ui.js")),
    ("overview.js", "text/javascript; charset=utf-8", include_str!("assets/overview.js")),
    ("catalog.js", "text/javascript; charset=utf-8", include_str!("assets/catalog.js")),
    ("events.js", "text/javascript; charset=utf-8", include_str!("assets/events.js")),
    ("dead.js", "text/javascript; charset=utf-8", include_str!("assets/dead.js")),
    ("tail.js", "text/javascript; charset=utf-8", include_str!("assets/tail.js")),
    ("replay.js", "text/javascript; charset=utf-8", include_str!("assets/replay.js")),
    ("favicon.svg", "image/svg+xml", include_str!("assets/favicon.svg")),
];

const INDEX: &str = include_str!("assets/index.html");
const LOGIN: &str = include_str!("assets/login.html");
/// Where the login page shows why a login failed.
const LOGIN_ERROR_SLOT: &str = "<!--error-->";

/// Mounts `/console`. Its routes need `web::Data<AdminState>` (the admin tokens).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/console")
            .wrap(
                actix_web::middleware::DefaultHeaders::new()
                    .add((header::CONTENT_SECURITY_POLICY, CSP))
                    .add((header::X_FRAME_OPTIONS, "DENY"))
                    .add((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
                    .add((header::REFERRER_POLICY, "no-referrer"))
                    .add(("Cross-Origin-Opener-Policy", "same-origin")),
            )
            .route("", web::get().to(index))
            .route("/", web::get().to(index))
            .route("/login", web::get().to(login_page))
            .route("/login", web::post().to(login))
            .route("/logout", web::post().to(logout))
            .route("/session", web::get().to(session_info))
            .route("/assets/{name}", web::get().to(asset))
            .default_service(web::to(not_found)),
    );
}

/// The request's session, if its cookie verifies now.
fn session_of(req: &HttpRequest, state: &AdminState) -> Option<Session> {
    let cookie = session::cookie_of(req.headers())?;
    Session::verify(&state.tokens, &cookie, chrono::Utc::now().timestamp())
}

/// Whether the request came over HTTPS (directly or, per `X-Forwarded-Proto`/`Forwarded`, through a proxy).
fn over_tls(req: &HttpRequest) -> bool {
    req.connection_info().scheme().eq_ignore_ascii_case("https")
}

fn page(status: StatusCode, html: String) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header((header::CONTENT_TYPE, "text/html; charset=utf-8"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(html)
}

fn see_other(to: &'static str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, to))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish()
}

/// The app, for a valid session; the login page otherwise.
async fn index(req: HttpRequest, state: web::Data<AdminState>) -> HttpResponse {
    match session_of(&req, &state) {
        Some(_) => page(StatusCode::OK, INDEX.to_owned()),
        None => see_other("/console/login"),
    }
}

async fn login_page(req: HttpRequest, state: web::Data<AdminState>) -> HttpResponse {
    match session_of(&req, &state) {
        Some(_) => see_other("/console/"),
        None => page(StatusCode::OK, LOGIN.replace(LOGIN_ERROR_SLOT, "")),
    }
}

#[derive(Deserialize)]
struct LoginInput {
    token: String,
}

/// What `POST /console/login` (JSON) and `GET /console/session` answer.
#[derive(Serialize)]
struct SessionInfo {
    role: crate::config::AdminRole,
    /// RFC 3339.
    expires_at: String,
    csrf_token: String,
}

impl SessionInfo {
    fn of(s: &Session) -> Self {
        let expires_at = chrono::DateTime::from_timestamp(s.expires, 0).map(|t| t.to_rfc3339()).unwrap_or_default();
        Self { role: s.role, expires_at, csrf_token: s.csrf_token() }
    }
}

/// Refuses a cross-origin form post (a login forced from another site). Browsers say where a request comes from in
/// `Sec-Fetch-Site`; `Origin` is `null` on the console's own posts (its `Referrer-Policy` is `no-referrer`), so it
/// only counts when it names an origin.
fn same_origin(req: &HttpRequest) -> Result<(), AdminError> {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let refused = || Err(AdminError::BadRequest("this request comes from another origin".into()));
    if let Some(site) = header("sec-fetch-site") {
        if site != "same-origin" && site != "none" {
            return refused();
        }
    }
    match header("origin") {
        None | Some("null") => Ok(()),
        Some(origin) => {
            let host = origin.split_once("://").map(|(_, h)| h).unwrap_or("");
            if host.eq_ignore_ascii_case(req.connection_info().host()) {
                Ok(())
            } else {
                refused()
            }
        }
    }
}

fn is_json(req: &HttpRequest) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("application/json"))
}

/// `POST /console/login`: a form (`token=…`, answered with a redirect to the console or the login page again with
/// the reason) or JSON (`{"token": "…"}`, answered with the session's role, expiry and CSRF token, or a problem).
async fn login(req: HttpRequest, state: web::Data<AdminState>, body: web::Bytes) -> HttpResponse {
    let json = is_json(&req);
    if let Err(e) = same_origin(&req) {
        return actix_web::ResponseError::error_response(&e);
    }
    let input: Option<LoginInput> =
        if json { serde_json::from_slice(&body).ok() } else { serde_urlencoded::from_bytes(&body).ok() };
    let Some(input) = input else {
        let e = AdminError::BadRequest("the login takes a token: a form field `token` or JSON {\"token\": …}".into());
        return actix_web::ResponseError::error_response(&e);
    };
    let Some((role, key)) = state.tokens.session_of(input.token.trim().as_bytes()) else {
        return if json {
            actix_web::ResponseError::error_response(&AdminError::Unauthorized)
        } else {
            let reason = "<p class=\"error\" role=\"alert\" id=\"login-error\">That is not a valid admin token.</p>";
            page(StatusCode::UNAUTHORIZED, LOGIN.replace(LOGIN_ERROR_SLOT, reason))
        };
    };
    let s = Session::open(role, key, chrono::Utc::now().timestamp());
    let cookie = session::set_cookie(&s.cookie_value(), session::TTL_SECS, over_tls(&req));
    let mut resp = if json { HttpResponse::Ok() } else { HttpResponse::SeeOther() };
    resp.insert_header((header::SET_COOKIE, cookie)).insert_header((header::CACHE_CONTROL, "no-store"));
    if json {
        resp.json(SessionInfo::of(&s))
    } else {
        resp.insert_header((header::LOCATION, "/console/")).finish()
    }
}

/// `POST /console/logout`: clears the cookie (with the session's CSRF token in `X-CSRF-Token` or the form field
/// `csrf_token`, so another site cannot log an operator out), then sends the browser to the login page.
async fn logout(req: HttpRequest, state: web::Data<AdminState>, body: web::Bytes) -> HttpResponse {
    if let Some(s) = session_of(&req, &state) {
        #[derive(Deserialize)]
        struct Form {
            csrf_token: String,
        }
        let header = req.headers().get(session::CSRF_HEADER).map(|v| v.as_bytes().to_vec());
        let form = serde_urlencoded::from_bytes::<Form>(&body).ok().map(|f| f.csrf_token.into_bytes());
        if !header.or(form).is_some_and(|c| s.csrf_matches(&c)) {
            return actix_web::ResponseError::error_response(&AdminError::CsrfMissing);
        }
    }
    HttpResponse::SeeOther()
        .insert_header((header::SET_COOKIE, session::clear_cookie(over_tls(&req))))
        .insert_header((header::LOCATION, "/console/login"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish()
}

/// `GET /console/session`: the session's role, expiry and CSRF token (401 without a valid session). Only pages of
/// this origin can read it: no CORS header is ever sent.
async fn session_info(req: HttpRequest, state: web::Data<AdminState>) -> HttpResponse {
    match session_of(&req, &state) {
        Some(s) => HttpResponse::Ok().insert_header((header::CACHE_CONTROL, "no-store")).json(SessionInfo::of(&s)),
        None => actix_web::ResponseError::error_response(&AdminError::Unauthorized),
    }
}

/// The console's static files: public (the login page needs them), revalidated on every load.
async fn asset(name: web::Path<String>) -> HttpResponse {
    match ASSETS.iter().find(|(n, _, _)| *n == name.as_str()) {
        Some((_, content_type, body)) => HttpResponse::Ok()
            .insert_header((header::CONTENT_TYPE, HeaderValue::from_static(content_type)))
            .insert_header((header::CACHE_CONTROL, "no-cache"))
            .body(*body),
        None => not_found().await,
    }
}

async fn not_found() -> HttpResponse {
    HttpResponse::NotFound().insert_header((header::CONTENT_TYPE, "text/plain; charset=utf-8")).body("not found\n")
}
