//! `surge bench`: a load generator for any OpenAI-compatible server, the autoscaling
//! target advisor, and a fleet simulator for comparing autoscaling policies.
//!
//! The load generator's parts, one job each: `workload` (what to send), `sse` and
//! `client` (one timed streaming request), `load` (one level: concurrency or a Poisson
//! rate, bounded in requests and time), `server_metrics` (the server's gauges during a
//! level), `stats` (percentiles and throughput), `report` (JSON and the summary table),
//! `plot` (PNG or SVG), `advisor` (the knee and the autoscaling settings), `overlay`
//! (those settings written into a copy of deploy/) and `driver` (a whole run).

pub mod advisor;
pub mod client;
pub mod driver;
pub mod load;
pub mod overlay;
pub mod plot;
pub mod progress;
pub mod report;
pub mod server_metrics;
pub mod simulate;
pub mod sse;
pub mod stats;
pub mod workload;

pub use driver::{run, BenchConfig, Sweep, WorkloadSource};
