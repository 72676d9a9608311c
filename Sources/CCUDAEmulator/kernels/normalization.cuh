// LayerNorm and softmax over rows: one warp per row, warp-shuffle reductions in a fixed
// butterfly order (deterministic: no atomics).
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// y = (x - mean) * rstd * gamma + beta per row of x (rows x cols); saves mean and rstd. y fp32, or
// bf16 (y_bf16: the LayerNorms whose output only products read, under bf16 activations).
extern "C" __global__ void radar_layernorm_forward(const float* x, const float* gamma, const float* beta, float eps,
                                                   void* y, int y_bf16, float* mean, float* rstd, int rows, int cols) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    const float* xr = x + (long)row * cols;
    float s = 0.f;
    for (int c = lane; c < cols; c += 32) s += xr[c];
    float m = warp_sum(s) / cols;
    float v = 0.f;
    for (int c = lane; c < cols; c += 32) { float d = xr[c] - m; v += d * d; }
    float r = rsqrtf(warp_sum(v) / cols + eps);
    if (y_bf16) {
        unsigned short* yr = (unsigned short*)y + (long)row * cols;
        for (int c = lane; c < cols; c += 32) yr[c] = radar_bf16_bits((xr[c] - m) * r * gamma[c] + beta[c]);
    } else {
        float* yr = (float*)y + (long)row * cols;
        for (int c = lane; c < cols; c += 32) yr[c] = (xr[c] - m) * r * gamma[c] + beta[c];
    }
    if (lane == 0) { mean[row] = m; rstd[row] = r; }
}

// LayerNorm backward's two row sums over a warp (lanes striding the row, then the butterfly):
// a = mean(dy * gamma), b = mean(dy * gamma * xhat).
__device__ __forceinline__ void layernorm_row_sums(const float* dyr, const float* xr, const float* gamma, float m, float r, int cols,
                                                   int lane, float& a, float& b) {
    a = 0.f, b = 0.f;
    for (int c = lane; c < cols; c += 32) {
        float g = dyr[c] * gamma[c];
        a += g;
        b += g * (xr[c] - m) * r;
    }
    a = warp_sum(a) / cols;
    b = warp_sum(b) / cols;
}

// dx per row; the parameter gradients are summed per column by radar_layernorm_param_partials
// and radar_add_chunk_sums (rows in a fixed order), so no atomics are needed. With a residual,
// dx = (the input gradient) + residual (the residual stream's gradient joined here, not by an add
// pass after); with dxb, a bf16 copy of dx as well (the operand of the
// products that read dx next, written here instead of converted after).
extern "C" __global__ void radar_layernorm_backward_input(const float* dy, const float* x, const float* gamma, const float* mean,
                                                          const float* rstd, const float* residual, float* dx, unsigned short* dxb,
                                                          int rows, int cols) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    const float* xr = x + (long)row * cols; const float* dyr = dy + (long)row * cols;
    float m = mean[row], r = rstd[row], a, b;
    layernorm_row_sums(dyr, xr, gamma, m, r, cols, lane, a, b);
    float* dxr = dx + (long)row * cols;
    const float* rr = residual ? residual + (long)row * cols : 0;
    unsigned short* dxbr = dxb ? dxb + (long)row * cols : 0;
    for (int c = lane; c < cols; c += 32) {
        float v = r * (dyr[c] * gamma[c] - a - (xr[c] - m) * r * b);
        if (rr) v = v + rr[c];
        dxr[c] = v;
        if (dxbr) dxbr[c] = radar_bf16_bits(v);
    }
}

// Parameter gradients in fixed-size chunks of rows (one thread per chunk and column): the chunk's
// dgamma sums at partial[k * 2 * cols + c], its dbeta sums at partial[k * 2 * cols + cols + c];
// radar_add_chunk_sums then adds the chunks in order (deterministic, no atomics).
extern "C" __global__ void radar_layernorm_param_partials(const float* dy, const float* x, const float* mean, const float* rstd,
                                                          float* partial, int rows, int cols, int chunk) {
    long chunks = (rows + chunk - 1) / chunk;
    for (long e = (long)blockIdx.x * blockDim.x + threadIdx.x; e < chunks * cols; e += (long)blockDim.x * gridDim.x) {
        int k = (int)(e / cols), c = (int)(e % cols);
        int lo = k * chunk, hi = lo + chunk < rows ? lo + chunk : rows;
        float sg = 0.f, sb = 0.f;
        for (int row = lo; row < hi; ++row) {
            float d = dy[(long)row * cols + c];
            sg += d * (x[(long)row * cols + c] - mean[row]) * rstd[row];
            sb += d;
        }
        partial[(long)k * 2 * cols + c] = sg;
        partial[(long)k * 2 * cols + cols + c] = sb;
    }
}

