// Elementwise kernels and activations: one thread per element, grid-stride loops.

// (GRID_STRIDE, RADAR_INDEXED and radar_bf16_bits: common.h.)

extern "C" __global__ void radar_fill(float* x, long n, float v) { GRID_STRIDE(i, n) x[i] = v; }

extern "C" __global__ void radar_copy(const float* src, float* dst, long n) { GRID_STRIDE(i, n) dst[i] = src[i]; }

// Four elements per access where all three are 16-byte aligned (the arena's tensors are), the
// tail one by one.
extern "C" __global__ void radar_add(const float* a, const float* b, float* out, long n) {
    long head = 0;
    if ((((unsigned long long)a | (unsigned long long)b | (unsigned long long)out) & 15) == 0) {
        head = n / 4 * 4;
        const float4* a4 = (const float4*)a;
        const float4* b4 = (const float4*)b;
        float4* o4 = (float4*)out;
        GRID_STRIDE(i, n / 4) {
            float4 u = a4[i], v = b4[i];
            o4[i] = make_float4(u.x + v.x, u.y + v.y, u.z + v.z, u.w + v.w);
        }
    }
    GRID_STRIDE(i, n - head) out[head + i] = a[head + i] + b[head + i];
}

extern "C" __global__ void radar_axpy(float a, const float* x, float* y, long n) { GRID_STRIDE(i, n) y[i] += a * x[i]; }

extern "C" __global__ void radar_scale(float* x, long n, float s) { GRID_STRIDE(i, n) x[i] *= s; }

// out[r, c] += bias[c] for out (rows x cols).
template <typename I> __device__ __forceinline__ void radar_add_row_bias_body(I n, const float* bias, float* out, int cols) {
    GRID_STRIDE_AS(I, i, n) out[i] += bias[i % (I)cols];
}
extern "C" __global__ void radar_add_row_bias(const float* bias, float* out, long rows, int cols) {
    RADAR_INDEXED(radar_add_row_bias_body, rows * cols, bias, out, cols);
}

// out[r * ld + c] = row[c] for r < rows, c < cols: a Linear's bias set in C before its product
// accumulates onto it (beta 1), as torch.addmm does. With out_bf16, out holds bf16 and gets the
// bias rounded to bf16 (autocast's addmm: its bias is a bf16 operand too). With a residual (fp32
// out only; the same leading dimension), out = residual + row[c]: a residual sum formed with the
// bias, so the product lands on it and no add pass follows.
template <typename I> __device__ __forceinline__ void radar_fill_rows_body(I n, const float* row, const float* residual, float* out,
                                                                          int out_bf16, int cols, int ld) {
    unsigned short* out16 = (unsigned short*)out;
    GRID_STRIDE_AS(I, i, n) {
        I r = i / (I)cols;
        int c = (int)(i - r * (I)cols);
        long at = (long)r * ld + c;
        if (out_bf16) out16[at] = radar_bf16_bits(row[c]);
        else out[at] = residual ? residual[at] + row[c] : row[c];
    }
}
extern "C" __global__ void radar_fill_rows(const float* row, const float* residual, float* out, int out_bf16, long rows, int cols, int ld) {
    RADAR_INDEXED(radar_fill_rows_body, rows * cols, row, residual, out, out_bf16, cols, ld);
}

// out[b, c, hw] += bias[c] for out (B, C, HW).
template <typename I> __device__ __forceinline__ void radar_add_channel_bias_body(I n, const float* bias, float* out, int channels, int hw) {
    GRID_STRIDE_AS(I, i, n) out[i] += bias[(i / (I)hw) % (I)channels];
}
extern "C" __global__ void radar_add_channel_bias(const float* bias, float* out, long n, int channels, int hw) {
    RADAR_INDEXED(radar_add_channel_bias_body, n, bias, out, channels, hw);
}

