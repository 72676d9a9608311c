#include "CTensorKernels.h"
// Never fuse a multiply and an add behind the code's back: the Swift twins round each, except
// where both say fused (GELU's Horner steps: fmaf here, addingProduct there).
#pragma STDC FP_CONTRACT OFF
#include <math.h>
#include <stdint.h>
#include <string.h>

// Scalar twins of FastMath.swift's fastExp and fastNormalCDF (same constants, same operation
// order), for the elements after the last full group of eight.
static inline float bits_float(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t float_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

// One Horner step, p t + c: rounded twice, or (fused) once. x - c and x + (-c) are the same
// IEEE operation, so the subtracting steps pass -c.
static inline float step_s(float p, float t, float c, int fused) { return fused ? fmaf(p, t, c) : p * t + c; }

static inline float scalar_exp(float x, int fused) {
    float clamped = x < -87.3f ? -87.3f : (x > 88.7f ? 88.7f : x);
    const float magic = 12582912.0f;
    float shifted = clamped * 1.44269504f + magic;
    float n = shifted - magic;
    int32_t ni = (int32_t)(float_bits(shifted) - 0x4B400000u);
    float r = (clamped - n * 0.693145751953125f) - n * 1.428606765330187e-06f;
    float p = 1.0f / 5040;
    p = step_s(p, r, 1.0f / 720, fused);
    p = step_s(p, r, 1.0f / 120, fused);
    p = step_s(p, r, 1.0f / 24, fused);
    p = step_s(p, r, 1.0f / 6, fused);
    p = step_s(p, r, 0.5f, fused);
    p = step_s(p, r, 1, fused);
    p = step_s(p, r, 1, fused);
    float scale = bits_float((uint32_t)(ni + 127) << 23);
    return isnan(x) ? x : p * scale;
}

// erfc's polynomial P(t), highest degree first (FastMath.swift's fastNormalCDF), shared by the
// scalar and the vector code; subtracting steps hold -c.
static const float cdf_poly[10] = {0.144928632f, -0.680821846f, 1.15672880f, -0.696255170f, -0.0802697854f,
                                   0.00125786078f, 0.0346074290f, 0.386639183f, 0.998632955f, -1.26544801f};

static inline float scalar_cdf(float x, int fused) {
    float z = fabsf(x) * 0.70710678f;
    float t = 1 / (1 + 0.5f * z);
    float p = cdf_poly[0];
    for (int k = 1; k < 10; k++) p = step_s(p, t, cdf_poly[k], fused);
    float half = 0.5f * t * scalar_exp(p - z * z, fused);
    return x < 0 ? half : 1 - half;
}

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

// AVX2 with FMA (every AVX2 CPU of Intel's and AMD's has both): GELU's Horner steps are fused.
int radar_tensor_kernels_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? 1 : 0;
}

#define MUL _mm256_mul_ps
#define ADD _mm256_add_ps
#define SUB _mm256_sub_ps
#define SET _mm256_set1_ps

__attribute__((target("avx2,fma")))
static inline __m256 step_v(__m256 p, __m256 t, float c, int fused) {
    return fused ? _mm256_fmadd_ps(p, t, SET(c)) : ADD(MUL(p, t), SET(c));
}

__attribute__((target("avx2,fma")))
static inline __m256 vector_exp(__m256 x, int fused) {
    __m256 lo = SET(-87.3f), hi = SET(88.7f);
    // x < -87.3 ? -87.3 : (x > 88.7 ? 88.7 : x), NaN passing through as in the scalar code.
    __m256 clamped = _mm256_blendv_ps(x, hi, _mm256_cmp_ps(x, hi, _CMP_GT_OQ));
    clamped = _mm256_blendv_ps(clamped, lo, _mm256_cmp_ps(x, lo, _CMP_LT_OQ));
    __m256 magic = SET(12582912.0f);
    __m256 shifted = ADD(MUL(clamped, SET(1.44269504f)), magic);
    __m256 n = SUB(shifted, magic);
    __m256i ni = _mm256_sub_epi32(_mm256_castps_si256(shifted), _mm256_set1_epi32(0x4B400000));
    __m256 r = SUB(SUB(clamped, MUL(n, SET(0.693145751953125f))), MUL(n, SET(1.428606765330187e-06f)));
    __m256 p = SET(1.0f / 5040);
    p = step_v(p, r, 1.0f / 720, fused);
    p = step_v(p, r, 1.0f / 120, fused);
    p = step_v(p, r, 1.0f / 24, fused);
    p = step_v(p, r, 1.0f / 6, fused);
    p = step_v(p, r, 0.5f, fused);
    p = step_v(p, r, 1.0f, fused);
    p = step_v(p, r, 1.0f, fused);
    __m256 scale = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(ni, _mm256_set1_epi32(127)), 23));
    return _mm256_blendv_ps(MUL(p, scale), x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
}

