//! A CNCF distribution registry (Debian `docker-registry`) on 127.0.0.1 for the OCI tests,
//! a TCP proxy in front of it that records requests and can cut blob downloads, raw image
//! pushes (for layers surge itself would never write), and bounded `surge` runs.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::Digest;

pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
/// How long the registry may take to answer /v2/.
const REGISTRY_START_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest one `surge pull` / `surge modelcar` run of the tests may take.
pub const SURGE_RUN_TIMEOUT: Duration = Duration::from_secs(300);

/// A running registry with its storage in a temp dir, killed on drop.
pub struct Registry {
    child: Child,
    dir: tempfile::TempDir,
    addr: SocketAddr,
    credentials: Option<(String, String)>,
}

impl Registry {
    /// An anonymous registry.
    pub fn start() -> Registry {
        Self::start_inner(None)
    }

    /// A registry that wants `user`/`password` (an htpasswd file with a bcrypt hash).
    pub fn start_with_htpasswd(user: &str, password: &str) -> Registry {
        Self::start_inner(Some((user.to_string(), password.to_string())))
    }

    fn start_inner(credentials: Option<(String, String)>) -> Registry {
        assert!(
            Path::new(REGISTRY_BIN).is_file(),
            "{REGISTRY_BIN} is missing: run tests/support/setup.sh (Debian package docker-registry)"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = super::free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage).unwrap();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n  secret: surge-test-secret\n",
            storage.display()
        );
        if let Some((user, password)) = &credentials {
            let hash = bcrypt::hash_with_result(password, 4)
                .unwrap()
                .format_for_version(bcrypt::Version::TwoY);
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{user}:{hash}\n")).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: surge-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start docker-registry");
        let mut registry = Registry {
            child,
            dir,
            addr,
            credentials,
        };
        registry.wait_ready();
        registry
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + REGISTRY_START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("docker-registry exited ({status}); log:\n{}", self.log());
            }
            let answered = raw_status(self.addr, "/v2/").is_some();
            if answered {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not answer /v2/ within {REGISTRY_START_TIMEOUT:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Where the registry keeps a blob's bytes (distribution's filesystem layout).
    pub fn blob_data_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Pushes an image made of `layers` (media type, blob bytes) under `repo:tag` with the
    /// plain distribution API; returns the manifest digest.
    pub fn push_raw_image(&self, repo: &str, tag: &str, layers: &[(&str, Vec<u8>)]) -> String {
        let client = crate::support::server::client();
        let mut descriptors = Vec::new();
        let mut diff_ids = Vec::new();
        for (media_type, bytes) in layers {
            let digest = self.push_blob(&client, repo, bytes);
            descriptors.push(serde_json::json!({
                "mediaType": media_type, "digest": digest, "size": bytes.len()
            }));
            diff_ids.push(digest);
        }
        let config = serde_json::json!({
            "architecture": "amd64", "os": "linux", "config": {},
            "rootfs": {"type": "layers", "diff_ids": diff_ids}
        })
        .to_string()
        .into_bytes();
        let config_digest = self.push_blob(&client, repo, &config);
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest, "size": config.len()
            },
            "layers": descriptors,
        })
        .to_string();
        let response = self
            .authed(client.put(format!("http://{}/v2/{repo}/manifests/{tag}", self.addr)))
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body(manifest.clone())
            .send()
            .unwrap();
        assert_eq!(
            response.status().as_u16(),
            201,
            "{}",
            response.text().unwrap()
        );
        sha256_digest(manifest.as_bytes())
    }

    fn push_blob(&self, client: &reqwest::blocking::Client, repo: &str, bytes: &[u8]) -> String {
        let digest = sha256_digest(bytes);
        let started = self
            .authed(client.post(format!("http://{}/v2/{repo}/blobs/uploads/", self.addr)))
            .send()
            .unwrap();
        assert_eq!(
            started.status().as_u16(),
            202,
            "{}",
            started.text().unwrap()
        );
        let location = started.headers()["location"].to_str().unwrap().to_string();
        let location = if location.starts_with('/') {
            format!("http://{}{location}", self.addr)
        } else {
            location
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = self
            .authed(client.put(format!("{location}{sep}digest={digest}")))
            .header("content-type", "application/octet-stream")
            .body(bytes.to_vec())
            .send()
            .unwrap();
        assert_eq!(put.status().as_u16(), 201, "{}", put.text().unwrap());
        digest
    }

    fn authed(
        &self,
        request: reqwest::blocking::RequestBuilder,
    ) -> reqwest::blocking::RequestBuilder {
        match &self.credentials {
            Some((user, password)) => request.basic_auth(user, Some(password)),
            None => request,
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "----- docker-registry log (last lines) -----\n{}",
                lines[lines.len().saturating_sub(60)..].join("\n")
            );
        }
    }
}

