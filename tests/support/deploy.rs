//! The manifests in `deploy/` as JSON documents, JSON-schema validators built from the
//! CRDs and the Kubernetes OpenAPI schema in `tests/fixtures/crds/` (strict about unknown
//! fields, as `kubectl apply` with server-side field validation is), and parsers for the
//! value syntaxes Kubernetes, Knative and Prometheus use (durations, quantities).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::{json, Map, Value};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The copies of the CRDs and of swagger.json the tests validate against.
pub fn crds_dir() -> PathBuf {
    repo().join("tests/fixtures/crds")
}

/// One YAML document of a manifest file.
#[derive(Debug, Clone)]
pub struct Doc {
    /// Relative to the repository root, e.g. `deploy/kserve/servingruntime.yaml`.
    pub file: String,
    pub value: Value,
}

impl Doc {
    pub fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or("")
    }

    pub fn api_version(&self) -> &str {
        self.value["apiVersion"].as_str().unwrap_or("")
    }

    pub fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or("")
    }

    /// `file: Kind/name`, for messages.
    pub fn id(&self) -> String {
        format!("{}: {}/{}", self.file, self.kind(), self.name())
    }
}

/// Parses every YAML document of `text` (empty documents skipped).
pub fn parse_yaml_documents(text: &str) -> Result<Vec<Value>, serde_norway::Error> {
    let mut docs = Vec::new();
    for document in serde_norway::Deserializer::from_str(text) {
        let value = Value::deserialize(document)?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// Every `*.yaml` under `deploy/`, sorted.
pub fn manifest_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&repo().join("deploy"), &mut files);
    files.sort();
    assert!(!files.is_empty(), "no manifests under deploy/");
    files
}

/// Every document of every manifest under `deploy/`.
pub fn manifests() -> Vec<Doc> {
    let mut docs = Vec::new();
    for path in manifest_files() {
        let file = path
            .strip_prefix(repo())
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let values = parse_yaml_documents(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(!values.is_empty(), "{file}: no documents");
        docs.extend(values.into_iter().map(|value| Doc {
            file: file.clone(),
            value,
        }));
    }
    docs
}

/// The documents of one kind.
pub fn of_kind<'a>(docs: &'a [Doc], kind: &str) -> Vec<&'a Doc> {
    docs.iter().filter(|d| d.kind() == kind).collect()
}

/// The CRD files, by `apiVersion` and `kind` of the objects they define.
const CRD_FILES: &[(&str, &str, &str)] = &[
    (
        "serving.kserve.io/v1alpha1",
        "ServingRuntime",
        "serving.kserve.io_servingruntimes.yaml",
    ),
    (
        "serving.kserve.io/v1beta1",
        "InferenceService",
        "serving.kserve.io_inferenceservices.yaml",
    ),
    ("serving.knative.dev/v1", "Service", "service.yaml"),
    (
        "keda.sh/v1alpha1",
        "ScaledObject",
        "keda.sh_scaledobjects.yaml",
    ),
    (
        "keda.sh/v1alpha1",
        "TriggerAuthentication",
        "keda.sh_triggerauthentications.yaml",
    ),
    (
        "http.keda.sh/v1beta1",
        "InterceptorRoute",
        "http.keda.sh_interceptorroutes.yaml",
    ),
    (
        "monitoring.coreos.com/v1",
        "PodMonitor",
        "monitoring.coreos.com_podmonitors.yaml",
    ),
    (
        "monitoring.coreos.com/v1",
        "PrometheusRule",
        "monitoring.coreos.com_prometheusrules.yaml",
    ),
];

/// The Kubernetes quantity syntax, as the CRDs' int-or-string quantity fields spell it.
pub const QUANTITY_PATTERN: &str = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$";

const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";

/// Where an object's schema came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaSource {
    /// A CRD file in `tests/fixtures/crds/`.
    Crd(String),
    /// A definition of `kubernetes/swagger.json`.
    Kubernetes(String),
}

/// Compiled validators for every kind `deploy/` may use.
pub struct Schemas {
    /// swagger.json's definitions, made strict (see `strict_swagger`).
    definitions: Value,
    /// `apiVersion kind` → the definition name in swagger.json.
    kubernetes_kinds: HashMap<(String, String), String>,
    validators: HashMap<(String, String), (SchemaSource, jsonschema::Validator)>,
}

