//! Configuration: built-in defaults, then an optional TOML file, then `HOOKGATE_` environment variables.
//!
//! Environment variables use `__` between levels: `HOOKGATE_DATABASE__URL`, `HOOKGATE_SERVER__PORT`. Secrets (database
//! and Redis URLs, signing secrets) are [`SecretString`]s, whose `Debug` prints `[REDACTED]`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use hookgate_actors::janitor::RetentionSettings;
use hookgate_actors::notifier::NotificationSettings;
use hookgate_actors::pg_tls::{split_url, PgConnect, PgTls, PgTlsParams};
use hookgate_actors::tail::TailSettings;
use hookgate_actors::tls::{check as check_tls, pem_certificates, OutboundTls};
use hookgate_actors::{DeliveryConfig, RestartPolicy, WriterConfig};
use hookgate_core::catalog::{DestinationSpec, DestinationTls, RouteSpec, TlsFieldError, TlsFiles};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// Everything hookgate reads at start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub server: ServerSettings,
    #[serde(default)]
    pub database: DatabaseSettings,
    #[serde(default)]
    pub redis: RedisSettings,
    /// Group-commit tuning of the event writer.
    #[serde(default)]
    pub writer: WriterConfig,
    /// Restart back-off and budget, shared by all actors.
    #[serde(default)]
    pub supervision: RestartPolicy,
    /// Sources declared here are applied into PostgreSQL at start (matched by slug).
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
    /// Scheduler, deliverers, result writer, circuit breaker and SSRF allowlist.
    #[serde(default)]
    pub delivery: DeliveryConfig,
    /// Partitions, retention and the cluster's other periodic jobs.
    #[serde(default)]
    pub retention: RetentionSettings,
    /// Destinations declared here are applied into PostgreSQL at start (matched by slug).
    #[serde(default)]
    pub destinations: Vec<DestinationSpec>,
    /// Routes declared here are applied into PostgreSQL at start (matched by slug).
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
    /// The admin API (`/admin/v1`): its bearer tokens and secret-rotation grace.
    #[serde(default)]
    pub admin: AdminSettings,
    /// Traces exported over OTLP (off unless `otlp_endpoint` is set).
    #[serde(default)]
    pub telemetry: TelemetrySettings,
    /// The live tail (`GET /admin/v1/events/stream`): client buffers, heartbeats, body size shown, publishing.
    #[serde(default)]
    pub tail: TailSettings,
    /// Operational notifications about hookgate itself, delivered to one of its destinations.
    #[serde(default)]
    pub notifications: NotificationSettings,
}

/// OpenTelemetry traces: one trace per event (its ingest span, the attempts as its children; the writer's flush
/// linked to it), exported over OTLP/HTTP with protobuf. Without `otlp_endpoint` nothing is exported and no
/// OpenTelemetry layer is installed.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    /// The OTLP/HTTP collector, e.g. `http://otel-collector:4318` (spans are POSTed to its `/v1/traces`, unless the
    /// URL's path already ends with it). Unset: no export.
    pub otlp_endpoint: Option<String>,
    /// The share of new traces recorded, 0 to 1. Parent-based: a producer's sampled `traceparent` is always
    /// recorded, an unsampled one never; only traces hookgate starts are sampled by this ratio.
    pub sampling_ratio: f64,
    /// The `service.name` resource attribute (`service.instance.id` is the node id).
    pub service_name: String,
    /// Spans waiting for export at most; past it new spans are dropped (never waited for).
    pub max_queue_size: usize,
    /// Longest one export may take.
    pub export_timeout_ms: u64,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            sampling_ratio: 1.0,
            service_name: "hookgate".into(),
            max_queue_size: 2048,
            export_timeout_ms: 10_000,
        }
    }
}

impl TelemetrySettings {
    /// The URL spans are POSTed to: `otlp_endpoint` with `/v1/traces` appended (unless its path ends with it);
    /// `None` when export is off.
    pub fn traces_url(&self) -> anyhow::Result<Option<String>> {
        let Some(endpoint) = self.otlp_endpoint.as_deref().filter(|e| !e.trim().is_empty()) else { return Ok(None) };
        let mut url = url::Url::parse(endpoint.trim())
            .map_err(|e| anyhow::anyhow!("telemetry.otlp_endpoint is not a valid URL ({e}): {endpoint:?}"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
            anyhow::bail!("telemetry.otlp_endpoint must be an http:// or https:// URL with a host: {endpoint:?}");
        }
        if !url.username().is_empty() || url.password().is_some() {
            anyhow::bail!("telemetry.otlp_endpoint must not carry credentials");
        }
        if !url.path().ends_with("/v1/traces") {
            let path = format!("{}/v1/traces", url.path().trim_end_matches('/'));
            url.set_path(&path);
        }
        Ok(Some(url.to_string()))
    }

    fn validate(&self) -> anyhow::Result<()> {
        self.traces_url()?;
        if !(0.0..=1.0).contains(&self.sampling_ratio) {
            anyhow::bail!("telemetry.sampling_ratio must be between 0 and 1, not {}", self.sampling_ratio);
        }
        if self.service_name.trim().is_empty() {
            anyhow::bail!("telemetry.service_name must not be empty");
        }
        if self.max_queue_size == 0 || self.export_timeout_ms == 0 {
            anyhow::bail!("telemetry.max_queue_size and export_timeout_ms must be positive");
        }
        Ok(())
    }
}

/// The admin API. With no token configured it is closed: every request answers 401.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSettings {
    /// Bearer tokens, each with a role. Env: `HOOKGATE_ADMIN__TOKENS='[{token="...",role="write"}]'`.
    pub tokens: Vec<AdminToken>,
    /// How long a rotated-out secret stays valid beside its replacement, unless the request says otherwise.
    pub rotation_grace_secs: u64,
    /// Milliseconds between rounds of the admin background task (bulk replay jobs, expiry of rotated secrets).
    pub job_interval_ms: u64,
    /// The admin API's own PostgreSQL connections (its handlers and its background task), apart from
    /// `database.pool_size`: slow admin queries wait for each other, never for the writer or the delivery side.
    pub pool_size: usize,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self { tokens: Vec::new(), rotation_grace_secs: 24 * 3600, job_interval_ms: 500, pool_size: 4 }
    }
}

/// One admin bearer token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminToken {
    pub token: SecretString,
    pub role: AdminRole,
}

