//! `spawn_app()`: a real hookgate on port 0 with its own fresh database and Redis key prefix, dropped afterwards.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use hookgate::config::Settings;
use hookgate::startup::Application;
use hookgate_core::verify::hmac_sha256_hex;
use secrecy::SecretString;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use uuid::Uuid;

pub const HMAC_SECRET: &str = "test-secret-\u{1F511}";

/// Base URL of the PostgreSQL server tests create their databases on.
pub fn pg_base() -> String {
    std::env::var("HGTEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

pub fn redis_url() -> String {
    std::env::var("HGTEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The sources every test app declares: `hmac` (JSON, signed, keyed by header) and `open` (anything, body hash).
pub fn test_config_toml() -> String {
    format!(
        r#"
        [server]
        host = "127.0.0.1"
        port = 0
        workers = 2
        ingest_timeout_ms = 20000
        # Debug builds on a loaded machine: a burst can queue past the default target (50 ms) and be refused, which
        # only the tests of admission itself (overload.rs) want.
        admission_target_ms = 20000
        health_interval_ms = 100
        drain_delay_ms = 300
        shutdown_timeout_secs = 5
        # Tests share one process (and its metrics): every test's destinations get a label of their own.
        metrics_destination_labels = 1000000
        [database]
        pool_size = 8
        [delivery]
        allow_private = ["127.0.0.1/32"]
        poll_interval_ms = 100
        lease_margin_ms = 1000
        result_flush_interval_ms = 2
        [[sources]]
        slug = "hmac"
        require_json = true
        max_body_bytes = 4096
        idempotency = {{ from = "header", header = "X-Request-Id" }}
        verification = {{ kind = "hmac_sha256", header = "X-Signature", prefix = "sha256=", secret = "{HMAC_SECRET}" }}
        [[sources]]
        slug = "open"
        max_body_bytes = 4096
        idempotency = {{ from = "body_hash" }}
        "#
    )
}

fn init_logs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        if std::env::var("TEST_LOG").is_ok() {
            hookgate::telemetry::init_subscriber("pretty", std::io::stdout);
        } else {
            hookgate::telemetry::init_subscriber("pretty", std::io::sink);
        }
    });
}

/// A fresh database, dropped (with its connections) when this guard is dropped.
pub struct TestDb {
    pub name: String,
}

impl TestDb {
    pub async fn create() -> Self {
        let name = format!("hookgate_test_{}", Uuid::new_v4().simple());
        let client = connect(&format!("{}/postgres", pg_base())).await;
        client.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("create test database");
        Self { name }
    }

    pub fn url(&self) -> String {
        format!("{}/{}", pg_base(), self.name)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                if let Ok((client, conn)) =
                    tokio_postgres::connect(&format!("{}/postgres", pg_base()), tokio_postgres::NoTls).await
                {
                    tokio::spawn(conn);
                    let _ = client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
                }
            });
        })
        .join();
    }
}

/// Deletes every Redis key under a prefix when dropped.
pub struct RedisPrefix(pub String);

impl Drop for RedisPrefix {
    fn drop(&mut self) {
        let pattern = format!("{}:*", self.0);
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let Ok(client) = redis::Client::open(redis_url()) else { return };
                let Ok(mut conn) = client.get_multiplexed_async_connection().await else { return };
                let keys: Vec<String> =
                    redis::cmd("KEYS").arg(&pattern).query_async(&mut conn).await.unwrap_or_default();
                if !keys.is_empty() {
                    let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
                }
            });
        })
        .join();
    }
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("connect to PostgreSQL");
    tokio::spawn(conn);
    client
}

