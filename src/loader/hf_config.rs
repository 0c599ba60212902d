//! `config.json` of a Llama 3.x model, parsed with errors that name the field.

use std::path::Path;

use serde_json::Value;

use super::LoadError;

/// RoPE frequency scaling of Llama 3.1 (`rope_scaling.rope_type == "llama3"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3RopeScaling {
    pub factor: f32,
    pub low_freq_factor: f32,
    pub high_freq_factor: f32,
    pub original_max_position_embeddings: usize,
}

/// The architecture hyper-parameters surge needs, whatever the file format.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f32,
    pub rope_scaling: Option<Llama3RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

impl LlamaConfig {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|e| LoadError::io(path, e))?;
        let json: Value = serde_json::from_str(&text).map_err(|e| LoadError::Json {
            file: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Self::from_json(path, &json)
    }

    /// Parses an already-read `config.json`; `path` is only used in errors.
    pub fn from_json(path: &Path, json: &Value) -> Result<Self, LoadError> {
        let fields = Fields { path, json };
        let architectures = json.get("architectures");
        let is_llama = architectures
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|v| v == "LlamaForCausalLM"));
        if !is_llama {
            return Err(LoadError::field(
                path,
                "architectures",
                "[\"LlamaForCausalLM\"]",
                architectures.map_or("nothing".to_string(), Value::to_string),
            ));
        }
        let hidden_size = fields.usize("hidden_size")?;
        let num_attention_heads = fields.usize("num_attention_heads")?;
        let num_key_value_heads = fields
            .opt_usize("num_key_value_heads")?
            .unwrap_or(num_attention_heads);
        let head_dim = match fields.opt_usize("head_dim")? {
            Some(d) => d,
            None => hidden_size / num_attention_heads.max(1),
        };
        let config = Self {
            hidden_size,
            intermediate_size: fields.usize("intermediate_size")?,
            num_hidden_layers: fields.usize("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            vocab_size: fields.usize("vocab_size")?,
            rms_norm_eps: fields.opt_f64("rms_norm_eps")?.unwrap_or(1e-5),
            rope_theta: fields.opt_f64("rope_theta")?.unwrap_or(10_000.0) as f32,
            rope_scaling: parse_rope_scaling(path, json.get("rope_scaling"))?,
            max_position_embeddings: fields.usize("max_position_embeddings")?,
            tie_word_embeddings: match json.get("tie_word_embeddings") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(other) => {
                    return Err(LoadError::field(
                        path,
                        "tie_word_embeddings",
                        "a boolean",
                        other.to_string(),
                    ))
                }
            },
            bos_token_id: fields.opt_usize("bos_token_id")?.map(|v| v as u32),
            eos_token_ids: token_ids(path, "eos_token_id", json.get("eos_token_id"))?,
        };
        config.validate(path)?;
        Ok(config)
    }

    /// Checks the relations between fields that the model relies on.
    pub fn validate(&self, path: &Path) -> Result<(), LoadError> {
        let positive = [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("vocab_size", self.vocab_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(LoadError::field(path, name, "a positive integer", "0"));
            }
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(LoadError::field(
                path,
                "num_key_value_heads",
                format!(
                    "a divisor of num_attention_heads ({})",
                    self.num_attention_heads
                ),
                self.num_key_value_heads.to_string(),
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(LoadError::field(
                path,
                "head_dim",
                "an even number (RoPE rotates pairs)",
                self.head_dim.to_string(),
            ));
        }
        Ok(())
    }

    /// Parameters of the dense model these shapes describe (embeddings, an untied
    /// lm_head, projections and RMSNorm weights; Llama has no biases).
    pub fn num_parameters(&self) -> usize {
        let (h, i) = (self.hidden_size, self.intermediate_size);
        let q_dim = self.num_attention_heads * self.head_dim;
        let kv_dim = self.num_key_value_heads * self.head_dim;
        let attention = h * q_dim + 2 * h * kv_dim + q_dim * h;
        let layer = attention + 3 * h * i + 2 * h;
        let heads = if self.tie_word_embeddings { 1 } else { 2 };
        heads * self.vocab_size * h + self.num_hidden_layers * layer + h
    }
}

struct Fields<'a> {
    path: &'a Path,
    json: &'a Value,
}

impl Fields<'_> {
    fn opt_usize(&self, name: &str) -> Result<Option<usize>, LoadError> {
        match self.json.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
                LoadError::field(self.path, name, "a non-negative integer", v.to_string())
            }),
        }
    }

    fn usize(&self, name: &str) -> Result<usize, LoadError> {
        self.opt_usize(name)?
            .ok_or_else(|| LoadError::field(self.path, name, "a non-negative integer", "nothing"))
    }

    fn opt_f64(&self, name: &str) -> Result<Option<f64>, LoadError> {
        match self.json.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| LoadError::field(self.path, name, "a number", v.to_string())),
        }
    }
}

