// BatchNorm (and its SyncBatchNorm pieces), global average pooling and the GRUCell gates. Per-
// channel statistics: one block per channel, each thread summing a strided slice in double, then
// a fixed-order tree in shared memory (deterministic; no atomics).
#define RADAR_CHANNEL_BLOCK 256

__device__ __forceinline__ double block_sum_double(double v, double* s) {
    s[threadIdx.x] = v;
    __syncthreads();
    for (int w = blockDim.x / 2; w > 0; w >>= 1) {
        if (threadIdx.x < w) s[threadIdx.x] += s[threadIdx.x + w];
        __syncthreads();
    }
    double total = s[0];
    __syncthreads();
    return total;
}

// Mean and biased variance of channel blockIdx.x of x (B, C, HW).
extern "C" __global__ void radar_channel_moments(const float* x, float* mean, float* variance, int batch, int channels, int hw) {
    __shared__ double s[RADAR_CHANNEL_BLOCK];
    int ch = blockIdx.x;
    long n = (long)batch * hw;
    double acc = 0.0;
    for (long k = threadIdx.x; k < n; k += blockDim.x) acc += x[((k / hw) * channels + ch) * (long)hw + k % hw];
    double m = block_sum_double(acc, s) / (double)n;
    double v = 0.0;
    for (long k = threadIdx.x; k < n; k += blockDim.x) {
        double d = (double)x[((k / hw) * channels + ch) * (long)hw + k % hw] - m;
        v += d * d;
    }
    double var = block_sum_double(v, s) / (double)n;
    if (threadIdx.x == 0) { mean[ch] = (float)m; variance[ch] = (float)var; }
}

// invStd, and the running statistics moved by momentum (running variance unbiased).
extern "C" __global__ void radar_batchnorm_update_statistics(const float* mean, const float* variance, int channels, int count,
                                                             float eps, float momentum, float* inv_std, float* running_mean,
                                                             float* running_var) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= channels) return;
    float unbias = count > 1 ? (float)count / (float)(count - 1) : 1.f;
    inv_std[c] = 1.f / sqrtf(variance[c] + eps);
    running_mean[c] = (1.f - momentum) * running_mean[c] + momentum * mean[c];
    running_var[c] = (1.f - momentum) * running_var[c] + momentum * variance[c] * unbias;
}

extern "C" __global__ void radar_channel_normalize(const float* x, const float* mean, const float* inv_std, const float* gamma,
                                                   const float* beta, float* y, long n, int channels, int hw) {
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)blockDim.x * gridDim.x) {
        int ch = (int)((i / hw) % channels);
        y[i] = (x[i] - mean[ch]) * (inv_std[ch] * gamma[ch]) + beta[ch];
    }
}

// Per channel: sum dy and sum dy * xhat (written), one block per channel.
extern "C" __global__ void radar_channel_gradient_sums(const float* dy, const float* x, const float* mean, const float* inv_std,
                                                       float* sum_dy, float* sum_dy_xhat, int batch, int channels, int hw) {
    __shared__ double s[RADAR_CHANNEL_BLOCK];
    int ch = blockIdx.x;
    long n = (long)batch * hw;
    float m = mean[ch], inv = inv_std[ch];
    double a = 0.0, b = 0.0;
    for (long k = threadIdx.x; k < n; k += blockDim.x) {
        long i = ((k / hw) * channels + ch) * (long)hw + k % hw;
        a += (double)dy[i];
        b += (double)(dy[i] * ((x[i] - m) * inv));
    }
    double sa = block_sum_double(a, s), sb = block_sum_double(b, s);
    if (threadIdx.x == 0) { sum_dy[ch] = (float)sa; sum_dy_xhat[ch] = (float)sb; }
}

// dx = gamma invStd (dy - sumDy/count - xhat sumDyXhat/count); count 0 (eval): gamma invStd dy.
extern "C" __global__ void radar_batchnorm_input_gradient(const float* dy, const float* x, const float* mean, const float* inv_std,
                                                          const float* gamma, const float* sum_dy, const float* sum_dy_xhat,
                                                          int count, float* dx, long n, int channels, int hw) {
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)blockDim.x * gridDim.x) {
        int ch = (int)((i / hw) % channels);
        float inv = inv_std[ch], g = gamma[ch] * inv;
        if (count == 0) { dx[i] = dy[i] * g; continue; }
        float m_dy = sum_dy[ch] / (float)count, m_dyx = sum_dy_xhat[ch] / (float)count;
        dx[i] = g * (dy[i] - m_dy - (x[i] - mean[ch]) * inv * m_dyx);
    }
}