pub struct TestApp {
    pub address: String,
    pub janitor: actix::Addr<hookgate_actors::janitor::Janitor>,
    pub actors: hookgate::startup::Actors,
    /// Ingest's admission state (read directly: a gauge on /metrics is shared by every app in this process).
    pub admission: std::sync::Arc<hookgate_actors::admission::Admission>,
    pub port: u16,
    /// The operators' listener (`server.admin_port`), when the test set one.
    pub admin_port: Option<u16>,
    pub db: tokio_postgres::Client,
    pub http: awc::Client,
    pub settings: Settings,
    // Dropped last: the database outlives the connections above.
    pub _redis: RedisPrefix,
    pub _db: TestDb,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Spawns an app after `tweak` adjusts its settings (database URL, Redis URL and prefix are already set).
pub async fn spawn_app_with(tweak: impl FnOnce(&mut Settings)) -> TestApp {
    init_logs();
    let test_db = TestDb::create().await;
    let prefix = format!("hgtest-{}", Uuid::new_v4().simple());
    let mut settings = Settings::from_toml(&test_config_toml()).expect("test config");
    settings.database.url = SecretString::from(test_db.url());
    settings.redis.url = SecretString::from(redis_url());
    settings.redis.key_prefix = prefix.clone();
    tweak(&mut settings);
    let app = Application::build(settings.clone()).await.expect("build application");
    let port = app.port();
    let admin_port = app.admin_port();
    let janitor = app.janitor();
    let actors = app.actors();
    let admission = app.admission();
    actix_rt::spawn(app.run_until_stopped());
    let db = connect(&test_db.url()).await;
    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        janitor,
        actors,
        admission,
        port,
        admin_port,
        db,
        http: http_client(),
        settings,
        _redis: RedisPrefix(prefix),
        _db: test_db,
    }
}

pub fn http_client() -> awc::Client {
    awc::Client::builder().timeout(Duration::from_secs(60)).finish()
}

pub fn sign(body: &[u8]) -> String {
    format!("sha256={}", hmac_sha256_hex(HMAC_SECRET.as_bytes(), body))
}

/// A response reduced to what the tests look at.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub retry_after: Option<String>,
    pub json: serde_json::Value,
}

impl Answer {
    pub fn id(&self) -> Uuid {
        self.json["id"].as_str().and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no id in {self:?}"))
    }

    pub fn duplicate(&self) -> bool {
        self.json["duplicate"].as_bool().unwrap_or_else(|| panic!("no duplicate flag in {self:?}"))
    }

    /// Asserts an RFC 7807 problem with this status and `type` suffix.
    pub fn assert_problem(&self, status: u16, type_slug: &str) {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.content_type, "application/problem+json", "{self:?}");
        assert_eq!(self.json["type"], format!("urn:hookgate:problem:{type_slug}"), "{self:?}");
        assert_eq!(self.json["status"], status, "{self:?}");
        assert!(self.json["title"].as_str().is_some_and(|t| !t.is_empty()), "{self:?}");
        assert!(self.json["detail"].as_str().is_some_and(|t| !t.is_empty()), "{self:?}");
    }
}

pub async fn answer(
    mut resp: awc::ClientResponse<impl futures::Stream<Item = Result<bytes::Bytes, awc::error::PayloadError>> + Unpin>,
) -> Answer {
    let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let content_type = header("content-type").unwrap_or_default();
    let retry_after = header("retry-after");
    let status = resp.status().as_u16();
    let body = resp.body().limit(1 << 20).await.expect("read response body");
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    Answer { status, content_type, retry_after, json }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// POSTs a correctly signed JSON body to the `hmac` source.
    pub async fn post_signed(&self, body: &[u8], key: &str) -> Answer {
        self.try_post_signed(body, key).await.expect("request failed")
    }

    pub async fn try_post_signed(&self, body: &[u8], key: &str) -> Result<Answer, awc::error::SendRequestError> {
        let resp = self
            .http
            .post(self.url("/ingest/hmac"))
            .insert_header(("Content-Type", "application/json"))
            .insert_header(("X-Signature", sign(body)))
            .insert_header(("X-Request-Id", key))
            .send_body(body.to_vec())
            .await?;
        Ok(answer(resp).await)
    }

    pub async fn get_json(&self, path: &str) -> Answer {
        answer(self.http.get(self.url(path)).send().await.expect("GET failed")).await
    }

    pub async fn event_count(&self) -> i64 {
        self.db.query_one("SELECT count(*) FROM events", &[]).await.unwrap().get(0)
    }

    /// Waits until `/readyz` satisfies `pred`, or panics after `deadline`.
    pub async fn wait_for_readiness(&self, what: &str, pred: impl Fn(&Answer) -> bool) -> Answer {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let a = self.get_json("/readyz").await;
            if pred(&a) {
                return a;
            }
            assert!(Instant::now() < until, "timed out waiting for {what}; last /readyz: {a:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Polls `f` until it returns `Some`, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let until = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TCP proxy the test can cut and restore, to make PostgreSQL or Redis unreachable for one app only.
pub struct Proxy {
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    cut: watch::Sender<u64>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let (cut, _) = watch::channel(0u64);
        let (up2, cut2) = (up.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                // Subscribe before checking `up`, so a cut that races with this accept still closes it.
                let mut rx = cut2.subscribe();
                if !up2.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = rx.changed() => {}
                    }
                });
            }
        });
        Self { addr, up, cut }
    }

    /// Closes every open connection and refuses new ones.
    pub fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// Adds `:port` of a URL like `postgres://postgres@127.0.0.1:5432` as a socket address.
