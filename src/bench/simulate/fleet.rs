//! The fleet of replicas behind one endpoint: the front buffer (Knative's activator, or
//! the KEDA HTTP add-on's interceptor while no replica is ready), request routing,
//! scaling to a replica count, draining, and the signals autoscalers read.

use std::collections::VecDeque;

use super::pods::{Pod, PodModel, PodPhase};
use super::requests::{DropReason, RequestId, RequestRecord};

/// How the front picks a replica for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// The ready replica holding the fewest requests (Knative's activator balances on
    /// in-flight requests when it is in the path).
    LeastLoaded,
    /// Ready replicas in turn (a Kubernetes Service spreads connections evenly; turn by
    /// turn is its deterministic stand-in).
    RoundRobin,
}

/// The knobs of a fleet that do not depend on the autoscaler's decisions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FleetConfig {
    /// Seconds from creating a replica to it being ready.
    pub cold_start_s: f64,
    /// Requests a replica runs at once; more wait in its queue.
    pub max_num_seqs: usize,
    /// Knative's `containerConcurrency`: requests a replica is sent at most, the rest
    /// wait in the front buffer; 0 is unlimited.
    pub container_concurrency: usize,
    pub routing: Routing,
    /// A request that waited this long without starting is dropped.
    pub request_timeout_s: f64,
    /// A removed replica's requests still unfinished after this long are dropped.
    pub shutdown_timeout_s: f64,
    pub kv_capacity_tokens: Option<f64>,
}

/// The replicas and the front buffer.
#[derive(Debug)]
pub struct Fleet<'c> {
    cfg: FleetConfig,
    model: PodModel<'c>,
    pods: Vec<Pod>,
    front: VecDeque<RequestId>,
    /// Turns taken by round-robin routing.
    turns: usize,
    /// GPU-seconds of replicas already gone.
    retired_gpu_s: f64,
}

impl<'c> Fleet<'c> {
    /// A fleet with `initial_ready` replicas already serving at time 0.
    pub fn new(cfg: FleetConfig, model: PodModel<'c>, initial_ready: u32) -> Self {
        Self {
            cfg,
            model,
            pods: (0..initial_ready).map(|_| Pod::ready(0.0)).collect(),
            front: VecDeque::new(),
            turns: 0,
            retired_gpu_s: 0.0,
        }
    }

    /// A request arrives at the front.
    pub fn arrive(&mut self, id: RequestId) {
        self.front.push_back(id);
    }

    /// Advances every replica from `now` to `now + dt`.
    pub fn step(&mut self, now: f64, dt: f64, reqs: &mut [RequestRecord]) {
        for pod in &mut self.pods {
            pod.update_phase(now);
        }
        self.dispatch(now, reqs);
        for pod in &mut self.pods {
            pod.advance(now, dt, &self.model, reqs);
        }
        let end = now + dt;
        let timeout = self.cfg.request_timeout_s;
        self.front.retain(|&id| {
            let expired = end - reqs[id].arrival > timeout;
            if expired {
                reqs[id].dropped = Some(DropReason::Timeout);
            }
            !expired
        });
        for pod in &mut self.pods {
            pod.expire_waiting(end, timeout, reqs);
        }
        let shutdown = self.cfg.shutdown_timeout_s;
        let mut retired = 0.0;
        self.pods.retain_mut(|pod| {
            let PodPhase::Draining { since } = pod.phase else {
                return true;
            };
            if end - since >= shutdown {
                pod.drop_all(DropReason::Shutdown, reqs);
            }
            if pod.is_empty() {
                retired += end - pod.created_at;
                return false;
            }
            true
        });
        self.retired_gpu_s += retired;
    }

    /// Sends front requests, oldest first, to ready replicas that take them.
    fn dispatch(&mut self, now: f64, reqs: &mut [RequestRecord]) {
        while let Some(&id) = self.front.front() {
            let Some(i) = self.pick() else {
                break;
            };
            self.front.pop_front();
            self.pods[i].admit(id, now, &self.model, reqs);
        }
    }

