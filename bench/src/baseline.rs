//! The raw-PostgreSQL baseline: the same rows hookgate stored (read back from its `events` table), inserted by
//! PostgreSQL alone into tables of the same shape (`LIKE events INCLUDING ALL`: same primary key and unique index),
//! once with binary `COPY` (one stream, one transaction) and once with batched multi-row `INSERT`s (each batch its
//! own committed transaction, several connections at once, like hookgate's writer).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use futures::{SinkExt, TryStreamExt};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls};

const COLUMNS: &str = "id, source_id, idempotency_key, received_at, content_type, headers, body";

#[derive(Debug, Clone, Copy)]
pub struct BaselineResult {
    pub rows: usize,
    pub copy_rows_per_s: f64,
    pub insert_rows_per_s: f64,
    pub insert_batch: usize,
    pub insert_connections: usize,
}

async fn connect(url: &str) -> anyhow::Result<Client> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.with_context(|| "connecting to PostgreSQL")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

type Row = (uuid::Uuid, uuid::Uuid, String, chrono::DateTime<chrono::Utc>, Option<String>, serde_json::Value, Vec<u8>);

/// Runs both baselines on up to `limit` rows of `events` in the database at `url`.
pub async fn run(url: &str, limit: usize, batch: usize, connections: usize) -> anyhow::Result<BaselineResult> {
    let client = connect(url).await?;
    client
        .batch_execute(
            "DROP TABLE IF EXISTS bench_baseline_copy, bench_baseline_insert;
             CREATE TABLE bench_baseline_copy (LIKE events INCLUDING ALL);
             CREATE TABLE bench_baseline_insert (LIKE events INCLUDING ALL);",
        )
        .await?;
    let select = format!("SELECT {COLUMNS} FROM events ORDER BY id LIMIT {limit}");

    // COPY: the rows in PostgreSQL's binary COPY format, held in memory, then streamed into the table (timed).
    let chunks: Vec<Bytes> =
        client.copy_out(&format!("COPY ({select}) TO STDOUT (FORMAT binary)")).await?.try_collect().await?;
    let t0 = Instant::now();
    let sink = client.copy_in(&format!("COPY bench_baseline_copy ({COLUMNS}) FROM STDIN (FORMAT binary)")).await?;
    futures::pin_mut!(sink);
    for chunk in chunks {
        sink.send(chunk).await?;
    }
    let copied = sink.finish().await? as usize;
    let copy_secs = t0.elapsed().as_secs_f64();
    anyhow::ensure!(copied > 0, "no events to copy: run an ingest workload first");

    // Batched INSERT: `connections` connections each committing `batch` rows per statement.
    let rows: Arc<Vec<Row>> = Arc::new(
        client
            .query(&select, &[])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6)))
            .collect(),
    );
    let batch = batch.max(1);
    let next = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..connections.max(1) {
        clients.push(connect(url).await?);
    }
    let t0 = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|c| {
            let (rows, next) = (rows.clone(), next.clone());
            tokio::spawn(async move { insert_batches(&c, &rows, &next, batch).await })
        })
        .collect();
    let mut inserted = 0;
    for t in tasks {
        inserted += t.await??;
    }
    let insert_secs = t0.elapsed().as_secs_f64();
    client.batch_execute("DROP TABLE IF EXISTS bench_baseline_copy, bench_baseline_insert").await?;
    Ok(BaselineResult {
        rows: copied,
        copy_rows_per_s: copied as f64 / copy_secs,
        insert_rows_per_s: inserted as f64 / insert_secs,
        insert_batch: batch,
        insert_connections: connections.max(1),
    })
}

fn insert_sql(n: usize) -> String {
    let values: Vec<String> = (0..n)
        .map(|r| {
            format!(
                "(${},${},${},${},${},${},${})",
                7 * r + 1,
                7 * r + 2,
                7 * r + 3,
                7 * r + 4,
                7 * r + 5,
                7 * r + 6,
                7 * r + 7
            )
        })
        .collect();
    format!("INSERT INTO bench_baseline_insert ({COLUMNS}) VALUES {}", values.join(","))
}

async fn insert_batches(c: &Client, rows: &[Row], next: &AtomicUsize, batch: usize) -> anyhow::Result<usize> {
    let full = c.prepare(&insert_sql(batch)).await?;
    let mut done = 0;
    loop {
        let start = next.fetch_add(batch, Ordering::Relaxed);
        if start >= rows.len() {
            return Ok(done);
        }
        let slice = &rows[start..(start + batch).min(rows.len())];
        let params: Vec<&(dyn ToSql + Sync)> = slice
            .iter()
            .flat_map(|r| -> [&(dyn ToSql + Sync); 7] { [&r.0, &r.1, &r.2, &r.3, &r.4, &r.5, &r.6] })
            .collect();
        if slice.len() == batch {
            c.execute(&full, &params).await?;
        } else {
            c.execute(insert_sql(slice.len()).as_str(), &params).await?;
        }
        done += slice.len();
    }
}