// p[i] of an fp32 array, or of a bf16 one (bf16 set) as its exact fp32 value.
__device__ __forceinline__ float radar_load(const void* p, int bf16, long i) {
    return bf16 ? __uint_as_float((unsigned)((const unsigned short*)p)[i] << 16) : ((const float*)p)[i];
}

// Column sums, dst[c] += sum_r src[r, c], in two launches with a fixed order (no atomics; the
// same bits on every GPU): radar_column_chunk_sums sums each column over chunks of `chunk`
// consecutive rows (one thread per chunk and column, coalesced across columns), then
// radar_add_chunk_sums adds a column's chunk sums (a warp per column, in a fixed order). (One
// thread per column over all rows left a GPU nearly idle: a ViT-S bias gradient at batch 32 is 384
// threads walking 6304 rows.)
// src fp32, or bf16 (src_bf16: a bf16 gradient under bf16 activations, summed in fp32).
extern "C" __global__ void radar_column_chunk_sums(const void* src, int src_bf16, float* partial, int rows, int cols, int chunk) {
    long chunks = (rows + chunk - 1) / chunk;
    GRID_STRIDE(e, chunks * cols) {
        int k = (int)(e / cols), c = (int)(e % cols);
        int lo = k * chunk, hi = lo + chunk < rows ? lo + chunk : rows;
        float s = 0.f;
        for (int r = lo; r < hi; ++r) s += radar_load(src, src_bf16, (long)r * cols + c);
        partial[e] = s;
    }
}

// dst[c] += sum over k < chunks of partial[k * stride + c]: one warp per column, lane j adding
// chunks j, j + 32, ... in order, then the lanes' sums in a fixed butterfly (the same bits every
// run; one thread walking every chunk left each launch waiting on ~400 dependent loads).
__device__ __forceinline__ float radar_lane_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

extern "C" __global__ void radar_add_chunk_sums(const float* partial, int chunks, long stride, int cols, float* dst) {
    int c = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (c >= cols) return;
    float s = 0.f;
    for (int k = lane; k < chunks; k += 32) s += partial[k * stride + c];
    s = radar_lane_sum(s);
    if (lane == 0) dst[c] += s;
}

extern "C" __global__ void radar_relu_forward(const float* x, float* y, long n) { GRID_STRIDE(i, n) y[i] = x[i] > 0.f ? x[i] : 0.f; }

extern "C" __global__ void radar_relu_backward(const float* dy, const float* y, float* dx, long n) {
    GRID_STRIDE(i, n) dx[i] = y[i] > 0.f ? dy[i] : 0.f;
}

// Exact GELU: y = x Phi(x), Phi kept for backward.
__device__ __forceinline__ float radar_normal_cdf(float v) { return 0.5f * (1.f + erff(v * 0.70710678118654752f)); }

__device__ __forceinline__ float radar_gelu_value(float v) { return v * radar_normal_cdf(v); }
// x and y each fp32, or bf16 (x_bf16, y_bf16: fc1's output and GELU's under bf16 activations,
// read and written as they are: no widened copy, no fp32 y converted afterwards; the same bits).
// cdf may be null (not kept). All bf16 and no CDF (forward, and backward's recompute): four
// elements per 8-byte access where every pointer is 8-byte aligned (the arena's tensors are), the
// tail one by one; the same bits either way.
extern "C" __global__ void radar_gelu_forward(const void* x, int x_bf16, void* y, int y_bf16, float* cdf, long n) {
    long head = 0;
    if (x_bf16 && y_bf16 && !cdf && radar_aligned8(x) && radar_aligned8(y)) {
        head = n / 4 * 4;
        GRID_STRIDE(i, n / 4) {
            const uint2 w = ((const uint2*)x)[i];
            float r[4];
            for (int k = 0; k < 4; ++k) r[k] = radar_gelu_value(radar_bf16_at(w, k));
            ((uint2*)y)[i] = radar_bf16_word(r);
        }
    }
    GRID_STRIDE(j, n - head) {
        const long i = head + j;
        float v = radar_load(x, x_bf16, i), phi = radar_normal_cdf(v);
        if (cdf) cdf[i] = phi;
        if (y_bf16) ((unsigned short*)y)[i] = radar_bf16_bits(v * phi); else ((float*)y)[i] = v * phi;
    }
}

