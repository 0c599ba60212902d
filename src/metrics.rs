//! Every metric surge exports, with its name, help text and buckets, in one place.
//!
//! The `vllm:` set copies vLLM's (v1 engine, 0.11): names, types, labels `model_name`
//! and `engine`, bucket boundaries and help texts, so KEDA triggers, KServe / llm-d
//! routers and dashboards written for vLLM work unchanged. The `surge_` set adds the
//! autoscaling and lifecycle signals of DESIGN §1. The engine records into these as it
//! steps; `/metrics` only encodes them.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry,
    TextEncoder,
};

/// vLLM's `engine` label: the data-parallel engine index; surge runs one engine.
const ENGINE: &str = "0";

/// vLLM's `finished_reason` values, all exported from the start.
pub const FINISHED_REASONS: [&str; 4] = ["stop", "length", "abort", "error"];

const TTFT_BUCKETS: [f64; 22] = [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
const ITL_BUCKETS: [f64; 19] = [
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
const REQUEST_LATENCY_BUCKETS: [f64; 21] = [
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];
const ITERATION_TOKEN_BUCKETS: [f64; 13] = [
    1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0,
];
const PARAMS_N_BUCKETS: [f64; 5] = [1.0, 2.0, 5.0, 10.0, 20.0];

/// vLLM's `build_1_2_5_buckets(max)`: 1, 2, 5, 10, 20, 50, … up to `max`.
pub fn buckets_1_2_5(max: usize) -> Vec<f64> {
    let mut buckets = Vec::new();
    let mut scale = 1usize;
    loop {
        for m in [1usize, 2, 5] {
            match m.checked_mul(scale) {
                Some(v) if v <= max => buckets.push(v as f64),
                _ => return buckets,
            }
        }
        scale = match scale.checked_mul(10) {
            Some(s) => s,
            None => return buckets,
        };
    }
}

/// One request's timeline, observed when it ends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FinishedRequest {
    pub finished_reason: &'static str,
    /// Arrival → end.
    pub e2e: Duration,
    /// Arrival → first scheduled (WAITING).
    pub queue: Duration,
    /// First scheduled → end (RUNNING).
    pub inference: Duration,
    /// First scheduled → first token.
    pub prefill: Duration,
    /// First token → end.
    pub decode: Duration,
    pub prompt_tokens: usize,
    pub generation_tokens: usize,
    pub max_tokens: usize,
    pub n: usize,
}

/// The engine's state after a step, as gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EngineGauges {
    pub running: usize,
    pub waiting: usize,
    pub kv_cache_usage: f64,
    pub saturation: f64,
    pub queue_tokens: usize,
}

/// The KV cache's settings, for `vllm:cache_config_info`.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheInfo {
    pub block_size: usize,
    pub num_blocks: usize,
    pub enable_prefix_caching: bool,
    pub cache_dtype: String,
    pub max_model_len: usize,
    /// The KV cache's memory budget in bytes.
    pub kv_cache_memory_bytes: usize,
    /// `--gpu-memory-utilization`, reported on every device as vLLM does.
    pub gpu_memory_utilization: f64,
}

/// Histograms whose buckets follow `--max-model-len`, registered once it is known.
struct TokenHistograms {
    prompt: Histogram,
    generation: Histogram,
    max_generation: Histogram,
    params_max_tokens: Histogram,
}

/// All of surge's metrics and the registry `/metrics` encodes.
pub struct Metrics {
    registry: Registry,
    model_name: String,
    pub running: Gauge,
    pub waiting: Gauge,
    pub kv_cache_usage: Gauge,
    pub prompt_tokens: IntCounter,
    pub generation_tokens: IntCounter,
    pub request_success: IntCounterVec,
    pub preemptions: IntCounter,
    pub prefix_cache_queries: IntCounter,
    pub prefix_cache_hits: IntCounter,
    pub time_to_first_token: Histogram,
    pub inter_token_latency: Histogram,
    e2e_latency: Histogram,
    queue_time: Histogram,
    inference_time: Histogram,
    prefill_time: Histogram,
    decode_time: Histogram,
    pub iteration_tokens: Histogram,
    params_n: Histogram,
    token_histograms: OnceLock<TokenHistograms>,
    pub saturation: Gauge,
    pub queue_tokens: Gauge,
    pub ready: Gauge,
    pub draining: Gauge,
    pub startup_seconds: GaugeVec,
    /// Requests ended by a time limit: `phase="body"` (`--http-body-read-timeout`) or
    /// `phase="deadline"` (`--request-timeout`).
    pub request_timeouts: IntCounterVec,
    model_info: GaugeVec,
}

