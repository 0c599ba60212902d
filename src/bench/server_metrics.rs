//! Samples the server's `/metrics` during a level: the gauges the autoscaling advice
//! reads (`surge_saturation`, `vllm:num_requests_waiting`, `vllm:num_requests_running`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::stats::ServerGauges;

/// Time between two polls of `/metrics`.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// The sum over all series of `name` in a Prometheus text exposition (one replica's
/// series differ only in labels), or `None` when it has none.
pub fn gauge_sum(exposition: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue; // a longer name with this prefix
        }
        let after_labels = match rest.strip_prefix('{') {
            Some(labels) => labels.rsplit_once('}').map_or("", |(_, v)| v),
            None => rest,
        };
        let value = after_labels.split_whitespace().next();
        if let Some(v) = value.and_then(|v| v.parse::<f64>().ok()) {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// Running sums of the sampled gauges.
#[derive(Debug, Default)]
struct Sums {
    samples: u64,
    saturation: (f64, u64),
    waiting: (f64, u64),
    running: (f64, u64),
}

impl Sums {
    fn add(&mut self, exposition: &str) {
        self.samples += 1;
        for (sum, name) in [
            (&mut self.saturation, "surge_saturation"),
            (&mut self.waiting, "vllm:num_requests_waiting"),
            (&mut self.running, "vllm:num_requests_running"),
        ] {
            if let Some(v) = gauge_sum(exposition, name) {
                sum.0 += v;
                sum.1 += 1;
            }
        }
    }

    fn gauges(&self) -> Option<ServerGauges> {
        let mean = |(s, n): (f64, u64)| (n > 0).then(|| s / n as f64);
        (self.samples > 0).then(|| ServerGauges {
            samples: self.samples,
            saturation_mean: mean(self.saturation),
            waiting_mean: mean(self.waiting),
            running_mean: mean(self.running),
        })
    }
}

/// When a sample counts: with a fixed concurrency, only while that many requests are
/// in flight, so that the ramp at a level's start and end does not dilute the gauges.
#[derive(Debug, Clone)]
pub struct Steady {
    pub in_flight: Arc<AtomicUsize>,
    /// Samples count while `in_flight` is at least this.
    pub min_in_flight: usize,
}

/// Polls `url` every `POLL_INTERVAL` until `stop` fires; the mean gauges, or `None`
/// when no poll got a 200 answer while `steady` held.
pub async fn sample_until(
    client: reqwest::Client,
    url: String,
    steady: Steady,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> Option<ServerGauges> {
    let mut sums = Sums::default();
    let mut interval = tokio::time::interval(POLL_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = interval.tick() => {
                if steady.in_flight.load(Ordering::SeqCst) < steady.min_in_flight {
                    continue;
                }
                let answer = client.get(&url).timeout(Duration::from_secs(5)).send().await;
                if let Ok(r) = answer {
                    if r.status().is_success() {
                        let still = steady.in_flight.load(Ordering::SeqCst) >= steady.min_in_flight;
                        if let (Ok(text), true) = (r.text().await, still) {
                            sums.add(&text);
                        }
                    }
                }
            }
        }
    }
    sums.gauges()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauges_are_read_and_averaged() {
        let a = "# HELP surge_saturation x\nsurge_saturation{engine=\"0\",model_name=\"m\"} 0.5\n\
                 vllm:num_requests_waiting{model_name=\"m\"} 2\nvllm:num_requests_waiting_extra 9\n\
                 vllm:num_requests_running 3\n";
        assert_eq!(gauge_sum(a, "surge_saturation"), Some(0.5));
        assert_eq!(gauge_sum(a, "vllm:num_requests_waiting"), Some(2.0));
        assert_eq!(gauge_sum(a, "vllm:num_requests_running"), Some(3.0));
        assert_eq!(gauge_sum(a, "vllm:kv_cache_usage_perc"), None);
        let mut sums = Sums::default();
        sums.add(a);
        sums.add("surge_saturation 1.5\n");
        let g = sums.gauges().unwrap();
        assert_eq!(g.samples, 2);
        assert_eq!(g.saturation_mean, Some(1.0));
        assert_eq!(g.waiting_mean, Some(2.0));
        assert_eq!(Sums::default().gauges(), None);
    }
}
