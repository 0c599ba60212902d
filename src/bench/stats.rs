//! Summary statistics of one load level: latency percentiles, throughput and errors.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What one successful request measured.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestRecord {
    /// Seconds from sending the request to the first token.
    pub ttft_s: f64,
    /// Seconds between consecutive token chunks.
    pub itl_s: Vec<f64>,
    /// Seconds from sending the request to the end of the stream.
    pub e2e_s: f64,
    /// Prompt tokens the server counted (`usage.prompt_tokens`), or 0 without usage.
    pub prompt_tokens: u64,
    /// Output tokens: `usage.completion_tokens`, or the token chunks without usage.
    pub output_tokens: u64,
    /// Whether the stream carried a `usage` object.
    pub has_usage: bool,
}

/// How one request ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Ok(RequestRecord),
    /// A failure, with its kind (`http_429`, `connect`, `timeout`, `stream_broken`, …)
    /// and the seconds it took to fail.
    Err {
        kind: String,
        elapsed_s: f64,
    },
}

/// p50, p90, p99 and the mean of a sample, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub mean: f64,
}

impl Percentiles {
    /// The summary of `values`; all zero for an empty sample.
    pub fn of(values: &[f64]) -> Percentiles {
        if values.is_empty() {
            return Percentiles::default();
        }
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        Percentiles {
            p50: percentile(&sorted, 50.0),
            p90: percentile(&sorted, 90.0),
            p99: percentile(&sorted, 99.0),
            mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
        }
    }
}

/// The `q`-th percentile (0–100) of an ascending, non-empty sample, interpolating
/// linearly between the closest ranks (numpy's default, so reports compare with
/// vLLM's and GuideLLM's).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    assert!(!sorted.is_empty(), "percentile of an empty sample");
    let rank = q.clamp(0.0, 100.0) / 100.0 * (sorted.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    let frac = rank - lo as f64;
    sorted[lo] + (sorted[hi] - sorted[lo]) * frac
}

/// The server's own gauges, averaged over a level by polling its `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct ServerGauges {
    /// Number of `/metrics` samples averaged.
    pub samples: u64,
    /// Mean `surge_saturation` (absent on servers that do not export it).
    pub saturation_mean: Option<f64>,
    /// Mean `vllm:num_requests_waiting`.
    pub waiting_mean: Option<f64>,
    /// Mean `vllm:num_requests_running`.
    pub running_mean: Option<f64>,
}

/// One load level of the report: the fields the fleet simulator reads as a capacity
/// curve keep their names (see `report.rs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LevelStats {
    /// Concurrency of the level; in rate mode the mean number of requests in flight.
    pub concurrency: f64,
    /// The offered Poisson rate (requests/s), in rate mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    /// Requests sent.
    pub requests: u64,
    /// Requests that streamed to the end.
    pub completed: u64,
    /// Failed requests by kind.
    pub errors: BTreeMap<String, u64>,
    /// Requests still running when the level's duration ran out (cancelled, not errors).
    pub incomplete: u64,
    /// Completed requests whose stream had no `usage` (tokens counted from chunks).
    pub missing_usage: u64,
    pub output_tokens: u64,
    pub prompt_tokens: u64,
    /// Seconds from the level's first request to its last answer.
    pub duration_s: f64,
    pub output_tokens_per_s: f64,
    pub requests_per_s: f64,
    pub ttft_s: Percentiles,
    pub itl_s: Percentiles,
    pub e2e_s: Percentiles,
    /// The server's gauges during the level, when its `/metrics` could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerGauges>,
}

