//! `flush-shapes`: the event writer's group-commit insert in two shapes, on the same rows, on a scratch database
//! migrated to hookgate's schema.
//!
//! - (a) `unnest`: today's statement, [`hookgate_store::events::insert_new`] (UNNEST parameter arrays, keys first
//!   into `event_keys` ON CONFLICT DO NOTHING, then the events whose key was new), as the writer runs it: each batch
//!   sorted by (source, key), in its own transaction begun like the writer's (the generic-plan setting sent with the
//!   insert, [`hookgate_store::events::insert_new_after`]).
//! - (b) `copy`: binary COPY of the batch into a temporary staging table (created once per connection, emptied at
//!   each COMMIT), then one statement that inserts the keys from it ON CONFLICT DO NOTHING and the events whose key
//!   was new, returning their ids: the same semantics, in one transaction per batch begun with `begin_hot` (the
//!   setting its own round trip: a COPY cannot be pipelined behind it).
//! - (c) `ceiling`: one binary COPY of all the rows, one stream and one transaction, into a table `LIKE events
//!   INCLUDING ALL` (no keys, no conflict check), as in [`crate::baseline`].
//!
//! (a) and (b) run `connections` flushers at once (the writer's `max_inflight_flushes`), each on its own connection,
//! pulling batches of consecutive rows from one shared queue. For each batch size the order is (a), (b), (a), (b),
//! then (c), each on freshly truncated tables after a CHECKPOINT; after each run the table must hold every row.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures::pin_mut;
use hookgate_store::events::EventRow;
use serde_json::{json, Value};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::NoTls;
use uuid::Uuid;

use crate::report::table;
use crate::standard::pg_admin;
use crate::workload::{body, hmac_hex, now_ns};

/// The columns of `events`, in the order of the COPYs.
const COLUMNS: &str = "id, source_id, idempotency_key, received_at, content_type, headers, body, type, traceparent";

/// The types of [`COLUMNS`], for the binary COPY writer.
const COLUMN_TYPES: [Type; 9] = {
    use Type as T;
    [T::UUID, T::UUID, T::TEXT, T::TIMESTAMPTZ, T::TEXT, T::JSONB, T::BYTEA, T::TEXT, T::TEXT]
};

/// The staging table of shape (b): one per connection, emptied at every COMMIT.
const STAGING_DDL: &str = "CREATE TEMP TABLE flush_staging (LIKE events INCLUDING DEFAULTS) ON COMMIT DELETE ROWS";

/// Shape (b)'s insert: keys first, then the events whose key was new (the staging table has the columns of `events`
/// in their order); answers the ids stored. The staging rows are read in the order they were copied, sorted by
/// (source, key), so concurrent batches take the key locks in one order, as (a)'s UNNEST does.
const STAGED_INSERT: &str = "\
WITH fresh AS (
    INSERT INTO event_keys (source_id, idempotency_key, event_id, received_at)
    SELECT source_id, idempotency_key, id, received_at FROM flush_staging
    ON CONFLICT (source_id, idempotency_key) DO NOTHING
    RETURNING event_id
)
INSERT INTO events
SELECT s.* FROM flush_staging s JOIN fresh ON fresh.event_id = s.id
RETURNING id";

/// What to measure.
#[derive(Debug, Clone)]
pub struct FlushShapesOptions {
    /// Server URL without database, e.g. `postgres://postgres@127.0.0.1:5432`.
    pub pg: String,
    /// The scratch database: dropped and created at the start, dropped at the end.
    pub database: String,
    /// Rows per run.
    pub rows: usize,
    /// Batch sizes, each measured in turn.
    pub batches: Vec<usize>,
    /// Concurrent flushers, each on its own connection.
    pub connections: usize,
}

/// The figures of one batch size.
#[derive(Debug, Clone)]
pub struct BatchFigures {
    /// Rows per transaction of (a) and (b).
    pub batch: usize,
    /// Shape (a), `insert_new`: rows/s of its two runs.
    pub unnest: [f64; 2],
    /// Shape (b), COPY into staging then one statement: rows/s of its two runs.
    pub copy: [f64; 2],
    /// (c), one raw binary COPY of every row: rows/s.
    pub ceiling: f64,
}

impl BatchFigures {
    fn unnest_mean(&self) -> f64 {
        (self.unnest[0] + self.unnest[1]) / 2.0
    }

    fn copy_mean(&self) -> f64 {
        (self.copy[0] + self.copy[1]) / 2.0
    }

