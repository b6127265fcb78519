//! `hookgate-bench`: drives a running hookgate (or any webhook receiver) over HTTP and measures it, beside a raw
//! PostgreSQL baseline. See `docs/benchmarks.md` for the workloads and how to run them against another server.

pub mod baseline;
pub mod chaos;
pub mod chaos_infra;
pub mod chaos_load;
pub mod chaos_receiver;
pub mod client;
pub mod flush_shapes;
pub mod load;
pub mod procfs;
pub mod receiver;
pub mod report;
pub mod standard;
pub mod tls;
pub mod workload;
