//! Every manifest in `deploy/` is valid against the schema of its kind — the
//! `openAPIV3Schema` of its CRD (KServe 0.20, Knative Serving 1.23, KEDA 2.20, KEDA HTTP
//! add-on 0.15, Prometheus Operator) or Kubernetes 1.36's swagger.json — with a real JSON
//! schema validator, strict about unknown fields as `kubectl apply` is; and broken copies
//! of each manifest (an unknown field in each object, a wrong type at each leaf) fail,
//! except inside the free-form maps the schemas leave open, which are listed here.

mod support;

use support::deploy::{self, Doc, SchemaSource, Schemas};

/// Where the schemas admit any key (free-form string maps), as the last path element and
/// the kind whose schema makes it so. Anything else that accepts a broken copy fails the
/// test.
const OPEN_MAPS: &[(&str, &str)] = &[
    // ObjectMeta and pod templates: map[string]string.
    ("*", "annotations"),
    ("*", "labels"),
    ("*", "matchLabels"),
    // Service.spec.selector is map[string]string.
    ("Service", "selector"),
    // KEDA trigger metadata is map[string]string (each scaler reads its own keys).
    ("ScaledObject", "metadata"),
];

fn is_open_map(kind: &str, path: &[String]) -> bool {
    let Some(last) = path.last() else {
        return false;
    };
    // `metadata` as a KEDA trigger's field, not an object's ObjectMeta.
    if last == "metadata" && path.len() == 1 {
        return false;
    }
    OPEN_MAPS
        .iter()
        .any(|(k, field)| (*k == "*" || *k == kind) && field == last)
}

fn schemas() -> Schemas {
    Schemas::load()
}

#[test]
fn every_manifest_is_valid_against_its_schema() {
    let docs = deploy::manifests();
    let mut schemas = schemas();
    let mut failures = Vec::new();
    for doc in &docs {
        let errors = schemas.errors(&doc.value);
        let (source, _) = schemas.validator(doc.api_version(), doc.kind());
        eprintln!(
            "{} valid against {source:?}: {}",
            doc.id(),
            errors.is_empty()
        );
        if !errors.is_empty() {
            failures.push(format!("{}:\n  {}", doc.id(), errors.join("\n  ")));
        }
    }
    assert!(
        failures.is_empty(),
        "invalid manifests:\n{}",
        failures.join("\n")
    );
}

#[test]
fn each_kind_is_checked_against_the_schema_it_should_be() {
    let docs = deploy::manifests();
    let mut schemas = schemas();
    let expected = [
        ("ServingRuntime", "serving.kserve.io_servingruntimes.yaml"),
        (
            "InferenceService",
            "serving.kserve.io_inferenceservices.yaml",
        ),
        ("ScaledObject", "keda.sh_scaledobjects.yaml"),
        (
            "TriggerAuthentication",
            "keda.sh_triggerauthentications.yaml",
        ),
        ("InterceptorRoute", "http.keda.sh_interceptorroutes.yaml"),
        ("PodMonitor", "monitoring.coreos.com_podmonitors.yaml"),
        (
            "PrometheusRule",
            "monitoring.coreos.com_prometheusrules.yaml",
        ),
    ];
    for (kind, file) in expected {
        let doc = docs
            .iter()
            .find(|d| d.kind() == kind)
            .unwrap_or_else(|| panic!("deploy/ has no {kind}"));
        let (source, _) = schemas.validator(doc.api_version(), kind);
        assert_eq!(*source, SchemaSource::Crd(file.to_string()), "{kind}");
    }
    for (kind, definition) in [
        ("Deployment", "io.k8s.api.apps.v1.Deployment"),
        ("Service", "io.k8s.api.core.v1.Service"),
        ("ServiceAccount", "io.k8s.api.core.v1.ServiceAccount"),
        ("Secret", "io.k8s.api.core.v1.Secret"),
        ("RoleBinding", "io.k8s.api.rbac.v1.RoleBinding"),
    ] {
        let doc = docs
            .iter()
            .find(|d| d.kind() == kind)
            .unwrap_or_else(|| panic!("deploy/ has no {kind}"));
        let (source, _) = schemas.validator(doc.api_version(), kind);
        assert_eq!(
            *source,
            SchemaSource::Kubernetes(definition.to_string()),
            "{kind}"
        );
    }
}