// One row of a one-pass kernel's column walk (radar_layernorm_backward_chunk and _staged): dx at
// `at` from this column's dy and x (the residual joined, the bf16 copy written) with the row's
// sums a and b, and the column's dgamma, dbeta and dx sums carried on.
__device__ __forceinline__ void layernorm_column_row(float d, float xv, float m, float r, float a, float b, float gc,
                                                     const float* __restrict__ residual, float* __restrict__ dx,
                                                     unsigned short* __restrict__ dxb, long at, float& sg, float& sb, float& sx) {
    float v = r * (d * gc - a - (xv - m) * r * b);
    if (residual) v = v + residual[at];
    dx[at] = v;
    if (dxb) dxb[at] = radar_bf16_bits(v);
    sg += d * (xv - m) * r;
    sb += d;
    sx += v;
}

// Both of the above in one pass over dy and x, for rows of up to 1024 columns: a block per chunk
// of up to RADAR_LN_CHUNK rows (the chunk radar_layernorm_param_partials would sum), a thread per
// column. First each warp reduces its rows' two sums (as radar_layernorm_backward_input does, into
// shared memory); then each column's thread walks the chunk's rows in order, writing dx (and its
// residual sum and bf16 copy) and summing its dgamma and dbeta partials as
// radar_layernorm_param_partials does. The same expressions in the same order: the same bits,
// with dy and x read from memory once where the two kernels read them twice. Launched with up to
// 1024 threads: __launch_bounds__ makes ptxas fit its registers to that (64 a thread).
// dx_partial, when not null: per chunk and column the sum of dx as written (residual included)
// over the chunk's rows in order, radar_column_chunk_sums's partials of dx (the bias gradient of
// the Linear layer dx is the output gradient of), at dx_partial[k * cols + c].
// No two of the pointers overlap (the backend asserts dx is none of dy, x and residual), and they
// say so (__restrict__): otherwise every store of dx or its copy could change what the next row's
// loads read, and ptxas (sm_90) issued each row's loads only after the previous row's stores; now
// it issues the next row's loads ahead of them (`tools/sass_report.py`). The same expressions in
// the same order: the same bits. What it buys (the kernel took 110 us for 25,216 x 384 on an H100,
// about twice what its bytes take) is for a GPU's kernel times to say.
#define RADAR_LN_CHUNK 64
extern "C" __global__ void __launch_bounds__(1024) radar_layernorm_backward_chunk(
        const float* __restrict__ dy, const float* __restrict__ x, const float* __restrict__ gamma, const float* __restrict__ mean,
        const float* __restrict__ rstd, const float* __restrict__ residual, float* __restrict__ dx, unsigned short* __restrict__ dxb,
        float* __restrict__ partial, float* __restrict__ dx_partial, int rows, int cols, int chunk) {
    __shared__ float row_a[RADAR_LN_CHUNK], row_b[RADAR_LN_CHUNK];
    const int k = blockIdx.x, lo = k * chunk, hi = lo + chunk < rows ? lo + chunk : rows;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
    for (int row = lo + warp; row < hi; row += warps) {
        float a, b;
        layernorm_row_sums(dy + (long)row * cols, x + (long)row * cols, gamma, mean[row], rstd[row], cols, lane, a, b);
        if (lane == 0) { row_a[row - lo] = a; row_b[row - lo] = b; }
    }
    __syncthreads();
    const int c = threadIdx.x;
    if (c >= cols) return;
    const float gc = gamma[c];
    float sg = 0.f, sb = 0.f, sx = 0.f;
#pragma unroll 4
    for (int row = lo; row < hi; ++row) {
        const long at = (long)row * cols + c;
        layernorm_column_row(dy[at], x[at], mean[row], rstd[row], row_a[row - lo], row_b[row - lo], gc, residual, dx, dxb, at, sg, sb, sx);
    }
    partial[(long)k * 2 * cols + c] = sg;
    partial[(long)k * 2 * cols + cols + c] = sb;
    if (dx_partial) dx_partial[(long)k * cols + c] = sx;
}

