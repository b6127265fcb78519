//! `hookgate-bench`: load generator, fast receiver and raw-PostgreSQL baseline for measuring hookgate.
//!
//! - `standard`: the whole set against a hookgate it starts itself (what `make bench` runs).
//! - `ingest` (closed loop), `open` (fixed rate, no coordinated omission), `overload`, `delivery`: against a
//!   running server at `--url`; with `--sign none` any HTTP endpoint that takes a JSON POST can be measured.
//! - `baseline`: raw PostgreSQL COPY and batched INSERT of the rows in an `events` table.
//! - `flush-shapes`: the event writer's group-commit insert (UNNEST arrays) against binary COPY into a staging
//!   table then one statement, on the same rows in a scratch database, beside a raw COPY.
//! - `sink`: a receiver that answers 204 at once and reports requests per second.
//! - `chaos`: the chaos suite (`make chaos`; `--quick` in `make test`): faults under load against a hookgate, a
//!   PostgreSQL and a Redis it starts itself; every acknowledged event must be stored once and delivered.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use clap::{Args, Parser, Subcommand, ValueEnum};
use hookgate_bench::baseline;
use hookgate_bench::chaos::{self, ChaosOptions};
use hookgate_bench::flush_shapes::{self, FlushShapesOptions};
use hookgate_bench::load::{closed_loop, open_loop};
use hookgate_bench::procfs::{rss_kib, RssSampler};
use hookgate_bench::receiver::Receiver;
use hookgate_bench::report::{ingest_row, latency_json, latency_text, stats_json, table, INGEST_HEADER};
use hookgate_bench::standard::{self, StandardOptions};
use hookgate_bench::workload::{Signing, Workload};
use serde_json::json;

