//! Rotary position embeddings (HF rotate-half layout) with Llama 3.1 frequency scaling.

use candle_core::{Device, Result, Tensor};

use crate::loader::hf_config::Llama3RopeScaling;
use crate::ops;

/// Inverse frequencies of one head; the angles are computed per token from its position
/// (in `ops::rope`), so no table sized by max_position_embeddings is kept.
#[derive(Debug, Clone)]
pub struct Rope {
    /// `[head_dim / 2]`, f32, with any llama3 scaling applied.
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
            inv_freq: Tensor::from_vec(inv_freq, len, device)?,
        })
    }

    /// `x`: `[num_tokens, num_heads, head_dim]`; `positions`: u32 `[num_tokens]`.
    pub fn apply(&self, x: &Tensor, positions: &Tensor) -> Result<Tensor> {
        ops::rope(x, positions, &self.inv_freq)
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