/// For each document: every broken copy (an unknown key in each object, an object in
/// place of each scalar) must fail, except inside the OPEN_MAPS.
#[test]
fn broken_copies_of_each_manifest_fail() {
    let docs = deploy::manifests();
    let mut schemas = schemas();
    let mut accepted = Vec::new();
    let mut num_checked = 0;
    for doc in &docs {
        let mut num_failed = 0;
        let unknown_fields = deploy::object_paths(&doc.value).into_iter().map(|path| {
            (
                deploy::with_unknown_field(&doc.value, &path),
                path,
                "unknown field in",
            )
        });
        let wrong_types = deploy::scalar_paths(&doc.value).into_iter().map(|path| {
            (
                deploy::with_wrong_type(&doc.value, &path),
                path,
                "object in place of",
            )
        });
        for (broken, path, what) in unknown_fields.chain(wrong_types) {
            num_checked += 1;
            if schemas
                .errors_as(doc.api_version(), doc.kind(), &broken)
                .is_empty()
            {
                // A wrong type at a map's value is still caught (the map holds strings);
                // only keys added to an open map may pass.
                let open = what == "unknown field in" && is_open_map(doc.kind(), &path);
                if !open {
                    accepted.push(format!("{}: {what} {}", doc.id(), path.join(".")));
                }
            } else {
                num_failed += 1;
            }
        }
        assert!(num_failed > 0, "{}: no broken copy failed", doc.id());
    }
    eprintln!(
        "{num_checked} broken copies of {} documents checked",
        docs.len()
    );
    assert!(
        accepted.is_empty(),
        "broken copies the schemas accepted:\n{}",
        accepted.join("\n")
    );
}

/// The strictness the tests rely on, shown on hand-made objects: each schema rejects an
/// unknown field at its top, in `spec`, and deep inside (a container), and the Kubernetes
/// quantity syntax is enforced.
#[test]
fn the_validator_rejects_what_the_api_server_rejects() {
    let mut schemas = schemas();
    let docs = deploy::manifests();
    let find = |kind: &str| -> &Doc { docs.iter().find(|d| d.kind() == kind).unwrap() };

    let runtime = &find("ServingRuntime").value;
    let mut bad = runtime.clone();
    bad["spec"]["containers"][0]["imagePullPolicyy"] = "Always".into();
    let errors = schemas.errors(&bad);
    assert!(
        errors.iter().any(|e| e.contains("imagePullPolicyy")),
        "a misspelt container field must fail: {errors:?}"
    );

    let deployment = &find("Deployment").value;
    let mut bad = deployment.clone();
    bad["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] =
        "32 GiB".into();
    assert!(!schemas.errors(&bad).is_empty(), "'32 GiB' is no quantity");
    let mut bad = deployment.clone();
    bad["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "8080".into();
    assert!(
        !schemas.errors(&bad).is_empty(),
        "containerPort is an integer"
    );
    let mut bad = deployment.clone();
    bad["metadata"]["nmae"] = "x".into();
    assert!(!schemas.errors(&bad).is_empty(), "ObjectMeta is closed");

    let isvc = find("InferenceService");
    let mut bad = isvc.value.clone();
    bad["kind"] = "InferenceServices".into();
    assert!(
        !schemas
            .errors_as(isvc.api_version(), isvc.kind(), &bad)
            .is_empty(),
        "kind is pinned"
    );

    let mut bad = find("ScaledObject").value.clone();
    bad["spec"]["minReplicaCount"] = "1".into();
    assert!(
        !schemas.errors(&bad).is_empty(),
        "minReplicaCount is an integer"
    );
}

/// The copies in tests/fixtures/crds/ equal the shared folder they came from, when it is
/// there (a developer's checkout; CI may have only the copies).
#[test]
fn crd_copies_match_the_shared_folder() {
    let shared = deploy::repo().join("../shared/crds");
    if !shared.is_dir() {
        eprintln!("{} is absent: nothing to compare", shared.display());
        return;
    }
    let copies = deploy::crds_dir();
    let mut compared = 0;
    for entry in walk(&copies) {
        let rel = entry.strip_prefix(&copies).unwrap();
        if rel == std::path::Path::new("README.md") {
            continue;
        }
        let original = shared.join(rel);
        assert!(original.is_file(), "{} has no original", rel.display());
        assert!(
            std::fs::read(&entry).unwrap() == std::fs::read(&original).unwrap(),
            "{} differs from {}",
            entry.display(),
            original.display()
        );
        compared += 1;
    }
    assert!(compared >= 10, "only {compared} files compared");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