__attribute__((target("avx2,fma")))
static inline __m256 vector_cdf(__m256 x, int fused) {
    __m256 absx = _mm256_andnot_ps(SET(-0.0f), x);
    __m256 z = MUL(absx, SET(0.70710678f));
    __m256 t = _mm256_div_ps(SET(1.0f), ADD(SET(1.0f), MUL(SET(0.5f), z)));
    __m256 p = SET(cdf_poly[0]);
    for (int k = 1; k < 10; k++) p = step_v(p, t, cdf_poly[k], fused);
    __m256 half = MUL(MUL(SET(0.5f), t), vector_exp(SUB(p, MUL(z, z)), fused));
    return _mm256_blendv_ps(SUB(SET(1.0f), half), half, _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ));
}

// GELU fuses its Horner steps (a third faster here); softmax does not. cdf may be NULL (not kept).
__attribute__((target("avx2,fma")))
void radar_gelu_forward_avx2(const float *x, float *y, float *cdf, long n) {
    long i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m256 phi = vector_cdf(v, 1);
        if (cdf) _mm256_storeu_ps(cdf + i, phi);
        _mm256_storeu_ps(y + i, MUL(v, phi));
    }
    for (; i < n; i++) {
        float v = x[i], phi = scalar_cdf(v, 1);
        if (cdf) cdf[i] = phi;
        y[i] = v * phi;
    }
}

// cdf NULL: recomputed with the forward's code, so it is the forward's bit for bit.
__attribute__((target("avx2,fma")))
void radar_gelu_backward_avx2(const float *dy, const float *x, const float *cdf, float *dx, long n) {
    long i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m256 pdf = MUL(vector_exp(MUL(MUL(SET(-0.5f), v), v), 1), SET(0.39894228f));
        __m256 phi = cdf ? _mm256_loadu_ps(cdf + i) : vector_cdf(v, 1);
        _mm256_storeu_ps(dx + i, MUL(_mm256_loadu_ps(dy + i), ADD(phi, MUL(v, pdf))));
    }
    for (; i < n; i++) {
        float v = x[i];
        float pdf = scalar_exp(-0.5f * v * v, 1) * 0.39894228f;
        dx[i] = dy[i] * ((cdf ? cdf[i] : scalar_cdf(v, 1)) + v * pdf);
    }
}

