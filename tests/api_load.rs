//! Concurrency over real HTTP: 64 concurrent streams equal their sequential runs, clients
//! that drop mid-stream give back every KV block, and a full queue answers 429.

mod support;

use std::sync::Barrier;
use std::time::Duration;

use serde_json::{json, Value};
use support::server::{assert_openai_error, client, Reply, Server, SseStream};

const CHAT: &str = "/v1/chat/completions";

fn tiny_server(extra: &[&str]) -> Server {
    let tiny = support::tiny_llama();
    let mut args = vec![
        "--model",
        tiny.to_str().unwrap(),
        "--served-model-name",
        "tiny",
    ];
    args.extend_from_slice(extra);
    Server::start(&args)
}

fn chat_body(prompt: &str, extra: Value) -> Value {
    let mut body = json!({
        "model": "tiny",
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0.0,
        "max_tokens": 16,
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

/// What a streamed chat answer came to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Streamed {
    text: String,
    finish: String,
    completion_tokens: u64,
}

/// Streams one chat request (with include_usage) to `[DONE]`.
fn stream_chat(server: &Server, body: &Value) -> Streamed {
    let body = {
        let mut b = body.clone();
        b["stream"] = json!(true);
        b["stream_options"] = json!({"include_usage": true});
        b
    };
    let chunks = server.stream_chunks(CHAT, &body);
    let mut text = String::new();
    let mut finish = None;
    let mut usage = None;
    for chunk in &chunks {
        match chunk["choices"].as_array().map(Vec::as_slice) {
            Some([]) => usage = chunk["usage"]["completion_tokens"].as_u64(),
            Some([choice]) => {
                text.push_str(choice["delta"]["content"].as_str().unwrap_or(""));
                if let Some(f) = choice["finish_reason"].as_str() {
                    assert!(finish.is_none(), "two finish_reasons: {chunks:?}");
                    finish = Some(f.to_string());
                }
            }
            _ => panic!("unexpected chunk {chunk}"),
        }
    }
    Streamed {
        text,
        finish: finish.unwrap_or_else(|| panic!("no finish_reason: {chunks:?}")),
        completion_tokens: usage.unwrap_or_else(|| panic!("no usage chunk: {chunks:?}")),
    }
}

fn prompt(i: usize) -> String {
    format!(
        "Request number {i}: tell me something about the number {}.",
        i * 7 + 3
    )
}

#[test]
fn concurrent_streams_equal_sequential_ones() {
    let server = tiny_server(&["--max-num-seqs", "32", "--kv-cache-memory", "64MiB"]);
    let n = 64;
    let bodies: Vec<Value> = (0..n).map(|i| chat_body(&prompt(i), json!({}))).collect();
    let sequential: Vec<Streamed> = bodies.iter().map(|b| stream_chat(&server, b)).collect();
    for (i, s) in sequential.iter().enumerate() {
        match s.finish.as_str() {
            "length" => assert_eq!(s.completion_tokens, 16, "request {i}: {s:?}"),
            "stop" => assert!(s.completion_tokens <= 16, "request {i}: {s:?}"),
            other => panic!("request {i}: finish_reason {other:?}"),
        }
    }
    let barrier = Barrier::new(n);
    let concurrent: Vec<Streamed> = std::thread::scope(|scope| {
        let handles: Vec<_> = bodies
            .iter()
            .map(|b| {
                let (server, barrier) = (&server, &barrier);
                scope.spawn(move || {
                    barrier.wait();
                    stream_chat(server, b)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for i in 0..n {
        assert_eq!(
            concurrent[i], sequential[i],
            "request {i}: batched greedy output differs from the sequential one"
        );
    }
}

/// Starts a stream and drops the connection after `keep` chunks (0: right after the
/// response headers).
fn stream_and_drop(server: &Server, body: &Value, keep: usize) {
    let response = client()
        .post(server.url(CHAT))
        .json(body)
        .send()
        .unwrap_or_else(|e| panic!("POST {body}: {e}"));
    let mut stream = SseStream::new(response, "a stream dropped early");
    for _ in 0..keep {
        let chunk = stream
            .next_chunk()
            .expect("the stream ended before the client dropped it");
        assert!(chunk.get("error").is_none(), "{chunk}");
    }
    drop(stream);
}

/// A request that needs every KV block the server has: it only completes when no block
/// is held by anything else.
fn assert_all_blocks_free(server: &Server, capacity: u64, when: &str) {
    let body = json!({"model": "tiny", "prompt": "Hello", "temperature": 0.0, "ignore_eos": true});
    let v = server
        .post_json("/v1/completions", &body)
        .expect_ok(&format!("a request for the whole KV cache {when}"));
    let usage = &v["usage"];
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(capacity),
        "without max_tokens the request fills the context, which is the whole cache: {v}"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "length", "{v}");
}

#[test]
fn dropped_streams_free_their_blocks() {
    // 64 blocks of 16 tokens in f32 (2 layers × 2 × 1 KV head × 16 dims × 4 bytes per
    // token): max_model_len follows the cache, so one request can need all of it.
    let server = tiny_server(&["--kv-cache-memory", "256KiB"]);
    let models = server.get("/v1/models").expect_ok("GET /v1/models");
    let capacity = models["data"][0]["max_model_len"].as_u64().unwrap();
    assert!(
        capacity < 4096,
        "the KV cache must bound max_model_len here: {models}"
    );
    assert_all_blocks_free(&server, capacity, "before any drop");

    let long = |i: usize| {
        chat_body(
            &prompt(i),
            json!({"max_tokens": 400, "ignore_eos": true, "stream": true}),
        )
    };
    let normal: Vec<Value> = (0..8)
        .map(|i| chat_body(&prompt(100 + i), json!({})))
        .collect();
    let expected: Vec<Streamed> = normal.iter().map(|b| stream_chat(&server, b)).collect();
    let finished: Vec<Streamed> = std::thread::scope(|scope| {
        let server = &server;
        for i in 0..16 {
            let body = long(i);
            scope.spawn(move || stream_and_drop(server, &body, 1 + i % 2));
        }
        for i in 16..20 {
            let body = long(i);
            scope.spawn(move || stream_and_drop(server, &body, 0));
        }
        let handles: Vec<_> = normal
            .iter()
            .map(|b| scope.spawn(move || stream_chat(server, b)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        finished, expected,
        "requests beside the dropped ones finish normally"
    );
    assert_all_blocks_free(&server, capacity, "after 20 clients dropped their streams");
    // The whole-cache request ran only once every dropped request was gone, aborted or
    // run to its end: none may have run to its end.
    let outputs = finished_output_tokens(&server.log());
    assert!(
        outputs.len() >= 9,
        "8 normal requests and the whole-cache one log a line each"
    );
    assert!(
        !outputs.contains(&400),
        "a dropped request ran to max_tokens instead of being aborted: {outputs:?}"
    );
    assert_metrics_idle(&server);

    let burst: Vec<Value> = (0..64)
        .map(|i| chat_body(&prompt(200 + i), json!({"max_tokens": 8})))
        .collect();
    let replies: Vec<Reply> = std::thread::scope(|scope| {
        let handles: Vec<_> = burst
            .iter()
            .map(|b| {
                let server = &server;
                scope.spawn(move || server.post_json(CHAT, b))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, r) in replies.iter().enumerate() {
        r.expect_ok(&format!("burst request {i}"));
    }
    assert_all_blocks_free(&server, capacity, "after a burst of 64 requests");
}

/// `output_tokens` of each "request finished" line in the server's log.
fn finished_output_tokens(log: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains("request finished"))
        .map(|l| {
            let rest = &l[l
                .find("output_tokens=")
                .unwrap_or_else(|| panic!("no output_tokens: {l}"))
                + "output_tokens=".len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits
                .parse()
                .unwrap_or_else(|_| panic!("output_tokens in {l}"))
        })
        .collect()
}

/// Once /metrics exists (issue 4/10): nothing running or waiting and an empty KV cache,
/// polled for a bounded while since aborts are asynchronous. Before that, says so.
fn assert_metrics_idle(server: &Server) {
    let mut last = String::new();
    for _ in 0..100 {
        let reply = server.get("/metrics");
        if reply.status == 404 {
            eprintln!("no /metrics yet: the KV check relies on the whole-cache request");
            return;
        }
        assert_eq!(reply.status, 200, "/metrics: {}", reply.body);
        let value = |name: &str| -> Option<f64> {
            reply
                .body
                .lines()
                .find(|l| l.starts_with(name) && !l.starts_with('#'))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse().ok())
        };
        let idle = [
            "vllm:num_requests_running",
            "vllm:num_requests_waiting",
            "vllm:kv_cache_usage_perc",
        ]
        .iter()
        .all(|m| value(m) == Some(0.0));
        if idle {
            return;
        }
        last = reply.body;
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the engine is not idle after the drops:\n{last}");
}

#[test]
fn full_queue_answers_429_with_retry_after() {
    let server = tiny_server(&[
        "--max-num-seqs",
        "1",
        "--max-num-queued-reqs",
        "1",
        "--kv-cache-memory",
        "64MiB",
    ]);
    let n = 6;
    let barrier = Barrier::new(n);
    let replies: Vec<Reply> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (server, barrier) = (&server, &barrier);
                scope.spawn(move || {
                    let body = chat_body(
                        &prompt(i),
                        json!({"max_tokens": 400, "ignore_eos": true, "stream": i % 2 == 1}),
                    );
                    barrier.wait();
                    server.post_json(CHAT, &body)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut ok = 0;
    let mut refused = 0;
    for (i, r) in replies.iter().enumerate() {
        match r.status {
            200 => {
                ok += 1;
                if i % 2 == 1 {
                    assert!(r.body.contains("data: [DONE]"), "request {i}: {}", r.body);
                    assert!(!r.body.contains("\"error\""), "request {i}: {}", r.body);
                } else {
                    let v = r.json();
                    assert_eq!(v["usage"]["completion_tokens"], 400, "request {i}: {v}");
                }
            }
            429 => {
                refused += 1;
                assert_openai_error(r, 429);
                let retry = r
                    .header("retry-after")
                    .unwrap_or_else(|| panic!("429 without Retry-After: {r:?}"));
                assert!(
                    retry.parse::<u64>().is_ok(),
                    "Retry-After {retry:?} must be seconds"
                );
            }
            other => panic!("request {i}: status {other}: {}", r.body),
        }
    }
    assert!(
        ok >= 1 && refused >= 1,
        "{ok} served, {refused} refused of {n}"
    );
    assert!(
        ok <= 3,
        "max-num-seqs 1 + 1 queued cannot take {ok} simultaneous requests"
    );
    // The queue drains: the next request is served.
    server
        .post_json(CHAT, &chat_body("after the queue", json!({})))
        .expect_ok("a request after the 429s");
}