/// What a token may do: `read` may GET; `write` may also create, change, delete, replay, retry and cancel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminRole {
    Read,
    Write,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Address to listen on.
    pub host: String,
    /// Port to listen on; 0 picks a free one.
    pub port: u16,
    /// A second listener for `/metrics` and `/admin` (and the health endpoints): when set, the main port serves
    /// ingest and health only, so the public port need not expose them. 0 picks a free one.
    pub admin_port: Option<u16>,
    /// Address of the `admin_port` listener; default: `host`.
    pub admin_host: Option<String>,
    /// Destinations with a `destination` label of their own on per-destination metrics (the first ones by slug);
    /// the rest share `destination="other"`, so the series count stays bounded.
    pub metrics_destination_labels: usize,
    /// Seconds between samples of each destination's backlog and oldest pending delivery (one query per sample).
    pub metrics_destination_interval_secs: u64,
    /// actix-web worker threads; default: one per core.
    pub workers: Option<usize>,
    /// Longest an ingest request waits for its COMMIT before answering 503.
    pub ingest_timeout_ms: u64,
    /// Longest an ingest request's body may take to arrive, from the end of its headers; past it, 408 (and its
    /// admission permit is free again). actix-web bounds the headers themselves (5 s).
    pub body_timeout_ms: u64,
    /// Connections open at once on this node (ingest, admin and health alike), split evenly among the workers
    /// (rounded up); past it, new connections wait in the kernel's backlog until one closes.
    pub max_connections: usize,
    /// Connections the kernel completes and holds for hookgate to accept (the listening sockets' backlog; capped by
    /// `net.core.somaxconn`). Past it a client's handshake is dropped and retried a second later.
    pub listen_backlog: u32,
    /// Ceiling on any source's body size, in bytes.
    pub max_body_bytes: usize,
    /// Seconds advertised in `Retry-After` on 503.
    pub retry_after_secs: u64,
    /// Ingest requests being verified, routed and stored at once on this node, counted from the moment a request's
    /// body has arrived (a body still arriving holds no slot: slow clients cannot fill them); past it, 503.
    pub max_inflight_ingest: usize,
    /// Admission by time: while the oldest event waiting for the writer has waited longer than this, new ingest
    /// requests are refused with 503 before their bodies are read; 0 turns it off. See ADR-0016.
    pub admission_target_ms: u64,
    /// How long the writer's queue may stand past `admission_target_ms` before the first refusal: a database that
    /// stalls for a moment (a checkpoint's fsync) is ridden out, not answered with 503s. Once the node refused, the
    /// target alone decides until ten graces pass without a refusal; 0: no grace. See ADR-0026.
    pub admission_grace_ms: u64,
    /// Bytes of request bodies held by ingest requests in progress, from the first byte to the answer; a body whose
    /// next chunk does not fit is refused with 503. Default: an eighth of the cgroup memory limit (8 MiB … 1 GiB),
    /// or 64 MiB without one.
    pub max_ingest_bytes: Option<u64>,
    /// `json` (one object per line) or `pretty`.
    pub log_format: String,
    /// Milliseconds between health probes of PostgreSQL and Redis.
    pub health_interval_ms: u64,
    /// This node's id in leases, logs and metrics; default: the StatefulSet ordinal of `$HOSTNAME`
    /// (`hookgate-2` → `2`), else `$HOSTNAME`, else `hookgate`.
    pub node_id: Option<String>,
    /// After SIGTERM, readiness is false at once; ingest keeps serving this long (so endpoints can update) before
    /// it stops accepting.
    pub drain_delay_ms: u64,
    /// After ingest stops accepting: longest wait for requests and deliveries in flight; deliveries still running
    /// then give their leases back.
    pub shutdown_timeout_secs: u64,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8080,
            admin_port: None,
            admin_host: None,
            metrics_destination_labels: hookgate_core::internal_events::DEFAULT_DESTINATION_LABELS,
            metrics_destination_interval_secs: 15,
            workers: None,
            ingest_timeout_ms: 10_000,
            body_timeout_ms: 10_000,
            max_connections: 10_000,
            listen_backlog: 4_096,
            max_body_bytes: 4 * 1024 * 1024,
            retry_after_secs: 1,
            max_inflight_ingest: 4_096,
            admission_target_ms: 50,
            admission_grace_ms: 1000,
            max_ingest_bytes: None,
            log_format: "json".into(),
            health_interval_ms: 1_000,
            node_id: None,
            drain_delay_ms: 5_000,
            shutdown_timeout_secs: 30,
        }
    }
}

impl ServerSettings {
    /// `max_ingest_bytes`, or its default derived from the cgroup memory limit.
    pub fn ingest_bytes_bound(&self) -> u64 {
        self.max_ingest_bytes.unwrap_or_else(|| {
            hookgate_actors::admission::derived_byte_budget(hookgate_actors::admission::cgroup_memory_limit())
        })
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.max_ingest_bytes == Some(0) {
            anyhow::bail!("server.max_ingest_bytes must be positive");
        }
        if self.body_timeout_ms == 0 || self.max_connections == 0 || self.listen_backlog == 0 {
            anyhow::bail!("server.body_timeout_ms, max_connections and listen_backlog must be positive");
        }
        if self.metrics_destination_interval_secs == 0 {
            anyhow::bail!("server.metrics_destination_interval_secs must be positive");
        }
        if let Some(admin) = self.admin_port {
            if admin == self.port && admin != 0 && self.admin_host.as_deref().is_none_or(|h| h == self.host) {
                anyhow::bail!("server.admin_port must differ from server.port ({admin})");
            }
        }
        Ok(())
    }

    /// actix-web's limit is per worker: `max_connections` split among the workers (as many as actix-web starts).
    pub fn max_connections_per_worker(&self) -> usize {
        let workers = self
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get))
            .clamp(1, 512);
        self.max_connections.div_ceil(workers).max(1)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `postgres://user:password@host:port/dbname`, or libpq's `key=value` form. TLS as libpq's parameters say:
    /// `sslmode` (`disable`, `prefer` (the default), `require`, `verify-ca`, `verify-full`) and `sslrootcert` (a PEM
    /// file of CA certificates, or `system`); see `hookgate_actors::pg_tls`.
    pub url: SecretString,
    /// Pooled connections of the writer, the delivery side, the router and the janitor (the admin API has its own,
    /// `admin.pool_size`, and the readiness probe one of its own).
    pub pool_size: usize,
    /// Longest wait for a pooled connection (deadpool's default waits forever).
    pub pool_wait_timeout_ms: u64,
    /// Longest a new connection may take to open.
    pub connect_timeout_ms: u64,
    /// `statement_timeout` set on every connection; 0 disables it.
    pub statement_timeout_ms: u64,
    /// Apply pending migrations at start.
    pub migrate_on_start: bool,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: SecretString::from("postgres://postgres@127.0.0.1:5432/hookgate"),
            pool_size: 8,
            pool_wait_timeout_ms: 2_000,
            connect_timeout_ms: 2_000,
            statement_timeout_ms: 5_000,
            migrate_on_start: true,
        }
    }
}

