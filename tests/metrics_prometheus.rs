//! A real Prometheus (Debian `prometheus`, installed by `tests/support/setup.sh`) scrapes
//! `surge serve` every second while it runs a bounded load on the real SmolLM2 weights,
//! and the PromQL queries an autoscaler or a dashboard would send get the right answers:
//! the gauges while 4 long requests run and 16 short ones wait, then, once everything
//! finished, gauges back at 0 and counters and histogram counts equal to what the clients
//! received.

mod support;

use std::thread::ScopedJoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::prometheus::Prometheus;
use support::server::Server;

const MODEL: &str = "smol";
const MAX_NUM_SEQS: usize = 4;
/// Long requests: they fill every slot and hold it for many decode steps.
const NUM_LONG: usize = MAX_NUM_SEQS;
const LONG_TOKENS: u64 = 150;
/// Short requests: they wait while the long ones run.
const NUM_SHORT: usize = 16;
const SHORT_TOKENS: u64 = 4;
/// How long the test waits for surge itself to run the long requests.
const RUNNING_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a PromQL expectation may take to hold (scrapes are 1 s apart).
const PROMQL_TIMEOUT: Duration = Duration::from_secs(20);

/// What one streaming client received.
#[derive(Debug, Clone, Copy)]
struct Received {
    prompt_tokens: u64,
    completion_tokens: u64,
}

/// The server and the Prometheus scraping it.
struct Ctx<'a> {
    server: &'a Server,
    prometheus: &'a Prometheus,
}

impl Ctx<'_> {
    /// Polls `promql` until `pred` holds for its value, at most `timeout`; the value.
    /// Panics with the last answer and both logs otherwise.
    fn wait_for(
        &self,
        promql: &str,
        expected: &str,
        pred: impl Fn(f64) -> bool,
        timeout: Duration,
    ) -> f64 {
        let started = Instant::now();
        match self.prometheus.poll(promql, pred, timeout) {
            Ok(value) => {
                eprintln!(
                    "PromQL {promql} = {value} ({expected}) after {:.1?}",
                    started.elapsed()
                );
                value
            }
            Err(last) => panic!(
                "PromQL {promql}: expected {expected} within {timeout:?}, last answer {last:?}\n\
                 ----- surge serve log -----\n{}\n----- prometheus log -----\n{}\n-----",
                self.server.log_tail(),
                self.prometheus.log_tail()
            ),
        }
    }

    /// Waits until `promql` equals `value`.
    fn wait_eq(&self, promql: &str, value: f64) -> f64 {
        self.wait_for(
            promql,
            &format!("== {value}"),
            |v| v == value,
            PROMQL_TIMEOUT,
        )
    }
}

/// A streaming completion with `ignore_eos`, so that it yields exactly `max_tokens`.
fn completion_body(prompt: &str, max_tokens: u64) -> Value {
    json!({
        "model": MODEL,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": true,
        "stream": true,
        "stream_options": {"include_usage": true},
    })
}

/// Streams one completion to `[DONE]`; checks that it ended for `length` and returns the
/// token counts of its final usage chunk.
fn stream_completion(server: &Server, prompt: &str, max_tokens: u64) -> Received {
    let body = completion_body(prompt, max_tokens);
    let chunks = server.stream("/v1/completions", &body).collect();
    for chunk in &chunks {
        assert!(
            chunk.get("error").is_none(),
            "error inside the stream of {body}: {chunk}"
        );
    }
    let finish_reasons: Vec<&str> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["finish_reason"].as_str())
        .collect();
    assert_eq!(
        finish_reasons,
        ["length"],
        "{body}: the stream must end once, for `length`"
    );
    let usage = &chunks
        .last()
        .unwrap_or_else(|| panic!("{body}: empty stream"))["usage"];
    let count = |key: &str| {
        usage[key]
            .as_u64()
            .unwrap_or_else(|| panic!("{body}: no usage.{key} in the last chunk: {usage}"))
    };
    let received = Received {
        prompt_tokens: count("prompt_tokens"),
        completion_tokens: count("completion_tokens"),
    };
    assert_eq!(
        received.completion_tokens, max_tokens,
        "{body}: ignore_eos must yield max_tokens tokens"
    );
    assert!(received.prompt_tokens > 0, "{body}: usage {usage}");
    received
}

