// Gradient clipping and AdamW, gated on device scalars: the host never reads the norm or
// the non-finite flag inside a step.
#define RADAR_NORM_BLOCK 256

// Sum of squares of x[0..n) in fixed chunks: block b writes partial[b] (double), reduced in a
// fixed tree order inside the block, so the result does not depend on scheduling.
extern "C" __global__ void radar_sum_squares_partial(const float* x, long n, long chunk, double* partial) {
    __shared__ double s[RADAR_NORM_BLOCK];
    long lo = (long)blockIdx.x * chunk, hi = lo + chunk < n ? lo + chunk : n;
    double acc = 0.0;
    for (long i = lo + threadIdx.x; i < hi; i += blockDim.x) { double v = x[i]; acc += v * v; }
    s[threadIdx.x] = acc;
    __syncthreads();
    for (int w = blockDim.x / 2; w > 0; w >>= 1) {
        if (threadIdx.x < w) s[threadIdx.x] += s[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0) partial[blockIdx.x] = s[0];
}

// One thread: partials summed in order; norm, gate (finite and no non-finite flag) and the
// clip coefficient (1 when not clipping) into device scalars.
extern "C" __global__ void radar_clip_coefficient(const double* partial, int parts, float max_norm, const float* non_finite,
                                                  float* norm, float* gate, float* coef) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    double s = 0.0;
    for (int i = 0; i < parts; ++i) s += partial[i];
    double total = sqrt(s);
    norm[0] = (float)total;
    int open = non_finite[0] == 0.f && isfinite(total);
    gate[0] = open ? 1.f : 0.f;
    double c = (double)max_norm / (total + 1e-6);
    coef[0] = (open && c < 1.0) ? (float)c : 1.f;
}

extern "C" __global__ void radar_scale_by_scalar(float* x, long n, const float* coef) {
    float c = coef[0];
    if (c == 1.f) return;
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)blockDim.x * gridDim.x) x[i] *= c;
}

// torch.optim.AdamW (single-tensor order): decay, moments, bias-corrected update; skipped when
// the gate is closed. step_size, bc2_sqrt and decay are formed in double on the host.
extern "C" __global__ void radar_adamw(float* p, const float* g, float* m, float* v, long n, float beta1, float beta2,
                                       float eps, float step_size, float bc2_sqrt, float decay, const float* gate) {
    if (gate[0] == 0.f) return;
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)blockDim.x * gridDim.x) {
        float gi = g[i];
        float pi = p[i] * decay;
        float mi = m[i] + (gi - m[i]) * (1.f - beta1);
        float vi = v[i] * beta2 + (1.f - beta2) * gi * gi;
        float denom = sqrtf(vi) / bc2_sqrt + eps;
        p[i] = pi + -step_size * (mi / denom);
        m[i] = mi;
        v[i] = vi;
    }
}
