//! Paged attention and fused ops, dispatched by device. `cpu` is the reference
//! implementation that every GPU kernel is tested against.

pub mod cpu;

use candle_core::{Result, Tensor};

/// Where each sequence of a batch sits in the flattened token dimension and in the
/// paged KV cache. Host vectors; a GPU path uploads them once per step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttentionMetadata {
    /// Tokens per KV block.
    pub block_size: usize,
    /// `[num_tokens]`: cache slot (`block * block_size + offset`) each new token's K/V goes to.
    pub slot_mapping: Vec<usize>,
    /// `[num_seqs + 1]`: sequence `s` owns token rows `query_start[s]..query_start[s + 1]`.
    pub query_start: Vec<usize>,
    /// `[num_seqs]`: tokens in the cache for each sequence once this step's are written,
    /// i.e. the position of its last new token plus one.
    pub context_lens: Vec<usize>,
    /// `[num_seqs][ceil(context_len / block_size)]`: physical block of each logical block.
    pub block_tables: Vec<Vec<u32>>,
}

impl AttentionMetadata {
    pub fn num_seqs(&self) -> usize {
        self.context_lens.len()
    }

    pub fn num_tokens(&self) -> usize {
        self.slot_mapping.len()
    }
}

/// Writes new keys or values into a paged cache, in place.
///
/// `cache`: `[num_blocks, block_size, num_kv_heads, head_dim]`;
/// `new`: `[num_tokens, num_kv_heads, head_dim]`; `slot_mapping`: one slot per token.
pub fn reshape_and_cache(cache: &Tensor, new: &Tensor, slot_mapping: &[usize]) -> Result<()> {
    cpu::check_cache_write(cache, new, slot_mapping)?;
    cache.inplace_op2(new, &cpu::ReshapeAndCache { slot_mapping })
}

/// Copies whole blocks inside a cache (copy-on-write of a shared partial block), in place.
///
/// `cache`: `[num_blocks, block_size, num_kv_heads, head_dim]`; `pairs`: (src, dst) blocks.
pub fn copy_blocks(cache: &Tensor, pairs: &[(usize, usize)]) -> Result<()> {
    let num_blocks = cache.dim(0)?;
    if let Some(bad) = pairs
        .iter()
        .find(|(s, d)| *s >= num_blocks || *d >= num_blocks || s == d)
    {
        candle_core::bail!("copy_blocks: bad pair {bad:?} for {num_blocks} blocks")
    }
    cache.inplace_op1(&cpu::CopyBlocks { pairs })
}

/// Causal attention of new queries over everything each sequence has in the cache.
///
/// `q`: `[num_tokens, num_heads, head_dim]`; caches as in [`reshape_and_cache`];
/// returns `[num_tokens, num_heads, head_dim]` in `q`'s dtype. GQA: query head `h`
/// reads KV head `h / (num_heads / num_kv_heads)`.
pub fn paged_attention(
    q: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    meta: &AttentionMetadata,
    scale: f32,
) -> Result<Tensor> {
    cpu::check_attention(q, k_cache, v_cache, meta)?;
    q.apply_op3_no_bwd(k_cache, v_cache, &cpu::PagedAttention { meta, scale })
}
