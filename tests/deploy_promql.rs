//! Every PromQL query in `deploy/` — the InferenceServices' KEDA metrics, the ScaledObject
//! triggers, the PrometheusRule's recording rules and alerts — is evaluated by a real
//! Prometheus (Debian `prometheus`, installed by `tests/support/setup.sh`) scraping
//! `surge serve` on the real SmolLM2 weights while it is overloaded (more requests than
//! slots, more KV demand than cache), and each returns a finite, positive number: the
//! queries name metrics and labels surge exports and see the load, and each alert fires
//! under the load it describes.
//! `promtool check rules` accepts the PrometheusRule's groups.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::deploy::{self, of_kind, Doc};
use support::prometheus::Prometheus;
use support::server::Server;

/// The served model name the manifests' queries select (`model_name="…"`).
const MODEL: &str = "llama-3-1-8b";
const MAX_NUM_SEQS: usize = 4;
/// Small enough that four long requests outgrow it (preemptions, a full cache).
const KV_CACHE_MEMORY: &str = "16MiB";
const NUM_LONG: usize = 6;
const LONG_TOKENS: u64 = 100;
const NUM_SHORT: usize = 6;
const SHORT_TOKENS: u64 = 4;
/// How long every query may take to return a positive number once the load started.
const QUERY_TIMEOUT: Duration = Duration::from_secs(120);

/// One query and where it came from.
#[derive(Debug)]
struct Query {
    origin: String,
    promql: String,
}

fn queries(docs: &[Doc]) -> Vec<Query> {
    let mut out = Vec::new();
    for isvc in of_kind(docs, "InferenceService") {
        for (i, metric) in isvc.value["spec"]["predictor"]["autoScaling"]["metrics"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            if let Some(q) = metric["external"]["metric"]["query"].as_str() {
                out.push(Query {
                    origin: format!("{} metrics[{i}]", isvc.id()),
                    promql: q.to_string(),
                });
            }
        }
    }
    for scaled in of_kind(docs, "ScaledObject") {
        for (i, trigger) in scaled.value["spec"]["triggers"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            if trigger["type"] == "prometheus" {
                out.push(Query {
                    origin: format!("{} triggers[{i}]", scaled.id()),
                    promql: trigger["metadata"]["query"].as_str().unwrap().to_string(),
                });
            }
        }
    }
    for rule in of_kind(docs, "PrometheusRule") {
        for group in rule.value["spec"]["groups"].as_array().unwrap() {
            for r in group["rules"].as_array().unwrap() {
                let name = r["record"].as_str().or(r["alert"].as_str()).unwrap();
                out.push(Query {
                    origin: format!("{} {name}", rule.id()),
                    promql: r["expr"].as_str().unwrap().to_string(),
                });
            }
        }
    }
    out
}

/// Every query-bearing kind is found; the number is what deploy/ holds today.
#[test]
fn every_promql_query_in_deploy_is_found() {
    let docs = deploy::manifests();
    let found = queries(&docs);
    for q in &found {
        eprintln!("{}: {}", q.origin, q.promql);
    }
    for origin in ["InferenceService", "ScaledObject", "PrometheusRule"] {
        assert!(
            found.iter().any(|q| q.origin.contains(origin)),
            "no query from a {origin}"
        );
    }
    // Nothing else in deploy/ looks like PromQL: every `query:` and `expr:` is above.
    let mut in_text = 0;
    for path in deploy::manifest_files() {
        let text = std::fs::read_to_string(path).unwrap();
        in_text += text
            .lines()
            .filter(|l| {
                let l = l.trim_start();
                l.starts_with("query:") || l.starts_with("expr:")
            })
            .count();
    }
    assert_eq!(
        in_text,
        found.len(),
        "a query: or expr: line the test does not evaluate"
    );
}