/// `eos_token_id` may be one id or a list of ids (Llama 3.1 lists three).
pub(crate) fn token_ids(
    path: &Path,
    field: &str,
    value: Option<&Value>,
) -> Result<Vec<u32>, LoadError> {
    let bad = |v: &Value| {
        LoadError::field(
            path,
            field,
            "an integer or a list of integers",
            v.to_string(),
        )
    };
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_u64().map(|n| n as u32).ok_or_else(|| bad(v)))
            .collect(),
        Some(v) => v.as_u64().map(|n| vec![n as u32]).ok_or_else(|| bad(v)),
    }
}

fn parse_rope_scaling(
    path: &Path,
    value: Option<&Value>,
) -> Result<Option<Llama3RopeScaling>, LoadError> {
    let Some(obj) = value.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let kind = obj
        .get("rope_type")
        .or_else(|| obj.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("");
    match kind {
        "default" => return Ok(None),
        "llama3" => {}
        other => {
            return Err(LoadError::field(
                path,
                "rope_scaling.rope_type",
                "\"llama3\" or \"default\"",
                format!("{other:?}"),
            ))
        }
    }
    let num = |name: &str| {
        obj.get(name).and_then(Value::as_f64).ok_or_else(|| {
            LoadError::field(
                path,
                format!("rope_scaling.{name}"),
                "a number",
                obj.get(name)
                    .map_or("nothing".to_string(), Value::to_string),
            )
        })
    };
    Ok(Some(Llama3RopeScaling {
        factor: num("factor")? as f32,
        low_freq_factor: num("low_freq_factor")? as f32,
        high_freq_factor: num("high_freq_factor")? as f32,
        original_max_position_embeddings: num("original_max_position_embeddings")? as usize,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Value {
        json!({
            "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "vocab_size": 100, "max_position_embeddings": 4096, "eos_token_id": [1, 2],
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 1024}
        })
    }

    #[test]
    fn parses_llama31_shape() {
        let c = LlamaConfig::from_json(Path::new("config.json"), &base()).unwrap();
        assert_eq!(c.head_dim, 16);
        assert_eq!(c.eos_token_ids, vec![1, 2]);
        assert_eq!(
            c.rope_scaling.unwrap().original_max_position_embeddings,
            1024
        );
    }

    /// The shipped Llama 3.1 8B config (tests/support/llama-3.1-8b, the dummy-weight
    /// benchmark model) has the real geometry.
    #[test]
    fn llama31_8b_config_has_8b_geometry() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/llama-3.1-8b/config.json");
        let c = LlamaConfig::from_file(&path).unwrap();
        assert_eq!(
            (c.hidden_size, c.intermediate_size, c.num_hidden_layers),
            (4096, 14336, 32)
        );
        assert_eq!(
            (c.num_attention_heads, c.num_key_value_heads, c.head_dim),
            (32, 8, 128)
        );
        assert_eq!(c.vocab_size, 128_256);
        assert_eq!(c.max_position_embeddings, 131_072);
        assert_eq!(c.rope_theta, 500_000.0);
        assert_eq!(c.rms_norm_eps, 1e-5);
        assert_eq!(
            c.rope_scaling,
            Some(Llama3RopeScaling {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192,
            })
        );
        assert!(!c.tie_word_embeddings);
        assert_eq!(c.bos_token_id, Some(128_000));
        assert_eq!(c.eos_token_ids, vec![128_001, 128_008, 128_009]);
        // Meta's published count for Llama 3.1 8B: 8.03B.
        assert_eq!(c.num_parameters(), 8_030_261_248);
    }

    #[test]
    fn tied_embeddings_count_once() {
        let mut j = base();
        let untied = LlamaConfig::from_json(Path::new("config.json"), &j)
            .unwrap()
            .num_parameters();
        j["tie_word_embeddings"] = json!(true);
        let tied = LlamaConfig::from_json(Path::new("config.json"), &j)
            .unwrap()
            .num_parameters();
        assert_eq!(untied - tied, 100 * 64);
    }

    #[test]
    fn rejects_other_architectures() {
        let mut j = base();
        j["architectures"] = json!(["MistralForCausalLM"]);
        let e = LlamaConfig::from_json(Path::new("config.json"), &j)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("architectures") && e.contains("MistralForCausalLM"),
            "{e}"
        );
    }

    #[test]
    fn rejects_bad_fields() {
        for (field, value, needle) in [
            ("hidden_size", json!("64"), "hidden_size"),
            ("num_key_value_heads", json!(3), "num_key_value_heads"),
            ("rope_scaling", json!({"rope_type": "yarn"}), "rope_type"),
            ("eos_token_id", json!("x"), "eos_token_id"),
        ] {
            let mut j = base();
            j[field] = value;
            let e = LlamaConfig::from_json(Path::new("config.json"), &j)
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{e}");
        }
        let mut j = base();
        j.as_object_mut().unwrap().remove("vocab_size");
        let e = LlamaConfig::from_json(Path::new("config.json"), &j)
            .unwrap_err()
            .to_string();
        assert!(e.contains("vocab_size") && e.contains("nothing"), "{e}");
    }
}