// dx = dy (Phi(x) + x phi(x)), phi the normal density; Phi from cdf, or (null) recomputed as
// forward computed it. dy, x and dx each fp32 or bf16 (under bf16 activations: fc2's bf16 input
// gradient in, fc1's bf16 output gradient out, computed in fp32 and rounded once).
// The same four-at-a-time path as forward where dy, x and dx are bf16 and the CDF is recomputed.
__device__ __forceinline__ float radar_gelu_slope(float v, float phi) { return phi + v * (0.3989422804014327f * expf(-0.5f * v * v)); }
extern "C" __global__ void radar_gelu_backward(const void* dy, int dy_bf16, const void* x, int x_bf16, const float* cdf,
                                               void* dx, int dx_bf16, long n) {
    long head = 0;
    if (dy_bf16 && x_bf16 && dx_bf16 && !cdf && radar_aligned8(dy) && radar_aligned8(x) && radar_aligned8(dx)) {
        head = n / 4 * 4;
        GRID_STRIDE(i, n / 4) {
            const uint2 wx = ((const uint2*)x)[i], wd = ((const uint2*)dy)[i];
            float r[4];
            for (int k = 0; k < 4; ++k) {
                const float v = radar_bf16_at(wx, k);
                r[k] = radar_bf16_at(wd, k) * radar_gelu_slope(v, radar_normal_cdf(v));
            }
            ((uint2*)dx)[i] = radar_bf16_word(r);
        }
    }
    GRID_STRIDE(j, n - head) {
        const long i = head + j;
        float v = radar_load(x, x_bf16, i);
        float g = radar_load(dy, dy_bf16, i) * radar_gelu_slope(v, cdf ? cdf[i] : radar_normal_cdf(v));
        if (dx_bf16) ((unsigned short*)dx)[i] = radar_bf16_bits(g); else ((float*)dx)[i] = g;
    }
}

