//! The web console over plain HTTP: login and its cookie, redirects without a session, the admin API through the
//! cookie (CSRF on writes, roles), logout, the security headers and the assets.

use serde_json::{json, Value};

use crate::admin::{with_tokens, READ, WRITE};
use crate::helpers::{answer, spawn_app_with, Answer, TestApp};

/// A client that shows redirects instead of following them.
fn client() -> awc::Client {
    awc::Client::builder().disable_redirects().timeout(std::time::Duration::from_secs(30)).finish()
}

/// What a console answer is reduced to.
struct Reply {
    status: u16,
    headers: awc::http::header::HeaderMap,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    fn set_cookie(&self) -> &str {
        self.header("set-cookie")
    }

    /// The session cookie's value from `Set-Cookie`.
    fn session_cookie(&self) -> String {
        let sc = self.set_cookie();
        let v = sc.strip_prefix("hookgate_session=").unwrap_or_else(|| panic!("no session cookie: {sc:?}"));
        v.split(';').next().unwrap().to_owned()
    }
}

async fn reply(
    mut resp: awc::ClientResponse<impl futures::Stream<Item = Result<bytes::Bytes, awc::error::PayloadError>> + Unpin>,
) -> Reply {
    let body = resp.body().limit(1 << 20).await.expect("body");
    Reply {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        body: String::from_utf8_lossy(&body).into(),
    }
}

impl TestApp {
    async fn console_get(&self, path: &str, cookie: Option<&str>) -> Reply {
        let mut req = client().get(self.url(path));
        if let Some(c) = cookie {
            req = req.insert_header(("Cookie", format!("hookgate_session={c}")));
        }
        reply(req.send().await.expect("GET")).await
    }

    async fn login_form(&self, token: &str, extra: &[(&str, &str)]) -> Reply {
        let mut req = client().post(self.url("/console/login"));
        for h in extra {
            req = req.insert_header(*h);
        }
        reply(req.send_form(&[("token", token)]).await.expect("login")).await
    }

    /// Logs in with `token` and returns (cookie, CSRF token).
    async fn console_session(&self, token: &str) -> (String, String) {
        let resp = client().post(self.url("/console/login")).send_json(&json!({ "token": token })).await.unwrap();
        let r = reply(resp).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let info: Value = serde_json::from_str(&r.body).unwrap();
        (r.session_cookie(), info["csrf_token"].as_str().unwrap().to_owned())
    }

    /// An admin API call authenticated by the session cookie, with or without a CSRF token.
    async fn admin_by_cookie(&self, method: &str, path: &str, cookie: &str, csrf: Option<&str>, body: Value) -> Answer {
        let method = awc::http::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = client()
            .request(method, self.url(&format!("/admin/v1{path}")))
            .insert_header(("Cookie", format!("hookgate_session={cookie}")));
        if let Some(c) = csrf {
            req = req.insert_header(("X-CSRF-Token", c));
        }
        answer(req.send_json(&body).await.expect("admin request")).await
    }
}

fn new_destination(slug: &str) -> Value {
    json!({ "slug": slug, "url": "http://127.0.0.1:9/hook" })
}

