//! Runs one load level — a fixed number of concurrent clients or Poisson arrivals at a
//! rate — bounded by a request count and a duration, and summarizes it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::client::{self, Target};
use super::progress::Progress;
use super::server_metrics::{self, Steady};
use super::stats::{LevelStats, Outcome};
use super::workload::RequestSpec;

/// How requests arrive during a level.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arrivals {
    /// This many clients, each sending its next request when the last one ends.
    Concurrency(usize),
    /// Poisson arrivals at this many requests per second (open loop), seeded.
    Rate { rate: f64, seed: u64 },
}

/// One level: its arrivals and its bounds. No new request starts after `max_requests`
/// or after `duration`; requests still running at `duration` are cancelled and counted
/// as incomplete.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LevelPlan {
    pub arrivals: Arrivals,
    pub max_requests: usize,
    pub duration: Duration,
}

impl LevelPlan {
    /// A short name for progress lines: `concurrency 8`, `rate 2.5/s`.
    pub fn label(&self) -> String {
        match self.arrivals {
            Arrivals::Concurrency(c) => format!("concurrency {c}"),
            Arrivals::Rate { rate, .. } => format!("rate {rate}/s"),
        }
    }
}

/// Arrival times of a Poisson process at `rate` per second, from a seeded generator:
/// exponential gaps, at most `max` arrivals, all before `within`.
pub fn poisson_arrivals(rate: f64, max: usize, within: Duration, seed: u64) -> Vec<Duration> {
    assert!(rate > 0.0 && rate.is_finite(), "rate must be positive");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut t = 0.0;
    let mut out = Vec::new();
    while out.len() < max {
        // 1 - U lies in (0, 1], so the log is finite.
        let u: f64 = rng.random();
        t += -(1.0 - u).ln() / rate;
        if t >= within.as_secs_f64() {
            break;
        }
        out.push(Duration::from_secs_f64(t));
    }
    out
}

/// Runs one level against `target`, cycling through `specs`, while sampling the
/// server's gauges at `metrics_url` (if any).
pub async fn run_level(
    target: Arc<Target>,
    specs: Arc<Vec<RequestSpec>>,
    plan: &LevelPlan,
    metrics_url: Option<&str>,
) -> LevelStats {
    assert!(!specs.is_empty(), "no requests to send");
    let (stop_metrics, stop_rx) = tokio::sync::oneshot::channel();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let steady = Steady {
        in_flight: in_flight.clone(),
        min_in_flight: match plan.arrivals {
            Arrivals::Concurrency(c) => c.min(plan.max_requests),
            Arrivals::Rate { .. } => 0,
        },
    };
    let sampler = metrics_url.map(|url| {
        tokio::spawn(server_metrics::sample_until(
            target.client.clone(),
            url.to_string(),
            steady,
            stop_rx,
        ))
    });

    let started = Instant::now();
    let deadline = started + plan.duration;
    let issued = Arc::new(AtomicU64::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel::<Outcome>();
    let mut tasks = JoinSet::new();
    let expected = match plan.arrivals {
        Arrivals::Concurrency(c) => {
            let next = Arc::new(AtomicUsize::new(0));
            for _ in 0..c {
                let (target, specs, tx) = (target.clone(), specs.clone(), tx.clone());
                let (next, issued, max) = (next.clone(), issued.clone(), plan.max_requests);
                let in_flight = in_flight.clone();
                tasks.spawn(async move {
                    while Instant::now() < deadline {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        if i >= max {
                            break;
                        }
                        issued.fetch_add(1, Ordering::SeqCst);
                        in_flight.fetch_add(1, Ordering::SeqCst);
                        let outcome = client::send(&target, &specs[i % specs.len()]).await;
                        in_flight.fetch_sub(1, Ordering::SeqCst);
                        if tx.send(outcome).is_err() {
                            break;
                        }
                    }
                });
            }
            plan.max_requests
        }
        Arrivals::Rate { rate, seed } => {
            let times = poisson_arrivals(rate, plan.max_requests, plan.duration, seed);
            for (i, at) in times.iter().enumerate() {
                let (target, specs, tx) = (target.clone(), specs.clone(), tx.clone());
                let (issued, at) = (issued.clone(), started + *at);
                tasks.spawn(async move {
                    tokio::time::sleep_until(at).await;
                    issued.fetch_add(1, Ordering::SeqCst);
                    let outcome = client::send(&target, &specs[i % specs.len()]).await;
                    let _ = tx.send(outcome);
                });
            }
            times.len()
        }
    };
    drop(tx);

    let mut progress = Progress::new(&plan.label(), expected as u64);
    let mut outcomes = Vec::new();
    let mut num_errors = 0;
    let mut last_answer = started;
    let collect = async {
        while let Some(outcome) = rx.recv().await {
            num_errors += u64::from(matches!(outcome, Outcome::Err { .. }));
            outcomes.push(outcome);
            last_answer = Instant::now();
            progress.inc(num_errors);
        }
    };
    let timed_out = tokio::time::timeout_at(deadline, collect).await.is_err();
    tasks.abort_all();
    while let Some(outcome) = rx.recv().await {
        // Sent before the abort landed.
        outcomes.push(outcome);
    }
    progress.finish();
    let ended = if timed_out { deadline } else { last_answer };
    let incomplete = issued.load(Ordering::SeqCst) - outcomes.len() as u64;
    if incomplete > 0 {
        tracing::warn!(
            "{}: --duration ran out; {incomplete} requests still running were cancelled",
            plan.label()
        );
    }

    let fixed = match plan.arrivals {
        Arrivals::Concurrency(c) => Some(c as f64),
        Arrivals::Rate { .. } => None,
    };
    let duration_s = (ended - started).as_secs_f64();
    let mut stats = LevelStats::from_outcomes(fixed, &outcomes, incomplete, duration_s);
    if let Arrivals::Rate { rate, .. } = plan.arrivals {
        stats.rate = Some(rate);
    }
    if let Some(sampler) = sampler {
        let _ = stop_metrics.send(());
        stats.server = sampler.await.ok().flatten();
    }
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_arrivals_are_seeded_bounded_and_exponential() {
        let long = Duration::from_secs(1_000_000);
        let a = poisson_arrivals(5.0, 20_000, long, 42);
        assert_eq!(
            a,
            poisson_arrivals(5.0, 20_000, long, 42),
            "same seed, same arrivals"
        );
        assert_ne!(a, poisson_arrivals(5.0, 20_000, long, 43));
        assert_eq!(a.len(), 20_000);
        assert!(a.windows(2).all(|w| w[0] <= w[1]));
        let gaps: Vec<f64> = std::iter::once(a[0].as_secs_f64())
            .chain(a.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()))
            .collect();
        let n = gaps.len() as f64;
        let mean = gaps.iter().sum::<f64>() / n;
        let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / n;
        // Exponential gaps: mean 1/rate, and the standard deviation equals the mean.
        assert!((mean - 0.2).abs() < 0.2 * 0.03, "mean gap {mean}");
        assert!(
            (var.sqrt() / mean - 1.0).abs() < 0.05,
            "cv {}",
            var.sqrt() / mean
        );

        // Bounded by time: about rate × duration arrivals, none after it.
        let short = poisson_arrivals(5.0, 1_000_000, Duration::from_secs(100), 7);
        assert!(short.iter().all(|t| *t < Duration::from_secs(100)));
        assert!((400..600).contains(&short.len()), "{}", short.len());
    }
}
