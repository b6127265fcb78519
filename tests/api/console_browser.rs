//! The web console in a real browser: headless Chromium driven over WebDriver (Debian's `chromedriver`, installed by
//! `scripts/chromium.sh`, which `make test` runs) against a real hookgate on real PostgreSQL. Every wait is for a
//! condition in the page, with a deadline. Screenshots at 1280 and 390 pixels wide go to a temporary folder, or to `docs/console/` with
//! `HOOKGATE_UPDATE_SCREENSHOTS=1` (`make console-screenshots`).

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

use crate::admin::{with_tokens, READ, WRITE};
use crate::helpers::{eventually, spawn_app_with, TestApp};
use crate::receiver::{Receiver, Reply};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
const DEADLINE: Duration = Duration::from_secs(30);

/// A chromedriver process and one browser session in it; both ended on drop.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: awc::Client,
    _profile: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    names.iter().flat_map(|n| std::env::split_paths(&path).map(move |d| d.join(n))).find(|p| p.is_file())
}

impl Browser {
    async fn start() -> Self {
        let chromedriver = find_program(&["chromedriver"]).expect(
            "chromedriver is not installed: run scripts/chromium.sh (installs Debian's chromium and chromium-driver)",
        );
        let chromium = find_program(&["chromium", "chromium-browser", "google-chrome"]).expect("no chromium on PATH");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        // In a process group of its own: Chromium and its helpers, started by the driver, are stopped with it.
        let driver = Command::new(chromedriver)
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let http = awc::Client::builder().timeout(Duration::from_secs(60)).finish();
        eventually("chromedriver to answer", DEADLINE, || {
            let (http, url) = (http.clone(), format!("{base}/status"));
            async move {
                let mut r = http.get(url).send().await.ok()?;
                let v: Value = r.json().await.ok()?;
                v["value"]["ready"].as_bool().filter(|r| *r)
            }
        })
        .await;
        let profile = TempDir(std::env::temp_dir().join(format!("hookgate-chromium-{}", uuid::Uuid::new_v4())));
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--no-first-run", "--lang=en-GB", "--window-size=1280,1000",
                         format!("--user-data-dir={}", profile.0.display())]
            }
        }}});
        let mut r = http.post(format!("{base}/session")).send_json(&caps).await.expect("new session");
        let v: Value = r.json().limit(1 << 20).await.unwrap();
        let session =
            v["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no WebDriver session: {v}")).to_owned();
        Self { driver, base, session, http, _profile: profile }
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.try_call(method, path, body)
            .await
            .unwrap_or_else(|(status, v)| panic!("WebDriver {method} {path}: {status} {v}"))
    }

    /// A WebDriver command: its value, or the status and body of the refusal.
    async fn try_call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, (u16, Value)> {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let req = self.http.request(awc::http::Method::from_bytes(method.as_bytes()).unwrap(), url);
        let mut resp = match body {
            Some(b) => req.send_json(&b).await,
            None => req.send().await,
        }
        .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let status = resp.status();
        let v: Value = resp.json().limit(32 << 20).await.unwrap();
        if status.is_success() {
            Ok(v["value"].clone())
        } else {
            Err((status.as_u16(), v))
        }
    }

    async fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url }))).await;
    }

    async fn js(&self, script: &str, args: Value) -> Value {
        self.call("POST", "/execute/sync", Some(json!({ "script": script, "args": args }))).await
    }

    /// Waits for a visible element matching `css` whose text contains `text`; returns its WebDriver id.
    async fn wait_for(&self, css: &str, text: &str) -> String {
        let until = Instant::now() + DEADLINE;
        loop {
            let found = self
                .js(
                    "const [css, text] = arguments;
                     const el = [...document.querySelectorAll(css)]
                       .find(e => e.getClientRects().length && e.textContent.includes(text));
                     return el || null;",
                    json!([css, text]),
                )
                .await;
            if let Some(id) = found[ELEMENT].as_str() {
                return id.to_owned();
            }
            if Instant::now() >= until {
                let page =
                    self.js("return document.body ? document.body.innerText.slice(0, 2000) : ''", json!([])).await;
                panic!("timed out waiting for {css:?} with {text:?} on {}; the page reads: {page}", self.url().await);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the element matching `css` has exactly this text.
    async fn wait_exact(&self, css: &str, text: &str) {
        let until = Instant::now() + DEADLINE;
        loop {
            let now = self
                .js(
                    "const el = document.querySelector(arguments[0]); return el && el.textContent.trim();",
                    json!([css]),
                )
                .await;
            if now.as_str() == Some(text) {
                return;
            }
            assert!(Instant::now() < until, "timed out waiting for {css:?} to read {text:?}; it reads {now}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the input matching `css` has a value; returns it.
    async fn wait_value(&self, css: &str) -> String {
        let until = Instant::now() + DEADLINE;
        loop {
            let v =
                self.js("const el = document.querySelector(arguments[0]); return el && el.value;", json!([css])).await;
            if let Some(v) = v.as_str().filter(|v| !v.is_empty()) {
                return v.to_owned();
            }
            assert!(Instant::now() < until, "timed out waiting for {css:?} to have a value");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn url(&self) -> String {
        self.call("GET", "/url", None).await.as_str().unwrap_or_default().to_owned()
    }

    async fn wait_url(&self, suffix: &str) {
        let until = Instant::now() + DEADLINE;
        while !self.url().await.ends_with(suffix) {
            assert!(Instant::now() < until, "timed out waiting for …{suffix}; at {}", self.url().await);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn click(&self, css: &str, text: &str) {
        let id = self.wait_for(css, text).await;
        self.call("POST", &format!("/element/{id}/click"), Some(json!({}))).await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let id = self.wait_for(css, "").await;
        self.call("POST", &format!("/element/{id}/clear"), Some(json!({}))).await;
        self.call("POST", &format!("/element/{id}/value"), Some(json!({ "text": text }))).await;
    }

    async fn choose(&self, css: &str, value: &str) {
        self.wait_for(css, "").await;
        let ok = self
            .js(
                "const el = document.querySelector(arguments[0]);
                 if (![...el.options].some(o => o.value === arguments[1])) return false;
                 el.value = arguments[1]; el.dispatchEvent(new Event('change', { bubbles: true })); return true;",
                json!([css, value]),
            )
            .await;
        assert_eq!(ok, json!(true), "{css} has an option {value}");
    }

    /// Every form control, button and link on the page without a name in the browser's accessibility tree. When the
    /// page re-renders during the scan (a refresh replaced an element), the scan starts again.
    async fn unnamed_controls(&self) -> Vec<String> {
        let until = Instant::now() + DEADLINE;
        'scan: loop {
            assert!(Instant::now() < until, "the page never held still for the accessibility scan");
            let ids = self
                .call(
                    "POST",
                    "/elements",
                    Some(json!({ "using": "css selector", "value": "input, select, textarea, button, a[href]" })),
                )
                .await;
            let mut unnamed = Vec::new();
            for el in ids.as_array().unwrap() {
                let id = el[ELEMENT].as_str().unwrap();
                let label = match self.try_call("GET", &format!("/element/{id}/computedlabel"), None).await {
                    Ok(label) => label,
                    Err((_, e)) if e["value"]["error"] == "stale element reference" => continue 'scan,
                    Err((status, e)) => panic!("computedlabel: {status} {e}"),
                };
                if label.as_str().is_none_or(|l| l.trim().is_empty()) {
                    let html = self.js("return arguments[0].outerHTML.slice(0, 120)", json!([el])).await;
                    unnamed.push(html.as_str().unwrap_or_default().to_owned());
                }
            }
            return unnamed;
        }
    }

    /// Walks the page with the Tab key alone, from its first control (the skip link): every enabled, visible control
    /// is reached, in document order, and each shows a focus ring when the keyboard moved the focus there. (A date
    /// field keeps the focus for several presses, one per part: day, month, year, hours, minutes.)
    async fn assert_keyboard_walk(&self, page: &str) {
        const CONTROLS: &str = "[...document.querySelectorAll('a[href], button, input, select, textarea, [tabindex]')]
              .filter(e => !e.disabled && e.tabIndex >= 0 && e.getClientRects().length)";
        let count = self.js(&format!("return {CONTROLS}.length"), json!([])).await.as_u64().unwrap();
        assert!(count > 1, "{page}: no controls to walk");
        let first = self.js(&format!("const c = {CONTROLS}; c[0].focus(); return c[0].className"), json!([])).await;
        assert_eq!(first, "skip", "{page}: the first control is the skip link");
        let mut reached = vec![0u64];
        // Enough presses for every control, and for the parts of a few date fields.
        for _ in 0..count * 4 {
            if reached.last() == Some(&(count - 1)) {
                break;
            }
            let tab = json!({ "type": "key", "id": "keyboard", "actions": [
                { "type": "keyDown", "value": "\u{E004}" }, { "type": "keyUp", "value": "\u{E004}" }] });
            self.call("POST", "/actions", Some(json!({ "actions": [tab] }))).await;
            let at = self
                .js(
                    &format!(
                        "const c = {CONTROLS}; const e = document.activeElement; const s = getComputedStyle(e);
                         return [c.indexOf(e), s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) > 0,
                                 e.outerHTML.slice(0, 100)]"
                    ),
                    json!([]),
                )
                .await;
            let (index, ring, html) = (at[0].as_i64().unwrap(), at[1].as_bool().unwrap(), at[2].to_string());
            assert!(index >= 0, "{page}: Tab moved the focus to something that is not a control: {html}");
            assert!(ring, "{page}: no focus ring on {html}");
            if reached.last() != Some(&(index as u64)) {
                reached.push(index as u64);
            }
        }
        assert_eq!(reached, (0..count).collect::<Vec<_>>(), "{page}: Tab order is not the document's order");
    }

    async fn assert_accessible(&self, page: &str) {
        let unnamed = self.unnamed_controls().await;
        assert!(unnamed.is_empty(), "{page}: controls without an accessible name: {unnamed:#?}");
        let landmarks =
            self.js("return ['main', 'nav', 'header'].filter(s => !document.querySelector(s))", json!([])).await;
        assert_eq!(landmarks, json!([]), "{page}: missing landmarks");
    }

    async fn screenshot(&self, name: &str) {
        // docs/console holds the committed pictures: refreshed only when asked (`make console-screenshots`), so that
        // a test run leaves the working tree as it found it.
        let dir = if std::env::var_os("HOOKGATE_UPDATE_SCREENSHOTS").is_some() {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/console")
        } else {
            std::env::temp_dir().join("hookgate-console-screenshots")
        };
        std::fs::create_dir_all(&dir).unwrap();
        for (width, height, suffix) in [(1280, 1000, "1280"), (390, 844, "390")] {
            self.call("POST", "/window/rect", Some(json!({ "width": width, "height": height }))).await;
            // The layout follows the new width before the picture is taken.
            let until = Instant::now() + DEADLINE;
            while self.js("return window.innerWidth", json!([])).await.as_u64().unwrap_or(0) > width {
                assert!(Instant::now() < until, "the window did not narrow to {width}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let png = self.call("GET", "/screenshot", None).await;
            let bytes = base64::engine::general_purpose::STANDARD.decode(png.as_str().unwrap()).unwrap();
            std::fs::write(dir.join(format!("{name}-{suffix}.png")), bytes).unwrap();
        }
        self.call("POST", "/window/rect", Some(json!({ "width": 1280, "height": 1000 }))).await;
    }

    async fn login(&self, app: &TestApp, token: &str) {
        self.goto(&app.url("/console/")).await;
        self.wait_url("/console/login").await;
        // The token field has the focus; Enter submits the form (the keyboard alone logs in).
        let focused = self.js("return document.activeElement.id", json!([])).await;
        assert_eq!(focused, "token");
        self.type_into("#token", &format!("{token}\u{E007}")).await;
        self.wait_for("#role", "Signed in").await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole group (the driver, the browser and its helpers), or every run would leave a browser behind.
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.driver.id())]).status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Ingests `n` JSON events into the `open` source; returns their ids.
async fn ingest(app: &TestApp, n: usize) -> Vec<uuid::Uuid> {
    let mut ids = Vec::new();
    for i in 0..n {
        let body = json!({ "type": "order.created", "order": i, "nonce": uuid::Uuid::new_v4() }).to_string();
        let resp = app
            .http
            .post(app.url("/ingest/open"))
            .insert_header(("Content-Type", "application/json"))
            .send_body(body)
            .await
            .unwrap();
        let a = crate::helpers::answer(resp).await;
        assert_eq!(a.status, 202, "ingest: {a:?}");
        ids.push(a.id());
    }
    ids
}

const DELIVERED_TO_ORDERS: &str = "SELECT count(*) FROM deliveries d JOIN destinations x ON x.id = d.destination_id
                                   WHERE x.slug = 'orders' AND d.state = 'delivered'";

/// Ingests events one at a time until one is routed to both destinations (this node has loaded the routes made
/// through the console: the catalog reload after an admin write is asynchronous). Earlier events got no delivery.
async fn ingest_until_routed(app: &TestApp) -> uuid::Uuid {
    eventually("an event routed to both destinations", DEADLINE, || async {
        let id = ingest(app, 1).await[0];
        let n: i64 =
            app.db.query_one("SELECT count(*) FROM deliveries WHERE event_id = $1", &[&id]).await.unwrap().get(0);
        (n == 2).then_some(id)
    })
    .await
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    app.db.query_one(sql, &[]).await.unwrap().get(0)
}

#[actix_rt::test]
async fn an_operator_works_through_the_console_in_a_real_browser() {
    let app = spawn_app_with(|s| {
        with_tokens(s);
        crate::tail::quick_tail(s);
    })
    .await;
    let good = Receiver::start(vec![], None);
    // The flaky receiver fails twice (both deliveries die: one attempt allowed), then answers 200.
    let flaky = Receiver::start(vec![Reply::Status(500), Reply::Status(500)], None);
    let b = Browser::start().await;

    // A wrong token is refused with the reason on the login page.
    b.goto(&app.url("/console/login")).await;
    b.type_into("#token", "not-a-valid-token-at-all\u{E007}").await;
    b.wait_for("#login-error", "not a valid admin token").await;
    b.assert_accessible_login().await;

    b.login(&app, WRITE).await;
    b.wait_for("#ingest-count", "0").await;
    b.wait_for("h1", "Overview").await;
    let cookie = b.call("GET", "/cookie/hookgate_session", None).await;
    assert_eq!((cookie["httpOnly"].as_bool(), cookie["sameSite"].as_str()), (Some(true), Some("Strict")), "{cookie}");

    // Destinations: a refused slug is shown beside its field, then two are created (the secret is shown once).
    b.click("nav a", "Destinations").await;
    b.type_into("#slug", "Not A Slug").await;
    b.type_into("#url", &good.url).await;
    b.click("button[type=submit]", "Create destination").await;
    b.wait_for("#slug-error", "slug must be").await;
    assert_eq!(b.js("return document.activeElement.id", json!([])).await, "slug", "the field at fault has the focus");
    b.assert_accessible("destinations").await;
    b.assert_keyboard_walk("destinations").await;
    b.type_into("#slug", "orders").await;
    b.click("button[type=submit]", "Create destination").await;
    b.wait_for(".secret output", "whsec_").await;
    b.wait_for("#destination-list tr[data-slug=orders]", "active").await;
    b.type_into("#slug", "flaky").await;
    b.type_into("#url", &flaky.url).await;
    b.type_into("#max_attempts", "1").await;
    b.click("button[type=submit]", "Create destination").await;
    b.wait_for("#destination-list tr[data-slug=flaky]", "active").await;
    assert_eq!(count(&app, "SELECT count(*) FROM destinations").await, 2);

    // Routes from the `open` source to both.
    b.click("nav a", "Routes").await;
    for (slug, dest) in [("to-orders", "orders"), ("to-flaky", "flaky")] {
        b.type_into("#slug", slug).await;
        b.choose("#source", "open").await;
        b.choose("#destination", dest).await;
        b.click("button[type=submit]", "Create route").await;
        b.wait_for("#route-list td", slug).await;
    }
    b.assert_accessible("routes").await;
    // Events come in (once this node has loaded the new routes: the first event routed to both destinations), the
    // overview's numbers move, and the live tail shows them.
    let routed = ingest_until_routed(&app).await;
    ingest(&app, 1).await;
    b.click("nav a", "Overview").await;
    let events = count(&app, "SELECT count(*) FROM events").await;
    b.wait_exact("#ingest-count", &events.to_string()).await;
    b.wait_exact("#destination-health tr[data-destination=flaky] [data-field=dead]", "2").await;
    let charts = b
        .js("return [...document.querySelectorAll('svg.spark')].map(s => s.getAttribute('aria-label'))", json!([]))
        .await;
    assert_eq!(charts.as_array().map(Vec::len), Some(4), "ingest, success, latency and backlog charts: {charts}");
    // Charts of a few refreshes for the picture.
    b.wait_for("#backlog-total-title ~ svg.spark:not([data-samples='1']):not([data-samples='2'])", "").await;
    b.screenshot("overview").await;
    // The live tail, over the admin API's event stream: a jq filter that does not compile is shown beside its field;
    // with a good one, an event ingested after the page opened appears.
    b.click("nav a", "Live tail").await;
    b.wait_exact("#tail-mode", "live").await;
    b.type_into("#tail-filter", ".body |||").await;
    b.click("#tail-filters button[type=submit]", "Apply filters").await;
    b.wait_for("#tail-filter-error", "invalid jq program").await;
    b.type_into("#tail-filter", ".body.type == \"order.created\"").await;
    b.click("#tail-filters button[type=submit]", "Apply filters").await;
    b.wait_exact("#tail-mode", "live").await;
    b.assert_accessible("live tail").await;
    // The cluster publishes once a node notices someone tails (tail.presence_interval_ms): ingest until one shows.
    let until = Instant::now() + DEADLINE;
    let mut sent = Vec::new();
    loop {
        sent.extend(ingest(&app, 1).await.into_iter().map(|id| id.to_string()));
        let shown =
            b.js("return [...document.querySelectorAll('#tail tbody tr')].map(r => r.dataset.id)", json!([])).await;
        if shown.as_array().unwrap().iter().any(|id| sent.iter().any(|s| id == s)) {
            break;
        }
        assert!(Instant::now() < until, "no event ingested after the tail opened appeared on it");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.wait_for("#tail-count", "new since this page opened").await;
    b.screenshot("tail").await;
    assert_eq!(b.js("return document.querySelector('#tail-mode').textContent", json!([])).await, "live");

    // An event's detail: headers, pretty body, every attempt of every delivery.
    b.click("nav a", "Events").await;
    b.choose("#q-source", "open").await;
    b.click("#event-search button[type=submit]", "Search").await;
    // The newest event heads the first page (the search answers after the click, never at once).
    let newest = sent.last().expect("the tail loop ingested at least one event");
    b.wait_for("#event-results tbody tr", newest).await;
    b.assert_accessible("events").await;
    b.assert_keyboard_walk("events").await;
    // A jq filter narrows the search (evaluated by the admin API on the stored events).
    b.type_into("#q-filter", ".body.type == \"no-such-type\"").await;
    b.click("#event-search button[type=submit]", "Search").await;
    b.wait_for("#event-results", "No event matches").await;
    // The routed event may be pages back (the tail loop ingests until one shows): the newest one is on the first.
    b.type_into("#q-filter", ".body.type == \"order.created\"").await;
    b.click("#event-search button[type=submit]", "Search").await;
    b.wait_for("#event-results tbody tr", newest).await;
    app.wait_count("both deliveries to orders", DELIVERED_TO_ORDERS, 2).await;
    b.goto(&app.url(&format!("/console/#/events/{routed}"))).await;
    // The JSON body, pretty-printed.
    b.wait_for("pre.body", "\"type\": \"order.created\"").await;
    b.wait_for("section.delivery[data-destination=orders] .attempts td", "200").await;
    b.wait_for("section.delivery[data-destination=flaky] .state", "dead").await;
    b.wait_for("section.delivery[data-destination=flaky] .attempts td", "500").await;
    b.screenshot("event").await;

    // Dead letters: retry one, then all the others; the receiver answers 200 now.
    b.click("nav a", "Dead letters").await;
    let flaky_id: uuid::Uuid =
        app.db.query_one("SELECT id FROM destinations WHERE slug = 'flaky'", &[]).await.unwrap().get(0);
    b.choose("#dead-destination", &flaky_id.to_string()).await;
    b.click("#dead-pick button", "Show dead letters").await;
    b.wait_for("#dead-summary", "flaky: 2 dead").await;
    b.screenshot("dead-letters").await;
    b.click("#dead-list tbody button", "Retry").await;
    b.wait_for("#dead-summary", "flaky: 1 dead").await;
    b.click("#dead-list button", "Retry all dead").await;
    b.wait_for("#status", "Deliveries retried: 1").await;
    // Both retried deliveries, and the one made while the receiver already answered 200.
    let flaky_delivered = "SELECT count(*) FROM deliveries d JOIN destinations x ON x.id = d.destination_id
                           WHERE x.slug = 'flaky' AND d.state = 'delivered'";
    app.wait_count("flaky's deliveries to succeed", flaky_delivered, 3).await;
    b.click("#dead-list button", "Refresh").await;
    b.wait_for("#dead-summary", "flaky: 0 dead").await;

    // Pause a destination.
    b.click("nav a", "Destinations").await;
    b.click("button[aria-label='Pause orders']", "Pause").await;
    b.wait_for("#destination-list tr[data-slug=orders] [data-field=state]", "paused").await;
    assert_eq!(count(&app, "SELECT count(*) FROM destinations WHERE slug = 'orders' AND state = 'paused'").await, 1);
    b.screenshot("destinations").await;

    // Edit a destination: a refused timeout is shown beside its field; the saved change keeps what the form does
    // not show (its state, its secret).
    b.click("button[aria-label='Edit destination orders']", "Edit").await;
    b.type_into("#edit-timeout_ms", "700000").await;
    b.click("#destination-editor button[type=submit]", "Save changes").await;
    b.wait_for("#edit-timeout_ms-error", "at most 600000").await;
    b.assert_accessible("destination editor").await;
    b.type_into("#edit-timeout_ms", "5000").await;
    b.click("#destination-editor button[type=submit]", "Save changes").await;
    b.wait_for("#status", "Saved destination orders").await;
    let edited = "SELECT count(*) FROM destinations WHERE slug = 'orders' AND timeout_ms = 5000 AND state = 'paused'";
    assert_eq!(count(&app, edited).await, 1);

    // Sources: the declared ones are read-only, with the reason; one made through the API is edited.
    b.click("nav a", "Sources").await;
    b.wait_for("#source-list [data-field=read-only]", "declared in the configuration file").await;
    b.type_into("#slug", "made-here").await;
    b.click("button[type=submit]", "Create source").await;
    b.click("button[aria-label='Edit source made-here']", "Edit").await;
    b.type_into("#edit-max_body_bytes", "2048").await;
    b.click("#source-editor button[type=submit]", "Save changes").await;
    b.wait_for("#status", "Saved source made-here").await;
    b.wait_for("#source-list tbody tr", "2048").await;
    b.assert_accessible("sources").await;

    // Routes: a filter that does not compile is shown beside its field; a good one is saved.
    b.click("nav a", "Routes").await;
    b.click("button[aria-label='Edit route to-flaky']", "Edit").await;
    b.type_into("#edit-filter", ".body |||").await;
    b.click("#route-editor button[type=submit]", "Save changes").await;
    b.wait_for("#edit-filter-error", "does not compile").await;
    // Before saving, the filter and transform are tried on a stored event (the source's newest to begin with).
    b.wait_value("#edit-test-event").await;
    b.type_into("#edit-filter", ".body.order < 0").await;
    b.type_into("#edit-transform", "{n: ").await;
    b.click("#route-editor button", "Test filter and transform").await;
    b.wait_for("#edit-transform-error", "does not compile").await;
    b.type_into("#edit-transform", "{n: .body.order, kind: .body.type}").await;
    b.click("#route-editor button", "Test filter and transform").await;
    b.wait_for("#edit-test-result", "Does not match this event").await;
    b.type_into("#edit-filter", ".body.order >= 0").await;
    b.click("#route-editor button", "Test filter and transform").await;
    b.wait_for("#edit-test-result pre", "\"kind\": \"order.created\"").await;
    b.assert_accessible("route editor").await;
    b.type_into("#edit-transform", "").await;
    b.click("#route-editor button[type=submit]", "Save changes").await;
    b.wait_for("#status", "Saved route to-flaky").await;
    b.wait_for("#route-list tr[data-slug=to-flaky]", ".body.order >= 0").await;

    // A bulk replay of the `open` source's last hour: a filter that does not compile is shown beside its field; the
    // job's progress is shown until it is done.
    b.click("nav a", "Replay").await;
    b.choose("#replay-source", "open").await;
    b.type_into("#replay-filter", ".body |||").await;
    b.click("button[type=submit]", "Start replay").await;
    b.wait_for("#replay-filter-error", "does not compile").await;
    b.type_into("#replay-filter", ".body.type == \"order.created\"").await;
    let stored =
        count(&app, "SELECT count(*) FROM events e JOIN sources s ON s.id = e.source_id WHERE s.slug = 'open'").await;
    b.click("button[type=submit]", "Start replay").await;
    b.wait_for(
        "#replay-jobs tr[data-status=succeeded] [data-field=progress]",
        &format!("{stored} scanned, {stored} matched"),
    )
    .await;
    b.assert_accessible("replay").await;
    b.screenshot("replay").await;

    // Log out: the console is gone until the next login.
    b.click("#logout", "Log out").await;
    b.wait_url("/console/login").await;
    b.goto(&app.url("/console/")).await;
    b.wait_url("/console/login").await;

    // A read token's session: write controls are disabled (and the server would refuse anyway).
    b.login(&app, READ).await;
    b.click("nav a", "Destinations").await;
    b.wait_for("#destination-list tr[data-slug=orders]", "paused").await;
    let enabled = b
        .js(
            "return [...document.querySelectorAll('#destination-list button')].filter(x => !x.disabled).length
                  + (document.querySelector('form fieldset').disabled ? 0 : 1)",
            json!([]),
        )
        .await;
    assert_eq!(enabled, json!(0), "a read-only session has no enabled write control");
    // And the server refuses a write from this session, CSRF token or not.
    let refused = b
        .call(
            "POST",
            "/execute/async",
            Some(json!({ "args": [], "script":
                "const done = arguments[arguments.length - 1];
                 fetch('/console/session').then(r => r.json()).then(s => fetch('/admin/v1/destinations', {
                   method: 'POST', body: JSON.stringify({ slug: 'x', url: 'http://127.0.0.1:9/' }),
                   headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': s.csrf_token } }))
                 .then(r => done(r.status));" })),
        )
        .await;
    assert_eq!(refused, json!(403));
    b.click("#logout", "Log out").await;
    b.wait_url("/console/login").await;
}

impl Browser {
    async fn assert_accessible_login(&self) {
        let unnamed = self.unnamed_controls().await;
        assert!(unnamed.is_empty(), "login: controls without an accessible name: {unnamed:#?}");
    }
}

#[actix_rt::test]
async fn a_queued_replay_job_is_cancelled_from_the_console() {
    // The job runner takes its first round at start, then not for an hour: the job stays queued until cancelled.
    let app = spawn_app_with(|s| {
        with_tokens(s);
        s.admin.job_interval_ms = 3_600_000;
    })
    .await;
    ingest(&app, 2).await;
    let b = Browser::start().await;
    b.login(&app, WRITE).await;
    b.click("nav a", "Replay").await;
    b.choose("#replay-source", "open").await;
    b.click("button[type=submit]", "Start replay").await;
    b.wait_for("#replay-jobs tr[data-status=queued] [data-field=progress]", "0 scanned").await;
    b.click("#replay-jobs tr[data-status=queued] button", "Cancel").await;
    b.wait_for("#replay-jobs tr[data-status=cancelled] [data-field=status]", "cancelled").await;
    b.wait_for("#status", "Replay job cancelled").await;
    assert_eq!(count(&app, "SELECT count(*) FROM replay_jobs WHERE status = 'cancelled'").await, 1);
}
