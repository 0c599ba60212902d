//! Paged attention and fused ops, dispatched by device: `cuda` runs surge's kernels
//! (kernels/*.cu), `cpu` their twins, which are also the reference every kernel is tested
//! against. Every entry point checks shapes first (`check`), so neither can go out of bounds.

mod check;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;

use candle_core::{Device, Result, Tensor};

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

/// One step's attention layout, prepared once per forward pass and shared by every layer
/// (on a GPU, the metadata is uploaded once per step, not once per layer).
pub struct AttentionPlan<'a> {
    meta: &'a AttentionMetadata,
    #[cfg(feature = "cuda")]
    gpu: Option<cuda::GpuPlan>,
}

impl<'a> AttentionPlan<'a> {
    pub fn new(meta: &'a AttentionMetadata, device: &Device) -> Result<Self> {
        #[cfg(feature = "cuda")]
        if let Device::Cuda(dev) = device {
            return Ok(Self {
                meta,
                gpu: Some(cuda::GpuPlan::new(meta, dev)?),
            });
        }
        let _ = device;
        Ok(Self {
            meta,
            #[cfg(feature = "cuda")]
            gpu: None,
        })
    }

    pub fn meta(&self) -> &AttentionMetadata {
        self.meta
    }

    /// Writes this step's new keys or values into a paged cache, in place.
    ///
    /// `cache`: `[num_blocks, block_size, num_kv_heads, head_dim]`;
    /// `new`: `[num_tokens, num_kv_heads, head_dim]`, token `t` going to `slot_mapping[t]`.
    pub fn write_cache(&self, cache: &Tensor, new: &Tensor) -> Result<()> {
        let slot_mapping = &self.meta.slot_mapping;
        check::check_cache_write(cache, new, slot_mapping)?;
        let new = new.contiguous()?;
        #[cfg(feature = "cuda")]
        if let Some(gpu) = &self.gpu {
            return cache.inplace_op2(&new, &cuda::ReshapeAndCache { plan: gpu });
        }
        cache.inplace_op2(&new, &cpu::ReshapeAndCache { slot_mapping })
    }

    /// Causal attention of new queries over everything each sequence has in the cache.
    ///
    /// `q`: `[num_tokens, num_heads, head_dim]`; caches as in [`Self::write_cache`];
    /// returns `[num_tokens, num_heads, head_dim]` in `q`'s dtype. GQA: query head `h`
    /// reads KV head `h / (num_heads / num_kv_heads)`.
    pub fn attention(
        &self,
        q: &Tensor,
        k_cache: &Tensor,
        v_cache: &Tensor,
        scale: f32,
    ) -> Result<Tensor> {
        check::check_attention(q, k_cache, v_cache, self.meta)?;
        let q = q.contiguous()?;
        #[cfg(feature = "cuda")]
        if let Some(gpu) = &self.gpu {
            return q.apply_op3_no_bwd(
                k_cache,
                v_cache,
                &cuda::PagedAttention { plan: gpu, scale },
            );
        }
        q.apply_op3_no_bwd(
            k_cache,
            v_cache,
            &cpu::PagedAttention {
                meta: self.meta,
                scale,
            },
        )
    }
}

/// [`AttentionPlan::write_cache`] for a single call.
pub fn reshape_and_cache(cache: &Tensor, new: &Tensor, slot_mapping: &[usize]) -> Result<()> {
    let meta = AttentionMetadata {
        slot_mapping: slot_mapping.to_vec(),
        ..AttentionMetadata::default()
    };
    AttentionPlan::new(&meta, cache.device())?.write_cache(cache, new)
}

/// [`AttentionPlan::attention`] for a single call.
pub fn paged_attention(
    q: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    meta: &AttentionMetadata,
    scale: f32,
) -> Result<Tensor> {
    AttentionPlan::new(meta, q.device())?.attention(q, k_cache, v_cache, scale)
}

