// Paged attention over block tables. CPU twin: PagedAttention in src/ops/cpu.rs, which
// computes the same thing for any mix of sequences; on the GPU, sequences with one new
// token take the decode kernels and the others the prefill kernel.
//
// Layouts (all contiguous): q, out: [tokens, num_heads, D]; k_cache, v_cache:
// [num_blocks, block_size, kv_heads, D]; tables: [seqs, max_blocks] int32, row s holding
// sequence s's physical blocks. Query head h reads KV head h / (num_heads / kv_heads).
// Scores and softmax are f32; the softmax is the online (running max) form.
#include <math_constants.h>

#include "common.cuh"

constexpr int WARPS = 4;
constexpr int THREADS = WARPS * 32;
constexpr int GROUP_MAX = 8; // query heads per KV head that the decode kernel keeps in registers

__device__ __forceinline__ size_t cache_index(const int32_t *table, int j, int block_size,
                                              int kv_heads, int kv_head, int dim) {
    const int block = table[j / block_size];
    return (((size_t)block * block_size + j % block_size) * kv_heads + kv_head) * dim;
}

// ---------------------------------------------------------------------------------------
// Decode: one new token per sequence, split-K over the context (flash-decoding).
// Grid: (kv_heads, seqs, splits); a block owns one KV head, so the GROUP query heads that
// share it read each key and value once. Split z covers context positions
// [z * partition, (z + 1) * partition); with one split the block writes `out` directly,
// otherwise its normalised partial result, max and denominator for the reduce kernel
// (part_out: [seqs, num_heads, splits, D]; part_max, part_sum: [seqs, num_heads, splits]).
template <typename T, int D>
__device__ void paged_decode(float *part_out, float *part_max, float *part_sum, T *out,
                             const T *q, const T *k_cache, const T *v_cache,
                             const int32_t *rows, const int32_t *ctx_lens,
                             const int32_t *tables, int max_blocks, int num_heads,
                             int kv_heads, int block_size, int partition, float scale) {
    constexpr int VPL = D / 32; // values per lane: lane owns dims lane + 32 * v
    const int kv_head = blockIdx.x, s = blockIdx.y, split = blockIdx.z, splits = gridDim.z;
    const int group = num_heads / kv_heads;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int ctx = ctx_lens[s];
    const int start = split * partition, end = min(ctx, start + partition);
    const int32_t *table = tables + (size_t)s * max_blocks;
    const size_t qrow = (size_t)rows[s] * num_heads;

    __shared__ float sm_max[WARPS][GROUP_MAX], sm_sum[WARPS][GROUP_MAX];
    __shared__ float sm_acc[WARPS][GROUP_MAX][D];

    float qv[GROUP_MAX][VPL], acc[GROUP_MAX][VPL], m[GROUP_MAX], l[GROUP_MAX];
#pragma unroll
    for (int g = 0; g < GROUP_MAX; g++) {
        m[g] = -CUDART_INF_F;
        l[g] = 0.f;
#pragma unroll
        for (int v = 0; v < VPL; v++) {
            acc[g][v] = 0.f;
            qv[g][v] = g < group
                           ? to_f32(q[(qrow + kv_head * group + g) * D + lane + 32 * v]) * scale
                           : 0.f;
        }
    }
    for (int j = start + warp; j < end; j += WARPS) {
        const size_t base = cache_index(table, j, block_size, kv_heads, kv_head, D);
        float kv[VPL], vv[VPL];
#pragma unroll
        for (int v = 0; v < VPL; v++) {
            kv[v] = to_f32(k_cache[base + lane + 32 * v]);
            vv[v] = to_f32(v_cache[base + lane + 32 * v]);
        }
#pragma unroll
        for (int g = 0; g < GROUP_MAX; g++) {
            if (g >= group) break;
            float dot = 0.f;
#pragma unroll
            for (int v = 0; v < VPL; v++) dot += qv[g][v] * kv[v];
            dot = warp_sum(dot);
            const float new_max = fmaxf(m[g], dot);
            const float correction = expf(m[g] - new_max), p = expf(dot - new_max);
            l[g] = l[g] * correction + p;
#pragma unroll
            for (int v = 0; v < VPL; v++) acc[g][v] = acc[g][v] * correction + p * vv[v];
            m[g] = new_max;
        }
    }
#pragma unroll
    for (int g = 0; g < GROUP_MAX; g++) {
        if (g >= group) break;
        if (lane == 0) {
            sm_max[warp][g] = m[g];
            sm_sum[warp][g] = l[g];
        }
#pragma unroll
        for (int v = 0; v < VPL; v++) sm_acc[warp][g][lane + 32 * v] = acc[g][v];
    }
    __syncthreads();
    if (start >= end) { // past this sequence's context: an empty partial
        if (splits > 1)
            for (int g = threadIdx.x; g < group; g += THREADS) {
                const size_t p = ((size_t)s * num_heads + kv_head * group + g) * splits + split;
                part_max[p] = -CUDART_INF_F;
                part_sum[p] = 0.f;
            }
        return;
    }
    for (int idx = threadIdx.x; idx < group * D; idx += THREADS) {
        const int g = idx / D, d = idx % D;
        float total_max = -CUDART_INF_F;
        for (int w = 0; w < WARPS; w++) total_max = fmaxf(total_max, sm_max[w][g]);
        float denom = 0.f, o = 0.f;
        for (int w = 0; w < WARPS; w++) {
            const float f = sm_sum[w][g] > 0.f ? expf(sm_max[w][g] - total_max) : 0.f;
            denom += sm_sum[w][g] * f;
            o += sm_acc[w][g][d] * f;
        }
        const int h = kv_head * group + g;
        if (splits == 1) {
            out[(qrow + h) * D + d] = from_f32<T>(o / denom);
        } else {
            const size_t p = ((size_t)s * num_heads + h) * splits + split;
            part_out[p * D + d] = o / denom;
            if (d == 0) {
                part_max[p] = total_max;
                part_sum[p] = denom;
            }
        }
    }
}