impl DatabaseSettings {
    /// How every connection reaches PostgreSQL (the pools', the probe's, the LISTEN connections'): the driver's
    /// settings from `url`, with the timeouts and session options below, and the TLS connector its `sslmode` and
    /// `sslrootcert` ask for (reading that file, or the system's CA certificates when it verifies against them).
    pub fn pg_connect(&self) -> anyhow::Result<PgConnect> {
        let (mut config, tls) = self.parse_url()?;
        if tls.ignores_root_cert() {
            tracing::warn!(
                message = "database.url: sslrootcert is ignored, this sslmode never verifies the server's certificate \
                           (use sslmode=verify-full).",
                sslmode = %tls.mode
            );
        }
        config.connect_timeout(Duration::from_millis(self.connect_timeout_ms));
        config.application_name("hookgate");
        // A dead peer that never closes the socket is noticed in seconds, not hours.
        config.keepalives(true).keepalives_idle(Duration::from_secs(10)).tcp_user_timeout(Duration::from_secs(15));
        // A 2xx means committed to disk, whatever the server's or role's default says.
        // Without JIT: compiling a plan costs hundreds of milliseconds of CPU (measured: 0.56 s for the backlog
        // sample over 100,000 pending rows), which none of hookgate's statements wins back (ADR-0019).
        let mut options = String::from("-c synchronous_commit=on -c jit=off");
        if self.statement_timeout_ms > 0 {
            options.push_str(&format!(" -c statement_timeout={}", self.statement_timeout_ms));
        }
        config.options(options);
        let tls = PgTls::new(&tls).map_err(|e| anyhow::anyhow!("database.url: {e}"))?;
        Ok(PgConnect { config, tls })
    }

    /// `url` read: the driver's settings (its `sslmode` set to what the driver knows) and the TLS parameters. Reads
    /// no file.
    fn parse_url(&self) -> anyhow::Result<(tokio_postgres::Config, PgTlsParams)> {
        let (rest, tls) = split_url(self.url.expose_secret()).map_err(|e| anyhow::anyhow!("database.url: {e}"))?;
        // tokio-postgres's reasons may quote the URL's text, password included: not shown.
        let mut config: tokio_postgres::Config =
            rest.parse().map_err(|_| anyhow::anyhow!("database.url is not a valid PostgreSQL URL"))?;
        config.ssl_mode(tls.mode.driver());
        Ok((config, tls))
    }

    /// What `check-config` checks: the URL parses, and the `sslrootcert` file it uses is readable PEM.
    fn validate(&self) -> anyhow::Result<()> {
        let (_, tls) = self.parse_url()?;
        tls.check().map_err(|e| anyhow::anyhow!("database.url: {e}"))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSettings {
    /// `redis://host:port/db`, or `rediss://host:port/db` for TLS (the server's certificate always verified, for
    /// the URL's host name).
    pub url: SecretString,
    /// With `rediss://`: a PEM file of the CA certificates that verify Redis, instead of the system's.
    pub tls_ca_file: Option<PathBuf>,
    /// Prefix of every key hookgate writes.
    pub key_prefix: String,
    /// Longest wait for one Redis command before it counts as a miss.
    pub op_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    /// Lifetime of idempotency entries in Redis (the dedupe fast path's window).
    pub dedupe_ttl_secs: u64,
    pub mailbox_capacity: usize,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url: SecretString::from("redis://127.0.0.1:6379"),
            tls_ca_file: None,
            key_prefix: "hookgate".into(),
            op_timeout_ms: 50,
            connect_timeout_ms: 500,
            dedupe_ttl_secs: 24 * 3600,
            mailbox_capacity: 8_192,
        }
    }
}

impl RedisSettings {
    /// The client of every Redis connection (the cache's, the delivery limits'): TLS with `rediss://`, trusting
    /// `tls_ca_file` when it is set. Reads that file; connects to nothing.
    pub fn client(&self) -> anyhow::Result<redis::Client> {
        let invalid = || anyhow::anyhow!("redis.url is not a valid Redis URL");
        let info = redis::IntoConnectionInfo::into_connection_info(self.url.expose_secret()).map_err(|_| invalid())?;
        let tls = match info.addr() {
            redis::ConnectionAddr::TcpTls { insecure: true, .. } => {
                anyhow::bail!("redis.url: #insecure (no certificate verification) is not supported")
            }
            redis::ConnectionAddr::TcpTls { .. } => true,
            _ => false,
        };
        let Some(path) = &self.tls_ca_file else { return redis::Client::open(info).map_err(|_| invalid()) };
        if !tls {
            anyhow::bail!("redis.tls_ca_file is set, but redis.url does not use TLS (rediss://)");
        }
        let pem = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("redis.tls_ca_file: cannot read {}: {e}", path.display()))?;
        pem_certificates(&pem).map_err(|e| anyhow::anyhow!("redis.tls_ca_file: {}: {e}", path.display()))?;
        let certificates = redis::TlsCertificates { client_tls: None, root_cert: Some(pem.into_bytes()) };
        redis::Client::build_with_tls(info, certificates).map_err(|e| anyhow::anyhow!("redis.tls_ca_file: {e}"))
    }
}

use hookgate_core::notification::is_reserved;
use hookgate_core::source::{validate_slug, SourceBounds, SourceConfig};

/// The sections that environment variables may set (`HOOKGATE_<SECTION>__<KEY>`).
const ENV_SECTIONS: &[&str] = &[
    "server",
    "database",
    "redis",
    "writer",
    "supervision",
    "delivery",
    "retention",
    "admin",
    "telemetry",
    "tail",
    "notifications",
];

/// The secret settings that may also come from a file named by `HOOKGATE_<SECTION>__<KEY>_FILE` (a Kubernetes
/// Secret mounted as a file), as dotted keys.
pub const SECRET_FILE_SETTINGS: &[&str] = &["database.url", "redis.url", "admin.tokens", "delivery.proxy"];

/// The settings that `*_FILE` variables among `vars` name, read from their files: (dotted key, value). The text of
/// a file is the value with its trailing line break removed; `admin.tokens` (a list) is parsed the way its
/// environment variable is. A setting given both ways, or a file that cannot be read, is an error naming the
/// variable (never the file's content).
pub fn secret_files(
    vars: impl Iterator<Item = (String, String)>,
) -> anyhow::Result<Vec<(&'static str, figment::value::Value)>> {
    let vars: Vec<(String, String)> = vars.collect();
    let mut found = Vec::new();
    for key in SECRET_FILE_SETTINGS {
        let plain = format!("HOOKGATE_{}", key.to_ascii_uppercase().replace('.', "__"));
        let file_var = format!("{plain}_FILE");
        let Some((_, path)) = vars.iter().find(|(k, _)| *k == file_var) else { continue };
        if vars.iter().any(|(k, _)| *k == plain) {
            anyhow::bail!("{plain} and {file_var} are both set: give the setting one way");
        }
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{file_var}: cannot read {path}: {e}"))?;
        let text = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text);
        let value = if text.trim_start().starts_with('[') {
            text.parse::<figment::value::Value>().map_err(|_| anyhow::anyhow!("{file_var}: not a list"))?
        } else {
            figment::value::Value::from(text.to_owned())
        };
        found.push((*key, value));
    }
    Ok(found)
}

