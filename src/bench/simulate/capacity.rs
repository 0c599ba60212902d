//! The capacity curve of one replica, read from a `surge bench` report: latency and
//! throughput against concurrency, interpolated between the measured levels.

use std::path::Path;

use anyhow::{bail, Context};
use serde::Deserialize;

/// The part of a `surge bench` report the simulator reads. Every other field of the
/// report is ignored, so the report can grow without breaking the simulator.
#[derive(Debug, Deserialize)]
struct ReportFile {
    levels: Vec<LevelFile>,
}

#[derive(Debug, Deserialize)]
struct LevelFile {
    concurrency: f64,
    #[serde(default)]
    requests_per_s: Option<f64>,
    #[serde(default)]
    output_tokens_per_s: Option<f64>,
    #[serde(default)]
    e2e_s: Option<QuantilesFile>,
    #[serde(default)]
    ttft_s: Option<QuantilesFile>,
}

#[derive(Debug, Deserialize)]
struct QuantilesFile {
    #[serde(default)]
    p50: Option<f64>,
    #[serde(default)]
    p90: Option<f64>,
}

/// One measured concurrency level.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Level {
    /// Requests in flight that the load generator held.
    pub concurrency: f64,
    /// Median end-to-end latency of a request at this concurrency.
    pub e2e_s: f64,
    /// 90th percentile time to first token at this concurrency.
    pub ttft_p90_s: f64,
    /// Completed requests per second.
    pub requests_per_s: f64,
}

/// Latency against concurrency for one replica, with the mean output length of the
/// requests that measured it (so a trace request's length can scale its service time).
#[derive(Debug, Clone, PartialEq)]
pub struct CapacityCurve {
    /// Sorted by concurrency, strictly increasing.
    levels: Vec<Level>,
    /// Output tokens per request in the measurement (output tok/s ÷ req/s), if the
    /// report had both.
    mean_output_tokens: Option<f64>,
}

