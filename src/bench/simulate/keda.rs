//! A model of KEDA driving a Horizontal Pod Autoscaler on a Prometheus metric.
//!
//! KEDA (keda.sh/docs/latest/reference/scaledobject-spec/ and
//! keda.sh/docs/latest/concepts/scaling-deployments/):
//! - checks its trigger every `pollingInterval` (30 s); the trigger is active when the
//!   metric is above `activationThreshold` (0), and only then scales 0 → 1 (or to
//!   `minReplicaCount`);
//! - scales 1 → 0 only when `minReplicaCount` is 0 and the trigger has not been active
//!   for `cooldownPeriod` (300 s);
//! - between 1 and `maxReplicaCount` it leaves the count to the HPA it creates, whose
//!   external metric it serves with an `AverageValue` target by default.
//!
//! The HPA (kubernetes.io/docs/tasks/run-application/horizontal-pod-autoscale/ and
//! `pkg/controller/podautoscaler/replica_calculator.go`):
//! - syncs every 15 s (`--horizontal-pod-autoscaler-sync-period`);
//! - `desired = ceil(sum(metric) / target)`, except that a usage ratio
//!   `sum / (target × current)` within the tolerance (0.1) of 1 keeps `current`;
//! - scale-down stabilization: the highest recommendation of the last
//!   `stabilizationWindowSeconds` (300 s); scale up is not stabilized;
//! - default scale-up policy: per 15 s at most the larger of +100% and +4 pods;
//! - the result stays within `[max(minReplicas, 1), maxReplicas]`.
//!
//! Prometheus scrapes the replicas every `scrape_interval_s` (15 s, the PodMonitor's);
//! KEDA and the HPA see the last scrape.

use super::policy::{Autoscaler, Observation};
use super::window::MaxWindow;

/// The metric a ScaledObject's Prometheus trigger sums over the replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KedaMetric {
    /// `sum(vllm:num_requests_waiting)`.
    QueueDepth,
    /// `sum(surge_saturation)`.
    Saturation,
}

/// The HPA's knobs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HpaConfig {
    pub sync_period_s: f64,
    pub tolerance: f64,
    /// `behavior.scaleDown.stabilizationWindowSeconds`.
    pub scale_down_stabilization_s: f64,
    /// The default scale-up policies: +`scale_up_percent`% or +`scale_up_pods` per
    /// `scale_up_period_s`, whichever allows more.
    pub scale_up_percent: f64,
    pub scale_up_pods: u32,
    pub scale_up_period_s: f64,
}

impl Default for HpaConfig {
    fn default() -> Self {
        Self {
            sync_period_s: 15.0,
            tolerance: 0.1,
            scale_down_stabilization_s: 300.0,
            scale_up_percent: 100.0,
            scale_up_pods: 4,
            scale_up_period_s: 15.0,
        }
    }
}

/// A ScaledObject's knobs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KedaConfig {
    pub metric: KedaMetric,
    /// The `AverageValue` target: metric per replica.
    pub target: f64,
    pub activation_threshold: f64,
    pub polling_interval_s: f64,
    pub cooldown_period_s: f64,
    pub min_replicas: u32,
    pub max_replicas: u32,
    pub scrape_interval_s: f64,
    pub hpa: HpaConfig,
}

impl KedaConfig {
    /// KEDA's and the HPA's defaults for a metric and target.
    pub fn new(metric: KedaMetric, target: f64) -> Self {
        Self {
            metric,
            target,
            activation_threshold: 0.0,
            polling_interval_s: 30.0,
            cooldown_period_s: 300.0,
            min_replicas: 0,
            max_replicas: 100,
            scrape_interval_s: 15.0,
            hpa: HpaConfig::default(),
        }
    }
}

/// The HPA's state: its recent recommendations and when it last scaled up.
#[derive(Debug, Clone)]
pub struct Hpa {
    cfg: HpaConfig,
    recommendations: MaxWindow,
    /// (time, replicas before) of scale-ups within the policy period.
    scale_up_base: Option<(f64, u32)>,
}

impl Hpa {
    pub fn new(cfg: HpaConfig) -> Self {
        Self {
            cfg,
            recommendations: MaxWindow::new(cfg.scale_down_stabilization_s.max(1e-9)),
            scale_up_base: None,
        }
    }

    /// Counts `replicas` as a recommendation made at `now`: the state of an HPA that
    /// has been running before the simulation starts.
    pub fn remember(&mut self, now: f64, replicas: u32) {
        self.recommendations.record(now, replicas);
    }

