//! hookgate's integration tests: one binary, real PostgreSQL and Redis, one fresh database per test.

mod admin;
mod circuit;
mod cli;
mod cluster;
mod crash;
mod delivery;
mod dependencies;
mod formats;
mod health;
mod helpers;
mod ingest;
mod load;
mod receiver;
mod retention;