// radar_layernorm_backward_chunk with each group of RADAR_LN_STAGE_ROWS rows of dy and x read from
// memory once, into shared memory, for rows of up to RADAR_LN_STAGE_COLS columns
// (RADAR_LAYERNORM_BACKWARD=staged). The chunk kernel reads its chunk's dy and x twice, once per
// warp for the row sums and once per column thread, and a whole chunk (64 rows of 384 columns:
// 196 KB) is too much to stay in L2 between the two while every chunk of the step's 394 is
// resident (77 MB against an H100's 50 MB): the second read comes from memory again. Here each
// group is loaded by the column threads (a row a time, coalesced), its row sums are formed by a
// warp per row from shared memory, and the columns' pass reads the same copy. The warps' sums
// and the columns' walk are the chunk kernel's, in the same order: the same bits (dx, its bf16
// copy, the partials, dx's partial sums). Two barriers a group. 32 KB of shared memory a block: three blocks an SM
// fit an A40's 100 KB.
#define RADAR_LN_STAGE_ROWS 8
#define RADAR_LN_STAGE_COLS 512  // its __launch_bounds__ (a thread per column)
extern "C" __global__ void __launch_bounds__(512) radar_layernorm_backward_staged(
        const float* __restrict__ dy, const float* __restrict__ x, const float* __restrict__ gamma, const float* __restrict__ mean,
        const float* __restrict__ rstd, const float* __restrict__ residual, float* __restrict__ dx, unsigned short* __restrict__ dxb,
        float* __restrict__ partial, float* __restrict__ dx_partial, int rows, int cols, int chunk) {
    __shared__ float s_dy[RADAR_LN_STAGE_ROWS * RADAR_LN_STAGE_COLS], s_x[RADAR_LN_STAGE_ROWS * RADAR_LN_STAGE_COLS];
    __shared__ float row_a[RADAR_LN_STAGE_ROWS], row_b[RADAR_LN_STAGE_ROWS];
    const int k = blockIdx.x, lo = k * chunk, hi = lo + chunk < rows ? lo + chunk : rows;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
    const int c = threadIdx.x;
    const bool column = c < cols;
    const float gc = column ? gamma[c] : 0.f;
    float sg = 0.f, sb = 0.f, sx = 0.f;
    for (int first = lo; first < hi; first += RADAR_LN_STAGE_ROWS) {
        const int n = first + RADAR_LN_STAGE_ROWS < hi ? RADAR_LN_STAGE_ROWS : hi - first;
        if (column) {
#pragma unroll
            for (int j = 0; j < RADAR_LN_STAGE_ROWS; ++j) {
                if (j < n) {
                    const long at = (long)(first + j) * cols + c;
                    s_dy[j * cols + c] = dy[at];
                    s_x[j * cols + c] = x[at];
                }
            }
        }
        __syncthreads();
        for (int j = warp; j < n; j += warps) {
            float a, b;
            layernorm_row_sums(s_dy + j * cols, s_x + j * cols, gamma, mean[first + j], rstd[first + j], cols, lane, a, b);
            if (lane == 0) { row_a[j] = a; row_b[j] = b; }
        }
        __syncthreads();
        if (column) {
            for (int j = 0; j < n; ++j) {
                const int row = first + j;
                const long at = (long)row * cols + c;
                layernorm_column_row(s_dy[j * cols + c], s_x[j * cols + c], mean[row], rstd[row], row_a[j], row_b[j], gc, residual, dx, dxb, at,
                                     sg, sb, sx);
            }
        }
        // No barrier here: a thread's next load overwrites only its own column (which it alone
        // reads in the pass above), and the next row sums, which read every column and write
        // row_a and row_b, wait at the barrier after the loads, which every thread reaches only
        // once its pass over this group is done.
    }
    if (!column) return;
    partial[(long)k * 2 * cols + c] = sg;
    partial[(long)k * 2 * cols + cols + c] = sb;
    if (dx_partial) dx_partial[(long)k * cols + c] = sx;
}