impl Schemas {
    pub fn load() -> Schemas {
        let swagger: Value = serde_json::from_str(
            &std::fs::read_to_string(crds_dir().join("kubernetes/swagger.json")).unwrap(),
        )
        .unwrap();
        let mut definitions = swagger["definitions"].clone();
        let mut kubernetes_kinds = HashMap::new();
        for (name, definition) in definitions.as_object().unwrap() {
            for gvk in definition["x-kubernetes-group-version-kind"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let group = gvk["group"].as_str().unwrap_or("");
                let version = gvk["version"].as_str().unwrap_or("");
                let api_version = if group.is_empty() {
                    version.to_string()
                } else {
                    format!("{group}/{version}")
                };
                let kind = gvk["kind"].as_str().unwrap_or("").to_string();
                kubernetes_kinds
                    .entry((api_version, kind))
                    .or_insert_with(|| name.clone());
            }
        }
        strict_swagger(&mut definitions);
        Schemas {
            definitions,
            kubernetes_kinds,
            validators: HashMap::new(),
        }
    }

    /// The schema of `apiVersion`/`kind`: a CRD's `openAPIV3Schema` (with `metadata` as
    /// Kubernetes' ObjectMeta) or a swagger.json definition, made strict about unknown
    /// fields, with `apiVersion` and `kind` pinned.
    pub fn schema_for(&self, api_version: &str, kind: &str) -> Option<(SchemaSource, Value)> {
        let pin = json!({
            "required": ["apiVersion", "kind"],
            "properties": {
                "apiVersion": {"enum": [api_version]},
                "kind": {"enum": [kind]},
            }
        });
        if let Some((_, _, file)) = CRD_FILES
            .iter()
            .find(|(a, k, _)| *a == api_version && *k == kind)
        {
            let crd =
                parse_yaml_documents(&std::fs::read_to_string(crds_dir().join(file)).unwrap())
                    .unwrap()
                    .remove(0);
            let version = api_version.rsplit('/').next().unwrap();
            let mut schema = crd["spec"]["versions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == version)
                .unwrap_or_else(|| panic!("{file} has no version {version}"))["schema"]
                ["openAPIV3Schema"]
                .clone();
            strict_structural(&mut schema);
            schema["properties"]["metadata"] =
                json!({"$ref": format!("#/definitions/{OBJECT_META}")});
            let schema = json!({
                "definitions": self.definitions,
                "allOf": [schema, pin],
            });
            return Some((SchemaSource::Crd(file.to_string()), schema));
        }
        let name = self
            .kubernetes_kinds
            .get(&(api_version.to_string(), kind.to_string()))?;
        let schema = json!({
            "definitions": self.definitions,
            "allOf": [{"$ref": format!("#/definitions/{name}")}, pin],
        });
        Some((SchemaSource::Kubernetes(name.clone()), schema))
    }

    /// The compiled validator of `apiVersion`/`kind`; panics for a kind neither the
    /// CRDs nor swagger.json define.
    pub fn validator(
        &mut self,
        api_version: &str,
        kind: &str,
    ) -> &(SchemaSource, jsonschema::Validator) {
        let key = (api_version.to_string(), kind.to_string());
        if !self.validators.contains_key(&key) {
            let (source, schema) = self.schema_for(api_version, kind).unwrap_or_else(|| {
                panic!("no schema for apiVersion {api_version} kind {kind} in the CRDs or swagger.json")
            });
            let validator = jsonschema::draft4::new(&schema).unwrap_or_else(|e| {
                panic!("the schema of {api_version} {kind} does not compile: {e}")
            });
            self.validators.insert(key.clone(), (source, validator));
        }
        &self.validators[&key]
    }

    /// The validation errors of a document, one line each (`path: message`).
    pub fn errors(&mut self, doc: &Value) -> Vec<String> {
        let api_version = doc["apiVersion"].as_str().unwrap_or("");
        let kind = doc["kind"].as_str().unwrap_or("");
        self.errors_as(api_version, kind, doc)
    }

    /// The validation errors of `doc` against the schema of `apiVersion`/`kind` (which a
    /// broken copy may no longer say correctly).
    pub fn errors_as(&mut self, api_version: &str, kind: &str, doc: &Value) -> Vec<String> {
        let (_, validator) = self.validator(api_version, kind);
        validator
            .iter_errors(doc)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect()
    }
}

/// Kubernetes' structural-schema rules as strict field validation applies them: an object
/// that does not say `x-kubernetes-preserve-unknown-fields: true` and has no
/// `additionalProperties` of its own admits only its `properties`. `nullable` becomes a
/// null type. Embedded resources get their implicit `apiVersion`, `kind`, `metadata`.
pub fn strict_structural(schema: &mut Value) {
    let Some(object) = schema.as_object_mut() else {
        return;
    };
    if object.get("x-kubernetes-embedded-resource") == Some(&Value::Bool(true)) {
        let properties = object
            .entry("properties")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .unwrap();
        properties
            .entry("apiVersion")
            .or_insert_with(|| json!({"type": "string"}));
        properties
            .entry("kind")
            .or_insert_with(|| json!({"type": "string"}));
        properties
            .entry("metadata")
            .or_insert_with(|| json!({"$ref": format!("#/definitions/{OBJECT_META}")}));
    }
    let preserves = object.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    let is_object = object.get("type").and_then(Value::as_str) == Some("object");
    if is_object && !preserves && !object.contains_key("additionalProperties") {
        object.insert("additionalProperties".into(), Value::Bool(false));
    }
    // Go's RE2 inline flags (`(?i)`) have no ECMA 262 form, which JSON Schema's `pattern`
    // uses: such a pattern (one, on a Thanos-only PrometheusRule field) is dropped.
    if object
        .get("pattern")
        .and_then(Value::as_str)
        .is_some_and(|p| p.contains("(?i)"))
    {
        object.remove("pattern");
    }
    if object.get("nullable") == Some(&Value::Bool(true)) {
        if let Some(Value::String(t)) = object.get("type").cloned() {
            object.insert("type".into(), json!([t, "null"]));
        }
    }
    for key in ["properties", "patternProperties", "definitions"] {
        if let Some(Value::Object(children)) = object.get_mut(key) {
            for child in children.values_mut() {
                strict_structural(child);
            }
        }
    }
    for key in ["items", "additionalProperties", "not"] {
        if let Some(child) = object.get_mut(key) {
            strict_structural(child);
        }
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(Value::Array(children)) = object.get_mut(key) {
            for child in children {
                strict_structural(child);
            }
        }
    }
}

/// swagger.json as the API server reads objects: a definition with `properties` admits
/// no others (strict field validation); IntOrString is an integer or a string; a
/// Quantity is a number or a string in the quantity syntax.
pub fn strict_swagger(definitions: &mut Value) {
    let definitions = definitions.as_object_mut().unwrap();
    for (name, definition) in definitions.iter_mut() {
        match name.as_str() {
            "io.k8s.apimachinery.pkg.util.intstr.IntOrString" => {
                *definition = json!({"anyOf": [{"type": "integer"}, {"type": "string"}]});
            }
            "io.k8s.apimachinery.pkg.api.resource.Quantity" => {
                *definition = json!({"anyOf": [
                    {"type": "number"},
                    {"type": "string", "pattern": QUANTITY_PATTERN},
                ]});
            }
            _ => close_objects(definition),
        }
    }
}

fn close_objects(schema: &mut Value) {
    let Some(object) = schema.as_object_mut() else {
        return;
    };
    let preserves = object.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if object.contains_key("properties")
        && !preserves
        && !object.contains_key("additionalProperties")
    {
        object.insert("additionalProperties".into(), Value::Bool(false));
    }
    if let Some(Value::Object(children)) = object.get_mut("properties") {
        for child in children.values_mut() {
            close_objects(child);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(child) = object.get_mut(key) {
            close_objects(child);
        }
    }
}

/// A path into a JSON document, for messages and allow-lists: `spec.containers.0.args`.
pub type JsonPath = Vec<String>;

/// Every node of `value` with its path, depth first, the root included.
fn all_paths(value: &Value) -> Vec<(JsonPath, &Value)> {
    fn walk<'a>(value: &'a Value, path: &mut JsonPath, out: &mut Vec<(JsonPath, &'a Value)>) {
        out.push((path.clone(), value));
        let children: Vec<(String, &Value)> = match value {
            Value::Object(map) => map.iter().map(|(k, v)| (k.clone(), v)).collect(),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, v)| (i.to_string(), v))
                .collect(),
            _ => Vec::new(),
        };
        for (key, child) in children {
            path.push(key);
            walk(child, path, out);
            path.pop();
        }
    }
    let mut out = Vec::new();
    walk(value, &mut Vec::new(), &mut out);
    out
}

