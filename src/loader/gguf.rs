//! A GGUF file: the config and tokenizer come from its metadata, the weights stay quantized.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::Device;

use super::{DTypeChoice, LlamaConfig, LoadError, Weights};
use crate::frontend::gguf_tokenizer::tokenizer_from_gguf;
use crate::frontend::tokenizer::Tokenizer;

pub fn load(
    path: &Path,
    dtype: DTypeChoice,
    device: &Device,
) -> Result<(LlamaConfig, Weights, Tokenizer), LoadError> {
    if !matches!(dtype, DTypeChoice::Auto | DTypeChoice::F32) {
        return Err(LoadError::field(
            path,
            "--dtype",
            "auto or f32 (GGUF models compute in f32)",
            format!("{dtype:?}").to_lowercase(),
        ));
    }
    let mut file = File::open(path).map_err(|e| LoadError::io(path, e))?;
    let content = Content::read(&mut file).map_err(|e| LoadError::Corrupt {
        file: path.to_path_buf(),
        format: "GGUF",
        message: e.to_string(),
    })?;
    let config = config_from_metadata(path, &content)?;
    let tokenizer = tokenizer_from_gguf(&content.metadata).map_err(|e| LoadError::Tokenizer {
        file: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let weights = Weights::from_gguf(
        path,
        content,
        config.num_attention_heads,
        config.num_key_value_heads,
        device,
    );
    Ok((config, weights, tokenizer))
}

fn config_from_metadata(path: &Path, content: &Content) -> Result<LlamaConfig, LoadError> {
    let md = Metadata {
        path,
        map: &content.metadata,
    };
    let arch = md.string("general.architecture")?;
    if arch != "llama" {
        return Err(LoadError::field(
            path,
            "general.architecture",
            "\"llama\"",
            format!("{arch:?}"),
        ));
    }
    if content.tensor_infos.contains_key("rope_freqs.weight") {
        return Err(LoadError::field(
            path,
            "rope_freqs.weight",
            "no per-frequency RoPE factors (not supported yet)",
            "a rope_freqs tensor",
        ));
    }
    let heads = md.usize("llama.attention.head_count")?;
    let hidden = md.usize("llama.embedding_length")?;
    let vocab_size = match md.map.get("tokenizer.ggml.tokens") {
        Some(Value::Array(tokens)) => tokens.len(),
        _ => md.usize("llama.vocab_size")?,
    };
    let config = LlamaConfig {
        hidden_size: hidden,
        intermediate_size: md.usize("llama.feed_forward_length")?,
        num_hidden_layers: md.usize("llama.block_count")?,
        num_attention_heads: heads,
        num_key_value_heads: md
            .opt_usize("llama.attention.head_count_kv")?
            .unwrap_or(heads),
        head_dim: md
            .opt_usize("llama.rope.dimension_count")?
            .unwrap_or(hidden / heads.max(1)),
        vocab_size,
        rms_norm_eps: md
            .opt_f64("llama.attention.layer_norm_rms_epsilon")?
            .unwrap_or(1e-5),
        rope_theta: md.opt_f64("llama.rope.freq_base")?.unwrap_or(10_000.0) as f32,
        rope_scaling: None,
        max_position_embeddings: md.usize("llama.context_length")?,
        tie_word_embeddings: !content.tensor_infos.contains_key("output.weight"),
        bos_token_id: md
            .opt_usize("tokenizer.ggml.bos_token_id")?
            .map(|v| v as u32),
        eos_token_ids: md
            .opt_usize("tokenizer.ggml.eos_token_id")?
            .map(|v| v as u32)
            .into_iter()
            .collect(),
    };
    config.validate(path)?;
    Ok(config)
}

struct Metadata<'a> {
    path: &'a Path,
    map: &'a HashMap<String, Value>,
}

impl Metadata<'_> {
    fn string(&self, key: &str) -> Result<&str, LoadError> {
        match self.map.get(key) {
            Some(Value::String(s)) => Ok(s),
            other => Err(self.wrong(key, "a string", other)),
        }
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>, LoadError> {
        let Some(value) = self.map.get(key) else {
            return Ok(None);
        };
        let n = match value {
            Value::U8(v) => Some(*v as u64),
            Value::U16(v) => Some(*v as u64),
            Value::U32(v) => Some(*v as u64),
            Value::U64(v) => Some(*v),
            Value::I8(v) => u64::try_from(*v).ok(),
            Value::I16(v) => u64::try_from(*v).ok(),
            Value::I32(v) => u64::try_from(*v).ok(),
            Value::I64(v) => u64::try_from(*v).ok(),
            _ => None,
        };
        n.map(|n| Some(n as usize))
            .ok_or_else(|| self.wrong(key, "a non-negative integer", Some(value)))
    }

    fn usize(&self, key: &str) -> Result<usize, LoadError> {
        self.opt_usize(key)?
            .ok_or_else(|| self.wrong(key, "a non-negative integer", None))
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>, LoadError> {
        match self.map.get(key) {
            None => Ok(None),
            Some(Value::F32(v)) => Ok(Some(*v as f64)),
            Some(Value::F64(v)) => Ok(Some(*v)),
            other => Err(self.wrong(key, "a float", other)),
        }
    }

    fn wrong(&self, key: &str, expected: &str, found: Option<&Value>) -> LoadError {
        let found = found.map_or("nothing".to_string(), |v| format!("{v:?}"));
        LoadError::field(self.path, key, expected, found)
    }
}
