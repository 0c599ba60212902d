// Writes new keys or values into the paged KV cache. CPU twin: ReshapeAndCache in
// src/ops/cpu.rs.
#include "common.cuh"

// cache: [num_blocks, block_size, kv_heads, head_dim]; new_rows: [tokens, kv_heads, head_dim];
// slots: [tokens], slot = block * block_size + offset, each checked < num_slots on the host.
// row = kv_heads * head_dim. Grid: tokens; block: any.
template <typename T>
__device__ void reshape_and_cache(T *cache, const T *new_rows, const int32_t *slots, int row) {
    const int t = blockIdx.x;
    const size_t dst = (size_t)slots[t] * row, src = (size_t)t * row;
    for (int i = threadIdx.x; i < row; i += blockDim.x) cache[dst + i] = new_rows[src + i];
}

// Copies whole blocks: pairs [n, 2] of (src, dst) block indices, no dst being any pair's
// src (copy-on-write targets are fresh blocks). Grid: n; block: any.
template <typename T>
__device__ void copy_blocks(T *cache, const int32_t *pairs, size_t block_elems) {
    const size_t src = (size_t)pairs[2 * blockIdx.x] * block_elems;
    const size_t dst = (size_t)pairs[2 * blockIdx.x + 1] * block_elems;
    for (size_t i = threadIdx.x; i < block_elems; i += blockDim.x) cache[dst + i] = cache[src + i];
}

#define CACHE_ENTRY_POINTS(T, NAME)                                                      \
    extern "C" __global__ void reshape_and_cache_##NAME(T *cache, const T *new_rows,    \
                                                        const int32_t *slots, int row) { \
        reshape_and_cache<T>(cache, new_rows, slots, row);                              \
    }                                                                                    \
    extern "C" __global__ void copy_blocks_##NAME(T *cache, const int32_t *pairs,       \
                                                  size_t block_elems) {                 \
        copy_blocks<T>(cache, pairs, block_elems);                                      \
    }

SURGE_FOR_EACH_DTYPE(CACHE_ENTRY_POINTS)
