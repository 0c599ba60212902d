//! The K and V tensors of every layer, laid out as `kernels/README.md` states:
//! `[num_blocks, block_size, num_kv_heads, head_dim]` per layer.

use candle_core::{DType, Device, Result, Tensor};

/// The geometry of a paged cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvCacheShape {
    pub num_layers: usize,
    pub num_blocks: usize,
    pub block_size: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

impl KvCacheShape {
    /// Bytes one block takes across all layers, K and V.
    pub fn bytes_per_block(&self, dtype: DType) -> usize {
        2 * self.num_layers
            * self.block_size
            * self.num_kv_heads
            * self.head_dim
            * dtype.size_in_bytes()
    }
}

/// Per-layer K and V caches. Written in place by `ops::AttentionPlan::write_cache`.
pub struct KvCache {
    shape: KvCacheShape,
    layers: Vec<(Tensor, Tensor)>,
}

impl KvCache {
    pub fn new(shape: KvCacheShape, dtype: DType, device: &Device) -> Result<Self> {
        let dims = (
            shape.num_blocks,
            shape.block_size,
            shape.num_kv_heads,
            shape.head_dim,
        );
        let layers = (0..shape.num_layers)
            .map(|_| {
                Ok((
                    Tensor::zeros(dims, dtype, device)?,
                    Tensor::zeros(dims, dtype, device)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { shape, layers })
    }

    pub fn shape(&self) -> KvCacheShape {
        self.shape
    }

    /// Bytes of every layer's K and V.
    pub fn bytes(&self) -> usize {
        self.layers
            .first()
            .map_or(0, |(k, _)| k.elem_count() * k.dtype().size_in_bytes())
            * 2
            * self.layers.len()
    }

    /// Copies blocks `(src, dst)` in every layer's K and V (copy-on-write).
    pub fn copy_blocks(&self, pairs: &[(usize, usize)]) -> Result<()> {
        if pairs.is_empty() {
            return Ok(());
        }
        for (k, v) in &self.layers {
            crate::ops::copy_blocks(k, pairs)?;
            crate::ops::copy_blocks(v, pairs)?;
        }
        Ok(())
    }

    /// (K, V) of `layer`.
    pub fn layer(&self, layer: usize) -> (&Tensor, &Tensor) {
        let (k, v) = &self.layers[layer];
        (k, v)
    }
}
