//! hookgate's integration tests: one binary, real PostgreSQL and Redis, one fresh database per test.

mod admin;
mod certs;
mod circuit;
mod cli;
mod cluster;
mod crash;
mod datastore_tls;
mod delivery;
mod dependencies;
mod egress;
mod fifo;
mod formats;
mod handoff;
mod health;
mod helpers;
mod ingest;
mod load;
mod plans;
mod poison;
mod receiver;
mod replay_fencing;
mod retention;
mod servers;
mod stranding;
mod supervision;
mod tls;