impl CapacityCurve {
    /// Reads the `levels` of a `surge bench` JSON report.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading capacity report {}", path.display()))?;
        Self::from_json(&text).with_context(|| format!("capacity report {}", path.display()))
    }

    /// Parses a report. Levels without a positive throughput or without the latencies
    /// (a level where every request failed) are skipped; at least one must remain.
    pub fn from_json(text: &str) -> anyhow::Result<Self> {
        let report: ReportFile = serde_json::from_str(text).context("not a bench report")?;
        let mut levels = Vec::new();
        let mut tokens_per_s = 0.0;
        let mut requests_per_s = 0.0;
        for l in &report.levels {
            let (Some(rps), Some(e2e), Some(ttft)) = (
                l.requests_per_s,
                l.e2e_s.as_ref().and_then(|q| q.p50),
                l.ttft_s.as_ref().and_then(|q| q.p90),
            ) else {
                continue;
            };
            let usable = [l.concurrency, rps, e2e]
                .iter()
                .all(|v| v.is_finite() && *v > 0.0)
                && ttft.is_finite()
                && ttft >= 0.0;
            if !usable {
                continue;
            }
            if let Some(tps) = l.output_tokens_per_s.filter(|v| v.is_finite() && *v > 0.0) {
                tokens_per_s += tps;
                requests_per_s += rps;
            }
            levels.push(Level {
                concurrency: l.concurrency,
                e2e_s: e2e,
                ttft_p90_s: ttft.min(e2e),
                requests_per_s: rps,
            });
        }
        let mean_output_tokens = (requests_per_s > 0.0).then(|| tokens_per_s / requests_per_s);
        Self::new(levels, mean_output_tokens)
    }

    /// A curve from levels in any order; a concurrency measured twice keeps its first
    /// level.
    pub fn new(mut levels: Vec<Level>, mean_output_tokens: Option<f64>) -> anyhow::Result<Self> {
        levels.sort_by(|a, b| a.concurrency.total_cmp(&b.concurrency));
        levels.dedup_by(|b, a| a.concurrency == b.concurrency);
        if levels.is_empty() {
            bail!("no usable level (each needs concurrency, requests_per_s, e2e_s.p50 and ttft_s.p90)");
        }
        Ok(Self {
            levels,
            mean_output_tokens,
        })
    }

    /// The measured levels, by increasing concurrency.
    pub fn levels(&self) -> &[Level] {
        &self.levels
    }

    /// The highest concurrency measured: the default number of requests a replica runs
    /// at once (`--max-num-seqs` of the measured server, as far as the sweep shows).
    pub fn max_concurrency(&self) -> f64 {
        self.last().concurrency
    }

    /// Output tokens of the average measured request, if the report says.
    pub fn mean_output_tokens(&self) -> Option<f64> {
        self.mean_output_tokens
    }

    /// End-to-end seconds of an average request while `c` requests run on the replica.
    /// Below the first level the first level's latency holds (a replica does not get
    /// faster than at its lowest measured load); beyond the last level the replica's
    /// throughput stays at the last level's, so latency grows like a queue's:
    /// `c / requests_per_s`.
    pub fn e2e_at(&self, c: f64) -> f64 {
        let last = self.last();
        if c > last.concurrency {
            return (c / last.requests_per_s).max(last.e2e_s);
        }
        self.interpolate(c, |l| l.e2e_s)
    }

    /// 90th percentile time to first token when a request starts next to `c - 1`
    /// others; beyond the last level it grows in proportion to the concurrency.
    pub fn ttft_p90_at(&self, c: f64) -> f64 {
        let last = self.last();
        if c > last.concurrency {
            return last.ttft_p90_s * c / last.concurrency;
        }
        self.interpolate(c, |l| l.ttft_p90_s)
    }

    fn last(&self) -> &Level {
        self.levels.last().expect("a curve has at least one level")
    }

    /// Linear interpolation of `f` over concurrency, flat below the first level.
    fn interpolate(&self, c: f64, f: impl Fn(&Level) -> f64) -> f64 {
        let first = &self.levels[0];
        if c <= first.concurrency {
            return f(first);
        }
        for pair in self.levels.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            if c <= b.concurrency {
                let w = (c - a.concurrency) / (b.concurrency - a.concurrency);
                return f(a) + w * (f(b) - f(a));
            }
        }
        f(self.last())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = r#"{
        "model": "m", "extra": {"ignored": true},
        "levels": [
            {"concurrency": 4, "requests_per_s": 2.0, "output_tokens_per_s": 200.0,
             "e2e_s": {"p50": 2.0, "p90": 3.0}, "ttft_s": {"p50": 0.1, "p90": 0.2}, "errors": {}},
            {"concurrency": 1, "requests_per_s": 1.0, "output_tokens_per_s": 100.0,
             "e2e_s": {"p50": 1.0}, "ttft_s": {"p90": 0.1}},
            {"concurrency": 8, "requests_per_s": 0.0, "e2e_s": null, "ttft_s": null}
        ]
    }"#;

    #[test]
    fn reads_levels_sorted_and_skips_unusable_ones() {
        let c = CapacityCurve::from_json(REPORT).unwrap();
        let conc: Vec<f64> = c.levels().iter().map(|l| l.concurrency).collect();
        assert_eq!(conc, vec![1.0, 4.0]);
        assert_eq!(c.mean_output_tokens(), Some(100.0));
        assert_eq!(c.max_concurrency(), 4.0);
    }

    #[test]
    fn interpolates_inside_and_queues_beyond_the_last_level() {
        let c = CapacityCurve::from_json(REPORT).unwrap();
        assert_eq!(c.e2e_at(0.5), 1.0);
        assert!((c.e2e_at(2.5) - 1.5).abs() < 1e-12);
        assert_eq!(c.e2e_at(4.0), 2.0);
        // 8 in flight at 2 req/s: 4 s each.
        assert_eq!(c.e2e_at(8.0), 4.0);
        assert!((c.ttft_p90_at(8.0) - 0.4).abs() < 1e-12);
    }

    #[test]
    fn rejects_a_report_without_usable_levels() {
        let err = CapacityCurve::from_json(r#"{"levels": []}"#).unwrap_err();
        assert!(err.to_string().contains("no usable level"), "{err}");
        assert!(CapacityCurve::from_json("{}").is_err());
    }
}
