//! The advisor against a test double with a known latency curve: an OpenAI-style SSE
//! server on 127.0.0.1 whose time to first token is 40 ms + 20 ms × (requests in
//! flight), so a 240 ms TTFT objective has its knee at exactly 10 in flight. The sweep
//! (2, 4, 8, 12, 16) brackets it, and the advice must land within 10% of 10; the double's
//! /metrics (saturation = in flight / 16) checks the KEDA threshold the same way. Also:
//! flag combinations that make no sense are errors, before any request.

use std::convert::Infallible;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::routing::{get, post};
use axum::Router;
use futures::StreamExt;
use serde_json::{json, Value};
use surge::bench::advisor::Slos;
use surge::bench::workload::{Api, LengthDist};
use surge::bench::{BenchConfig, Sweep, WorkloadSource};

const BASE_TTFT: Duration = Duration::from_millis(40);
const TTFT_PER_REQUEST: Duration = Duration::from_millis(20);
const ITL: Duration = Duration::from_millis(5);
const SLO_TTFT: Duration = Duration::from_millis(240);
/// TTFT(n) = 40 ms + 20 ms × n reaches 240 ms at n = 10.
const KNEE: f64 = 10.0;
/// The double's "max-num-seqs" for its saturation gauge.
const SLOTS: f64 = 16.0;

#[derive(Clone, Default)]
struct Double {
    in_flight: Arc<AtomicUsize>,
}

/// Streams `max_tokens` one-token chunks: the first after the TTFT the current load
/// dictates, then one every `ITL`; usage; `[DONE]`. The request leaves the in-flight
/// count before `[DONE]`, so a client's next request never sees its predecessor.
async fn completions(State(d): State<Double>, body: Bytes) -> axum::response::Response {
    let request: Value = serde_json::from_slice(&body).unwrap();
    let max_tokens = request["max_tokens"].as_u64().unwrap();
    let n = d.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        tokio::time::sleep(BASE_TTFT + TTFT_PER_REQUEST * n as u32).await;
        for i in 0..max_tokens {
            if i > 0 {
                tokio::time::sleep(ITL).await;
            }
            let chunk = json!({"choices": [{"index": 0, "text": "x"}]});
            let _ = tx.send(format!("data: {chunk}\n\n"));
        }
        let usage =
            json!({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": max_tokens}});
        let _ = tx.send(format!("data: {usage}\n\n"));
        d.in_flight.fetch_sub(1, Ordering::SeqCst);
        let _ = tx.send("data: [DONE]\n\n".into());
    });
    let stream = tokio_stream::wrappers::UnboundedReceiverStream::new(rx)
        .map(|s| Ok::<_, Infallible>(Bytes::from(s)));
    axum::response::Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap()
}

async fn metrics(State(d): State<Double>) -> String {
    let n = d.in_flight.load(Ordering::SeqCst) as f64;
    format!(
        "surge_saturation{{model_name=\"double\"}} {}\nvllm:num_requests_waiting{{model_name=\"double\"}} {}\n",
        n / SLOTS,
        (n - 8.0).max(0.0)
    )
}

fn config(url: String, dataset: std::path::PathBuf, overlay: std::path::PathBuf) -> BenchConfig {
    BenchConfig {
        url,
        model: Some("double".into()),
        api: Api::Completions,
        ignore_eos: true,
        sweep: Sweep::Concurrency(vec![2, 4, 8, 12, 16]),
        max_requests: 32,
        duration: Duration::from_secs(60),
        request_timeout: Duration::from_secs(30),
        workload: WorkloadSource::Dataset(dataset),
        output_tokens: LengthDist::Fixed(4),
        seed: 0,
        metrics_url: None,
        output: None,
        plot: None,
        plot_font: None,
        slos: Slos {
            ttft_p90_s: Some(SLO_TTFT.as_secs_f64()),
            itl_p90_s: Some(0.1),
            e2e_p90_s: None,
        },
        write_overlay: Some(overlay),
        deploy_dir: std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy"),
    }
}