// Rows of up to RADAR_ROW_REGISTERS * 32 columns (attention's 197 tokens) are read once into
// registers; longer rows are read again from memory. The same sums in the same order either way.
#define RADAR_ROW_REGISTERS 8

// Softmax over the last `cols` of each row: one warp per row. yb, when not null, gets a bf16 copy
// of y as well (the operand of the attention's next product under bf16 precision, written here
// instead of read back and converted).
extern "C" __global__ void radar_softmax_forward(const float* x, float* y, unsigned short* yb, int rows, int cols) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    const float* xr = x + (long)row * cols; float* yr = y + (long)row * cols;
    float mx = __int_as_float(0xff800000);  // -inf (NVRTC has no math.h macros)
    if (cols <= RADAR_ROW_REGISTERS * 32) {
        float v[RADAR_ROW_REGISTERS];
        for (int j = 0; j < RADAR_ROW_REGISTERS; ++j) {
            int c = lane + 32 * j;
            v[j] = c < cols ? xr[c] : mx;
            mx = fmaxf(mx, v[j]);
        }
        mx = warp_max(mx);
        float s = 0.f;
        for (int j = 0; j < RADAR_ROW_REGISTERS; ++j) {
            if (lane + 32 * j < cols) { v[j] = expf(v[j] - mx); s += v[j]; }
        }
        float inv = 1.f / warp_sum(s);
        unsigned short* ybr = yb ? yb + (long)row * cols : nullptr;
        for (int j = 0; j < RADAR_ROW_REGISTERS; ++j) {
            int c = lane + 32 * j;
            if (c < cols) {
                yr[c] = v[j] * inv;
                if (ybr) ybr[c] = radar_bf16_bits(v[j] * inv);
            }
        }
        return;
    }
    for (int c = lane; c < cols; c += 32) mx = fmaxf(mx, xr[c]);
    mx = warp_max(mx);
    float s = 0.f;
    for (int c = lane; c < cols; c += 32) { float e = expf(xr[c] - mx); yr[c] = e; s += e; }
    float inv = 1.f / warp_sum(s);
    for (int c = lane; c < cols; c += 32) yr[c] *= inv;
    if (yb)
        for (int c = lane; c < cols; c += 32) yb[(long)row * cols + c] = radar_bf16_bits(yr[c]);
}

// dx = y (dy - sum(dy y)); written as bf16 into dxb instead when dxb is not null (the attention's
// dScores under bf16 precision: only products read it).
extern "C" __global__ void radar_softmax_backward(const float* dy, const float* y, float* dx, unsigned short* dxb, int rows, int cols) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    const float* dyr = dy + (long)row * cols; const float* yr = y + (long)row * cols;
    float* dxr = dx + (long)row * cols;
    float s = 0.f;
    if (cols <= RADAR_ROW_REGISTERS * 32) {
        float g[RADAR_ROW_REGISTERS], p[RADAR_ROW_REGISTERS];
        for (int j = 0; j < RADAR_ROW_REGISTERS; ++j) {
            int c = lane + 32 * j;
            g[j] = c < cols ? dyr[c] : 0.f;
            p[j] = c < cols ? yr[c] : 0.f;
            if (c < cols) s += g[j] * p[j];
        }
        s = warp_sum(s);
        for (int j = 0; j < RADAR_ROW_REGISTERS; ++j) {
            int c = lane + 32 * j;
            if (c < cols) {
                if (dxb) dxb[(long)row * cols + c] = radar_bf16_bits(p[j] * (g[j] - s));
                else dxr[c] = p[j] * (g[j] - s);
            }
        }
        return;
    }
    for (int c = lane; c < cols; c += 32) s += dyr[c] * yr[c];
    s = warp_sum(s);
    for (int c = lane; c < cols; c += 32) {
        if (dxb) dxb[(long)row * cols + c] = radar_bf16_bits(yr[c] * (dyr[c] - s));
        else dxr[c] = yr[c] * (dyr[c] - s);
    }
}