#[actix_rt::test]
async fn a_login_with_an_admin_token_sets_a_strict_http_only_cookie_and_a_bad_token_is_refused() {
    let app = spawn_app_with(with_tokens).await;

    let ok = app.login_form(WRITE, &[]).await;
    assert_eq!(ok.status, 303, "{}", ok.body);
    assert_eq!(ok.header("location"), "/console/");
    let sc = ok.set_cookie();
    for part in ["hookgate_session=", "Path=/", "HttpOnly", "SameSite=Strict", "Max-Age=28800"] {
        assert!(sc.contains(part), "{part} in {sc}");
    }
    assert!(!sc.contains("Secure"), "not over plain HTTP: {sc}");
    let behind_tls = app.login_form(WRITE, &[("X-Forwarded-Proto", "https")]).await;
    assert!(behind_tls.set_cookie().ends_with("; Secure"), "{}", behind_tls.set_cookie());

    let bad = app.login_form("not-a-configured-token-at-all", &[]).await;
    assert_eq!(bad.status, 401);
    assert!(bad.set_cookie().is_empty());
    assert!(bad.header("content-type").starts_with("text/html"));
    assert!(bad.body.contains("That is not a valid admin token."), "{}", bad.body);
    assert!(bad.body.contains("<label for=\"token\">"));

    let json_bad = client().post(app.url("/console/login")).send_json(&json!({ "token": "nope" })).await.unwrap();
    answer(json_bad).await.assert_problem(401, "unauthorized");
    let empty = client().post(app.url("/console/login")).send_json(&json!({ "nothing": 1 })).await.unwrap();
    answer(empty).await.assert_problem(400, "bad-request");
    let cross_site = app.login_form(WRITE, &[("Origin", "http://elsewhere.example")]).await;
    assert_eq!(cross_site.status, 400, "a login posted from another origin is refused");
    assert!(cross_site.set_cookie().is_empty());
    let fetched_cross_site = app.login_form(WRITE, &[("Sec-Fetch-Site", "cross-site"), ("Origin", "null")]).await;
    assert_eq!(fetched_cross_site.status, 400);
    let own_page = app.login_form(WRITE, &[("Sec-Fetch-Site", "same-origin"), ("Origin", "null")]).await;
    assert_eq!(own_page.status, 303, "the login page's own post (no-referrer: Origin null)");

    let json_ok = client().post(app.url("/console/login")).send_json(&json!({ "token": READ })).await.unwrap();
    let r = reply(json_ok).await;
    assert_eq!(r.status, 200);
    let info: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(info["role"], "read");
    assert!(info["csrf_token"].as_str().is_some_and(|t| t.len() >= 40), "{info}");
    assert!(info["expires_at"].as_str().is_some());
}