impl Metrics {
    /// Registers every metric whose shape does not depend on the model.
    pub fn new(model_name: &str) -> prometheus::Result<Self> {
        let registry = Registry::new();
        let labels = |opts: Opts| {
            opts.const_label("model_name", model_name)
                .const_label("engine", ENGINE)
        };
        let reg = |c: Box<dyn Collector>| registry.register(c);
        let gauge = |name: &str, help: &str| -> prometheus::Result<Gauge> {
            let g = Gauge::with_opts(labels(Opts::new(name, help)))?;
            reg(Box::new(g.clone()))?;
            Ok(g)
        };
        let counter = |name: &str, help: &str| -> prometheus::Result<IntCounter> {
            let c = IntCounter::with_opts(labels(Opts::new(name, help)))?;
            reg(Box::new(c.clone()))?;
            Ok(c)
        };
        let histogram =
            |name: &str, help: &str, buckets: &[f64]| -> prometheus::Result<Histogram> {
                let opts =
                    HistogramOpts::from(labels(Opts::new(name, help))).buckets(buckets.to_vec());
                let h = Histogram::with_opts(opts)?;
                reg(Box::new(h.clone()))?;
                Ok(h)
            };
        let request_success = IntCounterVec::new(
            labels(Opts::new(
                "vllm:request_success_total",
                "Count of successfully processed requests.",
            )),
            &["finished_reason"],
        )?;
        reg(Box::new(request_success.clone()))?;
        for reason in FINISHED_REASONS {
            request_success.with_label_values(&[reason]);
        }
        let startup_seconds = GaugeVec::new(
            labels(Opts::new(
                "surge_startup_seconds",
                "Seconds spent in each start-up phase: pull (fetch the model), load (weights and KV cache), warmup.",
            )),
            &["phase"],
        )?;
        reg(Box::new(startup_seconds.clone()))?;
        let model_info = GaugeVec::new(
            labels(Opts::new(
                "surge_model_info",
                "The served model: where it came from, its dtype and device (value 1).",
            )),
            &["source", "dtype", "device"],
        )?;
        reg(Box::new(model_info.clone()))?;
        let request_timeouts = IntCounterVec::new(
            labels(Opts::new(
                "surge_request_timeouts_total",
                "Requests ended by a time limit: body (the body did not arrive in time, 408) or deadline (--request-timeout passed, 504).",
            )),
            &["phase"],
        )?;
        reg(Box::new(request_timeouts.clone()))?;
        for phase in ["body", "deadline"] {
            request_timeouts.with_label_values(&[phase]);
        }
        Ok(Self {
            running: gauge(
                "vllm:num_requests_running",
                "Number of requests in model execution batches.",
            )?,
            waiting: gauge(
                "vllm:num_requests_waiting",
                "Number of requests waiting to be processed.",
            )?,
            kv_cache_usage: gauge(
                "vllm:kv_cache_usage_perc",
                "KV-cache usage. 1 means 100 percent usage.",
            )?,
            prompt_tokens: counter(
                "vllm:prompt_tokens_total",
                "Number of prefill tokens processed.",
            )?,
            generation_tokens: counter(
                "vllm:generation_tokens_total",
                "Number of generation tokens processed.",
            )?,
            request_success,
            preemptions: counter(
                "vllm:num_preemptions_total",
                "Cumulative number of preemption from the engine.",
            )?,
            prefix_cache_queries: counter(
                "vllm:prefix_cache_queries_total",
                "Prefix cache queries, in terms of number of queried tokens.",
            )?,
            prefix_cache_hits: counter(
                "vllm:prefix_cache_hits_total",
                "Prefix cache hits, in terms of number of cached tokens.",
            )?,
            time_to_first_token: histogram(
                "vllm:time_to_first_token_seconds",
                "Histogram of time to first token in seconds.",
                &TTFT_BUCKETS,
            )?,
            inter_token_latency: histogram(
                "vllm:inter_token_latency_seconds",
                "Histogram of inter-token latency in seconds.",
                &ITL_BUCKETS,
            )?,
            e2e_latency: histogram(
                "vllm:e2e_request_latency_seconds",
                "Histogram of e2e request latency in seconds.",
                &REQUEST_LATENCY_BUCKETS,
            )?,
            queue_time: histogram(
                "vllm:request_queue_time_seconds",
                "Histogram of time spent in WAITING phase for request.",
                &REQUEST_LATENCY_BUCKETS,
            )?,
            inference_time: histogram(
                "vllm:request_inference_time_seconds",
                "Histogram of time spent in RUNNING phase for request.",
                &REQUEST_LATENCY_BUCKETS,
            )?,
            prefill_time: histogram(
                "vllm:request_prefill_time_seconds",
                "Histogram of time spent in PREFILL phase for request.",
                &REQUEST_LATENCY_BUCKETS,
            )?,
            decode_time: histogram(
                "vllm:request_decode_time_seconds",
                "Histogram of time spent in DECODE phase for request.",
                &REQUEST_LATENCY_BUCKETS,
            )?,
            iteration_tokens: histogram(
                "vllm:iteration_tokens_total",
                "Histogram of number of tokens per engine_step.",
                &ITERATION_TOKEN_BUCKETS,
            )?,
            params_n: histogram(
                "vllm:request_params_n",
                "Histogram of the n request parameter.",
                &PARAMS_N_BUCKETS,
            )?,
            token_histograms: OnceLock::new(),
            saturation: gauge(
                "surge_saturation",
                "Share of this replica's capacity demanded now: max((running+waiting)/max_num_seqs, KV tokens held and waiting / KV capacity). Scale out above your target.",
            )?,
            queue_tokens: gauge(
                "surge_queue_tokens",
                "Prompt tokens of requests waiting to be scheduled.",
            )?,
            ready: gauge(
                "surge_ready",
                "1 when the model is loaded and new requests are accepted, else 0.",
            )?,
            draining: gauge(
                "surge_draining",
                "1 after SIGTERM while in-flight requests finish, else 0.",
            )?,
            startup_seconds,
            request_timeouts,
            model_info,
            model_name: model_name.to_string(),
            registry,
        })
    }

