//! surge's /metrics against vLLM's (v1 engine, 0.11): every shared metric has vLLM's
//! name, type, labels and bucket boundaries, so KEDA triggers, KServe / llm-d routers and
//! dashboards written for vLLM read surge unchanged. The table below is transcribed from
//! vLLM's `vllm/v1/metrics/loggers.py`, independently of surge's `src/metrics.rs`.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;
use support::server::Server;

const MODEL: &str = "tiny";
const MAX_MODEL_LEN: usize = 256;

/// (name on /metrics, type, labels besides `model_name` and `engine`).
const VLLM: &[(&str, &str, &[&str])] = &[
    ("vllm:num_requests_running", "gauge", &[]),
    ("vllm:num_requests_waiting", "gauge", &[]),
    ("vllm:kv_cache_usage_perc", "gauge", &[]),
    ("vllm:prompt_tokens_total", "counter", &[]),
    ("vllm:generation_tokens_total", "counter", &[]),
    (
        "vllm:request_success_total",
        "counter",
        &["finished_reason"],
    ),
    ("vllm:num_preemptions_total", "counter", &[]),
    ("vllm:prefix_cache_queries_total", "counter", &[]),
    ("vllm:prefix_cache_hits_total", "counter", &[]),
    ("vllm:time_to_first_token_seconds", "histogram", &[]),
    ("vllm:inter_token_latency_seconds", "histogram", &[]),
    ("vllm:e2e_request_latency_seconds", "histogram", &[]),
    ("vllm:request_queue_time_seconds", "histogram", &[]),
    ("vllm:request_inference_time_seconds", "histogram", &[]),
    ("vllm:request_prefill_time_seconds", "histogram", &[]),
    ("vllm:request_decode_time_seconds", "histogram", &[]),
    ("vllm:request_prompt_tokens", "histogram", &[]),
    ("vllm:request_generation_tokens", "histogram", &[]),
    ("vllm:request_max_num_generation_tokens", "histogram", &[]),
    ("vllm:request_params_max_tokens", "histogram", &[]),
    ("vllm:request_params_n", "histogram", &[]),
    ("vllm:iteration_tokens_total", "histogram", &[]),
];

/// vLLM's bucket lists.
const TTFT: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
const ITL: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
const REQUEST_LATENCY: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];
const ITERATION: &[f64] = &[
    1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0,
];
/// build_1_2_5_buckets(256).
const TOKENS_256: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0];

/// One parsed exposition: family → type, and every sample's name and labels.
struct Exposition {
    types: BTreeMap<String, String>,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

fn parse(text: &str) -> Exposition {
    let mut types = BTreeMap::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            types.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (head, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match head.split_once('{') {
            Some((name, rest)) => (name, rest.trim_end_matches('}')),
            None => (head, ""),
        };
        let labels = labels
            .split("\",")
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once('=').unwrap();
                (k.to_string(), v.trim_matches('"').to_string())
            })
            .collect();
        samples.push((name.to_string(), labels, value.parse().unwrap()));
    }
    Exposition { types, samples }
}

impl Exposition {
    fn buckets(&self, family: &str) -> Vec<f64> {
        let bucket = format!("{family}_bucket");
        self.samples
            .iter()
            .filter(|(n, _, _)| *n == bucket)
            .filter_map(|(_, l, _)| l.get("le").filter(|le| *le != "+Inf")?.parse().ok())
            .collect()
    }
}

