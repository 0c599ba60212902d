//! `surge bench` against a live `surge serve` on 127.0.0.1 (the tiny random Llama 3.1):
//! the report's request and token counts equal what the server's own Prometheus counters
//! say it served, for a concurrency sweep (prompts sized by the server's /tokenize) and
//! for Poisson arrivals on the chat endpoint (prompts sized by a local tokenizer).

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::server::{metric_value, wait_until, Server};

/// The server's counters that a bench run must match.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Counters {
    requests: f64,
    prompt_tokens: f64,
    generation_tokens: f64,
}

fn counters(server: &Server) -> Counters {
    let text = server.get("/metrics").body;
    let requests = text
        .lines()
        .filter(|l| l.starts_with("vllm:request_success_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    Counters {
        requests,
        prompt_tokens: metric_value(&text, "vllm:prompt_tokens_total{").unwrap(),
        generation_tokens: metric_value(&text, "vllm:generation_tokens_total{").unwrap(),
    }
}

/// Runs `surge bench ARGS --output DIR/report.json` and returns the report.
fn bench(dir: &Path, args: &[&str]) -> Value {
    let report = dir.join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_surge"))
        .arg("bench")
        .args(args)
        .arg("--output")
        .arg(&report)
        .env("NO_COLOR", "1")
        .output()
        .expect("cannot run surge bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "surge bench {args:?} failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    eprintln!("{stdout}");
    serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap()
}

/// Sums a level field over the report.
fn total(report: &Value, field: &str) -> f64 {
    report["levels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l[field].as_f64().unwrap())
        .sum()
}

/// The report's totals equal the growth of the server's counters over the run.
fn assert_counts_match(server: &Server, before: Counters, report: &Value, expected_requests: f64) {
    assert_eq!(total(report, "requests"), expected_requests, "{report:#}");
    assert_eq!(total(report, "completed"), expected_requests, "{report:#}");
    for level in report["levels"].as_array().unwrap() {
        assert_eq!(level["errors"], serde_json::json!({}), "{level:#}");
        assert_eq!(level["missing_usage"], 0, "{level:#}");
        assert!(level["ttft_s"]["p50"].as_f64().unwrap() > 0.0, "{level:#}");
        assert!(level["itl_s"]["p90"].as_f64().unwrap() > 0.0, "{level:#}");
    }
    let want = Counters {
        requests: before.requests + expected_requests,
        prompt_tokens: before.prompt_tokens + total(report, "prompt_tokens"),
        generation_tokens: before.generation_tokens + total(report, "output_tokens"),
    };
    // The counters are updated after the engine step that ends a request, a moment
    // after its stream closed.
    let mut last = before;
    let matched = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until(
            "the server's counters to match the report",
            Duration::from_secs(10),
            || {
                last = counters(server);
                last == want
            },
        )
    }));
    assert!(
        matched.is_ok(),
        "the server counted {last:?} (before the run: {before:?}); the report says {want:?}"
    );
}

#[test]
fn bench_counts_equal_the_servers_metrics() {
    let tiny = support::tiny_llama();
    let server = Server::start(&[
        "--model",
        tiny.to_str().unwrap(),
        "--served-model-name",
        "tiny",
        "--max-num-seqs",
        "4",
        "--kv-cache-memory",
        "64MiB",
    ]);
    let dir = tempfile::tempdir().unwrap();

    // A concurrency sweep on /v1/completions, prompts sized by the server's /tokenize,
    // the model name from /v1/models.
    let before = counters(&server);
    let report = bench(
        dir.path(),
        &[
            "--url",
            server.base_url(),
            "--concurrency",
            "1,3",
            "--max-requests",
            "5",
            "--duration",
            "60s",
            "--prompt-tokens",
            "8..40",
            "--output-tokens",
            "2..9",
        ],
    );
    assert_eq!(report["model"], "tiny");
    assert_eq!(report["levels"][1]["concurrency"], 3.0);
    // ignore_eos: every request generates what it asked for, so the outputs are 2..9.
    let out = total(&report, "output_tokens");
    assert!((20.0..=90.0).contains(&out), "{out}");
    assert_counts_match(&server, before, &report, 10.0);

    // Poisson arrivals on the chat endpoint, prompts sized by a local tokenizer.
    let before = counters(&server);
    let report = bench(
        dir.path(),
        &[
            "--url",
            &format!("{}/v1", server.base_url()),
            "--model",
            "tiny",
            "--api",
            "chat",
            "--rate",
            "20",
            "--max-requests",
            "6",
            "--duration",
            "60s",
            "--tokenizer",
            tiny.to_str().unwrap(),
            "--prompt-tokens",
            "16",
            "--output-tokens",
            "4",
            "--seed",
            "3",
        ],
    );
    assert_eq!(report["levels"][0]["rate"], 20.0);
    // Each request generated exactly 4 tokens.
    assert_eq!(total(&report, "output_tokens"), 24.0);
    // The chat template wraps each 16-token message, so prompts are longer than 16.
    assert!(total(&report, "prompt_tokens") > 6.0 * 16.0, "{report:#}");
    assert_counts_match(&server, before, &report, 6.0);
}
