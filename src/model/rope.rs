//! Rotary position embeddings (HF rotate-half layout) with Llama 3.1 frequency scaling.

use candle_core::{DType, Device, Result, Tensor};

use crate::loader::hf_config::Llama3RopeScaling;

/// Inverse frequencies of one head; cos/sin are computed per batch from positions, so
/// no table sized by max_position_embeddings is kept.
#[derive(Debug, Clone)]
pub struct Rope {
    /// `[head_dim / 2]`, f32.
    inv_freq: Tensor,
}

impl Rope {
    pub fn new(
        head_dim: usize,
        theta: f32,
        scaling: Option<Llama3RopeScaling>,
        device: &Device,
    ) -> Result<Self> {
        let inv_freq: Vec<f32> = (0..head_dim / 2)
            .map(|i| 1.0 / theta.powf(2.0 * i as f32 / head_dim as f32))
            .map(|f| scaling.map_or(f, |s| llama3_scale(f, s)))
            .collect();
        let len = inv_freq.len();
        Ok(Self {
            inv_freq: Tensor::from_vec(inv_freq, (1, len), device)?,
        })
    }

    /// `positions`: `[num_tokens]` u32 → (cos, sin), each `[num_tokens, head_dim / 2]` in `dtype`.
    pub fn cos_sin(&self, positions: &Tensor, dtype: DType) -> Result<(Tensor, Tensor)> {
        let positions = positions.to_dtype(DType::F32)?.unsqueeze(1)?;
        let freqs = positions.matmul(&self.inv_freq)?;
        Ok((freqs.cos()?.to_dtype(dtype)?, freqs.sin()?.to_dtype(dtype)?))
    }

    /// `x`: `[num_tokens, num_heads, head_dim]`, contiguous; cos/sin from [`Self::cos_sin`].
    pub fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        candle_nn::rotary_emb::rope_thd(&x.unsqueeze(0)?, cos, sin)?.squeeze(0)
    }
}

/// Llama 3.1: keep high frequencies, divide low ones by `factor`, blend in between.
fn llama3_scale(freq: f32, s: Llama3RopeScaling) -> f32 {
    let old_len = s.original_max_position_embeddings as f32;
    let low_freq_wavelen = old_len / s.low_freq_factor;
    let high_freq_wavelen = old_len / s.high_freq_factor;
    let wavelen = 2.0 * std::f32::consts::PI / freq;
    if wavelen < high_freq_wavelen {
        freq
    } else if wavelen > low_freq_wavelen {
        freq / s.factor
    } else {
        let smooth =
            (old_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        (1.0 - smooth) * freq / s.factor + smooth * freq
    }
}