    /// Registers what depends on the loaded model: the token-count histograms (buckets
    /// up to `--max-model-len`), `vllm:cache_config_info` and `surge_model_info`.
    pub fn model_loaded(
        &self,
        cache: &CacheInfo,
        (source, dtype, device): (&str, &str, &str),
    ) -> prometheus::Result<()> {
        let histogram = |name: &str, help: &str| -> prometheus::Result<Histogram> {
            let opts = HistogramOpts::new(name, help)
                .const_label("model_name", &self.model_name)
                .const_label("engine", ENGINE)
                .buckets(buckets_1_2_5(cache.max_model_len));
            let h = Histogram::with_opts(opts)?;
            self.registry.register(Box::new(h.clone()))?;
            Ok(h)
        };
        let token_histograms = TokenHistograms {
            prompt: histogram(
                "vllm:request_prompt_tokens",
                "Number of prefill tokens processed.",
            )?,
            generation: histogram(
                "vllm:request_generation_tokens",
                "Number of generation tokens processed.",
            )?,
            max_generation: histogram(
                "vllm:request_max_num_generation_tokens",
                "Histogram of maximum number of requested generation tokens.",
            )?,
            params_max_tokens: histogram(
                "vllm:request_params_max_tokens",
                "Histogram of the max_tokens request parameter.",
            )?,
        };
        let _ = self.token_histograms.set(token_histograms);
        let info = Gauge::with_opts(
            Opts::new(
                "vllm:cache_config_info",
                "Information of the LLMEngine CacheConfig",
            )
            .const_label("engine", ENGINE)
            .const_label("block_size", cache.block_size.to_string())
            .const_label("num_gpu_blocks", cache.num_blocks.to_string())
            .const_label("num_cpu_blocks", "None")
            .const_label(
                "kv_cache_memory_bytes",
                cache.kv_cache_memory_bytes.to_string(),
            )
            .const_label(
                "gpu_memory_utilization",
                cache.gpu_memory_utilization.to_string(),
            )
            .const_label("cache_dtype", &cache.cache_dtype)
            .const_label(
                "enable_prefix_caching",
                if cache.enable_prefix_caching {
                    "True"
                } else {
                    "False"
                },
            ),
        )?;
        info.set(1.0);
        self.registry.register(Box::new(info))?;
        self.model_info
            .with_label_values(&[source, dtype, device])
            .set(1.0);
        Ok(())
    }

