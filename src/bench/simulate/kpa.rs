//! A model of Knative Serving's Pod Autoscaler (KPA) on the concurrency metric.
//!
//! Follows Knative's documented behaviour (knative.dev/docs/serving/autoscaling/:
//! `kpa-specific/` for the windows and panic mode, `concurrency/` for target and
//! target utilization, `scale-bounds/` for min/max scale and scale-down-delay,
//! `scale-to-zero/` for the grace and retention periods) and its decider,
//! `pkg/autoscaler/scaling/autoscaler.go` `Scale()`, and the scale-to-zero step of
//! `pkg/reconciler/autoscaling/kpa/scaler.go`:
//! - the observed concurrency (requests at the queue-proxies and the activator) is
//!   averaged in one-second buckets over the stable window (`window`, 60 s) and the
//!   panic window (`panic-window-percentage`, 10% of it);
//! - every tick (2 s) `desired = ceil(average / (target × target-utilization))` for
//!   each window, the ready-pod count taken as at least 1;
//! - both are kept within `[floor(ready / max-scale-down-rate), ceil(ready ×
//!   max-scale-up-rate)]` (defaults 2 and 1000);
//! - panic starts when the panic desired count over the ready pods reaches
//!   `panic-threshold-percentage` (200%); while panicking the count only goes up (the
//!   larger of both windows, ratcheted), and panic ends only once the threshold has not
//!   been crossed for a whole stable window;
//! - `scale-down-delay` holds the largest count decided within it;
//! - `min-scale` / `max-scale` bound the result;
//! - a count of 0 is applied only after the revision has been inactive for
//!   `max(scale-to-zero-grace-period, scale-to-zero-pod-retention-period)` (30 s and
//!   0 s by default); until then the current replicas stay. Requests meanwhile wait in
//!   the activator, whose concurrency the windows include.

use super::policy::{Autoscaler, Observation};
use super::window::{BucketAverage, MaxWindow};

/// Knative's autoscaler decides every two seconds (`tickInterval`).
pub const KPA_TICK_S: f64 = 2.0;

/// The KPA's knobs, named after Knative's annotations and `config-autoscaler` keys.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KpaConfig {
    /// `autoscaling.knative.dev/target`: concurrency per replica.
    pub target: f64,
    /// `target-utilization-percentage` as a fraction (0.7).
    pub target_utilization: f64,
    /// `autoscaling.knative.dev/window`.
    pub stable_window_s: f64,
    /// `panic-window-percentage` (10 → a 6 s panic window of the 60 s stable one).
    pub panic_window_percentage: f64,
    /// `panic-threshold-percentage` (200).
    pub panic_threshold_percentage: f64,
    /// `max-scale-up-rate` (1000).
    pub max_scale_up_rate: f64,
    /// `max-scale-down-rate` (2).
    pub max_scale_down_rate: f64,
    /// `scale-down-delay` (0 s).
    pub scale_down_delay_s: f64,
    /// `scale-to-zero-grace-period` (30 s).
    pub scale_to_zero_grace_period_s: f64,
    /// `scale-to-zero-pod-retention-period` (0 s).
    pub scale_to_zero_pod_retention_period_s: f64,
    /// `min-scale`; 0 allows scale to zero.
    pub min_scale: u32,
    /// `max-scale`.
    pub max_scale: u32,
}

impl Default for KpaConfig {
    /// Knative's defaults, with a target of 100 (`container-concurrency-target-default`)
    /// and no upper bound beyond `u32::MAX`.
    fn default() -> Self {
        Self {
            target: 100.0,
            target_utilization: 0.7,
            stable_window_s: 60.0,
            panic_window_percentage: 10.0,
            panic_threshold_percentage: 200.0,
            max_scale_up_rate: 1000.0,
            max_scale_down_rate: 2.0,
            scale_down_delay_s: 0.0,
            scale_to_zero_grace_period_s: 30.0,
            scale_to_zero_pod_retention_period_s: 0.0,
            min_scale: 0,
            max_scale: u32::MAX,
        }
    }
}

