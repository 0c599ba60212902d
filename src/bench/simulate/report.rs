//! The simulator's results per policy: SLO attainment, latency percentiles, replicas
//! over time and GPU-seconds, as JSON and as a comparison table.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::requests::{DropReason, RequestRecord};
use super::sim::SimOutcome;

/// The service-level objectives a request is held to.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Slo {
    /// Time to first token each request must meet (the objective is on the p90, so
    /// attainment ≥ 90% meets it).
    pub ttft_s: Option<f64>,
    /// End-to-end latency each request must meet.
    pub e2e_s: Option<f64>,
}

impl Slo {
    /// Whether a request finished within every objective set.
    pub fn met_by(&self, r: &RequestRecord) -> bool {
        let (Some(ttft), Some(e2e)) = (r.ttft(), r.e2e()) else {
            return false;
        };
        self.ttft_s.is_none_or(|s| ttft <= s) && self.e2e_s.is_none_or(|s| e2e <= s)
    }
}

/// Nearest-rank percentiles; `None` without samples.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Percentiles {
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
}

impl Percentiles {
    pub fn of(mut values: Vec<f64>) -> Self {
        values.sort_by(f64::total_cmp);
        let at = |q: f64| {
            if values.is_empty() {
                return None;
            }
            let rank = (q * values.len() as f64).ceil() as usize;
            Some(round3(values[rank.clamp(1, values.len()) - 1]))
        };
        Self {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
        }
    }
}

/// Where the requests went.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RequestCounts {
    pub total: usize,
    pub served: usize,
    pub dropped: BTreeMap<DropReason, usize>,
}

/// Replica counts over the replay.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplicaSummary {
    /// Fewest and most replicas asked for.
    pub min: u32,
    pub max: u32,
    /// Time-weighted mean of ready replicas.
    pub mean_ready: f64,
    /// Number of changes of the replicas asked for.
    pub num_changes: usize,
    /// `[t_seconds, asked for, ready, pods incl. draining]` from each change on.
    pub series: Vec<[f64; 4]>,
}

/// One policy's results.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyReport {
    pub name: String,
    /// The policy's settings in words.
    pub description: String,
    pub requests: RequestCounts,
    /// Share of all requests (dropped ones count as missed) that met the SLO.
    pub slo_attainment: f64,
    pub queue_delay_s: Percentiles,
    pub ttft_s: Percentiles,
    pub e2e_s: Percentiles,
    pub gpu_seconds: f64,
    pub ready_replica_seconds: f64,
    pub replicas: ReplicaSummary,
    /// When the last request was resolved.
    pub end_s: f64,
}

impl PolicyReport {
    /// Summarizes a replay.
    pub fn new(name: &str, description: String, outcome: &SimOutcome, slo: &Slo) -> Self {
        let reqs = &outcome.requests;
        let mut dropped = BTreeMap::new();
        for reason in reqs.iter().filter_map(|r| r.dropped) {
            *dropped.entry(reason).or_insert(0) += 1;
        }
        let served = reqs.iter().filter(|r| r.finished.is_some()).count();
        let met = reqs.iter().filter(|r| slo.met_by(r)).count();
        let collect = |f: fn(&RequestRecord) -> Option<f64>| reqs.iter().filter_map(f).collect();
        let series = &outcome.series;
        let changes = series.windows(2).filter(|w| w[0].spec != w[1].spec).count();
        let end = outcome.end_s;
        Self {
            name: name.to_string(),
            description,
            requests: RequestCounts {
                total: reqs.len(),
                served,
                dropped,
            },
            slo_attainment: if reqs.is_empty() {
                1.0
            } else {
                round4(met as f64 / reqs.len() as f64)
            },
            queue_delay_s: Percentiles::of(collect(RequestRecord::queue_delay)),
            ttft_s: Percentiles::of(collect(RequestRecord::ttft)),
            e2e_s: Percentiles::of(collect(RequestRecord::e2e)),
            gpu_seconds: round3(outcome.gpu_seconds),
            ready_replica_seconds: round3(outcome.ready_replica_seconds),
            replicas: ReplicaSummary {
                min: series.iter().map(|p| p.spec).min().unwrap_or(0),
                max: series.iter().map(|p| p.spec).max().unwrap_or(0),
                mean_ready: if end > 0.0 {
                    round3(outcome.ready_replica_seconds / end)
                } else {
                    0.0
                },
                num_changes: changes,
                series: series
                    .iter()
                    .map(|p| [round3(p.t), p.spec.into(), p.ready.into(), p.pods.into()])
                    .collect(),
            },
            end_s: round3(end),
        }
    }