#[test]
fn the_advice_lands_within_ten_percent_of_a_known_knee() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dataset = dir.path().join("prompts.jsonl");
    std::fs::write(&dataset, "{\"prompt\": \"a\"}\n{\"prompt\": \"b\"}\n").unwrap();
    let overlay = dir.path().join("overlay");

    let report = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .route("/v1/completions", post(completions))
            .route("/metrics", get(metrics))
            .with_state(Double::default());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        surge::bench::run(&config(format!("http://{addr}"), dataset, overlay.clone()))
            .await
            .unwrap()
    });

    for level in &report.levels {
        assert_eq!(level.completed, 32, "{level:#?}");
        assert_eq!(level.output_tokens, 32 * 4);
    }
    let advice = report.advice.expect("SLOs were given");
    eprintln!("{}", surge::bench::report::advice_text(&advice));
    let knee = advice
        .knee_concurrency
        .expect("the sweep brackets the knee");
    assert!(
        (knee - KNEE).abs() <= 0.1 * KNEE,
        "knee {knee}, expected {KNEE} ± 10%: {advice:#?}\nlevels: {:#?}",
        report.levels
    );
    assert!(!advice.knee_above_sweep);
    let target = f64::from(advice.knative_target.unwrap());
    assert!((target - KNEE).abs() <= 0.1 * KNEE, "{advice:#?}");
    assert_eq!(advice.container_concurrency, advice.knative_target);
    // Saturation at the knee is 10/16; the threshold keeps 20% headroom below it.
    let saturation = advice.keda_saturation_threshold.unwrap();
    let want = KNEE / SLOTS * 0.8;
    assert!(
        (saturation - want).abs() <= 0.1 * want,
        "{saturation} vs {want}: {advice:#?}"
    );
    assert!(advice.keda_waiting_threshold.unwrap() >= 1);

    // The overlay carries the target.
    let isvc = std::fs::read_to_string(overlay.join("kserve/isvc-knative.yaml")).unwrap();
    let line = format!(
        "autoscaling.knative.dev/target: \"{}\"",
        advice.knative_target.unwrap()
    );
    assert!(isvc.contains(&line), "{line} not in:\n{isvc}");
    assert!(isvc.contains(&format!(
        "containerConcurrency: {}",
        advice.knative_target.unwrap()
    )));
}

/// `surge bench ARGS` must fail, saying `why`, without contacting anything (the URL
/// points at a closed port).
fn assert_rejected(args: &[&str], why: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_surge"))
        .arg("bench")
        .args(["--url", "http://127.0.0.1:9"])
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} was accepted");
    assert!(
        stderr.contains(why),
        "{args:?}: expected {why:?} in:\n{stderr}"
    );
    assert!(
        !stderr.contains("connect"),
        "{args:?} got as far as connecting:\n{stderr}"
    );
}

#[test]
fn nonsense_flag_combinations_are_errors() {
    assert_rejected(
        &["--concurrency", "2", "--rate", "1"],
        "cannot be used with",
    );
    assert_rejected(
        &["--dataset", "d.jsonl", "--prompt-tokens", "5"],
        "cannot be used with",
    );
    assert_rejected(
        &["--dataset", "d.jsonl", "--tokenizer", "dir"],
        "cannot be used with",
    );
    assert_rejected(&["--concurrency", "0"], "at least 1");
    assert_rejected(&["--rate", "0"], "positive");
    assert_rejected(&["--max-requests", "0"], "at least 1");
    assert_rejected(&["--duration", "0s"], "longer than 0");
    assert_rejected(&["--plot", "p.pdf"], ".png or .svg");
    assert_rejected(&["--plot-font", "f.ttf"], "only matters with --plot");
    assert_rejected(&["--write-overlay", "o"], "needs objectives");
    assert_rejected(&["--deploy-dir", "d"], "only matters with --write-overlay");
    assert_rejected(&["--prompt-tokens", "9..3"], "above the maximum");
    assert_rejected(&["--slo-ttft-p90", "0s"], "longer than 0");
}