/// The KPA's state.
#[derive(Debug, Clone)]
pub struct Kpa {
    cfg: KpaConfig,
    concurrency: BucketAverage,
    /// Last time the panic threshold was crossed; `None` when not panicking.
    panic_time: Option<f64>,
    /// The largest count decided during this panic.
    max_panic_pods: u32,
    delay: Option<MaxWindow>,
    /// When the decided count first became 0 (the revision went inactive).
    inactive_since: Option<f64>,
    next_decision: f64,
}

impl Kpa {
    /// A KPA taking over `ready` replicas at time 0. Like Knative's, it starts in panic
    /// mode when more than one replica is ready, so that an autoscaler with no history
    /// does not scale an already scaled-out revision down.
    pub fn new(cfg: KpaConfig, ready: u32) -> Self {
        Self {
            cfg,
            concurrency: BucketAverage::new(cfg.stable_window_s),
            panic_time: (ready > 1).then_some(0.0),
            max_panic_pods: ready,
            delay: (cfg.scale_down_delay_s > 0.0).then(|| MaxWindow::new(cfg.scale_down_delay_s)),
            inactive_since: None,
            next_decision: KPA_TICK_S,
        }
    }

    /// Whether the last decision was made in panic mode.
    pub fn is_panicking(&self) -> bool {
        self.panic_time.is_some()
    }

    /// `target × target-utilization`: the concurrency per replica the KPA aims for.
    pub fn target_value(&self) -> f64 {
        self.cfg.target * self.cfg.target_utilization
    }

    /// Records the fleet's concurrency at `now`.
    pub fn record(&mut self, now: f64, concurrency: f64) {
        self.concurrency.record(now, concurrency);
    }

    /// One decision at `now` with `ready` ready replicas and `current` requested: the
    /// decider's count, then bounds and the scale-to-zero step. `None` keeps `current`.
    pub fn decide(&mut self, now: f64, ready: u32, current: u32) -> Option<u32> {
        let stable = self.concurrency.average(now, self.cfg.stable_window_s)?;
        let panic_window_s = self.cfg.stable_window_s * self.cfg.panic_window_percentage / 100.0;
        let panic = self.concurrency.average(now, panic_window_s)?;
        let desired = self.scale(now, stable, panic, ready);
        self.apply_bounds_and_zero(now, desired, current)
    }

    /// Knative's `Scale()`: the desired count from the two window averages.
    pub fn scale(&mut self, now: f64, stable: f64, panic: f64, ready: u32) -> u32 {
        let cfg = &self.cfg;
        let ready_f = f64::from(ready.max(1));
        let max_up = (cfg.max_scale_up_rate * ready_f).ceil();
        let max_down = (ready_f / cfg.max_scale_down_rate).floor();
        let target = self.target_value();
        let dspc = (stable / target).ceil();
        let dppc = (panic / target).ceil();
        let desired_stable = dspc.max(max_down).min(max_up) as u32;
        let desired_panic = dppc.max(max_down).min(max_up) as u32;

        let over_threshold = dppc / ready_f >= cfg.panic_threshold_percentage / 100.0;
        if over_threshold {
            self.panic_time = Some(now);
        } else if self
            .panic_time
            .is_some_and(|t| t + cfg.stable_window_s < now)
        {
            self.panic_time = None;
            self.max_panic_pods = 0;
        }

        let mut desired = desired_stable;
        if self.panic_time.is_some() {
            // Provision for the larger window, and never scale down while panicking.
            desired = desired.max(desired_panic);
            self.max_panic_pods = self.max_panic_pods.max(desired);
            desired = self.max_panic_pods;
        }
        if let Some(delay) = &mut self.delay {
            desired = delay.record(now, desired);
        }
        desired
    }

