//! Model architectures behind one trait: a batch of sequences in, logits out.

pub mod layers;
pub mod llama;
pub mod rope;
pub mod vec_dot_rounding;

use candle_core::{Result, Tensor};

use crate::engine::batch::BatchInputs;
use crate::kv_cache::KvCache;
use crate::loader::LlamaConfig;

/// A decoder-only language model that reads and writes a paged KV cache.
pub trait CausalLm: Send + Sync {
    /// Runs the new tokens of every sequence in `batch`, writing their K/V into `cache`.
    ///
    /// Returns f32 logits `[batch.logits_indices.len(), vocab_size]`, one row per
    /// requested token row.
    fn forward(&self, batch: &BatchInputs, cache: &KvCache) -> Result<Tensor>;

    fn config(&self) -> &LlamaConfig;
}