    /// The engine's state after a step.
    pub fn set_engine_gauges(&self, g: &EngineGauges) {
        self.running.set(g.running as f64);
        self.waiting.set(g.waiting as f64);
        self.kv_cache_usage.set(g.kv_cache_usage);
        self.saturation.set(g.saturation);
        self.queue_tokens.set(g.queue_tokens as f64);
    }

    /// One request ended.
    pub fn observe_finished(&self, r: &FinishedRequest) {
        self.request_success
            .with_label_values(&[r.finished_reason])
            .inc();
        self.e2e_latency.observe(r.e2e.as_secs_f64());
        self.queue_time.observe(r.queue.as_secs_f64());
        self.inference_time.observe(r.inference.as_secs_f64());
        self.prefill_time.observe(r.prefill.as_secs_f64());
        self.decode_time.observe(r.decode.as_secs_f64());
        self.params_n.observe(r.n as f64);
        if let Some(h) = self.token_histograms.get() {
            h.prompt.observe(r.prompt_tokens as f64);
            h.generation.observe(r.generation_tokens as f64);
            h.max_generation.observe(r.max_tokens as f64);
            h.params_max_tokens.observe(r.max_tokens as f64);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec fails only on invalid metric families, which
        // registration already rejected.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_1_2_5_match_vllm() {
        assert_eq!(
            buckets_1_2_5(100),
            vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]
        );
        assert_eq!(buckets_1_2_5(4096).last(), Some(&2000.0));
        assert_eq!(buckets_1_2_5(8192).last(), Some(&5000.0));
        assert_eq!(buckets_1_2_5(131072).last(), Some(&100000.0));
        assert_eq!(buckets_1_2_5(0), Vec::<f64>::new());
    }

    #[test]
    fn every_metric_is_exported_before_any_traffic() {
        let m = Metrics::new("m").unwrap();
        m.model_loaded(
            &CacheInfo {
                block_size: 16,
                num_blocks: 10,
                enable_prefix_caching: true,
                cache_dtype: "auto".into(),
                max_model_len: 64,
                kv_cache_memory_bytes: 1 << 20,
                gpu_memory_utilization: 0.9,
            },
            ("local", "f32", "cpu"),
        )
        .unwrap();
        let text = m.encode();
        for name in [
            "vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 0",
            "vllm:request_success_total{engine=\"0\",finished_reason=\"abort\",model_name=\"m\"} 0",
            "vllm:request_prompt_tokens_bucket{engine=\"0\",model_name=\"m\",le=\"50\"} 0",
            "vllm:cache_config_info{block_size=\"16\"",
            "surge_model_info{device=\"cpu\",dtype=\"f32\",engine=\"0\",model_name=\"m\",source=\"local\"} 1",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }
}
