//! Schema migrations, embedded in the binary and applied in order under a PostgreSQL advisory lock, so that when
//! several replicas start together one migrates and the others wait.

use anyhow::Context;
use deadpool_postgres::Pool;

/// (version, name, SQL), in order. Never edit an applied migration: add a new one.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "initial", include_str!("../migrations/0001_initial.sql")),
    (2, "delivery", include_str!("../migrations/0002_delivery.sql")),
    (3, "event_type", include_str!("../migrations/0003_event_type.sql")),
    (4, "partitions", include_str!("../migrations/0004_partitions.sql")),
    (5, "admin", include_str!("../migrations/0005_admin.sql")),
    (6, "deferred_routing", include_str!("../migrations/0006_deferred_routing.sql")),
    (7, "replay_fencing", include_str!("../migrations/0007_replay_fencing.sql")),
    (8, "destination_tls", include_str!("../migrations/0008_destination_tls.sql")),
    (9, "signing_keys", include_str!("../migrations/0009_signing_keys.sql")),
    (10, "trace_context", include_str!("../migrations/0010_trace_context.sql")),
    (11, "references_without_triggers", include_str!("../migrations/0011_references_without_triggers.sql")),
    (12, "windows_by_id", include_str!("../migrations/0012_windows_by_id.sql")),
    (13, "attempt_destination", include_str!("../migrations/0013_attempt_destination.sql")),
];

/// How many migrations this binary carries.
pub const MIGRATION_COUNT: usize = MIGRATIONS.len();

use crate::locks::MIGRATION_LOCK;

/// Applies every pending migration; returns the versions applied now.
pub async fn run(pool: &Pool) -> anyhow::Result<Vec<i32>> {
    let mut client = pool.get().await.context("Failed to get a connection to run migrations")?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .context("Failed to take the migration lock")?;
    let result = apply(&mut client).await;
    let unlock = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]).await;
    let applied = result?;
    unlock.context("Failed to release the migration lock")?;
    Ok(applied)
}

async fn apply(client: &mut deadpool_postgres::Object) -> anyhow::Result<Vec<i32>> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS hookgate_migrations (
                version integer PRIMARY KEY,
                name text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .context("Failed to create the migrations table")?;
    let done: Vec<i32> = client
        .query("SELECT version FROM hookgate_migrations", &[])
        .await
        .context("Failed to read applied migrations")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut applied = Vec::new();
    for (version, name, sql) in MIGRATIONS {
        if done.contains(version) {
            continue;
        }
        let tx = client.transaction().await?;
        tx.batch_execute(sql).await.with_context(|| format!("Failed to apply migration {version} ({name})"))?;
        tx.execute("INSERT INTO hookgate_migrations (version, name) VALUES ($1, $2)", &[version, name]).await?;
        tx.commit().await.with_context(|| format!("Failed to commit migration {version}"))?;
        tracing::info!(message = "Applied migration.", version, name);
        applied.push(*version);
    }
    Ok(applied)
}