    /// One sync: the replica count for a metric total of `metric` against a per-replica
    /// `target` with `current` replicas, bounded by `[min, max]`.
    pub fn sync(
        &mut self,
        now: f64,
        metric: f64,
        target: f64,
        current: u32,
        min: u32,
        max: u32,
    ) -> u32 {
        let min = min.max(1);
        let current_f = f64::from(current.max(1));
        let ratio = metric / (target * current_f);
        let raw = if (1.0 - ratio).abs() <= self.cfg.tolerance {
            current
        } else {
            (metric / target).ceil().min(f64::from(u32::MAX)) as u32
        };
        // Scale-down stabilization: never below the highest recent recommendation.
        let down = self.recommendations.record(now, raw);
        let mut desired = if current > down {
            down
        } else {
            current.max(raw)
        };
        if desired > current {
            // Scale-up policies count from the replicas at the start of the period.
            let base = match self.scale_up_base {
                Some((t, base)) if now - t < self.cfg.scale_up_period_s => base,
                _ => {
                    self.scale_up_base = Some((now, current));
                    current
                }
            };
            let by_percent =
                (f64::from(base) * (1.0 + self.cfg.scale_up_percent / 100.0)).ceil() as u32;
            let limit = by_percent.max(base + self.cfg.scale_up_pods);
            desired = desired.min(limit);
        }
        desired.clamp(min, max.max(min))
    }
}

/// KEDA's state over its HPA.
#[derive(Debug, Clone)]
pub struct Keda {
    cfg: KedaConfig,
    hpa: Hpa,
    /// The last value Prometheus scraped.
    scraped: f64,
    next_scrape: f64,
    next_poll: f64,
    next_sync: f64,
    /// The last poll at which the trigger was active. The simulation starts with the
    /// fleet in use, so time 0 counts as active.
    last_active: f64,
    /// Whether the HPA has been given the starting replica count.
    seeded: bool,
}

impl Keda {
    pub fn new(cfg: KedaConfig) -> Self {
        Self {
            cfg,
            hpa: Hpa::new(cfg.hpa),
            scraped: 0.0,
            next_scrape: 0.0,
            next_poll: cfg.polling_interval_s,
            next_sync: cfg.hpa.sync_period_s,
            last_active: 0.0,
            seeded: false,
        }
    }

    /// KEDA's own decision at a poll: activation from 0 and deactivation to 0.
    /// `None` leaves the count to the HPA.
    pub fn poll(&mut self, now: f64, metric: f64, current: u32) -> Option<u32> {
        let active = metric > self.cfg.activation_threshold;
        if active {
            self.last_active = now;
        }
        let floor = self.cfg.min_replicas.max(1);
        if current == 0 {
            return (active || self.cfg.min_replicas > 0).then_some(floor);
        }
        let cooled = now - self.last_active >= self.cfg.cooldown_period_s;
        (self.cfg.min_replicas == 0 && !active && cooled).then_some(0)
    }

    fn metric(&self, obs: &Observation) -> f64 {
        match self.cfg.metric {
            KedaMetric::QueueDepth => obs.queue_depth,
            KedaMetric::Saturation => obs.saturation,
        }
    }
}

