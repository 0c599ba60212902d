//! `surge bench simulate` flags, and the policy models and fleet they describe.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::ValueEnum;

use super::fleet::{FleetConfig, Routing};
use super::keda::{HpaConfig, Keda, KedaConfig, KedaMetric};
use super::kpa::{Kpa, KpaConfig};
use super::policy::Autoscaler;

/// An autoscaling policy to compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PolicyKind {
    /// Knative's KPA on concurrency, the activator in front.
    Kpa,
    /// KEDA + HPA on `sum(vllm:num_requests_waiting)`.
    KedaQueue,
    /// KEDA + HPA on `sum(surge_saturation)`.
    KedaSaturation,
}

impl PolicyKind {
    /// The name in the table and the JSON.
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::Kpa => "kpa",
            PolicyKind::KedaQueue => "keda-queue",
            PolicyKind::KedaSaturation => "keda-saturation",
        }
    }
}

/// `surge bench simulate`: replays a request-arrival trace through models of Knative's
/// KPA and of KEDA + HPA, over replicas that serve at the capacity a `surge bench`
/// report measured, and compares SLO attainment, queueing and GPU-seconds.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// Request-arrival trace: CSV `t_seconds[,prompt_tokens,output_tokens]` or JSONL
    /// with those keys (examples in bench/traces/).
    #[arg(long)]
    pub trace: PathBuf,
    /// A `surge bench` JSON report: its levels give one replica's latency against
    /// concurrency.
    #[arg(long)]
    pub capacity: PathBuf,
    /// Time from creating a replica to it serving (image, weights, warm-up).
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub cold_start: Duration,
    /// Policies to compare, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "kpa,keda-queue,keda-saturation"
    )]
    pub policies: Vec<PolicyKind>,
    /// Fewest replicas (Knative min-scale, KEDA minReplicaCount); 0 allows scale to
    /// zero.
    #[arg(long, default_value_t = 1)]
    pub min_replicas: u32,
    /// Most replicas (Knative max-scale, KEDA maxReplicaCount).
    #[arg(long, default_value_t = 8)]
    pub max_replicas: u32,
    /// Requests a replica runs at once, the rest queue in it; default: the highest
    /// concurrency the report measured.
    #[arg(long)]
    pub max_num_seqs: Option<usize>,
    /// A replica's KV cache in tokens, for the KV term of surge_saturation; without it
    /// saturation is (running + waiting) / max-num-seqs.
    #[arg(long)]
    pub kv_capacity_tokens: Option<u64>,
    /// A request that has not started after this long is dropped.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// A removed replica's unfinished requests are dropped after this long (surge's
    /// --shutdown-timeout).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,
    /// SLO on time to first token; a request meets it when its TTFT is within (0s: no
    /// TTFT objective).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub slo_ttft_p90: Option<Duration>,
    /// SLO on end-to-end latency (0s or absent: none).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub slo_e2e: Option<Duration>,
    /// Write the full results (with replicas over time) as JSON here.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Simulation step.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    pub tick: Duration,

    /// KPA: `autoscaling.knative.dev/target`, concurrency per replica.
    #[arg(long, default_value_t = 16.0)]
    pub kpa_target: f64,
    /// KPA: `target-utilization-percentage`.
    #[arg(long, default_value_t = 70.0)]
    pub kpa_target_utilization_percentage: f64,
    /// KPA: `containerConcurrency`, the most requests sent to one replica (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub kpa_container_concurrency: usize,
    /// KPA: stable window (`autoscaling.knative.dev/window`).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub kpa_window: Duration,
    /// KPA: `panic-window-percentage` of the stable window.
    #[arg(long, default_value_t = 10.0)]
    pub kpa_panic_window_percentage: f64,
    /// KPA: `panic-threshold-percentage`.
    #[arg(long, default_value_t = 200.0)]
    pub kpa_panic_threshold_percentage: f64,
    /// KPA: `max-scale-up-rate`.
    #[arg(long, default_value_t = 1000.0)]
    pub kpa_max_scale_up_rate: f64,
    /// KPA: `max-scale-down-rate`.
    #[arg(long, default_value_t = 2.0)]
    pub kpa_max_scale_down_rate: f64,
    /// KPA: `scale-down-delay`.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub kpa_scale_down_delay: Duration,
    /// KPA: `scale-to-zero-grace-period`.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub kpa_scale_to_zero_grace_period: Duration,
    /// KPA: `scale-to-zero-pod-retention-period`.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub kpa_scale_to_zero_pod_retention_period: Duration,

    /// KEDA on queue depth: waiting requests per replica (AverageValue target).
    #[arg(long, default_value_t = 4.0)]
    pub keda_queue_target: f64,
    /// KEDA on queue depth: activationThreshold.
    #[arg(long, default_value_t = 0.0)]
    pub keda_queue_activation: f64,
    /// KEDA on surge_saturation: saturation per replica (AverageValue target).
    #[arg(long, default_value_t = 0.8)]
    pub keda_saturation_target: f64,
    /// KEDA on surge_saturation: activationThreshold.
    #[arg(long, default_value_t = 0.0)]
    pub keda_saturation_activation: f64,
    /// KEDA: pollingInterval.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub keda_polling_interval: Duration,
    /// KEDA: cooldownPeriod (1 → 0).
    #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
    pub keda_cooldown_period: Duration,
    /// Prometheus scrape interval of the replicas' metrics.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub scrape_interval: Duration,
    /// HPA sync period.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub hpa_sync_period: Duration,
    /// HPA tolerance.
    #[arg(long, default_value_t = 0.1)]
    pub hpa_tolerance: f64,
    /// HPA `behavior.scaleDown.stabilizationWindowSeconds`.
    #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
    pub hpa_scale_down_stabilization: Duration,
}

