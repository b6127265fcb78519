use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hookgate::cli::{self, CliError, Remote, TailLine};
use hookgate::config::Settings;
use hookgate::http::admin::events::{EventQuery, ReplayInput};
use hookgate::http::admin::tail::TailQuery;
use hookgate::startup::{connect_pool, Application};
use hookgate::telemetry;
use hookgate_core::signing::SigningKey;
use hookgate_core::state::DeliveryState;
use hookgate_store::migrations;
use uuid::Uuid;

/// jemalloc, not the system allocator: glibc keeps what a burst allocated (thousands of connections' buffers under
/// overload) for the life of the process; jemalloc gives pages back to the system a second after they were freed,
/// from a background thread (ADR-0017).
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read once when it starts: purge freed pages after a second, from its own thread.
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

/// hookgate: a self-hosted, durable webhook event gateway.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file (defaults, then this file, then HOOKGATE_* environment variables).
    #[arg(long, short, env = "HOOKGATE_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply migrations and declared sources, then serve ingest, health and metrics.
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Validate a configuration file (with the environment applied) and exit.
    CheckConfig { file: PathBuf },
    /// Print a new ed25519 signing key for a destination's `signing_keys` (`whsk_…`) and the public key its
    /// receivers verify `v1a` signatures with (`whpk_…`). Needs no configuration.
    GenerateSigningKey,
    /// Print the cluster's new events as they are stored (the admin API's live tail), one line each.
    Tail {
        /// Only events of this source (slug); with --outcomes, only the outcomes of its events.
        #[arg(long)]
        source: Option<String>,
        /// Only events of this type.
        #[arg(long = "type")]
        event_type: Option<String>,
        /// Only events for which this jq program (over the input route filters see) yields neither false nor null.
        #[arg(long)]
        filter: Option<String>,
        /// Also print every delivery attempt's outcome.
        #[arg(long)]
        outcomes: bool,
        /// One JSON object per line: {"event": "event"|"outcome", "data": …}.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// List or show stored events.
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// Replay an event: new deliveries to its routes' destinations (all, or those named).
    Replay {
        id: Uuid,
        /// Only to this destination (slug); may be given several times.
        #[arg(long = "destination")]
        destinations: Vec<String>,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Act on deliveries.
    Deliveries {
        #[command(subcommand)]
        command: DeliveriesCommand,
    },
}

#[derive(Subcommand)]
enum EventsCommand {
    /// Events, newest first, one line each.
    List {
        /// Only events of this source (slug).
        #[arg(long)]
        source: Option<String>,
        /// Only events with at least one delivery in this state (pending, delivered, dead, failed, cancelled).
        #[arg(long, value_parser = delivery_state)]
        status: Option<DeliveryState>,
        /// Only events of this type.
        #[arg(long = "type")]
        event_type: Option<String>,
        /// At most this many (1 to 500).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// The page after this cursor (printed after a full page).
        #[arg(long)]
        cursor: Option<Uuid>,
        /// Print the page as the API answers it (JSON).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// One event with its headers, body, deliveries and attempts (JSON).
    Get {
        id: Uuid,
        #[command(flatten)]
        remote: RemoteArgs,
    },
}

#[derive(Subcommand)]
enum DeliveriesCommand {
    /// Retry a dead or failed delivery.
    Retry {
        id: Uuid,
        #[command(flatten)]
        remote: RemoteArgs,
    },
}

/// Where the operator commands find hookgate; the token is read from HOOKGATE_TOKEN.
#[derive(clap::Args)]
struct RemoteArgs {
    /// The node's base URL.
    #[arg(long, env = "HOOKGATE_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
}

#[actix_web::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::GenerateSigningKey = cli.command {
        let secret = SigningKey::generate();
        let public = SigningKey::parse(&secret).expect("a generated key parses").public_key();
        println!("signing key (destination signing_keys, keep it secret): {secret}");
        println!("public key (for receivers, to verify v1a signatures):  {public}");
        return ExitCode::SUCCESS;
    }
    if let Some(code) = operator(&cli.command).await {
        return code;
    }
    let file = match &cli.command {
        Command::CheckConfig { file } => Some(file.clone()),
        _ => cli.config.clone(),
    };
    let settings = match Settings::load(file.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("hookgate: {e:#}");
            return ExitCode::from(2);
        }
    };
    // Traces are exported by `serve` only (and only with `telemetry.otlp_endpoint` set).
    let provider = match &cli.command {
        Command::Serve => match telemetry::tracer_provider(&settings.telemetry, &settings.server.node_id()) {
            Ok(provider) => provider,
            Err(e) => {
                eprintln!("hookgate: {e:#}");
                return ExitCode::from(2);
            }
        },
        _ => None,
    };
    telemetry::init_subscriber_with(&settings.server.log_format, std::io::stdout, provider.as_ref());
    let result = match cli.command {
        Command::CheckConfig { file } => {
            println!(
                "{}: configuration OK ({} source(s): {})",
                file.display(),
                settings.sources.len(),
                settings.sources.iter().map(|s| s.slug.as_str()).collect::<Vec<_>>().join(", ")
            );
            let longest_redis = settings.sources.iter().filter_map(|s| s.dedupe_window_secs).max().unwrap_or(0);
            println!(
                "dedupe windows: Redis {} s ≤ PostgreSQL {} s (retention.dedupe_window_secs) ≤ retention {} days",
                settings.redis.dedupe_ttl_secs.max(longest_redis),
                settings.retention.dedupe_window_secs,
                settings.retention.days.max(1)
            );
            match settings.telemetry.traces_url() {
                Ok(Some(url)) => {
                    println!("traces: exported to {url}, sampling ratio {}", settings.telemetry.sampling_ratio)
                }
                _ => println!("traces: not exported (telemetry.otlp_endpoint is not set)"),
            }
            match &settings.notifications.destination {
                None => println!("notifications: off"),
                Some(slug) if settings.destinations.iter().any(|d| d.slug == *slug) => {
                    println!("notifications: to destination {slug:?} (declared)")
                }
                Some(slug) => println!(
                    "notifications: to destination {slug:?}, not declared here: it must exist (created through the \
                     admin API) when hookgate starts, or the start fails"
                ),
            }
            Ok(())
        }
        Command::Migrate => migrate(&settings).await,
        Command::Serve => serve(settings).await,
        Command::GenerateSigningKey
        | Command::Tail { .. }
        | Command::Events { .. }
        | Command::Replay { .. }
        | Command::Deliveries { .. } => unreachable!("handled before the configuration is loaded"),
    };
    if let Some(provider) = provider {
        telemetry::shutdown_tracing(provider).await;
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(message = "hookgate stopped with an error.", error = %format!("{e:#}"));
            eprintln!("hookgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    let pool = connect_pool(&settings.database).await?;
    let applied = migrations::run(&pool).await?;
    println!("applied {} migration(s): {applied:?}", applied.len());
    Ok(())
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let node = settings.server.node_id();
    telemetry::install_metrics(&node);
    tracing::info!(
        message = "Starting.",
        node = %node,
        version = env!("CARGO_PKG_VERSION"),
        traces = settings.telemetry.traces_url().ok().flatten().is_some()
    );
    let app = Application::build(settings).await?;
    app.run_until_stopped().await?;
    Ok(())
}

/// Runs an operator command (one that speaks to a running node's admin API: no configuration, no database);
/// `None` for the others.
async fn operator(command: &Command) -> Option<ExitCode> {
    let result = match command {
        Command::Tail { source, event_type, filter, outcomes, json, remote } => {
            let query = TailQuery {
                source: source.clone(),
                event_type: event_type.clone(),
                filter: filter.clone(),
                outcomes: outcomes.then_some(true),
            };
            let remote = Remote::new(&remote.url);
            let ended = remote
                .tail(&query, |event| match cli::tail_line(&event, *json) {
                    Some(TailLine::Out(line)) => println!("{line}"),
                    Some(TailLine::Notice(line)) => eprintln!("{line}"),
                    None => {}
                })
                .await;
            ended.and_then(|()| Err(CliError::Other("the stream ended (the node is stopping)".into())))
        }
        Command::Events {
            command: EventsCommand::List { source, status, event_type, limit, cursor, json, remote },
        } => {
            let query = EventQuery {
                source: source.clone(),
                status: *status,
                event_type: event_type.clone(),
                limit: Some(*limit),
                cursor: *cursor,
                ..Default::default()
            };
            Remote::new(&remote.url).list_events(&query).await.map(|page| {
                if *json {
                    println!("{}", serde_json::to_string_pretty(&page).unwrap_or_default());
                } else {
                    for line in cli::event_lines(&page) {
                        println!("{line}");
                    }
                    if let Some(next) = page.next_cursor {
                        eprintln!("more: --cursor {next}");
                    }
                }
            })
        }
        Command::Events { command: EventsCommand::Get { id, remote } } => Remote::new(&remote.url)
            .get_event(*id)
            .await
            .map(|event| println!("{}", serde_json::to_string_pretty(&event).unwrap_or_default())),
        Command::Replay { id, destinations, remote } => {
            let input = ReplayInput { destinations: (!destinations.is_empty()).then(|| destinations.clone()) };
            Remote::new(&remote.url).replay(*id, &input).await.map(|result| {
                if result.deliveries.is_empty() {
                    eprintln!("no route takes this event now: nothing to deliver");
                }
                for d in &result.deliveries {
                    println!("{}", cli::delivery_line(d));
                }
            })
        }
        Command::Deliveries { command: DeliveriesCommand::Retry { id, remote } } => {
            Remote::new(&remote.url).retry_delivery(*id).await.map(|d| println!("{}", cli::delivery_line(&d)))
        }
        _ => return None,
    };
    Some(match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hookgate: {e}");
            ExitCode::FAILURE
        }
    })
}

fn delivery_state(text: &str) -> Result<DeliveryState, String> {
    DeliveryState::parse(text).ok_or_else(|| "one of pending, delivered, dead, failed, cancelled".into())
}
