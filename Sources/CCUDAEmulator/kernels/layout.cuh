// Data movement: im2col and its adjoint col2im for the convolutions (col2im gathers, so every
// input pixel sums its contributions in the CPU backend's order with no atomics), transposes,
// column copies, and the token mean/max of BADM's patch features.

// Flat indices split as RADAR_INDEXED says (common.h).

// col (B, C*k*k, Ho*Wo) from x (B, C, H, W), zero padding (index arithmetic as RADAR_INDEXED says);
// col_bf16: the columns written as bf16 (the products' operand in bf16 precision: no fp32 columns
// to convert, half the workspace; the bits of converting fp32 columns). Four consecutive elements
// per thread: the flat index is split once (five divisions, which dominated the kernel at one
// element per thread) and then stepped along (ox, oy, kx, ky, the input plane), and the four are
// stored as one 8-byte (bf16) or 16-byte (fp32) word where col is so aligned (the arena's and the
// workspace's are); the range's last group and unaligned columns element by element.
template <typename I>
__device__ __forceinline__ void radar_im2col_body(I total, const float* x, void* col, int col_bf16, int channels, int h, int w, int k,
                                                  int stride, int pad, int ho, int wo) {
    const int rows = channels * k * k;
    const bool wide = col_bf16 ? radar_aligned8(col) : ((unsigned long long)col & 15) == 0;
    GRID_STRIDE_AS(I, g, (total + 3) / 4) {
        const I e = g * 4;
        I q = e / (I)wo;
        int ox = (int)(e - q * (I)wo);
        I q2 = q / (I)ho;
        int oy = (int)(q - q2 * (I)ho);
        I b = q2 / (I)rows;
        int row = (int)(q2 - b * (I)rows);
        int kx = row % k, ky = (row / k) % k;
        const float* plane = x + ((long)b * channels + row / (k * k)) * h * (long)w;
        float v[4];
        for (int j = 0; j < 4; ++j) {
            int iy = oy * stride - pad + ky, ix = ox * stride - pad + kx;
            v[j] = (e + (I)j < total && iy >= 0 && iy < h && ix >= 0 && ix < w) ? plane[(long)iy * w + ix] : 0.f;
            if (++ox == wo) {  // the next output row; past the last, the next tap; past the last tap, the next plane
                ox = 0;
                if (++oy == ho) {
                    oy = 0;
                    if (++kx == k) {
                        kx = 0;
                        if (++ky == k) { ky = 0; plane += h * (long)w; }
                    }
                }
            }
        }
        if (wide && e + 3 < total) {
            if (col_bf16) ((uint2*)col)[g] = radar_bf16_word(v);
            else ((float4*)col)[g] = make_float4(v[0], v[1], v[2], v[3]);
        } else {
            for (int j = 0; j < 4 && e + (I)j < total; ++j) {
                if (col_bf16) ((unsigned short*)col)[e + j] = radar_bf16_bits(v[j]); else ((float*)col)[e + j] = v[j];
            }
        }
    }
}
extern "C" __global__ void radar_im2col(const float* x, void* col, int col_bf16, int batch, int channels, int h, int w, int k, int stride,
                                        int pad, int ho, int wo) {
    RADAR_INDEXED(radar_im2col_body, (long)batch * channels * k * k * ho * wo, x, col, col_bf16, channels, h, w, k, stride, pad, ho, wo);
}

