//! The server against hostile or careless clients: slow headers (slowloris) and bodies,
//! idle keep-alive connections, header size and count limits, the per-request deadline,
//! request limits at and past their edges, TLS (and its drain on SIGTERM), CORS on and
//! off, and request content kept out of the logs unless `--log-requests`.

#[path = "../support/mod.rs"]
mod support;

mod raw;
mod secure;

use std::io::Write;
use std::time::Duration;

use raw::{assert_closed, connect, health_head, read_reply, send_head};
use serde_json::{json, Value};
use support::server::{assert_openai_error, metric_value, run_checks, wait_until, Reply, Server};

const HEADER_LIMIT: usize = 16 << 10;
const HEADER_COUNT: usize = 50;
const CHAT: &str = "/v1/chat/completions";
const COMPLETIONS: &str = "/v1/completions";

fn tiny_args(extra: &[&str]) -> Vec<String> {
    let tiny = support::tiny_llama();
    let mut args: Vec<String> = [
        "--model",
        tiny.to_str().unwrap(),
        "--served-model-name",
        "tiny",
        "--max-model-len",
        "4096",
        "--kv-cache-memory",
        "32MiB",
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn start(extra: &[&str]) -> Server {
    let args = tiny_args(extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start(&args)
}

fn chat(content: &str, extra: Value) -> Value {
    let mut body = json!({
        "model": "tiny",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 2,
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

// ----- one server, many checks -------------------------------------------------------

struct Ctx {
    server: Server,
}

fn hardened_server() -> Ctx {
    let limit = HEADER_LIMIT.to_string();
    let count = HEADER_COUNT.to_string();
    Ctx {
        server: start(&[
            "--http-header-read-timeout",
            "1s",
            "--http-body-read-timeout",
            "1s",
            "--max-header-bytes",
            &limit,
            "--max-header-count",
            &count,
        ]),
    }
}

/// A partial header, then silence: the connection is closed after the header read
/// timeout, a silent connection too, while other clients are served meanwhile; a header
/// sent slowly but within the timeout is answered.
fn slowloris(ctx: &Ctx) {
    let addr = ctx.server.addr();
    let mut slow = connect(addr);
    slow.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty")
        .unwrap();
    let silent = connect(addr);
    let reply = ctx.server.post_json(CHAT, &chat("Hi", json!({})));
    assert_eq!(
        reply.status, 200,
        "served while others hang: {}",
        reply.body
    );
    assert_eq!(ctx.server.get("/health").status, 200);
    let seen = assert_closed(slow, "a partial header");
    assert!(
        !String::from_utf8_lossy(&seen).contains(" 200 "),
        "a partial header was answered: {seen:?}"
    );
    assert_closed(silent, "a connection that sends nothing");

    let mut patient = connect(addr);
    patient
        .write_all(b"GET /health HTTP/1.1\r\nHost: 127")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    patient
        .write_all(b".0.0.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert_eq!(
        read_reply(&mut patient, "a slow header in time").status,
        200
    );
}

/// After an answer, an idle keep-alive connection is closed by the same timeout.
fn idle_keep_alive(ctx: &Ctx) {
    let mut stream = connect(ctx.server.addr());
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let reply = read_reply(&mut stream, "keep-alive GET /health");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_closed(stream, "an idle keep-alive connection");
}

/// A body shorter than its Content-Length: 408 with an OpenAI error, then a close.
fn slow_body(ctx: &Ctx) {
    let mut stream = connect(ctx.server.addr());
    let partial = br#"{"model": "tiny", "messa"#;
    let head = format!(
        "POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(partial).unwrap();
    let reply = read_reply(&mut stream, "a slow body");
    assert_eq!(reply.status, 408, "{} {}", reply.head, reply.body);
    let body: Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(body["error"]["code"], 408, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("body"),
        "{body}"
    );
    assert!(
        reply
            .head
            .to_ascii_lowercase()
            .contains("connection: close"),
        "{}",
        reply.head
    );
    assert_closed(stream, "after the 408");
    let metrics = ctx.server.get("/metrics").body;
    let counted = metric_value(&metrics, "surge_request_timeouts_total{").is_some();
    assert!(counted, "no surge_request_timeouts_total\n{metrics}");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("surge_request_timeouts_total")
                && l.contains("phase=\"body\"")
                && l.ends_with(" 1")),
        "the 408 is not counted\n{metrics}"
    );
}

/// A head of exactly --max-header-bytes is answered; one byte more gets 431.
fn header_bytes_at_and_past_the_limit(ctx: &Ctx) {
    let addr = ctx.server.addr();
    let at = send_head(addr, &health_head(HEADER_LIMIT, 4), "a head at the limit");
    assert_eq!(at, Some(200), "a head of exactly the limit");
    let past = send_head(addr, &health_head(HEADER_LIMIT + 1, 4), "a head past it");
    assert_eq!(past, Some(431), "a head one byte past the limit");
    let far = send_head(
        addr,
        &health_head(HEADER_LIMIT * 4, 4),
        "a head far past it",
    );
    assert_eq!(far, Some(431), "a head four times the limit");
}

/// --max-header-count headers are answered; one more gets 431.
fn header_count_at_and_past_the_limit(ctx: &Ctx) {
    let addr = ctx.server.addr();
    let at = send_head(
        addr,
        &health_head(2048, HEADER_COUNT),
        "headers at the count",
    );
    assert_eq!(at, Some(200), "exactly --max-header-count headers");
    let past = send_head(
        addr,
        &health_head(2048, HEADER_COUNT + 1),
        "headers past it",
    );
    assert_eq!(past, Some(431), "one header more than --max-header-count");
}

/// n, stop strings and logprobs: the largest allowed values pass, one more is a 400
/// naming the field.
fn request_limits_at_and_past_the_edge(ctx: &Ctx) {
    let s = &ctx.server;
    let max_stop = |count: usize, bytes: usize| -> Vec<String> {
        (0..count)
            .map(|i| format!("{i:02}{}", "s".repeat(bytes - 2)))
            .collect()
    };
    let ok = [
        (
            "n 128",
            CHAT,
            chat("Hi", json!({"n": 128, "max_tokens": 1})),
        ),
        (
            "16 stop strings of 512 bytes",
            CHAT,
            chat("Hi", json!({"stop": max_stop(16, 512)})),
        ),
        (
            "top_logprobs 20",
            CHAT,
            chat("Hi", json!({"logprobs": true, "top_logprobs": 20})),
        ),
        (
            "completions logprobs 20",
            COMPLETIONS,
            json!({"model": "tiny", "prompt": "Hi", "max_tokens": 2, "logprobs": 20}),
        ),
    ];
    for (what, path, body) in &ok {
        let reply = s.post_json(path, body);
        assert_eq!(reply.status, 200, "{what}: {}", reply.body);
    }
    let v = s.ok_json(CHAT, &ok[0].2);
    assert_eq!(v["choices"].as_array().map(Vec::len), Some(128), "n 128");
    let bad = [
        ("n 129", CHAT, chat("Hi", json!({"n": 129})), "n"),
        (
            "17 stop strings",
            CHAT,
            chat("Hi", json!({"stop": max_stop(17, 8)})),
            "stop",
        ),
        (
            "a stop string of 513 bytes",
            CHAT,
            chat("Hi", json!({"stop": max_stop(1, 513)})),
            "stop",
        ),
        (
            "top_logprobs 21",
            CHAT,
            chat("Hi", json!({"logprobs": true, "top_logprobs": 21})),
            "top_logprobs",
        ),
        (
            "completions logprobs 21",
            COMPLETIONS,
            json!({"model": "tiny", "prompt": "Hi", "logprobs": 21}),
            "logprobs",
        ),
    ];
    for (what, path, body, param) in &bad {
        let reply = s.post_json(path, body);
        let error = assert_openai_error(&reply, 400);
        assert!(
            error["param"].as_str().unwrap_or("").contains(param),
            "{what}: param {}",
            error["param"]
        );
    }
}

/// Without --allowed-origins no response carries a CORS header, preflights included.
fn no_cors_by_default(ctx: &Ctx) {
    let http = ctx.server.http();
    let get = http
        .get(ctx.server.url("/v1/models"))
        .header("origin", "https://app.example");
    let preflight = http
        .request(reqwest::Method::OPTIONS, ctx.server.url(CHAT))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST");
    for (what, request) in [("GET", get), ("preflight", preflight)] {
        let reply = Reply::send(request);
        let cors: Vec<_> = reply
            .headers
            .keys()
            .filter(|k| k.as_str().starts_with("access-control-"))
            .collect();
        assert!(cors.is_empty(), "{what} without CORS flags: {cors:?}");
    }
}

/// Without --log-requests, no prompt, message or stop string reaches the log.
fn no_request_content_in_logs(ctx: &Ctx) {
    let s = &ctx.server;
    let secret = "zebra-marmalade-4711";
    s.ok_json(
        CHAT,
        &chat(
            &format!("{secret} chat"),
            json!({"stop": [format!("{secret}-stop")]}),
        ),
    );
    s.stream(
        CHAT,
        &chat(&format!("{secret} stream"), json!({"stream": true})),
    )
    .collect();
    s.ok_json(
        COMPLETIONS,
        &json!({"model": "tiny", "prompt": format!("{secret} completion"), "max_tokens": 2}),
    );
    assert_openai_error(
        &s.post_json(
            CHAT,
            &chat(&format!("{secret} bad"), json!({"temperature": -1})),
        ),
        400,
    );
    wait_until("the request lines", Duration::from_secs(10), || {
        s.log().matches("request finished").count() >= 3
    });
    let log = s.log();
    assert!(
        !log.contains(secret),
        "request content in the log without --log-requests:\n{log}"
    );
}

#[test]
fn slow_clients_header_limits_request_limits_cors_off_and_quiet_logs() {
    let ctx = hardened_server();
    run_checks(
        &ctx,
        &[
            ("slowloris", slowloris),
            ("idle_keep_alive", idle_keep_alive),
            ("slow_body", slow_body),
            ("header_bytes", header_bytes_at_and_past_the_limit),
            ("header_count", header_count_at_and_past_the_limit),
            ("request_limits", request_limits_at_and_past_the_edge),
            ("no_cors_by_default", no_cors_by_default),
            ("no_request_content_in_logs", no_request_content_in_logs),
        ],
    );
    let mut server = ctx.server;
    server.assert_alive("after every check");
}