    /// As JSON: each run's rows/s, and the ratios of the means (b/a, a/c, b/c).
    pub fn json(&self) -> Value {
        json!({
            "batch": self.batch,
            "unnest_rows_per_s": self.unnest.map(f64::round),
            "copy_rows_per_s": self.copy.map(f64::round),
            "ceiling_rows_per_s": self.ceiling.round(),
            "copy_over_unnest": self.copy_mean() / self.unnest_mean(),
            "unnest_over_ceiling": self.unnest_mean() / self.ceiling,
            "copy_over_ceiling": self.copy_mean() / self.ceiling,
        })
    }
}

/// The header of [`table_rows`].
pub const HEADER: [&str; 7] = ["batch", "shape", "run 1 rows/s", "run 2 rows/s", "mean", "/ (a)", "/ (c)"];

/// Three table rows per batch size: (a), (b) and (c), each with its ratio to (a) and to (c).
pub fn table_rows(figures: &[BatchFigures]) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for f in figures {
        let (a, c) = (f.unnest_mean(), f.ceiling);
        let row = |name: &str, runs: [Option<f64>; 2], mean: f64| {
            let rate = |r: Option<f64>| r.map_or("-".into(), |r| format!("{r:.0}"));
            let (batch, name) = (f.batch.to_string(), name.to_string());
            let ratios = [format!("{:.2}", mean / a), format!("{:.2}", mean / c)];
            [batch, name, rate(runs[0]), rate(runs[1]), rate(Some(mean))].into_iter().chain(ratios).collect()
        };
        rows.push(row("(a) UNNEST insert_new", f.unnest.map(Some), a));
        rows.push(row("(b) COPY staging + CTE", f.copy.map(Some), f.copy_mean()));
        rows.push(row("(c) raw COPY", [Some(c), None], c));
    }
    rows
}

/// Prints the table of `figures`.
pub fn print(figures: &[BatchFigures], opts: &FlushShapesOptions) {
    println!(
        "{} rows, {} connections; (a)/(b): one transaction per batch; (c): one COPY of every row, one connection",
        opts.rows, opts.connections
    );
    print!("{}", table(&HEADER, &table_rows(figures)));
}

/// One event as the writer holds it (no type, no trace context: the standard bench's source names neither).
struct Event {
    id: Uuid,
    source_id: Uuid,
    key: String,
    received_at: DateTime<Utc>,
    content_type: Option<String>,
    headers: Value,
    body: Vec<u8>,
}

impl Event {
    fn row(&self) -> EventRow<'_> {
        EventRow {
            id: self.id,
            source_id: self.source_id,
            idempotency_key: &self.key,
            received_at: self.received_at,
            content_type: self.content_type.as_deref(),
            headers: &self.headers,
            body: &self.body,
            event_type: None,
            traceparent: None,
        }
    }
}

