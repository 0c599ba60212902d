//! Shared test fixtures: where the fetched models live, and a tiny random Llama 3.1.
#![allow(dead_code)]

pub mod deploy;
pub mod prometheus;
pub mod registry;
pub mod server;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};

/// A log file's text so far (empty when it cannot be read).
pub fn read_log(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The last `n` lines of `text`, for failure messages.
pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("cannot bind 127.0.0.1:0")
        .port()
}

/// The repository: where the test binary was built, or `SURGE_REPO_DIR` when it runs
/// elsewhere (a GPU host running binaries built on another machine).
pub fn repo_dir() -> PathBuf {
    std::env::var_os("SURGE_REPO_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// The fetched model cache (`tests/support/fetch-models.sh`).
pub fn model_cache() -> PathBuf {
    std::env::var_os("SURGE_MODEL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_dir().join(".cache/models"))
}

/// A path inside the model cache, which must exist: tests never skip silently.
pub fn fetched(rel: &str) -> PathBuf {
    let path = model_cache().join(rel);
    assert!(
        path.exists(),
        "{} is missing: run tests/support/fetch-models.sh first",
        path.display()
    );
    path
}

pub fn smollm2_gguf() -> PathBuf {
    fetched("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
}

pub fn smollm2_hf() -> PathBuf {
    fetched("smollm2-hf")
}

pub fn llama3_tokenizer() -> PathBuf {
    fetched("llama3-tokenizer/tokenizer.json")
}

/// Shape of the tiny random model: Llama 3.1's structure at toy size.
#[derive(Debug, Clone, Copy)]
pub struct TinyConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub max_position_embeddings: usize,
    pub seed: u64,
}

impl Default for TinyConfig {
    fn default() -> Self {
        Self {
            hidden_size: 64,
            intermediate_size: 128,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 1,
            max_position_embeddings: 4096,
            seed: 7,
        }
    }
}

pub const LLAMA3_VOCAB: usize = 128_256;

/// Writes a random-weight Llama-3.1-shaped model (GQA, llama3 RoPE scaling, the real
/// Llama 3 tokenizer and the Llama 3 chat template the tests carry) into `dir`.
pub fn write_tiny_llama(dir: &Path, c: TinyConfig) {
    std::fs::create_dir_all(dir).unwrap();
    let head_dim = c.hidden_size / c.num_heads;
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_kv_heads,
        "head_dim": head_dim,
        "vocab_size": LLAMA3_VOCAB,
        "max_position_embeddings": c.max_position_embeddings,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 1024},
        "tie_word_embeddings": false,
        "bos_token_id": 128000,
        "eos_token_id": [128001, 128008, 128009],
        "torch_dtype": "float32"
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::write(
        dir.join("generation_config.json"),
        r#"{"bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009]}"#,
    )
    .unwrap();
    std::fs::copy(llama3_tokenizer(), dir.join("tokenizer.json")).unwrap();
    let template =
        std::fs::read_to_string(repo_dir().join("tests/fixtures/templates/llama3.jinja")).unwrap();
    let tokenizer_config = serde_json::json!({
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>",
        "chat_template": template,
    });
    std::fs::write(
        dir.join("tokenizer_config.json"),
        tokenizer_config.to_string(),
    )
    .unwrap();

    let mut rng = rand::rngs::StdRng::seed_from_u64(c.seed);
    let mut tensors = HashMap::new();
    let mut add = |name: String, shape: &[usize], center: f32, spread: f32| {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n)
            .map(|_| center + rng.random_range(-spread..spread))
            .collect();
        tensors.insert(name, Tensor::from_vec(data, shape, &Device::Cpu).unwrap());
    };
    let (h, i) = (c.hidden_size, c.intermediate_size);
    let kv = c.num_kv_heads * head_dim;
    add(
        "model.embed_tokens.weight".into(),
        &[LLAMA3_VOCAB, h],
        0.0,
        1.0,
    );
    add("lm_head.weight".into(), &[LLAMA3_VOCAB, h], 0.0, 0.2);
    add("model.norm.weight".into(), &[h], 1.0, 0.1);
    for l in 0..c.num_layers {
        let p = format!("model.layers.{l}");
        add(format!("{p}.input_layernorm.weight"), &[h], 1.0, 0.1);
        add(
            format!("{p}.post_attention_layernorm.weight"),
            &[h],
            1.0,
            0.1,
        );
        add(format!("{p}.self_attn.q_proj.weight"), &[h, h], 0.0, 0.3);
        add(format!("{p}.self_attn.k_proj.weight"), &[kv, h], 0.0, 0.3);
        add(format!("{p}.self_attn.v_proj.weight"), &[kv, h], 0.0, 0.3);
        add(format!("{p}.self_attn.o_proj.weight"), &[h, h], 0.0, 0.2);
        add(format!("{p}.mlp.gate_proj.weight"), &[i, h], 0.0, 0.2);
        add(format!("{p}.mlp.up_proj.weight"), &[i, h], 0.0, 0.2);
        add(format!("{p}.mlp.down_proj.weight"), &[h, i], 0.0, 0.2);
    }
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
}

/// A tiny model written once per test binary.
pub fn tiny_llama() -> PathBuf {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        write_tiny_llama(dir.path(), TinyConfig::default());
        dir
    })
    .path()
    .to_path_buf()
}
