//! The server's life: readiness while the model loads, `surge wait-ready`, and the
//! graceful drain on SIGTERM (in-flight requests finish; late ones get 503; streams
//! still running at the deadline end with `abort` and an error).

mod support;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::server::{assert_openai_error, finish_reasons, metric_value, wait_until, Server};

fn tiny_args(tiny: &std::path::Path) -> Vec<String> {
    [
        "--model",
        tiny.to_str().unwrap(),
        "--served-model-name",
        "tiny",
        "--max-model-len",
        "256",
        "--kv-cache-memory",
        "16MiB",
    ]
    .map(String::from)
    .to_vec()
}

#[test]
fn health_is_503_with_the_phase_until_the_model_is_loaded() {
    let tiny = support::tiny_llama();
    let mut args = tiny_args(&tiny);
    args.extend(["--debug-load-delay-ms".into(), "3000".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut server = Server::spawn(&args, &[]);

    assert_eq!(server.get("/ping").status, 200, "liveness while loading");
    let reply = server.get("/health");
    assert_eq!(reply.status, 503, "{}", reply.body);
    let health = reply.json();
    assert_eq!(health["status"], "loading", "{health}");
    assert!(
        ["pull", "load"].contains(&health["phase"].as_str().unwrap_or("")),
        "{health}"
    );
    let chat =
        json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
    let reply = server.post_json("/v1/chat/completions", &chat);
    assert_openai_error(&reply, 503);
    assert!(
        reply.header("retry-after").is_some(),
        "503 without Retry-After"
    );
    assert_openai_error(&server.get("/v1/models"), 503);
    let metrics = server.get("/metrics").body;
    assert_eq!(
        metric_value(&metrics, "surge_ready{"),
        Some(0.0),
        "{metrics}"
    );

    // Poll until ready, recording the phases seen (bounded).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut phases = Vec::new();
    loop {
        let reply = server.get("/health");
        if reply.status == 200 {
            break;
        }
        assert_eq!(reply.status, 503, "{}", reply.body);
        let phase = reply.json()["phase"].as_str().unwrap_or("").to_string();
        if phases.last() != Some(&phase) {
            phases.push(phase);
        }
        assert!(
            Instant::now() < deadline,
            "not ready within 60 s: {phases:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(phases.contains(&"load".to_string()), "{phases:?}");
    server.assert_alive("after becoming ready");
    let v = server.ok_json("/v1/chat/completions", &chat);
    assert_eq!(v["usage"]["completion_tokens"], 2);
    let metrics = server.get("/metrics").body;
    assert_eq!(metric_value(&metrics, "surge_ready{"), Some(1.0));
    let load = metric_value(
        &metrics,
        "surge_startup_seconds{engine=\"0\",model_name=\"tiny\",phase=\"load\"}",
    )
    .unwrap_or_else(|| panic!("no load phase:\n{metrics}"));
    assert!(
        load >= 3.0,
        "the load phase took {load} s, the delay alone is 3 s"
    );
    let warmup = metric_value(
        &metrics,
        "surge_startup_seconds{engine=\"0\",model_name=\"tiny\",phase=\"warmup\"}",
    );
    assert!(warmup.is_some_and(|w| w > 0.0), "{metrics}");
    let pull = metric_value(
        &metrics,
        "surge_startup_seconds{engine=\"0\",model_name=\"tiny\",phase=\"pull\"}",
    );
    assert!(pull.is_some_and(|p| (0.0..1.0).contains(&p)), "{metrics}");
}

fn wait_ready(url: &str, timeout: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_surge"));
    cmd.args([
        "wait-ready",
        url,
        "--timeout",
        timeout,
        "--interval",
        "100ms",
    ])
    .env("NO_COLOR", "1")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    cmd
}

#[test]
fn wait_ready_polls_through_refusals_and_503s_until_ready() {
    let tiny = support::tiny_llama();
    let port = support::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut waiter = wait_ready(&url, "120s").spawn().unwrap();
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        waiter.try_wait().unwrap().is_none(),
        "wait-ready ended while nothing listened"
    );
    let mut args = tiny_args(&tiny);
    let port_s = port.to_string();
    args.extend(["--debug-load-delay-ms".into(), "1500".into()]);
    args.extend(["--port".into(), port_s]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut server = Server::spawn(&args, &[]);
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = waiter.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "wait-ready did not end");
        std::thread::sleep(Duration::from_millis(10));
    };
    let out = waiter.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(status.success(), "wait-ready failed: {stderr}");
    assert!(
        server.log().contains("model ready"),
        "wait-ready ended before the model was ready"
    );
    assert!(stderr.contains("loading"), "it saw the 503s: {stderr}");
    assert_eq!(server.get("/health").status, 200);
    server.assert_alive("after wait-ready");
}

#[test]
fn wait_ready_gives_up_with_a_clear_message() {
    let url = format!("http://127.0.0.1:{}/", support::free_port());
    let started = Instant::now();
    let out = wait_ready(&url, "1s").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("not ready after 1s"), "{stderr}");
    assert!(
        stderr.contains("/health"),
        "names the URL it polled: {stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    let out = wait_ready("not a url", "1s").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad URL"));
}