/// One policy ready to replay: its autoscaler and the fleet it drives.
pub struct PolicySetup {
    pub kind: PolicyKind,
    pub description: String,
    pub autoscaler: Box<dyn Autoscaler>,
    pub fleet: FleetConfig,
}

impl SimulateArgs {
    /// Checks the values clap cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.max_replicas == 0 || self.max_replicas < self.min_replicas {
            bail!("--max-replicas must be ≥ 1 and ≥ --min-replicas");
        }
        if self.policies.is_empty() {
            bail!("--policies names no policy");
        }
        let positive = [
            ("--kpa-target", self.kpa_target),
            (
                "--kpa-target-utilization-percentage",
                self.kpa_target_utilization_percentage,
            ),
            (
                "--kpa-panic-window-percentage",
                self.kpa_panic_window_percentage,
            ),
            (
                "--kpa-panic-threshold-percentage",
                self.kpa_panic_threshold_percentage,
            ),
            ("--kpa-max-scale-up-rate", self.kpa_max_scale_up_rate),
            ("--kpa-max-scale-down-rate", self.kpa_max_scale_down_rate),
            ("--keda-queue-target", self.keda_queue_target),
            ("--keda-saturation-target", self.keda_saturation_target),
        ];
        for (flag, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                bail!("{flag} must be a positive number, got {v}");
            }
        }
        for (flag, d) in [
            ("--tick", self.tick),
            ("--kpa-window", self.kpa_window),
            ("--keda-polling-interval", self.keda_polling_interval),
            ("--scrape-interval", self.scrape_interval),
            ("--hpa-sync-period", self.hpa_sync_period),
        ] {
            if d.is_zero() {
                bail!("{flag} must be longer than 0");
            }
        }
        if self.max_num_seqs == Some(0) {
            bail!("--max-num-seqs must be ≥ 1");
        }
        Ok(())
    }

    /// The fleet for a policy; `max_num_seqs` is the resolved per-replica limit.
    fn fleet(&self, kind: PolicyKind, max_num_seqs: usize) -> FleetConfig {
        let (routing, container_concurrency) = match kind {
            PolicyKind::Kpa => (Routing::LeastLoaded, self.kpa_container_concurrency),
            PolicyKind::KedaQueue | PolicyKind::KedaSaturation => (Routing::RoundRobin, 0),
        };
        FleetConfig {
            cold_start_s: self.cold_start.as_secs_f64(),
            max_num_seqs,
            container_concurrency,
            routing,
            request_timeout_s: self.request_timeout.as_secs_f64(),
            shutdown_timeout_s: self.shutdown_timeout.as_secs_f64(),
            kv_capacity_tokens: self.kv_capacity_tokens.map(|t| t as f64),
        }
    }

    /// The KPA these flags describe.
    pub fn kpa_config(&self) -> KpaConfig {
        KpaConfig {
            target: self.kpa_target,
            target_utilization: self.kpa_target_utilization_percentage / 100.0,
            stable_window_s: self.kpa_window.as_secs_f64(),
            panic_window_percentage: self.kpa_panic_window_percentage,
            panic_threshold_percentage: self.kpa_panic_threshold_percentage,
            max_scale_up_rate: self.kpa_max_scale_up_rate,
            max_scale_down_rate: self.kpa_max_scale_down_rate,
            scale_down_delay_s: self.kpa_scale_down_delay.as_secs_f64(),
            scale_to_zero_grace_period_s: self.kpa_scale_to_zero_grace_period.as_secs_f64(),
            scale_to_zero_pod_retention_period_s: self
                .kpa_scale_to_zero_pod_retention_period
                .as_secs_f64(),
            min_scale: self.min_replicas,
            max_scale: self.max_replicas,
        }
    }

    /// The ScaledObject these flags describe for a metric.
    pub fn keda_config(&self, metric: KedaMetric) -> KedaConfig {
        let (target, activation_threshold) = match metric {
            KedaMetric::QueueDepth => (self.keda_queue_target, self.keda_queue_activation),
            KedaMetric::Saturation => {
                (self.keda_saturation_target, self.keda_saturation_activation)
            }
        };
        KedaConfig {
            metric,
            target,
            activation_threshold,
            polling_interval_s: self.keda_polling_interval.as_secs_f64(),
            cooldown_period_s: self.keda_cooldown_period.as_secs_f64(),
            min_replicas: self.min_replicas,
            max_replicas: self.max_replicas,
            scrape_interval_s: self.scrape_interval.as_secs_f64(),
            hpa: HpaConfig {
                sync_period_s: self.hpa_sync_period.as_secs_f64(),
                tolerance: self.hpa_tolerance,
                scale_down_stabilization_s: self.hpa_scale_down_stabilization.as_secs_f64(),
                ..HpaConfig::default()
            },
        }
    }

    /// Replicas ready when the trace starts.
    pub fn initial_replicas(&self) -> u32 {
        self.min_replicas.max(1)
    }

    /// A fresh autoscaler and fleet for a policy.
    pub fn policy(&self, kind: PolicyKind, max_num_seqs: usize) -> PolicySetup {
        let fleet = self.fleet(kind, max_num_seqs);
        let bounds = format!("{}–{} replicas", self.min_replicas, self.max_replicas);
        let (autoscaler, description): (Box<dyn Autoscaler>, String) = match kind {
            PolicyKind::Kpa => {
                let c = self.kpa_config();
                let cc = match self.kpa_container_concurrency {
                    0 => "unlimited".to_string(),
                    n => n.to_string(),
                };
                let text = format!(
                    "Knative KPA, target {} × {:.0}% utilization, containerConcurrency {cc}, window {}s (panic {}%, threshold {}%), scale-down-delay {}s, {bounds}",
                    c.target,
                    c.target_utilization * 100.0,
                    c.stable_window_s,
                    c.panic_window_percentage,
                    c.panic_threshold_percentage,
                    c.scale_down_delay_s
                );
                (Box::new(Kpa::new(c, self.initial_replicas())), text)
            }
            PolicyKind::KedaQueue | PolicyKind::KedaSaturation => {
                let metric = if kind == PolicyKind::KedaQueue {
                    KedaMetric::QueueDepth
                } else {
                    KedaMetric::Saturation
                };
                let c = self.keda_config(metric);
                let name = match metric {
                    KedaMetric::QueueDepth => "sum(vllm:num_requests_waiting)",
                    KedaMetric::Saturation => "sum(surge_saturation)",
                };
                let text = format!(
                    "KEDA + HPA on {name}, AverageValue {} (activation {}), polling {}s, cooldown {}s, HPA stabilization {}s, {bounds}",
                    c.target,
                    c.activation_threshold,
                    c.polling_interval_s,
                    c.cooldown_period_s,
                    c.hpa.scale_down_stabilization_s
                );
                (Box::new(Keda::new(c)), text)
            }
        };
        PolicySetup {
            kind,
            description,
            autoscaler,
            fleet,
        }
    }
}
