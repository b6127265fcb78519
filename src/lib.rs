//! hookgate: a self-hosted, durable webhook event gateway.
//!
//! This crate is the binary's library: settings ([`config`]), telemetry ([`telemetry`]), start-up and shutdown
//! ([`startup`]), the configuration's sources as the store applies them ([`sources`]) and the HTTP front end ([`http`]: ingest, the handshake, health
//! and the admin API), and the operator commands that speak to a running node's admin API ([`cli`]). The actors live in the `hookgate-actors` crate; the migrations, like all SQL, in
//! `hookgate-store` ([`hookgate_store::migrations`]).

pub mod cli;
pub mod config;
pub mod http;
pub mod sources;
pub mod startup;
pub mod telemetry;