/// The secrets of declared sources and destinations read from files, as Kubernetes mounts Secrets: in a source's
/// `verification`, `secret_file` (or `password_file`, `token_file`, `key_file`: the field the kind takes) instead of
/// the secret; in a destination, `signing_secrets_file` and `signing_keys_file` instead of the lists. A file holds
/// one secret per line (two lines: both valid, as while rotating); blank lines are ignored. Naming a secret both
/// ways, or a file that cannot be read or holds none, is an error naming the field and the path, never the content.
fn declared_secrets_from_files(mut fig: Figment) -> anyhow::Result<Figment> {
    use figment::value::{Dict, Value};

    fn read_lines(what: &str, path: &Value) -> anyhow::Result<Vec<String>> {
        let path = path.as_str().ok_or_else(|| anyhow::anyhow!("{what}: must be a file path"))?;
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{what}: cannot read {path}: {e}"))?;
        let lines: Vec<String> = text
            .lines()
            .map(|l| l.trim_end_matches('\r'))
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect();
        if lines.is_empty() {
            anyhow::bail!("{what}: {path} holds no secret");
        }
        Ok(lines)
    }
    /// Replaces `{field}_file` in `dict` by `field` (the file's lines; one line as a string when `one_as_string`).
    fn replace(dict: &mut Dict, field: &str, one_as_string: bool, what: &str) -> anyhow::Result<()> {
        let file_field = format!("{field}_file");
        let Some(path) = dict.remove(&file_field) else { return Ok(()) };
        if dict.contains_key(field) {
            anyhow::bail!("{what}: {field} and {file_field} are both set: give the secret one way");
        }
        let lines = read_lines(&format!("{what}.{file_field}"), &path)?;
        let value = match lines.len() {
            1 if one_as_string => Value::from(lines[0].clone()),
            _ => Value::from(lines),
        };
        dict.insert(field.to_owned(), value);
        Ok(())
    }
    let name = |i: usize, item: &Dict, section: &str| match item.get("slug").and_then(Value::as_str) {
        Some(slug) => format!("{section}[{i}] ({slug})"),
        None => format!("{section}[{i}]"),
    };
    if let Ok(Value::Array(tag, mut sources)) = fig.find_value("sources") {
        for (i, source) in sources.iter_mut().enumerate() {
            let Value::Dict(_, source) = source else { continue };
            let what = format!("{}.verification", name(i, source, "sources"));
            if let Some(Value::Dict(_, verification)) = source.get_mut("verification") {
                for field in hookgate_core::source::SECRET_FIELDS {
                    replace(verification, field, true, &what)?;
                }
            }
        }
        fig = fig.merge(Serialized::default("sources", Value::Array(tag, sources)));
    }
    if let Ok(Value::Array(tag, mut destinations)) = fig.find_value("destinations") {
        for (i, destination) in destinations.iter_mut().enumerate() {
            let Value::Dict(_, destination) = destination else { continue };
            let what = name(i, destination, "destinations");
            replace(destination, "signing_secrets", false, &what)?;
            replace(destination, "signing_keys", false, &what)?;
        }
        fig = fig.merge(Serialized::default("destinations", Value::Array(tag, destinations)));
    }
    Ok(fig)
}

impl ServerSettings {
    pub fn node_id(&self) -> String {
        node_id_from(self.node_id.as_deref(), std::env::var("HOSTNAME").ok().as_deref())
    }
}

/// The configured id, else the StatefulSet ordinal at the end of the host name (`hookgate-2` → `2`), else the host
/// name, else `hookgate`.
pub fn node_id_from(configured: Option<&str>, hostname: Option<&str>) -> String {
    if let Some(id) = configured.filter(|s| !s.is_empty()) {
        return id.to_owned();
    }
    let Some(host) = hostname.filter(|h| !h.is_empty()) else { return "hookgate".into() };
    match host.rsplit_once('-') {
        Some((_, ordinal)) if !ordinal.is_empty() && ordinal.bytes().all(|b| b.is_ascii_digit()) => ordinal.to_owned(),
        _ => host.to_owned(),
    }
}

