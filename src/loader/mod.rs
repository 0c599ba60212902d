//! Model sources: turns `--model` into a model config, weights and a tokenizer.

pub mod dummy;
pub mod error;
pub mod gguf;
pub mod hf_config;
pub mod hf_dir;
pub mod hf_hub;
pub mod oci;
pub mod progress;
pub mod wait_for_model;
pub mod weights;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};

pub use dummy::LoadFormat;
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
    /// `org/name[@revision]` on the Hugging Face hub.
    HfHub(hf_hub::HubModel),
    /// `oci://host[:port]/repo:tag` or `@sha256:…`: a ModelCar image.
    Oci(oci::OciReference),
}

impl ModelSource {
    /// The source's kind, as `surge_model_info{source}` shows it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Local(_) => "local",
            Self::Gguf(_) => "gguf",
            Self::HfHub(_) => "hf",
            Self::Oci(_) => "oci",
        }
    }

    /// Fetches a remote source into its cache and returns the local source to load;
    /// a local source is returned as it is.
    pub fn fetch(&self, settings: &FetchSettings) -> Result<ModelSource, LoadError> {
        match self {
            Self::HfHub(model) => Ok(Self::Local(hf_hub::fetch(model, &settings.hub)?)),
            Self::Oci(image) => Ok(Self::Local(oci::pull_blocking(image, &settings.oci)?.dir)),
            local => Ok(local.clone()),
        }
    }

    /// Classifies a `--model` argument: a directory, a .gguf file, or a hub id.
    pub fn parse(model: &str) -> Result<Self, LoadError> {
        if model.starts_with(oci::reference::SCHEME) {
            return Ok(Self::Oci(oci::OciReference::parse(model)?));
        }
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
        if let Some(hub) = hf_hub::HubModel::parse(model) {
            return Ok(Self::HfHub(hub));
        }
        Err(LoadError::UnknownSource(model.to_string()))
    }
}

/// How remote sources are reached.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchSettings {
    pub hub: hf_hub::HubSettings,
    pub oci: oci::PullOptions,
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

/// How to load: `--dtype` and `--load-format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOptions {
    pub dtype: DTypeChoice,
    pub load_format: LoadFormat,
}

/// Loads a model onto `device` with the source's own weights; see [`load_with`].
pub fn load(
    source: &ModelSource,
    dtype: DTypeChoice,
    device: &Device,
) -> Result<LoadedModel, LoadError> {
    let options = LoadOptions {
        dtype,
        load_format: LoadFormat::Auto,
    };
    load_with(source, &options, device)
}

/// Loads a model onto `device`: config, tokenizer, and every weight (so that any
/// problem with the files surfaces here, not at the first request).
pub fn load_with(
    source: &ModelSource,
    options: &LoadOptions,
    device: &Device,
) -> Result<LoadedModel, LoadError> {
    let LoadOptions { dtype, load_format } = *options;
    let (config, weights, tokenizer) = match source {
        ModelSource::Local(dir) => hf_dir::load(dir, dtype, load_format, device)?,
        ModelSource::Gguf(file) if load_format == LoadFormat::Dummy => {
            return Err(LoadError::DummyGguf(file.clone()))
        }
        ModelSource::Gguf(file) => gguf::load(file, dtype, device)?,
        remote => return Err(LoadError::NotFetched(format!("{remote:?}"))),
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
