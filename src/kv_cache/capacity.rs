//! How many KV blocks fit in the memory budget, and the `--max-model-len` that follows.

use candle_core::DType;

use super::KvCacheShape;

/// Why the KV cache cannot serve the requested context length.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapacityError {
    #[error(
        "--max-model-len {requested} is above the model's max_position_embeddings ({max_position_embeddings}); lower --max-model-len"
    )]
    AboveModelLimit {
        requested: usize,
        max_position_embeddings: usize,
    },
    #[error(
        "--max-model-len {requested} needs {needed_blocks} KV blocks ({needed_bytes} bytes) for one sequence, but the KV cache holds {num_blocks} blocks = {capacity_tokens} tokens ({budget_bytes} bytes); raise --kv-cache-memory (or --gpu-memory-utilization on GPU) or lower --max-model-len"
    )]
    DoesNotFit {
        requested: usize,
        needed_blocks: usize,
        needed_bytes: usize,
        num_blocks: usize,
        capacity_tokens: usize,
        budget_bytes: usize,
    },
    #[error("the KV cache budget of {budget_bytes} bytes holds no block of {block_bytes} bytes; raise --kv-cache-memory")]
    NoBlocks {
        budget_bytes: usize,
        block_bytes: usize,
    },
}

/// The KV cache's size and the context length it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvCapacity {
    pub num_blocks: usize,
    pub max_model_len: usize,
}

/// Sizes the cache from a byte budget; `shape.num_blocks` is ignored.
pub fn plan(
    shape: KvCacheShape,
    dtype: DType,
    budget_bytes: usize,
    max_position_embeddings: usize,
    requested_max_model_len: Option<usize>,
) -> Result<KvCapacity, CapacityError> {
    let block_bytes = shape.bytes_per_block(dtype);
    let num_blocks = budget_bytes / block_bytes;
    if num_blocks == 0 {
        return Err(CapacityError::NoBlocks {
            budget_bytes,
            block_bytes,
        });
    }
    let capacity_tokens = num_blocks * shape.block_size;
    let max_model_len = match requested_max_model_len {
        Some(requested) if requested > max_position_embeddings => {
            return Err(CapacityError::AboveModelLimit {
                requested,
                max_position_embeddings,
            })
        }
        Some(requested) if requested > capacity_tokens => {
            let needed_blocks = requested.div_ceil(shape.block_size);
            return Err(CapacityError::DoesNotFit {
                requested,
                needed_blocks,
                needed_bytes: needed_blocks * block_bytes,
                num_blocks,
                capacity_tokens,
                budget_bytes,
            });
        }
        Some(requested) => requested,
        None if max_position_embeddings <= capacity_tokens => max_position_embeddings,
        None => {
            tracing::warn!(
                max_position_embeddings,
                num_blocks,
                capacity_tokens,
                "the KV cache holds {capacity_tokens} tokens, fewer than the model's max_position_embeddings ({max_position_embeddings}): serving with max_model_len = {capacity_tokens}"
            );
            capacity_tokens
        }
    };
    Ok(KvCapacity {
        num_blocks,
        max_model_len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2 (K,V) × 2 layers × 16 tokens × 1 head × 8 dims × 4 bytes = 2048 bytes per block.
    const SHAPE: KvCacheShape = KvCacheShape {
        num_layers: 2,
        num_blocks: 0,
        block_size: 16,
        num_kv_heads: 1,
        head_dim: 8,
    };

    #[test]
    fn blocks_from_bytes() {
        assert_eq!(SHAPE.bytes_per_block(DType::F32), 2048);
        let c = plan(SHAPE, DType::F32, 2048 * 10 + 100, 4096, Some(160)).unwrap();
        assert_eq!(
            c,
            KvCapacity {
                num_blocks: 10,
                max_model_len: 160
            }
        );
        assert_eq!(
            plan(SHAPE, DType::BF16, 2048 * 10, 4096, Some(320))
                .unwrap()
                .num_blocks,
            20
        );
    }

    #[test]
    fn absent_max_model_len_uses_model_limit_when_it_fits() {
        assert_eq!(
            plan(SHAPE, DType::F32, 2048 * 300, 4096, None)
                .unwrap()
                .max_model_len,
            4096
        );
    }

    #[test]
    fn absent_max_model_len_shrinks_to_capacity() {
        let c = plan(SHAPE, DType::F32, 2048 * 10, 4096, None).unwrap();
        assert_eq!(c.max_model_len, 160);
    }

    #[test]
    fn requested_at_and_past_capacity() {
        assert!(plan(SHAPE, DType::F32, 2048 * 10, 4096, Some(160)).is_ok());
        let e = plan(SHAPE, DType::F32, 2048 * 10, 4096, Some(161))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("161") && e.contains("160 tokens") && e.contains("--kv-cache-memory"),
            "{e}"
        );
    }

    #[test]
    fn requested_at_and_past_model_limit() {
        assert!(plan(SHAPE, DType::F32, 2048 * 300, 4096, Some(4096)).is_ok());
        let e = plan(SHAPE, DType::F32, 2048 * 300, 4096, Some(4097))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("4097") && e.contains("max_position_embeddings (4096)"),
            "{e}"
        );
    }

    #[test]
    fn budget_below_one_block() {
        assert!(matches!(
            plan(SHAPE, DType::F32, 2047, 4096, None),
            Err(CapacityError::NoBlocks { .. })
        ));
    }
}