// Eight lanes of a row's sum combined as ((0+1)+(2+3))+((4+5)+(6+7)), the lanes given as a vector
// (elements 8i + l in lane l) and the tail after the last full group added to lane j % 8.
__attribute__((target("avx2,fma")))
static inline float lanes_total(__m256 acc, const float *tail, long from, long cols) {
    float a[8];
    _mm256_storeu_ps(a, acc);
    for (long j = from; j < cols; j++) a[j % 8] += tail[j];
    return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

__attribute__((target("avx2,fma")))
void radar_softmax_forward_avx2(const float *x, float *y, long rows, long cols) {
    for (long r = 0; r < rows; r++) {
        const float *xi = x + r * cols;
        float *yi = y + r * cols;
        // The maximum: maxps(v, m) is v > m ? v : m, so a NaN element is passed over as in the
        // Swift loop's max; the order only decides the sign of a zero maximum, which exp(x - max)
        // does not see.
        __m256 vm = SET(-INFINITY);
        long j = 0;
        for (; j + 8 <= cols; j += 8) vm = _mm256_max_ps(_mm256_loadu_ps(xi + j), vm);
        float lanes[8], m = -INFINITY;
        _mm256_storeu_ps(lanes, vm);
        for (int l = 0; l < 8; l++) m = lanes[l] >= m ? lanes[l] : m;
        for (; j < cols; j++) m = xi[j] >= m ? xi[j] : m;
        vm = SET(m);
        __m256 acc = _mm256_setzero_ps();
        for (j = 0; j + 8 <= cols; j += 8) {
            __m256 e = vector_exp(SUB(_mm256_loadu_ps(xi + j), vm), 0);
            _mm256_storeu_ps(yi + j, e);
            acc = ADD(acc, e);
        }
        long full = j;
        for (; j < cols; j++) yi[j] = scalar_exp(xi[j] - m, 0);
        float inv = 1 / lanes_total(acc, yi, full, cols);
        __m256 vinv = SET(inv);
        for (j = 0; j + 8 <= cols; j += 8) _mm256_storeu_ps(yi + j, MUL(_mm256_loadu_ps(yi + j), vinv));
        for (; j < cols; j++) yi[j] *= inv;
    }
}

__attribute__((target("avx2,fma")))
void radar_softmax_backward_avx2(const float *dy, const float *y, float *dx, long rows, long cols) {
    for (long r = 0; r < rows; r++) {
        const float *d = dy + r * cols, *yi = y + r * cols;
        float *o = dx + r * cols;
        __m256 acc = _mm256_setzero_ps();
        long j = 0;
        for (; j + 8 <= cols; j += 8) acc = ADD(acc, MUL(_mm256_loadu_ps(d + j), _mm256_loadu_ps(yi + j)));
        float a[8];
        _mm256_storeu_ps(a, acc);
        for (long t = j; t < cols; t++) a[t % 8] += d[t] * yi[t];
        float dot = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
        __m256 vdot = SET(dot);
        for (j = 0; j + 8 <= cols; j += 8)
            _mm256_storeu_ps(o + j, MUL(_mm256_loadu_ps(yi + j), SUB(_mm256_loadu_ps(d + j), vdot)));
        for (; j < cols; j++) o[j] = yi[j] * (d[j] - dot);
    }
}

__attribute__((target("avx2,fma")))
void radar_adamw_avx2(float *p, const float *g, float *m, float *v, long n, float decay, float omb1, float beta2,
                      float omb2, float bc2Sqrt, float eps, float negStep) {
    const __m256 vdecay = SET(decay), vomb1 = SET(omb1), vbeta2 = SET(beta2), vomb2 = SET(omb2);
    const __m256 vbc2 = SET(bc2Sqrt), veps = SET(eps), vneg = SET(negStep);
    long i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 gi = _mm256_loadu_ps(g + i), mi = _mm256_loadu_ps(m + i), vi = _mm256_loadu_ps(v + i);
        __m256 pi = MUL(_mm256_loadu_ps(p + i), vdecay);
        mi = ADD(mi, MUL(SUB(gi, mi), vomb1));
        vi = ADD(MUL(vi, vbeta2), MUL(MUL(vomb2, gi), gi));
        __m256 denom = ADD(_mm256_div_ps(_mm256_sqrt_ps(vi), vbc2), veps);
        pi = ADD(pi, MUL(vneg, _mm256_div_ps(mi, denom)));
        _mm256_storeu_ps(m + i, mi);
        _mm256_storeu_ps(v + i, vi);
        _mm256_storeu_ps(p + i, pi);
    }
    for (; i < n; i++) {
        float gi = g[i];
        p[i] *= decay;
        m[i] += (gi - m[i]) * omb1;
        v[i] = v[i] * beta2 + omb2 * gi * gi;
        float denom = sqrtf(v[i]) / bc2Sqrt + eps;
        p[i] += negStep * (m[i] / denom);
    }
}

#else