impl Settings {
    /// Defaults, then `file` (when given), then `HOOKGATE_*` environment variables.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let mut fig = Figment::from(Serialized::defaults(EmptyRoot {}));
        if let Some(path) = file {
            if !path.exists() {
                anyhow::bail!("configuration file {} does not exist", path.display());
            }
            fig = fig.merge(Toml::file(path));
        }
        // Only variables naming a section are settings: HOOKGATE_CONFIG names the file (read by the CLI), and
        // Kubernetes injects HOOKGATE_PORT, HOOKGATE_SERVICE_HOST, … for a Service called `hookgate`.
        // (The filter sees keys after `split`, so levels are separated by dots.)
        fig = fig.merge(Env::prefixed("HOOKGATE_").split("__").filter(|key| {
            let key = key.as_str().to_ascii_lowercase();
            key.split_once('.').is_some_and(|(section, _)| ENV_SECTIONS.contains(&section))
                && !SECRET_FILE_SETTINGS.iter().any(|s| key.strip_suffix("_file") == Some(s))
        }));
        for (key, value) in secret_files(std::env::vars())? {
            fig = fig.merge(Serialized::default(key, value));
        }
        let fig = declared_secrets_from_files(fig)?;
        let settings: Settings = fig.extract().map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Parses TOML text on top of the defaults, without the environment (for tests and `check-config`).
    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        let settings: Settings = declared_secrets_from_files(Figment::from(Toml::string(text)))?
            .extract()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks what serde cannot: slugs, limits, and that URLs parse.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.server.validate()?;
        self.database.validate()?;
        self.redis.client()?;
        let w = &self.writer;
        if w.batch_max == 0 || w.max_inflight_flushes == 0 || w.max_pending == 0 || w.mailbox_capacity == 0 {
            anyhow::bail!("writer.batch_max, max_inflight_flushes, max_pending and mailbox_capacity must be positive");
        }
        if w.max_pending_bytes == Some(0) {
            anyhow::bail!("writer.max_pending_bytes must be positive");
        }
        let t = &self.tail;
        if t.buffer == 0 || t.max_clients == 0 || t.publish_queue == 0 || t.heartbeat_ms == 0 || t.max_body_bytes == 0 {
            anyhow::bail!("tail.buffer, max_clients, publish_queue, heartbeat_ms and max_body_bytes must be positive");
        }
        let d = &self.delivery;
        if d.deliverer_threads > d.deliverers.max(1) {
            anyhow::bail!(
                "delivery.deliverer_threads ({}) exceeds delivery.deliverers ({}): each thread needs a deliverer of its \
                 own; raise delivery.deliverers",
                d.deliverer_threads,
                d.deliverers
            );
        }
        if self.database.pool_size == 0 || self.admin.pool_size == 0 {
            anyhow::bail!("database.pool_size and admin.pool_size must be positive");
        }
        let fraction = self.retention.vacuum_dead_fraction;
        if !(0.0..=100.0).contains(&fraction) {
            anyhow::bail!("retention.vacuum_dead_fraction must be between 0 and 100, not {fraction}");
        }
        self.validate_dedupe_windows()?;
        self.telemetry.validate()?;
        let mut seen = std::collections::HashSet::new();
        for s in &self.sources {
            if !seen.insert(s.slug.as_str()) {
                anyhow::bail!("source {:?} is declared twice", s.slug);
            }
            s.validate(&self.source_bounds()).map_err(|e| anyhow::anyhow!("source {:?}: {e}", s.slug))?;
        }
        for t in &self.admin.tokens {
            if t.token.expose_secret().len() < 16 {
                anyhow::bail!("admin.tokens: every token must be at least 16 characters");
            }
        }
        self.notifications.validate().map_err(anyhow::Error::msg)?;
        self.validate_delivery()
    }

    /// What every source is checked against, in the configuration file and in the admin API alike.
    pub fn source_bounds(&self) -> SourceBounds {
        SourceBounds {
            max_body_bytes: self.server.max_body_bytes,
            dedupe_window_secs: self.retention.dedupe_window_secs,
        }
    }

    /// The dedupe windows nest, so that a remembered key always names a stored event and means the same wherever it
    /// is found: Redis's (`redis.dedupe_ttl_secs`; each source's `dedupe_window_secs`, checked with the source) ≤
    /// PostgreSQL's (`retention.dedupe_window_secs`) ≤ the retention (`retention.days`).
    fn validate_dedupe_windows(&self) -> anyhow::Result<()> {
        let (postgres, days) = (self.retention.dedupe_window_secs, self.retention.days.max(1));
        let kept = u64::from(days) * 86_400;
        if postgres == 0 {
            anyhow::bail!("retention.dedupe_window_secs must be positive");
        }
        if postgres > kept {
            anyhow::bail!(
                "retention.dedupe_window_secs ({postgres}) must be at most retention.days ({days} days = {kept} s): a \
                 key PostgreSQL remembers would name an event retention already dropped"
            );
        }
        let redis = self.redis.dedupe_ttl_secs;
        if redis > postgres {
            anyhow::bail!(
                "redis.dedupe_ttl_secs ({redis}) must be at most retention.dedupe_window_secs ({postgres}): a key Redis \
                 still remembers would be a duplicate PostgreSQL has forgotten"
            );
        }
        Ok(())
    }

    /// Each declared destination's TLS material, read from the files its `tls` names (in declaration order).
    pub fn destination_tls(&self) -> anyhow::Result<Vec<DestinationTls>> {
        self.destinations
            .iter()
            .map(|d| read_tls_files(d.tls.as_ref()).map_err(|e| anyhow::anyhow!("destination {:?}: {e}", d.slug)))
            .collect()
    }

    fn validate_delivery(&self) -> anyhow::Result<()> {
        let policy = self.delivery.ssrf_policy();
        self.delivery.egress_proxy()?;
        let mut seen = std::collections::HashSet::new();
        // Checks each destination's own TLS material (without loading any shared trust roots).
        let checker = self.destinations.iter().any(|d| d.tls.is_some()).then(OutboundTls::for_checks).transpose()?;
        for d in &self.destinations {
            validate_slug(&d.slug).map_err(|e| anyhow::anyhow!("destination {:?}: {e}", d.slug))?;
            if !seen.insert(d.slug.as_str()) {
                anyhow::bail!("destination {:?} is declared twice", d.slug);
            }
            d.validate(&policy).map_err(|e| anyhow::anyhow!("destination {:?}: {e}", d.slug))?;
            if let (Some(files), Some(checker)) = (&d.tls, &checker) {
                let tls = read_tls_files(Some(files)).map_err(|e| anyhow::anyhow!("destination {:?}: {e}", d.slug))?;
                check_tls(checker, &tls, TLS_FILE_FIELDS, std::time::SystemTime::now())
                    .map_err(|e| anyhow::anyhow!("destination {:?}: {e}", d.slug))?;
            }
        }
        let sources: std::collections::HashSet<&str> = self.sources.iter().map(|s| s.slug.as_str()).collect();
        let mut seen_routes = std::collections::HashSet::new();
        for r in &self.routes {
            validate_slug(&r.slug).map_err(|e| anyhow::anyhow!("route {:?}: {e}", r.slug))?;
            if is_reserved(&r.slug) {
                anyhow::bail!("route {:?}: the slug is reserved for hookgate's own notifications", r.slug);
            }
            if !seen_routes.insert(r.slug.as_str()) {
                anyhow::bail!("route {:?} is declared twice", r.slug);
            }
            if !sources.contains(r.source.as_str()) {
                anyhow::bail!("route {:?}: source {:?} is not declared", r.slug, r.source);
            }
            if !seen.contains(r.destination.as_str()) {
                anyhow::bail!("route {:?}: destination {:?} is not declared", r.slug, r.destination);
            }
            r.compile().map_err(|e| anyhow::anyhow!("route {:?}: {e}", r.slug))?;
        }
        Ok(())
    }
}

/// The names of a destination's TLS fields in the configuration file.
const TLS_FILE_FIELDS: (&str, &str, &str) = ("ca_file", "cert_file", "key_file");

/// Reads the PEM files a destination's `tls` names; an unreadable file is an error naming its field.
fn read_tls_files(files: Option<&TlsFiles>) -> Result<DestinationTls, TlsFieldError> {
    let Some(files) = files else { return Ok(DestinationTls::default()) };
    let read = |path: &Option<std::path::PathBuf>, field: &str| {
        path.as_ref()
            .map(|p| {
                std::fs::read_to_string(p)
                    .map_err(|e| TlsFieldError::new(field, format!("cannot read {}: {e}", p.display())))
            })
            .transpose()
    };
    let (ca, cert, key) = TLS_FILE_FIELDS;
    let tls = DestinationTls {
        ca_pem: read(&files.ca_file, ca)?,
        cert_pem: read(&files.cert_file, cert)?,
        key_pem: read(&files.key_file, key)?.map(SecretString::from),
    };
    tls.check_pairing(TLS_FILE_FIELDS)?;
    Ok(tls)
}

