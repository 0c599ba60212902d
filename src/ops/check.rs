//! Shape and bounds checks shared by every device's ops: an op runs only on inputs that
//! these accepted, so no kernel or CPU twin can read or write out of bounds.

use candle_core::{bail, Result, Tensor};

use super::AttentionMetadata;

/// The widest head the CPU twins keep on the stack.
pub(crate) const MAX_HEAD_DIM: usize = 512;

/// Validates shapes and slots before a cache write, so the op itself cannot go out of bounds.
pub(crate) fn check_cache_write(
    cache: &Tensor,
    new: &Tensor,
    slot_mapping: &[usize],
) -> Result<()> {
    let (num_blocks, block_size, kv_heads, head_dim) = cache.dims4()?;
    let (num_tokens, new_heads, new_dim) = new.dims3()?;
    if (new_heads, new_dim) != (kv_heads, head_dim) {
        bail!(
            "reshape_and_cache: new {:?} does not match cache {:?}",
            new.shape(),
            cache.shape()
        )
    }
    if slot_mapping.len() != num_tokens {
        bail!(
            "reshape_and_cache: {} slots for {num_tokens} tokens",
            slot_mapping.len()
        )
    }
    let num_slots = num_blocks * block_size;
    if let Some(bad) = slot_mapping.iter().find(|&&s| s >= num_slots) {
        bail!("reshape_and_cache: slot {bad} outside the cache's {num_slots} slots")
    }
    if cache.dtype() != new.dtype() {
        bail!(
            "reshape_and_cache: cache is {:?}, new is {:?}",
            cache.dtype(),
            new.dtype()
        )
    }
    Ok(())
}

/// Validates the batch layout against the tensors, so attention cannot read out of bounds.
pub(crate) fn check_attention(
    q: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    meta: &AttentionMetadata,
) -> Result<()> {
    let (num_tokens, num_heads, head_dim) = q.dims3()?;
    let (num_blocks, block_size, kv_heads, kv_dim) = k_cache.dims4()?;
    if k_cache.shape() != v_cache.shape() {
        bail!(
            "paged_attention: k_cache {:?} != v_cache {:?}",
            k_cache.shape(),
            v_cache.shape()
        )
    }
    if kv_dim != head_dim || kv_heads == 0 || num_heads % kv_heads != 0 {
        bail!(
            "paged_attention: q {:?} does not fit cache {:?}",
            q.shape(),
            k_cache.shape()
        )
    }
    if head_dim > MAX_HEAD_DIM {
        bail!("paged_attention: head_dim {head_dim} over {MAX_HEAD_DIM}")
    }
    if block_size != meta.block_size {
        bail!(
            "paged_attention: cache block size {block_size}, metadata {}",
            meta.block_size
        )
    }
    let num_seqs = meta.num_seqs();
    if meta.query_start.len() != num_seqs + 1
        || meta.block_tables.len() != num_seqs
        || meta.query_start.first() != Some(&0)
        || meta.query_start.last() != Some(&num_tokens)
        || meta.query_start.windows(2).any(|w| w[0] > w[1])
    {
        bail!("paged_attention: inconsistent metadata for {num_tokens} tokens and {num_seqs} sequences")
    }
    for s in 0..num_seqs {
        let query_len = meta.query_start[s + 1] - meta.query_start[s];
        let context_len = meta.context_lens[s];
        let table = &meta.block_tables[s];
        if context_len < query_len || table.len() * block_size < context_len {
            bail!("paged_attention: sequence {s}: context {context_len}, queries {query_len}, {} blocks", table.len())
        }
        if let Some(bad) = table.iter().find(|&&b| b as usize >= num_blocks) {
            bail!("paged_attention: sequence {s}: block {bad} outside the cache's {num_blocks}")
        }
    }
    Ok(())
}

/// `x` `[rows, hidden]` and `weight` `[hidden]`, one dtype.
pub(crate) fn check_rms_norm(x: &Tensor, weight: &Tensor) -> Result<()> {
    let (_, hidden) = x.dims2()?;
    if weight.dims() != [hidden] || weight.dtype() != x.dtype() {
        bail!(
            "rms_norm: weight {:?} {:?} does not fit x {:?} {:?}",
            weight.shape(),
            weight.dtype(),
            x.shape(),
            x.dtype()
        )
    }
    Ok(())
}

/// `x` `[tokens, heads, head_dim]` (even head_dim), `positions` u32 `[tokens]`,
/// `inv_freq` f32 `[head_dim / 2]`.
pub(crate) fn check_rope(x: &Tensor, positions: &Tensor, inv_freq: &Tensor) -> Result<()> {
    let (tokens, _, head_dim) = x.dims3()?;
    if head_dim % 2 != 0
        || positions.dims() != [tokens]
        || inv_freq.dims() != [head_dim / 2]
        || positions.dtype() != candle_core::DType::U32
        || inv_freq.dtype() != candle_core::DType::F32
    {
        bail!(
            "rope: x {:?}, positions {:?} {:?}, inv_freq {:?} {:?} do not fit",
            x.shape(),
            positions.shape(),
            positions.dtype(),
            inv_freq.shape(),
            inv_freq.dtype()
        )
    }
    Ok(())
}

/// Two tensors of one shape and dtype.
pub(crate) fn check_same(op: &str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.shape() != b.shape() || a.dtype() != b.dtype() {
        bail!(
            "{op}: {:?} {:?} and {:?} {:?} differ",
            a.shape(),
            a.dtype(),
            b.shape(),
            b.dtype()
        )
    }
    Ok(())
}
