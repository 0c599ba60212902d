//! A `surge serve` child on 127.0.0.1 for the HTTP tests, with a blocking JSON and SSE client.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::header::HeaderMap;
use serde_json::Value;

/// Polls `cond` every 10 ms until it holds; panics naming `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The value of the first sample in a Prometheus exposition whose line starts with
/// `series` (e.g. `surge_ready{`).
pub fn metric_value(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
}

/// The `finish_reason`s in a stream's chunks, in order.
pub fn finish_reasons(chunks: &[Value]) -> Vec<String> {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["finish_reason"].as_str().map(String::from))
        .collect()
}

/// How long a server may take to load its model and answer /health.
pub const START_TIMEOUT: Duration = Duration::from_secs(120);
/// The longest any one HTTP request of the tests may take, body included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// No test stream is longer than this many SSE events.
pub const MAX_SSE_EVENTS: usize = 100_000;

/// Environment variables that would change the server a test asks for; the child never
/// inherits them (a test passes what it wants explicitly).
const CLEARED_ENV: &[&str] = &[
    "SURGE_API_KEY",
    "SURGE_HOST",
    "SURGE_PORT",
    "SURGE_MODEL",
    "SURGE_SERVED_MODEL_NAME",
    "SURGE_MAX_REQUEST_BODY_BYTES",
    "SURGE_MAX_MODEL_LEN",
    "SURGE_MAX_NUM_SEQS",
    "SURGE_MAX_NUM_QUEUED_REQS",
    "SURGE_MAX_NUM_QUEUED_TOKENS",
    "SURGE_SHUTDOWN_TIMEOUT",
    "SURGE_DEBUG_LOAD_DELAY_MS",
    "SURGE_MODEL_WAIT_TIMEOUT",
    "SURGE_LOAD_FORMAT",
    "HF_HOME",
    "HF_ENDPOINT",
    "HF_TOKEN",
    "HF_HUB_OFFLINE",
    "SURGE_KV_CACHE_MEMORY",
    "SURGE_LOG_FORMAT",
    "SURGE_SSL_CERTFILE",
    "SURGE_SSL_KEYFILE",
    "SURGE_HTTP_HEADER_READ_TIMEOUT",
    "SURGE_HTTP_BODY_READ_TIMEOUT",
    "SURGE_MAX_HEADER_BYTES",
    "SURGE_MAX_HEADER_COUNT",
    "SURGE_REQUEST_TIMEOUT",
    "SURGE_ALLOWED_ORIGINS",
    "SURGE_ALLOWED_METHODS",
    "SURGE_ALLOWED_HEADERS",
    "SURGE_LOG_REQUESTS",
];

/// A running `surge serve --host 127.0.0.1 --port 0 ARGS…`, killed on drop. Its stdout and
/// stderr go to a temp file, printed when the test panics.
pub struct Server {
    child: Child,
    base_url: String,
    log_path: PathBuf,
    _log_dir: tempfile::TempDir,
    client: Client,
}

impl Server {
    /// Starts the server and waits until it listens and GET /health answers 200.
    pub fn start(args: &[&str]) -> Server {
        Self::start_with_env(args, &[])
    }

