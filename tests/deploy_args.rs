//! The containers `deploy/` runs, as surge and Knative read them: the ServingRuntime's
//! args (with each InferenceService's) and the plain Deployment's parse with surge's own
//! CLI (`surge serve … --check-args`) and set the model wait the ModelCar needs; grace
//! periods cover preStop plus --shutdown-timeout; startup probes cover the model wait and
//! a load; and the runtime stays valid for Knative, with the Knative features a ModelCar
//! needs documented.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;
use support::deploy::{self, debug_field, of_kind, Doc};

/// The ServingRuntime's container.
fn runtime_container(docs: &[Doc]) -> &Value {
    let runtimes = of_kind(docs, "ServingRuntime");
    assert_eq!(runtimes.len(), 1, "one ServingRuntime");
    &runtimes[0].value["spec"]["containers"][0]
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// The args a pod of `isvc` gets: the runtime's (with KServe's {{.Name}} filled in) and
/// then the InferenceService's model args.
fn isvc_args(runtime: &Value, isvc: &Doc) -> Vec<String> {
    let mut args: Vec<String> = strings(&runtime["args"])
        .into_iter()
        .map(|a| a.replace("{{.Name}}", isvc.name()))
        .collect();
    args.extend(strings(&isvc.value["spec"]["predictor"]["model"]["args"]));
    args
}

/// Parses with surge's CLI; returns (shutdown timeout, model wait timeout) from its dump.
fn check_args(what: &str, args: &[String]) -> (Duration, Duration) {
    let dump = deploy::surge_check_args(args)
        .unwrap_or_else(|e| panic!("{what}: surge serve {args:?} --check-args failed: {e}"));
    let shutdown: u64 = debug_field(&dump, "shutdown_timeout")
        .unwrap_or_else(|| panic!("{what}: no shutdown_timeout in {dump}"))
        .parse()
        .unwrap();
    let wait = debug_field(&dump, "model_wait_timeout")
        .unwrap_or_else(|| panic!("{what}: no model_wait_timeout in {dump}"));
    let wait = parse_debug_duration(&wait);
    (Duration::from_secs(shutdown), wait)
}

/// `300s` or `300.5s` (a `Duration`'s Debug) → Duration.
fn parse_debug_duration(text: &str) -> Duration {
    let secs = text.strip_suffix("s").unwrap_or_else(|| panic!("{text}"));
    Duration::from_secs_f64(secs.parse().unwrap_or_else(|e| panic!("{text}: {e}")))
}

fn probe_budget(container: &Value, probe: &str) -> Duration {
    let p = &container[probe];
    let period = p["periodSeconds"].as_u64().unwrap_or(10);
    let failures = p["failureThreshold"].as_u64().unwrap_or(3);
    let delay = p["initialDelaySeconds"].as_u64().unwrap_or(0);
    Duration::from_secs(delay + period * failures)
}

fn prestop_seconds(container: &Value) -> u64 {
    container["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap_or(0)
}

/// Time a GPU replica may need past the model wait: weights to the GPU and warm-up.
const LOAD_BUDGET: Duration = Duration::from_secs(300);

#[test]
fn servingruntime_args_parse_with_surge_and_the_grace_period_covers_the_drain() {
    let docs = deploy::manifests();
    let runtime = runtime_container(&docs);
    let runtime_args = strings(&runtime["args"]);
    for required in [
        "--port=8080",
        "--model=/mnt/models",
        "--served-model-name={{.Name}}",
    ] {
        assert!(
            runtime_args.iter().any(|a| a == required),
            "runtime args lack {required}"
        );
    }
    let isvcs = of_kind(&docs, "InferenceService");
    for isvc in &isvcs {
        let args = isvc_args(runtime, isvc);
        let (shutdown, wait) = check_args(&isvc.id(), &args);
        assert!(
            wait > Duration::ZERO,
            "{}: the ModelCar needs --model-wait-timeout",
            isvc.id()
        );
        let startup = probe_budget(runtime, "startupProbe");
        assert!(
            startup >= wait + LOAD_BUDGET,
            "{}: startupProbe budget {startup:?} < model wait {wait:?} + load {LOAD_BUDGET:?}",
            isvc.id()
        );
        let predictor = &isvc.value["spec"]["predictor"];
        let model = &predictor["model"];
        let grace = match predictor["terminationGracePeriodSeconds"].as_u64() {
            Some(grace) => grace,
            // Knative mode: the revision's timeout is the pod's grace period.
            None => predictor["timeout"].as_u64().unwrap(),
        };
        let needed = prestop_seconds(model) + shutdown.as_secs();
        assert!(
            grace >= needed,
            "{}: terminationGracePeriodSeconds {grace} < preStop + --shutdown-timeout = {needed}",
            isvc.id()
        );
        assert!(
            args.iter().any(|a| a == "--max-model-len=10000"),
            "{}: the A10G setting",
            isvc.id()
        );
    }

    // The check can fail: surge refuses what it cannot parse.
    let mut bad = isvc_args(runtime, isvcs[0]);
    bad.push("--max-model-len=ten-thousand".into());
    assert!(
        deploy::surge_check_args(&bad).is_err(),
        "a bad value must fail"
    );
    let mut bad = isvc_args(runtime, isvcs[0]);
    bad.push("--no-such-flag".into());
    assert!(
        deploy::surge_check_args(&bad).is_err(),
        "an unknown flag must fail"
    );
    let mut bad = isvc_args(runtime, isvcs[0]);
    bad.push("--max-num-seqs=0".into());
    assert!(
        deploy::surge_check_args(&bad).is_err(),
        "an invalid engine setting must fail"
    );
}

#[test]
fn plain_deployment_args_parse_and_the_grace_period_covers_the_drain() {
    let docs = deploy::manifests();
    let deployments = of_kind(&docs, "Deployment");
    assert!(!deployments.is_empty());
    for deployment in deployments {
        let pod = &deployment.value["spec"]["template"]["spec"];
        let surge = pod["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "surge")
            .unwrap_or_else(|| panic!("{}: no surge container", deployment.id()));
        let (shutdown, wait) = check_args(&deployment.id(), &strings(&surge["args"]));
        let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
        assert!(
            grace >= prestop_seconds(surge) + shutdown.as_secs(),
            "{}",
            deployment.id()
        );
        assert!(
            probe_budget(surge, "startupProbe") >= wait + LOAD_BUDGET,
            "{}",
            deployment.id()
        );
        assert_eq!(
            pod["shareProcessNamespace"],
            true,
            "{}: the ModelCar link needs it",
            deployment.id()
        );
    }
}

/// KServe copies the runtime's container into a Knative Service in Knative mode: every
/// field it sets must be one Knative's schema has (Knative's webhook refuses the rest,
/// e.g. lifecycle), and the port must be named as Knative requires.
#[test]
fn servingruntime_container_is_valid_for_knative() {
    let docs = deploy::manifests();
    let runtime = runtime_container(&docs);
    let knative = deploy::parse_yaml_documents(
        &std::fs::read_to_string(deploy::crds_dir().join("service.yaml")).unwrap(),
    )
    .unwrap()
    .remove(0);
    let spec = &knative["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        ["properties"]["template"]["properties"]["spec"];
    let allowed: BTreeSet<&String> = spec["properties"]["containers"]["items"]["properties"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert!(
        !allowed.contains(&"lifecycle".to_string()),
        "the Knative schema changed"
    );
    for key in runtime.as_object().unwrap().keys() {
        assert!(
            allowed.contains(key),
            "the runtime container sets {key}, which Knative refuses"
        );
    }
    let port = &runtime["ports"][0];
    assert!(["http1", "h2c"].contains(&port["name"].as_str().unwrap()));
    // The same for the ISVCs' model overrides in Knative mode.
    for isvc in of_kind(&docs, "InferenceService") {
        let annotations = &isvc.value["metadata"]["annotations"];
        if annotations["serving.kserve.io/deploymentMode"] == "Knative" {
            for key in isvc.value["spec"]["predictor"]["model"]
                .as_object()
                .unwrap()
                .keys()
            {
                let kserve_only = ["runtime", "modelFormat", "storageUri"].contains(&key.as_str());
                assert!(
                    kserve_only || allowed.contains(key),
                    "{}: model.{key}",
                    isvc.id()
                );
            }
        }
    }
}

/// In Knative mode KServe gives the pod a ModelCar init container, a shared process
/// namespace and emptyDir volumes (the model link, /dev/shm): fields Knative admits only
/// behind feature flags, which its own schema names. deploy/README.md must list each.
#[test]
fn knative_feature_flags_the_modelcar_needs_are_documented() {
    let knative = deploy::parse_yaml_documents(
        &std::fs::read_to_string(deploy::crds_dir().join("service.yaml")).unwrap(),
    )
    .unwrap()
    .remove(0);
    let spec = &knative["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        ["properties"]["template"]["properties"]["spec"]["properties"];
    let readme = std::fs::read_to_string(deploy::repo().join("deploy/README.md")).unwrap();
    for field in [
        &spec["initContainers"],
        &spec["shareProcessNamespace"],
        &spec["volumes"]["items"]["properties"]["emptyDir"],
    ] {
        let description = field["description"].as_str().unwrap();
        let flag = description
            .split("feature flag - ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no feature flag in {description:?}"));
        assert!(
            readme.contains(&format!("{flag}: enabled")),
            "deploy/README.md does not say to enable {flag}"
        );
    }
}
