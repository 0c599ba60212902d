//! Model files from an untrusted source: a GGUF file (header, metadata, tensor infos and
//! the config and tokenizer built from them) or a safetensors file (header and tensor
//! table) is either loaded or refused with an error, never a panic or an allocation the
//! file's size cannot back.
#![no_main]

use candle_core::{DType, Device};
use libfuzzer_sys::fuzz_target;
use surge::loader::{gguf, DTypeChoice, Weights};

fuzz_target!(|data: &[u8]| {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    let dir = tempfile::tempdir().expect("a temp dir");
    if kind % 2 == 0 {
        let path = dir.path().join("model.gguf");
        std::fs::write(&path, bytes).expect("writing the input");
        let _ = gguf::load(&path, DTypeChoice::Auto, &Device::Cpu);
    } else {
        let path = dir.path().join("model.safetensors");
        std::fs::write(&path, bytes).expect("writing the input");
        if let Ok(weights) = Weights::from_safetensors(&[path], DType::F32, &Device::Cpu) {
            for name in ["model.embed_tokens.weight", "lm_head.weight"] {
                let _ = weights.tensor(name, &[4, 4]);
            }
        }
    }
});