    /// As `start`, with extra environment variables for the child (e.g. `SURGE_API_KEY`).
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut server = Self::spawn(args, env);
        // A panic in here drops `server`, which kills the child and prints its log.
        server.wait_health_ok(args);
        server
    }

    /// Starts the server and waits only until it listens (the model may still load).
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Server {
        let log_dir = tempfile::tempdir().unwrap();
        let log_path = log_dir.path().join("surge-serve.log");
        let log = File::create(&log_path).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_surge"));
        cmd.args(["serve", "--host", "127.0.0.1"]);
        if !args.contains(&"--port") {
            cmd.args(["--port", "0"]);
        }
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .env("NO_COLOR", "1");
        for key in CLEARED_ENV {
            cmd.env_remove(key);
        }
        for (key, value) in env {
            cmd.env(key, value);
        }
        let child = cmd.spawn().expect("cannot spawn surge serve");
        let mut server = Server {
            child,
            base_url: String::new(),
            log_path,
            _log_dir: log_dir,
            client: client(),
        };
        server.wait_listening(args);
        server
    }

    fn wait_listening(&mut self, args: &[&str]) {
        let deadline = Instant::now() + START_TIMEOUT;
        let (scheme, addr) = loop {
            if let Some(found) = parse_listening(&self.log()) {
                break found;
            }
            self.assert_alive("before printing `listening on http(s)://…`");
            assert!(
                Instant::now() < deadline,
                "surge serve {args:?} printed no `listening on http(s)://…` line within {START_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(
            addr.ip().is_loopback(),
            "surge serve listens on {addr}, not on 127.0.0.1"
        );
        self.base_url = format!("{scheme}://{addr}");
        if scheme == "https" {
            self.client = tls_client();
        }
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        let (_, addr) = self.base_url.split_once("://").unwrap();
        addr.parse().unwrap()
    }

    /// Waits until GET /health answers 200.
    pub fn wait_health_ok(&mut self, args: &[&str]) {
        let deadline = Instant::now() + START_TIMEOUT;
        let addr = self.addr();
        let tls = self.base_url.starts_with("https://");
        loop {
            let status = if tls {
                self.client
                    .get(self.url("/health"))
                    .timeout(Duration::from_secs(5))
                    .send()
                    .ok()
                    .map(|r| r.status().as_u16())
            } else {
                raw_get_status(addr, "/health")
            };
            if status == Some(200) {
                return;
            }
            self.assert_alive("before GET /health answered 200");
            assert!(
                Instant::now() < deadline,
                "GET /health of surge serve {args:?} did not answer 200 within {START_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends a signal (`TERM`, `INT`) to the server process.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args(["-s", name, &self.child.id().to_string()])
            .status()
            .expect("cannot run kill");
        assert!(status.success(), "kill -s {name} failed");
    }

    /// Waits up to `timeout` for the process to exit; its status, or None if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Panics (with the log) if the child has exited.
    pub fn assert_alive(&mut self, when: &str) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!(
                "surge serve exited ({status}) {when}; log:\n{}",
                self.log_tail()
            );
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// The shared client (no proxy, `REQUEST_TIMEOUT`).
    pub fn http(&self) -> &Client {
        &self.client
    }

    /// Everything the server wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        super::read_log(&self.log_path)
    }

    /// The last lines of the log, for failure messages.
    pub fn log_tail(&self) -> String {
        super::last_lines(&self.log(), 150)
    }

    pub fn get(&self, path: &str) -> Reply {
        Reply::send(self.client.get(self.url(path)))
    }

    pub fn post_json(&self, path: &str, body: &Value) -> Reply {
        Reply::send(self.client.post(self.url(path)).json(body))
    }

    /// POSTs raw bytes, with `Content-Type` only when given.
    pub fn post_raw(&self, path: &str, body: Vec<u8>, content_type: Option<&str>) -> Reply {
        let mut request = self.client.post(self.url(path)).body(body);
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        Reply::send(request)
    }

    /// POSTs JSON and returns the body of a 200 answer (panics otherwise).
    pub fn ok_json(&self, path: &str, body: &Value) -> Value {
        let reply = self.post_json(path, body);
        reply.expect_ok(&format!("POST {path} {body}"))
    }

    /// POSTs a streaming request; panics unless the answer is 200 `text/event-stream`.
    pub fn stream(&self, path: &str, body: &Value) -> SseStream {
        let response = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .unwrap_or_else(|e| panic!("POST {path} {body}: {e}"));
        SseStream::new(response, &format!("POST {path} {body}"))
    }

    /// POSTs a streaming request from a new thread, which returns every chunk (error
    /// chunks included) once `[DONE]` arrives. `started` goes up by one when the first
    /// chunk arrives.
    pub fn stream_in_thread(
        &self,
        path: &str,
        body: Value,
        started: Arc<AtomicUsize>,
    ) -> JoinHandle<Vec<Value>> {
        let client = self.client.clone();
        let url = self.url(path);
        std::thread::spawn(move || {
            let what = format!("POST {url} {body}");
            let response = client
                .post(&url)
                .json(&body)
                .send()
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let mut sse = SseStream::new(response, &what);
            let mut chunks = Vec::new();
            while let Some(chunk) = sse.next_chunk() {
                if chunks.is_empty() {
                    started.fetch_add(1, Ordering::SeqCst);
                }
                chunks.push(chunk);
            }
            chunks
        })
    }

    /// POSTs a streaming request and reads it to `[DONE]`; panics on an error chunk.
    pub fn stream_chunks(&self, path: &str, body: &Value) -> Vec<Value> {
        let chunks = self.stream(path, body).collect();
        for chunk in &chunks {
            assert!(
                chunk.get("error").is_none(),
                "error inside the stream of POST {path} {body}: {chunk}"
            );
        }
        chunks
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "----- surge serve log ({}) -----\n{}\n----- end of log -----",
                self.base_url,
                self.log_tail()
            );
        }
    }
}

