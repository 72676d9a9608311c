// The loss kernels: batch means written into device scalars (one block, fixed-order
// reductions), gradients scaled as the CPU backend does.
#define RADAR_LOSS_BLOCK 256

extern "C" __global__ void radar_smooth_labels(const float* labels, float* target, int n, float s) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) target[i] = labels[i] * (1.f - s) + s / 2.f;
}

// BCEWithLogits: loss[0] += weight * mean; dLogits[i] = scale (sigmoid(x) - t) / n. One block.
extern "C" __global__ void radar_bce_with_logits(const float* x, const float* t, int n, float scale, float* d,
                                                 float* loss, float weight) {
    __shared__ double s[RADAR_LOSS_BLOCK];
    double acc = 0.0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float xi = x[i], ti = t[i];
        acc += (double)(fmaxf(xi, 0.f) - xi * ti + log1pf(expf(-fabsf(xi))));
        d[i] = scale * (1.f / (1.f + expf(-xi)) - ti) / (float)n;
    }
    s[threadIdx.x] = acc;
    __syncthreads();
    for (int w = blockDim.x / 2; w > 0; w >>= 1) {
        if (threadIdx.x < w) s[threadIdx.x] += s[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0) loss[0] += (float)((double)weight * (s[0] / n));
}

// flag[0] = 1 when any x is not finite.
extern "C" __global__ void radar_flag_non_finite(const float* x, long n, float* flag) {
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)blockDim.x * gridDim.x)
        if (!isfinite(x[i])) flag[0] = 1.f;
}

// out[0] = mean |sigmoid(a) - sigmoid(b)|. One block.
extern "C" __global__ void radar_mean_abs_sigmoid_difference(const float* a, const float* b, int n, float* out) {
    __shared__ float s[RADAR_LOSS_BLOCK];
    float acc = 0.f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) acc += fabsf(1.f / (1.f + expf(-a[i])) - 1.f / (1.f + expf(-b[i])));
    s[threadIdx.x] = acc;
    __syncthreads();
    for (int w = blockDim.x / 2; w > 0; w >>= 1) {
        if (threadIdx.x < w) s[threadIdx.x] += s[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[0] = s[0] / (float)(n > 0 ? n : 1);
}

// Gated fusion: alpha = sigmoid(gate); final = alpha r + (1 - alpha) e; prob = sigmoid(final).
extern "C" __global__ void radar_gated_fusion_forward(const float* gate, const float* r, const float* e, float* fin,
                                                      float* prob, float* alpha_out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float a = 1.f / (1.f + expf(-gate[0]));
    float f = a * r[i] + (1.f - a) * e[i];
    fin[i] = f;
    prob[i] = 1.f / (1.f + expf(-f));
    alpha_out[i] = a;
}

// mean_b ReLU(|cos(a_b, b_b)| - margin), vectors divided by (norm + 1e-8), zero (and zero
// gradient) unless every norm exceeds 1e-6; loss[0] += weight * penalty, da/db = scale * grad.
// One block: thread t handles rows t, t + blockDim, ... and the block agrees on degeneracy first.
extern "C" __global__ void radar_cosine_margin_penalty(const float* a, const float* b, int rows, int e, float margin, float scale,
                                                       float* da, float* db, float* loss, float weight) {
    __shared__ int degenerate;
    __shared__ double s[RADAR_LOSS_BLOCK];
    if (threadIdx.x == 0) degenerate = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < rows; i += blockDim.x) {
        float sa = 0.f, sb = 0.f;
        for (int j = 0; j < e; ++j) { sa += a[i * e + j] * a[i * e + j]; sb += b[i * e + j] * b[i * e + j]; }
        if (sqrtf(sa) <= 1e-6f || sqrtf(sb) <= 1e-6f) degenerate = 1;
    }
    __syncthreads();
    double acc = 0.0;
    for (int i = threadIdx.x; i < rows; i += blockDim.x) {
        const float* pa = a + i * e; const float* pb = b + i * e;
        float sa = 0.f, sb = 0.f, dot = 0.f;
        for (int j = 0; j < e; ++j) { sa += pa[j] * pa[j]; sb += pb[j] * pb[j]; dot += pa[j] * pb[j]; }
        float na = sqrtf(sa), nb = sqrtf(sb), ua = na + 1e-8f, ub = nb + 1e-8f;
        float c = dot / (ua * ub), excess = fabsf(c) - margin;
        bool active = !degenerate && excess > 0.f;
        if (active) acc += (double)excess;
        float g = scale * (c > 0.f ? 1.f : -1.f) / (float)rows;
        for (int j = 0; j < e; ++j) {
            float dA = pb[j] / (ua * ub) - dot / (ua * ua * ub) * pa[j] / na;
            float dB = pa[j] / (ua * ub) - dot / (ua * ub * ub) * pb[j] / nb;
            da[i * e + j] = active ? g * dA : 0.f;
            db[i * e + j] = active ? g * dB : 0.f;
        }
    }
    s[threadIdx.x] = acc;
    __syncthreads();
    for (int w = blockDim.x / 2; w > 0; w >>= 1) {
        if (threadIdx.x < w) s[threadIdx.x] += s[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0 && !degenerate) loss[0] += (float)((double)weight * (s[0] / rows));
}