// Merges the splits of paged_decode; partials are indexed by (decode sequence, head, split).
// Grid: (num_heads, seqs); block: any.
template <typename T>
__device__ void paged_decode_reduce(T *out, const float *part_out, const float *part_max,
                                    const float *part_sum, const int32_t *rows, int num_heads,
                                    int splits, int dim) {
    const int h = blockIdx.x, s = blockIdx.y;
    const size_t head_row = (size_t)rows[s] * num_heads + h;
    const size_t first = ((size_t)s * num_heads + h) * splits;
    float total_max = -CUDART_INF_F;
    for (int i = 0; i < splits; i++) total_max = fmaxf(total_max, part_max[first + i]);
    float denom = 0.f;
    for (int i = 0; i < splits; i++)
        if (part_sum[first + i] > 0.f) denom += part_sum[first + i] * expf(part_max[first + i] - total_max);
    for (int d = threadIdx.x; d < dim; d += blockDim.x) {
        float o = 0.f;
        for (int i = 0; i < splits; i++)
            if (part_sum[first + i] > 0.f)
                o += part_out[(first + i) * dim + d] * part_sum[first + i] *
                     expf(part_max[first + i] - total_max);
        out[head_row * dim + d] = from_f32<T>(o / denom);
    }
}

// ---------------------------------------------------------------------------------------
// Prefill (chunked, varlen, causal): a block owns a tile of Q_TILE new tokens of one
// sequence and one query head; each warp owns Q_TILE / WARPS of its rows. Keys and values
// are staged K_TILE at a time in shared memory; in the score pass lane j scores key j of
// the tile, in the value pass lane owns dims lane + 32 * v.
// The i-th new token of a sequence sits at position ctx - q_len + i and sees 0..=that.
// Grid: (tiles, num_heads); tile t covers new tokens tile_start[t] .. + Q_TILE of
// prefill sequence tile_seq[t], whose new tokens are rows q_starts[s] .. + q_lens[s].
constexpr int Q_TILE = 16, K_TILE = 32, ROWS_PER_WARP = Q_TILE / WARPS;

