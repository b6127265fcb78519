//! The standard set (`make bench`): starts a release hookgate on a fresh database with a bench configuration and
//! the built-in receiver as its one destination, runs every workload in order, stops it, runs the raw-PostgreSQL
//! baseline on the rows it stored, and prints one table (and writes one JSON file).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};

use crate::baseline::{self, BaselineResult};
use crate::client::Conn;
use crate::load::{closed_loop, open_loop, Stats};
use crate::procfs::{postgres_cpu_secs, process_cpu_secs, rss_kib, RssSampler};
use crate::receiver::Receiver;
use crate::report::{ingest_row, latency_json, latency_text, stats_json, table, INGEST_HEADER};
use crate::workload::{get_request, Signing, Workload};

pub const SECRET: &str = "bench-secret";
/// The admin token of the bench configuration (the HTTP-versus-HTTPS drain resumes its destinations with it).
const ADMIN_TOKEN: &str = "hookgate-bench-admin-token";
pub const DESTINATION_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[derive(Debug, Clone)]
pub struct StandardOptions {
    pub hookgate_bin: PathBuf,
    /// Server URL without database, e.g. `postgres://postgres@127.0.0.1:5432`.
    pub pg: String,
    pub database: String,
    /// The Redis hookgate uses (`redis://host:port`).
    pub redis: String,
    pub port: u16,
    pub secs: u64,
    pub body_size: usize,
    pub latency_rate: f64,
    pub baseline_rows: usize,
    /// Connections of the overload run: more than hookgate's shedding thresholds can hold, so excess can be refused.
    pub overload_connections: usize,
    /// Backlog sizes of the drain sweep.
    pub sweep: Vec<u64>,
    /// Connections of the slow-client phase, each trickling a body one byte per second.
    pub slow_clients: usize,
    /// Rates of the full-pipeline phases: ingest at that rate, delivery on, for `pipeline_secs` each.
    pub pipeline_rates: Vec<f64>,
    pub pipeline_secs: u64,
    /// Only the delivery phases (the receiver's capacity, the backlog sweep, the full pipeline), and no baseline.
    pub delivery_only: bool,
    /// Every bench destination's `max_in_flight`.
    pub window: u32,
    pub out: PathBuf,
}

struct Hookgate {
    child: Child,
}