impl LevelStats {
    /// Summarizes the outcomes of one level. `concurrency` is the fixed concurrency, or
    /// `None` in rate mode, where it is the mean in flight: the summed request time over
    /// the duration (Little's law).
    pub fn from_outcomes(
        concurrency: Option<f64>,
        outcomes: &[Outcome],
        incomplete: u64,
        duration_s: f64,
    ) -> LevelStats {
        let mut errors = BTreeMap::new();
        let (mut ttft, mut itl, mut e2e) = (Vec::new(), Vec::new(), Vec::new());
        let (mut output_tokens, mut prompt_tokens, mut missing_usage) = (0, 0, 0);
        let mut busy_s = 0.0;
        for outcome in outcomes {
            match outcome {
                Outcome::Ok(r) => {
                    ttft.push(r.ttft_s);
                    itl.extend_from_slice(&r.itl_s);
                    e2e.push(r.e2e_s);
                    output_tokens += r.output_tokens;
                    prompt_tokens += r.prompt_tokens;
                    missing_usage += u64::from(!r.has_usage);
                    busy_s += r.e2e_s;
                }
                Outcome::Err { kind, elapsed_s } => {
                    *errors.entry(kind.clone()).or_insert(0) += 1;
                    busy_s += elapsed_s;
                }
            }
        }
        let per_s = |n: f64| {
            if duration_s > 0.0 {
                n / duration_s
            } else {
                0.0
            }
        };
        LevelStats {
            concurrency: concurrency.unwrap_or_else(|| per_s(busy_s)),
            rate: None,
            requests: outcomes.len() as u64 + incomplete,
            completed: e2e.len() as u64,
            errors,
            incomplete,
            missing_usage,
            output_tokens,
            prompt_tokens,
            duration_s,
            output_tokens_per_s: per_s(output_tokens as f64),
            requests_per_s: per_s(e2e.len() as f64),
            ttft_s: Percentiles::of(&ttft),
            itl_s: Percentiles::of(&itl),
            e2e_s: Percentiles::of(&e2e),
            server: None,
        }
    }

    /// Failed requests, all kinds.
    pub fn num_errors(&self) -> u64 {
        self.errors.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ttft: f64, e2e: f64, out: u64) -> Outcome {
        Outcome::Ok(RequestRecord {
            ttft_s: ttft,
            itl_s: vec![0.01; out.saturating_sub(1) as usize],
            e2e_s: e2e,
            prompt_tokens: 10,
            output_tokens: out,
            has_usage: true,
        })
    }

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        // numpy.percentile(range(1, 11), [50, 90, 99]) = 5.5, 9.1, 9.91
        let p = Percentiles::of(&v);
        assert!((p.p50 - 5.5).abs() < 1e-12, "{p:?}");
        assert!((p.p90 - 9.1).abs() < 1e-12, "{p:?}");
        assert!((p.p99 - 9.91).abs() < 1e-12, "{p:?}");
        assert!((p.mean - 5.5).abs() < 1e-12, "{p:?}");
        // Order does not matter; one value is every percentile.
        let shuffled = [3.0, 1.0, 2.0];
        assert_eq!(Percentiles::of(&shuffled).p50, 2.0);
        let one = Percentiles::of(&[0.25]);
        assert_eq!(
            (one.p50, one.p90, one.p99, one.mean),
            (0.25, 0.25, 0.25, 0.25)
        );
        assert_eq!(Percentiles::of(&[]), Percentiles::default());
        assert_eq!(percentile(&[1.0, 2.0], 0.0), 1.0);
        assert_eq!(percentile(&[1.0, 2.0], 100.0), 2.0);
    }

    #[test]
    fn level_counts_tokens_errors_and_rates() {
        let outcomes = vec![
            record(0.1, 1.0, 5),
            record(0.3, 2.0, 7),
            Outcome::Err {
                kind: "http_429".into(),
                elapsed_s: 0.5,
            },
            Outcome::Err {
                kind: "http_429".into(),
                elapsed_s: 0.5,
            },
            Outcome::Err {
                kind: "connect".into(),
                elapsed_s: 0.0,
            },
        ];
        let s = LevelStats::from_outcomes(Some(4.0), &outcomes, 1, 2.0);
        assert_eq!(s.requests, 6);
        assert_eq!(s.completed, 2);
        assert_eq!(s.incomplete, 1);
        assert_eq!(s.num_errors(), 3);
        assert_eq!(s.errors["http_429"], 2);
        assert_eq!(s.errors["connect"], 1);
        assert_eq!(s.output_tokens, 12);
        assert_eq!(s.prompt_tokens, 20);
        assert_eq!(s.output_tokens_per_s, 6.0);
        assert_eq!(s.requests_per_s, 1.0);
        assert_eq!(s.concurrency, 4.0);
        assert_eq!(s.itl_s.p50, 0.01);
        // Rate mode: the mean in flight is the busy time over the duration.
        let r = LevelStats::from_outcomes(None, &outcomes, 0, 2.0);
        assert!((r.concurrency - 2.0).abs() < 1e-12, "{}", r.concurrency);
    }
}