pub fn socket_of(url: &str) -> SocketAddr {
    let host_port = url.rsplit('@').next().unwrap().trim_start_matches("redis://").split('/').next().unwrap();
    host_port.parse().expect("host:port")
}

/// A real `hookgate serve` child process (killed when dropped).
pub struct Node {
    pub child: std::process::Child,
    pub base: String,
    /// Its last [`Node::KEPT_LOG_LINES`] stdout lines (JSON log lines).
    pub logs: Arc<std::sync::Mutex<std::collections::VecDeque<String>>>,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    /// How many of its latest log lines a node keeps for the test to read.
    pub const KEPT_LOG_LINES: usize = 10_000;

    /// Its log lines that parse as JSON, oldest first.
    pub fn log_lines(&self) -> Vec<serde_json::Value> {
        self.logs.lock().unwrap().iter().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// Starts the binary on port 0 with `config`, pointing it at `db_url` and Redis under `prefix`; returns once it
    /// reported its port and answers `/healthz`.
    pub async fn start(config: &std::path::Path, db_url: &str, prefix: &str, extra_env: &[(&str, &str)]) -> Node {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hookgate"));
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("HOOKGATE_")) {
            cmd.env_remove(k);
        }
        cmd.args(["serve", "--config"])
            .arg(config)
            .env("HOOKGATE_DATABASE__URL", db_url)
            .env("HOOKGATE_REDIS__URL", redis_url())
            .env("HOOKGATE_REDIS__KEY_PREFIX", prefix)
            .env("HOOKGATE_SERVER__PORT", "0")
            .env("HOOKGATE_SERVER__LOG_FORMAT", "json")
            .env("RUST_LOG", "warn,hookgate::startup=info")
            .stdout(Stdio::piped())
            .stderr(if std::env::var("TEST_LOG").is_ok() { Stdio::inherit() } else { Stdio::null() });
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn hookgate");
        let stdout = child.stdout.take().unwrap();
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let logs = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
        let kept = logs.clone();
        std::thread::spawn(move || {
            // Reads the port from the "Listening." line, then keeps draining stdout so the child never blocks.
            let verbose = std::env::var("TEST_LOG").is_ok();
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if verbose {
                    println!("{line}");
                }
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if v["message"] == "Listening." {
                        let _ = port_tx.send(v["port"].as_u64().unwrap_or(0) as u16);
                    }
                }
                let mut kept = kept.lock().unwrap();
                if kept.len() >= Node::KEPT_LOG_LINES {
                    kept.pop_front();
                }
                kept.push_back(line);
            }
        });
        let mut node = Node { child, base: String::new(), logs };
        let port = eventually("the node to report its port", Duration::from_secs(60), || {
            let got = port_rx.try_recv().ok();
            let exited = node.child.try_wait().ok().flatten();
            assert!(exited.is_none(), "hookgate exited at start: {exited:?}");
            async move { got }
        })
        .await;
        node.base = format!("http://127.0.0.1:{port}");
        let http = http_client();
        eventually("the node to answer /healthz", Duration::from_secs(60), || {
            let req = http.get(format!("{}/healthz", node.base)).send();
            async move { req.await.ok().filter(|r| r.status().is_success()).map(|_| ()) }
        })
        .await;
        node
    }

    /// Sends SIGTERM (a graceful shutdown).
    pub fn terminate(&self) {
        let status = std::process::Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        assert!(status.is_ok_and(|s| s.success()), "kill -TERM failed");
    }

    /// Waits for the process to exit, at most `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let child = &mut self.child;
        eventually("the node to exit", limit, || {
            let exited = child.try_wait().unwrap();
            async move { exited }
        })
        .await
    }

    /// POSTs a signed JSON body to the node's `hmac` source.
    pub async fn post_signed(&self, http: &awc::Client, body: &[u8], key: &str) -> Result<Answer, String> {
        post_signed_to(http, &self.base, body, key).await
    }
}