/// Every object node of `value` with its path (the root included).
pub fn object_paths(value: &Value) -> Vec<JsonPath> {
    all_paths(value)
        .into_iter()
        .filter(|(_, v)| v.is_object())
        .map(|(p, _)| p)
        .collect()
}

/// Every scalar leaf of `value` with its path.
pub fn scalar_paths(value: &Value) -> Vec<JsonPath> {
    all_paths(value)
        .into_iter()
        .filter(|(_, v)| !v.is_object() && !v.is_array())
        .map(|(p, _)| p)
        .collect()
}

/// The node at `path`, mutably.
pub fn node_mut<'a>(value: &'a mut Value, path: &[String]) -> &'a mut Value {
    path.iter().fold(value, |node, key| match node {
        Value::Object(map) => map.get_mut(key).unwrap(),
        Value::Array(items) => &mut items[key.parse::<usize>().unwrap()],
        _ => panic!("no node at {path:?}"),
    })
}

/// A copy of `doc` with an extra, unknown field in the object at `path`.
pub fn with_unknown_field(doc: &Value, path: &[String]) -> Value {
    let mut broken = doc.clone();
    let object: &mut Map<String, Value> = node_mut(&mut broken, path).as_object_mut().unwrap();
    object.insert("surgeUnknownField".into(), json!("x"));
    broken
}

