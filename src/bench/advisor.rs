//! The autoscaling advisor: from a concurrency sweep and latency objectives, the knee
//! (the highest concurrency that meets every objective) and the Knative and KEDA
//! settings that follow from it, with the reasoning.

use serde::{Deserialize, Serialize};

use super::stats::{LevelStats, Percentiles};

/// Latency objectives at the 90th percentile, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Slos {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttft_p90_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub itl_p90_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub e2e_p90_s: Option<f64>,
}

impl Slos {
    /// Whether any objective is set.
    pub fn any(&self) -> bool {
        self.ttft_p90_s.is_some() || self.itl_p90_s.is_some() || self.e2e_p90_s.is_some()
    }

    /// (name, objective, the level's p90) for each objective set.
    fn checks(&self, level: &LevelStats) -> Vec<(&'static str, f64, f64)> {
        let p90 = |p: &Percentiles| p.p90;
        [
            ("TTFT p90", self.ttft_p90_s, p90(&level.ttft_s)),
            ("ITL p90", self.itl_p90_s, p90(&level.itl_s)),
            ("e2e p90", self.e2e_p90_s, p90(&level.e2e_s)),
        ]
        .into_iter()
        .filter_map(|(name, slo, v)| slo.map(|s| (name, s, v)))
        .collect()
    }
}

/// A level whose failed requests are more than this share of its requests misses.
pub const MAX_ERROR_SHARE: f64 = 0.01;

/// Knative's default `target-utilization-percentage`: the KPA aims at this share of the
/// target, which leaves headroom for a new replica's cold start.
pub const KNATIVE_UTILIZATION: f64 = 0.7;

/// Headroom for the KEDA thresholds (which have no utilization factor): scale out at
/// this share of the value measured at the knee, as deploy/'s 0.8 saturation target.
pub const KEDA_HEADROOM: f64 = 0.8;

/// What the advisor recommends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Advice {
    pub slos: Slos,
    /// The highest concurrency (interpolated between sweep points) that meets every
    /// objective; `None` when even the lowest level misses.
    pub knee_concurrency: Option<f64>,
    /// Every swept level met the objectives: the real knee lies above the sweep.
    pub knee_above_sweep: bool,
    /// `autoscaling.knative.dev/target` (requests in flight per replica).
    pub knative_target: Option<u32>,
    /// Knative's `containerConcurrency` (hard limit of requests in flight per replica).
    pub container_concurrency: Option<u32>,
    /// KEDA threshold (AverageValue, per replica) on `surge_saturation`.
    pub keda_saturation_threshold: Option<f64>,
    /// KEDA threshold (AverageValue, per replica) on `vllm:num_requests_waiting`.
    pub keda_waiting_threshold: Option<u32>,
    /// Why, one line a step.
    pub reasoning: Vec<String>,
}

/// The objective the level misses, with its value, or `None` when it meets them all.
fn missed(slos: &Slos, level: &LevelStats) -> Option<String> {
    let share = level.num_errors() as f64 / level.requests.max(1) as f64;
    if share > MAX_ERROR_SHARE || level.completed == 0 {
        return Some(format!(
            "{} of {} requests failed",
            level.num_errors(),
            level.requests
        ));
    }
    let misses: Vec<String> = slos
        .checks(level)
        .into_iter()
        .filter(|(_, slo, v)| v > slo)
        .map(|(name, slo, v)| format!("{name} {} > {}", fmt_s(v), fmt_s(slo)))
        .collect();
    (!misses.is_empty()).then(|| misses.join(", "))
}

/// Seconds as `1.23s` or `45ms`.
pub fn fmt_s(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.2}s")
    } else {
        format!("{:.0}ms", s * 1000.0)
    }
}

/// Linear interpolation of `(x, y)` points at `x`.
fn lerp(x: f64, (x0, y0): (f64, f64), (x1, y1): (f64, f64)) -> f64 {
    if x1 == x0 {
        y0
    } else {
        y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    }
}

/// The concurrency between a passing level `a` and the failing level `b` above it at
/// which the objectives `b` misses are just met: for each, where the straight line
/// through the two p90s crosses the objective; the lowest of those. Failures by errors
/// alone give no line to follow, so the knee stays at `a`.
fn interpolate_knee(slos: &Slos, a: &LevelStats, b: &LevelStats) -> f64 {
    if b.num_errors() as f64 / b.requests.max(1) as f64 > MAX_ERROR_SHARE || b.completed == 0 {
        return a.concurrency;
    }
    slos.checks(a)
        .into_iter()
        .zip(slos.checks(b))
        .filter(|((_, _, _), (_, slo, vb))| vb > slo)
        .map(|((_, slo, va), (_, _, vb))| {
            if vb <= va {
                a.concurrency
            } else {
                a.concurrency + (slo - va) / (vb - va) * (b.concurrency - a.concurrency)
            }
        })
        .fold(b.concurrency, f64::min)
}