fn smollm2_args(extra: &[&str]) -> Vec<String> {
    let model = support::fetched("smollm2-hf");
    let mut args: Vec<String> = [
        "--model",
        model.to_str().unwrap(),
        "--served-model-name",
        "smol",
        "--max-model-len",
        "512",
        "--kv-cache-memory",
        "256MiB",
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Starts `count` streaming completions in threads; each returns its chunks. `started`
/// counts those that received their first chunk.
fn streams(
    server: &Server,
    count: usize,
    max_tokens: usize,
) -> (Vec<std::thread::JoinHandle<Vec<Value>>>, Arc<AtomicUsize>) {
    let started = Arc::new(AtomicUsize::new(0));
    let handles = (0..count)
        .map(|i| {
            let body = json!({
                "model": "smol",
                "prompt": format!("Story {i}: once upon a time"),
                "max_tokens": max_tokens,
                "ignore_eos": true,
                "temperature": 0,
                "stream": true,
            });
            server.stream_in_thread("/v1/completions", body, started.clone())
        })
        .collect();
    (handles, started)
}

#[test]
fn sigterm_lets_in_flight_streams_finish_refuses_new_ones_and_exits_0() {
    let args = smollm2_args(&["--shutdown-timeout", "60"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut server = Server::start(&args);
    let (handles, started) = streams(&server, 20, 30);
    wait_until(
        "every stream's first chunk",
        Duration::from_secs(120),
        || started.load(Ordering::SeqCst) == 20,
    );
    server.signal("TERM");
    wait_until("/health to say draining", Duration::from_secs(10), || {
        server.get("/health").status == 503
    });
    assert_eq!(server.get("/health").json()["status"], "draining");
    let late = server.post_json(
        "/v1/completions",
        &json!({"model": "smol", "prompt": "late", "max_tokens": 2}),
    );
    assert_openai_error(&late, 503);
    assert!(late.header("retry-after").is_some());
    let metrics = server.get("/metrics").body;
    assert_eq!(
        metric_value(&metrics, "surge_draining{"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(metric_value(&metrics, "surge_ready{"), Some(0.0));
    for (i, h) in handles.into_iter().enumerate() {
        let chunks = h.join().unwrap();
        assert!(
            chunks.iter().all(|c| c.get("error").is_none()),
            "stream {i} got an error: {chunks:?}"
        );
        assert_eq!(finish_reasons(&chunks), ["length"], "stream {i}");
        let text: usize = chunks
            .iter()
            .filter(|c| c["choices"][0]["text"].is_string())
            .count();
        assert!(text >= 30, "stream {i} got {text} chunks");
    }
    let status = server
        .wait_exit(Duration::from_secs(60))
        .expect("the server did not exit within its shutdown timeout");
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        server.log_tail()
    );
}

#[test]
fn streams_running_at_the_shutdown_deadline_end_with_abort_and_an_error() {
    let args = smollm2_args(&["--shutdown-timeout", "1"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut server = Server::start(&args);
    // 400 tokens take far longer than the 1 s timeout.
    let (handles, started) = streams(&server, 3, 400);
    wait_until(
        "every stream's first chunk",
        Duration::from_secs(120),
        || started.load(Ordering::SeqCst) == 3,
    );
    let signalled = Instant::now();
    server.signal("TERM");
    for (i, h) in handles.into_iter().enumerate() {
        let chunks = h.join().unwrap();
        assert_eq!(finish_reasons(&chunks), ["abort"], "stream {i}: {chunks:?}");
        let error = chunks
            .iter()
            .find_map(|c| c.get("error"))
            .unwrap_or_else(|| panic!("stream {i} has no error chunk: {chunks:?}"));
        assert_eq!(error["code"], 503, "{error}");
        let texts = chunks
            .iter()
            .filter(|c| c["choices"][0]["text"].is_string())
            .count();
        assert!(texts < 400, "stream {i} was not cut");
    }
    let status = server
        .wait_exit(Duration::from_secs(30))
        .expect("the server did not exit after cutting its streams");
    assert!(status.success(), "exit status {status}");
    assert!(
        signalled.elapsed() < Duration::from_secs(20),
        "took {:?}",
        signalled.elapsed()
    );
}

#[test]
fn sigint_while_idle_exits_0_at_once() {
    let tiny = support::tiny_llama();
    let args = tiny_args(&tiny);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut server = Server::start(&args);
    server.signal("INT");
    let status = server
        .wait_exit(Duration::from_secs(20))
        .expect("an idle server did not exit on SIGINT");
    assert!(status.success(), "exit status {status}");
}