impl Autoscaler for Keda {
    fn observe(&mut self, obs: &Observation) -> Option<u32> {
        let now = obs.now;
        if !self.seeded {
            self.seeded = true;
            self.hpa.remember(now, obs.spec);
        }
        if now + 1e-9 >= self.next_scrape {
            self.scraped = self.metric(obs);
            self.next_scrape += self.cfg.scrape_interval_s;
        }
        let mut current = obs.spec;
        let mut decided = None;
        if now + 1e-9 >= self.next_poll {
            self.next_poll += self.cfg.polling_interval_s;
            if let Some(n) = self.poll(now, self.scraped, current) {
                current = n;
                decided = Some(n);
            }
        }
        if now + 1e-9 >= self.next_sync {
            self.next_sync += self.cfg.hpa.sync_period_s;
            // The HPA does nothing while its target is scaled to zero.
            if current > 0 {
                let cfg = &self.cfg;
                let n = self.hpa.sync(
                    now,
                    self.scraped,
                    cfg.target,
                    current,
                    cfg.min_replicas,
                    cfg.max_replicas,
                );
                decided = Some(n);
            }
        }
        decided
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keda(min: u32) -> Keda {
        let mut cfg = KedaConfig::new(KedaMetric::QueueDepth, 4.0);
        cfg.min_replicas = min;
        cfg.activation_threshold = 2.0;
        Keda::new(cfg)
    }

    #[test]
    fn stays_at_zero_while_metric_is_at_or_below_activation_and_activates_above() {
        let mut k = keda(0);
        for (i, metric) in [0.0, 1.0, 2.0].into_iter().enumerate() {
            assert_eq!(
                k.poll(30.0 * (i + 1) as f64, metric, 0),
                None,
                "metric {metric}"
            );
        }
        assert_eq!(k.poll(120.0, 2.5, 0), Some(1));
    }

    #[test]
    fn scales_to_zero_only_after_the_cooldown_of_inactivity() {
        let mut k = keda(0);
        // Active at 30 s, then idle: the cooldown (300 s) counts from the last active poll.
        assert_eq!(k.poll(30.0, 5.0, 1), None);
        let mut t = 60.0;
        while t < 330.0 {
            assert_eq!(k.poll(t, 0.0, 1), None, "scaled to zero at {t}");
            t += 30.0;
        }
        assert_eq!(k.poll(330.0, 0.0, 1), Some(0));
        // A metric at the activation threshold is still inactive and does not reset it.
        let mut k = keda(0);
        assert_eq!(k.poll(30.0, 5.0, 1), None);
        assert_eq!(k.poll(200.0, 2.0, 1), None);
        assert_eq!(k.poll(330.0, 2.0, 1), Some(0));
        // With minReplicaCount 1 it never scales to zero.
        let mut k = keda(1);
        assert_eq!(k.poll(1000.0, 0.0, 1), None);
    }

    #[test]
    fn hpa_average_value_with_tolerance() {
        let mut hpa = Hpa::new(HpaConfig::default());
        // 2 replicas, target 4 each: 8.7 is within 10% of 8, no change.
        assert_eq!(hpa.sync(0.0, 8.7, 4.0, 2, 1, 10), 2);
        // 9 is 12.5% over: ceil(9 / 4) = 3.
        assert_eq!(hpa.sync(15.0, 9.0, 4.0, 2, 1, 10), 3);
        // Scale-up policy: from 2, at most max(2 × 2, 2 + 4) = 6 within 15 s.
        let mut hpa = Hpa::new(HpaConfig::default());
        assert_eq!(hpa.sync(0.0, 400.0, 4.0, 2, 1, 100), 6);
        // Bounds: at least one replica even with minReplicas 0, at most maxReplicas.
        let mut hpa = Hpa::new(HpaConfig::default());
        assert_eq!(hpa.sync(0.0, 0.0, 4.0, 3, 0, 10), 1);
        let mut hpa = Hpa::new(HpaConfig::default());
        assert_eq!(hpa.sync(0.0, 400.0, 4.0, 8, 1, 10), 10);
    }

    #[test]
    fn hpa_scale_down_waits_for_the_stabilization_window() {
        let mut hpa = Hpa::new(HpaConfig::default());
        assert_eq!(hpa.sync(0.0, 16.0, 4.0, 4, 1, 10), 4);
        // Demand falls to one replica's worth: the recommendation of 4 at t = 0 holds
        // the count for the 300 s window.
        let mut t = 15.0;
        while t < 300.0 {
            assert_eq!(hpa.sync(t, 4.0, 4.0, 4, 1, 10), 4, "scaled down at {t}");
            t += 15.0;
        }
        assert_eq!(hpa.sync(300.0, 4.0, 4.0, 4, 1, 10), 1);
    }

    #[test]
    fn observe_reads_the_last_scrape_and_leaves_zero_to_keda() {
        let mut cfg = KedaConfig::new(KedaMetric::Saturation, 0.8);
        cfg.max_replicas = 10;
        let mut k = Keda::new(cfg);
        let obs = |now: f64, spec: u32, saturation: f64| Observation {
            now,
            ready: spec,
            spec,
            saturation,
            ..Observation::default()
        };
        // Scraped at 0 s (idle); the spike at 10 s is not seen by the HPA at 15 s until
        // the scrape at 15 s, which happens first in the same tick.
        assert_eq!(k.observe(&obs(0.0, 1, 0.0)), None);
        assert_eq!(k.observe(&obs(10.0, 1, 4.0)), None);
        assert_eq!(k.observe(&obs(15.0, 1, 4.0)), Some(5));
        // At zero replicas the HPA is off; KEDA's poll at 30 s activates on the metric.
        let mut k = Keda::new(cfg);
        assert_eq!(k.observe(&obs(15.0, 0, 0.5)), None);
        assert_eq!(k.observe(&obs(30.0, 0, 0.5)), Some(1));
    }
}