/// A copy of `doc` whose scalar at `path` is replaced by an object (a type error for
/// every scalar field a schema types).
pub fn with_wrong_type(doc: &Value, path: &[String]) -> Value {
    let mut broken = doc.clone();
    *node_mut(&mut broken, path) = json!({"surgeWrongType": 1});
    broken
}

/// Parses a Go `time.ParseDuration` duration (what Knative and the KEDA HTTP add-on read):
/// `[-+]?([0-9]*(\.[0-9]*)?[a-z]+)+`, units ns us µs ms s m h, or a bare `0`. Prometheus's
/// durations (`15s`, `5m`, `1h30m`) are a subset once `d`, `w`, `y` are left out.
pub fn parse_go_duration(text: &str) -> Result<std::time::Duration, String> {
    let err = || format!("{text:?} is not a Go duration");
    let s = text.strip_prefix('+').unwrap_or(text);
    if s.starts_with('-') {
        return Err(format!("{text:?} is negative"));
    }
    if s == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    if s.is_empty() {
        return Err(err());
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(err)?;
        let number: f64 = rest[..number_len].parse().map_err(|_| err())?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(err()),
        };
        total += number * seconds;
        rest = &rest[unit_len..];
    }
    Ok(std::time::Duration::from_secs_f64(total))
}

/// Parses a Kubernetes resource quantity (`4`, `500m`, `20Gi`, `1e3`) into its value.
pub fn parse_quantity(text: &str) -> Result<f64, String> {
    let err = || format!("{text:?} is not a Kubernetes quantity");
    let pattern = regex_lite(QUANTITY_PATTERN);
    if !pattern(text) {
        return Err(err());
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number: f64 = number.parse().map_err(|_| err())?;
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exponent => {
            let e: i32 = exponent[1..].parse().map_err(|_| err())?;
            10f64.powi(e)
        }
    };
    Ok(number * factor)
}

/// The quantity pattern as a matcher, through the JSON-schema validator's own regex
/// engine (so the tests and the schemas agree on the syntax).
fn regex_lite(pattern: &str) -> impl Fn(&str) -> bool {
    let validator =
        jsonschema::draft4::new(&json!({"type": "string", "pattern": pattern})).unwrap();
    move |s: &str| validator.is_valid(&json!(s))
}

/// What `surge serve ARGS --check-args` parsed: its `{:#?}` output, or its error.
pub fn surge_check_args(args: &[String]) -> Result<String, String> {
    let output = Command::new(env!("CARGO_BIN_EXE_surge"))
        .arg("serve")
        .args(args)
        .arg("--check-args")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .expect("cannot run surge");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(format!("{}\n{stderr}", output.status))
    }
}

/// The value of `field: VALUE,` in a `{:#?}` dump (the first match).
pub fn debug_field(dump: &str, field: &str) -> Option<String> {
    let prefix = format!("{field}: ");
    dump.lines().find_map(|line| {
        line.trim()
            .strip_prefix(&prefix)
            .map(|v| v.trim_end_matches(',').to_string())
    })
}
