//! The time-stepped replay of a trace through a fleet under one autoscaler.
//!
//! Every tick (100 ms by default): the requests that arrived are buffered at the front,
//! the fleet routes and serves for the tick, then the autoscaler sees the fleet's signals
//! and may change the replica count. Nothing reads the wall clock and nothing is random,
//! so a replay is a pure function of its inputs.

use super::capacity::CapacityCurve;
use super::fleet::{Fleet, FleetConfig};
use super::pods::PodModel;
use super::policy::{Autoscaler, Observation};
use super::requests::RequestRecord;
use super::trace::Trace;

/// How long after the last arrival the replay may run before what is left is dropped
/// as unfinished, beyond the request timeout.
const DRAIN_HORIZON_S: f64 = 3600.0;

/// The inputs of a replay other than the autoscaler.
#[derive(Debug, Clone, Copy)]
pub struct SimSetup<'a> {
    pub trace: &'a Trace,
    pub curve: &'a CapacityCurve,
    pub fleet: FleetConfig,
    /// Replicas ready at time 0 (the fleet was in use before the trace starts).
    pub initial_replicas: u32,
    pub tick_s: f64,
}

/// The replica counts from some time on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReplicaPoint {
    pub t: f64,
    /// Replicas asked for (starting or ready).
    pub spec: u32,
    pub ready: u32,
    /// Every replica holding a GPU, draining ones included.
    pub pods: u32,
}

/// What a replay produced.
#[derive(Debug, Clone, PartialEq)]
pub struct SimOutcome {
    pub requests: Vec<RequestRecord>,
    /// A point each time a count changed, the first at time 0.
    pub series: Vec<ReplicaPoint>,
    /// Every replica's life, cold start and draining included, until `end_s`.
    pub gpu_seconds: f64,
    /// The integral of ready replicas over time.
    pub ready_replica_seconds: f64,
    /// When the last request was resolved (or the horizon, if some never were).
    pub end_s: f64,
}

/// Replays the trace under `autoscaler`.
pub fn simulate(setup: &SimSetup, autoscaler: &mut dyn Autoscaler) -> SimOutcome {
    let dt = setup.tick_s;
    let mut reqs: Vec<RequestRecord> = setup
        .trace
        .requests
        .iter()
        .map(|r| RequestRecord::new(r, setup.curve))
        .collect();
    let model = PodModel {
        curve: setup.curve,
        max_num_seqs: setup.fleet.max_num_seqs,
        kv_capacity_tokens: setup.fleet.kv_capacity_tokens,
    };
    let mut fleet = Fleet::new(setup.fleet, model, setup.initial_replicas);
    let horizon = setup.trace.duration_s() + setup.fleet.request_timeout_s + DRAIN_HORIZON_S;
    let mut series: Vec<ReplicaPoint> = Vec::new();
    let mut ready_replica_seconds = 0.0;
    let mut next_arrival = 0;
    // Every request before this one is resolved.
    let mut first_unresolved = 0;
    let mut tick: u64 = 0;
    let end = loop {
        // From the tick count, so that time does not drift by summing dt.
        let now = tick as f64 * dt;
        tick += 1;
        while next_arrival < reqs.len() && reqs[next_arrival].arrival <= now {
            fleet.arrive(next_arrival);
            next_arrival += 1;
        }
        fleet.step(now, dt, &mut reqs);
        let ready = fleet.ready_replicas();
        ready_replica_seconds += f64::from(ready) * dt;
        record(&mut series, now, &fleet, ready);

        let end = now + dt;
        let obs = Observation {
            now: end,
            ready,
            spec: fleet.spec_replicas(),
            concurrency: fleet.concurrency(),
            queue_depth: fleet.queue_depth(),
            saturation: fleet.saturation_sum(&reqs),
        };
        if let Some(n) = autoscaler.observe(&obs) {
            if n != obs.spec {
                fleet.scale_to(n, end);
            }
        }
        while first_unresolved < reqs.len() && reqs[first_unresolved].is_resolved() {
            first_unresolved += 1;
        }
        if next_arrival == reqs.len() && first_unresolved == reqs.len() {
            break end;
        }
        if end >= horizon {
            fleet.finish(&mut reqs);
            break end;
        }
    };
    record(&mut series, end, &fleet, fleet.ready_replicas());
    SimOutcome {
        requests: reqs,
        series,
        gpu_seconds: fleet.gpu_seconds(end),
        ready_replica_seconds,
        end_s: end,
    }
}

fn record(series: &mut Vec<ReplicaPoint>, t: f64, fleet: &Fleet, ready: u32) {
    let point = ReplicaPoint {
        t,
        spec: fleet.spec_replicas(),
        ready,
        pods: fleet.total_pods(),
    };
    let changed = series
        .last()
        .is_none_or(|p| (p.spec, p.ready, p.pods) != (point.spec, point.ready, point.pods));
    if changed {
        series.push(point);
    }
}