/// A server gauge interpolated at concurrency `c` over the sorted levels.
fn gauge_at(levels: &[&LevelStats], c: f64, get: fn(&LevelStats) -> Option<f64>) -> Option<f64> {
    let points: Vec<(f64, f64)> = levels
        .iter()
        .filter_map(|l| get(l).map(|v| (l.concurrency, v)))
        .collect();
    let first = *points.first()?;
    if c <= first.0 {
        return Some(lerp(c, (0.0, 0.0), first));
    }
    for w in points.windows(2) {
        if c <= w[1].0 {
            return Some(lerp(c, w[0], w[1]));
        }
    }
    points.last().map(|p| p.1)
}

/// Finds the knee of `levels` under `slos` and derives the autoscaling settings.
pub fn advise(levels: &[LevelStats], slos: &Slos) -> Advice {
    let mut sorted: Vec<&LevelStats> = levels.iter().collect();
    sorted.sort_by(|a, b| a.concurrency.total_cmp(&b.concurrency));
    let mut reasoning = Vec::new();
    let mut advice = Advice {
        slos: *slos,
        knee_concurrency: None,
        knee_above_sweep: false,
        knative_target: None,
        container_concurrency: None,
        keda_saturation_threshold: None,
        keda_waiting_threshold: None,
        reasoning: Vec::new(),
    };
    // The first level that misses ends the search: a later level that passes by luck
    // (noise, a warm cache) would not hold in production.
    let first_miss = sorted
        .iter()
        .enumerate()
        .find_map(|(i, l)| missed(slos, l).map(|why| (i, why)));
    for l in &sorted {
        let verdict = missed(slos, l).unwrap_or_else(|| "meets every objective".into());
        reasoning.push(format!(
            "concurrency {:.1}: TTFT p90 {}, ITL p90 {}, e2e p90 {}: {verdict}",
            l.concurrency,
            fmt_s(l.ttft_s.p90),
            fmt_s(l.itl_s.p90),
            fmt_s(l.e2e_s.p90)
        ));
    }
    let knee = match first_miss {
        Some((0, why)) => {
            reasoning.push(format!(
                "even the lowest concurrency misses ({why}): no replica meets these objectives; \
                 use a faster GPU or looser objectives, or sweep lower"
            ));
            advice.reasoning = reasoning;
            return advice;
        }
        Some((i, _)) => {
            let knee = interpolate_knee(slos, sorted[i - 1], sorted[i]);
            reasoning.push(format!(
                "the knee lies between concurrency {:.1} (meets) and {:.1} (misses); \
                 interpolating the p90s that cross their objectives puts it at {knee:.2}",
                sorted[i - 1].concurrency,
                sorted[i].concurrency
            ));
            knee
        }
        None => {
            let top = sorted.last().map_or(0.0, |l| l.concurrency);
            advice.knee_above_sweep = true;
            reasoning.push(format!(
                "every level meets the objectives: the knee is at least {top:.1}; sweep higher \
                 concurrencies to find it (the values below are a floor)"
            ));
            top
        }
    };
    advice.knee_concurrency = Some(knee);
    // Rounded down, unless within 0.1 of the next integer: closer than a sweep's
    // noise, and a floor there would cost a whole request per replica.
    let per_replica = ((knee + 0.1).floor() as u32).max(1);
    advice.knative_target = Some(per_replica);
    advice.container_concurrency = Some(per_replica);
    reasoning.push(format!(
        "autoscaling.knative.dev/target = {per_replica}: requests in flight per replica at the \
         knee; Knative's KPA scales out at {:.0}% of it (target-utilization-percentage), the \
         headroom a new replica's cold start needs",
        KNATIVE_UTILIZATION * 100.0
    ));
    reasoning.push(format!(
        "containerConcurrency = {per_replica}: a hard limit at the knee keeps every admitted \
         request within the objectives; requests beyond it wait in the queue-proxy or the \
         activator, where the KPA sees them and scales"
    ));

    match gauge_at(&sorted, knee, |l| l.server.and_then(|s| s.saturation_mean)) {
        Some(s) => {
            let threshold = (s * KEDA_HEADROOM * 100.0).round() / 100.0;
            let threshold = threshold.max(0.01);
            advice.keda_saturation_threshold = Some(threshold);
            reasoning.push(format!(
                "surge_saturation averaged {s:.3} at the knee; KEDA threshold {threshold} \
                 ({:.0}% of it, per replica with AverageValue): token-aware, it also rises when \
                 long prompts fill the KV cache before the request count does",
                KEDA_HEADROOM * 100.0
            ));
        }
        None => reasoning.push(
            "no surge_saturation from the server's /metrics: no KEDA saturation threshold \
             (benchmark a surge server, or pass --metrics-url)"
                .into(),
        ),
    }
    match gauge_at(&sorted, knee, |l| l.server.and_then(|s| s.waiting_mean)) {
        Some(w) if w * KEDA_HEADROOM >= 1.0 => {
            let threshold = (w * KEDA_HEADROOM).round() as u32;
            advice.keda_waiting_threshold = Some(threshold);
            reasoning.push(format!(
                "vllm:num_requests_waiting averaged {w:.2} at the knee; KEDA threshold \
                 {threshold} ({:.0}% of it, per replica)",
                KEDA_HEADROOM * 100.0
            ));
        }
        Some(w) => {
            advice.keda_waiting_threshold = Some(1);
            reasoning.push(format!(
                "vllm:num_requests_waiting averaged only {w:.2} at the knee (the knee comes \
                 before --max-num-seqs fills): threshold 1, the lowest that fires, and it fires \
                 only once the replica is past its knee; prefer the surge_saturation trigger"
            ));
        }
        None => reasoning.push(
            "no vllm:num_requests_waiting from the server's /metrics: no KEDA waiting threshold"
                .into(),
        ),
    }
    advice.reasoning = reasoning;
    advice
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::stats::ServerGauges;
    use std::collections::BTreeMap;

    /// A level with TTFT p90 = 0.1 s × c, ITL p90 = 10 ms and saturation c / 16.
    fn level(c: f64) -> LevelStats {
        let p = |v: f64| Percentiles {
            p50: v,
            p90: v,
            p99: v,
            mean: v,
        };
        LevelStats {
            concurrency: c,
            rate: None,
            requests: 100,
            completed: 100,
            errors: BTreeMap::new(),
            incomplete: 0,
            missing_usage: 0,
            output_tokens: 1000,
            prompt_tokens: 1000,
            duration_s: 10.0,
            output_tokens_per_s: 100.0,
            requests_per_s: 10.0,
            ttft_s: p(0.1 * c),
            itl_s: p(0.01),
            e2e_s: p(1.0),
            server: Some(ServerGauges {
                samples: 10,
                saturation_mean: Some(c / 16.0),
                waiting_mean: Some((c - 8.0).max(0.0)),
                running_mean: Some(c.min(8.0)),
            }),
        }
    }

    fn slos(ttft: f64) -> Slos {
        Slos {
            ttft_p90_s: Some(ttft),
            itl_p90_s: Some(0.05),
            e2e_p90_s: None,
        }
    }

    #[test]
    fn the_knee_is_interpolated_between_sweep_points() {
        let levels: Vec<LevelStats> = [1.0, 4.0, 8.0, 16.0].map(level).to_vec();
        let a = advise(&levels, &slos(1.2));
        let knee = a.knee_concurrency.unwrap();
        assert!((knee - 12.0).abs() < 1e-9, "{a:#?}");
        assert!(!a.knee_above_sweep);
        assert_eq!(a.knative_target, Some(12));
        assert_eq!(a.container_concurrency, Some(12));
        // Saturation 12/16 = 0.75 at the knee, times the headroom.
        assert_eq!(a.keda_saturation_threshold, Some(0.6));
        // Waiting 4 at the knee, times the headroom, rounded.
        assert_eq!(a.keda_waiting_threshold, Some(3));
        assert!(a
            .reasoning
            .iter()
            .any(|r| r.contains("between concurrency 8.0")));
    }

    #[test]
    fn edge_cases_are_said_out_loud() {
        let levels: Vec<LevelStats> = [1.0, 2.0].map(level).to_vec();
        let above = advise(&levels, &slos(10.0));
        assert!(above.knee_above_sweep);
        assert_eq!(above.knative_target, Some(2));
        assert_eq!(above.keda_waiting_threshold, Some(1), "{above:#?}");

        let none = advise(&levels, &slos(0.05));
        assert_eq!(none.knee_concurrency, None);
        assert_eq!(none.knative_target, None);
        assert!(none
            .reasoning
            .last()
            .unwrap()
            .contains("lowest concurrency misses"));

        // A level that fails by errors caps the knee at the level below it.
        let mut failing = levels.clone();
        failing[1].errors.insert("http_429".into(), 50);
        let capped = advise(&failing, &slos(10.0));
        assert_eq!(capped.knee_concurrency, Some(1.0));

        // Without server gauges there are no KEDA thresholds, and the reasoning says so.
        let mut bare = levels.clone();
        bare.iter_mut().for_each(|l| l.server = None);
        let a = advise(&bare, &slos(10.0));
        assert_eq!(a.keda_saturation_threshold, None);
        assert!(a
            .reasoning
            .iter()
            .any(|r| r.contains("no surge_saturation")));
    }
}