/// The value of `family` (a gauge without labels besides the constant ones) on surge's
/// own /metrics.
fn surge_gauge(server: &Server, family: &str) -> Option<f64> {
    let reply = server.get("/metrics");
    assert_eq!(reply.status, 200, "GET /metrics: {}", reply.body);
    reply
        .body
        .lines()
        .find(|l| {
            l.strip_prefix(family)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
}

fn join(handles: Vec<ScopedJoinHandle<'_, Received>>, what: &str) -> Vec<Received> {
    handles
        .into_iter()
        .map(|h| {
            h.join()
                .unwrap_or_else(|_| panic!("a {what} client failed (its panic is above)"))
        })
        .collect()
}

#[test]
fn prometheus_scrapes_surge_under_load() {
    let started = Instant::now();
    let model = support::smollm2_hf();
    let model = model.to_str().unwrap();
    let max_num_seqs = MAX_NUM_SEQS.to_string();
    let server = Server::start(&[
        "--model",
        model,
        "--served-model-name",
        MODEL,
        "--max-num-seqs",
        &max_num_seqs,
        "--kv-cache-memory",
        "256MiB",
        "--max-model-len",
        "512",
    ]);
    let target = server.base_url().strip_prefix("http://").unwrap();
    let prometheus = Prometheus::start("surge", target);
    eprintln!(
        "surge at {target}, prometheus at {}, ready after {:.1?}",
        prometheus.base_url(),
        started.elapsed()
    );
    let ctx = Ctx {
        server: &server,
        prometheus: &prometheus,
    };

    // Idle: nothing running or waiting.
    ctx.wait_eq(r#"sum(vllm:num_requests_running{model_name="smol"})"#, 0.0);
    ctx.wait_eq(r#"sum(vllm:num_requests_waiting{model_name="smol"})"#, 0.0);

    let long_prompts: Vec<String> = (0..NUM_LONG)
        .map(|i| format!("Story {i}: the old lighthouse keeper looked at the sea and said"))
        .collect();
    let short_prompts: Vec<String> = (0..NUM_SHORT)
        .map(|i| format!("Question {i}: what is {i} plus {}?", i + 1))
        .collect();

    let load_started = Instant::now();
    let (long, short, queue_tokens_seen) = std::thread::scope(|s| {
        let server = &server;
        let long: Vec<_> = long_prompts
            .iter()
            .map(|p| s.spawn(move || stream_completion(server, p, LONG_TOKENS)))
            .collect();
        // The long requests hold every slot before the short ones arrive.
        let deadline = Instant::now() + RUNNING_TIMEOUT;
        loop {
            let running = surge_gauge(server, "vllm:num_requests_running");
            if running == Some(NUM_LONG as f64) {
                break;
            }
            assert!(
                Instant::now() < deadline && !long.iter().any(|h| h.is_finished()),
                "surge did not run the {NUM_LONG} long requests within {RUNNING_TIMEOUT:?} \
                 (vllm:num_requests_running {running:?}); log:\n{}",
                server.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "{NUM_LONG} long requests running after {:.1?}",
            load_started.elapsed()
        );
        let short: Vec<_> = short_prompts
            .iter()
            .map(|p| s.spawn(move || stream_completion(server, p, SHORT_TOKENS)))
            .collect();

        // Static until the first long request ends: 4 running, 16 waiting.
        ctx.wait_eq(
            r#"sum(vllm:num_requests_waiting{model_name="smol"})"#,
            NUM_SHORT as f64,
        );
        ctx.wait_eq(
            r#"sum(vllm:num_requests_running{model_name="smol"})"#,
            NUM_LONG as f64,
        );
        // (running + waiting) / max_num_seqs; the KV demand is far below.
        ctx.wait_eq(
            "avg(surge_saturation)",
            (NUM_LONG + NUM_SHORT) as f64 / MAX_NUM_SEQS as f64,
        );
        ctx.wait_for(
            "max(vllm:kv_cache_usage_perc)",
            "in (0, 1]",
            |v| v > 0.0 && v <= 1.0,
            PROMQL_TIMEOUT,
        );
        let queue_tokens = ctx.wait_for(
            "sum(surge_queue_tokens)",
            "> 0",
            |v| v > 0.0,
            PROMQL_TIMEOUT,
        );
        // Waiting never gets back to 16 once a long request ended: still 16 means every
        // answer above came from the static state.
        let waiting = prometheus.query(r#"sum(vllm:num_requests_waiting{model_name="smol"})"#);
        assert!(
            waiting == Some(NUM_SHORT as f64) && !long.iter().any(|h| h.is_finished()),
            "the long requests ended before the checks of the loaded state were done \
             (waiting {waiting:?}): make them longer"
        );
        eprintln!("loaded state checked after {:.1?}", load_started.elapsed());
        (join(long, "long"), join(short, "short"), queue_tokens)
    });
    eprintln!(
        "all {} clients done after {:.1?}",
        NUM_LONG + NUM_SHORT,
        load_started.elapsed()
    );

    let all: Vec<Received> = long.iter().chain(&short).copied().collect();
    let num_requests = all.len() as f64;
    let prompt_tokens: u64 = all.iter().map(|r| r.prompt_tokens).sum();
    let completion_tokens: u64 = all.iter().map(|r| r.completion_tokens).sum();
    let inter_tokens: u64 = all.iter().map(|r| r.completion_tokens - 1).sum();
    let short_prompt_tokens: u64 = short.iter().map(|r| r.prompt_tokens).sum();
    assert_eq!(
        completion_tokens,
        NUM_LONG as u64 * LONG_TOKENS + NUM_SHORT as u64 * SHORT_TOKENS
    );
    assert_eq!(
        queue_tokens_seen, short_prompt_tokens as f64,
        "surge_queue_tokens while the {NUM_SHORT} short requests waited must be the sum \
         of their prompt tokens ({short:?})"
    );

    // Idle again.
    ctx.wait_eq("sum(vllm:num_requests_waiting)", 0.0);
    ctx.wait_eq("sum(vllm:num_requests_running)", 0.0);
    ctx.wait_eq("avg(surge_saturation)", 0.0);
    ctx.wait_eq("max(vllm:kv_cache_usage_perc)", 0.0);
    ctx.wait_eq("sum(surge_queue_tokens)", 0.0);

    // One histogram observation per request.
    for histogram in [
        "vllm:e2e_request_latency_seconds",
        "vllm:time_to_first_token_seconds",
        "vllm:request_queue_time_seconds",
        "vllm:request_prompt_tokens",
        "vllm:request_generation_tokens",
    ] {
        ctx.wait_eq(&format!("sum({histogram}_count)"), num_requests);
    }
    ctx.wait_eq(
        r#"sum(vllm:request_success_total{finished_reason="length"})"#,
        num_requests,
    );
    ctx.wait_eq("sum(vllm:request_success_total)", num_requests);

    // Token counters equal what the clients received.
    ctx.wait_eq(
        "sum(vllm:generation_tokens_total)",
        completion_tokens as f64,
    );
    ctx.wait_eq(
        "sum(vllm:request_generation_tokens_sum)",
        completion_tokens as f64,
    );
    ctx.wait_eq("sum(vllm:prompt_tokens_total)", prompt_tokens as f64);
    ctx.wait_eq("sum(vllm:request_prompt_tokens_sum)", prompt_tokens as f64);
    ctx.wait_eq(
        "sum(vllm:inter_token_latency_seconds_count)",
        inter_tokens as f64,
    );
    // The KV cache is large enough for everything: nothing was preempted.
    ctx.wait_eq("sum(vllm:num_preemptions_total)", 0.0);

    eprintln!("done after {:.1?}", started.elapsed());
}
