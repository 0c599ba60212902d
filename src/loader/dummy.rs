//! `--load-format dummy`: random weights of a config's shapes, made on the target
//! device, for benchmarks at a real model's geometry without its weight files.

use candle_core::{DType, Device, Tensor};

/// `--load-format`, as vLLM's: where the weights come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LoadFormat {
    /// The source's own weights (safetensors or GGUF).
    #[default]
    Auto,
    /// Random weights of the config's shapes; only config.json and the tokenizer are
    /// read. Outputs are meaningless: for throughput and memory benchmarks.
    Dummy,
}

/// Spread of the random projection and embedding weights: small enough that
/// activations and logits stay finite through every layer (the usual init std).
pub const DUMMY_STD: f64 = 0.02;

/// A random tensor of `shape` in `dtype`, made on `device`. RMSNorm weights
/// (`*norm.weight`) are ones, every other tensor is normal with [`DUMMY_STD`].
pub fn tensor(
    name: &str,
    shape: &[usize],
    dtype: DType,
    device: &Device,
) -> candle_core::Result<Tensor> {
    if name.ends_with("norm.weight") {
        return Tensor::ones(shape, dtype, device);
    }
    match (device.is_cpu(), dtype) {
        (true, DType::BF16) => Tensor::randn(
            half::bf16::from_f64(0.0),
            half::bf16::from_f64(DUMMY_STD),
            shape,
            device,
        ),
        (true, DType::F16) => Tensor::randn(
            half::f16::from_f64(0.0),
            half::f16::from_f64(DUMMY_STD),
            shape,
            device,
        ),
        // curand fills only f32/f64: draw in f32 on the device and cast there, one
        // tensor at a time, so the transient f32 copy is one tensor's, never the model's.
        _ => Tensor::randn(0f32, DUMMY_STD as f32, shape, device)?.to_dtype(dtype),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn norms_are_ones_and_projections_small() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let norm = tensor(
            "model.layers.0.input_layernorm.weight",
            &[8],
            DType::F32,
            &dev,
        )?;
        assert_eq!(norm.to_vec1::<f32>()?, vec![1.0; 8]);
        let w = tensor(
            "model.layers.0.mlp.up_proj.weight",
            &[64, 32],
            DType::BF16,
            &dev,
        )?;
        assert_eq!((w.dtype(), w.dims()), (DType::BF16, &[64usize, 32][..]));
        let w = w.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let var = w.iter().map(|v| v * v).sum::<f32>() / w.len() as f32;
        assert!(w.iter().all(|v| v.is_finite()));
        assert!((0.01..0.03).contains(&var.sqrt()), "std {}", var.sqrt());
        Ok(())
    }
}