/// POSTs a signed JSON body to the `hmac` source of the hookgate at `base`.
pub async fn post_signed_to(http: &awc::Client, base: &str, body: &[u8], key: &str) -> Result<Answer, String> {
    {
        let resp = http
            .post(format!("{base}/ingest/hmac"))
            .insert_header(("Content-Type", "application/json"))
            .insert_header(("X-Signature", sign(body)))
            .insert_header(("X-Request-Id", key))
            .send_body(body.to_vec())
            .await
            .map_err(|e| e.to_string())?;
        Ok(answer(resp).await)
    }
}

/// Writes the test configuration to a temporary file, removed when the guard drops.
pub struct TempConfig(pub std::path::PathBuf);

impl TempConfig {
    pub fn new(contents: &str) -> Self {
        let path = std::env::temp_dir().join(format!("hookgate-test-{}.toml", Uuid::new_v4().simple()));
        std::fs::write(&path, contents).unwrap();
        Self(path)
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Deletes every key under a Redis prefix now.
pub async fn clear_redis_prefix(prefix: &str) {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}:*")).query_async(&mut conn).await.unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL").arg(keys).query_async(&mut conn).await.unwrap();
    }
}

/// A destination with test-friendly defaults: 5 s timeout, retries every 100 ms (no jitter), 5 attempts.
pub fn destination(slug: &str, url: &str) -> hookgate_core::catalog::DestinationSpec {
    hookgate_core::catalog::DestinationSpec {
        slug: slug.into(),
        url: url.into(),
        timeout_ms: 5_000,
        max_in_flight: 16,
        rate_limit: None,
        retry: hookgate_core::retry::RetryPolicy { delays_ms: vec![100], max_attempts: 5, jitter: 0.0 },
        signing_secrets: vec![],
        signing_keys: vec![],
        fifo: false,
        state: Default::default(),
        tls: None,
        headers: Default::default(),
    }
}

pub fn route(slug: &str, source: &str, destination: &str) -> hookgate_core::catalog::RouteSpec {
    hookgate_core::catalog::RouteSpec {
        slug: slug.into(),
        source: source.into(),
        destination: destination.into(),
        filter: None,
        transform: None,
    }
}