/// `n` events of one source: unique keys, UUIDv7 ids, 1 KiB JSON bodies like the load generator's, and the eight
/// headers hookgate would keep of its requests.
fn events(source_id: Uuid, n: usize) -> Vec<Event> {
    let run = format!("{:x}", now_ns() / 1000);
    let mut buf = Vec::new();
    (0..n)
        .map(|seq| {
            let key = format!("{run}-{seq}");
            body(&mut buf, &key, now_ns(), 1024);
            let headers = json!({
                "host": "127.0.0.1:8080",
                "user-agent": "hookgate-bench/0.1",
                "accept": "*/*",
                "content-type": "application/json",
                "content-length": buf.len().to_string(),
                "x-request-id": key,
                "x-signature": format!("sha256={}", hmac_hex(crate::standard::SECRET.as_bytes(), &buf)),
                "x-forwarded-for": "10.1.2.3",
            });
            Event {
                id: Uuid::now_v7(),
                source_id,
                key,
                received_at: Utc::now(),
                content_type: Some("application/json".into()),
                headers,
                body: buf.clone(),
            }
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Unnest,
    Copy,
}

/// A pool of `size` connections to `url`, recycled like hookgate's.
fn pool(url: &str, size: usize) -> anyhow::Result<Pool> {
    let config: tokio_postgres::Config = url.parse().with_context(|| format!("parsing {url}"))?;
    let mgr = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    Pool::builder(mgr).max_size(size).runtime(Runtime::Tokio1).build().context("building the PostgreSQL pool")
}

/// Runs the comparison on a scratch database, dropped at the end whatever happened.
pub async fn run(opts: &FlushShapesOptions) -> anyhow::Result<Vec<BatchFigures>> {
    let db = &opts.database;
    anyhow::ensure!(
        !db.is_empty() && db.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
        "--database must be lowercase letters, digits and underscores: {db}"
    );
    anyhow::ensure!(opts.rows > 0 && opts.connections > 0, "--rows and --connections must be positive");
    anyhow::ensure!(!opts.batches.is_empty() && !opts.batches.contains(&0), "--batch sizes must be positive");
    pg_admin(&opts.pg, &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE); CREATE DATABASE {db}")).await?;
    let result = measure(opts).await;
    if let Err(e) = pg_admin(&opts.pg, &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).await {
        eprintln!("flush-shapes: could not drop {db}: {e}");
    }
    result
}

async fn measure(opts: &FlushShapesOptions) -> anyhow::Result<Vec<BatchFigures>> {
    let url = format!("{}/{}", opts.pg, opts.database);
    let admin = pool(&url, 1)?;
    hookgate_store::migrations::run(&admin).await.context("migrating the scratch database")?;
    let source_id = Uuid::now_v7();
    let client = admin.get().await?;
    client
        .execute(
            "INSERT INTO sources (id, slug, max_body_bytes, idempotency, verification)
             VALUES ($1, 'bench', 1048576, '{\"from\": \"header\", \"header\": \"X-Request-Id\"}', '{\"kind\": \"none\"}')",
            &[&source_id],
        )
        .await?;
    client.batch_execute("CREATE TABLE flush_ceiling (LIKE events INCLUDING ALL)").await?;
    let rows = Arc::new(events(source_id, opts.rows));
    let mut figures = Vec::new();
    for &batch in &opts.batches {
        let mut unnest = [0.0; 2];
        let mut copy = [0.0; 2];
        for i in 0..2 {
            for (shape, out) in [(Shape::Unnest, &mut unnest[i]), (Shape::Copy, &mut copy[i])] {
                reset(&client).await?;
                eprintln!("flush-shapes: batch {batch}, {shape:?} run {}", i + 1);
                *out = flushes(&url, &rows, batch, opts.connections, shape).await?;
                check_count(&client, "events", opts.rows).await?;
            }
        }
        reset(&client).await?;
        eprintln!("flush-shapes: batch {batch}, ceiling");
        let ceiling = raw_copy(&client, &rows).await?;
        check_count(&client, "flush_ceiling", opts.rows).await?;
        figures.push(BatchFigures { batch, unnest, copy, ceiling });
    }
    reset(&client).await?;
    Ok(figures)
}

/// Empties the tables and checkpoints, so every run starts from the same state.
async fn reset(client: &tokio_postgres::Client) -> anyhow::Result<()> {
    client.batch_execute("TRUNCATE events, event_keys, flush_ceiling; CHECKPOINT").await?;
    Ok(())
}

async fn check_count(client: &tokio_postgres::Client, table: &str, expected: usize) -> anyhow::Result<()> {
    let n: i64 = client.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await?.get(0);
    anyhow::ensure!(n as usize == expected, "{table} holds {n} rows after the run, expected {expected}");
    Ok(())
}

/// `n` flushers, each on its own connection, write every row in batches of `batch` in `shape`; answers rows/s.
async fn flushes(url: &str, rows: &Arc<Vec<Event>>, batch: usize, n: usize, shape: Shape) -> anyhow::Result<f64> {
    let pool = pool(url, n)?;
    let mut clients = Vec::new();
    for _ in 0..n {
        let client = pool.get().await?;
        if shape == Shape::Copy {
            client.batch_execute(STAGING_DDL).await?;
        }
        clients.push(client);
    }
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|client| {
            let (rows, next) = (rows.clone(), next.clone());
            tokio::spawn(async move { flusher(client, &rows, &next, batch, shape).await })
        })
        .collect();
    let mut stored = 0;
    for t in tasks {
        stored += t.await??;
    }
    let secs = t0.elapsed().as_secs_f64();
    anyhow::ensure!(stored == rows.len(), "{shape:?} answered {stored} ids stored, expected {}", rows.len());
    Ok(stored as f64 / secs)
}

/// Takes batches of consecutive rows until none are left; answers the ids stored.
async fn flusher(
    mut client: deadpool_postgres::Object,
    rows: &[Event],
    next: &AtomicUsize,
    batch: usize,
    shape: Shape,
) -> anyhow::Result<usize> {
    let mut stored = 0;
    loop {
        let start = next.fetch_add(batch, Ordering::Relaxed);
        if start >= rows.len() {
            return Ok(stored);
        }
        let mut events: Vec<&Event> = rows[start..(start + batch).min(rows.len())].iter().collect();
        // As the writer does: concurrent flushes take row locks in one global order.
        events.sort_unstable_by(|a, b| (a.source_id, &a.key).cmp(&(b.source_id, &b.key)));
        let ids = match shape {
            Shape::Unnest => insert_unnest(&mut client, &events).await?,
            Shape::Copy => insert_staged(&mut client, &events).await?,
        };
        stored += ids.len();
    }
}

/// Shape (a): what the writer's `insert` does for events without deliveries.
async fn insert_unnest(client: &mut deadpool_postgres::Object, events: &[&Event]) -> anyhow::Result<HashSet<Uuid>> {
    let tx = hookgate_store::begin(client).await?;
    let rows: Vec<EventRow<'_>> = events.iter().map(|e| e.row()).collect();
    let ids = hookgate_store::events::insert_new_after(&tx, hookgate_store::GENERIC_PLANS, &rows).await?;
    hookgate_store::commit(tx).await?;
    Ok(ids)
}

/// Shape (b): binary COPY into the connection's staging table, then [`STAGED_INSERT`], in a transaction with generic
/// plans (the writer's deliveries, prepared statements, would follow in it).
async fn insert_staged(client: &mut deadpool_postgres::Object, events: &[&Event]) -> anyhow::Result<HashSet<Uuid>> {
    let tx = hookgate_store::begin_hot(client).await?;
    let copy = tx.prepare_cached(&format!("COPY flush_staging ({COLUMNS}) FROM STDIN (FORMAT binary)")).await?;
    let writer = BinaryCopyInWriter::new(tx.copy_in(&copy).await?, &COLUMN_TYPES);
    pin_mut!(writer);
    for e in events {
        writer.as_mut().write(&values(e)).await?;
    }
    writer.finish().await?;
    let insert = tx.prepare_cached(STAGED_INSERT).await?;
    let ids = tx.query(&insert, &[]).await?.iter().map(|r| r.try_get(0)).collect::<Result<HashSet<Uuid>, _>>()?;
    hookgate_store::commit(tx).await?;
    Ok(ids)
}

/// One row's values in [`COLUMNS`] order.
fn values(e: &Event) -> [&(dyn ToSql + Sync); 9] {
    const NONE: &Option<&str> = &None;
    [&e.id, &e.source_id, &e.key, &e.received_at, &e.content_type, &e.headers, &e.body, NONE, NONE]
}

/// (c): one binary COPY of every row into `flush_ceiling`; answers rows/s.
async fn raw_copy(client: &tokio_postgres::Client, rows: &[Event]) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    let sink = client.copy_in(&format!("COPY flush_ceiling ({COLUMNS}) FROM STDIN (FORMAT binary)")).await?;
    let writer = BinaryCopyInWriter::new(sink, &COLUMN_TYPES);
    pin_mut!(writer);
    for e in rows {
        writer.as_mut().write(&values(e)).await?;
    }
    let copied = writer.finish().await? as usize;
    let secs = t0.elapsed().as_secs_f64();
    anyhow::ensure!(copied == rows.len(), "the ceiling COPY stored {copied} rows, expected {}", rows.len());
    Ok(copied as f64 / secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_are_of_the_means() {
        let f = BatchFigures { batch: 64, unnest: [900.0, 1100.0], copy: [1400.0, 1600.0], ceiling: 4000.0 };
        let rows = table_rows(std::slice::from_ref(&f));
        assert_eq!(rows[0], ["64", "(a) UNNEST insert_new", "900", "1100", "1000", "1.00", "0.25"]);
        assert_eq!(rows[1], ["64", "(b) COPY staging + CTE", "1400", "1600", "1500", "1.50", "0.38"]);
        assert_eq!(rows[2], ["64", "(c) raw COPY", "4000", "-", "4000", "4.00", "1.00"]);
        let j = f.json();
        assert_eq!(j["copy_over_unnest"], 1.5);
        assert_eq!(j["unnest_over_ceiling"], 0.25);
    }

    #[test]
    fn rows_are_unique_and_shaped_like_the_load_generators() {
        let source = Uuid::now_v7();
        let rows = events(source, 50);
        let keys: HashSet<&str> = rows.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys.len(), 50);
        assert!(rows.iter().all(|e| e.body.len() == 1024 && e.headers.as_object().unwrap().len() == 8));
        assert!(rows.windows(2).all(|w| w[0].id < w[1].id), "UUIDv7 ids in creation order");
    }
}
