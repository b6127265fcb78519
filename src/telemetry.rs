//! The one place that sets up logging, traces (OpenTelemetry over OTLP) and the Prometheus recorder.

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use hookgate_core::internal_events::{emit, BuildInfo, TracesNotExported};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider, SpanData, SpanExporter,
};
use opentelemetry_sdk::Resource;
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::TelemetrySettings;

/// Installs the global tracing subscriber: `json` or `pretty`, filtered by `RUST_LOG` (default `info`), without
/// traces.
pub fn init_subscriber<W>(format: &str, writer: W)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    init_subscriber_with(format, writer, None);
}

/// Installs the global tracing subscriber: the log lines (`json` or `pretty`, filtered by `RUST_LOG`, default
/// `info`) and, with a tracer `provider`, an OpenTelemetry layer that records hookgate's spans (whatever `RUST_LOG`
/// says: it filters the log lines only). A JSON line written inside a recorded span carries its `trace_id` and
/// `span_id`.
pub fn init_subscriber_with<W>(format: &str, writer: W, provider: Option<&SdkTracerProvider>)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt::layer().with_writer(writer);
    let logs = if format == "pretty" {
        logs.with_filter(filter).boxed()
    } else {
        logs.json().flatten_event(true).map_event_format(WithTraceId).with_filter(filter).boxed()
    };
    let traces = provider.map(|p| {
        // hookgate's own spans and the events in them (targets `hookgate`, `hookgate_actors`, …, by prefix); never a
        // dependency's (the exporter's HTTP client, above all).
        let ours = Targets::new().with_target("hookgate", tracing::Level::INFO);
        tracing_opentelemetry::layer().with_tracer(p.tracer("hookgate")).with_filter(ours)
    });
    // A second call (tests) keeps the first subscriber.
    let _ = tracing_subscriber::registry().with(logs).with(traces).try_init();
}

/// The JSON line format with the current span's `trace_id` and `span_id` first, when an OpenTelemetry span is
/// active (a log line outside any recorded span is written as before).
struct WithTraceId<F>(F);

impl<S, N, F> FormatEvent<S, N> for WithTraceId<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> std::fmt::Result {
        let ids = opentelemetry::Context::map_current(|cx| {
            let span = cx.span();
            let sc = span.span_context();
            sc.is_valid().then(|| (sc.trace_id(), sc.span_id()))
        });
        let Some((trace_id, span_id)) = ids else { return self.0.format_event(ctx, writer, event) };
        let mut line = String::with_capacity(256);
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => write!(writer, "{{\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\",{rest}"),
            None => writer.write_str(&line),
        }
    }
}

/// How often, at most, a failed export writes a log line.
const EXPORT_FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(60);
/// Spans exported in one request at most.
const MAX_EXPORT_BATCH: usize = 512;
/// How long spans wait to be batched.
const EXPORT_DELAY: Duration = Duration::from_secs(1);

/// The tracer provider of `telemetry`, exporting to its `otlp_endpoint` (OTLP/HTTP, protobuf) through a bounded
/// batch queue on a thread of its own; `None` when no endpoint is set (then nothing about traces runs).
/// `service.name` and `service.instance.id` (the node id) describe every span. Sampling is parent-based: a
/// producer's sampled context is recorded, traces hookgate starts are sampled at `sampling_ratio`.
pub fn tracer_provider(telemetry: &TelemetrySettings, node_id: &str) -> anyhow::Result<Option<SdkTracerProvider>> {
    let Some(url) = telemetry.traces_url()? else { return Ok(None) };
    // rustls on ring (`https://` collectors), installed before the exporter's client is built.
    hookgate_actors::tls::install_crypto_provider();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url)
        .with_timeout(Duration::from_millis(telemetry.export_timeout_ms))
        .build()
        .map_err(|e| anyhow::anyhow!("telemetry.otlp_endpoint: the exporter cannot be built: {e}"))?;
    let batch = BatchConfigBuilder::default()
        .with_max_queue_size(telemetry.max_queue_size)
        .with_max_export_batch_size(MAX_EXPORT_BATCH.min(telemetry.max_queue_size))
        .with_scheduled_delay(EXPORT_DELAY)
        .build();
    let processor = BatchSpanProcessor::builder(Reported::new(exporter)).with_batch_config(batch).build();
    let resource = Resource::builder_empty()
        .with_service_name(telemetry.service_name.clone())
        .with_attributes([
            KeyValue::new("service.instance.id", node_id.to_owned()),
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        ])
        .build();
    let ratio = telemetry.sampling_ratio;
    hookgate_actors::trace::enable(ratio);
    Ok(Some(
        SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio))))
            .with_resource(resource)
            .build(),
    ))
}

/// Exports what is still queued and stops the exporter's thread (at graceful shutdown; blocks up to the export
/// time-out, so it runs on a blocking thread).
pub async fn shutdown_tracing(provider: SdkTracerProvider) {
    let done = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    if let Ok(Err(e)) = done {
        tracing::warn!(message = "Spans still queued at shutdown could not be exported.", error = %e);
    }
}

/// An exporter whose failures are counted, and logged at most once per [`EXPORT_FAILURE_LOG_INTERVAL`]: a
/// collector that is away costs its spans, never ingest or delivery, and never a flood of log lines.
#[derive(Debug)]
struct Reported<E> {
    inner: E,
    /// When the last failure was logged, and the failures since.
    last_logged: Mutex<(Option<Instant>, u64)>,
}

impl<E> Reported<E> {
    fn new(inner: E) -> Self {
        Self { inner, last_logged: Mutex::new((None, 0)) }
    }

    fn failed(&self, spans: usize, error: &dyn std::fmt::Display) {
        let (log, unlogged) = {
            let mut last = self.last_logged.lock().unwrap_or_else(|e| e.into_inner());
            let due = last.0.is_none_or(|at| at.elapsed() >= EXPORT_FAILURE_LOG_INTERVAL);
            if due {
                let unlogged = std::mem::take(&mut last.1);
                last.0 = Some(Instant::now());
                (true, unlogged)
            } else {
                last.1 += 1;
                (false, 0)
            }
        };
        emit(TracesNotExported { spans, error, log, unlogged });
    }
}

impl<E: SpanExporter> SpanExporter for Reported<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        if let Err(e) = &result {
            self.failed(spans, e);
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
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