pub fn sha256_digest(bytes: &[u8]) -> String {
    let hash = sha2::Sha256::digest(bytes);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// The status code of GET `path`, or None when nothing answers yet.
fn raw_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head).ok()?;
    let line = String::from_utf8_lossy(&head[..n]).to_string();
    line.split_whitespace().nth(1)?.parse().ok()
}

const UNAVAILABLE: (&str, &str) = ("503 Service Unavailable", "");
const DENIED: (&str, &str) = (
    "403 Forbidden",
    r#"{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}"#,
);

/// A TCP proxy in front of the registry: records every request head it forwards and can
/// cut the connection part way through blob downloads.
pub struct Proxy {
    addr: SocketAddr,
    state: Arc<ProxyState>,
}

struct ProxyState {
    upstream: SocketAddr,
    /// `METHOD PATH` plus ` range=…` when the request had a Range header.
    requests: Mutex<Vec<String>>,
    /// Blob downloads still to cut.
    cuts_left: AtomicUsize,
    /// Bytes of a blob response forwarded before a cut.
    cut_after: AtomicU64,
    /// Blob downloads still to answer with `fail_with` (without asking the registry).
    fails_left: AtomicUsize,
    /// The status line and body of those answers.
    fail_with: (&'static str, &'static str),
    stop: AtomicBool,
}

impl Proxy {
    /// A proxy that forwards everything.
    pub fn start(upstream: SocketAddr) -> Proxy {
        Self::start_cutting(upstream, 0, 0)
    }

    /// A proxy that cuts the first `num_cuts` blob downloads after `after_bytes` bytes of
    /// each response.
    pub fn start_cutting(upstream: SocketAddr, num_cuts: usize, after_bytes: u64) -> Proxy {
        Self::start_inner(upstream, num_cuts, after_bytes, 0, UNAVAILABLE)
    }

    /// A proxy that answers the first `num_failures` blob downloads with 503.
    pub fn start_failing(upstream: SocketAddr, num_failures: usize) -> Proxy {
        Self::start_inner(upstream, 0, 0, num_failures, UNAVAILABLE)
    }

    /// A proxy that answers every blob download with 403 and a registry's DENIED error,
    /// as a registry does for a token without pull access to the repository.
    pub fn start_denying(upstream: SocketAddr) -> Proxy {
        Self::start_inner(upstream, 0, 0, usize::MAX, DENIED)
    }

    fn start_inner(
        upstream: SocketAddr,
        num_cuts: usize,
        after_bytes: u64,
        num_failures: usize,
        fail_with: (&'static str, &'static str),
    ) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ProxyState {
            upstream,
            requests: Mutex::new(Vec::new()),
            cuts_left: AtomicUsize::new(num_cuts),
            cut_after: AtomicU64::new(after_bytes),
            fails_left: AtomicUsize::new(num_failures),
            fail_with,
            stop: AtomicBool::new(false),
        });
        let accept_state = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if accept_state.stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let state = accept_state.clone();
                std::thread::spawn(move || serve_connection(client, state));
            }
        });
        Proxy { addr, state }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Every request seen so far.
    pub fn requests(&self) -> Vec<String> {
        self.state.requests.lock().unwrap().clone()
    }

    /// GETs of blobs (layer or config downloads) seen so far.
    pub fn blob_gets(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|r| r.starts_with("GET ") && r.contains("/blobs/sha256:"))
            .collect()
    }

    /// Blob downloads left to cut.
    pub fn cuts_left(&self) -> usize {
        self.state.cuts_left.load(Ordering::SeqCst)
    }

    /// Blob downloads left to answer with the failure status.
    pub fn failures_left(&self) -> usize {
        self.state.fails_left.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

fn serve_connection(client: TcpStream, state: Arc<ProxyState>) {
    let Ok(upstream) = TcpStream::connect_timeout(&state.upstream, Duration::from_secs(5)) else {
        return;
    };
    // Armed when the current request is a blob GET to cut; counts its response bytes.
    let armed = Arc::new(AtomicBool::new(false));
    let forwarded = Arc::new(AtomicU64::new(0));
    let mut client_reply = client.try_clone().unwrap();
    let (mut client_read, mut upstream_write) =
        (client.try_clone().unwrap(), upstream.try_clone().unwrap());
    let up_state = state.clone();
    let (up_armed, up_forwarded) = (armed.clone(), forwarded.clone());
    let requests = std::thread::spawn(move || {
        let mut parser = HeadParser::default();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match client_read.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut failed = false;
            for head in parser.feed(&buf[..n]) {
                let is_blob_get = head.starts_with("GET ") && head.contains("/blobs/sha256:");
                if is_blob_get && take_one(&up_state.fails_left) {
                    let (status, body) = up_state.fail_with;
                    up_state
                        .requests
                        .lock()
                        .unwrap()
                        .push(format!("{head} -> {status}"));
                    let reply = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = client_reply.write_all(reply.as_bytes());
                    let _ = client_reply.shutdown(Shutdown::Both);
                    failed = true;
                    break;
                }
                if is_blob_get && take_one(&up_state.cuts_left) {
                    up_forwarded.store(0, Ordering::SeqCst);
                    up_armed.store(true, Ordering::SeqCst);
                }
                up_state.requests.lock().unwrap().push(head);
            }
            if failed || upstream_write.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = upstream_write.shutdown(Shutdown::Write);
    });
    let (mut upstream_read, mut client_write) = (upstream, client);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match upstream_read.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut chunk = &buf[..n];
        let mut cut = false;
        if armed.load(Ordering::SeqCst) {
            let limit = state.cut_after.load(Ordering::SeqCst);
            let sent = forwarded.fetch_add(n as u64, Ordering::SeqCst);
            if sent + n as u64 > limit {
                chunk = &chunk[..(limit.saturating_sub(sent)) as usize];
                cut = true;
            }
        }
        if client_write.write_all(chunk).is_err() {
            break;
        }
        if cut {
            let _ = client_write.flush();
            let _ = client_write.shutdown(Shutdown::Both);
            let _ = upstream_read.shutdown(Shutdown::Both);
            break;
        }
    }
    let _ = client_write.shutdown(Shutdown::Both);
    let _ = requests.join();
}

