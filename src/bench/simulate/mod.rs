//! `surge bench simulate`: a fleet simulator that replays a request-arrival trace
//! through models of Knative's KPA and of KEDA + HPA, over replicas serving at the
//! capacity a `surge bench` report measured, to compare autoscaling policies before
//! touching a cluster.
//!
//! - [`trace`] reads traces, [`trace_gen`] writes the examples in `bench/traces/`;
//! - [`capacity`] reads the report's latency-against-concurrency curve;
//! - [`pods`] and [`fleet`] model replicas, their cold start, queues and routing;
//! - [`kpa`] and [`keda`] model the autoscalers, [`window`] their time windows;
//! - [`sim`] steps time, [`report`] summarizes and prints, [`args`] holds the flags.

pub mod args;
pub mod capacity;
pub mod fleet;
pub mod keda;
pub mod kpa;
pub mod pods;
pub mod policy;
pub mod report;
pub mod requests;
pub mod sim;
pub mod trace;
pub mod trace_gen;
pub mod window;

use anyhow::Context;

pub use args::{PolicyKind, SimulateArgs};
pub use report::SimReport;

use capacity::CapacityCurve;
use report::{PolicyReport, Slo};
use sim::{simulate, SimSetup};
use trace::Trace;

/// Runs every policy the flags name over the trace and returns the results.
pub fn simulate_all(args: &SimulateArgs) -> anyhow::Result<SimReport> {
    args.validate()?;
    let trace = Trace::load(&args.trace)?;
    let curve = CapacityCurve::load(&args.capacity)?;
    let max_num_seqs = args
        .max_num_seqs
        .unwrap_or_else(|| curve.max_concurrency().round().max(1.0) as usize);
    let slo = Slo {
        ttft_s: args
            .slo_ttft_p90
            .filter(|d| !d.is_zero())
            .map(|d| d.as_secs_f64()),
        e2e_s: args
            .slo_e2e
            .filter(|d| !d.is_zero())
            .map(|d| d.as_secs_f64()),
    };
    let mut policies = Vec::new();
    for &kind in &args.policies {
        let mut policy = args.policy(kind, max_num_seqs);
        let setup = SimSetup {
            trace: &trace,
            curve: &curve,
            fleet: policy.fleet,
            initial_replicas: args.initial_replicas(),
            tick_s: args.tick.as_secs_f64(),
        };
        let outcome = simulate(&setup, policy.autoscaler.as_mut());
        policies.push(PolicyReport::new(
            kind.name(),
            policy.description,
            &outcome,
            &slo,
        ));
    }
    Ok(SimReport {
        trace: args.trace.display().to_string(),
        capacity: args.capacity.display().to_string(),
        num_requests: trace.requests.len(),
        trace_duration_s: trace.duration_s(),
        cold_start_s: args.cold_start.as_secs_f64(),
        slo,
        policies,
    })
}

/// `surge bench simulate`: runs the policies, prints the comparison table and writes
/// the JSON report when `--output` is given.
pub fn run(args: &SimulateArgs) -> anyhow::Result<()> {
    let report = simulate_all(args)?;
    print!("{}", report.table());
    if let Some(path) = &args.output {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