impl Hookgate {
    fn start(opts: &StandardOptions, config: &std::path::Path, log: &std::path::Path) -> anyhow::Result<Self> {
        let log = std::fs::File::create(log)?;
        let mut cmd = Command::new(&opts.hookgate_bin);
        cmd.arg("--config").arg(config).arg("serve");
        // The bench configuration's own keys win over a stray environment; tuning keys (writer, pool, workers,
        // deliverers) still pass through.
        for key in [
            "HOOKGATE_CONFIG",
            "HOOKGATE_DATABASE__URL",
            "HOOKGATE_SERVER__PORT",
            "HOOKGATE_SERVER__HOST",
            // The run's keys are removed from this Redis, under this prefix, at the end.
            "HOOKGATE_REDIS__URL",
            "HOOKGATE_REDIS__KEY_PREFIX",
        ] {
            cmd.env_remove(key);
        }
        cmd.env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()));
        let child = cmd
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("starting {}", opts.hookgate_bin.display()))?;
        Ok(Self { child })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM (graceful drain), then wait up to 15 s, then kill.
    fn stop(mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.pid().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Hookgate {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `sql` (statements separated by `;`, one at a time) on the server's `postgres` database.
pub(crate) async fn pg_admin(pg: &str, sql: &str) -> anyhow::Result<()> {
    let (client, conn) = tokio_postgres::connect(&format!("{pg}/postgres"), tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    // One statement at a time: DROP/CREATE DATABASE cannot run inside the implicit transaction of a batch.
    for statement in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        client.batch_execute(statement).await?;
    }
    Ok(())
}

async fn wait_ready(port: u16, deadline: Duration) -> anyhow::Result<()> {
    let addr = ([127, 0, 0, 1], port).into();
    let req = get_request(&format!("127.0.0.1:{port}"), "/readyz");
    let until = Instant::now() + deadline;
    while Instant::now() < until {
        if let Ok(200) = Conn::new(addr).send(&req).await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("hookgate was not ready on port {port} within {deadline:?}")
}

/// Pauses or resumes (`action`) the destination `slug` through the admin API (its id read from the database).
async fn destination_action(opts: &StandardOptions, slug: &str, action: &str) -> anyhow::Result<()> {
    let (client, conn) =
        tokio_postgres::connect(&format!("{}/{}", opts.pg, opts.database), tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let id: uuid::Uuid = client.query_one("SELECT id FROM destinations WHERE slug = $1", &[&slug]).await?.get(0);
    let request = format!(
        "POST /admin/v1/destinations/{id}/{action} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
         Authorization: Bearer {ADMIN_TOKEN}\r\nContent-Length: 0\r\n\r\n",
        port = opts.port
    );
    let status = Conn::new(([127, 0, 0, 1], opts.port).into()).send(request.as_bytes()).await?;
    anyhow::ensure!(status == 200, "{action} {slug} answered {status}");
    Ok(())
}

async fn resume(opts: &StandardOptions, slug: &str) -> anyhow::Result<()> {
    destination_action(opts, slug, "resume").await
}

/// One slow client: headers announcing a 1 KiB body, then a byte a second until `stop` or the server closes the
/// connection (a body deadline). Answers whether it connected.
async fn trickle(port: u16, i: usize, stop: Arc<std::sync::atomic::AtomicBool>) -> bool {
    use tokio::io::AsyncWriteExt;
    let Ok(mut conn) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else { return false };
    let head = format!(
        "POST /ingest/bench HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         X-Request-Id: slow-{i}\r\nX-Signature: sha256=00\r\nContent-Length: 1024\r\n\r\n"
    );
    if conn.write_all(head.as_bytes()).await.is_err() {
        return true;
    }
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        if conn.write_all(b" ").await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    true
}

/// Stores `n` events of the `bench-sweep` source with a pending delivery each to the (paused) `sweep` destination,
/// straight into the database: the backlog of a sweep step, made in seconds whatever its size.
async fn seed_sweep(db: &tokio_postgres::Client, step: usize, n: u64, body_size: usize) -> anyhow::Result<()> {
    let pad = body_size.saturating_sub(64) as i32;
    db.batch_execute(&format!(
        "INSERT INTO events (id, source_id, idempotency_key, received_at, headers, body, content_type)
         SELECT gen_random_uuid(), s.id, 'sweep-{step}-' || g, now(), '{{}}',
                convert_to(json_build_object('sent_ns', 0, 'id', 'sweep-{step}-' || g, 'pad', repeat('x', {pad}))::text,
                           'UTF8'),
                'application/json'
         FROM generate_series(1, {n}) g, sources s WHERE s.slug = 'bench-sweep';
         INSERT INTO deliveries (id, event_id, route_id, destination_id, state, created_at, next_attempt_at)
         SELECT gen_random_uuid(), e.id, r.id, r.destination_id, 'pending', e.received_at, now()
         FROM events e JOIN routes r ON r.source_id = e.source_id
         WHERE r.slug = 'to-sweep' AND e.idempotency_key LIKE 'sweep-{step}-%';
         ANALYZE events; ANALYZE deliveries;"
    ))
    .await?;
    Ok(())
}

/// Waits until the receiver has seen `expected` requests, or no progress for `stall`, or `cap`. Returns the
/// deliveries seen and the time from the call to the last of them.
async fn wait_delivered(rx: &Receiver, expected: u64, stall: Duration, cap: Duration) -> (u64, Duration) {
    let (t0, start) = (Instant::now(), rx.state.received());
    let (mut last, mut last_change) = (start, Instant::now());
    while rx.state.received() < expected && t0.elapsed() < cap {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = rx.state.received();
        if now != last {
            (last, last_change) = (now, Instant::now());
        } else if last_change.elapsed() > stall {
            break;
        }
    }
    // Timed to the last arrival, not to the check that saw it (checks are 50 ms apart: a drain of 1,000 that takes
    // 80 ms would otherwise count as 100 ms). Under a millisecond (a handful of deliveries, or one stamped just
    // before the call but counted after it) there is no rate worth the name: the checks' time, an upper bound.
    let seen = rx.state.received();
    let polled = if seen >= expected { t0.elapsed() } else { last_change - t0 };
    let stamped = rx.state.last_arrival().filter(|_| seen > start).map(|end| end.saturating_duration_since(t0));
    let took = match stamped {
        Some(d) if d >= Duration::from_millis(1) => d,
        _ => polled,
    };
    (seen - start, took)
}

fn mib(kib: u64) -> f64 {
    (kib as f64 / 102.4).round() / 10.0
}

pub async fn run(opts: StandardOptions) -> anyhow::Result<Value> {
    let db_url = format!("{}/{}", opts.pg, opts.database);
    let dir = std::env::temp_dir().join(format!("hookgate-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let receiver = Receiver::start(0, 1)?;
    // The HTTP-versus-HTTPS drain: one receiver each, the HTTPS one with a CA made for this run.
    let pki = crate::tls::generate()?;
    std::fs::write(dir.join("ca.pem"), &pki.ca_pem)?;
    // The third: the backlog sweep's.
    let drain_rx = [Receiver::start(0, 1)?, Receiver::start_tls(0, 1, pki.server)?, Receiver::start(0, 1)?];
    let config = dir.join("bench.toml");
    std::fs::write(
        &config,
        format!(
            r#"[server]
host = "127.0.0.1"
port = {port}
[database]
url = "{db_url}?sslmode=disable"
[redis]
url = "{redis}"
key_prefix = "{prefix}"
dedupe_ttl_secs = 600
[admin]
tokens = [{{ token = "{ADMIN_TOKEN}", role = "write" }}]
[delivery]
allow_private = ["127.0.0.1/32"]
[[sources]]
slug = "bench"
require_json = true
idempotency = {{ from = "header", header = "X-Request-Id" }}
verification = {{ kind = "hmac_sha256", header = "X-Signature", prefix = "sha256=", secret = "{SECRET}" }}
[[destinations]]
slug = "receiver"
url = "http://127.0.0.1:{rport}/hook"
max_in_flight = {window}
signing_secrets = ["{DESTINATION_SECRET}"]
[[routes]]
slug = "bench-to-receiver"
source = "bench"
destination = "receiver"
# The HTTP-versus-HTTPS drain: each source's events wait for one destination, paused until its turn.
[[sources]]
slug = "bench-http"
require_json = true
idempotency = {{ from = "header", header = "X-Request-Id" }}
verification = {{ kind = "hmac_sha256", header = "X-Signature", prefix = "sha256=", secret = "{SECRET}" }}
[[sources]]
slug = "bench-https"
require_json = true
idempotency = {{ from = "header", header = "X-Request-Id" }}
verification = {{ kind = "hmac_sha256", header = "X-Signature", prefix = "sha256=", secret = "{SECRET}" }}
[[destinations]]
slug = "drain-http"
url = "http://127.0.0.1:{http_port}/hook"
max_in_flight = {window}
signing_secrets = ["{DESTINATION_SECRET}"]
state = "paused"
[[destinations]]
slug = "drain-https"
url = "https://127.0.0.1:{https_port}/hook"
max_in_flight = {window}
signing_secrets = ["{DESTINATION_SECRET}"]
state = "paused"
tls = {{ ca_file = "{ca}" }}
[[routes]]
slug = "to-http"
source = "bench-http"
destination = "drain-http"
[[routes]]
slug = "to-https"
source = "bench-https"
destination = "drain-https"
# The backlog sweep: deliveries stored straight into the database for a paused destination, then drained.
[[sources]]
slug = "bench-sweep"
verification = {{ kind = "none" }}
[[destinations]]
slug = "sweep"
url = "http://127.0.0.1:{sweep_port}/hook"
max_in_flight = {window}
signing_secrets = ["{DESTINATION_SECRET}"]
state = "paused"
[[routes]]
slug = "to-sweep"
source = "bench-sweep"
destination = "sweep"
"#,
            port = opts.port,
            redis = opts.redis,
            prefix = key_prefix(),
            rport = receiver.port,
            http_port = drain_rx[0].port,
            https_port = drain_rx[1].port,
            sweep_port = drain_rx[2].port,
            ca = dir.join("ca.pem").display(),
            window = opts.window,
        ),
    )?;
    let db = &opts.database;
    pg_admin(&opts.pg, &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE); CREATE DATABASE {db}")).await?;
    let hookgate = Hookgate::start(&opts, &config, &dir.join("hookgate.log"))?;
    let result = phases(&opts, &hookgate, &receiver, &drain_rx).await;
    hookgate.stop();
    // Its idempotency keys would outlive the run by their TTL, and a shared Redis slows down with them.
    match remove_keys(&opts.redis, &key_prefix()).await {
        Ok(n) => eprintln!("bench: removed the run's {n} Redis keys"),
        Err(e) => eprintln!("bench: could not remove the run's Redis keys: {e:#}"),
    }
    let result = match result {
        Ok(mut partial) if opts.delivery_only => {
            finish(&opts, &mut partial, None);
            Ok(partial)
        }
        Ok(mut partial) => {
            eprintln!("bench: baseline (raw PostgreSQL COPY and batched INSERT of the stored rows)");
            let b = baseline::run(&db_url, opts.baseline_rows, 64, 4).await;
            if let Err(e) = &b {
                eprintln!("bench: baseline failed: {e:#}");
            }
            finish(&opts, &mut partial, b.ok());
            Ok(partial)
        }
        Err(e) => Err(e),
    };
    receiver.stop().await;
    for rx in drain_rx {
        rx.stop().await;
    }
    if let Err(e) = pg_admin(&opts.pg, &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).await {
        eprintln!("bench: could not drop {db}: {e}");
    }
    let log = std::fs::read_to_string(dir.join("hookgate.log")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    let partial = result.inspect_err(|_| eprintln!("bench: hookgate's log:\n{log}"))?;
    let json = partial.json;
    std::fs::write(&opts.out, serde_json::to_vec_pretty(&json)?)?;
    eprintln!("bench: results written to {}", opts.out.display());
    Ok(json)
}

/// The prefix of every Redis key of this run's hookgate.
fn key_prefix() -> String {
    format!("hookgate-bench-{}", std::process::id())
}

/// Removes every key hookgate wrote under `prefix` (`{prefix}:…`), by `SCAN` and `UNLINK` in batches: never a `KEYS`
/// that would hold Redis up. Answers how many it removed. The prefix must hold no glob characters.
pub async fn remove_keys(url: &str, prefix: &str) -> anyhow::Result<u64> {
    let client = redis::Client::open(url)?;
    let mut con = client.get_multiplexed_async_connection().await?;
    let (mut cursor, mut removed) = (0u64, 0u64);
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(10_000)
            .query_async(&mut con)
            .await?;
        if !keys.is_empty() {
            removed += redis::cmd("UNLINK").arg(&keys).query_async::<u64>(&mut con).await?;
        }
        if next == 0 {
            return Ok(removed);
        }
        cursor = next;
    }
}

/// The measured runs, kept for the table (printed once the baseline is known).
struct Partial {
    runs: Vec<(String, String, Stats)>,
    json: Value,
    lines: Vec<String>,
}

async fn phases(
    opts: &StandardOptions,
    hg: &Hookgate,
    rx: &Receiver,
    drain_rx: &[Receiver; 3],
) -> anyhow::Result<Partial> {
    let secs = Duration::from_secs(opts.secs);
    let url = format!("http://127.0.0.1:{}/ingest/bench", opts.port);
    let signing = Signing::Hmac { header: "X-Signature".into(), prefix: "sha256=".into(), secret: SECRET.into() };
    let w = Arc::new(Workload::new(&url, signing, Some("X-Request-Id".into()), opts.body_size)?);
    wait_ready(opts.port, Duration::from_secs(30)).await?;
    let pid = hg.pid();
    let mut runs = Vec::new();
    let mut lines = Vec::new();
    let mut accepted = 0u64;

    // Idle memory, once the process has settled.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_kib = rss_kib(pid).unwrap_or(0);
    eprintln!("bench: idle RSS {} MiB", mib(idle_kib));

    // `delivery_only`: the receiver's capacity, the backlog sweep and the full-pipeline phases, nothing else.
    let full = !opts.delivery_only;
    let (mut e2e_json, mut closed_json, mut max_rate) = (json!(null), Vec::new(), 0.0f64);
    let (mut drain_json, mut tls_json) = (json!(null), json!({}));
    if full {
        // Warm-up (connections, prepared statements), delivered before the latency run starts.
        let warm = closed_loop(w.clone(), 16, Duration::from_secs(2)).await;
        accepted += warm.ok_count();
        let _ = wait_delivered(rx, accepted, Duration::from_secs(3), Duration::from_secs(30)).await;

        // Ingest-to-delivered latency at a modest fixed rate, on an empty queue.
        eprintln!("bench: open loop at {} events/s for {secs:?}, ingest-to-delivered latency", opts.latency_rate);
        rx.state.take_latency();
        let s = open_loop(w.clone(), opts.latency_rate, 64, secs).await;
        accepted += s.ok_count();
        let (_, _) = wait_delivered(rx, accepted, Duration::from_secs(3), Duration::from_secs(15)).await;
        let e2e = rx.state.take_latency();
        lines.push(format!(
            "ingest-to-delivered at {} events/s (ms p50/p90/p99/p99.9/max): {}",
            opts.latency_rate,
            latency_text(&e2e)
        ));
        e2e_json = json!({"rate": opts.latency_rate, "latency": latency_json(&e2e), "ingest": stats_json(&s, None)});
        runs.push(("open loop (latency)".to_string(), format!("{}/s", opts.latency_rate), s));

        // Closed loop at three concurrencies (delivery on: each event also gets its delivery row and is delivered).
        for c in [16, 64, 256] {
            eprintln!("bench: closed loop, {c} connections, {secs:?}");
            let before = rx.state.received();
            let s = closed_loop(w.clone(), c, secs).await;
            let delivered = rx.state.received() - before;
            accepted += s.ok_count();
            max_rate = max_rate.max(s.ok_rate());
            let mut j = stats_json(&s, None);
            j["connections"] = json!(c);
            j["delivered_per_s_meanwhile"] = json!((delivered as f64 / s.elapsed.as_secs_f64()).round());
            lines.push(format!(
                "closed loop, {c} connections: ingested {:.0}/s, delivered {:.0}/s meanwhile",
                s.ok_rate(),
                delivered as f64 / s.elapsed.as_secs_f64().max(1e-9)
            ));
            closed_json.push(j);
            runs.push((format!("closed loop {c}"), format!("{c} conns"), s));
        }

        // Drain: the backlog the closed-loop runs left, delivered with no ingest going on.
        eprintln!("bench: draining the delivery backlog");
        let backlog = accepted.saturating_sub(rx.state.received());
        let (drained, took) = wait_delivered(rx, accepted, Duration::from_secs(3), Duration::from_secs(45)).await;
        let drain_rate = drained as f64 / took.as_secs_f64().max(1e-9);
        lines.push(format!(
            "drain: {drained} of a {backlog}-delivery backlog in {:.1} s = {drain_rate:.0} deliveries/s",
            took.as_secs_f64()
        ));
        drain_json = json!({"backlog": backlog, "delivered": drained, "seconds": took.as_secs_f64(),
                            "deliveries_per_s": drain_rate.round()});

        // The same kind of drain over HTTP and over HTTPS, one after the other, each alone: a backlog ingested for a
        // paused destination, then the destination resumed and emptied. (One backlog for both would favour whichever
        // drains second: by then the other's rows are gone from the pending set.)
        let fill = Duration::from_secs(opts.secs.clamp(1, 4));
        let mut rates = [0.0f64; 2];
        for (i, (scheme, rx)) in [("http", &drain_rx[0]), ("https", &drain_rx[1])].into_iter().enumerate() {
            let url = format!("http://127.0.0.1:{}/ingest/bench-{scheme}", opts.port);
            let signing =
                Signing::Hmac { header: "X-Signature".into(), prefix: "sha256=".into(), secret: SECRET.into() };
            let w = Arc::new(Workload::new(&url, signing, Some("X-Request-Id".into()), opts.body_size)?);
            eprintln!("bench: drain over {scheme}: ingesting for {fill:?} with its destination paused");
            let events = closed_loop(w, 64, fill).await.ok_count();
            resume(opts, &format!("drain-{scheme}")).await?;
            let (n, took) = wait_delivered(rx, events, Duration::from_secs(3), Duration::from_secs(60)).await;
            rates[i] = n as f64 / took.as_secs_f64().max(1e-9);
            tls_json[scheme] = json!({"backlog": events, "delivered": n, "seconds": took.as_secs_f64(),
                                  "deliveries_per_s": rates[i].round()});
        }
        tls_json["https_to_http"] = json!(rates[1] / rates[0].max(1e-9));
        lines.push(format!(
            "drain of {} deliveries over HTTP: {:.0}/s; of {} over HTTPS: {:.0}/s (HTTPS / HTTP = {:.2})",
            tls_json["http"]["backlog"],
            rates[0],
            tls_json["https"]["backlog"],
            rates[1],
            rates[1] / rates[0].max(1e-9)
        ));
    }

    let fill = Duration::from_secs(opts.secs.clamp(1, 4));
    // The receiver's own capacity, taken by this generator (keep-alive, 64 connections): what a drain is compared with.
    let sweep_rx = &drain_rx[2];
    let sink = Arc::new(Workload::new(
        &format!("http://127.0.0.1:{}/hook", sweep_rx.port),
        Signing::None,
        None,
        opts.body_size,
    )?);
    eprintln!("bench: the receiver's own capacity, 64 connections, {fill:?}");
    let capacity = closed_loop(sink, 64, fill).await.ok_rate();
    lines.push(format!("receiver's own capacity (this generator, 64 connections): {capacity:.0} requests/s"));
    lines.push(format!("every bench destination's max_in_flight: {}", opts.window));

    // The backlog sweep: the same drain from backlogs of each size, with PostgreSQL's CPU per delivery.
    let mut sweep_json = Vec::new();
    let (db, conn) = tokio_postgres::connect(&format!("{}/{}", opts.pg, opts.database), tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut expected = sweep_rx.state.received();
    for (step, &n) in opts.sweep.iter().filter(|n| **n > 0).enumerate() {
        eprintln!("bench: backlog sweep, {n} pending deliveries");
        seed_sweep(&db, step, n, opts.body_size).await?;
        expected += n;
        let (cpu0, hg0) = (postgres_cpu_secs(), process_cpu_secs(pid));
        let (resumed, base) = (Instant::now(), sweep_rx.state.received());
        resume(opts, "sweep").await?;
        // The rate counts from the first look that saw a delivery (a millisecond apart), over the deliveries after
        // it, to the last arrival: how soon a resumed destination starts is reported apart.
        while sweep_rx.state.received() == base && resumed.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let first_ms = resumed.elapsed().as_secs_f64() * 1000.0;
        let early = sweep_rx.state.received() - base;
        let (rest, took) = wait_delivered(sweep_rx, expected, Duration::from_secs(5), Duration::from_secs(300)).await;
        let (pg_cpu, hg_cpu) = (postgres_cpu_secs() - cpu0, process_cpu_secs(pid) - hg0);
        destination_action(opts, "sweep", "pause").await?;
        let delivered = early + rest;
        let rate = rest as f64 / took.as_secs_f64().max(1e-9);
        let per = 1000.0 * pg_cpu / (delivered.max(1) as f64);
        let per_hg = 1000.0 * hg_cpu / (delivered.max(1) as f64);
        lines.push(format!(
            "drain from {n} pending: first delivery {first_ms:.0} ms after the resume ({early} by then), then {rest} \
             more in {:.3} s = {rate:.0} deliveries/s ({:.2} of the receiver's capacity); CPU per delivery: PostgreSQL {per:.3} ms, \
             hookgate {per_hg:.3} ms",
            took.as_secs_f64(),
            rate / capacity.max(1.0)
        ));
        sweep_json.push(json!({"backlog": n, "delivered": delivered, "timed": rest, "seconds": took.as_secs_f64(),
                               "first_delivery_ms": first_ms,
                               "deliveries_per_s": rate.round(), "share_of_receiver": rate / capacity.max(1.0),
                               "postgres_cpu_ms_per_delivery": per, "hookgate_cpu_ms_per_delivery": per_hg}));
        expected = sweep_rx.state.received().max(expected);
    }
    if let (Some(first), Some(last)) = (sweep_json.first(), sweep_json.last()) {
        let ratio = last["deliveries_per_s"].as_f64().unwrap_or(0.0)
            / first["deliveries_per_s"].as_f64().unwrap_or(1.0).max(1.0);
        lines.push(format!("drain rate at {} pending / at {} pending: {ratio:.2}", last["backlog"], first["backlog"]));
    }

    let (mut open_json, mut over_json, mut over5_json, mut slow_json) =
        (json!(null), json!(null), json!(null), json!(null));
    let (mut after_kib, mut rss_first, mut rss_max, mut rss_last) = (0, 0, 0, 0);
    if full {
        // Open loop at 80 % of the best closed-loop rate.
        let rate80 = (max_rate * 0.8).round();
        eprintln!("bench: open loop at {rate80} events/s (80 % of max) for {secs:?}");
        let s80 = open_loop(w.clone(), rate80, 512, secs).await;
        accepted += s80.ok_count();
        open_json = stats_json(&s80, None);
        open_json["rate"] = json!(rate80);
        lines.push(format!(
            "open loop at {rate80}/s: service time (ms, from the actual send) {}",
            latency_text(&s80.service)
        ));
        runs.push(("open loop 80 % of max".to_string(), format!("{rate80}/s"), s80));
        let _ = wait_delivered(rx, accepted, Duration::from_secs(3), Duration::from_secs(30)).await;

        // Overload at 2x the maximum, memory sampled.
        let rate2x = (max_rate * 2.0).round();
        eprintln!("bench: overload, open loop at {rate2x} events/s for {secs:?}");
        let sampler = RssSampler::start(pid, Duration::from_millis(250));
        let so = open_loop(w.clone(), rate2x, opts.overload_connections, secs).await;
        let samples = sampler.stop();
        after_kib = {
            tokio::time::sleep(Duration::from_secs(2)).await;
            rss_kib(pid).unwrap_or(0)
        };
        rss_max = samples.iter().map(|s| s.1).max().unwrap_or(0);
        rss_first = samples.first().map_or(0, |s| s.1);
        rss_last = samples.last().map_or(0, |s| s.1);
        lines.push(format!(
        "overload at {rate2x}/s: goodput {:.0}/s = {:.2} of max {max_rate:.0}/s; 503 share {:.1} %, 503 latency (ms p50/p90/p99/p99.9/max) from due {}, service {}; all answers' service time {}",
        so.ok_rate(),
        so.ok_rate() / max_rate.max(1.0),
        100.0 * so.count(503) as f64 / so.total().max(1) as f64,
        latency_text(&so.unavailable),
        latency_text(&so.service_503),
        latency_text(&so.service),
    ));
        lines.push(format!(
            "RSS: idle {} MiB; under overload first {} / max {} / last {} MiB; 2 s after {} MiB",
            mib(idle_kib),
            mib(rss_first),
            mib(rss_max),
            mib(rss_last),
            mib(after_kib)
        ));
        over_json = stats_json(&so, None);
        over_json["rate"] = json!(rate2x);
        over_json["goodput_share_of_max"] = json!(so.ok_rate() / max_rate.max(1.0));
        over_json["rss_kib_samples"] = json!(samples);
        runs.push(("overload 2x max".to_string(), format!("{rate2x}/s"), so));

        // Overload at 5x the maximum, memory sampled the same way.
        let rate5x = (max_rate * 5.0).round();
        eprintln!("bench: overload, open loop at {rate5x} events/s for {secs:?}");
        let sampler = RssSampler::start(pid, Duration::from_millis(250));
        let s5 = open_loop(w.clone(), rate5x, opts.overload_connections, secs).await;
        let rss5_max = sampler.stop().iter().map(|s| s.1).max().unwrap_or(0);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss5_after = rss_kib(pid).unwrap_or(0);
        // Issue 14's bound: back near idle within 10 s of the load stopping.
        tokio::time::sleep(Duration::from_secs(8)).await;
        let rss5_after10 = rss_kib(pid).unwrap_or(0);
        lines.push(format!(
        "overload at {rate5x}/s: goodput {:.0}/s = {:.2} of max; 503 share {:.1} %, 503 service time (ms) {}; RSS max \
         {} MiB, 2 s after {} MiB, 10 s after {} MiB (idle {} MiB)",
        s5.ok_rate(),
        s5.ok_rate() / max_rate.max(1.0),
        100.0 * s5.count(503) as f64 / s5.total().max(1) as f64,
        latency_text(&s5.service_503),
        mib(rss5_max),
        mib(rss5_after),
        mib(rss5_after10),
        mib(idle_kib)
    ));
        over5_json = stats_json(&s5, None);
        over5_json["rate"] = json!(rate5x);
        over5_json["goodput_share_of_max"] = json!(s5.ok_rate() / max_rate.max(1.0));
        over5_json["rss_max_kib"] = json!(rss5_max);
        over5_json["rss_after_kib"] = json!(rss5_after);
        over5_json["rss_after_10s_kib"] = json!(rss5_after10);
        runs.push(("overload 5x max".to_string(), format!("{rate5x}/s"), s5));

        // Slow clients: connections that send their headers, then trickle a body one byte per second, while one
        // legitimate client posts signed events one at a time.
        eprintln!("bench: {} slow clients trickling bodies, one legitimate client for {secs:?}", opts.slow_clients);
        // First the overload's queue is let drain: a signed POST is answered 2xx again (or a minute passed).
        let settle = Instant::now();
        while closed_loop(w.clone(), 1, Duration::from_millis(200)).await.ok_count() == 0
            && settle.elapsed() < Duration::from_secs(60)
        {}
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let trickles: Vec<_> =
            (0..opts.slow_clients).map(|i| tokio::spawn(trickle(opts.port, i, stop.clone()))).collect();
        // Every slow client has connected (or failed to) before the legitimate one starts.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let legit = closed_loop(w.clone(), 1, secs).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let connected = futures::future::join_all(trickles).await.into_iter().filter(|r| matches!(r, Ok(true))).count();
        lines.push(format!(
        "{} slow clients ({connected} connected): the legitimate client's {} requests, {} answered 2xx, latency (ms) {}",
        opts.slow_clients,
        legit.total(),
        legit.ok_count(),
        latency_text(&legit.ok)
    ));
        slow_json = stats_json(&legit, None);
        slow_json["slow_clients"] = json!(opts.slow_clients);
        slow_json["slow_clients_connected"] = json!(connected);
        runs.push((format!("signed POSTs beside {} slow clients", opts.slow_clients), "1 conn".to_string(), legit));
    }

    // The full pipeline at fixed rates, last (a rate delivery cannot keep up with leaves a backlog that would weigh
    // on every later phase): ingest with delivery on, does delivery keep up (the backlog left when the load stops),
    // and how long does an event take from its send to its delivery?
    let mut pipeline_json = Vec::new();
    for &rate in opts.pipeline_rates.iter().filter(|r| **r > 0.0) {
        // What earlier phases accepted is delivered first: the receiver has been quiet for 3 s.
        let _ = wait_delivered(rx, u64::MAX, Duration::from_secs(3), Duration::from_secs(180)).await;
        let psecs = Duration::from_secs(opts.pipeline_secs);
        eprintln!("bench: full pipeline, open loop at {rate} events/s for {psecs:?}");
        rx.state.take_latency();
        let before = rx.state.received();
        let s = open_loop(w.clone(), rate, 512, psecs).await;
        let delivered = rx.state.received() - before;
        let left = s.ok_count().saturating_sub(delivered);
        let _ = wait_delivered(rx, before + s.ok_count(), Duration::from_secs(3), Duration::from_secs(180)).await;
        // A mark for scripts that measure the phase from outside (scripts/bench-cpu-per-event.sh).
        eprintln!("bench: full pipeline at {rate} events/s over, its events delivered");
        let e2e = rx.state.take_latency();
        let secs_run = s.elapsed.as_secs_f64().max(1e-9);
        lines.push(format!(
            "pipeline at {rate}/s for {} s: ingested {:.0}/s ({:.1} % refused), delivered {:.0}/s meanwhile, backlog left when the load stopped {left}; ingest-to-delivered (ms p50/p90/p99/p99.9/max) {}",
            opts.pipeline_secs,
            s.ok_rate(),
            100.0 * s.count(503) as f64 / s.total().max(1) as f64,
            delivered as f64 / secs_run,
            latency_text(&e2e)
        ));
        let mut j = stats_json(&s, None);
        j["rate"] = json!(rate);
        j["delivered_per_s_meanwhile"] = json!((delivered as f64 / secs_run).round());
        j["backlog_left"] = json!(left);
        j["delivery_latency"] = latency_json(&e2e);
        pipeline_json.push(j);
        runs.push((format!("pipeline {rate}/s"), format!("{rate}/s"), s));
    }

    let json = json!({
        "date": chrono::Utc::now().to_rfc3339(),
        "body_bytes": opts.body_size,
        "phase_seconds": opts.secs,
        "max_ingest_per_s": max_rate.round(),
        "idle_rss_kib": idle_kib,
        "delivery_latency": e2e_json,
        "closed_loop": closed_json,
        "drain": drain_json,
        "pipeline": pipeline_json,
        "drain_http_vs_https": tls_json,
        "receiver_capacity_per_s": capacity.round(),
        "backlog_sweep": sweep_json,
        "open_loop_80": open_json,
        "overload": over_json,
        "overload_5x": over5_json,
        "slow_clients": slow_json,
        "rss_after_overload_kib": after_kib,
        "rss_overload_first_max_last_kib": [rss_first, rss_max, rss_last],
        "env": std::env::vars().filter(|(k, _)| k.starts_with("HOOKGATE_")).collect::<std::collections::BTreeMap<_, _>>(),
    });
    Ok(Partial { runs, json, lines })
}

fn finish(opts: &StandardOptions, p: &mut Partial, b: Option<BaselineResult>) {
    let rows: Vec<Vec<String>> = p.runs.iter().map(|(n, o, s)| ingest_row(n, o, s, b.as_ref())).collect();
    println!("\nhookgate-bench standard set ({} B JSON bodies, {} s per phase)\n", opts.body_size, opts.secs);
    print!("{}", table(&INGEST_HEADER, &rows));
    println!();
    for l in &p.lines {
        println!("{l}");
    }
    if let Some(b) = &b {
        println!(
            "baseline, {} stored rows: COPY {:.0} rows/s; INSERT ({} rows per statement, {} connections) {:.0} rows/s",
            b.rows, b.copy_rows_per_s, b.insert_batch, b.insert_connections, b.insert_rows_per_s
        );
        let max = p.json["max_ingest_per_s"].as_f64().unwrap_or(0.0);
        println!("max ingest / COPY = {:.2}; / INSERT = {:.2}", max / b.copy_rows_per_s, max / b.insert_rows_per_s);
        p.json["baseline"] = json!({"rows": b.rows, "copy_rows_per_s": b.copy_rows_per_s.round(),
            "insert_rows_per_s": b.insert_rows_per_s.round(), "insert_batch": b.insert_batch,
            "insert_connections": b.insert_connections,
            "max_ingest_ratio_to_copy": max / b.copy_rows_per_s, "max_ingest_ratio_to_insert": max / b.insert_rows_per_s});
        for (key, i) in [("closed_loop", None), ("open_loop_80", Some(())), ("overload", Some(()))] {
            let apply = |v: &mut Value| {
                if let Some(r) = v["ok_per_s"].as_f64() {
                    v["ratio_to_copy"] = json!(r / b.copy_rows_per_s);
                    v["ratio_to_insert"] = json!(r / b.insert_rows_per_s);
                }
            };
            match (i, p.json[key].as_array_mut()) {
                (None, Some(arr)) => arr.iter_mut().for_each(apply),
                _ => apply(&mut p.json[key]),
            }
        }
    }
}