/// Takes one from a budget; false when it is spent.
fn take_one(budget: &AtomicUsize) -> bool {
    budget
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

/// Splits a client's byte stream into request heads (`METHOD PATH [range=…]`), skipping
/// bodies by Content-Length.
#[derive(Default)]
struct HeadParser {
    pending: Vec<u8>,
    skip: usize,
}

impl HeadParser {
    fn feed(&mut self, bytes: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(bytes);
        let mut heads = Vec::new();
        loop {
            let n = self.skip.min(self.pending.len());
            self.skip -= n;
            self.pending.drain(..n);
            if self.skip > 0 {
                return heads;
            }
            let Some(end) = self.pending.windows(4).position(|w| w == b"\r\n\r\n") else {
                return heads;
            };
            let head = String::from_utf8_lossy(&self.pending[..end]).to_string();
            self.pending.drain(..end + 4);
            let mut lines = head.lines();
            let request_line = lines.next().unwrap_or_default();
            let mut summary = request_line
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" ");
            for line in lines {
                let lower = line.to_ascii_lowercase();
                if let Some(range) = lower.strip_prefix("range:") {
                    summary.push_str(&format!(" range={}", range.trim()));
                }
                if let Some(len) = lower.strip_prefix("content-length:") {
                    self.skip = len.trim().parse().unwrap_or(0);
                }
            }
            heads.push(summary);
        }
    }
}

/// The outcome of one `surge` run.
#[derive(Debug)]
pub struct Run {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `surge ARGS` with `env`, killed after `SURGE_RUN_TIMEOUT`.
pub fn run_surge(args: &[&str], env: &[(&str, &str)]) -> Run {
    run_surge_under(&[], args, env)
}

/// Runs `WRAPPER… SURGE ARGS…`: `wrapper` is a command line that is given the path of
/// surge's binary and then `args` (e.g. `unshare … sh -c SCRIPT`); empty runs surge itself.
pub fn run_surge_under(wrapper: &[&str], args: &[&str], env: &[(&str, &str)]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let surge = env!("CARGO_BIN_EXE_surge");
    let mut cmd = match wrapper.split_first() {
        Some((program, rest)) => {
            let mut cmd = Command::new(program);
            cmd.args(rest).arg(surge);
            cmd
        }
        None => Command::new(surge),
    };
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .env("NO_COLOR", "1")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env_remove("SURGE_CACHE")
        .env_remove("REGISTRY_AUTH_FILE")
        .env_remove("SURGE_INSECURE_REGISTRY")
        .env_remove("DOCKER_CONFIG")
        .env_remove("XDG_RUNTIME_DIR");
    for (key, value) in env {
        cmd.env(key, value);
    }
    let mut child = cmd.spawn().expect("cannot spawn surge");
    let deadline = Instant::now() + SURGE_RUN_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "surge {args:?} ran longer than {SURGE_RUN_TIMEOUT:?}; stderr:\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        success: status.success(),
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    }
}