/// A blocking client for 127.0.0.1 only: no proxies, bounded time per request.
pub fn client() -> Client {
    Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .unwrap()
}

/// A blocking client for a TLS server on 127.0.0.1 with a test's self-signed certificate.
pub fn tls_client() -> Client {
    Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap()
}

/// The scheme and address in the `listening on http(s)://ADDR` line, if the log has one.
fn parse_listening(log: &str) -> Option<(&'static str, SocketAddr)> {
    let at = log.find("listening on http")?;
    let rest = &log[at + "listening on ".len()..];
    let (scheme, rest) = if let Some(rest) = rest.strip_prefix("https://") {
        ("https", rest)
    } else {
        ("http", rest.strip_prefix("http://")?)
    };
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))
        .unwrap_or(rest.len());
    Some((scheme, rest[..end].parse().ok()?))
}

/// GET over a bare socket (no runtime involved): the status code, or None when the server
/// does not answer yet.
fn raw_get_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut status_line = String::new();
    BufReader::new(stream.take(4096))
        .read_line(&mut status_line)
        .ok()?;
    status_line.split_whitespace().nth(1)?.parse().ok()
}

/// A whole HTTP answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    /// Sends `request` and reads the whole answer.
    pub fn send(request: RequestBuilder) -> Reply {
        Reply::read(
            request
                .send()
                .unwrap_or_else(|e| panic!("request failed: {e}")),
        )
    }

    /// Reads a whole answer.
    pub fn read(response: Response) -> Reply {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .text()
            .unwrap_or_else(|e| panic!("reading the {status} body failed: {e}"));
        Reply {
            status,
            headers,
            body,
        }
    }

    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} body is not JSON ({e}): {:?}",
                self.status, self.body
            )
        })
    }

    /// The JSON body of a 200 answer; `what` names the request in the panic message.
    pub fn expect_ok(&self, what: &str) -> Value {
        assert_eq!(
            self.status, 200,
            "{what}: status {}: {}",
            self.status, self.body
        );
        self.json()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap_or("<non-ascii>").to_string())
    }
}

/// Checks vLLM's error body `{"error":{"message","type","param","code"}}` for `status` and
/// returns the inner object.
pub fn assert_openai_error(reply: &Reply, status: u16) -> Value {
    assert_eq!(
        reply.status, status,
        "expected status {status}, got {}: {}",
        reply.status, reply.body
    );
    let body = reply.json();
    let error = body
        .get("error")
        .unwrap_or_else(|| panic!("no `error` object in the {status} body: {body}"));
    let message = error["message"].as_str().unwrap_or("");
    assert!(
        !message.is_empty(),
        "error.message must be a non-empty string: {body}"
    );
    let kind = error["type"].as_str().unwrap_or("");
    assert!(
        !kind.is_empty(),
        "error.type must be a non-empty string: {body}"
    );
    assert!(
        error
            .get("param")
            .is_some_and(|p| p.is_null() || p.is_string()),
        "error.param must be present, a string or null: {body}"
    );
    assert_eq!(
        error["code"].as_u64(),
        Some(u64::from(status)),
        "error.code must be the status code: {body}"
    );
    error.clone()
}

/// Reads `data: …` events from a streaming answer.
pub struct SseStream {
    reader: BufReader<Response>,
    what: String,
    num_events: usize,
    done: bool,
}

