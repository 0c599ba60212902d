//! SmolLM2 packed as ModelCar images by `surge modelcar build` (several layers; gzip,
//! zstd, uncompressed; one behind a multi-arch image index), pushed to a real registry
//! (Debian docker-registry on 127.0.0.1) and served from `oci://`: greedy chat answers
//! equal the local-dir path's, and a second serve of the same digest fetches no blob.

mod support;

use serde_json::{json, Value};
use support::registry::{run_surge, Proxy, Registry};
use support::server::{metric_value, run_checks, Check, Server};

struct Ctx {
    registry: Registry,
    /// The answer when serving the local dir.
    expected: String,
}

fn chat_request() -> Value {
    json!({
        "model": "smol",
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 24,
        "temperature": 0,
    })
}

/// Serves `model` and returns the greedy answer and the server (for its metrics).
fn serve_and_chat(model: &str, extra: &[&str], cache: &std::path::Path) -> (String, Server) {
    let mut args = vec![
        "--model",
        model,
        "--served-model-name",
        "smol",
        "--kv-cache-memory",
        "128MiB",
        "--max-model-len",
        "512",
    ];
    args.extend_from_slice(extra);
    let server = Server::start_with_env(
        &args,
        &[
            ("SURGE_CACHE", cache.to_str().unwrap()),
            ("NO_PROXY", "127.0.0.1,localhost"),
        ],
    );
    let reply = server.ok_json("/v1/chat/completions", &chat_request());
    let text = reply["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_else(|| panic!("no content: {reply}"))
        .to_string();
    (text, server)
}

/// `surge modelcar build SMOLLM2 --push oci://REGISTRY/smollm2:TAG ARGS…`.
fn push_smollm2(registry: &Registry, tag: &str, extra: &[&str]) -> String {
    let model = support::smollm2_hf();
    let image = format!("oci://{}/smollm2:{tag}", registry.host());
    let host = registry.host();
    let mut args = vec![
        "modelcar",
        "build",
        model.to_str().unwrap(),
        "--push",
        &image,
        "--insecure-registry",
        &host,
    ];
    args.extend_from_slice(extra);
    let run = run_surge(&args, &[]);
    assert!(
        run.success,
        "surge modelcar build {tag} failed:\n{}",
        run.stderr
    );
    run.stdout.trim().to_string()
}

fn serve_image(ctx: &Ctx, host: &str, tag: &str) -> (String, Server, tempfile::TempDir) {
    let cache = tempfile::tempdir().unwrap();
    let model = format!("oci://{host}/smollm2:{tag}");
    let (answer, server) = serve_and_chat(&model, &["--insecure-registry", host], cache.path());
    assert_eq!(answer, ctx.expected, "oci://…:{tag} answered differently");
    (answer, server, cache)
}

fn gzip_layers_then_cached(ctx: &Ctx) {
    let proxy = Proxy::start(ctx.registry.addr());
    let (_, server, cache) = serve_image(ctx, &proxy.host(), "gzip");
    let metrics = server.get("/metrics").body;
    let pull_line = metrics
        .lines()
        .find(|l| l.starts_with("surge_startup_seconds{") && l.contains("phase=\"pull\""))
        .unwrap_or_else(|| panic!("no surge_startup_seconds{{phase=\"pull\"}} in:\n{metrics}"));
    let pull_s = metric_value(pull_line, "surge_startup_seconds{").unwrap();
    assert!(pull_s > 0.0, "pull phase took {pull_s}s");
    assert!(
        metrics.contains("source=\"oci\""),
        "surge_model_info should say source=\"oci\""
    );
    drop(server);
    let layer_gets = proxy.blob_gets().len();
    assert!(
        layer_gets >= 3,
        "expected ≥3 layer GETs: {:?}",
        proxy.requests()
    );

    // The same digest again, same cache: no blob requests at all.
    let model = format!("oci://{}/smollm2:gzip", proxy.host());
    let (answer, _server) = serve_and_chat(
        &model,
        &["--insecure-registry", &proxy.host()],
        cache.path(),
    );
    assert_eq!(answer, ctx.expected);
    assert_eq!(
        proxy.blob_gets().len(),
        layer_gets,
        "the second serve fetched blobs: {:?}",
        proxy.requests()
    );
}

fn zstd_layers(ctx: &Ctx) {
    serve_image(ctx, &ctx.registry.host(), "zstd");
}

fn uncompressed_layers(ctx: &Ctx) {
    serve_image(ctx, &ctx.registry.host(), "plain");
}

fn behind_a_multi_arch_index(ctx: &Ctx) {
    let (_, _server, cache) = serve_image(ctx, &ctx.registry.host(), "multiarch");
    // The linux/amd64 manifest was picked: its digest names the cache entry.
    let index: Value = support::server::client()
        .get(format!(
            "http://{}/v2/smollm2/manifests/multiarch",
            ctx.registry.host()
        ))
        .header("accept", "application/vnd.oci.image.index.v1+json")
        .send()
        .unwrap()
        .json()
        .unwrap();
    let amd64 = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["platform"]["architecture"] == "amd64")
        .unwrap_or_else(|| panic!("no amd64 entry: {index}"));
    let hex = amd64["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:");
    assert!(
        cache.path().join("oci/sha256").join(hex).is_dir(),
        "the cache has no entry for the amd64 manifest {hex}"
    );
}

#[test]
fn smollm2_served_from_modelcar_images_answers_as_the_local_dir() {
    let registry = Registry::start();
    push_smollm2(
        &registry,
        "gzip",
        &["--layers", "3", "--compression", "gzip"],
    );
    push_smollm2(
        &registry,
        "zstd",
        &["--layers", "4", "--compression", "zstd"],
    );
    push_smollm2(
        &registry,
        "plain",
        &["--layers", "3", "--compression", "none"],
    );
    push_smollm2(
        &registry,
        "multiarch",
        &[
            "--compression",
            "gzip",
            "--platform",
            "linux/arm64",
            "--platform",
            "linux/amd64",
        ],
    );
    let local = support::smollm2_hf();
    let scratch = tempfile::tempdir().unwrap();
    let (expected, _) = serve_and_chat(local.to_str().unwrap(), &[], scratch.path());
    assert!(!expected.is_empty());
    let ctx = Ctx { registry, expected };
    let checks: &[Check<Ctx>] = &[
        ("gzip_layers_then_cached", gzip_layers_then_cached),
        ("zstd_layers", zstd_layers),
        ("uncompressed_layers", uncompressed_layers),
        ("behind_a_multi_arch_index", behind_a_multi_arch_index),
    ];
    run_checks(&ctx, checks);
}
