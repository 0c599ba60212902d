//! What the schemas cannot say about `deploy/`: annotation keys are ones Knative, KServe,
//! KEDA, Kubernetes, Prometheus or OpenShift AI define, with values of the right syntax and
//! range; durations and quantities parse; InferenceServices match their mode; and the
//! objects refer to each other correctly. (The container args: tests/deploy_args.rs.)

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;
use support::deploy::{self, of_kind, parse_go_duration, parse_quantity, Doc};

/// The annotation keys the manifests may use, with who defines them.
const KNOWN_ANNOTATIONS: &[(&str, &str)] = &[
    // knative/serving v1.23, pkg/apis/autoscaling/register.go.
    ("autoscaling.knative.dev/class", "Knative autoscaling"),
    ("autoscaling.knative.dev/metric", "Knative autoscaling"),
    ("autoscaling.knative.dev/target", "Knative autoscaling"),
    (
        "autoscaling.knative.dev/target-utilization-percentage",
        "Knative autoscaling",
    ),
    (
        "autoscaling.knative.dev/target-burst-capacity",
        "Knative autoscaling",
    ),
    ("autoscaling.knative.dev/window", "Knative autoscaling"),
    (
        "autoscaling.knative.dev/panic-window-percentage",
        "Knative autoscaling",
    ),
    (
        "autoscaling.knative.dev/panic-threshold-percentage",
        "Knative autoscaling",
    ),
    ("autoscaling.knative.dev/min-scale", "Knative autoscaling"),
    ("autoscaling.knative.dev/max-scale", "Knative autoscaling"),
    (
        "autoscaling.knative.dev/initial-scale",
        "Knative autoscaling",
    ),
    (
        "autoscaling.knative.dev/activation-scale",
        "Knative autoscaling",
    ),
    (
        "autoscaling.knative.dev/scale-down-delay",
        "Knative autoscaling",
    ),
    (
        "autoscaling.knative.dev/scale-to-zero-pod-retention-period",
        "Knative autoscaling",
    ),
    // knative/serving v1.23, pkg/apis/serving/register.go.
    ("serving.knative.dev/progress-deadline", "Knative serving"),
    // kserve/kserve v0.20, pkg/constants/constants.go.
    ("serving.kserve.io/deploymentMode", "KServe"),
    ("serving.kserve.io/autoscalerClass", "KServe"),
    ("serving.kserve.io/enable-prometheus-scraping", "KServe"),
    ("serving.kserve.io/enable-metric-aggregation", "KServe"),
    // The Prometheus kubernetes_sd convention, also read by KServe (constants.go
    // PrometheusPortAnnotationKey, PrometheusPathAnnotationKey).
    ("prometheus.io/scrape", "Prometheus convention"),
    ("prometheus.io/port", "Prometheus convention"),
    ("prometheus.io/path", "Prometheus convention"),
    // opendatahub-io/odh-dashboard: how OpenShift AI lists serving runtimes.
    ("openshift.io/display-name", "OpenShift"),
    (
        "opendatahub.io/recommended-accelerators",
        "OpenShift AI dashboard",
    ),
    ("opendatahub.io/apiProtocol", "OpenShift AI dashboard"),
    // kubernetes: the ServiceAccount a service-account-token Secret belongs to.
    ("kubernetes.io/service-account.name", "Kubernetes"),
];

/// Every `annotations` map in a document (object metadata, pod templates, the
/// ServingRuntime's pod annotations), with its path. PrometheusRule annotations are alert
/// texts, not Kubernetes annotations.
fn annotation_maps(doc: &Doc) -> Vec<(String, &serde_json::Map<String, Value>)> {
    let mut maps = Vec::new();
    for path in deploy::object_paths(&doc.value) {
        if path.last().map(String::as_str) != Some("annotations") {
            continue;
        }
        if doc.kind() == "PrometheusRule" && path.contains(&"rules".to_string()) {
            continue;
        }
        let mut node = &doc.value;
        for key in &path {
            node = match node {
                Value::Array(items) => &items[key.parse::<usize>().unwrap()],
                _ => &node[key],
            };
        }
        maps.push((path.join("."), node.as_object().unwrap()));
    }
    maps
}

