// BatchNorm (and its SyncBatchNorm pieces), global average pooling and the GRUCell gates. Per-
// channel sums in two launches: one block per (image, channel) plane, each thread summing a
// strided slice in double and a fixed-order tree in shared memory combining them; then one thread
// per channel adds its planes over the batch in order (deterministic; no atomics). One block per
// channel (the first version) gave a GPU 32 to 128 blocks for a whole batch's activations.
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

// The sum of a plane of hw values (double): strided slices, then block_sum_double's tree.
__device__ __forceinline__ double plane_sum_double(const float* xp, int hw, double* s) {
    double acc = 0.0;
    for (int j = threadIdx.x; j < hw; j += blockDim.x) acc += (double)xp[j];
    return block_sum_double(acc, s);
}

// partial[2p] = the sum of plane p of x (B, C, HW), partial[2p + 1] = the sum of its squared
// deviations from the plane's own mean.
extern "C" __global__ void radar_plane_moments(const float* x, double* partial, int hw) {
    __shared__ double s[RADAR_CHANNEL_BLOCK];
    const float* xp = x + (long)blockIdx.x * hw;
    double sum = plane_sum_double(xp, hw, s), m = sum / (double)hw;
    double v = 0.0;
    for (int j = threadIdx.x; j < hw; j += blockDim.x) {
        double d = (double)xp[j] - m;
        v += d * d;
    }
    double squares = block_sum_double(v, s);
    if (threadIdx.x == 0) { partial[2 * (long)blockIdx.x] = sum; partial[2 * (long)blockIdx.x + 1] = squares; }
}

// Mean and biased variance per channel from its planes' moments, the batch in order: the
// squared deviations are the planes' own plus hw (plane mean - mean)^2 each (exact).
extern "C" __global__ void radar_channel_moments_from_planes(const double* partial, int batch, int channels, int hw, float* mean,
                                                             float* variance) {
    int ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= channels) return;
    double n = (double)batch * hw, s = 0.0;
    for (int b = 0; b < batch; ++b) s += partial[2 * ((long)b * channels + ch)];
    double m = s / n, squares = 0.0;
    for (int b = 0; b < batch; ++b) {
        long p = 2 * ((long)b * channels + ch);
        double d = partial[p] / (double)hw - m;
        squares += partial[p + 1] + (double)hw * d * d;
    }
    mean[ch] = (float)m;
    variance[ch] = (float)(squares / n);
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

// partial[2p] = sum of dy over plane p, partial[2p + 1] = sum of dy * xhat over it.
extern "C" __global__ void radar_plane_gradient_sums(const float* dy, const float* x, const float* mean, const float* inv_std,
                                                     double* partial, int channels, int hw) {
    __shared__ double s[RADAR_CHANNEL_BLOCK];
    int ch = (int)(blockIdx.x % channels);
    long base = (long)blockIdx.x * hw;
    float m = mean[ch], inv = inv_std[ch];
    double a = 0.0, b = 0.0;
    for (int j = threadIdx.x; j < hw; j += blockDim.x) {
        float d = dy[base + j];
        a += (double)d;
        b += (double)(d * ((x[base + j] - m) * inv));
    }
    double sa = block_sum_double(a, s), sb = block_sum_double(b, s);
    if (threadIdx.x == 0) { partial[2 * (long)blockIdx.x] = sa; partial[2 * (long)blockIdx.x + 1] = sb; }
}

// partial[p] = the sum of plane p (double).
extern "C" __global__ void radar_plane_sums(const float* x, double* partial, int hw) {
    __shared__ double s[RADAR_CHANNEL_BLOCK];
    double total = plane_sum_double(x + (long)blockIdx.x * hw, hw, s);
    if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

// dst[ch] = (accumulate ? dst[ch] : 0) + the sum over the batch, in order, of component
// `component` of the planes' `width` partials.
extern "C" __global__ void radar_sum_planes_over_batch(const double* partial, int batch, int channels, int width, int component,
                                                       float* dst, int accumulate) {
    int ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= channels) return;
    double s = 0.0;
    for (int b = 0; b < batch; ++b) s += partial[((long)b * channels + ch) * width + component];
    dst[ch] = accumulate ? dst[ch] + (float)s : (float)s;
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
