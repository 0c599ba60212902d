//! The per-request deadline, TLS (and its drain on SIGTERM), CORS when configured, and
//! `--log-requests`.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::support::server::{
    assert_openai_error, client, finish_reasons, metric_value, wait_until, Reply, Server,
};
use super::{chat, start, tiny_args, CHAT, COMPLETIONS};

// ----- the per-request deadline -------------------------------------------------------

/// Waits until no request runs and no KV block is held.
fn assert_engine_idle(server: &Server) {
    let mut last = String::new();
    let idle = (0..1000).any(|_| {
        last = server.get("/metrics").body;
        let running = metric_value(&last, "vllm:num_requests_running{");
        let kv = metric_value(&last, "vllm:kv_cache_usage_perc{");
        if running == Some(0.0) && kv == Some(0.0) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
        false
    });
    assert!(
        idle,
        "requests or KV blocks left after the deadline:\n{last}"
    );
}

#[test]
fn request_timeout_ends_long_requests_and_frees_their_blocks() {
    let server = start(&["--request-timeout", "1s"]);
    // Within the deadline: answered as usual.
    server.ok_json(CHAT, &chat("Hi", json!({})));
    let long = |stream: bool| {
        chat(
            "Tell me everything",
            json!({"max_tokens": 4000, "n": 8, "ignore_eos": true, "stream": stream}),
        )
    };

    let started = Instant::now();
    let reply = server.post_json(CHAT, &long(false));
    let error = assert_openai_error(&reply, 504);
    assert!(
        error["message"]
            .as_str()
            .unwrap_or("")
            .contains("--request-timeout"),
        "{error}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the deadline did not end the request"
    );
    assert_engine_idle(&server);

    let chunks = server.stream(CHAT, &long(true)).collect();
    let errors: Vec<&Value> = chunks.iter().filter(|c| c.get("error").is_some()).collect();
    assert_eq!(errors.len(), 1, "one error event: {errors:?}");
    assert_eq!(errors[0]["error"]["code"], 504, "{}", errors[0]);
    let reasons = finish_reasons(&chunks);
    assert!(
        reasons.iter().all(|r| r == "abort") && !reasons.is_empty(),
        "unfinished choices end with abort: {reasons:?}"
    );
    assert_engine_idle(&server);

    let metrics = server.get("/metrics").body;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("surge_request_timeouts_total")
                && l.contains("phase=\"deadline\"")
                && l.ends_with(" 2")),
        "two deadlines counted\n{metrics}"
    );
    server.ok_json(CHAT, &chat("Hi again", json!({})));
}

// ----- TLS ----------------------------------------------------------------------------

/// A self-signed certificate for 127.0.0.1 and localhost, written into `dir`.
fn self_signed(dir: &std::path::Path) -> (String, String) {
    let key =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let cert = dir.join("cert.pem");
    let keyfile = dir.join("key.pem");
    std::fs::write(&cert, key.cert.pem()).unwrap();
    std::fs::write(&keyfile, key.signing_key.serialize_pem()).unwrap();
    (
        cert.to_str().unwrap().to_string(),
        keyfile.to_str().unwrap().to_string(),
    )
}

#[test]
fn tls_serves_https_refuses_plain_http_and_drains_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path());
    let mut server = start(&[
        "--ssl-certfile",
        &cert,
        "--ssl-keyfile",
        &key,
        "--shutdown-timeout",
        "60",
    ]);
    assert!(
        server.base_url().starts_with("https://"),
        "{}",
        server.base_url()
    );
    let v = server.ok_json(CHAT, &chat("Hi", json!({})));
    assert_eq!(v["object"], "chat.completion", "{v}");

    // The same port without TLS: no HTTP answer, and the server carries on.
    let plain = format!("http://{}/health", server.addr());
    let answered = client().get(&plain).send().map(|r| r.status().as_u16());
    assert!(
        answered.is_err(),
        "plain HTTP to the TLS port: {answered:?}"
    );
    assert_eq!(server.get("/health").status, 200);

    // SIGTERM while a stream runs: it finishes, new requests get 503, exit 0.
    let started = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let body = chat(
        "Go on",
        json!({"max_tokens": 300, "ignore_eos": true, "stream": true}),
    );
    let stream = server.stream_in_thread(CHAT, body, started.clone());
    wait_until("the first chunk", Duration::from_secs(60), || {
        started.load(std::sync::atomic::Ordering::SeqCst) > 0
    });
    server.signal("TERM");
    wait_until("503 while draining", Duration::from_secs(30), || {
        server.post_json(CHAT, &chat("late", json!({}))).status == 503
    });
    let chunks = stream.join().expect("the stream thread");
    assert!(
        chunks.iter().all(|c| c.get("error").is_none()),
        "the stream was cut: {:?}",
        chunks.last()
    );
    assert_eq!(finish_reasons(&chunks), ["length"], "the stream finished");
    let status = server.wait_exit(Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "exit after the drain: {status:?}\n{}",
        server.log_tail()
    );
}