#[derive(Parser)]
#[command(about = "Measuring tools for hookgate")]
struct Cli {
    /// Load-generator threads (the server under test shares the machine: keep this small).
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum SignKind {
    /// hookgate's hmac_sha256 source: hex HMAC-SHA256 of the body in --sig-header after --sig-prefix.
    Hmac,
    /// Standard Webhooks: webhook-id, webhook-timestamp, webhook-signature (v1,<base64>); --secret is whsec_...
    Standard,
    /// No signature.
    None,
}

#[derive(Args, Clone)]
struct Target {
    /// Where to POST (plain http://).
    #[arg(long, default_value = "http://127.0.0.1:8080/ingest/bench")]
    url: String,
    #[arg(long, value_enum, default_value_t = SignKind::Hmac)]
    sign: SignKind,
    #[arg(long, default_value = standard::SECRET)]
    secret: String,
    #[arg(long, default_value = "X-Signature")]
    sig_header: String,
    #[arg(long, default_value = "sha256=")]
    sig_prefix: String,
    /// Header carrying each request's unique id ("" for none: the id is still in the body's "id" field).
    #[arg(long, default_value = "X-Request-Id")]
    id_header: String,
    /// Extra header sent with every request, "Name: value" (repeatable), e.g. a peer's Authorization.
    #[arg(long = "header")]
    headers: Vec<String>,
    /// Body size in bytes (JSON, padded).
    #[arg(long, default_value_t = 1024)]
    body_size: usize,
    /// Seconds per run.
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// Write the results as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
}

impl Target {
    fn workload(&self) -> anyhow::Result<Arc<Workload>> {
        let signing = match self.sign {
            SignKind::Hmac => Signing::Hmac {
                header: self.sig_header.clone(),
                prefix: self.sig_prefix.clone(),
                secret: self.secret.as_bytes().to_vec(),
            },
            SignKind::Standard => Signing::standard(&self.secret)?,
            SignKind::None => Signing::None,
        };
        let id_header = Some(self.id_header.clone()).filter(|h| !h.is_empty());
        let mut w = Workload::new(&self.url, signing, id_header, self.body_size)?;
        w.extra_headers = self.headers.clone();
        Ok(Arc::new(w))
    }
}

#[derive(Subcommand)]
enum Command {
    /// The standard set against a hookgate started here (fresh database, bench config, built-in receiver).
    Standard {
        #[arg(long, default_value = "target/release/hookgate")]
        hookgate_bin: PathBuf,
        #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
        pg: String,
        #[arg(long, default_value = "hookgate_bench_std")]
        database: String,
        /// The Redis hookgate uses; the run's keys (its own prefix) are removed from it at the end.
        #[arg(long, default_value = "redis://127.0.0.1:6379")]
        redis: String,
        #[arg(long, default_value_t = 18090)]
        port: u16,
        /// Seconds per measured phase.
        #[arg(long, default_value_t = 8)]
        secs: u64,
        #[arg(long, default_value_t = 1024)]
        body_size: usize,
        /// Rate of the ingest-to-delivered latency run.
        #[arg(long, default_value_t = 1000.0)]
        latency_rate: f64,
        /// Rows of the raw-PostgreSQL baseline.
        #[arg(long, default_value_t = 100_000)]
        baseline_rows: usize,
        /// Connections of the overload run.
        #[arg(long, default_value_t = 4096)]
        overload_connections: usize,
        /// Backlog sizes of the drain sweep (deliveries stored pending, then drained by one node); 0: no sweep.
        #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
        sweep: Vec<u64>,
        /// Connections of the slow-client phase (each trickles a body one byte per second).
        #[arg(long, default_value_t = 4096)]
        slow_clients: usize,
        /// Rates of the full-pipeline phases (ingest at that rate with delivery on); 0: none.
        #[arg(long, value_delimiter = ',', default_value = "5000,10000")]
        pipeline_rates: Vec<f64>,
        /// Seconds of each full-pipeline phase.
        #[arg(long, default_value_t = 60)]
        pipeline_secs: u64,
        /// Only the delivery phases: the receiver's capacity, the backlog sweep and the full pipeline.
        #[arg(long)]
        delivery_only: bool,
        /// Every bench destination's `max_in_flight` (past 384, raise the node's too:
        /// `HOOKGATE_DELIVERY__MAX_IN_FLIGHT`, of which one destination gets at most three quarters).
        #[arg(long, default_value_t = 256)]
        window: u32,
        #[arg(long, default_value = "hookgate-bench.json")]
        out: PathBuf,
    },
    /// Closed loop: maximum rate at each concurrency.
    Ingest {
        #[command(flatten)]
        target: Target,
        #[arg(long, value_delimiter = ',', default_value = "16,64,256")]
        connections: Vec<usize>,
        /// Also run the raw-PostgreSQL baseline on this database's events table and print ratios to it.
        #[arg(long)]
        baseline_pg: Option<String>,
    },
    /// Open loop at a fixed rate; latency from each request's due time (no coordinated omission).
    Open {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        rate: f64,
        #[arg(long, default_value_t = 512)]
        connections: usize,
    },
    /// Open loop past capacity: goodput, share and latency of 503s, and the server's RSS over time.
    Overload {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        rate: f64,
        #[arg(long, default_value_t = 1024)]
        connections: usize,
        /// The server's process id, for RSS samples.
        #[arg(long)]
        pid: Option<u32>,
    },
    /// Open loop at --rate with the built-in receiver on --receiver-port: ingest-to-delivered latency and
    /// deliveries/s (the server must route the events to http://127.0.0.1:PORT/).
    Delivery {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        #[arg(long, default_value_t = 19090)]
        receiver_port: u16,
    },
    /// Raw PostgreSQL COPY and batched INSERT of the rows of an events table.
    Baseline {
        #[arg(long)]
        pg: String,
        #[arg(long, default_value_t = 100_000)]
        rows: usize,
        #[arg(long, default_value_t = 64)]
        batch: usize,
        #[arg(long, default_value_t = 4)]
        connections: usize,
    },
    /// The event writer's insert of the same rows in two shapes: (a) today's UNNEST statement, (b) binary COPY into
    /// a temporary staging table then one statement; with (c) one raw binary COPY as the ceiling. Runs a, b, a, b
    /// per batch size on a scratch database (created, migrated and dropped here).
    FlushShapes {
        #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
        pg: String,
        /// The scratch database (dropped and created at the start, dropped at the end).
        #[arg(long, default_value = "hookgate_bench_flush")]
        database: String,
        /// Rows per run.
        #[arg(long, default_value_t = 100_000)]
        rows: usize,
        /// Batch sizes (rows per transaction).
        #[arg(long, value_delimiter = ',', default_value = "64,256,1024")]
        batch: Vec<usize>,
        /// Concurrent flushers, each on its own connection (the writer's `max_inflight_flushes`).
        #[arg(long, default_value_t = 4)]
        connections: usize,
        /// Write the results as JSON here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The chaos suite: kill -9 cycles, PostgreSQL and Redis outages, bad destinations, an orphan delivery and a
    /// slow jq route, each under load; checks that every acknowledged event is stored once and delivered. Starts
    /// its own PostgreSQL cluster, Redis and release hookgate; prints one table and `N passed, N failed`.
    Chaos {
        #[arg(long, default_value = "target/release/hookgate")]
        hookgate_bin: PathBuf,
        /// The reduced run (part of `make test`): 5 kill cycles, shorter loads, scenario 4's latency reported only.
        #[arg(long)]
        quick: bool,
        /// Seed of the random kill moments.
        #[arg(long)]
        seed: Option<u64>,
        /// Kill cycles of scenario 1 (default 30, or 5 with --quick).
        #[arg(long)]
        kill_cycles: Option<usize>,
        /// Run only these scenarios, e.g. `--only 2,4` (default: all five).
        #[arg(long, value_delimiter = ',')]
        only: Vec<u8>,
    },
    /// A receiver that answers 204 at once and reports requests per second.
    Sink {
        #[arg(long, default_value_t = 19090)]
        port: u16,
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// Serve HTTPS with this certificate chain (PEM, leaf first); needs --tls-key.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The certificate's private key (PEM).
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Print one line per request: method, path, webhook-id, the schemes of webhook-signature, body size.
        #[arg(long)]
        print: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::Sink { port, workers, tls_cert, tls_key, print } = cli.command {
        let tls = match (tls_cert, tls_key) {
            (Some(cert), Some(key)) => Some(hookgate_bench::tls::from_files(&cert, &key)?),
            _ => None,
        };
        return Ok(actix_rt::System::new().block_on(sink(port, workers, tls, print))?);
    }
    if let Command::Chaos { hookgate_bin, quick, seed, kill_cycles, only } = cli.command {
        // Two workers: the load, the receivers and the Redis proxy share them, and a blocking pg_ctl call must not
        // stall the others.
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(cli.threads.max(2)).enable_all().build()?;
        let opts = ChaosOptions { hookgate_bin, quick, seed, kill_cycles, only };
        let passed = rt.block_on(chaos::run(opts))?;
        // The runtime (and with it every server the suite started) is gone before the exit code is set.
        drop(rt);
        if !passed {
            std::process::exit(1);
        }
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(cli.threads.max(1)).enable_all().build()?;
    rt.block_on(run(cli.command))
}

fn write_json(out: &Option<PathBuf>, v: &serde_json::Value) -> anyhow::Result<()> {
    if let Some(path) = out {
        std::fs::write(path, serde_json::to_vec_pretty(v)?)?;
        eprintln!("results written to {}", path.display());
    }
    Ok(())
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Standard {
            hookgate_bin,
            pg,
            database,
            redis,
            port,
            secs,
            body_size,
            latency_rate,
            baseline_rows,
            overload_connections,
            sweep,
            slow_clients,
            pipeline_rates,
            pipeline_secs,
            delivery_only,
            window,
            out,
        } => {
            let opts = StandardOptions {
                hookgate_bin,
                pg,
                database,
                redis,
                port,
                secs,
                body_size,
                latency_rate,
                baseline_rows,
                overload_connections,
                sweep,
                slow_clients,
                pipeline_rates,
                pipeline_secs,
                delivery_only,
                window,
                out,
            };
            standard::run(opts).await?;
        }
        Command::Ingest { target, connections, baseline_pg } => {
            let w = target.workload()?;
            let _ = closed_loop(w.clone(), 16, Duration::from_secs(2)).await;
            let mut runs = Vec::new();
            for c in connections {
                eprintln!("closed loop, {c} connections, {} s", target.secs);
                runs.push((c, closed_loop(w.clone(), c, Duration::from_secs(target.secs)).await));
            }
            let b = match baseline_pg {
                Some(pg) => Some(baseline::run(&pg, 100_000, 64, 4).await?),
                None => None,
            };
            let rows: Vec<_> =
                runs.iter().map(|(c, s)| ingest_row("closed loop", &format!("{c} conns"), s, b.as_ref())).collect();
            print!("{}", table(&INGEST_HEADER, &rows));
            if let Some(b) = &b {
                println!("baseline: COPY {:.0} rows/s, INSERT {:.0} rows/s", b.copy_rows_per_s, b.insert_rows_per_s);
            }
            let runs_json: Vec<_> = runs
                .iter()
                .map(|(c, s)| {
                    let mut j = stats_json(s, b.as_ref());
                    j["connections"] = json!(c);
                    j
                })
                .collect();
            write_json(&target.out, &json!({"closed_loop": runs_json}))?;
        }
        Command::Open { target, rate, connections } => {
            let s = open_loop(target.workload()?, rate, connections, Duration::from_secs(target.secs)).await;
            print!("{}", table(&INGEST_HEADER, &[ingest_row("open loop", &format!("{rate}/s"), &s, None)]));
            println!("service time (ms, from the actual send): {}", latency_text(&s.service));
            write_json(&target.out, &json!({"open_loop": stats_json(&s, None), "rate": rate}))?;
        }
        Command::Overload { target, rate, connections, pid } => {
            let sampler = pid.map(|p| RssSampler::start(p, Duration::from_millis(250)));
            let idle = pid.and_then(rss_kib);
            let s = open_loop(target.workload()?, rate, connections, Duration::from_secs(target.secs)).await;
            let samples = sampler.map(|s| s.stop()).unwrap_or_default();
            print!("{}", table(&INGEST_HEADER, &[ingest_row("overload", &format!("{rate}/s"), &s, None)]));
            println!("503 latency (ms p50/p90/p99/p99.9/max): {}", latency_text(&s.unavailable));
            println!("503 service time (ms, from the actual send): {}", latency_text(&s.service_503));
            if let (Some(first), Some(last)) = (samples.first(), samples.last()) {
                let max = samples.iter().map(|s| s.1).max().unwrap_or(0);
                println!("RSS KiB: before {idle:?}, first {}, max {max}, last {}", first.1, last.1);
            }
            write_json(
                &target.out,
                &json!({"overload": stats_json(&s, None), "rate": rate, "rss_kib_samples": samples}),
            )?;
        }
        Command::Delivery { target, rate, receiver_port } => {
            let rx = Receiver::start(receiver_port, 1)?;
            let s = open_loop(target.workload()?, rate, 64, Duration::from_secs(target.secs)).await;
            let expected = s.ok_count();
            let until = std::time::Instant::now() + Duration::from_secs(30);
            while rx.state.received() < expected && std::time::Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let h = rx.state.take_latency();
            println!(
                "{} accepted, {} delivered; ingest-to-delivered ms p50/p90/p99/p99.9/max: {}",
                expected,
                rx.state.received(),
                latency_text(&h)
            );
            write_json(
                &target.out,
                &json!({"ingest": stats_json(&s, None), "delivered": rx.state.received(), "latency": latency_json(&h)}),
            )?;
            rx.stop().await;
        }
        Command::Baseline { pg, rows, batch, connections } => {
            let b = baseline::run(&pg, rows, batch, connections).await?;
            println!(
                "{} rows: COPY {:.0} rows/s; INSERT ({batch} per statement, {connections} connections) {:.0} rows/s",
                b.rows, b.copy_rows_per_s, b.insert_rows_per_s
            );
        }
        Command::FlushShapes { pg, database, rows, batch, connections, out } => {
            let opts = FlushShapesOptions { pg, database, rows, batches: batch, connections };
            let figures = flush_shapes::run(&opts).await?;
            flush_shapes::print(&figures, &opts);
            let batches: Vec<_> = figures.iter().map(|f| f.json()).collect();
            write_json(&out, &json!({"rows": rows, "connections": connections, "flush_shapes": batches}))?;
        }
        Command::Sink { .. } | Command::Chaos { .. } => unreachable!("handled in main"),
    }
    Ok(())
}

async fn sink(port: u16, workers: usize, tls: Option<rustls::ServerConfig>, print: bool) -> std::io::Result<()> {
    let count = Arc::new(AtomicU64::new(0));
    let reporter = count.clone();
    if !print {
        actix_rt::spawn(async move {
            let mut last = 0;
            loop {
                actix_rt::time::sleep(Duration::from_secs(1)).await;
                let now = reporter.load(Ordering::Relaxed);
                if now != last {
                    println!("sink: {} requests/s, {now} total", now - last);
                    last = now;
                }
            }
        });
    }
    let data = web::Data::from(count);
    let server = HttpServer::new(move || {
        App::new().app_data(data.clone()).default_service(web::to(
            move |c: web::Data<AtomicU64>, req: HttpRequest, body: web::Bytes| async move {
                c.fetch_add(1, Ordering::Relaxed);
                if print {
                    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("-");
                    let schemes: Vec<&str> =
                        header("webhook-signature").split(' ').filter_map(|s| s.split(',').next()).collect();
                    println!(
                        "sink: {} {} webhook-id={} signatures={} {} bytes",
                        req.method(),
                        req.path(),
                        header("webhook-id"),
                        schemes.join("+"),
                        body.len()
                    );
                }
                HttpResponse::NoContent().finish()
            },
        ))
    })
    .workers(workers);
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("sink: listening on {scheme}://127.0.0.1:{port}/");
    match tls {
        Some(config) => server.bind_rustls_0_23(("127.0.0.1", port), config)?.run().await,
        None => server.bind(("127.0.0.1", port))?.run().await,
    }
}