    fn pick(&mut self) -> Option<usize> {
        let cc = self.cfg.container_concurrency;
        let open: Vec<usize> = (0..self.pods.len())
            .filter(|&i| self.pods[i].is_ready() && (cc == 0 || self.pods[i].in_flight() < cc))
            .collect();
        if open.is_empty() {
            return None;
        }
        match self.cfg.routing {
            Routing::LeastLoaded => open.into_iter().min_by_key(|&i| self.pods[i].in_flight()),
            Routing::RoundRobin => {
                self.turns += 1;
                Some(open[(self.turns - 1) % open.len()])
            }
        }
    }

    /// Sets the number of replicas (not counting draining ones). New replicas start
    /// their cold start now; removals take starting replicas first (newest first), then
    /// ready ones holding the fewest requests (newest first on ties), as a Deployment
    /// removes unready pods before ready ones. A removed starting replica is gone at
    /// once; a removed ready one drains.
    pub fn scale_to(&mut self, replicas: u32, now: f64) {
        let target = replicas as usize;
        let current = self.spec_replicas() as usize;
        for _ in current..target {
            self.pods.push(Pod::starting(now, self.cfg.cold_start_s));
        }
        for _ in target..current {
            let starting = (0..self.pods.len())
                .rev()
                .find(|&i| matches!(self.pods[i].phase, PodPhase::Starting { .. }));
            if let Some(i) = starting {
                let pod = self.pods.remove(i);
                self.retired_gpu_s += now - pod.created_at;
                continue;
            }
            let victim = (0..self.pods.len())
                .rev()
                .filter(|&i| self.pods[i].is_ready())
                .min_by_key(|&i| self.pods[i].in_flight());
            if let Some(i) = victim {
                self.pods[i].phase = PodPhase::Draining { since: now };
            }
        }
    }

    /// Replicas the autoscaler asked for and has not removed: starting and ready.
    pub fn spec_replicas(&self) -> u32 {
        self.pods.iter().filter(|p| !p.is_draining()).count() as u32
    }

    /// Replicas that receive requests.
    pub fn ready_replicas(&self) -> u32 {
        self.pods.iter().filter(|p| p.is_ready()).count() as u32
    }

    /// Every replica that holds a GPU: starting, ready and draining.
    pub fn total_pods(&self) -> u32 {
        self.pods.len() as u32
    }

    /// Requests in the front buffer.
    pub fn num_buffered(&self) -> usize {
        self.front.len()
    }

    /// Requests in the system: buffered at the front or held by any replica. Knative's
    /// observed concurrency (queue-proxies and the activator both report theirs).
    pub fn concurrency(&self) -> f64 {
        (self.front.len() + self.pods.iter().map(Pod::in_flight).sum::<usize>()) as f64
    }

    /// `sum(vllm:num_requests_waiting)` over the replicas Prometheus scrapes, plus the
    /// front buffer (what the KEDA HTTP add-on's interceptor reports while no replica
    /// is ready).
    pub fn queue_depth(&self) -> f64 {
        let waiting: usize = self
            .pods
            .iter()
            .filter(|p| p.is_serving())
            .map(Pod::num_waiting)
            .sum();
        (waiting + self.front.len()) as f64
    }

    /// `sum(surge_saturation)` over the replicas Prometheus scrapes, plus the front
    /// buffer as the saturation it would put on one replica.
    pub fn saturation_sum(&self, reqs: &[RequestRecord]) -> f64 {
        let pods: f64 = self
            .pods
            .iter()
            .filter(|p| p.is_serving())
            .map(|p| p.saturation(&self.model, reqs))
            .sum();
        pods + self.front.len() as f64 / self.model.max_num_seqs.max(1) as f64
    }

    /// GPU-seconds so far: every replica's life from creation, cold start included.
    pub fn gpu_seconds(&self, now: f64) -> f64 {
        self.retired_gpu_s + self.pods.iter().map(|p| now - p.created_at).sum::<f64>()
    }