template <typename T, int D>
__device__ void paged_prefill(T *out, const T *q, const T *k_cache, const T *v_cache,
                              const int32_t *tile_seq, const int32_t *tile_start,
                              const int32_t *q_starts, const int32_t *q_lens,
                              const int32_t *ctx_lens, const int32_t *tables, int max_blocks,
                              int num_heads, int kv_heads, int block_size, float scale) {
    constexpr int VPL = D / 32;
    const int tile = blockIdx.x, h = blockIdx.y;
    const int s = tile_seq[tile], first = tile_start[tile];
    const int q_len = q_lens[s], ctx = ctx_lens[s], rows_here = min(Q_TILE, q_len - first);
    const int kv_head = h / (num_heads / kv_heads);
    const int32_t *table = tables + (size_t)s * max_blocks;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int first_pos = ctx - q_len + first, last_pos = first_pos + rows_here - 1;

    __shared__ float sq[Q_TILE][D];
    __shared__ float sk[K_TILE][D + 1]; // +1: lanes reading different keys hit different banks
    __shared__ float sv[K_TILE][D];

    for (int idx = threadIdx.x; idx < Q_TILE * D; idx += THREADS) {
        const int r = idx / D, d = idx % D;
        sq[r][d] = r < rows_here
                       ? to_f32(q[(((size_t)q_starts[s] + first + r) * num_heads + h) * D + d]) * scale
                       : 0.f;
    }
    float acc[ROWS_PER_WARP][VPL], m[ROWS_PER_WARP], l[ROWS_PER_WARP];
#pragma unroll
    for (int r = 0; r < ROWS_PER_WARP; r++) {
        m[r] = -CUDART_INF_F;
        l[r] = 0.f;
#pragma unroll
        for (int v = 0; v < VPL; v++) acc[r][v] = 0.f;
    }
    for (int k0 = 0; k0 <= last_pos; k0 += K_TILE) {
        __syncthreads(); // the previous tile is fully read (and sq written, the first time)
        for (int idx = threadIdx.x; idx < K_TILE * D; idx += THREADS) {
            const int j = idx / D, d = idx % D, pos = k0 + j;
            float kval = 0.f, vval = 0.f;
            if (pos <= last_pos) {
                const size_t base = cache_index(table, pos, block_size, kv_heads, kv_head, D);
                kval = to_f32(k_cache[base + d]);
                vval = to_f32(v_cache[base + d]);
            }
            sk[j][d] = kval;
            sv[j][d] = vval;
        }
        __syncthreads();
#pragma unroll
        for (int r = 0; r < ROWS_PER_WARP; r++) {
            const int row = warp * ROWS_PER_WARP + r;
            if (row >= rows_here) break;
            const int pos = first_pos + row, key = k0 + lane;
            float score = -CUDART_INF_F;
            if (key <= pos) {
                score = 0.f;
#pragma unroll 8
                for (int d = 0; d < D; d++) score += sq[row][d] * sk[lane][d];
            }
            const float new_max = fmaxf(m[r], warp_max(score));
            const float p = key <= pos ? expf(score - new_max) : 0.f;
            const float correction = expf(m[r] - new_max);
            l[r] = l[r] * correction + warp_sum(p);
#pragma unroll
            for (int v = 0; v < VPL; v++) acc[r][v] *= correction;
            for (int j = 0; j < K_TILE; j++) {
                const float pj = __shfl_sync(0xffffffffu, p, j);
#pragma unroll
                for (int v = 0; v < VPL; v++) acc[r][v] += pj * sv[j][lane + 32 * v];
            }
            m[r] = new_max;
        }
    }
#pragma unroll
    for (int r = 0; r < ROWS_PER_WARP; r++) {
        const int row = warp * ROWS_PER_WARP + r;
        if (row >= rows_here) break;
        const size_t o = (((size_t)q_starts[s] + first + row) * num_heads + h) * D;
#pragma unroll
        for (int v = 0; v < VPL; v++) out[o + lane + 32 * v] = from_f32<T>(acc[r][v] / l[r]);
    }
}

#define ATTENTION_DIM_ENTRY_POINTS(T, NAME, D)                                                  \
    extern "C" __global__ void __launch_bounds__(THREADS) paged_decode_##NAME##_d##D(           \
        float *part_out, float *part_max, float *part_sum, T *out, const T *q,                 \
        const T *k_cache, const T *v_cache, const int32_t *rows, const int32_t *ctx_lens,      \
        const int32_t *tables, int max_blocks, int num_heads, int kv_heads, int block_size,    \
        int partition, float scale) {                                                          \
        paged_decode<T, D>(part_out, part_max, part_sum, out, q, k_cache, v_cache, rows,        \
                           ctx_lens, tables, max_blocks, num_heads, kv_heads, block_size,      \
                           partition, scale);                                                  \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(THREADS) paged_prefill_##NAME##_d##D(          \
        T *out, const T *q, const T *k_cache, const T *v_cache, const int32_t *tile_seq,       \
        const int32_t *tile_start, const int32_t *q_starts, const int32_t *q_lens,             \
        const int32_t *ctx_lens, const int32_t *tables, int max_blocks, int num_heads,         \
        int kv_heads, int block_size, float scale) {                                           \
        paged_prefill<T, D>(out, q, k_cache, v_cache, tile_seq, tile_start, q_starts, q_lens,   \
                            ctx_lens, tables, max_blocks, num_heads, kv_heads, block_size,     \
                            scale);                                                            \
    }

#define ATTENTION_ENTRY_POINTS(T, NAME)                                                       \
    ATTENTION_DIM_ENTRY_POINTS(T, NAME, 32)                                                    \
    ATTENTION_DIM_ENTRY_POINTS(T, NAME, 64)                                                    \
    ATTENTION_DIM_ENTRY_POINTS(T, NAME, 128)                                                   \
    extern "C" __global__ void paged_decode_reduce_##NAME(                                    \
        T *out, const float *part_out, const float *part_max, const float *part_sum,           \
        const int32_t *rows, int num_heads, int splits, int dim) {                             \
        paged_decode_reduce<T>(out, part_out, part_max, part_sum, rows, num_heads, splits,     \
                               dim);                                                           \
    }

SURGE_FOR_EACH_DTYPE(ATTENTION_ENTRY_POINTS)