// GELU backward and its output's column sums (fc1's bias gradient) in one pass: dx as
// radar_gelu_backward writes it and, per chunk of `chunk` rows and column, the sum of dx as stored
// (its bf16 rounding under bf16 activations) over the chunk's rows in order from zero, into
// `partial` as radar_column_chunk_sums lays its partials out (radar_add_chunk_sums adds them).
// The same bits as radar_gelu_backward then radar_column_chunk_sums, dx not read back.
// A thread per chunk and column, or with `quads4` per chunk and four columns, one 8-byte access per
// row each (the launcher sets it, and sizes the launch, where dy, x and dx are all bf16 and 8-byte
// aligned, there is no CDF and the columns are a multiple of 4); rows unrolled by 4 so each thread
// has several rows' loads in flight (the sums still add row by row, in order).
extern "C" __global__ void radar_gelu_backward_chunk_sums(const void* dy, int dy_bf16, const void* x, int x_bf16, const float* cdf,
                                                          void* dx, int dx_bf16, float* partial, int rows, int cols, int chunk,
                                                          int quads4) {
    const long chunks = (rows + chunk - 1) / chunk;
    if (quads4) {
        const int quads = cols / 4;
        GRID_STRIDE(e, chunks * quads) {
            const int k = (int)(e / quads), q = (int)(e % quads);
            const int lo = k * chunk, hi = lo + chunk < rows ? lo + chunk : rows;
            float s[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll 4
            for (int r = lo; r < hi; ++r) {
                const long w = (long)r * quads + q;
                const uint2 wx = ((const uint2*)x)[w], wd = ((const uint2*)dy)[w];
                float g[4];
                for (int j = 0; j < 4; ++j) {
                    const float v = radar_bf16_at(wx, j);
                    g[j] = radar_bf16_at(wd, j) * radar_gelu_slope(v, radar_normal_cdf(v));
                }
                const uint2 out = radar_bf16_word(g);
                ((uint2*)dx)[w] = out;
                for (int j = 0; j < 4; ++j) s[j] += radar_bf16_at(out, j);
            }
            for (int j = 0; j < 4; ++j) partial[(long)k * cols + 4 * q + j] = s[j];
        }
        return;
    }
    GRID_STRIDE(e, chunks * cols) {
        const int k = (int)(e / cols), c = (int)(e % cols);
        const int lo = k * chunk, hi = lo + chunk < rows ? lo + chunk : rows;
        float s = 0.f;
#pragma unroll 4
        for (int r = lo; r < hi; ++r) {
            const long i = (long)r * cols + c;
            const float v = radar_load(x, x_bf16, i);
            float g = radar_load(dy, dy_bf16, i) * radar_gelu_slope(v, cdf ? cdf[i] : radar_normal_cdf(v));
            if (dx_bf16) {
                const unsigned short h = radar_bf16_bits(g);
                ((unsigned short*)dx)[i] = h;
                g = __uint_as_float((unsigned)h << 16);
            } else {
                ((float*)dx)[i] = g;
            }
            s += g;
        }
        partial[e] = s;
    }
}

// Mixed precision: fp32 <-> bf16 copies (radar_bf16_bits: common.h).
// Four elements per access where the fp32 side is 16-byte and the bf16 side 8-byte aligned (the
// arena's tensors are): whole 16-byte loads and 8-byte stores; the tail and unaligned spans one
// by one. The same bits either way.
__device__ __forceinline__ bool radar_aligned4(const void* f32, const void* bf16) {
    return ((unsigned long long)f32 & 15) == 0 && ((unsigned long long)bf16 & 7) == 0;
}

extern "C" __global__ void radar_to_bf16(const float* x, unsigned short* y, long n) {
    long head = 0;
    if (radar_aligned4(x, y)) {
        head = n / 4 * 4;
        const float4* x4 = (const float4*)x;
        uint2* y4 = (uint2*)y;
        GRID_STRIDE(i, n / 4) {
            float4 v = x4[i];
            y4[i] = make_uint2((unsigned)radar_bf16_bits(v.x) | (unsigned)radar_bf16_bits(v.y) << 16,
                               (unsigned)radar_bf16_bits(v.z) | (unsigned)radar_bf16_bits(v.w) << 16);
        }
    }
    GRID_STRIDE(i, n - head) y[head + i] = radar_bf16_bits(x[head + i]);
}

extern "C" __global__ void radar_from_bf16(const unsigned short* x, float* y, long n) {
    long head = 0;
    if (radar_aligned4(y, x)) {
        head = n / 4 * 4;
        const uint2* x4 = (const uint2*)x;
        float4* y4 = (float4*)y;
        GRID_STRIDE(i, n / 4) {
            uint2 v = x4[i];
            y4[i] = make_float4(__uint_as_float(v.x << 16), __uint_as_float(v.x & 0xffff0000u),
                                __uint_as_float(v.y << 16), __uint_as_float(v.y & 0xffff0000u));
        }
    }
    GRID_STRIDE(i, n - head) y[head + i] = __uint_as_float((unsigned)x[head + i] << 16);
}

// dst[i] += sum_j parts[j * n + i], j in order (per-image weight gradients of a convolution).
extern "C" __global__ void radar_sum_parts(const float* parts, int part_count, long n, float* dst) {
    GRID_STRIDE(i, n) {
        float s = dst[i];
        for (int j = 0; j < part_count; ++j) s += parts[(long)j * n + i];
        dst[i] = s;
    }
}