int radar_tensor_kernels_avx2(void) { return 0; }
void radar_softmax_forward_avx2(const float *x, float *y, long rows, long cols) { (void)x; (void)y; (void)rows; (void)cols; }
void radar_softmax_backward_avx2(const float *dy, const float *y, float *dx, long rows, long cols) {
    (void)dy; (void)y; (void)dx; (void)rows; (void)cols;
}
void radar_adamw_avx2(float *p, const float *g, float *m, float *v, long n, float decay, float omb1, float beta2,
                      float omb2, float bc2Sqrt, float eps, float negStep) {
    (void)p; (void)g; (void)m; (void)v; (void)n; (void)decay; (void)omb1; (void)beta2; (void)omb2; (void)bc2Sqrt; (void)eps; (void)negStep;
}
void radar_gelu_forward_avx2(const float *x, float *y, float *cdf, long n) { (void)x; (void)y; (void)cdf; (void)n; }
void radar_gelu_backward_avx2(const float *dy, const float *x, const float *cdf, float *dx, long n) {
    (void)dy; (void)x; (void)cdf; (void)dx; (void)n;
}

#endif

// bfloat16 operands for the CPU backend's bf16 products: round to nearest even (NaN kept quiet),
// rows x cols out of a matrix with leading dimension ld, packed (leading dimension cols).
static inline uint32_t radar_bf16_round_bits(uint32_t u) {
    if ((u & 0x7fffffffu) > 0x7f800000u) return (u | 0x00400000u) & 0xffff0000u;
    return (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
}

#if defined(__x86_64__) || defined(__i386__)
// Eight elements of radar_bf16_round_bits at once, the same integer operations: u + 0x7fff + the
// kept part's lowest bit, or u with the quiet bit set where u is a NaN; the low half cleared.
__attribute__((target("avx2"))) static inline __m256i bf16_round8(__m256i u) {
    __m256i one = _mm256_set1_epi32(1);
    __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), one);
    __m256i rounded = _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), odd);
    __m256i magnitude = _mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff));
    __m256i nan = _mm256_cmpgt_epi32(magnitude, _mm256_set1_epi32(0x7f800000));
    __m256i quiet = _mm256_or_si256(u, _mm256_set1_epi32(0x00400000));
    return _mm256_and_si256(_mm256_blendv_epi8(rounded, quiet, nan), _mm256_set1_epi32((int)0xffff0000u));
}

__attribute__((target("avx2"))) static void round_bf16_rows_avx2(const float *src, int64_t rows, int64_t cols, int64_t ld, float *dst) {
    for (int64_t r = 0; r < rows; r++) {
        const uint32_t *s = (const uint32_t *)(src + r * ld);
        uint32_t *d = (uint32_t *)(dst + r * cols);
        int64_t c = 0;
        for (; c + 8 <= cols; c += 8)
            _mm256_storeu_si256((__m256i *)(d + c), bf16_round8(_mm256_loadu_si256((const __m256i *)(s + c))));
        for (; c < cols; c++) d[c] = radar_bf16_round_bits(s[c]);
    }
}

__attribute__((target("avx2"))) static void to_bf16_rows_avx2(const float *src, int64_t rows, int64_t cols, int64_t ld, uint16_t *dst) {
    for (int64_t r = 0; r < rows; r++) {
        const uint32_t *s = (const uint32_t *)(src + r * ld);
        uint16_t *d = dst + r * cols;
        int64_t c = 0;
        for (; c + 16 <= cols; c += 16) {
            __m256i lo = _mm256_srli_epi32(bf16_round8(_mm256_loadu_si256((const __m256i *)(s + c))), 16);
            __m256i hi = _mm256_srli_epi32(bf16_round8(_mm256_loadu_si256((const __m256i *)(s + c + 8))), 16);
            // packus works within 128-bit lanes (lo0 hi0 lo1 hi1): put the quarters back in order.
            __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(lo, hi), 0xd8);
            _mm256_storeu_si256((__m256i *)(d + c), packed);
        }
        for (; c < cols; c++) d[c] = (uint16_t)(radar_bf16_round_bits(s[c]) >> 16);
    }
}
#endif

