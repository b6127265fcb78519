//! hookgate's PostgreSQL layer: the schema and its migrations, the NOTIFY channels, the advisory locks and the
//! LISTEN connection, and the readiness ping.
//!
//! The layers, each depending only on those before it: `hookgate-core` ← **`hookgate-store`** (this crate) ←
//! `hookgate-actors` ← `hookgate`.

pub mod catalog;
pub mod channels;
pub mod deliveries;
pub mod listen;
pub mod locks;
pub mod migrations;
pub mod sources;
pub mod stats;

/// The PostgreSQL connection pool every database-facing part of hookgate borrows from.
pub type Pool = deadpool_postgres::Pool;

/// One round trip through a pooled connection: what "PostgreSQL is up" means to the readiness probe.
pub async fn ping(pool: &Pool) -> Result<(), String> {
    let client = pool.get().await.map_err(|e| e.to_string())?;
    client.simple_query("SELECT 1").await.map_err(|e| e.to_string())?;
    Ok(())
}