#[test]
fn annotation_keys_are_defined_by_knative_kserve_keda_or_kubernetes() {
    let docs = deploy::manifests();
    let known: BTreeSet<&str> = KNOWN_ANNOTATIONS.iter().map(|(k, _)| *k).collect();
    let mut unknown = Vec::new();
    let mut seen = 0;
    for doc in &docs {
        for (path, map) in annotation_maps(doc) {
            for key in map.keys() {
                seen += 1;
                if !known.contains(key.as_str()) {
                    unknown.push(format!("{} {path}: {key}", doc.id()));
                }
            }
        }
    }
    assert!(
        seen > 20,
        "only {seen} annotations found: the walk is broken"
    );
    assert!(
        unknown.is_empty(),
        "annotation keys nobody defines:\n{}",
        unknown.join("\n")
    );
}

/// Every annotation's value, read as its owner reads it.
#[test]
fn annotation_values_parse_and_are_in_range() {
    let docs = deploy::manifests();
    let mut checked = 0;
    for doc in &docs {
        for (path, map) in annotation_maps(doc) {
            for (key, value) in map {
                let value = value
                    .as_str()
                    .unwrap_or_else(|| panic!("{} {path}.{key}: not a string", doc.id()));
                let at = format!("{} {path}.{key} = {value:?}", doc.id());
                let duration = || parse_go_duration(value).unwrap_or_else(|e| panic!("{at}: {e}"));
                match key.as_str() {
                    // Knative's bounds: register.go and its validation.
                    "autoscaling.knative.dev/scale-down-delay" => {
                        assert!(duration() <= Duration::from_secs(3600), "{at}: over 1h")
                    }
                    "autoscaling.knative.dev/window" => {
                        let d = duration();
                        assert!(
                            d >= Duration::from_secs(6) && d <= Duration::from_secs(3600),
                            "{at}: Knative allows 6s to 1h"
                        );
                    }
                    "autoscaling.knative.dev/scale-to-zero-pod-retention-period" => {
                        duration();
                    }
                    "serving.knative.dev/progress-deadline" => {
                        assert!(duration() > Duration::ZERO, "{at}")
                    }
                    "autoscaling.knative.dev/target" => {
                        let target: f64 = value.parse().unwrap_or_else(|e| panic!("{at}: {e}"));
                        assert!(target >= 0.01, "{at}: Knative's minimum target is 0.01");
                    }
                    "autoscaling.knative.dev/metric" => {
                        assert!(["concurrency", "rps"].contains(&value), "{at}")
                    }
                    "serving.kserve.io/deploymentMode" => {
                        // KServe 0.16+ names; Serverless and RawDeployment are the old ones.
                        assert!(["Knative", "Standard"].contains(&value), "{at}")
                    }
                    "serving.kserve.io/autoscalerClass" => {
                        assert!(["hpa", "keda", "external"].contains(&value), "{at}")
                    }
                    "prometheus.io/scrape" => assert_eq!(value, "true", "{at}"),
                    "prometheus.io/port" => {
                        value.parse::<u16>().unwrap_or_else(|e| panic!("{at}: {e}"));
                    }
                    "prometheus.io/path" => assert_eq!(value, "/metrics", "{at}"),
                    "opendatahub.io/recommended-accelerators" => {
                        let list: Vec<String> =
                            serde_json::from_str(value).unwrap_or_else(|e| panic!("{at}: {e}"));
                        assert_eq!(list, ["nvidia.com/gpu"], "{at}");
                    }
                    _ => {}
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 20, "only {checked} values checked");
}

/// Knative annotations only where Knative runs; KEDA metrics only with the keda class.
#[test]
fn inference_services_are_consistent_with_their_mode() {
    let docs = deploy::manifests();
    let isvcs = of_kind(&docs, "InferenceService");
    assert!(isvcs.len() >= 4, "{} InferenceServices", isvcs.len());
    let mut modes = BTreeSet::new();
    for isvc in isvcs {
        let annotations = isvc.value["metadata"]["annotations"].as_object().unwrap();
        let mode = annotations["serving.kserve.io/deploymentMode"]
            .as_str()
            .unwrap();
        modes.insert(mode.to_string());
        let knative_keys: Vec<&String> = annotations
            .keys()
            .filter(|k| k.contains("knative.dev/"))
            .collect();
        let predictor = &isvc.value["spec"]["predictor"];
        match mode {
            "Knative" => {
                assert!(
                    !knative_keys.is_empty(),
                    "{}: no Knative settings",
                    isvc.id()
                );
                assert!(predictor["autoScaling"].is_null(), "{}", isvc.id());
                assert!(
                    predictor["timeout"].as_u64().is_some(),
                    "{}: set the revision timeout",
                    isvc.id()
                );
            }
            "Standard" => {
                assert!(knative_keys.is_empty(), "{}: {knative_keys:?}", isvc.id());
                assert_eq!(
                    annotations["serving.kserve.io/autoscalerClass"],
                    "keda",
                    "{}",
                    isvc.id()
                );
                let metrics = predictor["autoScaling"]["metrics"].as_array().unwrap();
                assert!(!metrics.is_empty(), "{}", isvc.id());
                for metric in metrics {
                    // KServe turns target.value (only) into KEDA's threshold.
                    let target = metric["external"]["target"]["value"].as_str().unwrap();
                    assert!(parse_quantity(target).unwrap() > 0.0, "{}", isvc.id());
                    assert_eq!(metric["external"]["metric"]["backend"], "prometheus");
                }
            }
            other => panic!("{}: mode {other}", isvc.id()),
        }
        let min = predictor["minReplicas"].as_u64().unwrap();
        let max = predictor["maxReplicas"].as_u64().unwrap();
        assert!(min <= max && max >= 1, "{}: min {min} max {max}", isvc.id());
        if min == 0 {
            assert_eq!(
                mode,
                "Knative",
                "{}: only Knative wakes a model from zero here",
                isvc.id()
            );
            for key in [
                "autoscaling.knative.dev/scale-to-zero-pod-retention-period",
                "serving.knative.dev/progress-deadline",
            ] {
                assert!(
                    annotations.contains_key(key),
                    "{}: scale to zero without {key}",
                    isvc.id()
                );
            }
        }
    }
    assert_eq!(modes, BTreeSet::from(["Knative".into(), "Standard".into()]));
}

/// Every duration-valued field outside annotations parses, in Go's syntax.
#[test]
fn durations_parse() {
    let docs = deploy::manifests();
    let mut checked = 0;
    for doc in &docs {
        let mut check = |path: &str, value: &Value, max: Duration| {
            let Some(text) = value.as_str() else { return };
            let d = parse_go_duration(text).unwrap_or_else(|e| panic!("{} {path}: {e}", doc.id()));
            assert!(
                d > Duration::ZERO && d <= max,
                "{} {path} = {text}",
                doc.id()
            );
            checked += 1;
        };
        match doc.kind() {
            "InterceptorRoute" => {
                for key in ["readiness", "request", "responseHeader"] {
                    let value = &doc.value["spec"]["timeouts"][key];
                    check(
                        &format!("spec.timeouts.{key}"),
                        value,
                        Duration::from_secs(7200),
                    );
                }
                let readiness =
                    parse_go_duration(doc.value["spec"]["timeouts"]["readiness"].as_str().unwrap())
                        .unwrap();
                let request =
                    parse_go_duration(doc.value["spec"]["timeouts"]["request"].as_str().unwrap())
                        .unwrap();
                assert!(
                    request > readiness,
                    "{}: the request timeout includes the cold start",
                    doc.id()
                );
            }
            "PodMonitor" => {
                for endpoint in doc.value["spec"]["podMetricsEndpoints"].as_array().unwrap() {
                    check("interval", &endpoint["interval"], Duration::from_secs(300));
                    check(
                        "scrapeTimeout",
                        &endpoint["scrapeTimeout"],
                        Duration::from_secs(300),
                    );
                    let interval =
                        parse_go_duration(endpoint["interval"].as_str().unwrap()).unwrap();
                    let timeout =
                        parse_go_duration(endpoint["scrapeTimeout"].as_str().unwrap()).unwrap();
                    assert!(
                        timeout <= interval,
                        "{}: Prometheus refuses scrapeTimeout > interval",
                        doc.id()
                    );
                }
            }
            "PrometheusRule" => {
                for group in doc.value["spec"]["groups"].as_array().unwrap() {
                    check("interval", &group["interval"], Duration::from_secs(3600));
                    for rule in group["rules"].as_array().unwrap() {
                        check("for", &rule["for"], Duration::from_secs(3600 * 6));
                    }
                }
            }
            _ => {}
        }
    }
    assert!(checked >= 8, "only {checked} durations checked");
    // The parser is strict enough to matter.
    for bad in ["10 m", "5min", "1d", "m", "", "-5s", "1.5"] {
        assert!(parse_go_duration(bad).is_err(), "{bad:?} parsed");
    }
    assert_eq!(
        parse_go_duration("1h30m").unwrap(),
        Duration::from_secs(5400)
    );
    assert_eq!(parse_go_duration("120s").unwrap(), Duration::from_secs(120));
}

/// The containers' resources, as Kubernetes reads them.
#[test]
fn quantities_parse_and_make_sense() {
    let docs = deploy::manifests();
    let mut checked = 0;
    for doc in &docs {
        for path in deploy::object_paths(&doc.value) {
            if path.last().map(String::as_str) != Some("resources") {
                continue;
            }
            let node = path.iter().fold(&doc.value, |n, k| match n {
                Value::Array(items) => &items[k.parse::<usize>().unwrap()],
                _ => &n[k],
            });
            let at = format!("{} {}", doc.id(), path.join("."));
            let get = |section: &str, name: &str| {
                node[section][name].as_str().map(|q| {
                    parse_quantity(q).unwrap_or_else(|e| panic!("{at}.{section}.{name}: {e}"))
                })
            };
            for section in ["requests", "limits"] {
                for (name, q) in node[section].as_object().into_iter().flatten() {
                    let q = q
                        .as_str()
                        .unwrap_or_else(|| panic!("{at}: write quantities as strings"));
                    parse_quantity(q).unwrap_or_else(|e| panic!("{at}.{section}.{name}: {e}"));
                    checked += 1;
                }
            }
            if let (Some(request), Some(limit)) =
                (get("requests", "memory"), get("limits", "memory"))
            {
                assert!(request <= limit, "{at}: memory request over its limit");
            }
            // Extended resources: Kubernetes requires requests == limits, whole units.
            let gpu_request = get("requests", "nvidia.com/gpu");
            let gpu_limit = get("limits", "nvidia.com/gpu");
            assert_eq!(
                gpu_request, gpu_limit,
                "{at}: GPU requests must equal limits"
            );
            if let Some(gpus) = gpu_limit {
                assert!(gpus >= 1.0 && gpus.fract() == 0.0, "{at}: {gpus} GPUs");
            }
        }
        for path in deploy::object_paths(&doc.value) {
            if path.last().map(String::as_str) == Some("emptyDir") {
                let node = path.iter().fold(&doc.value, |n, k| match n {
                    Value::Array(items) => &items[k.parse::<usize>().unwrap()],
                    _ => &n[k],
                });
                if let Some(size) = node["sizeLimit"].as_str() {
                    parse_quantity(size)
                        .unwrap_or_else(|e| panic!("{} {}: {e}", doc.id(), path.join(".")));
                    checked += 1;
                }
            }
        }
    }
    assert!(checked >= 20, "only {checked} quantities checked");
    assert_eq!(parse_quantity("20Gi").unwrap(), 20.0 * 1024f64.powi(3));
    assert_eq!(parse_quantity("500m").unwrap(), 0.5);
    assert_eq!(parse_quantity("0.8").unwrap(), 0.8);
    for bad in ["20GB", "1 Gi", "Gi", "1.2.3", ""] {
        assert!(parse_quantity(bad).is_err(), "{bad:?} parsed");
    }
}

/// Names and labels that tie the objects together.
#[test]
fn objects_refer_to_each_other() {
    let docs = deploy::manifests();
    let runtimes = of_kind(&docs, "ServingRuntime");
    let runtime = &runtimes[0].value;
    let formats: Vec<&Value> = runtime["spec"]["supportedModelFormats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| &f["name"])
        .collect();
    for isvc in of_kind(&docs, "InferenceService") {
        let model = &isvc.value["spec"]["predictor"]["model"];
        assert_eq!(
            model["runtime"],
            runtime["metadata"]["name"],
            "{}",
            isvc.id()
        );
        assert!(
            formats.contains(&&model["modelFormat"]["name"]),
            "{}",
            isvc.id()
        );
        assert!(
            model["storageUri"].as_str().unwrap().starts_with("oci://"),
            "{}",
            isvc.id()
        );
    }

    let deployment = &of_kind(&docs, "Deployment")[0].value;
    let template_labels = deployment["spec"]["template"]["metadata"]["labels"]
        .as_object()
        .unwrap();
    let service = &of_kind(&docs, "Service")[0].value;
    for (key, value) in service["spec"]["selector"].as_object().unwrap() {
        assert_eq!(
            template_labels.get(key),
            Some(value),
            "Service selector {key}"
        );
    }
    let surge = &deployment["spec"]["template"]["spec"]["containers"][0];
    let port_names: Vec<&Value> = surge["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["name"])
        .collect();
    assert!(port_names.contains(&&service["spec"]["ports"][0]["targetPort"]));

    // KEDA: each ScaledObject targets the Deployment; its auth and routes exist.
    for scaled in of_kind(&docs, "ScaledObject") {
        assert_eq!(
            scaled.value["spec"]["scaleTargetRef"]["name"],
            deployment["metadata"]["name"],
            "{}",
            scaled.id()
        );
        for trigger in scaled.value["spec"]["triggers"].as_array().unwrap() {
            if let Some(auth) = trigger["authenticationRef"]["name"].as_str() {
                let found = of_kind(&docs, "TriggerAuthentication")
                    .iter()
                    .any(|t| t.name() == auth);
                assert!(found, "{}: TriggerAuthentication {auth}", scaled.id());
            }
            if let Some(route) = trigger["metadata"]["interceptorRoute"].as_str() {
                let found = of_kind(&docs, "InterceptorRoute")
                    .iter()
                    .any(|r| r.name() == route);
                assert!(found, "{}: InterceptorRoute {route}", scaled.id());
            }
            if trigger["type"] == "prometheus" {
                let threshold: f64 = trigger["metadata"]["threshold"]
                    .as_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(threshold > 0.0);
            }
        }
    }
    for auth in of_kind(&docs, "TriggerAuthentication") {
        for secret_ref in auth.value["spec"]["secretTargetRef"].as_array().unwrap() {
            let name = secret_ref["name"].as_str().unwrap();
            assert!(
                of_kind(&docs, "Secret").iter().any(|s| s.name() == name),
                "{}: Secret {name}",
                auth.id()
            );
        }
    }
    for route in of_kind(&docs, "InterceptorRoute") {
        assert_eq!(
            route.value["spec"]["target"]["service"],
            service["metadata"]["name"]
        );
        assert_eq!(
            route.value["spec"]["target"]["port"],
            service["spec"]["ports"][0]["port"]
        );
    }

    // The PodMonitor finds both the KServe pods and the plain Deployment's, on the port
    // surge listens on.
    let monitor = &of_kind(&docs, "PodMonitor")[0].value;
    let runtime_labels = runtime["spec"]["labels"].as_object().unwrap();
    for (key, value) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(
            runtime_labels.get(key),
            Some(value),
            "ServingRuntime pod label {key}"
        );
        assert_eq!(
            template_labels.get(key),
            Some(value),
            "Deployment pod label {key}"
        );
    }
    let port = &monitor["spec"]["podMetricsEndpoints"][0]["portNumber"];
    assert_eq!(
        port,
        &runtime["spec"]["containers"][0]["ports"][0]["containerPort"]
    );
    assert_eq!(port, &surge["ports"][0]["containerPort"]);
    assert_eq!(
        runtime["spec"]["annotations"]["prometheus.io/port"]
            .as_str()
            .unwrap(),
        port.to_string()
    );
}

/// The surge container of every pod template: non-root, a read-only root filesystem, and
/// a writable emptyDir at /tmp (its HOME and temporary files in the images).
#[test]
fn surge_runs_as_non_root_on_a_read_only_root_with_a_writable_tmp() {
    let docs = deploy::manifests();
    let mut checked = 0;
    for doc in &docs {
        let pod = match doc.kind() {
            "ServingRuntime" => &doc.value["spec"],
            "Deployment" => &doc.value["spec"]["template"]["spec"],
            _ => continue,
        };
        let containers = pod["containers"].as_array().into_iter().flatten();
        for container in containers {
            let image = container["image"].as_str().unwrap_or("");
            if !image.contains("/surge/surge:") {
                continue;
            }
            let at = format!("{} container {}", doc.id(), container["name"]);
            let security = &container["securityContext"];
            assert_eq!(
                security["readOnlyRootFilesystem"], true,
                "{at}: readOnlyRootFilesystem"
            );
            let non_root =
                security["runAsNonRoot"] == true || pod["securityContext"]["runAsNonRoot"] == true;
            assert!(non_root, "{at}: runAsNonRoot");
            let tmp = container["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|m| m["mountPath"] == "/tmp")
                .unwrap_or_else(|| panic!("{at}: nothing writable at /tmp"));
            assert_ne!(tmp["readOnly"], true, "{at}: /tmp is read-only");
            let volume = pod["volumes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|v| v["name"] == tmp["name"])
                .unwrap_or_else(|| panic!("{at}: no volume {}", tmp["name"]));
            assert!(
                volume["emptyDir"].is_object(),
                "{at}: /tmp is not an emptyDir"
            );
            checked += 1;
        }
    }
    assert!(checked >= 2, "only {checked} surge containers found");
}
