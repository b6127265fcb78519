//! hookgate: a self-hosted, durable webhook event gateway.
//!
//! This crate is the binary's library: configuration ([`config`]), telemetry ([`telemetry`]), start-up
//! ([`startup`]), migrations ([`migrations`]), the source snapshot ([`sources`]) and the thin actix-web front end ([`routes`]).
//! The actors live in the `hookgate-actors` crate.

pub mod admin;
pub mod cloudevents;
pub mod config;
pub use hookgate_store::migrations;
pub mod problem;
pub mod routes;
pub mod sources;
pub mod startup;
pub mod telemetry;