// y[plane] = mean of x over the plane's hw values (one thread per plane, in order).
extern "C" __global__ void radar_global_avg_pool_forward(const float* x, float* y, int planes, int hw) {
    int p = blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= planes) return;
    float s = 0.f;
    for (int j = 0; j < hw; ++j) s += x[(long)p * hw + j];
    y[p] = s / (float)hw;
}

extern "C" __global__ void radar_global_avg_pool_backward(const float* dy, float* dx, long n, int hw) {
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)blockDim.x * gridDim.x) dx[i] = dy[i / hw] / (float)hw;
}

__device__ __forceinline__ float sigmoidf(float v) { return 1.f / (1.f + expf(-v)); }

// GRUCell gates (r, z, n order) from gi = x W_ih^T + b_ih and gh = h W_hh^T + b_hh, both (B, 3E).
extern "C" __global__ void radar_gru_gates_forward(const float* gi, const float* gh, const float* h, float* h_new, float* r,
                                                   float* z, float* n, int batch, int e) {
    long total = (long)batch * e;
    for (long o = (long)blockIdx.x * blockDim.x + threadIdx.x; o < total; o += (long)blockDim.x * gridDim.x) {
        long i = o / e, j = o % e;
        const float* a = gi + i * 3 * e; const float* g = gh + i * 3 * e;
        float rv = sigmoidf(a[j] + g[j]);
        float zv = sigmoidf(a[e + j] + g[e + j]);
        float nv = tanhf(a[2 * e + j] + rv * g[2 * e + j]);
        r[o] = rv; z[o] = zv; n[o] = nv;
        h_new[o] = (1.f - zv) * nv + zv * h[o];
    }
}

extern "C" __global__ void radar_gru_gates_backward(const float* dh_new, const float* gh, const float* h, const float* r,
                                                    const float* z, const float* n, float* dgi, float* dgh, float* dh, int batch, int e) {
    long total = (long)batch * e;
    for (long o = (long)blockIdx.x * blockDim.x + threadIdx.x; o < total; o += (long)blockDim.x * gridDim.x) {
        long i = o / e, j = o % e;
        const float* g = gh + i * 3 * e; float* di = dgi + i * 3 * e; float* dg = dgh + i * 3 * e;
        float d = dh_new[o], rv = r[o], zv = z[o], nv = n[o];
        float dz = d * (h[o] - nv);
        float dn_pre = d * (1.f - zv) * (1.f - nv * nv);
        float dr = dn_pre * g[2 * e + j];
        float dr_pre = dr * rv * (1.f - rv);
        float dz_pre = dz * zv * (1.f - zv);
        di[j] = dr_pre; di[e + j] = dz_pre; di[2 * e + j] = dn_pre;
        dg[j] = dr_pre; dg[e + j] = dz_pre; dg[2 * e + j] = dn_pre * rv;
        dh[o] = d * zv;
    }
}

// dst[c] += sum over (B, HW) of x (convolution bias gradients): one thread per channel, in order.
extern "C" __global__ void radar_accumulate_channel_sums(const float* x, float* dst, int batch, int channels, int hw) {
    int ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= channels) return;
    float s = 0.f;
    for (int i = 0; i < batch; ++i)
        for (int j = 0; j < hw; ++j) s += x[((long)i * channels + ch) * hw + j];
    dst[ch] += s;
}

extern "C" __global__ void radar_inverse_std(const float* variance, float eps, float* inv_std, int channels) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c < channels) inv_std[c] = 1.f / sqrtf(variance[c] + eps);
}

// SyncBatchNorm: [count*mean (C), count*(var + mean^2) (C), count] to be summed over ranks ...
extern "C" __global__ void radar_batchnorm_local_sums(const float* mean, const float* variance, int channels, float count, float* sums) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < channels) {
        sums[i] = mean[i] * count;
        sums[channels + i] = (variance[i] + mean[i] * mean[i]) * count;
    }
    if (i == 0) sums[2 * channels] = count;
}

// ... and the global mean and biased variance from the summed vector.
extern "C" __global__ void radar_batchnorm_global_moments(const float* sums, int channels, float* mean, float* variance) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= channels) return;
    float n = sums[2 * channels], m = sums[i] / n;
    mean[i] = m;
    variance[i] = fmaxf(sums[channels + i] / n - m * m, 0.f);
}
