//! One simulated replica: its lifecycle (starting, ready, draining) and how it serves
//! the requests it holds, from the capacity curve.
//!
//! A replica runs at most `max_num_seqs` requests at once and queues the rest, as
//! surge's scheduler does. The running ones share the replica like processor sharing:
//! with `n` running, each advances by `dt / e2e(n)` of an average request per tick, so a
//! replica held at `n` completes requests at the measured `n / e2e(n)` per second.

use std::collections::VecDeque;

use super::capacity::CapacityCurve;
use super::requests::{DropReason, RequestId, RequestRecord};

/// Where a replica is in its life.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PodPhase {
    /// Created; pulling, loading and warming up until `ready_at` (the cold start).
    Starting { ready_at: f64 },
    /// Receives requests.
    Ready,
    /// Removed by the autoscaler: takes nothing new, finishes what it holds.
    Draining { since: f64 },
}

/// What every replica of a fleet shares.
#[derive(Debug, Clone, Copy)]
pub struct PodModel<'c> {
    pub curve: &'c CapacityCurve,
    /// Requests a replica runs at once (surge's `--max-num-seqs`).
    pub max_num_seqs: usize,
    /// KV cache capacity in tokens, for the KV term of `surge_saturation`.
    pub kv_capacity_tokens: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
struct Running {
    id: RequestId,
    /// Work left, in units of an average request.
    remaining: f64,
}

/// One replica.
#[derive(Debug, Clone, PartialEq)]
pub struct Pod {
    pub created_at: f64,
    pub phase: PodPhase,
    running: Vec<Running>,
    waiting: VecDeque<RequestId>,
}

impl Pod {
    /// A replica created at `now`, ready after `cold_start_s`.
    pub fn starting(now: f64, cold_start_s: f64) -> Self {
        Self {
            created_at: now,
            phase: PodPhase::Starting {
                ready_at: now + cold_start_s,
            },
            running: Vec::new(),
            waiting: VecDeque::new(),
        }
    }

    /// A replica that is already serving at `now`.
    pub fn ready(now: f64) -> Self {
        Self {
            phase: PodPhase::Ready,
            ..Self::starting(now, 0.0)
        }
    }

    pub fn is_ready(&self) -> bool {
        self.phase == PodPhase::Ready
    }

    pub fn is_draining(&self) -> bool {
        matches!(self.phase, PodPhase::Draining { .. })
    }

