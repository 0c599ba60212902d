//! Every malformed model gives an error naming the file and what is wrong, never a panic.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use surge::loader::{self, DTypeChoice, ModelSource};

fn load_err(source: ModelSource) -> String {
    match loader::load(&source, DTypeChoice::Auto, &Device::Cpu) {
        Ok(_) => panic!("{source:?} loaded"),
        Err(e) => e.to_string(),
    }
}

/// A fresh copy of the tiny model that a test may break.
fn tiny_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(support::tiny_llama()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    dir
}

fn local(dir: &Path) -> ModelSource {
    ModelSource::Local(dir.to_path_buf())
}

fn rewrite_tensors(dir: &Path, edit: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let file = dir.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, &file).unwrap();
}

#[test]
fn missing_files_are_named() {
    let dir = tiny_copy();
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let e = load_err(local(dir.path()));
    assert!(
        e.contains("not found") && e.contains("model.safetensors"),
        "{e}"
    );

    let dir = tiny_copy();
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    let e = load_err(local(dir.path()));
    assert!(e.contains("not found") && e.contains("config.json"), "{e}");

    let dir = tiny_copy();
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    let e = load_err(local(dir.path()));
    assert!(e.contains("tokenizer.json"), "{e}");

    let e = ModelSource::parse("/nonexistent/model.gguf")
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/model.gguf"), "{e}");
}

#[test]
fn wrong_architecture_is_named() {
    let dir = tiny_copy();
    let path = dir.path().join("config.json");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("LlamaForCausalLM", "GPT2LMHeadModel");
    std::fs::write(&path, text).unwrap();
    let e = load_err(local(dir.path()));
    assert!(
        e.contains("config.json") && e.contains("architectures") && e.contains("GPT2LMHeadModel"),
        "{e}"
    );
}

#[test]
fn missing_tensor_is_named() {
    let dir = tiny_copy();
    rewrite_tensors(dir.path(), |t| {
        t.remove("model.layers.1.mlp.up_proj.weight");
    });
    let e = load_err(local(dir.path()));
    assert!(
        e.contains("missing tensor `model.layers.1.mlp.up_proj.weight`"),
        "{e}"
    );
}

#[test]
fn wrong_shape_is_named() {
    let dir = tiny_copy();
    rewrite_tensors(dir.path(), |t| {
        t.insert(
            "model.norm.weight".into(),
            Tensor::ones(63, DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let e = load_err(local(dir.path()));
    assert!(
        e.contains("model.norm.weight") && e.contains("[64]") && e.contains("[63]"),
        "{e}"
    );
}

#[test]
fn unsupported_dtype_is_named() {
    let dir = tiny_copy();
    rewrite_tensors(dir.path(), |t| {
        t.insert(
            "model.norm.weight".into(),
            Tensor::ones(64, DType::I64, &Device::Cpu).unwrap(),
        );
    });
    let e = load_err(local(dir.path()));
    assert!(e.contains("model.norm.weight") && e.contains("I64"), "{e}");
}

#[test]
fn truncated_and_corrupt_safetensors_are_reported() {
    let dir = tiny_copy();
    let file = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(local(dir.path()));
    assert!(
        e.contains("model.safetensors") && e.contains("corrupt or truncated safetensors"),
        "{e}"
    );

    let mut corrupt = bytes.clone();
    corrupt[8..40].copy_from_slice(&[b'#'; 32]);
    std::fs::write(&file, &corrupt).unwrap();
    let e = load_err(local(dir.path()));
    assert!(e.contains("corrupt or truncated safetensors"), "{e}");

    std::fs::write(&file, [0xff; 8]).unwrap();
    let e = load_err(local(dir.path()));
    assert!(e.contains("corrupt or truncated safetensors"), "{e}");
}

#[test]
fn sharded_index_with_bad_entries_is_named() {
    let dir = tiny_copy();
    let index = serde_json::json!({"weight_map": {"model.norm.weight": "../outside.safetensors"}});
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let e = load_err(local(dir.path()));
    assert!(
        e.contains("weight_map.model.norm.weight") && e.contains("outside"),
        "{e}"
    );
}

fn copy_prefix(src: &Path, len: usize, dst: &Path) {
    use std::io::Read;
    let mut buf = vec![0u8; len];
    std::fs::File::open(src)
        .unwrap()
        .read_exact(&mut buf)
        .unwrap();
    std::fs::write(dst, buf).unwrap();
}

fn tiny_gguf(path: &Path, arch: &str) -> PathBuf {
    let weight = QTensor::quantize(
        &Tensor::ones((4, 32), DType::F32, &Device::Cpu).unwrap(),
        GgmlDType::Q8_0,
    )
    .unwrap();
    let arch = gguf_file::Value::String(arch.into());
    let mut file = std::fs::File::create(path).unwrap();
    gguf_file::write(
        &mut file,
        &[("general.architecture", &arch)],
        &[("blk.0.attn_q.weight", &weight)],
    )
    .unwrap();
    path.to_path_buf()
}

#[test]
fn truncated_and_corrupt_gguf_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let real = support::smollm2_gguf();
    let header_cut = dir.path().join("header.gguf");
    copy_prefix(&real, 4096, &header_cut);
    let e = load_err(ModelSource::Gguf(header_cut));
    assert!(
        e.contains("header.gguf") && e.contains("corrupt or truncated GGUF"),
        "{e}"
    );

    let data_cut = dir.path().join("data.gguf");
    copy_prefix(&real, 40 << 20, &data_cut);
    let e = load_err(ModelSource::Gguf(data_cut));
    assert!(
        e.contains("data.gguf") && e.contains("corrupt or truncated GGUF") && e.contains("tensor"),
        "{e}"
    );

    let bad_magic = dir.path().join("magic.gguf");
    std::fs::write(&bad_magic, b"NOPE\x03\x00\x00\x00").unwrap();
    let e = load_err(ModelSource::Gguf(bad_magic));
    assert!(
        e.contains("magic.gguf") && e.contains("corrupt or truncated GGUF"),
        "{e}"
    );
}

#[test]
fn gguf_of_another_architecture_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_gguf(&dir.path().join("gpt2.gguf"), "gpt2");
    let e = load_err(ModelSource::Gguf(path));
    assert!(
        e.contains("general.architecture") && e.contains("gpt2"),
        "{e}"
    );
}

#[test]
fn unsupported_quant_type_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_gguf(&dir.path().join("quant.gguf"), "llama");
    let mut bytes = std::fs::read(&path).unwrap();
    // Tensor info: name, n_dims (u32), dims (u64 each), then the ggml type (u32).
    let name = b"blk.0.attn_q.weight";
    let at = bytes.windows(name.len()).position(|w| w == name).unwrap() + name.len() + 4 + 2 * 8;
    bytes[at..at + 4].copy_from_slice(&250u32.to_le_bytes());
    std::fs::write(&path, bytes).unwrap();
    let e = load_err(ModelSource::Gguf(path));
    assert!(e.contains("quant.gguf") && e.contains("250"), "{e}");
}

#[test]
fn gguf_rejects_non_f32_dtype() {
    let e = match loader::load(
        &ModelSource::Gguf(support::smollm2_gguf()),
        DTypeChoice::Bf16,
        &Device::Cpu,
    ) {
        Ok(_) => panic!("loaded"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("--dtype") && e.contains("bf16"), "{e}");
}