    /// `min-scale`/`max-scale`, then the scale-to-zero wait.
    pub fn apply_bounds_and_zero(&mut self, now: f64, desired: u32, current: u32) -> Option<u32> {
        let desired = desired.clamp(
            self.cfg.min_scale,
            self.cfg.max_scale.max(self.cfg.min_scale),
        );
        if desired != 0 {
            self.inactive_since = None;
            return Some(desired);
        }
        let since = *self.inactive_since.get_or_insert(now);
        let wait = self
            .cfg
            .scale_to_zero_grace_period_s
            .max(self.cfg.scale_to_zero_pod_retention_period_s);
        if now - since >= wait || current == 0 {
            Some(0)
        } else {
            None
        }
    }
}

impl Autoscaler for Kpa {
    fn observe(&mut self, obs: &Observation) -> Option<u32> {
        self.record(obs.now, obs.concurrency);
        if obs.now + 1e-9 < self.next_decision {
            return None;
        }
        self.next_decision += KPA_TICK_S;
        self.decide(obs.now, obs.ready, obs.spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(target: f64) -> KpaConfig {
        KpaConfig {
            target,
            ..KpaConfig::default()
        }
    }

    /// Feeds a constant concurrency from `from` to `to` (exclusive) at 10 Hz, deciding
    /// every 2 s with `ready` replicas; returns the last decision.
    fn feed(kpa: &mut Kpa, from: f64, to: f64, conc: f64, ready: &mut u32) -> Option<u32> {
        let mut last = None;
        let mut i = (from * 10.0).round() as i64;
        while (i as f64) / 10.0 < to {
            let now = i as f64 / 10.0;
            kpa.record(now, conc);
            if i % 20 == 0 && i > 0 {
                if let Some(d) = kpa.decide(now, *ready, *ready) {
                    *ready = d;
                    last = Some(d);
                }
            }
            i += 1;
        }
        last
    }

    #[test]
    fn desired_is_observed_concurrency_over_target_times_utilization() {
        // Knative's docs: target 10 at 70% utilization aims for 7 per replica, so
        // 100 concurrent requests need ceil(100 / 7) = 15 replicas.
        let mut kpa = Kpa::new(config(10.0), 1);
        assert_eq!(kpa.scale(2.0, 100.0, 100.0, 15), 15);
        let mut kpa = Kpa::new(config(10.0), 1);
        assert_eq!(kpa.scale(2.0, 21.0, 21.0, 3), 3);
        assert_eq!(kpa.scale(4.0, 21.1, 21.1, 3), 4);
        // Utilization 1.0: exactly observed / target.
        let mut kpa = Kpa::new(
            KpaConfig {
                target_utilization: 1.0,
                ..config(10.0)
            },
            1,
        );
        assert_eq!(kpa.scale(2.0, 30.0, 30.0, 3), 3);
        assert!(!kpa.is_panicking());
    }

    #[test]
    fn panics_on_a_two_times_burst_and_not_below() {
        let cfg = KpaConfig {
            target_utilization: 1.0,
            ..config(10.0)
        };
        // 4 ready replicas, the stable window at target (40 = 4 × 10). Knative compares
        // the panic window's desired count, ceil(panic / target), with 200% of the ready
        // replicas: 70 in the panic window wants 7 < 8, no panic, the stable window
        // decides.
        let mut kpa = Kpa::new(cfg, 1);
        assert_eq!(kpa.scale(2.0, 40.0, 70.0, 4), 4);
        assert!(!kpa.is_panicking());
        // A 2× burst (80) wants 8 ≥ 8: panic, and the count follows the panic window at
        // once instead of the still low stable average.
        assert_eq!(kpa.scale(4.0, 40.0, 80.0, 4), 8);
        assert!(kpa.is_panicking());
    }

    #[test]
    fn no_scale_down_while_panicking_and_panic_lasts_a_stable_window() {
        let cfg = KpaConfig {
            target_utilization: 1.0,
            ..config(10.0)
        };
        let mut kpa = Kpa::new(cfg, 1);
        let mut ready = 1;
        feed(&mut kpa, 0.0, 10.0, 10.0, &mut ready);
        assert_eq!(ready, 1);
        // A burst to 60 from 10 s: the decision at 12 s sees a panic-window average of
        // 35 (ceil = 4 ≥ 2 × 1 ready) and panics; by 16 s the count is 6.
        feed(&mut kpa, 10.0, 20.0, 60.0, &mut ready);
        assert!(kpa.is_panicking());
        assert_eq!(ready, 6);
        // The burst ends at 20 s. While panicking the count never drops.
        let mut t = 20.0;
        while kpa.is_panicking() {
            assert_eq!(ready, 6, "scaled down while panicking at {t}");
            feed(&mut kpa, t, t + 2.0, 0.0, &mut ready);
            t += 2.0;
            assert!(t < 200.0, "panic never ended");
        }
        // Panic ended at the decision at t - 2, more than a stable window (60 s) after
        // the last time the threshold was crossed (12 s); then the stable window rules
        // again and the count drops, at most halving per decision
        // (max-scale-down-rate 2).
        assert!(t - 2.0 > 12.0 + 60.0, "panic ended at {}", t - 2.0);
        assert_eq!(ready, 3);
    }

    #[test]
    fn scale_down_delay_holds_replicas_for_its_length() {
        let cfg = KpaConfig {
            target_utilization: 1.0,
            stable_window_s: 6.0,
            scale_down_delay_s: 30.0,
            ..config(10.0)
        };
        let mut kpa = Kpa::new(cfg, 1);
        let mut ready = 1;
        feed(&mut kpa, 0.0, 20.0, 30.0, &mut ready);
        assert_eq!(ready, 3);
        // Demand drops to one replica's worth at t = 20: held at 3 until the decisions
        // for 3 are older than the 30 s delay.
        let mut t = 20.0;
        while t < 48.0 {
            feed(&mut kpa, t, t + 2.0, 10.0, &mut ready);
            assert_eq!(ready, 3, "released at {t}");
            t += 2.0;
        }
        feed(&mut kpa, 48.0, 60.0, 10.0, &mut ready);
        assert_eq!(ready, 1);
        // Without the delay the same drop is followed within a stable window.
        let mut kpa = Kpa::new(
            KpaConfig {
                scale_down_delay_s: 0.0,
                ..cfg
            },
            1,
        );
        let mut ready = 1;
        feed(&mut kpa, 0.0, 20.0, 30.0, &mut ready);
        feed(&mut kpa, 20.0, 30.0, 10.0, &mut ready);
        assert_eq!(ready, 1);
    }

    #[test]
    fn scales_to_zero_after_grace_and_retention() {
        let cfg = KpaConfig {
            stable_window_s: 6.0,
            scale_to_zero_grace_period_s: 30.0,
            scale_to_zero_pod_retention_period_s: 60.0,
            ..config(10.0)
        };
        let mut kpa = Kpa::new(cfg, 1);
        let mut ready = 1;
        feed(&mut kpa, 0.0, 10.0, 5.0, &mut ready);
        assert_eq!(ready, 1);
        // Traffic stops at 10 s; the 6 s window is empty from 16 s, so the decider
        // wants 0 from the decision at 16 s on. The last replica stays for the longer
        // of grace (30 s) and retention (60 s).
        feed(&mut kpa, 10.0, 75.0, 0.0, &mut ready);
        assert_eq!(ready, 1);
        feed(&mut kpa, 75.0, 77.0, 0.0, &mut ready);
        assert_eq!(ready, 0);
        // The activator's buffered request wakes it at the next decision.
        feed(&mut kpa, 77.0, 79.0, 1.0, &mut ready);
        assert_eq!(ready, 1);
    }

    #[test]
    fn min_scale_keeps_replicas_and_max_scale_caps_them() {
        let cfg = KpaConfig {
            min_scale: 2,
            max_scale: 5,
            ..config(10.0)
        };
        let mut kpa = Kpa::new(cfg, 1);
        assert_eq!(kpa.apply_bounds_and_zero(0.0, 0, 2), Some(2));
        assert_eq!(kpa.apply_bounds_and_zero(0.0, 50, 2), Some(5));
    }
}