    /// Ready or draining: the replica runs and exports metrics.
    pub fn is_serving(&self) -> bool {
        !matches!(self.phase, PodPhase::Starting { .. })
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    /// Requests accepted but not running: `vllm:num_requests_waiting`.
    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Requests the replica holds, running or waiting.
    pub fn in_flight(&self) -> usize {
        self.running.len() + self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.in_flight() == 0
    }

    /// Becomes ready once its cold start is over.
    pub fn update_phase(&mut self, now: f64) {
        if let PodPhase::Starting { ready_at } = self.phase {
            if now >= ready_at {
                self.phase = PodPhase::Ready;
            }
        }
    }

    /// Accepts a request at `now` and starts it if a slot is free.
    pub fn admit(&mut self, id: RequestId, now: f64, m: &PodModel, reqs: &mut [RequestRecord]) {
        self.waiting.push_back(id);
        self.fill(now, m, reqs);
    }

    /// Moves waiting requests into free slots, oldest first. A request starting next to
    /// `n - 1` others gets its first token after the curve's TTFT at `n`.
    fn fill(&mut self, now: f64, m: &PodModel, reqs: &mut [RequestRecord]) {
        while self.running.len() < m.max_num_seqs {
            let Some(id) = self.waiting.pop_front() else {
                break;
            };
            let n = (self.running.len() + 1) as f64;
            let r = &mut reqs[id];
            r.started = Some(now);
            r.first_token = Some(now + m.curve.ttft_p90_at(n));
            self.running.push(Running {
                id,
                remaining: r.work,
            });
        }
    }

    /// Serves the running requests from `now` to `now + dt`; returns how many finished.
    pub fn advance(
        &mut self,
        now: f64,
        dt: f64,
        m: &PodModel,
        reqs: &mut [RequestRecord],
    ) -> usize {
        if self.running.is_empty() {
            return 0;
        }
        let step = dt / m.curve.e2e_at(self.running.len() as f64);
        let mut finished = 0;
        self.running.retain_mut(|r| {
            if r.remaining > step {
                r.remaining -= step;
                return true;
            }
            let rec = &mut reqs[r.id];
            let end = now + dt * (r.remaining / step);
            rec.finished = Some(end);
            // A request shorter than its TTFT estimate still had a first token by its end.
            rec.first_token = rec.first_token.map(|f| f.min(end));
            finished += 1;
            false
        });
        self.fill(now + dt, m, reqs);
        finished
    }

    /// `surge_saturation` as src/engine/stats.rs defines it:
    /// `max((running + waiting) / max_num_seqs, kv_demand)`, where `kv_demand` is the KV
    /// tokens held by running requests (prompt plus the output generated so far) and the
    /// prompt tokens of waiting ones, over the KV capacity (0 when the capacity is not
    /// given).
    pub fn saturation(&self, m: &PodModel, reqs: &[RequestRecord]) -> f64 {
        let slots = self.in_flight() as f64 / m.max_num_seqs.max(1) as f64;
        let Some(capacity) = m.kv_capacity_tokens.filter(|c| *c > 0.0) else {
            return slots;
        };
        let running: f64 = self
            .running
            .iter()
            .map(|r| {
                let rec = &reqs[r.id];
                let done = (1.0 - r.remaining / rec.work).clamp(0.0, 1.0);
                rec.prompt_tokens + done * rec.output_tokens
            })
            .sum();
        let waiting: f64 = self.waiting.iter().map(|&id| reqs[id].prompt_tokens).sum();
        slots.max((running + waiting) / capacity)
    }

    /// Drops waiting requests that arrived more than `timeout_s` before `now`.
    pub fn expire_waiting(&mut self, now: f64, timeout_s: f64, reqs: &mut [RequestRecord]) {
        self.waiting.retain(|&id| {
            let expired = now - reqs[id].arrival > timeout_s;
            if expired {
                reqs[id].dropped = Some(DropReason::Timeout);
            }
            !expired
        });
    }

    /// Drops everything the replica still holds.
    pub fn drop_all(&mut self, reason: DropReason, reqs: &mut [RequestRecord]) {
        for id in self
            .running
            .drain(..)
            .map(|r| r.id)
            .chain(self.waiting.drain(..))
        {
            reqs[id].dropped = Some(reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::simulate::capacity::Level;
    use crate::bench::simulate::trace::TraceRequest;

    fn curve() -> CapacityCurve {
        // 1 in flight: 1 s each; 2 in flight: 2 s each (the same 1 req/s).
        let level = |c: f64, e2e: f64| Level {
            concurrency: c,
            e2e_s: e2e,
            ttft_p90_s: 0.1 * c,
            requests_per_s: c / e2e,
        };
        CapacityCurve::new(vec![level(1.0, 1.0), level(2.0, 2.0)], None).unwrap()
    }

    fn records(n: usize) -> Vec<RequestRecord> {
        let c = curve();
        (0..n)
            .map(|_| {
                let t = TraceRequest {
                    t_seconds: 0.0,
                    prompt_tokens: Some(100),
                    output_tokens: Some(50),
                };
                RequestRecord::new(&t, &c)
            })
            .collect()
    }

    fn run_until_empty(pod: &mut Pod, m: &PodModel, reqs: &mut [RequestRecord]) -> f64 {
        let mut now = 0.0;
        while !pod.is_empty() {
            pod.advance(now, 0.1, m, reqs);
            now += 0.1;
        }
        now
    }

    #[test]
    fn serves_at_the_curve_and_queues_beyond_max_num_seqs() {
        let c = curve();
        let m = PodModel {
            curve: &c,
            max_num_seqs: 2,
            kv_capacity_tokens: None,
        };
        let mut reqs = records(3);
        let mut pod = Pod::ready(0.0);
        for id in 0..3 {
            pod.admit(id, 0.0, &m, &mut reqs);
        }
        assert_eq!((pod.num_running(), pod.num_waiting()), (2, 1));
        assert_eq!(pod.saturation(&m, &reqs), 1.5);
        run_until_empty(&mut pod, &m, &mut reqs);
        // Two share the replica for 2 s; the third then runs alone for 1 s.
        assert!((reqs[0].finished.unwrap() - 2.0).abs() < 1e-9);
        assert!((reqs[2].started.unwrap() - 2.0).abs() < 1e-9);
        assert!((reqs[2].finished.unwrap() - 3.0).abs() < 1e-9);
        assert!((reqs[1].first_token.unwrap() - 0.2).abs() < 1e-9);
        assert!((reqs[2].queue_delay().unwrap() - 2.0).abs() < 1e-9);
    }

    #[test]
    fn saturation_takes_the_kv_term_when_it_is_larger() {
        let c = curve();
        let m = PodModel {
            curve: &c,
            max_num_seqs: 64,
            kv_capacity_tokens: Some(150.0),
        };
        let mut reqs = records(2);
        let mut pod = Pod::ready(0.0);
        pod.admit(0, 0.0, &m, &mut reqs);
        pod.admit(1, 0.0, &m, &mut reqs);
        // 2 slots of 64, but 200 prompt tokens of 150.
        assert!((pod.saturation(&m, &reqs) - 200.0 / 150.0).abs() < 1e-9);
    }

    #[test]
    fn starting_pod_becomes_ready_after_its_cold_start() {
        let mut pod = Pod::starting(5.0, 20.0);
        pod.update_phase(24.9);
        assert!(!pod.is_serving());
        pod.update_phase(25.0);
        assert!(pod.is_ready());
    }
}
