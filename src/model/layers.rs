//! Building blocks shared by model architectures: projections and RMSNorm.

use std::sync::OnceLock;

use candle_core::quantized::QMatMul;
use candle_core::{DType, Module, Result, Tensor};

use super::vec_dot_rounding;
use crate::ops;

/// Batches of at least this many rows run quantized weights through an f32 copy:
/// candle's CPU quantized kernels cost the same per row at any batch size (Q4_1 has no
/// SIMD path at all), while a dense GEMM reuses each weight across rows, which is where
/// batching and prefill get their throughput. The activations are rounded as the
/// quantized kernel rounds them (see [`vec_dot_rounding`]), so both paths compute the
/// same model. Below this, the quantized kernel reads 4–8× fewer weight bytes per row.
const DENSE_FROM_ROWS: usize = 4;

/// A bias-free projection `y = x · Wᵀ`, dense or quantized.
#[derive(Debug)]
pub enum Linear {
    /// `weight`: `[out, in]`.
    Dense(Tensor),
    Quantized {
        weight: QMatMul,
        /// f32 `[out, in]`, made on the first batch of [`DENSE_FROM_ROWS`] rows.
        dense: OnceLock<Tensor>,
    },
}

impl Linear {
    pub fn dense(weight: Tensor) -> Self {
        Self::Dense(weight)
    }

    pub fn quantized(weight: QMatMul) -> Self {
        Self::Quantized {
            weight,
            dense: OnceLock::new(),
        }
    }

    /// `x`: `[num_tokens, in]` → `[num_tokens, out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Dense(w) => x.matmul(&w.t()?),
            Self::Quantized {
                weight: QMatMul::QTensor(q),
                dense,
            } if x.dim(0)? >= DENSE_FROM_ROWS && x.device().is_cpu() => {
                let w = match dense.get() {
                    Some(w) => w,
                    None => {
                        let w = q.dequantize(&q.device())?;
                        dense.get_or_init(|| w)
                    }
                };
                let x = vec_dot_rounding::round_activations(&x.to_dtype(DType::F32)?, q.dtype())?;
                x.matmul(&w.t()?)
            }
            Self::Quantized { weight, .. } => weight.forward(x),
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
        ops::rms_norm(x, &self.weight, self.eps)
    }

    /// Adds `x` to the residual stream and normalises the sum, in one pass:
    /// returns `(norm(x + residual), x + residual)`.
    pub fn forward_add(&self, x: &Tensor, residual: &Tensor) -> Result<(Tensor, Tensor)> {
        ops::add_rms_norm(x, residual, &self.weight, self.eps)
    }
}
