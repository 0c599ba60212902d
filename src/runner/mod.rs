//! The model runner: one model and its paged KV cache on one device.

mod device;
pub mod memory;
pub mod offline;
pub mod sampler;

pub use device::{select_device, DeviceChoice};

use std::sync::Arc;

use candle_core::{Result, Tensor};

use crate::engine::batch::{BatchInputs, SeqChunk};
use crate::kv_cache::{KvCache, KvCacheShape};
use crate::loader::LoadedModel;
use crate::model::CausalLm;

/// Runs batches through a model, keeping its KV cache. Knows tensors, never queues.
pub struct ModelRunner {
    model: Arc<dyn CausalLm>,
    cache: KvCache,
}

impl ModelRunner {
    /// Builds the model from loaded weights and allocates `num_blocks` KV blocks.
    pub fn new(loaded: &LoadedModel, num_blocks: usize, block_size: usize) -> anyhow::Result<Self> {
        let c = &loaded.config;
        let shape = KvCacheShape {
            num_layers: c.num_hidden_layers,
            num_blocks,
            block_size,
            num_kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
        };
        let cache = KvCache::new(shape, loaded.dtype, &loaded.device)?;
        Ok(Self {
            model: loaded.model.clone(),
            cache,
        })
    }

    /// f32 logits `[batch.logits_indices.len(), vocab_size]`.
    pub fn execute(&self, batch: &BatchInputs) -> Result<Tensor> {
        self.model.forward(batch, &self.cache)
    }

    /// One prefill of up to 32 tokens into the cache's first blocks, logits discarded: it
    /// pays one-time costs (lazy weight copies, allocator warm-up, kernel loading) before
    /// the first request. The blocks it writes are free, and a sequence that later takes
    /// them overwrites them before reading.
    pub fn warmup(&self) -> Result<()> {
        let shape = self.cache.shape();
        self.prefill_dummy(32.min(shape.num_blocks * shape.block_size).max(1))
    }

    /// Prefills one sequence of `len` arbitrary tokens into the cache's first blocks
    /// (there must be enough), discarding the logits.
    pub fn prefill_dummy(&self, len: usize) -> Result<()> {
        let shape = self.cache.shape();
        let vocab = self.model.config().vocab_size as u32;
        let tokens: Vec<u32> = (0..len as u32).map(|t| t % vocab).collect();
        let blocks: Vec<u32> = (0..len.div_ceil(shape.block_size) as u32).collect();
        let batch = BatchInputs::prepare(
            &[SeqChunk {
                tokens: &tokens,
                num_computed: 0,
                num_new: len,
                block_table: &blocks,
                wants_logits: true,
            }],
            shape.block_size,
        );
        self.execute(&batch).map(drop)
    }

    /// Bytes the KV cache holds.
    pub fn cache_bytes(&self) -> usize {
        self.cache.bytes()
    }

    /// Copy-on-write block copies the scheduler asked for, before the next forward.
    pub fn copy_blocks(&self, pairs: &[(usize, usize)]) -> Result<()> {
        self.cache.copy_blocks(pairs)
    }

    pub fn cache_shape(&self) -> KvCacheShape {
        self.cache.shape()
    }
}
