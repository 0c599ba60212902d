//! `--model org/name[@revision]` from the Hugging Face hub: fetched through `hf-hub`
//! from a local stand-in for the hub (`HF_ENDPOINT`), cached under `HF_HOME`, served
//! offline from that cache (`HF_HUB_OFFLINE=1`), and a clear error when offline and
//! not cached.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use support::server::Server;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const TOKEN: &str = "hf_test_token";

/// One request the stand-in hub saw: the file and the Authorization header.
type Seen = (String, Option<String>);

/// The stand-in hub: the files it serves and the requests it saw.
#[derive(Clone, Default)]
struct Hub {
    files: Arc<HashMap<String, Vec<u8>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// `GET /{org}/{name}/resolve/{revision}/{file}` with `Range: bytes=a-[b]`, the headers
/// hf-hub reads (etag, x-repo-commit, content-range), 404 for anything else.
async fn resolve(
    State(hub): State<Hub>,
    UrlPath((_org, _name, _rev, file)): UrlPath<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    hub.seen.lock().unwrap().push((file.clone(), auth));
    let Some(data) = hub.files.get(&file) else {
        return (StatusCode::NOT_FOUND, "Entry not found").into_response();
    };
    let size = data.len();
    let (start, end) = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .map(|(a, b)| {
            let a: usize = a.parse().unwrap_or(0);
            let b: usize = b.parse().map(|b: usize| b + 1).unwrap_or(size);
            (a.min(size), b.min(size))
        })
        .unwrap_or((0, size));
    let etag = format!(
        "\"{:x}-{size}\"",
        data.iter().map(|&b| b as u64).sum::<u64>()
    );
    (
        StatusCode::PARTIAL_CONTENT,
        [
            (header::ETAG.as_str(), etag),
            ("x-repo-commit", COMMIT.to_string()),
            (
                header::CONTENT_RANGE.as_str(),
                format!("bytes {start}-{}/{size}", end.saturating_sub(1)),
            ),
        ],
        data[start..end].to_vec(),
    )
        .into_response()
}

/// Serves the files of `dir` as repository `org/tiny` on 127.0.0.1; returns the base URL.
fn start_hub(dir: &Path) -> (String, Hub) {
    let files = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    let hub = Hub {
        files: Arc::new(files),
        ..Hub::default()
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .route(
            "/{org}/{name}/resolve/{rev}/{*file}",
            axum::routing::get(resolve),
        )
        .with_state(hub.clone());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    (format!("http://{addr}"), hub)
}

fn greedy_chat(server: &Server) -> Value {
    let v = server.ok_json(
        "/v1/chat/completions",
        &json!({
            "model": "m",
            "messages": [{"role": "user", "content": "Name three rivers."}],
            "max_tokens": 8,
            "temperature": 0,
        }),
    );
    v["choices"][0]["message"]["content"].clone()
}

fn serve(model: &str, env: &[(&str, &str)]) -> Server {
    Server::start_with_env(
        &[
            "--model",
            model,
            "--served-model-name",
            "m",
            "--max-model-len",
            "256",
            "--kv-cache-memory",
            "16MiB",
        ],
        env,
    )
}

#[test]
fn hub_model_is_fetched_cached_and_served_offline() {
    let tiny = support::tiny_llama();
    let local = greedy_chat(&serve(tiny.to_str().unwrap(), &[]));
    let (endpoint, hub) = start_hub(&tiny);
    let home = tempfile::tempdir().unwrap();
    let home_s = home.path().to_str().unwrap();

    let online = [
        ("HF_HOME", home_s),
        ("HF_ENDPOINT", endpoint.as_str()),
        ("HF_TOKEN", TOKEN),
    ];
    let server = serve("org/tiny", &online);
    assert_eq!(greedy_chat(&server), local);
    // Not on a terminal: each file's download ends in a progress log line.
    let log = server.log();
    assert!(
        log.lines().any(|l| l.contains("model.safetensors")
            && l.contains("pulled ")
            && l.contains(" of ")),
        "no progress line for model.safetensors:\n{log}"
    );
    drop(server);
    let seen = hub.seen.lock().unwrap().clone();
    let fetched: Vec<&str> = seen.iter().map(|(f, _)| f.as_str()).collect();
    for file in ["config.json", "tokenizer.json", "model.safetensors"] {
        assert!(fetched.contains(&file), "{file} not fetched: {fetched:?}");
    }
    assert!(
        seen.iter()
            .all(|(_, auth)| auth.as_deref() == Some(&format!("Bearer {TOKEN}"))),
        "HF_TOKEN not sent on every request: {seen:?}"
    );
    let snapshot: PathBuf = home
        .path()
        .join("hub/models--org--tiny/snapshots")
        .join(COMMIT);
    assert!(
        snapshot.join("config.json").exists(),
        "cached under HF_HOME"
    );

    // Offline: the cache alone, and no request reaches the hub.
    let before = hub.seen.lock().unwrap().len();
    let offline = [
        ("HF_HOME", home_s),
        ("HF_ENDPOINT", endpoint.as_str()),
        ("HF_HUB_OFFLINE", "1"),
    ];
    assert_eq!(greedy_chat(&serve("org/tiny@main", &offline)), local);
    assert_eq!(
        hub.seen.lock().unwrap().len(),
        before,
        "offline went online"
    );
}

#[test]
fn offline_and_not_cached_is_a_clear_error() {
    let home = tempfile::tempdir().unwrap();
    let mut server = Server::spawn(
        &["--model", "org/absent", "--kv-cache-memory", "16MiB"],
        &[
            ("HF_HOME", home.path().to_str().unwrap()),
            ("HF_HUB_OFFLINE", "1"),
        ],
    );
    let status = server
        .wait_exit(Duration::from_secs(60))
        .expect("surge kept running without its model");
    assert!(!status.success());
    let log = server.log();
    assert!(log.contains("org/absent@main"), "{log}");
    assert!(log.contains("HF_HUB_OFFLINE"), "{log}");
    assert!(log.contains("config.json"), "{log}");
}

#[test]
fn a_file_missing_from_the_repository_is_named() {
    let tiny = support::tiny_llama();
    let partial = tempfile::tempdir().unwrap();
    for file in ["config.json", "tokenizer.json"] {
        std::fs::copy(tiny.join(file), partial.path().join(file)).unwrap();
    }
    let (endpoint, _hub) = start_hub(partial.path());
    let home = tempfile::tempdir().unwrap();
    let mut server = Server::spawn(
        &["--model", "org/partial", "--kv-cache-memory", "16MiB"],
        &[
            ("HF_HOME", home.path().to_str().unwrap()),
            ("HF_ENDPOINT", endpoint.as_str()),
        ],
    );
    let status = server
        .wait_exit(Duration::from_secs(60))
        .expect("surge kept running without its weights");
    assert!(!status.success());
    let log = server.log();
    assert!(
        log.contains("model.safetensors is not in the repository"),
        "{log}"
    );
}

#[test]
fn surge_pull_fills_the_hub_cache_for_a_later_offline_start() {
    let tiny = support::tiny_llama();
    let (endpoint, hub) = start_hub(&tiny);
    let home = tempfile::tempdir().unwrap();
    let home_s = home.path().to_str().unwrap();
    let pull = |model: &str, env: &[(&str, &str)]| {
        support::registry::run_surge(&["pull", model], &[&[("HF_HOME", home_s)], env].concat())
    };

    let run = pull("org/tiny", &[("HF_ENDPOINT", endpoint.as_str())]);
    assert!(run.success, "surge pull failed:\n{}", run.stderr);
    let snapshot = home
        .path()
        .join("hub/models--org--tiny/snapshots")
        .join(COMMIT);
    assert_eq!(run.stdout.trim(), snapshot.to_str().unwrap());
    for file in ["config.json", "tokenizer.json", "model.safetensors"] {
        assert_eq!(
            std::fs::read(snapshot.join(file)).unwrap(),
            std::fs::read(tiny.join(file)).unwrap(),
            "{file}"
        );
    }
    // Offline, the pulled model is found without a request.
    let before = hub.seen.lock().unwrap().len();
    let run = pull("org/tiny", &[("HF_HUB_OFFLINE", "1")]);
    assert!(run.success, "offline pull failed:\n{}", run.stderr);
    assert_eq!(run.stdout.trim(), snapshot.to_str().unwrap());
    assert_eq!(
        hub.seen.lock().unwrap().len(),
        before,
        "offline went online"
    );
    // A model not cached, offline, and a local dir: clear errors.
    let run = pull("org/absent", &[("HF_HUB_OFFLINE", "1")]);
    assert!(
        !run.success && run.stderr.contains("org/absent"),
        "{}",
        run.stderr
    );
    let run = pull(tiny.to_str().unwrap(), &[]);
    assert!(
        !run.success && run.stderr.contains("nothing to pull"),
        "{}",
        run.stderr
    );
}
