use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hookgate::config::Settings;
use hookgate::startup::{connect_pool, Application};
use hookgate::telemetry;
use hookgate_core::signing::SigningKey;
use hookgate_store::migrations;

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
    telemetry::init_subscriber(&settings.server.log_format, std::io::stdout);
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
        Command::GenerateSigningKey => unreachable!("handled before the configuration is loaded"),
    };
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
    tracing::info!(message = "Starting.", node = %node, version = env!("CARGO_PKG_VERSION"));
    let app = Application::build(settings).await?;
    app.run_until_stopped().await?;
    Ok(())
}
