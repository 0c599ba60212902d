//! Admission control over HTTP: `--max-num-queued-reqs` and `--max-num-queued-tokens`
//! refuse with an OpenAI-shaped 429 and a Retry-After at and past their limits, while
//! the running request goes on unaffected.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use support::server::{assert_openai_error, finish_reasons, metric_value, wait_until, Server};

fn start(extra: &[&str]) -> Server {
    let model = support::fetched("smollm2-hf");
    let mut args = vec![
        "--model",
        model.to_str().unwrap(),
        "--served-model-name",
        "smol",
        "--max-model-len",
        "512",
        "--kv-cache-memory",
        "256MiB",
        "--max-num-seqs",
        "1",
        // The reference run must not seed a prefix cache the compared run then reads.
        "--no-enable-prefix-caching",
    ];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// A completion over token ids, so prompt lengths are exact.
fn request(prompt: Vec<u32>, max_tokens: usize, stream: bool) -> Value {
    json!({
        "model": "smol",
        "prompt": prompt,
        "max_tokens": max_tokens,
        "ignore_eos": true,
        "temperature": 0,
        "stream": stream,
    })
}

fn prompt(seed: u32, len: usize) -> Vec<u32> {
    (0..len as u32)
        .map(|i| 200 + (seed * 97 + i * 13) % 20_000)
        .collect()
}

fn waiting(server: &Server) -> Option<f64> {
    metric_value(&server.get("/metrics").body, "vllm:num_requests_waiting{")
}

fn text(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect()
}

fn assert_429(server: &Server, body: &Value, limit_flag: &str) {
    let reply = server.post_json("/v1/completions", body);
    let error = assert_openai_error(&reply, 429);
    let message = error["message"].as_str().unwrap();
    assert!(message.contains(limit_flag), "{message}");
    let retry: u64 = reply
        .header("retry-after")
        .expect("429 without Retry-After")
        .parse()
        .expect("Retry-After in whole seconds");
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
}

/// Runs `running` alone for its reference text, then starts it streaming and waits
/// until it holds the only sequence slot.
fn occupy(server: &Server, running: &[u32]) -> (String, std::thread::JoinHandle<Vec<Value>>) {
    let alone = server.ok_json("/v1/completions", &request(running.to_vec(), 60, false));
    let alone = alone["choices"][0]["text"].as_str().unwrap().to_string();
    let started = Arc::new(AtomicUsize::new(0));
    let handle = server.stream_in_thread(
        "/v1/completions",
        request(running.to_vec(), 60, true),
        started.clone(),
    );
    wait_until(
        "the running request's first token",
        Duration::from_secs(60),
        || started.load(Ordering::SeqCst) == 1,
    );
    (alone, handle)
}

#[test]
fn queued_request_limit_gives_429_at_and_past_it() {
    let server = start(&["--max-num-queued-reqs", "2"]);
    let (alone, running) = occupy(&server, &prompt(1, 30));
    let idle = Arc::new(AtomicUsize::new(0));
    let queued: Vec<_> = (2..4)
        .map(|seed| {
            server.stream_in_thread(
                "/v1/completions",
                request(prompt(seed, 10), 3, true),
                idle.clone(),
            )
        })
        .collect();
    wait_until("2 waiting requests", Duration::from_secs(30), || {
        waiting(&server) == Some(2.0)
    });
    // At the limit (2 queued), the next one is refused; and the one after it too.
    assert_429(
        &server,
        &request(prompt(4, 10), 3, false),
        "--max-num-queued-reqs 2",
    );
    assert_429(
        &server,
        &request(prompt(5, 10), 3, true),
        "--max-num-queued-reqs 2",
    );
    let chunks = running.join().unwrap();
    assert_eq!(text(&chunks), alone, "the running request changed");
    assert_eq!(finish_reasons(&chunks), ["length"]);
    for q in queued {
        assert_eq!(finish_reasons(&q.join().unwrap()), ["length"]);
    }
    // Room again once the queue drained.
    server.ok_json("/v1/completions", &request(prompt(6, 10), 2, false));
}

#[test]
fn queued_token_limit_gives_429_past_it() {
    let server = start(&["--max-num-queued-tokens", "40"]);
    let (alone, running) = occupy(&server, &prompt(1, 30));
    let idle = Arc::new(AtomicUsize::new(0));
    // 25 + 15 = 40 prompt tokens waiting: exactly at the limit, both admitted.
    let queued: Vec<_> = [(2, 25), (3, 15)]
        .into_iter()
        .map(|(seed, len)| {
            let q = server.stream_in_thread(
                "/v1/completions",
                request(prompt(seed, len), 3, true),
                idle.clone(),
            );
            std::thread::sleep(Duration::from_millis(50));
            q
        })
        .collect();
    wait_until("2 waiting requests", Duration::from_secs(30), || {
        waiting(&server) == Some(2.0)
    });
    let metrics = server.get("/metrics").body;
    assert_eq!(
        metric_value(&metrics, "surge_queue_tokens{"),
        Some(40.0),
        "{metrics}"
    );
    // One more token is past the limit.
    assert_429(
        &server,
        &request(prompt(4, 1), 3, false),
        "--max-num-queued-tokens 40",
    );
    let chunks = running.join().unwrap();
    assert_eq!(text(&chunks), alone, "the running request changed");
    for q in queued {
        assert_eq!(finish_reasons(&q.join().unwrap()), ["length"]);
    }
    // An empty queue takes a prompt larger than the whole token limit.
    let big = server.ok_json("/v1/completions", &request(prompt(7, 60), 2, false));
    assert_eq!(big["usage"]["prompt_tokens"], 60);
}