#[actix_rt::test]
async fn console_pages_without_a_valid_session_redirect_to_the_login_and_carry_the_security_headers() {
    let app = spawn_app_with(with_tokens).await;
    let (cookie, _) = app.console_session(READ).await;
    let forged = cookie.replacen("v1.r.", "v1.w.", 1);
    for path in ["/console", "/console/"] {
        for c in [None, Some("garbage"), Some(forged.as_str())] {
            let r = app.console_get(path, c).await;
            assert_eq!(r.status, 303, "{path} with {c:?}");
            assert_eq!(r.header("location"), "/console/login", "{path}");
        }
        let r = app.console_get(path, Some(&cookie)).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        assert!(r.header("content-type").starts_with("text/html"));
        assert!(r.body.contains("<script type=\"module\" src=\"/console/assets/app.js\"></script>"));
    }
    let login = app.console_get("/console/login", None).await;
    assert_eq!(login.status, 200);
    let already = app.console_get("/console/login", Some(&cookie)).await;
    assert_eq!((already.status, already.header("location")), (303, "/console/"));
    let session = app.console_get("/console/session", None).await;
    assert_eq!(session.status, 401);

    for r in [app.console_get("/console/", Some(&cookie)).await, login] {
        let csp = r.header("content-security-policy");
        assert!(csp.contains("default-src 'self'"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
        assert_eq!(r.header("x-frame-options"), "DENY");
        assert_eq!(r.header("x-content-type-options"), "nosniff");
        assert_eq!(r.header("referrer-policy"), "no-referrer");
        assert_eq!(r.header("cache-control"), "no-store");
        // No inline script or style for the policy to allow.
        assert!(!r.body.contains("style="), "no style attribute");
        assert!(!r.body.contains("<style"), "no style element");
        for script in r.body.match_indices("<script").map(|(i, _)| &r.body[i..]) {
            assert!(script.starts_with("<script type=\"module\" src=\"/console/"), "{script}");
        }
    }
}

#[actix_rt::test]
async fn writes_through_the_session_cookie_need_its_csrf_token_and_bearer_tokens_are_unchanged() {
    let app = spawn_app_with(with_tokens).await;
    let (cookie, csrf) = app.console_session(WRITE).await;

    let read = app.admin_by_cookie("GET", "/destinations", &cookie, None, json!(null)).await;
    assert_eq!(read.status, 200, "a read needs no CSRF token: {read:?}");

    let without = app.admin_by_cookie("POST", "/destinations", &cookie, None, new_destination("a")).await;
    without.assert_problem(403, "forbidden");
    assert!(without.json["detail"].as_str().unwrap().contains("X-CSRF-Token"), "{without:?}");
    let (other_cookie, other_csrf) = app.console_session(WRITE).await;
    assert_ne!(other_csrf, csrf, "every session has its own CSRF token");
    let wrong = app.admin_by_cookie("POST", "/destinations", &cookie, Some(&other_csrf), new_destination("a")).await;
    wrong.assert_problem(403, "forbidden");
    let with = app.admin_by_cookie("POST", "/destinations", &cookie, Some(&csrf), new_destination("a")).await;
    assert_eq!(with.status, 201, "{with:?}");
    let id = with.json["destination"]["id"].as_str().unwrap().to_owned();
    let paused = app
        .admin_by_cookie("POST", &format!("/destinations/{id}/pause"), &other_cookie, Some(&other_csrf), json!({}))
        .await;
    assert_eq!((paused.status, paused.json["state"].as_str()), (200, Some("paused")), "{paused:?}");

    // Bearer tokens need no CSRF token, and decide alone when both are sent.
    let bearer = app.admin("post", "/destinations", Some(WRITE), Some(new_destination("b"))).await;
    assert_eq!(bearer.status, 201, "{bearer:?}");
    let both = client()
        .post(app.url("/admin/v1/destinations"))
        .insert_header(("Cookie", format!("hookgate_session={cookie}")))
        .insert_header(("X-CSRF-Token", csrf.as_str()))
        .insert_header(("Authorization", "Bearer not-a-configured-token-at-all"))
        .send_json(&new_destination("c"))
        .await
        .unwrap();
    answer(both).await.assert_problem(401, "unauthorized");
    let forged = cookie.replacen("v1.w.", "v1.r.", 1);
    let a = app.admin_by_cookie("GET", "/destinations", &forged, None, json!(null)).await;
    a.assert_problem(401, "unauthorized");
}

#[actix_rt::test]
async fn a_read_tokens_session_reads_but_cannot_write() {
    let app = spawn_app_with(with_tokens).await;
    let (cookie, csrf) = app.console_session(READ).await;
    let list = app.admin_by_cookie("GET", "/events", &cookie, None, json!(null)).await;
    assert_eq!(list.status, 200, "{list:?}");
    let write = app.admin_by_cookie("POST", "/destinations", &cookie, Some(&csrf), new_destination("a")).await;
    write.assert_problem(403, "forbidden");
    assert_eq!(write.json["detail"], "this token may only read");
    let count: i64 = app.db.query_one("SELECT count(*) FROM destinations", &[]).await.unwrap().get(0);
    assert_eq!(count, 0);
}

#[actix_rt::test]
async fn logout_needs_the_csrf_token_and_clears_the_cookie() {
    let app = spawn_app_with(with_tokens).await;
    let (cookie, csrf) = app.console_session(WRITE).await;
    let forced = reply(
        client()
            .post(app.url("/console/logout"))
            .insert_header(("Cookie", format!("hookgate_session={cookie}")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(forced.status, 403, "a logout without the CSRF token (e.g. from another site) is refused");
    let out = reply(
        client()
            .post(app.url("/console/logout"))
            .insert_header(("Cookie", format!("hookgate_session={cookie}")))
            .insert_header(("X-CSRF-Token", csrf.as_str()))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((out.status, out.header("location")), (303, "/console/login"));
    let sc = out.set_cookie();
    assert!(sc.starts_with("hookgate_session=;") && sc.contains("Max-Age=0") && sc.contains("HttpOnly"), "{sc}");
    // The browser now holds the emptied cookie: the console sends it to the login page, the API refuses it.
    let cleared = out.session_cookie();
    assert_eq!(cleared, "");
    let page = app.console_get("/console/", Some(&cleared)).await;
    assert_eq!((page.status, page.header("location")), (303, "/console/login"));
    assert_eq!(app.console_get("/console/session", Some(&cleared)).await.status, 401);
    let api = app.admin_by_cookie("GET", "/destinations", &cleared, None, json!(null)).await;
    api.assert_problem(401, "unauthorized");
}

#[actix_rt::test]
async fn assets_are_served_with_their_content_types_and_load_nothing_from_elsewhere() {
    let app = spawn_app_with(with_tokens).await;
    let (cookie, _) = app.console_session(READ).await;
    let index = app.console_get("/console/", Some(&cookie)).await.body;
    let login = app.console_get("/console/login", None).await.body;
    let mut modules = vec!["app.js".to_owned()];
    let mut seen = std::collections::BTreeSet::new();
    while let Some(name) = modules.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        let r = app.console_get(&format!("/console/assets/{name}"), None).await;
        assert_eq!(r.status, 200, "{name}");
        assert_eq!(r.header("content-type"), "text/javascript; charset=utf-8", "{name}");
        assert_eq!(r.header("x-content-type-options"), "nosniff");
        assert!(!r.body.contains("innerHTML") && !r.body.contains("eval("), "{name} builds the DOM from text");
        // Every module it imports is served too.
        for line in r.body.lines().filter(|l| l.starts_with("import ")) {
            let from = line.rsplit_once("'./").map(|(_, f)| f.trim_end_matches("';")).expect(line);
            modules.push(from.to_owned());
        }
        let without_svg_namespace = r.body.replace("http://www.w3.org/2000/svg", "");
        assert!(!without_svg_namespace.contains("http://") && !without_svg_namespace.contains("https://"), "{name}");
    }
    assert!(seen.len() >= 8, "{seen:?}");
    for (name, ty) in [("console.css", "text/css; charset=utf-8"), ("favicon.svg", "image/svg+xml")] {
        let r = app.console_get(&format!("/console/assets/{name}"), None).await;
        assert_eq!((r.status, r.header("content-type")), (200, ty), "{name}");
    }
    for page in [&index, &login] {
        assert!(page.contains("href=\"/console/assets/console.css\""));
        assert!(!page.contains("http://") && !page.contains("https://"), "no third-party origin");
    }
    assert_eq!(app.console_get("/console/assets/nope.js", None).await.status, 404);
    assert_eq!(app.console_get("/console/assets/..%2Fmod.rs", None).await.status, 404);
}

#[actix_rt::test]
async fn with_an_admin_port_the_console_is_on_the_operators_listener_only() {
    let app = spawn_app_with(|s| {
        with_tokens(s);
        s.server.admin_port = Some(0);
    })
    .await;
    let admin = format!("http://127.0.0.1:{}", app.admin_port.unwrap());
    let on_admin = reply(client().get(format!("{admin}/console/login")).send().await.unwrap()).await;
    assert_eq!(on_admin.status, 200);
    assert_eq!(app.console_get("/console/login", None).await.status, 404);
}

#[actix_rt::test]
async fn the_live_tail_stream_accepts_a_session_cookie_and_refuses_a_request_without_one() {
    let app = spawn_app_with(with_tokens).await;
    let (cookie, _) = app.console_session(READ).await;
    let resp = client()
        .get(app.url("/admin/v1/events/stream"))
        .insert_header(("Cookie", format!("hookgate_session={cookie}")))
        .send()
        .await
        .expect("stream");
    assert_eq!(resp.status().as_u16(), 200);
    let kind = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    assert!(kind.starts_with("text/event-stream"), "{kind}");
    drop(resp);
    let bad = client()
        .get(app.url("/admin/v1/events/stream?filter=.body%20%7C%7C"))
        .insert_header(("Cookie", format!("hookgate_session={cookie}")))
        .send()
        .await
        .expect("stream");
    assert_eq!(answer(bad).await.status, 422);
    let none = client().get(app.url("/admin/v1/events/stream")).send().await.expect("stream");
    assert_eq!(answer(none).await.status, 401);
}
