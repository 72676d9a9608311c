// Data movement: im2col and its adjoint col2im for the convolutions (col2im gathers, so every
// input pixel sums its contributions in the CPU backend's order with no atomics), transposes,
// column copies, and the token mean/max of BADM's patch features.

// col (B, C*k*k, Ho*Wo) from x (B, C, H, W), zero padding.
extern "C" __global__ void radar_im2col(const float* x, float* col, int batch, int channels, int h, int w, int k, int stride, int pad,
                                        int ho, int wo) {
    long total = (long)batch * channels * k * k * ho * wo;
    for (long e = (long)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (long)blockDim.x * gridDim.x) {
        long ox = e % wo, oy = (e / wo) % ho, row = (e / ((long)wo * ho)) % ((long)channels * k * k), b = e / ((long)wo * ho * channels * k * k);
        int kx = (int)(row % k), ky = (int)((row / k) % k), c = (int)(row / ((long)k * k));
        int iy = (int)oy * stride - pad + ky, ix = (int)ox * stride - pad + kx;
        col[e] = (iy >= 0 && iy < h && ix >= 0 && ix < w) ? x[((b * channels + c) * h + iy) * (long)w + ix] : 0.f;
    }
}

// dx (B, C, H, W) = col2im(col): each pixel gathers over (ky, kx) in order (written, not added).
extern "C" __global__ void radar_col2im(const float* col, float* dx, int batch, int channels, int h, int w, int k, int stride, int pad,
                                        int ho, int wo) {
    long total = (long)batch * channels * h * w;
    for (long e = (long)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (long)blockDim.x * gridDim.x) {
        int ix = (int)(e % w), iy = (int)((e / w) % h), c = (int)((e / ((long)w * h)) % channels);
        long b = e / ((long)w * h * channels);
        float s = 0.f;
        for (int ky = 0; ky < k; ++ky) {
            int ty = iy + pad - ky;
            if (ty < 0 || ty % stride != 0 || ty / stride >= ho) continue;
            for (int kx = 0; kx < k; ++kx) {
                int tx = ix + pad - kx;
                if (tx < 0 || tx % stride != 0 || tx / stride >= wo) continue;
                long row = ((long)c * k + ky) * k + kx;
                s += col[((b * channels * k * k + row) * ho + ty / stride) * (long)wo + tx / stride];
            }
        }
        dx[e] = s;
    }
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
