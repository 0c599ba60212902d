// Element-wise and row-wise fused ops of a Llama layer. CPU twins: src/ops/cpu/fused.rs.
#include "common.cuh"

// out[r] = x[r] / sqrt(mean(x[r]^2) + eps) * weight.
// x, out: [rows, hidden]; weight: [hidden]. Grid: rows; block: any multiple of 32.
template <typename T>
__device__ void rms_norm(T *out, const T *x, const T *weight, int hidden, float eps) {
    const size_t base = (size_t)blockIdx.x * hidden;
    float ss = 0.f;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
        const float v = to_f32(x[base + i]);
        ss += v * v;
    }
    const float inv = rsqrtf(block_sum(ss) / hidden + eps);
    for (int i = threadIdx.x; i < hidden; i += blockDim.x)
        out[base + i] = from_f32<T>(to_f32(x[base + i]) * inv * to_f32(weight[i]));
}

// sum = x + residual (rounded to T); out = rms_norm(sum). Both land in `out`:
// out[0] = normed, out[1] = sum, each [rows, hidden] (out is [2, rows, hidden]).
template <typename T>
__device__ void add_rms_norm(T *out, const T *x, const T *residual, const T *weight, int rows,
                             int hidden, float eps) {
    const size_t base = (size_t)blockIdx.x * hidden;
    T *normed = out, *sum = out + (size_t)rows * hidden;
    float ss = 0.f;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
        const T s = from_f32<T>(to_f32(x[base + i]) + to_f32(residual[base + i]));
        sum[base + i] = s;
        const float v = to_f32(s);
        ss += v * v;
    }
    const float inv = rsqrtf(block_sum(ss) / hidden + eps);
    for (int i = threadIdx.x; i < hidden; i += blockDim.x)
        normed[base + i] = from_f32<T>(to_f32(sum[base + i]) * inv * to_f32(weight[i]));
}

// Rotary embedding, rotate-half layout: for pair i < half of each head,
// (a, b) = (x[i], x[i + half]) -> (a cos - b sin, b cos + a sin), angle = pos * inv_freq[i]
// computed in f32 (inv_freq carries any llama3 scaling).
// x, out: [tokens, heads, 2 * half]; positions: [tokens]; inv_freq: [half].
// Grid: tokens; block: any.
template <typename T>
__device__ void rope(T *out, const T *x, const uint32_t *positions, const float *inv_freq,
                     int heads, int half) {
    const int t = blockIdx.x;
    const float pos = (float)positions[t];
    const int dim = 2 * half;
    for (int idx = threadIdx.x; idx < heads * half; idx += blockDim.x) {
        const int h = idx / half, i = idx % half;
        float s, c;
        sincosf(pos * inv_freq[i], &s, &c);
        const size_t base = ((size_t)t * heads + h) * dim;
        const float a = to_f32(x[base + i]), b = to_f32(x[base + i + half]);
        out[base + i] = from_f32<T>(a * c - b * s);
        out[base + i + half] = from_f32<T>(b * c + a * s);
    }
}

// out = silu(gate) * up, element-wise over n elements; silu(g) = g / (1 + exp(-g)).
template <typename T>
__device__ void silu_mul(T *out, const T *gate, const T *up, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const float g = to_f32(gate[i]);
        out[i] = from_f32<T>(g / (1.f + expf(-g)) * to_f32(up[i]));
    }
}

#define FUSED_ENTRY_POINTS(T, NAME)                                                              \
    extern "C" __global__ void rms_norm_##NAME(T *out, const T *x, const T *w, int hidden,      \
                                               float eps) {                                     \
        rms_norm<T>(out, x, w, hidden, eps);                                                    \
    }                                                                                           \
    extern "C" __global__ void add_rms_norm_##NAME(T *out, const T *x, const T *residual,       \
                                                   const T *w, int rows, int hidden,            \
                                                   float eps) {                                 \
        add_rms_norm<T>(out, x, residual, w, rows, hidden, eps);                                \
    }                                                                                           \
    extern "C" __global__ void rope_##NAME(T *out, const T *x, const uint32_t *positions,       \
                                           const float *inv_freq, int heads, int half) {        \
        rope<T>(out, x, positions, inv_freq, heads, half);                                      \
    }                                                                                           \
    extern "C" __global__ void silu_mul_##NAME(T *out, const T *gate, const T *up, size_t n) {  \
        silu_mul<T>(out, gate, up, n);                                                          \
    }

SURGE_FOR_EACH_DTYPE(FUSED_ENTRY_POINTS)