/// Serializes to an empty table: figment then falls back to each field's serde default.
#[derive(Serialize)]
struct EmptyRoot {}

#[cfg(test)]
mod tests {
    use super::*;
    use hookgate_core::source::{EventTypeConfig, IdempotencyConfig};

    const EXAMPLE: &str = r#"
        [database]
        url = "postgres://hookgate:hunter2@db.internal/hookgate"
        [[sources]]
        slug = "github"
        require_json = true
        idempotency = { from = "header", header = "X-GitHub-Delivery" }
        verification = { kind = "hmac_sha256", header = "X-Hub-Signature-256", prefix = "sha256=", secret = "s3cr3t-value" }
    "#;

    #[test]
    fn defaults_apply_where_the_file_is_silent() {
        let s = Settings::from_toml(EXAMPLE).unwrap();
        assert_eq!(s.server.port, 8080);
        assert_eq!(s.writer.batch_max, WriterConfig::default().batch_max);
        assert_eq!(s.sources[0].max_body_bytes, 1024 * 1024);
        assert!(s.sources[0].require_json);
    }

    #[test]
    fn the_node_id_comes_from_config_then_the_statefulset_ordinal_then_the_host_name() {
        assert_eq!(node_id_from(Some("n7"), Some("hookgate-2")), "n7");
        assert_eq!(node_id_from(None, Some("hookgate-2")), "2");
        assert_eq!(node_id_from(None, Some("hookgate-prod-12")), "12");
        assert_eq!(node_id_from(None, Some("laptop")), "laptop");
        assert_eq!(node_id_from(None, Some("web-")), "web-");
        assert_eq!(node_id_from(None, None), "hookgate");
    }

    #[test]
    fn the_admin_port_must_be_another_port() {
        let mut server = ServerSettings { admin_port: Some(8080), ..ServerSettings::default() };
        let err = server.validate().unwrap_err().to_string();
        assert!(err.contains("server.admin_port must differ from server.port (8080)"), "{err}");
        server.admin_host = Some("10.0.0.1".into());
        server.validate().expect("the same port on another address");
        server.admin_host = None;
        server.admin_port = Some(9090);
        server.validate().expect("another port");
        server.admin_port = Some(0);
        server.port = 0;
        server.validate().expect("two free ports picked at start");
    }

