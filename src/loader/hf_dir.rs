//! A model directory in Hugging Face layout: config.json, safetensors (one file or
//! sharded through model.safetensors.index.json) and the tokenizer files; with
//! `--load-format dummy`, config.json and tokenizer.json are enough.

use std::path::{Path, PathBuf};

use candle_core::Device;

use super::{DTypeChoice, LlamaConfig, LoadError, LoadFormat, Weights};
use crate::frontend::tokenizer::Tokenizer;

pub fn load(
    dir: &Path,
    dtype: DTypeChoice,
    load_format: LoadFormat,
    device: &Device,
) -> Result<(LlamaConfig, Weights, Tokenizer), LoadError> {
    let config = LlamaConfig::from_file(&dir.join("config.json"))?;
    let dtype = dtype.resolve(device);
    let weights = match load_format {
        LoadFormat::Auto => Weights::from_safetensors(&safetensors_files(dir)?, dtype, device)?,
        LoadFormat::Dummy => {
            tracing::warn!(
                dir = %dir.display(),
                num_parameters = config.num_parameters(),
                dtype = ?dtype,
                "--load-format dummy: weights are random (normal, std {}; norms 1), outputs are meaningless",
                super::dummy::DUMMY_STD
            );
            Weights::random(dtype, device)
        }
    };
    let tokenizer = Tokenizer::from_hf_dir(dir).map_err(|e| LoadError::Tokenizer {
        file: dir.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok((config, weights, tokenizer))
}

/// The weight files: the shards named by the index, or the single `model.safetensors`.
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let index = dir.join("model.safetensors.index.json");
    if !index.exists() {
        let single = dir.join("model.safetensors");
        if !single.is_file() {
            return Err(LoadError::MissingWeights(dir.to_path_buf()));
        }
        return Ok(vec![single]);
    }
    let text = std::fs::read_to_string(&index).map_err(|e| LoadError::io(&index, e))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| LoadError::Json {
        file: index.clone(),
        message: e.to_string(),
    })?;
    let Some(map) = json.get("weight_map").and_then(|m| m.as_object()) else {
        return Err(LoadError::field(
            &index,
            "weight_map",
            "an object of tensor → file",
            "nothing",
        ));
    };
    let mut files = Vec::new();
    for (tensor, file) in map {
        let Some(name) = file.as_str().filter(|n| is_plain_file_name(n)) else {
            return Err(LoadError::field(
                &index,
                format!("weight_map.{tensor}"),
                "a file name in this directory",
                file.to_string(),
            ));
        };
        let path = dir.join(name);
        if !files.contains(&path) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Shard names must stay inside the model directory.
fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('/') && !name.contains('\\') && name != ".." && name != "."
}
