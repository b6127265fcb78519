//! `hookgate-bench`: the measuring tools that drive hookgate from outside.
//!
//! `hookgate-bench sink --port P`: a fast local receiver for delivery benchmarks. It answers every request with
//! `204 No Content` at once and prints how many it received each second.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Measuring tools for hookgate")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A receiver that answers 204 at once and reports requests per second.
    Sink {
        #[arg(long, default_value_t = 19090)]
        port: u16,
        #[arg(long, default_value_t = 1)]
        workers: usize,
    },
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    match Cli::parse().command {
        Command::Sink { port, workers } => sink(port, workers).await,
    }
}

async fn sink(port: u16, workers: usize) -> std::io::Result<()> {
    let count = Arc::new(AtomicU64::new(0));
    let reporter = count.clone();
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
    let data = web::Data::from(count);
    HttpServer::new(move || {
        App::new().app_data(data.clone()).default_service(web::to(|c: web::Data<AtomicU64>| async move {
            c.fetch_add(1, Ordering::Relaxed);
            HttpResponse::NoContent().finish()
        }))
    })
    .workers(workers)
    .bind(("127.0.0.1", port))?
    .run()
    .await
}
