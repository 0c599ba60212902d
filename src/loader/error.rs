//! The loader's error type: every variant names the file and what was wrong in it.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("model file not found: {0}")]
    MissingFile(PathBuf),
    #[error("{}: no weights: model.safetensors not found, nor model.safetensors.index.json (for random weights of its config.json, as in benchmarks, pass --load-format dummy)", .0.display())]
    MissingWeights(PathBuf),
    #[error("{}: --load-format dummy needs a model directory (config.json and tokenizer.json), not a GGUF file", .0.display())]
    DummyGguf(PathBuf),
    #[error("`{0}` is neither a model directory, a .gguf file, nor a Hugging Face hub id (org/name[@revision])")]
    UnknownSource(String),
    #[error("Hugging Face hub: {0}")]
    Hub(String),
    #[error(transparent)]
    Oci(#[from] super::oci::OciError),
    #[error("{0} is remote: fetch it (ModelSource::fetch) before loading")]
    NotFetched(String),
    #[error("{file}: cannot read: {source}")]
    Io {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: invalid JSON: {message}")]
    Json { file: PathBuf, message: String },
    #[error("{file}: field `{field}`: expected {expected}, found {found}")]
    Field {
        file: PathBuf,
        field: String,
        expected: String,
        found: String,
    },
    #[error("{file}: missing tensor `{name}`")]
    MissingTensor { file: PathBuf, name: String },
    #[error("{file}: tensor `{name}`: expected shape {expected:?}, found {found:?}")]
    TensorShape {
        file: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{file}: tensor `{name}`: unsupported dtype {found} (expected {expected})")]
    TensorDType {
        file: PathBuf,
        name: String,
        expected: String,
        found: String,
    },
    #[error("{file}: corrupt or truncated {format} data: {message}")]
    Corrupt {
        file: PathBuf,
        format: &'static str,
        message: String,
    },
    #[error("{file}: tokenizer: {message}")]
    Tokenizer { file: PathBuf, message: String },
    #[error("{0}")]
    Candle(#[from] candle_core::Error),
}

impl LoadError {
    pub(crate) fn field(
        file: impl Into<PathBuf>,
        field: impl Into<String>,
        expected: impl Into<String>,
        found: impl Into<String>,
    ) -> Self {
        Self::Field {
            file: file.into(),
            field: field.into(),
            expected: expected.into(),
            found: found.into(),
        }
    }

    pub(crate) fn io(file: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let file = file.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            return Self::MissingFile(file);
        }
        Self::Io { file, source }
    }
}