impl TestApp {
    /// Waits until `sql` (a count query) returns at least `n`.
    /// Creates the daily partitions of `days` days from `days_ago` days ago. The DDL runs beside the app's own work (a
    /// janitor round at start): should PostgreSQL end it to break a deadlock, it is run again.
    pub async fn ensure_partitions(&self, days_ago: i32, days: i32) {
        eventually("the partitions created", Duration::from_secs(60), || async {
            let sql = "SELECT hookgate_ensure_partitions((now() AT TIME ZONE 'UTC')::date - $1::int, $2::int)";
            match self.db.execute(sql, &[&days_ago, &days]).await {
                Ok(_) => Some(()),
                Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED) => None,
                Err(e) => panic!("creating partitions: {e}"),
            }
        })
        .await
    }

    /// Sessions of this app's database (other than the test's own) waiting for a lock while running a statement that
    /// contains `statement`.
    pub async fn waiting_for_a_lock(&self, statement: &str) -> i64 {
        self.db
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()
                   AND strpos(query, $1) > 0",
                &[&statement],
            )
            .await
            .unwrap()
            .get(0)
    }

    pub async fn wait_count(&self, what: &str, sql: &str, n: i64) -> i64 {
        eventually(what, Duration::from_secs(60), || async {
            let c: i64 = self.db.query_one(sql, &[]).await.unwrap().get(0);
            (c >= n).then_some(c)
        })
        .await
    }

    /// (state, attempts, last_error) of every delivery, oldest event first.
    pub async fn deliveries(&self) -> Vec<(String, i32, Option<String>)> {
        self.db
            .query("SELECT state, attempts, last_error FROM deliveries ORDER BY event_id, id", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect()
    }

    /// (attempt, status, error_kind) of every attempt, in order.
    pub async fn attempts(&self) -> Vec<(i32, Option<i32>, Option<String>)> {
        self.db
            .query("SELECT attempt, status, error_kind FROM attempts ORDER BY started_at, attempt", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect()
    }
}

/// (error_kind, error) of the attempts made to the destination `slug`, in order.
pub async fn attempts_to(app: &TestApp, slug: &str) -> Vec<(Option<String>, Option<String>)> {
    app.db
        .query(
            "SELECT a.error_kind, a.error FROM attempts a
             JOIN deliveries d ON d.id = a.delivery_id JOIN destinations t ON t.id = d.destination_id
             WHERE t.slug = $1 ORDER BY a.started_at, a.attempt",
            &[&slug],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Waits until `slug` has at least two failed attempts (the failure was retried on schedule); answers them.
pub async fn failed_twice(app: &TestApp, slug: &str) -> Vec<(Option<String>, Option<String>)> {
    eventually(&format!("two failed attempts to {slug}"), Duration::from_secs(60), || async {
        let got = attempts_to(app, slug).await;
        (got.len() >= 2).then_some(got)
    })
    .await
}

pub async fn delivered_to(app: &TestApp, slug: &str) {
    eventually(&format!("a delivery to {slug} delivered"), Duration::from_secs(60), || async {
        let n: i64 = app
            .db
            .query_one(
                "SELECT count(*) FROM deliveries d JOIN destinations t ON t.id = d.destination_id
                 WHERE t.slug = $1 AND d.state = 'delivered'",
                &[&slug],
            )
            .await
            .unwrap()
            .get(0);
        (n > 0).then_some(())
    })
    .await
}

/// Retries every 300 ms without jitter, long enough for a test to fix the cause meanwhile.
pub fn patient(mut d: hookgate_core::catalog::DestinationSpec) -> hookgate_core::catalog::DestinationSpec {
    d.retry = hookgate_core::retry::RetryPolicy { delays_ms: vec![300], max_attempts: 100, jitter: 0.0 };
    d
}

/// Runs `hookgate check-config` on `toml`, with `env` as the only `HOOKGATE_*` variables.
pub fn hookgate_check_config(toml: &str, env: &[(&str, &str)]) -> std::process::Output {
    let file = TempConfig::new(toml);
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_hookgate"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("HOOKGATE_")) {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().copied());
    cmd.arg("check-config").arg(&file.0).output().unwrap()
}

/// Connections of this app named `application` that are waiting for a lock.
pub async fn connections_waiting_for_a_lock(app: &TestApp, application: &str) -> i64 {
    app.db
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = $1 AND wait_event_type = 'Lock'",
            &[&application],
        )
        .await
        .unwrap()
        .get(0)
}

/// Waits until exactly `n` connections named `application` wait for a lock.
pub async fn until_stuck(app: &TestApp, application: &str, n: i64) {
    eventually(&format!("{n} {application} connection(s) waiting for the lock"), Duration::from_secs(60), || async {
        (connections_waiting_for_a_lock(app, application).await == n).then_some(())
    })
    .await;
}
