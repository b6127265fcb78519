//! hookgate: a self-hosted, durable webhook event gateway.
//!
//! This crate is the binary's library: configuration ([`config`]), telemetry ([`telemetry`]), start-up
//! ([`startup`]), the source snapshot ([`sources`]) and the thin actix-web front end ([`routes`]). The actors live
//! in the `hookgate-actors` crate; the migrations, like all SQL, in `hookgate-store` ([`hookgate_store::migrations`]).

pub mod admin;
pub mod cloudevents;
pub mod config;
pub mod problem;
pub mod routes;
pub mod sources;
pub mod startup;
pub mod telemetry;