#[test]
fn promtool_accepts_the_prometheus_rules() {
    let promtool = ["/usr/bin/promtool", "/usr/local/bin/promtool"]
        .into_iter()
        .find(|p| std::path::Path::new(p).is_file())
        .expect("promtool is missing: run tests/support/setup.sh (Debian package prometheus)");
    let docs = deploy::manifests();
    let dir = tempfile::tempdir().unwrap();
    for rule in of_kind(&docs, "PrometheusRule") {
        let file = dir.path().join(format!("{}.yaml", rule.name()));
        let groups = json!({"groups": rule.value["spec"]["groups"]});
        std::fs::write(&file, serde_norway::to_string(&groups).unwrap()).unwrap();
        let output = check_rules(promtool.as_ref(), &file);
        assert!(
            output.status.success(),
            "{}: promtool check rules failed:\n{}{}",
            rule.id(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // And it is a real check: a broken expression fails.
    let file = dir.path().join("broken.yaml");
    std::fs::write(
        &file,
        "groups:\n- name: g\n  rules:\n  - record: r\n    expr: sum(surge_saturation\n",
    )
    .unwrap();
    let output = check_rules(promtool.as_ref(), &file);
    assert!(
        !output.status.success(),
        "promtool accepted a broken expression"
    );
}

/// `promtool check rules FILE`.
fn check_rules(promtool: &std::path::Path, file: &std::path::Path) -> std::process::Output {
    Command::new(promtool)
        .args(["check", "rules"])
        .arg(file)
        .output()
        .unwrap()
}

fn completion(server: &Server, prompt: &str, max_tokens: u64) {
    let body = json!({
        "model": MODEL,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": true,
    });
    let reply = server.post_json("/v1/completions", &body);
    assert_eq!(reply.status, 200, "{body}: {}", reply.body);
    let value: Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(value["usage"]["completion_tokens"], max_tokens, "{value}");
}

#[test]
fn every_promql_query_returns_a_number_against_a_loaded_surge() {
    let started = Instant::now();
    let docs = deploy::manifests();
    let queries = queries(&docs);
    let model = support::smollm2_hf();
    let max_num_seqs = MAX_NUM_SEQS.to_string();
    let server = Server::start(&[
        "--model",
        model.to_str().unwrap(),
        "--served-model-name",
        MODEL,
        "--max-num-seqs",
        &max_num_seqs,
        "--kv-cache-memory",
        KV_CACHE_MEMORY,
        "--max-model-len",
        "256",
    ]);
    let target = server.base_url().strip_prefix("http://").unwrap();
    let prometheus = Prometheus::start("surge", target);
    eprintln!("surge and prometheus ready after {:.1?}", started.elapsed());

    let long_prompts: Vec<String> = (0..NUM_LONG)
        .map(|i| format!("Chapter {i}. The lighthouse keeper climbed the stairs and"))
        .collect();
    let short_prompts: Vec<String> = (0..NUM_SHORT).map(|i| format!("{i} plus {i} is")).collect();
    let mut values: Vec<Option<f64>> = vec![None; queries.len()];
    std::thread::scope(|s| {
        let server = &server;
        let clients: Vec<_> = long_prompts
            .iter()
            .map(|p| s.spawn(move || completion(server, p, LONG_TOKENS)))
            .chain(
                short_prompts
                    .iter()
                    .map(|p| s.spawn(move || completion(server, p, SHORT_TOKENS))),
            )
            .collect();
        let load_started = Instant::now();
        loop {
            for (q, value) in queries.iter().zip(values.iter_mut()) {
                if value.is_none() {
                    // Positive: each query sees the load (every one of them measures
                    // demand, readiness or throughput, all above zero now).
                    *value = prometheus
                        .query(&q.promql)
                        .filter(|v| v.is_finite() && *v > 0.0);
                    if let Some(v) = value {
                        eprintln!("{:.1?} {} = {v}", load_started.elapsed(), q.origin);
                    }
                }
            }
            if values.iter().all(Option::is_some) {
                break;
            }
            let pending: Vec<&Query> = queries
                .iter()
                .zip(&values)
                .filter(|(_, v)| v.is_none())
                .map(|(q, _)| q)
                .collect();
            assert!(
                load_started.elapsed() < QUERY_TIMEOUT && !clients.iter().all(|c| c.is_finished()),
                "no number within {QUERY_TIMEOUT:?} of load (or the load ended first) for:\n{pending:#?}\n\
                 ----- surge log -----\n{}\n----- prometheus log -----\n{}",
                server.log_tail(),
                prometheus.log_tail()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        for client in clients {
            client.join().expect("a client failed (its panic is above)");
        }
    });
    eprintln!(
        "{} queries answered; done after {:.1?}",
        queries.len(),
        started.elapsed()
    );
}