/// `surge serve ARGS` that must fail before serving: its stderr.
fn failing_serve(args: &[&str]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_surge"));
    cmd.args(["serve", "--host", "127.0.0.1", "--port", "0"])
        .args(tiny_args(args))
        .env_remove("SURGE_SSL_CERTFILE")
        .env_remove("SURGE_SSL_KEYFILE")
        .stdin(std::process::Stdio::null());
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "surge serve {args:?} started:\n{stderr}"
    );
    stderr
}

#[test]
fn tls_flags_come_in_pairs_and_bad_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path());
    let e = failing_serve(&["--ssl-certfile", &cert]);
    assert!(e.contains("--ssl-certfile needs --ssl-keyfile"), "{e}");
    let e = failing_serve(&["--ssl-keyfile", &key]);
    assert!(e.contains("--ssl-keyfile needs --ssl-certfile"), "{e}");
    let missing = dir.path().join("missing.pem");
    let missing = missing.to_str().unwrap();
    let e = failing_serve(&["--ssl-certfile", missing, "--ssl-keyfile", &key]);
    assert!(
        e.contains("--ssl-certfile") && e.contains("missing.pem"),
        "{e}"
    );
    let e = failing_serve(&["--ssl-certfile", &cert, "--ssl-keyfile", &cert]);
    assert!(e.contains("--ssl-keyfile") && e.contains("cert.pem"), "{e}");
}

// ----- CORS on, request logging on ----------------------------------------------------

#[test]
fn cors_allows_the_configured_origins_only_and_preflights_pass_auth() {
    let server = start(&[
        "--allowed-origins",
        "https://app.example,https://other.example",
        "--api-key",
        "sk-cors",
    ]);
    let http = server.http();
    let acao = |reply: &Reply| reply.header("access-control-allow-origin");
    let preflight = |origin: &str| {
        Reply::send(
            http.request(reqwest::Method::OPTIONS, server.url(CHAT))
                .header("origin", origin)
                .header("access-control-request-method", "POST")
                .header(
                    "access-control-request-headers",
                    "authorization,content-type",
                ),
        )
    };
    let ok = preflight("https://app.example");
    assert!(ok.status < 300, "preflight: {} {}", ok.status, ok.body);
    assert_eq!(acao(&ok).as_deref(), Some("https://app.example"));
    assert!(
        ok.header("access-control-allow-methods").is_some(),
        "{ok:?}"
    );
    assert!(
        ok.header("access-control-allow-headers").is_some(),
        "{ok:?}"
    );
    assert_eq!(acao(&preflight("https://evil.example")), None);

    let get = |origin: &str, key: &str| {
        Reply::send(
            http.get(server.url("/v1/models"))
                .header("origin", origin)
                .header("authorization", format!("Bearer {key}")),
        )
    };
    let reply = get("https://other.example", "sk-cors");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(acao(&reply).as_deref(), Some("https://other.example"));
    let denied = get("https://app.example", "wrong");
    assert_eq!(denied.status, 401);
    assert_eq!(
        acao(&denied).as_deref(),
        Some("https://app.example"),
        "errors carry CORS headers too, so browsers can read them"
    );
    assert_eq!(acao(&get("https://evil.example", "sk-cors")), None);
}

#[test]
fn cors_wildcard_allows_any_origin() {
    let server = start(&["--allowed-origins", "*"]);
    let reply = Reply::send(
        server
            .http()
            .get(server.url("/v1/models"))
            .header("origin", "https://anyone.example"),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        reply.header("access-control-allow-origin").as_deref(),
        Some("*")
    );
}

#[test]
fn log_requests_logs_each_prompt_and_its_params() {
    let server = start(&["--log-requests"]);
    let secret = "okapi-quince-2718";
    server.ok_json(CHAT, &chat(&format!("{secret} chat"), json!({"seed": 99})));
    server.ok_json(
        COMPLETIONS,
        &json!({"model": "tiny", "prompt": format!("{secret} completion"), "max_tokens": 2}),
    );
    let long = "y".repeat(5000);
    server.ok_json(
        COMPLETIONS,
        &json!({"model": "tiny", "prompt": format!("{secret} long {long}"), "max_tokens": 1}),
    );
    wait_until("three request lines", Duration::from_secs(10), || {
        server.log().matches("request received").count() >= 3
    });
    let log = server.log();
    assert!(log.contains(&format!("{secret} chat")), "{log}");
    assert!(log.contains(&format!("{secret} completion")), "{log}");
    assert!(log.contains("seed: Some(99)"), "params are logged:\n{log}");
    assert!(
        !log.contains(&"y".repeat(600)),
        "prompts are cut to 512 characters"
    );
}