/// Copies whole blocks inside a cache (copy-on-write of a shared partial block), in place.
///
/// `cache`: `[num_blocks, block_size, num_kv_heads, head_dim]`; `pairs`: (src, dst) blocks,
/// no dst being any pair's src.
pub fn copy_blocks(cache: &Tensor, pairs: &[(usize, usize)]) -> Result<()> {
    let num_blocks = cache.dim(0)?;
    if let Some(bad) = pairs
        .iter()
        .find(|(s, d)| *s >= num_blocks || *d >= num_blocks || s == d)
    {
        candle_core::bail!("copy_blocks: bad pair {bad:?} for {num_blocks} blocks")
    }
    if pairs.iter().any(|(_, d)| pairs.iter().any(|(s, _)| s == d)) {
        candle_core::bail!("copy_blocks: a destination block is also a source in {pairs:?}")
    }
    #[cfg(feature = "cuda")]
    if cache.device().is_cuda() {
        return cache.inplace_op1(&cuda::CopyBlocks { pairs });
    }
    cache.inplace_op1(&cpu::CopyBlocks { pairs })
}

/// RMSNorm: `x` `[rows, hidden]`, `weight` `[hidden]` → `x / sqrt(mean(x²) + eps) · weight`.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
    check::check_rms_norm(x, weight)?;
    let (x, weight) = (x.contiguous()?, weight.contiguous()?);
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() {
        return x.apply_op2_no_bwd(&weight, &cuda::RmsNorm { eps });
    }
    x.apply_op2_no_bwd(&weight, &cpu::RmsNorm { eps })
}

/// Fused residual add and RMSNorm: `sum = x + residual` (rounded to the dtype), returns
/// `(rms_norm(sum), sum)`. Shapes as in [`rms_norm`]; `residual` like `x`.
pub fn add_rms_norm(
    x: &Tensor,
    residual: &Tensor,
    weight: &Tensor,
    eps: f32,
) -> Result<(Tensor, Tensor)> {
    check::check_same("add_rms_norm", x, residual)?;
    check::check_rms_norm(x, weight)?;
    let (x, r, w) = (
        x.contiguous()?,
        residual.contiguous()?,
        weight.contiguous()?,
    );
    #[cfg(feature = "cuda")]
    let both = if x.device().is_cuda() {
        x.apply_op3_no_bwd(&r, &w, &cuda::AddRmsNorm { eps })?
    } else {
        x.apply_op3_no_bwd(&r, &w, &cpu::AddRmsNorm { eps })?
    };
    #[cfg(not(feature = "cuda"))]
    let both = x.apply_op3_no_bwd(&r, &w, &cpu::AddRmsNorm { eps })?;
    Ok((both.get(0)?, both.get(1)?))
}

/// Rotary embedding, rotate-half layout: `x` `[tokens, heads, head_dim]`, `positions` u32
/// `[tokens]`, `inv_freq` f32 `[head_dim / 2]` (with any llama3 scaling applied); pair
/// `(i, i + head_dim / 2)` of every head turns by `position · inv_freq[i]`, in f32.
pub fn rope(x: &Tensor, positions: &Tensor, inv_freq: &Tensor) -> Result<Tensor> {
    check::check_rope(x, positions, inv_freq)?;
    let (x, p, f) = (
        x.contiguous()?,
        positions.contiguous()?,
        inv_freq.contiguous()?,
    );
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() {
        return x.apply_op3_no_bwd(&p, &f, &cuda::Rope);
    }
    x.apply_op3_no_bwd(&p, &f, &cpu::Rope)
}

/// `silu(gate) · up`, element-wise, for the SwiGLU MLP; any shape, one dtype.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    check::check_same("silu_mul", gate, up)?;
    let (g, u) = (gate.contiguous()?, up.contiguous()?);
    #[cfg(feature = "cuda")]
    if g.device().is_cuda() {
        return g.apply_op2_no_bwd(&u, &cuda::SiluMul);
    }
    g.apply_op2_no_bwd(&u, &cpu::SiluMul)
}
