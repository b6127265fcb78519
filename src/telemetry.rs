//! The one place that sets up logging and the Prometheus recorder.

use std::sync::OnceLock;

use hookgate_core::internal_events::{emit, BuildInfo};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::{fmt::MakeWriter, EnvFilter};

/// Installs the global tracing subscriber: `json` or `pretty`, filtered by `RUST_LOG` (default `info`).
pub fn init_subscriber<W>(format: &str, writer: W)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    let result = if format == "pretty" { builder.try_init() } else { builder.json().flatten_event(true).try_init() };
    // A second call (tests) keeps the first subscriber.
    let _ = result;
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The commit hookgate was built from (`git rev-parse`, by build.rs), or `unknown`.
pub const COMMIT: &str = env!("HOOKGATE_COMMIT");

/// Installs the process-wide Prometheus recorder with a `node` label on every series (first call wins).
pub fn install_metrics(node_id: &str) -> PrometheusHandle {
    HANDLE.get_or_init(|| build_recorder(Some(node_id))).clone()
}

/// The process-wide Prometheus recorder, installed (without a node label) on first use.
pub fn metrics_handle() -> PrometheusHandle {
    HANDLE.get_or_init(|| build_recorder(None)).clone()
}

fn process_collector() -> &'static metrics_process::Collector {
    static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();
    COLLECTOR.get_or_init(metrics_process::Collector::default)
}

/// Reads the process's own figures (CPU seconds, resident and virtual memory, open and maximum file descriptors,
/// threads, start time) into their `process_*` gauges; `/metrics` calls it before rendering.
pub fn collect_process_metrics() {
    process_collector().collect();
}

fn build_recorder(node_id: Option<&str>) -> PrometheusHandle {
    let mut builder = PrometheusBuilder::new();
    if let Some(node) = node_id {
        builder = builder.add_global_label("node", node);
    }
    let recorder = builder
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".into()),
            &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full("hookgate_writer_batch_size".into()),
                &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0],
            )
        })
        .expect("bucket lists are non-empty")
        .build_recorder();
    let handle = recorder.handle();
    if metrics::set_global_recorder(recorder).is_ok() {
        process_collector().describe();
        emit(BuildInfo { version: env!("CARGO_PKG_VERSION"), commit: COMMIT });
    }
    handle
}
