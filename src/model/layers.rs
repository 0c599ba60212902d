//! Building blocks shared by model architectures: projections and RMSNorm.

use candle_core::quantized::QMatMul;
use candle_core::{Module, Result, Tensor};

/// A bias-free projection `y = x · Wᵀ`, dense or quantized.
#[derive(Debug, Clone)]
pub enum Linear {
    /// `weight`: `[out, in]`.
    Dense(Tensor),
    Quantized(QMatMul),
}

impl Linear {
    pub fn dense(weight: Tensor) -> Self {
        Self::Dense(weight)
    }

    /// `x`: `[num_tokens, in]` → `[num_tokens, out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Dense(w) => x.matmul(&w.t()?),
            Self::Quantized(q) => q.forward(x),
        }
    }
}

/// Root-mean-square normalisation with a learned scale.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    /// `[hidden]`.
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    pub fn new(weight: Tensor, eps: f64) -> Self {
        Self {
            weight,
            eps: eps as f32,
        }
    }

    /// `x`: `[num_tokens, hidden]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::rms_norm(x, &self.weight, self.eps)
    }
}