    /// Ends the simulation: whatever is left is dropped as unfinished.
    pub fn finish(&mut self, reqs: &mut [RequestRecord]) {
        for id in self.front.drain(..) {
            reqs[id].dropped = Some(DropReason::Unfinished);
        }
        for pod in &mut self.pods {
            pod.drop_all(DropReason::Unfinished, reqs);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::simulate::capacity::{CapacityCurve, Level};
    use crate::bench::simulate::trace::TraceRequest;

    fn curve() -> CapacityCurve {
        let l = Level {
            concurrency: 1.0,
            e2e_s: 1.0,
            ttft_p90_s: 0.1,
            requests_per_s: 1.0,
        };
        CapacityCurve::new(vec![l], None).unwrap()
    }

    fn config(routing: Routing, cc: usize) -> FleetConfig {
        FleetConfig {
            cold_start_s: 10.0,
            max_num_seqs: 4,
            container_concurrency: cc,
            routing,
            request_timeout_s: 100.0,
            shutdown_timeout_s: 30.0,
            kv_capacity_tokens: None,
        }
    }

    fn records(n: usize, c: &CapacityCurve) -> Vec<RequestRecord> {
        let t = TraceRequest {
            t_seconds: 0.0,
            prompt_tokens: None,
            output_tokens: None,
        };
        vec![RequestRecord::new(&t, c); n]
    }

    #[test]
    fn buffers_while_no_replica_is_ready_and_serves_after_the_cold_start() {
        let c = curve();
        let m = PodModel {
            curve: &c,
            max_num_seqs: 4,
            kv_capacity_tokens: None,
        };
        let mut reqs = records(1, &c);
        let mut fleet = Fleet::new(config(Routing::LeastLoaded, 0), m, 0);
        fleet.arrive(0);
        fleet.scale_to(1, 0.0);
        let mut now = 0.0;
        for _ in 0..200 {
            fleet.step(now, 0.1, &mut reqs);
            now += 0.1;
        }
        let started = reqs[0].started.unwrap();
        assert!((10.0..10.2).contains(&started), "{started}");
        assert_eq!(fleet.queue_depth(), 0.0);
        assert!(reqs[0].finished.is_some());
    }

    #[test]
    fn container_concurrency_holds_the_excess_at_the_front() {
        let c = curve();
        let m = PodModel {
            curve: &c,
            max_num_seqs: 4,
            kv_capacity_tokens: None,
        };
        let mut reqs = records(3, &c);
        let mut fleet = Fleet::new(config(Routing::LeastLoaded, 1), m, 1);
        for id in 0..3 {
            fleet.arrive(id);
        }
        fleet.step(0.0, 0.1, &mut reqs);
        assert_eq!(fleet.num_buffered(), 2);
        assert_eq!(fleet.concurrency(), 3.0);
        // Front requests count as if one replica held them.
        assert_eq!(fleet.saturation_sum(&reqs), 0.25 + 2.0 / 4.0);
    }

    #[test]
    fn scale_down_removes_starting_first_then_drains_and_counts_gpu_seconds() {
        let c = curve();
        let m = PodModel {
            curve: &c,
            max_num_seqs: 4,
            kv_capacity_tokens: None,
        };
        let mut reqs = records(2, &c);
        let mut fleet = Fleet::new(config(Routing::RoundRobin, 0), m, 2);
        fleet.arrive(0);
        fleet.arrive(1);
        fleet.step(0.0, 0.1, &mut reqs);
        fleet.scale_to(3, 0.1);
        assert_eq!((fleet.spec_replicas(), fleet.ready_replicas()), (3, 2));
        fleet.scale_to(1, 0.5);
        // The starting one went at once (0.4 GPU-s), one ready one drains.
        assert_eq!((fleet.spec_replicas(), fleet.total_pods()), (1, 2));
        let mut now = 0.5;
        while fleet.total_pods() > 1 {
            fleet.step(now, 0.1, &mut reqs);
            now += 0.1;
        }
        assert!(reqs.iter().all(|r| r.finished.is_some()));
        // Round robin spread the two requests over both replicas.
        assert!((reqs[0].finished.unwrap() - reqs[1].finished.unwrap()).abs() < 1e-9);
        let expected = 0.4 + now + now;
        assert!((fleet.gpu_seconds(now) - expected).abs() < 1e-6);
    }
}
