//! Model sources: turns `--model` into a model config, weights and a tokenizer.

pub mod error;
pub mod gguf;
pub mod hf_config;
pub mod hf_dir;
pub mod weights;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};

pub use error::LoadError;
pub use hf_config::LlamaConfig;
pub use weights::{DTypeChoice, Weights};

use crate::frontend::tokenizer::Tokenizer;
use crate::model::llama::Llama;
use crate::model::CausalLm;

/// Where a model comes from. OCI and hub sources arrive with their own issues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A directory in Hugging Face layout (`/mnt/models` under KServe).
    Local(PathBuf),
    /// A single GGUF file.
    Gguf(PathBuf),
}

impl ModelSource {
    /// The source's kind, as `surge_model_info{source}` shows it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Local(_) => "local",
            Self::Gguf(_) => "gguf",
        }
    }

    /// Classifies a `--model` argument that names something on local disk.
    pub fn parse(model: &str) -> Result<Self, LoadError> {
        let path = Path::new(model);
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        {
            if !path.is_file() {
                return Err(LoadError::MissingFile(path.to_path_buf()));
            }
            return Ok(Self::Gguf(path.to_path_buf()));
        }
        if path.is_dir() {
            return Ok(Self::Local(path.to_path_buf()));
        }
        Err(LoadError::UnknownSource(model.to_string()))
    }
}

/// Everything the runner and the frontend need from a model source.
pub struct LoadedModel {
    pub config: LlamaConfig,
    pub model: Arc<dyn CausalLm>,
    pub tokenizer: Tokenizer,
    /// Activation (and KV cache) dtype.
    pub dtype: DType,
    pub device: Device,
}

/// Loads a model onto `device`: config, tokenizer, and every weight (so that any
/// problem with the files surfaces here, not at the first request).
pub fn load(
    source: &ModelSource,
    dtype: DTypeChoice,
    device: &Device,
) -> Result<LoadedModel, LoadError> {
    let (config, weights, tokenizer) = match source {
        ModelSource::Local(dir) => hf_dir::load(dir, dtype, device)?,
        ModelSource::Gguf(file) => gguf::load(file, dtype, device)?,
    };
    let model = Llama::load(&config, &weights)?;
    Ok(LoadedModel {
        config,
        model: Arc::new(model),
        tokenizer,
        dtype: weights.dtype(),
        device: device.clone(),
    })
}