void radar_round_bf16_matrix(const float *src, int64_t rows, int64_t cols, int64_t ld, float *dst, int allow_avx2) {
#if defined(__x86_64__) || defined(__i386__)
    if (allow_avx2) { round_bf16_rows_avx2(src, rows, cols, ld, dst); return; }
#endif
    (void)allow_avx2;
    for (int64_t r = 0; r < rows; r++) {
        const uint32_t *s = (const uint32_t *)(src + r * ld);
        uint32_t *d = (uint32_t *)(dst + r * cols);
        for (int64_t c = 0; c < cols; c++) d[c] = radar_bf16_round_bits(s[c]);
    }
}

void radar_to_bf16_matrix(const float *src, int64_t rows, int64_t cols, int64_t ld, uint16_t *dst, int allow_avx2) {
#if defined(__x86_64__) || defined(__i386__)
    if (allow_avx2) { to_bf16_rows_avx2(src, rows, cols, ld, dst); return; }
#endif
    (void)allow_avx2;
    for (int64_t r = 0; r < rows; r++) {
        const uint32_t *s = (const uint32_t *)(src + r * ld);
        uint16_t *d = dst + r * cols;
        for (int64_t c = 0; c < cols; c++) d[c] = (uint16_t)(radar_bf16_round_bits(s[c]) >> 16);
    }
}

// LayerNorm over rows of `cols`, portable C that the compiler vectorises: each row's sums in eight
// lanes (element j into lane j % 8, lanes combined as ((0+1)+(2+3))+((4+5)+(6+7))), so the result
// depends on the shape only; built twice, for AVX2 and for any x86-64, with the same IEEE
// operations (no fused multiply-add); callers pass allow_avx2 = radar_tensor_kernels_avx2().
#define RADAR_LANES 8
#define RADAR_LANE_TREE(a) (((a)[0] + (a)[1]) + ((a)[2] + (a)[3])) + (((a)[4] + (a)[5]) + ((a)[6] + (a)[7]))

static inline __attribute__((always_inline)) void layernorm_forward_body(const float *x, const float *gamma, const float *beta,
                                                                          float eps, float *y, float *mean, float *rstd,
                                                                          long rows, long cols) {
    long full = cols / RADAR_LANES * RADAR_LANES;
    for (long r = 0; r < rows; r++) {
        const float *xi = x + r * cols;
        float *yi = y + r * cols;
        double acc[RADAR_LANES] = {0};
        for (long j = 0; j < full; j += RADAR_LANES)
            for (int l = 0; l < RADAR_LANES; l++) acc[l] += (double)xi[j + l];
        for (long j = full; j < cols; j++) acc[j % RADAR_LANES] += (double)xi[j];
        double m = (RADAR_LANE_TREE(acc)) / (double)cols;
        double sq[RADAR_LANES] = {0};
        for (long j = 0; j < full; j += RADAR_LANES)
            for (int l = 0; l < RADAR_LANES; l++) { double d = (double)xi[j + l] - m; sq[l] += d * d; }
        for (long j = full; j < cols; j++) { double d = (double)xi[j] - m; sq[j % RADAR_LANES] += d * d; }
        float rs = (float)(1.0 / sqrt((RADAR_LANE_TREE(sq)) / (double)cols + (double)eps));
        float mf = (float)m;
        for (long j = 0; j < cols; j++) yi[j] = (xi[j] - mf) * rs * gamma[j] + beta[j];
        mean[r] = mf;
        rstd[r] = rs;
    }
}

static inline __attribute__((always_inline)) void layernorm_backward_body(const float *dy, const float *x, const float *gamma,
                                                                           const float *mean, const float *rstd, float *dx,
                                                                           long rows, long cols) {
    long full = cols / RADAR_LANES * RADAR_LANES;
    float invN = 1.0f / (float)cols;
    for (long r = 0; r < rows; r++) {
        const float *xi = x + r * cols, *di = dy + r * cols;
        float *o = dx + r * cols;
        float m = mean[r], rs = rstd[r];
        float sg[RADAR_LANES] = {0}, sgx[RADAR_LANES] = {0};
        for (long j = 0; j < full; j += RADAR_LANES)
            for (int l = 0; l < RADAR_LANES; l++) {
                float g = di[j + l] * gamma[j + l];
                sg[l] += g;
                sgx[l] += g * (xi[j + l] - m) * rs;
            }
        for (long j = full; j < cols; j++) {
            float g = di[j] * gamma[j];
            sg[j % RADAR_LANES] += g;
            sgx[j % RADAR_LANES] += g * (xi[j] - m) * rs;
        }
        float sumG = RADAR_LANE_TREE(sg), sumGX = RADAR_LANE_TREE(sgx);
        for (long j = 0; j < cols; j++) {
            float xhat = (xi[j] - m) * rs;
            o[j] = rs * (di[j] * gamma[j] - invN * sumG - xhat * invN * sumGX);
        }
    }
}

