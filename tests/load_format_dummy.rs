//! `--load-format dummy`: a directory with only config.json and tokenizer.json loads
//! random weights of its shapes and serves; without it, missing weights are named.

mod support;

use std::path::Path;

use candle_core::{DType, Device};
use serde_json::json;
use support::server::Server;
use surge::engine::batch::{BatchInputs, SeqChunk};
use surge::loader::{self, DTypeChoice, LoadFormat, LoadOptions, ModelSource};
use surge::runner::ModelRunner;

/// The tiny model's config.json and tokenizer.json, and no weights.
fn weightless_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for file in ["config.json", "tokenizer.json"] {
        std::fs::copy(support::tiny_llama().join(file), dir.path().join(file)).unwrap();
    }
    dir
}

fn dummy(dtype: DTypeChoice) -> LoadOptions {
    LoadOptions {
        dtype,
        load_format: LoadFormat::Dummy,
    }
}

fn local(dir: &Path) -> ModelSource {
    ModelSource::Local(dir.to_path_buf())
}

#[test]
fn dummy_loads_config_and_tokenizer_only_and_gives_finite_logits() {
    let dir = weightless_dir();
    let loaded =
        loader::load_with(&local(dir.path()), &dummy(DTypeChoice::Auto), &Device::Cpu).unwrap();
    assert_eq!(loaded.dtype, DType::F32, "auto is f32 on CPU");
    assert_eq!(loaded.config.vocab_size, support::LLAMA3_VOCAB);

    let prompt = loaded
        .tokenizer
        .encode("The capital of France is", true)
        .unwrap();
    let runner = ModelRunner::new(&loaded, 4, 16).unwrap();
    let table = [0, 1, 2, 3];
    let mut tokens = prompt.clone();
    let mut computed = 0;
    // Prefill, then two decode steps fed their own argmax.
    for _ in 0..3 {
        let chunk = SeqChunk {
            tokens: &tokens,
            num_computed: computed,
            num_new: tokens.len() - computed,
            block_table: &table,
            wants_logits: true,
        };
        let batch = BatchInputs::prepare(&[chunk], 16);
        let logits = runner.execute(&batch).unwrap();
        assert_eq!(logits.dims(), &[1, support::LLAMA3_VOCAB]);
        let logits: Vec<f32> = logits.flatten_all().unwrap().to_vec1().unwrap();
        assert!(logits.iter().all(|v| v.is_finite()), "non-finite logits");
        let spread = logits.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(spread > 0.0, "random weights give non-zero logits");
        let next = logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0 as u32;
        computed = tokens.len();
        tokens.push(next);
    }
}

#[test]
fn dummy_weights_take_the_requested_dtype() {
    let dir = weightless_dir();
    let loaded =
        loader::load_with(&local(dir.path()), &dummy(DTypeChoice::Bf16), &Device::Cpu).unwrap();
    assert_eq!(loaded.dtype, DType::BF16);
}

#[test]
fn auto_without_weights_names_the_dir_and_the_way_out() {
    let dir = weightless_dir();
    let e = match loader::load(&local(dir.path()), DTypeChoice::Auto, &Device::Cpu) {
        Ok(_) => panic!("a directory without weights loaded"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains(&dir.path().display().to_string())
            && e.contains("model.safetensors")
            && e.contains("--load-format dummy"),
        "{e}"
    );
}

#[test]
fn dummy_still_needs_config_and_tokenizer() {
    let dir = weightless_dir();
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    let e = match loader::load_with(&local(dir.path()), &dummy(DTypeChoice::Auto), &Device::Cpu) {
        Ok(_) => panic!("a directory without a tokenizer loaded"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("tokenizer"), "{e}");

    let dir = weightless_dir();
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    let e = match loader::load_with(&local(dir.path()), &dummy(DTypeChoice::Auto), &Device::Cpu) {
        Ok(_) => panic!("a directory without config.json loaded"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("config.json"), "{e}");
}

#[test]
fn dummy_with_gguf_is_a_clear_error() {
    let file = Path::new("/nonexistent/model.gguf");
    let e = match loader::load_with(
        &ModelSource::Gguf(file.to_path_buf()),
        &dummy(DTypeChoice::Auto),
        &Device::Cpu,
    ) {
        Ok(_) => panic!("dummy GGUF loaded"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("model.gguf") && e.contains("--load-format dummy") && e.contains("config.json"),
        "{e}"
    );
}

#[test]
fn serve_with_load_format_dummy_generates() {
    let dir = weightless_dir();
    let server = Server::start(&[
        "--model",
        dir.path().to_str().unwrap(),
        "--served-model-name",
        "dummy",
        "--load-format",
        "dummy",
        "--max-model-len",
        "256",
        "--kv-cache-memory",
        "16MiB",
    ]);
    let body = server.ok_json(
        "/v1/completions",
        &json!({"model": "dummy", "prompt": "Hello", "max_tokens": 4, "ignore_eos": true}),
    );
    assert_eq!(body["usage"]["completion_tokens"], 4, "{body}");
    assert!(
        server.log().contains("weights are random"),
        "{}",
        server.log_tail()
    );
}