impl SseStream {
    /// Wraps a response that must be 200 `text/event-stream`; `what` names the request.
    pub fn new(response: Response, what: &str) -> SseStream {
        let status = response.status().as_u16();
        if status != 200 {
            let body = response.text().unwrap_or_default();
            panic!("{what}: expected a 200 stream, got {status}: {body}");
        }
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{what}: content-type {content_type:?}, expected text/event-stream"
        );
        SseStream {
            reader: BufReader::new(response),
            what: what.to_string(),
            num_events: 0,
            done: false,
        }
    }

    /// The next event's data as JSON; `None` after `data: [DONE]`. Panics when the stream
    /// ends without `[DONE]`, on a line that is neither `data: …` nor a comment, and on
    /// data that is not JSON.
    pub fn next_chunk(&mut self) -> Option<Value> {
        if self.done {
            return None;
        }
        let mut data: Option<String> = None;
        loop {
            let mut line = String::new();
            let n = self
                .reader
                .read_line(&mut line)
                .unwrap_or_else(|e| panic!("{}: reading the stream failed: {e}", self.what));
            assert!(
                n > 0,
                "{}: the stream ended without `data: [DONE]` after {} events",
                self.what,
                self.num_events
            );
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                match data.take() {
                    Some(d) => {
                        self.num_events += 1;
                        assert!(
                            self.num_events <= MAX_SSE_EVENTS,
                            "{}: more than {MAX_SSE_EVENTS} events",
                            self.what
                        );
                        if d == "[DONE]" {
                            self.done = true;
                            return None;
                        }
                        let value = serde_json::from_str(&d).unwrap_or_else(|e| {
                            panic!("{}: event data is not JSON ({e}): {d:?}", self.what)
                        });
                        return Some(value);
                    }
                    None => continue,
                }
            }
            if line.starts_with(':') {
                continue; // an SSE comment (keep-alive)
            }
            let payload = line
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("{}: stream line is not `data: …`: {line:?}", self.what));
            match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(payload);
                }
                None => data = Some(payload.to_string()),
            }
        }
    }

    /// Every chunk up to `[DONE]`; then checks that nothing but blank lines follows.
    pub fn collect(mut self) -> Vec<Value> {
        let mut chunks = Vec::new();
        while let Some(chunk) = self.next_chunk() {
            chunks.push(chunk);
        }
        let mut rest = String::new();
        self.reader
            .read_to_string(&mut rest)
            .unwrap_or_else(|e| panic!("{}: reading after [DONE] failed: {e}", self.what));
        assert!(
            rest.trim().is_empty(),
            "{}: data after `data: [DONE]`: {rest:?}",
            self.what
        );
        chunks
    }
}

/// A named check of a shared context.
pub type Check<C> = (&'static str, fn(&C));

/// Runs named checks against one shared context, each to the end even when others fail,
/// then panics naming every failed check. `SURGE_TEST_CHECK=substring` runs only the
/// checks whose names contain it.
pub fn run_checks<C>(ctx: &C, checks: &[Check<C>]) {
    let filter = std::env::var("SURGE_TEST_CHECK").unwrap_or_default();
    let mut failed = Vec::new();
    let mut ran = 0;
    for (name, check) in checks {
        if !name.contains(filter.as_str()) {
            continue;
        }
        ran += 1;
        eprintln!("check {name} ...");
        let started = Instant::now();
        match catch_unwind(AssertUnwindSafe(|| check(ctx))) {
            Ok(()) => eprintln!("check {name} ok ({:.1?})", started.elapsed()),
            Err(_) => {
                eprintln!("check {name} FAILED");
                failed.push(*name);
            }
        }
    }
    assert!(ran > 0, "no check matches SURGE_TEST_CHECK={filter:?}");
    assert!(
        failed.is_empty(),
        "{} of {ran} checks failed: {failed:?} (their panic messages are above)",
        failed.len()
    );
}

/// `base` with the fields of `extra` set on it (both JSON objects).
pub fn with(base: &Value, extra: Value) -> Value {
    let mut out = base.clone();
    let obj = out.as_object_mut().expect("base must be an object");
    for (k, v) in extra.as_object().expect("extra must be an object") {
        obj.insert(k.clone(), v.clone());
    }
    out
}

/// `base` without the field `key`.
pub fn without(base: &Value, key: &str) -> Value {
    let mut out = base.clone();
    out.as_object_mut()
        .expect("base must be an object")
        .remove(key);
    out
}