// Columns [c0, c1) (at most 64 of them): rows walked in order, columns contiguous.
static inline __attribute__((always_inline)) void layernorm_parameter_body(const float *dy, const float *x, const float *mean,
                                                                            const float *rstd, long rows, long cols, long c0,
                                                                            long c1, float *dGamma, float *dBeta) {
    float sg[64] = {0}, sb[64] = {0};
    long n = c1 - c0;
    for (long r = 0; r < rows; r++) {
        const float *d = dy + r * cols + c0, *xr = x + r * cols + c0;
        float m = mean[r], rs = rstd[r];
        for (long j = 0; j < n; j++) {
            sg[j] += d[j] * (xr[j] - m) * rs;
            sb[j] += d[j];
        }
    }
    for (long j = 0; j < n; j++) {
        dGamma[c0 + j] += sg[j];
        dBeta[c0 + j] += sb[j];
    }
}

#if defined(__x86_64__) || defined(__i386__)
__attribute__((target("avx2"))) static void layernorm_forward_avx2(const float *x, const float *gamma, const float *beta, float eps,
                                                                   float *y, float *mean, float *rstd, long rows, long cols) {
    layernorm_forward_body(x, gamma, beta, eps, y, mean, rstd, rows, cols);
}
__attribute__((target("avx2"))) static void layernorm_backward_avx2(const float *dy, const float *x, const float *gamma,
                                                                    const float *mean, const float *rstd, float *dx, long rows,
                                                                    long cols) {
    layernorm_backward_body(dy, x, gamma, mean, rstd, dx, rows, cols);
}
__attribute__((target("avx2"))) static void layernorm_parameter_avx2(const float *dy, const float *x, const float *mean,
                                                                     const float *rstd, long rows, long cols, long c0, long c1,
                                                                     float *dGamma, float *dBeta) {
    layernorm_parameter_body(dy, x, mean, rstd, rows, cols, c0, c1, dGamma, dBeta);
}
#else
#define layernorm_forward_avx2 layernorm_forward_body
#define layernorm_backward_avx2 layernorm_backward_body
#define layernorm_parameter_avx2 layernorm_parameter_body
#endif

void radar_layernorm_forward_rows(const float *x, const float *gamma, const float *beta, float eps, float *y, float *mean,
                                  float *rstd, long rows, long cols, int allow_avx2) {
    if (allow_avx2) layernorm_forward_avx2(x, gamma, beta, eps, y, mean, rstd, rows, cols);
    else layernorm_forward_body(x, gamma, beta, eps, y, mean, rstd, rows, cols);
}

void radar_layernorm_backward_rows(const float *dy, const float *x, const float *gamma, const float *mean, const float *rstd,
                                   float *dx, long rows, long cols, int allow_avx2) {
    if (allow_avx2) layernorm_backward_avx2(dy, x, gamma, mean, rstd, dx, rows, cols);
    else layernorm_backward_body(dy, x, gamma, mean, rstd, dx, rows, cols);
}

void radar_layernorm_parameter_gradients(const float *dy, const float *x, const float *mean, const float *rstd, long rows,
                                         long cols, long c0, long c1, float *dGamma, float *dBeta, int allow_avx2) {
    if (allow_avx2) layernorm_parameter_avx2(dy, x, mean, rstd, rows, cols, c0, c1, dGamma, dBeta);
    else layernorm_parameter_body(dy, x, mean, rstd, rows, cols, c0, c1, dGamma, dBeta);
}