    /// Requests dropped for any reason.
    pub fn num_dropped(&self) -> usize {
        self.requests.dropped.values().sum()
    }
}

/// The whole simulation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimReport {
    pub trace: String,
    pub capacity: String,
    pub num_requests: usize,
    pub trace_duration_s: f64,
    pub cold_start_s: f64,
    pub slo: Slo,
    pub policies: Vec<PolicyReport>,
}

impl SimReport {
    /// The comparison table printed after a run.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let slo = match (self.slo.ttft_s, self.slo.e2e_s) {
            (Some(t), Some(e)) => format!("TTFT ≤ {t}s and e2e ≤ {e}s"),
            (Some(t), None) => format!("TTFT ≤ {t}s"),
            (None, Some(e)) => format!("e2e ≤ {e}s"),
            (None, None) => "finished".to_string(),
        };
        let _ = writeln!(
            out,
            "{} requests over {:.0} s, cold start {} s; SLO: {slo}",
            self.num_requests, self.trace_duration_s, self.cold_start_s
        );
        let _ = writeln!(
            out,
            "{:<18} {:>7} {:>8} {:>8} {:>8} {:>9} {:>22} {:>9} {:>7}",
            "policy",
            "SLO met",
            "queue50",
            "queue90",
            "queue99",
            "TTFT p90",
            "replicas min/avg/max",
            "GPU-s",
            "dropped"
        );
        for p in &self.policies {
            let secs = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}s"));
            let replicas = format!(
                "{}/{:.2}/{}",
                p.replicas.min, p.replicas.mean_ready, p.replicas.max
            );
            let _ = writeln!(
                out,
                "{:<18} {:>6.1}% {:>8} {:>8} {:>8} {:>9} {:>22} {:>9.0} {:>7}",
                p.name,
                p.slo_attainment * 100.0,
                secs(p.queue_delay_s.p50),
                secs(p.queue_delay_s.p90),
                secs(p.queue_delay_s.p99),
                secs(p.ttft_s.p90),
                replicas,
                p.gpu_seconds,
                p.num_dropped()
            );
        }
        for p in &self.policies {
            let _ = writeln!(
                out,
                "{}: {}; replicas changed {} times",
                p.name, p.description, p.replicas.num_changes
            );
        }
        out
    }
}

fn round3(v: f64) -> f64 {
    (v * 1e3).round() / 1e3
}

fn round4(v: f64) -> f64 {
    (v * 1e4).round() / 1e4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let p = Percentiles::of((1..=100).map(f64::from).collect());
        assert_eq!((p.p50, p.p90, p.p99), (Some(50.0), Some(90.0), Some(99.0)));
        assert_eq!(Percentiles::of(vec![]).p50, None);
        assert_eq!(Percentiles::of(vec![2.0]).p99, Some(2.0));
    }

    #[test]
    fn slo_needs_a_finished_request_within_each_objective() {
        let mut r = RequestRecord {
            arrival: 1.0,
            prompt_tokens: 1.0,
            output_tokens: 1.0,
            work: 1.0,
            started: Some(1.5),
            first_token: Some(2.0),
            finished: None,
            dropped: None,
        };
        let slo = Slo {
            ttft_s: Some(1.0),
            e2e_s: Some(5.0),
        };
        assert!(!slo.met_by(&r));
        r.finished = Some(6.0);
        assert!(slo.met_by(&r));
        r.finished = Some(6.5);
        assert!(!slo.met_by(&r));
        assert!(Slo::default().met_by(&r));
    }
}