#[test]
fn shared_metrics_have_vllms_names_types_labels_and_buckets() {
    let tiny = support::tiny_llama();
    let len = MAX_MODEL_LEN.to_string();
    let server = Server::start(&[
        "--model",
        tiny.to_str().unwrap(),
        "--served-model-name",
        MODEL,
        "--max-model-len",
        &len,
        "--kv-cache-memory",
        "16MiB",
    ]);
    // One request, so every histogram has observed something.
    server.ok_json(
        "/v1/completions",
        &json!({"model": MODEL, "prompt": "hello there", "max_tokens": 3, "temperature": 0}),
    );
    let text = server.get("/metrics").body;
    let m = parse(&text);
    for (name, kind, extra) in VLLM {
        assert_eq!(
            m.types.get(*name).map(String::as_str),
            Some(*kind),
            "{name}: expected a {kind}\n{text}"
        );
        let suffixes: &[&str] = if *kind == "histogram" {
            &["_bucket", "_sum", "_count"]
        } else {
            &[""]
        };
        for suffix in suffixes {
            let sample = format!("{name}{suffix}");
            let label_sets: BTreeSet<Vec<String>> = m
                .samples
                .iter()
                .filter(|(n, _, _)| *n == sample)
                .map(|(_, l, _)| l.keys().cloned().collect())
                .collect();
            let mut want: Vec<String> = ["engine", "model_name"]
                .iter()
                .chain(extra.iter())
                .map(|s| s.to_string())
                .collect();
            if *suffix == "_bucket" {
                want.push("le".into());
            }
            want.sort();
            assert_eq!(
                label_sets,
                BTreeSet::from([want]),
                "{sample}: labels differ from vLLM's"
            );
            assert!(
                m.samples
                    .iter()
                    .filter(|(n, _, _)| *n == sample)
                    .all(|(_, l, _)| l["model_name"] == MODEL && l["engine"] == "0"),
                "{sample}: model_name must be the served name and engine \"0\""
            );
        }
    }
    let reasons: BTreeSet<&str> = m
        .samples
        .iter()
        .filter(|(n, _, _)| n == "vllm:request_success_total")
        .map(|(_, l, _)| l["finished_reason"].as_str())
        .collect();
    for reason in ["stop", "length", "abort"] {
        assert!(reasons.contains(reason), "finished_reason {reason} missing");
    }
    assert_eq!(m.buckets("vllm:time_to_first_token_seconds"), TTFT);
    assert_eq!(m.buckets("vllm:inter_token_latency_seconds"), ITL);
    for family in [
        "vllm:e2e_request_latency_seconds",
        "vllm:request_queue_time_seconds",
        "vllm:request_inference_time_seconds",
        "vllm:request_prefill_time_seconds",
        "vllm:request_decode_time_seconds",
    ] {
        assert_eq!(m.buckets(family), REQUEST_LATENCY, "{family}");
    }
    assert_eq!(m.buckets("vllm:iteration_tokens_total"), ITERATION);
    for family in [
        "vllm:request_prompt_tokens",
        "vllm:request_generation_tokens",
        "vllm:request_max_num_generation_tokens",
        "vllm:request_params_max_tokens",
    ] {
        assert_eq!(m.buckets(family), TOKENS_256, "{family}");
    }
    assert_eq!(
        m.buckets("vllm:request_params_n"),
        [1.0, 2.0, 5.0, 10.0, 20.0]
    );

    // vllm:cache_config_info is an info gauge (value 1) with the cache settings as labels.
    let info = m
        .samples
        .iter()
        .find(|(n, _, _)| n == "vllm:cache_config_info")
        .unwrap_or_else(|| panic!("vllm:cache_config_info missing\n{text}"));
    assert_eq!(info.2, 1.0);
    assert_eq!(info.1["block_size"], "16");
    assert!(info.1["num_gpu_blocks"].parse::<usize>().unwrap() > 0);
    assert_eq!(info.1["enable_prefix_caching"], "True");
    // The budget the blocks were carved from (on CPU, --kv-cache-memory) holds them all.
    let budget: usize = info.1["kv_cache_memory_bytes"].parse().unwrap();
    assert!(budget > 0, "{text}");
    assert_eq!(info.1["gpu_memory_utilization"], "0.9");
    assert_eq!(m.types["vllm:cache_config_info"], "gauge");

    // surge's own signals.
    for (name, kind) in [
        ("surge_saturation", "gauge"),
        ("surge_queue_tokens", "gauge"),
        ("surge_ready", "gauge"),
        ("surge_draining", "gauge"),
        ("surge_startup_seconds", "gauge"),
        ("surge_model_info", "gauge"),
    ] {
        assert_eq!(m.types.get(name).map(String::as_str), Some(kind), "{name}");
    }
    let value = |name: &str| {
        m.samples
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|s| s.2)
            .unwrap_or_else(|| panic!("{name} missing"))
    };
    assert_eq!(value("surge_ready"), 1.0);
    assert_eq!(value("surge_draining"), 0.0);
    let phases: BTreeSet<&str> = m
        .samples
        .iter()
        .filter(|(n, _, _)| n == "surge_startup_seconds")
        .map(|(_, l, _)| l["phase"].as_str())
        .collect();
    assert_eq!(phases, BTreeSet::from(["pull", "load", "warmup"]));
    let info = m
        .samples
        .iter()
        .find(|(n, _, _)| n == "surge_model_info")
        .unwrap();
    assert_eq!(
        (info.1["source"].as_str(), info.1["device"].as_str(), info.2),
        ("local", "cpu", 1.0)
    );
}
