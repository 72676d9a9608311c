// The evidence-refinement cross-attention (one query per row over a few evidence tokens, heads
// of E / H) and the gated fusion's backward. One thread per output element; every sum runs over
// its index in the CPU backend's order, so results are bit-identical to it.

// scores (B, H, T) = scale * q_h . k_{t,h}; q (B, E), k (B, T, E).
extern "C" __global__ void radar_query_key_scores(const float* q, const float* k, float* scores, int batch, int tokens, int heads,
                                                  int e, float scale) {
    int hd = e / heads;
    long total = (long)batch * heads * tokens;
    for (long o = (long)blockIdx.x * blockDim.x + threadIdx.x; o < total; o += (long)blockDim.x * gridDim.x) {
        long i = o / ((long)heads * tokens), hh = (o / tokens) % heads, t = o % tokens;
        const float* qp = q + i * e + hh * hd; const float* kp = k + (i * tokens + t) * e + hh * hd;
        float s = 0.f;
        for (int j = 0; j < hd; ++j) s += qp[j] * kp[j];
        scores[o] = s * scale;
    }
}

// dQ (B, E) and dK (B, T, E) from dScores (B, H, T).
extern "C" __global__ void radar_query_key_scores_backward(const float* d_scores, const float* q, const float* k, float* dq, float* dk,
                                                           int batch, int tokens, int heads, int e, float scale) {
    int hd = e / heads;
    long total = (long)batch * e;
    for (long o = (long)blockIdx.x * blockDim.x + threadIdx.x; o < total; o += (long)blockDim.x * gridDim.x) {
        long i = o / e, c = o % e, hh = c / hd;
        float s = 0.f;
        for (int t = 0; t < tokens; ++t) {
            float g = d_scores[(i * heads + hh) * tokens + t] * scale;
            s += g * k[(i * tokens + t) * e + c];
            dk[(i * tokens + t) * e + c] = g * q[o];
        }
        dq[o] = s;
    }
}

// ctx (B, E), ctx_h = sum_t w (B, H, T) v_{t,h}.
extern "C" __global__ void radar_weighted_values(const float* w, const float* v, float* ctx, int batch, int tokens, int heads, int e) {
    int hd = e / heads;
    long total = (long)batch * e;
    for (long o = (long)blockIdx.x * blockDim.x + threadIdx.x; o < total; o += (long)blockDim.x * gridDim.x) {
        long i = o / e, c = o % e, hh = c / hd;
        float s = 0.f;
        for (int t = 0; t < tokens; ++t) s += w[(i * heads + hh) * tokens + t] * v[(i * tokens + t) * e + c];
        ctx[o] = s;
    }
}

// dW (B, H, T) = dCtx_h . v_{t,h}; dV (B, T, E) = w dCtx.
extern "C" __global__ void radar_weighted_values_backward(const float* d_ctx, const float* w, const float* v, float* dw, float* dv,
                                                          int batch, int tokens, int heads, int e) {
    int hd = e / heads;
    long total = (long)batch * heads * tokens;
    for (long o = (long)blockIdx.x * blockDim.x + threadIdx.x; o < total; o += (long)blockDim.x * gridDim.x) {
        long i = o / ((long)heads * tokens), hh = (o / tokens) % heads, t = o % tokens;
        const float* dc = d_ctx + i * e + hh * hd; const float* vp = v + (i * tokens + t) * e + hh * hd;
        float* dvp = dv + (i * tokens + t) * e + hh * hd;
        float wt = w[o], s = 0.f;
        for (int j = 0; j < hd; ++j) { s += dc[j] * vp[j]; dvp[j] = wt * dc[j]; }
        dw[o] = s;
    }
}

// out (B, T) = mean over heads of w (B, H, T).
extern "C" __global__ void radar_mean_over_heads(const float* w, float* out, int batch, int heads, int tokens) {
    long total = (long)batch * tokens;
    for (long o = (long)blockIdx.x * blockDim.x + threadIdx.x; o < total; o += (long)blockDim.x * gridDim.x) {
        long i = o / tokens, t = o % tokens;
        float s = 0.f;
        for (int hh = 0; hh < heads; ++hh) s += w[(i * heads + hh) * tokens + t];
        out[o] = s / (float)heads;
    }
}

// dReasoning, dExternal; the gate logit's gradient accumulated by one block (fixed order).
extern "C" __global__ void radar_gated_fusion_backward(const float* d_final, const float* gate, const float* r, const float* ext,
                                                       float* d_r, float* d_e, float* d_gate, int n) {
    float a = 1.f / (1.f + expf(-gate[0]));
    for (int i = threadIdx.x; i < n; i += blockDim.x) { d_r[i] = a * d_final[i]; d_e[i] = (1.f - a) * d_final[i]; }
    if (threadIdx.x == 0) {
        float g = 0.f;
        for (int i = 0; i < n; ++i) g += d_final[i] * (r[i] - ext[i]);
        d_gate[0] += g * a * (1.f - a);
    }
}