// dx (B, C, H, W) = col2im(col): each pixel gathers over (ky, kx) in order (written, not added).
// Only the taps that land on an output position are visited: ky = (iy + pad) mod stride, then
// every stride-th, the output row falling by one each time (the same terms in the same order as
// testing every tap, without a division per tap).
template <typename I>
__device__ __forceinline__ void radar_col2im_body(I total, const float* col, float* dx, int channels, int h, int w, int k, int stride,
                                                  int pad, int ho, int wo) {
    GRID_STRIDE_AS(I, e, total) {
        I q = e / (I)w;
        int ix = (int)(e - q * (I)w);
        I q2 = q / (I)h;
        int iy = (int)(q - q2 * (I)h);
        I b = q2 / (I)channels;
        int c = (int)(q2 - b * (I)channels);
        const float* cb = col + ((long)b * channels + c) * k * k * (long)ho * wo;  // image b, channel c's first row
        int ky0 = (iy + pad) % stride, kx0 = (ix + pad) % stride;
        float s = 0.f;
        for (int ky = ky0, oy = (iy + pad - ky0) / stride; ky < k; ky += stride, --oy) {
            if (oy < 0) break;
            if (oy >= ho) continue;
            for (int kx = kx0, ox = (ix + pad - kx0) / stride; kx < k; kx += stride, --ox) {
                if (ox < 0) break;
                if (ox >= wo) continue;
                s += cb[((long)(ky * k + kx) * ho + oy) * wo + ox];
            }
        }
        dx[e] = s;
    }
}
extern "C" __global__ void radar_col2im(const float* col, float* dx, int batch, int channels, int h, int w, int k, int stride, int pad,
                                        int ho, int wo) {
    RADAR_INDEXED(radar_col2im_body, (long)batch * channels * h * w, col, dx, channels, h, w, k, stride, pad, ho, wo);
}

// y (B, C, R) from x (B, R, C).
extern "C" __global__ void radar_transpose_last_two(const float* x, float* y, int batch, int r, int c) {
    long total = (long)batch * r * c;
    for (long e = (long)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (long)blockDim.x * gridDim.x) {
        long b = e / ((long)r * c), a = (e / c) % r, kk = e % c;
        y[b * r * c + kk * r + a] = x[e];
    }
}

// dst[:, offset:offset+srcCols] = src (rows x srcCols).
extern "C" __global__ void radar_copy_columns(const float* src, int src_cols, float* dst, int dst_cols, int offset, long rows) {
    long total = rows * src_cols;
    for (long e = (long)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (long)blockDim.x * gridDim.x)
        dst[(e / src_cols) * dst_cols + offset + e % src_cols] = src[e];
}

// dst (rows x dstCols) = src[:, offset:offset+dstCols].
extern "C" __global__ void radar_slice_columns(const float* src, int src_cols, int offset, float* dst, int dst_cols, long rows) {
    long total = rows * dst_cols;
    for (long e = (long)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (long)blockDim.x * gridDim.x)
        dst[e] = src[(e / dst_cols) * src_cols + offset + e % dst_cols];
}

// x (B, N, D) -> mean, max, argmax (as float) over tokens; NaN wins the max as in torch.max.
extern "C" __global__ void radar_token_mean_max(const float* x, float* mean, float* mx, float* argmax, int batch, int n, int d) {
    long total = (long)batch * d;
    for (long e = (long)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (long)blockDim.x * gridDim.x) {
        long i = e / d, j = e % d;
        const float* xi = x + i * n * d;
        float s = 0.f, m = __int_as_float(0xff800000);
        int am = 0;
        for (int t = 0; t < n; ++t) {
            float v = xi[(long)t * d + j];
            s += v;
            if (v > m || (v != v && m == m)) { m = v; am = t; }
        }
        mean[e] = s / (float)n;
        mx[e] = m;
        argmax[e] = (float)am;
    }
}

extern "C" __global__ void radar_token_mean_max_backward(const float* d_mean, const float* d_max, const float* argmax, float* dx,
                                                         int batch, int n, int d) {
    long total = (long)batch * n * d;
    for (long e = (long)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (long)blockDim.x * gridDim.x) {
        long i = e / ((long)n * d), t = (e / d) % n, j = e % d;
        float g = d_mean[i * d + j] / (float)n;
        if ((long)argmax[i * d + j] == t) g += d_max[i * d + j];
        dx[e] = g;
    }
}
