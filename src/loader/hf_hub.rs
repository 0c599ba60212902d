//! `--model org/name[@revision]`: a model on the Hugging Face hub, fetched with
//! `hf-hub` into its cache (`HF_HOME`, default ~/.cache/huggingface) and loaded from the
//! snapshot directory. `HF_ENDPOINT` moves the hub, `HF_TOKEN` (or the token file in
//! `HF_HOME`) authenticates, and `HF_HUB_OFFLINE=1` uses the cache alone. Downloads show
//! surge's progress: a bar on a terminal, log lines otherwise.

use std::path::PathBuf;

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};

use super::progress::Progress;
use super::LoadError;

/// Files a model directory needs, and those it may have.
const REQUIRED: &[&str] = &["config.json", "tokenizer.json"];
const OPTIONAL: &[&str] = &["tokenizer_config.json", "generation_config.json"];
const SAFETENSORS: &str = "model.safetensors";
const SAFETENSORS_INDEX: &str = "model.safetensors.index.json";

/// A hub model and revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubModel {
    pub repo: String,
    pub revision: String,
}

impl HubModel {
    /// `org/name` or `org/name@revision` (revision defaults to `main`); `None` for
    /// anything else.
    pub fn parse(model: &str) -> Option<Self> {
        let (repo, revision) = match model.split_once('@') {
            Some((repo, rev)) if !rev.is_empty() => (repo, rev),
            Some(_) => return None,
            None => (model, "main"),
        };
        let (org, name) = repo.split_once('/')?;
        let valid = |part: &str| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        (valid(org) && valid(name)).then(|| Self {
            repo: repo.to_string(),
            revision: revision.to_string(),
        })
    }

    fn repo(&self) -> Repo {
        Repo::with_revision(self.repo.clone(), RepoType::Model, self.revision.clone())
    }
}

impl std::fmt::Display for HubModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.repo, self.revision)
    }
}

/// How to reach the hub (from `HF_HUB_OFFLINE` and `HF_TOKEN`, read by `config`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HubSettings {
    pub offline: bool,
    pub token: Option<String>,
}

/// Fetches (or, offline, finds) the model's files; returns the snapshot directory.
pub fn fetch(model: &HubModel, settings: &HubSettings) -> Result<PathBuf, LoadError> {
    let mut get = getter(model, settings)?;
    let config = get("config.json")?.ok_or_else(|| missing(model, settings, "config.json"))?;
    for file in &REQUIRED[1..] {
        get(file)?.ok_or_else(|| missing(model, settings, file))?;
    }
    for file in OPTIONAL {
        get(file)?;
    }
    match get(SAFETENSORS_INDEX)? {
        Some(index) => {
            for shard in shards(&index)? {
                get(&shard)?.ok_or_else(|| missing(model, settings, &shard))?;
            }
        }
        None => {
            get(SAFETENSORS)?.ok_or_else(|| missing(model, settings, SAFETENSORS))?;
        }
    }
    config
        .parent()
        .map(PathBuf::from)
        .ok_or_else(|| LoadError::MissingFile(config.clone()))
}

type Getter = Box<dyn FnMut(&str) -> Result<Option<PathBuf>, LoadError>>;

/// A function from a file name to its local path: `None` when the repo has no such file
/// (online) or the cache lacks it (offline).
fn getter(model: &HubModel, settings: &HubSettings) -> Result<Getter, LoadError> {
    if settings.offline {
        let cache = Cache::from_env().repo(model.repo());
        return Ok(Box::new(move |file| Ok(cache.get(file))));
    }
    let bar = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut builder = ApiBuilder::from_env().with_progress(false);
    if settings.token.is_some() {
        builder = builder.with_token(settings.token.clone());
    }
    let api = builder.build().map_err(|e| hub_error(model, "", e))?;
    let repo = api.repo(model.repo());
    let cache = Cache::from_env().repo(model.repo());
    let model = model.clone();
    Ok(Box::new(move |file| {
        if let Some(path) = cache.get(file) {
            return Ok(Some(path));
        }
        tracing::info!(model = %model, file, "fetching from the Hugging Face hub");
        let progress = HubProgress {
            label: model.to_string(),
            bar,
            progress: None,
        };
        match repo.download_with_progress(file, progress) {
            Ok(path) => Ok(Some(path)),
            Err(hf_hub::api::sync::ApiError::RequestError(e)) if is_not_found(&e) => Ok(None),
            Err(e) => Err(hub_error(&model, file, e)),
        }
    }))
}

/// hf-hub's download callbacks, shown as surge's [`Progress`] of one file.
struct HubProgress {
    label: String,
    bar: bool,
    progress: Option<Progress>,
}

impl hf_hub::api::Progress for HubProgress {
    fn init(&mut self, size: usize, filename: &str) {
        let label = format!("{} {filename}", self.label);
        self.progress = Some(Progress::new(&label, size as u64, self.bar));
    }

    fn update(&mut self, size: usize) {
        if let Some(progress) = &self.progress {
            progress.add(size as u64);
            progress.log_if_due();
        }
    }

    fn finish(&mut self) {
        if let Some(progress) = &self.progress {
            progress.finish();
        }
    }
}

fn is_not_found(e: &ureq::Error) -> bool {
    matches!(e, ureq::Error::Status(404, _))
}

fn hub_error(model: &HubModel, file: &str, e: impl std::fmt::Display) -> LoadError {
    LoadError::Hub(format!("{model}: {file}: {e}"))
}

fn missing(model: &HubModel, settings: &HubSettings, file: &str) -> LoadError {
    let where_ = if settings.offline {
        format!(
            "not in the Hugging Face cache at {} and HF_HUB_OFFLINE is set",
            Cache::from_env().path().display()
        )
    } else {
        "not in the repository".to_string()
    };
    LoadError::Hub(format!("{model}: {file} is {where_}"))
}

/// The shard files a `model.safetensors.index.json` names, each once.
fn shards(index: &std::path::Path) -> Result<Vec<String>, LoadError> {
    let text = std::fs::read_to_string(index).map_err(|source| LoadError::Io {
        file: index.to_path_buf(),
        source,
    })?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| LoadError::Json {
        file: index.to_path_buf(),
        message: e.to_string(),
    })?;
    let map = json["weight_map"]
        .as_object()
        .ok_or_else(|| LoadError::Field {
            file: index.to_path_buf(),
            field: "weight_map".into(),
            expected: "an object".into(),
            found: json["weight_map"].to_string(),
        })?;
    let mut files: Vec<String> = map
        .values()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    files.sort();
    files.dedup();
    if let Some(bad) = files.iter().find(|f| f.contains('/') || f.contains("..")) {
        return Err(LoadError::Field {
            file: index.to_path_buf(),
            field: "weight_map".into(),
            expected: "file names in the same directory".into(),
            found: bad.clone(),
        });
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_repo_and_revision() {
        let m = HubModel::parse("meta-llama/Llama-3.1-8B-Instruct").unwrap();
        assert_eq!(
            (m.repo.as_str(), m.revision.as_str()),
            ("meta-llama/Llama-3.1-8B-Instruct", "main")
        );
        let m = HubModel::parse("org/name@v1.0").unwrap();
        assert_eq!(m.revision, "v1.0");
        for bad in [
            "name",
            "org/",
            "/name",
            "a/b/c",
            "org/name@",
            "../x",
            "org/..",
            "org/na me",
            "./model",
            "oci://host/repo:tag",
        ] {
            assert_eq!(HubModel::parse(bad), None, "{bad}");
        }
    }
}