    #[test]
    fn debug_output_never_contains_secrets() {
        let s = Settings::from_toml(EXAMPLE).unwrap();
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(!dbg.contains("s3cr3t-value"), "{dbg}");
        assert!(dbg.contains("github"));
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn secret_settings_come_from_files_named_by_file_variables() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("hookgate.toml", EXAMPLE)?;
            jail.create_file("db-url", "postgres://hookgate:from-a-file@db.secret/hookgate\n")?;
            jail.create_file("redis-url", "redis://:pw@cache.secret:6379\r\n")?;
            jail.create_file("tokens", r#"[{token="a-token-from-a-file-0001",role="write"}]"#)?;
            jail.set_env("HOOKGATE_DATABASE__URL_FILE", "db-url");
            jail.set_env("HOOKGATE_REDIS__URL_FILE", "redis-url");
            jail.set_env("HOOKGATE_ADMIN__TOKENS_FILE", "tokens");
            let s = Settings::load(Some(Path::new("hookgate.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(s.database.url.expose_secret(), "postgres://hookgate:from-a-file@db.secret/hookgate");
            assert_eq!(s.redis.url.expose_secret(), "redis://:pw@cache.secret:6379");
            assert_eq!(s.admin.tokens.len(), 1);

            jail.set_env("HOOKGATE_REDIS__URL_FILE", "missing");
            let missing = Settings::load(Some(Path::new("hookgate.toml"))).unwrap_err().to_string();
            assert!(missing.contains("HOOKGATE_REDIS__URL_FILE: cannot read missing"), "{missing}");
            jail.set_env("HOOKGATE_DATABASE__URL", "postgres://other@db/hookgate");
            let both = Settings::load(Some(Path::new("hookgate.toml"))).unwrap_err().to_string();
            assert!(both.contains("HOOKGATE_DATABASE__URL and HOOKGATE_DATABASE__URL_FILE are both set"), "{both}");
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn declared_signing_secrets_come_from_files() {
        use hookgate_core::signing::SigningKey;
        let key = SigningKey::generate();
        figment::Jail::expect_with(|jail| {
            let config = EXAMPLE.replace(r#"secret = "s3cr3t-value""#, r#"secret_file = "github-secret""#)
                + r#"
                [[destinations]]
                slug = "orders"
                url = "https://hooks.example.com/orders"
                signing_secrets_file = "orders-secrets"
                signing_keys_file = "orders-keys"
                "#;
            jail.create_file("hookgate.toml", &config)?;
            jail.create_file("github-secret", "from-a-mounted-file\n")?;
            jail.create_file(
                "orders-secrets",
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\r\n\nwhsec_dGhlLW5ldy1zZWNyZXQtb2YtMzItYnl0ZXMhIQ==\n",
            )?;
            jail.create_file("orders-keys", &format!("{key}\n"))?;
            let s = Settings::load(Some(Path::new("hookgate.toml"))).map_err(|e| e.to_string())?;
            let secrets: Vec<&str> = s.sources[0].verification.secrets().iter().map(|x| x.expose_secret()).collect();
            assert_eq!(secrets, ["from-a-mounted-file"]);
            assert_eq!(
                s.destinations[0].signing_secrets,
                ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_dGhlLW5ldy1zZWNyZXQtb2YtMzItYnl0ZXMhIQ=="]
            );
            assert_eq!(s.destinations[0].signing_keys, std::slice::from_ref(&key));

            // Errors name the field and the path, never a secret.
            jail.create_file("orders-keys", "\n\n")?;
            let empty = Settings::load(Some(Path::new("hookgate.toml"))).unwrap_err().to_string();
            assert!(
                empty.contains("destinations[0] (orders).signing_keys_file: orders-keys holds no secret"),
                "{empty}"
            );
            jail.create_file("hookgate.toml", &config.replace("orders-keys", "missing-keys"))?;
            let missing = Settings::load(Some(Path::new("hookgate.toml"))).unwrap_err().to_string();
            assert!(missing.contains("signing_keys_file: cannot read missing-keys"), "{missing}");
            let both =
                config.replace(r#"secret_file = "github-secret""#, r#"secret = "x", secret_file = "github-secret""#);
            jail.create_file("hookgate.toml", &both)?;
            let both = Settings::load(Some(Path::new("hookgate.toml"))).unwrap_err().to_string();
            assert!(both.contains("sources[0] (github).verification: secret and secret_file are both set"), "{both}");
            for message in [&empty, &missing, &both] {
                assert!(!message.contains("from-a-mounted-file") && !message.contains("whsec_"), "{message}");
            }
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn environment_overrides_the_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("hookgate.toml", EXAMPLE)?;
            jail.set_env("HOOKGATE_SERVER__PORT", "9999");
            jail.set_env("HOOKGATE_WRITER__BATCH_MAX", "7");
            // Injected by Kubernetes for a Service named `hookgate`: not settings, and not errors.
            jail.set_env("HOOKGATE_PORT", "tcp://10.0.0.1:80");
            jail.set_env("HOOKGATE_SERVICE_HOST", "10.0.0.1");
            jail.set_env("HOOKGATE_CONFIG", "hookgate.toml");
            let s = Settings::load(Some(Path::new("hookgate.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(s.server.port, 9999);
            assert_eq!(s.writer.batch_max, 7);
            assert_eq!(s.sources[0].slug, "github");
            Ok(())
        });
    }

    #[test]
    fn presets_set_key_and_type_defaults_that_configuration_overrides() {
        let s = Settings::from_toml(
            r#"
            [[sources]]
            slug = "gh"
            verification = { kind = "github", secret = ["rotating-old", "rotating-new"] }
            [[sources]]
            slug = "st"
            idempotency = { from = "header", header = "Idempotency-Key" }
            verification = { kind = "stripe", secret = "whsec_abc" }
            [[sources]]
            slug = "ce"
            cloudevents = true
            "#,
        )
        .unwrap();
        let header = |h: &str| IdempotencyConfig::Header { header: h.into() };
        assert_eq!(s.sources[0].effective_idempotency(), header("X-GitHub-Delivery"));
        assert_eq!(
            s.sources[0].options().event_type,
            Some(EventTypeConfig::Header { header: "X-GitHub-Event".into() })
        );
        assert_eq!(s.sources[1].effective_idempotency(), header("Idempotency-Key"));
        assert_eq!(s.sources[1].options().event_type, Some(EventTypeConfig::JsonPointer { pointer: "/type".into() }));
        assert_eq!(s.sources[2].effective_idempotency(), IdempotencyConfig::Cloudevents);
        let dbg = format!("{s:?}");
        for secret in ["rotating-old", "rotating-new", "whsec_abc"] {
            assert!(!dbg.contains(secret), "{dbg}");
        }
    }

    #[test]
    fn the_connection_limit_is_split_among_the_workers() {
        let server = |workers, max_connections| ServerSettings { workers, max_connections, ..Default::default() };
        assert_eq!(server(Some(2), 10_000).max_connections_per_worker(), 5_000);
        assert_eq!(server(Some(3), 10).max_connections_per_worker(), 4, "rounded up");
        assert_eq!(server(Some(4), 1).max_connections_per_worker(), 1);
        assert_eq!(server(Some(1), 1).max_connections_per_worker(), 1);
        let default = ServerSettings::default();
        assert_eq!((default.max_connections, default.body_timeout_ms), (10_000, 10_000));
    }

    #[test]
    fn bad_configurations_are_refused_with_the_reason() {
        let cases = [
            ("[[sources]]\nslug = \"Bad Slug\"", "slug"),
            ("[[sources]]\nslug = \"a\"\n[[sources]]\nslug = \"a\"", "twice"),
            ("[[sources]]\nslug = \"a\"\nmax_body_bytes = 0", "max_body_bytes"),
            ("[server]\nprot = 1", "prot"),
            ("[writer]\nbatch_max = 0", "batch_max"),
            ("[server]\nbody_timeout_ms = 0", "body_timeout_ms"),
            ("[server]\nmax_ingest_bytes = 0", "server.max_ingest_bytes must be positive"),
            ("[writer]\nmax_pending_bytes = 0", "writer.max_pending_bytes must be positive"),
            ("[server]\nmax_connections = 0", "max_connections"),
            (
                "[[sources]]\nslug = \"a\"\nverification = { kind = \"hmac_sha256\", header = \"x-sig\", secret = \"\" }",
                "empty",
            ),
            ("[[sources]]\nslug = \"a\"\nverification = { kind = \"github\", secret = [\"a\", \"b\", \"c\"] }", "at most 2"),
            (
                "[[sources]]\nslug = \"a\"\nverification = { kind = \"hmac\", header = \"x\", secret = \"k\", signed = \"{timestamp}.{body}\" }",
                "timestamp_header",
            ),
            ("[[sources]]\nslug = \"a\"\nverification = { kind = \"standard_webhooks\", secret = \"whsec_!!\" }", "base64"),
            ("[[sources]]\nslug = \"a\"\nidempotency = { from = \"cloudevents\" }", "cloudevents = true"),
            ("[[sources]]\nslug = \"a\"\nverification = { kind = \"rot13\" }", "rot13"),
            ("[[sources]]\nslug = \"hookgate\"", "reserved for hookgate's own notifications"),
            ("[notifications]\ndead_window_secs = 0", "notifications.dead_window_secs must be positive"),
            ("[notifications]\ndestination = \"Ops!\"", "notifications.destination: slug must be"),
            ("[notifications]\nbacklog_age_overrides = { a = 0 }", "notifications.backlog_age_overrides.a must be positive"),
            ("[notifications]\ndestinaton = \"ops\"", "destinaton"),
            (
                "[[destinations]]\nslug = \"d\"\nurl = \"https://example.com/\"\nheaders = { \"Webhook-Id\" = \"x\" }",
                "\"Webhook-Id\" cannot be set",
            ),
            (
                "[[destinations]]\nslug = \"d\"\nurl = \"https://example.com/\"\ntls = { ca_file = \"/nonexistent/ca.pem\" }",
                "tls.ca_file: cannot read /nonexistent/ca.pem",
            ),
            (
                "[[destinations]]\nslug = \"d\"\nurl = \"https://example.com/\"\ntls = { cafile = \"x\" }",
                "cafile",
            ),
            ("[database]\nurl = \"postgres://u:pw@db/hg?sslmode=verify\"", "database.url: sslmode must be"),
            ("[database]\nurl = \"host=db password=pw sslmode=allow\"", "not \"allow\""),
            (
                "[database]\nurl = \"postgres://u:pw@db/hg?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem\"",
                "database.url: sslrootcert: cannot read /nonexistent/ca.pem",
            ),
            (
                "[database]\nurl = \"host=db password=pw sslmode=require sslrootcert=/nonexistent/ca.pem\"",
                "sslrootcert: cannot read /nonexistent/ca.pem",
            ),
            (
                "[redis]\nurl = \"rediss://:pw@cache:6380\"\ntls_ca_file = \"/nonexistent/redis-ca.pem\"",
                "redis.tls_ca_file: cannot read /nonexistent/redis-ca.pem",
            ),
            ("[redis]\nurl = \"redis://cache:6379\"\ntls_ca_file = \"/etc/hostname\"", "does not use TLS (rediss://)"),
            ("[redis]\nurl = \"rediss://cache:6380/#insecure\"", "#insecure"),
            ("[admin]\npool_size = 0", "admin.pool_size must be positive"),
            ("[delivery]\ndeliverer_threads = 3", "delivery.deliverer_threads (3) exceeds delivery.deliverers (2)"),
            ("[telemetry]\nsampling_ratio = 1.5", "telemetry.sampling_ratio must be between 0 and 1, not 1.5"),
            ("[telemetry]\nsampling_ratio = -0.1", "telemetry.sampling_ratio must be between 0 and 1"),
            ("[telemetry]\notlp_endpoint = \"collector:4318\"", "telemetry.otlp_endpoint must be an http:// or https://"),
            ("[telemetry]\notlp_endpoint = \"not a url\"", "telemetry.otlp_endpoint is not a valid URL"),
            ("[telemetry]\notlp_endpoint = \"https://u:pw@c:4318\"", "must not carry credentials"),
            ("[telemetry]\nservice_name = \"\"", "telemetry.service_name must not be empty"),
            ("[telemetry]\nendpoint = \"http://c\"", "endpoint"),
            (
                "[redis]\ndedupe_ttl_secs = 700000",
                "redis.dedupe_ttl_secs (700000) must be at most retention.dedupe_window_secs (604800)",
            ),
            (
                "[retention]\ndedupe_window_secs = 3600",
                "redis.dedupe_ttl_secs (86400) must be at most retention.dedupe_window_secs (3600)",
            ),
            (
                "[retention]\ndays = 3",
                "retention.dedupe_window_secs (604800) must be at most retention.days (3 days = 259200 s)",
            ),
            ("[retention]\ndedupe_window_secs = 0", "retention.dedupe_window_secs must be positive"),
            ("[retention]\nvacuum_dead_fraction = -0.5", "retention.vacuum_dead_fraction must be between 0 and 100"),
            ("[retention]\nvacuum_dead_fraction = nan", "retention.vacuum_dead_fraction must be between 0 and 100"),
            ("[retention]\nvacuum_dead_fraction = 1e300", "retention.vacuum_dead_fraction must be between 0 and 100"),
            (
                "[[sources]]\nslug = \"a\"\ndedupe_window_secs = 604801",
                "source \"a\": dedupe_window_secs (604801) must be at most retention.dedupe_window_secs (604800)",
            ),
            (
                "[retention]\ndedupe_window_secs = 86400\n[[sources]]\nslug = \"a\"\ndedupe_window_secs = 90000",
                "source \"a\": dedupe_window_secs (90000) must be at most retention.dedupe_window_secs (86400)",
            ),
        ];
        for (text, needle) in cases {
            let err = Settings::from_toml(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?} gave {err:?}, expected it to mention {needle:?}");
            assert!(!err.contains("pw"), "{text:?} gave {err:?}, which shows the password");
        }
    }

    #[test]
    fn the_traces_url_is_the_endpoint_with_v1_traces() {
        let t = |e: &str| TelemetrySettings { otlp_endpoint: Some(e.into()), ..Default::default() };
        assert_eq!(TelemetrySettings::default().traces_url().unwrap(), None, "off by default");
        assert_eq!(t("http://c:4318").traces_url().unwrap().as_deref(), Some("http://c:4318/v1/traces"));
        assert_eq!(t("https://c/otlp/").traces_url().unwrap().as_deref(), Some("https://c/otlp/v1/traces"));
        assert_eq!(t("http://c:4318/v1/traces").traces_url().unwrap().as_deref(), Some("http://c:4318/v1/traces"));
        assert_eq!(t("").traces_url().unwrap(), None, "an empty endpoint is unset");
        let s = Settings::from_toml("[telemetry]\notlp_endpoint = \"http://c:4318\"\nsampling_ratio = 0.25").unwrap();
        assert_eq!((s.telemetry.sampling_ratio, s.telemetry.service_name.as_str()), (0.25, "hookgate"));
    }

    #[test]
    fn dedupe_windows_that_nest_are_accepted_up_to_equality() {
        for text in [
            // The defaults: Redis a day, PostgreSQL a week, retention 30 days.
            "",
            "[redis]\ndedupe_ttl_secs = 604800\n[retention]\ndays = 7\ndedupe_window_secs = 604800\n\
             [[sources]]\nslug = \"a\"\ndedupe_window_secs = 604800",
            "[redis]\ndedupe_ttl_secs = 60\n[retention]\ndays = 1\ndedupe_window_secs = 3600\n\
             [[sources]]\nslug = \"a\"\ndedupe_window_secs = 3600\n[[sources]]\nslug = \"b\"",
        ] {
            let s = Settings::from_toml(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert!(s.redis.dedupe_ttl_secs <= s.retention.dedupe_window_secs);
            assert_eq!(s.source_bounds().dedupe_window_secs, s.retention.dedupe_window_secs);
        }
        assert_eq!(Settings::from_toml("").unwrap().admin.pool_size, 4);
    }

    #[test]
    fn the_datastores_tls_settings_are_read_from_their_urls() {
        let s = Settings::from_toml(
            "[database]\nurl = \"postgres://u:pw@db.internal/hg?sslmode=verify-ca&application_name=x\"\n\
             [redis]\nurl = \"rediss://cache.internal:6380\"",
        )
        .unwrap();
        let (config, tls) = s.database.parse_url().unwrap();
        assert_eq!(tls.mode, hookgate_actors::pg_tls::SslMode::VerifyCa);
        assert_eq!(config.get_ssl_mode(), tokio_postgres::config::SslMode::Require);
        assert_eq!(config.get_dbname(), Some("hg"));
        let client = s.redis.client().unwrap();
        assert!(matches!(client.get_connection_info().addr(), redis::ConnectionAddr::TcpTls { insecure: false, .. }));
        // Absent sslmode is libpq's default, prefer.
        let (config, tls) = DatabaseSettings::default().parse_url().unwrap();
        assert_eq!(tls.mode, hookgate_actors::pg_tls::SslMode::Prefer);
        assert_eq!(config.get_ssl_mode(), tokio_postgres::config::SslMode::Prefer);
    }
}
