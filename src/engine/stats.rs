//! The per-step snapshot the engine publishes for metrics and admission control.

use std::time::Duration;

use super::scheduler::SchedulerStats;
use crate::metrics::{EngineGauges, Metrics};

/// Engine state after a step (or after commands changed it while idle).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineStats {
    pub scheduler: SchedulerStats,
    /// Tokens per KV block.
    pub block_size: usize,
    /// `--max-num-seqs`.
    pub max_num_seqs: usize,
    /// Requests accepted by a handle and not yet scheduled.
    pub queued_reqs: usize,
    /// Wall time of the last step (schedule, forward, sample, update).
    pub last_step_time: Duration,
    /// Tokens computed in the last step.
    pub last_step_tokens: usize,
    pub num_steps: u64,
    pub step_times: StepTimes,
    /// Prompt tokens of requests that produced a first token, and generated tokens,
    /// since start (vLLM's `prompt_tokens_total` and `generation_tokens_total`).
    pub prompt_tokens_total: u64,
    pub generation_tokens_total: u64,
    /// Prompt tokens actually computed (prefix-cache hits are not).
    pub prompt_tokens_computed: u64,
}

impl EngineStats {
    /// KV capacity in tokens.
    pub fn kv_capacity_tokens(&self) -> usize {
        self.scheduler.num_total_blocks * self.block_size
    }

    /// `surge_saturation`: the share of this replica's capacity demanded now, the larger
    /// of its sequence slots taken (running + waiting over `--max-num-seqs`) and its KV
    /// demand (tokens held by running requests plus prompt tokens waiting, over the KV
    /// capacity). Above 1 means requests queue.
    pub fn saturation(&self) -> f64 {
        let s = &self.scheduler;
        let slots = if self.max_num_seqs == 0 {
            0.0
        } else {
            (s.num_running + s.num_waiting) as f64 / self.max_num_seqs as f64
        };
        let capacity = self.kv_capacity_tokens();
        let kv = if capacity == 0 {
            0.0
        } else {
            (s.num_running_tokens + s.num_waiting_prompt_tokens) as f64 / capacity as f64
        };
        slots.max(kv)
    }

    /// Sets the gauges and adds what the counters gained since `prev` was exported.
    pub fn export(&self, prev: &EngineStats, m: &Metrics) {
        let s = &self.scheduler;
        m.set_engine_gauges(&EngineGauges {
            running: s.num_running,
            waiting: s.num_waiting,
            kv_cache_usage: s.kv_cache_usage(),
            saturation: self.saturation(),
            queue_tokens: s.num_waiting_prompt_tokens,
        });
        let p = &prev.scheduler;
        m.preemptions.inc_by(
            s.num_preemptions_total
                .saturating_sub(p.num_preemptions_total),
        );
        m.prefix_cache_queries.inc_by(
            s.prefix_cache_queries
                .saturating_sub(p.prefix_cache_queries),
        );
        m.prefix_cache_hits
            .inc_by(s.prefix_cache_hits.saturating_sub(p.prefix_cache_hits));
        m.prompt_tokens.inc_by(
            self.prompt_tokens_total
                .saturating_sub(prev.prompt_tokens_total),
        );
        m.generation_tokens.inc_by(
            self.generation_tokens_total
                .saturating_sub(prev.generation_tokens_total),
        );
    }
}

/// Log-spaced histogram of step times (10 µs to ~100 s, 10 buckets per decade), for
/// percentiles in benchmarks without keeping every sample.
#[derive(Debug, Clone, PartialEq)]
pub struct StepTimes {
    counts: Vec<u64>,
}

const BUCKETS_PER_DECADE: f64 = 10.0;
const MIN_SECONDS: f64 = 1e-5;
const NUM_BUCKETS: usize = 70;

impl Default for StepTimes {
    fn default() -> Self {
        Self {
            counts: vec![0; NUM_BUCKETS],
        }
    }
}

impl StepTimes {
    pub fn record(&mut self, d: Duration) {
        let decades = (d.as_secs_f64().max(MIN_SECONDS) / MIN_SECONDS).log10();
        let bucket = ((decades * BUCKETS_PER_DECADE) as usize).min(NUM_BUCKETS - 1);
        self.counts[bucket] += 1;
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Upper edge of the bucket holding the `q` quantile (0–1); zero when empty.
    pub fn quantile(&self, q: f64) -> Duration {
        let total = self.count();
        if total == 0 {
            return Duration::ZERO;
        }
        let rank = (q.clamp(0.0, 1.0) * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let upper = MIN_SECONDS * 10f64.powf((i + 1) as f64 / BUCKETS_PER_DECADE);
                return Duration::from_secs_f64(upper);
            }
        }
        Duration::ZERO
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_bound_the_samples() {
        let mut h = StepTimes::default();
        for ms in 1..=100 {
            h.record(Duration::from_millis(ms));
        }
        assert_eq!(h.count(), 100);
        let p50 = h.quantile(0.5).as_secs_f64();
        assert!((0.050..0.050 * 1.26).contains(&p50), "{p50}");
        let p99 = h.quantile(0.99).as_secs_f64();
        assert!((0.099..0.099 * 1.26).contains(&p99), "{p99}");
        assert_eq!(StepTimes::default().quantile(0.5), Duration::ZERO);
    }
}
