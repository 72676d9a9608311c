#ifndef RADAR_TENSOR_KERNELS_H
#define RADAR_TENSOR_KERNELS_H
#include <stdint.h>

/// AVX2 versions of the CPU backend's elementwise kernels, eight floats at a time. Each is the
/// Swift scalar path's IEEE operations in the same order (a multiply-add fused only where both
/// say so: GELU's Horner steps), so results are bit-identical whichever path runs (tests compare
/// both). Callers check `radar_tensor_kernels_avx2()` first.

/// 1 when the CPU has AVX2 and FMA (and the kernels below may run), else 0.
int radar_tensor_kernels_avx2(void);

/// GELU (exact, erf form): cdf[i] = Phi(x[i]), y[i] = x[i] * cdf[i], for i in [0, n).
void radar_gelu_forward_avx2(const float *x, float *y, float *cdf, long n);

/// dx[i] = dy[i] * (cdf[i] + x[i] * phi(x[i])), phi the standard normal density.
void radar_gelu_backward_avx2(const float *dy, const float *x, const float *cdf, float *dx, long n);

/// Softmax of `rows` rows of `cols`: the row maximum, exp(x - max) (FastMath's exp), the sum in
/// eight lanes (element j in lane j % 8, combined as ((0+1)+(2+3))+((4+5)+(6+7))), then each times
/// 1 / sum.
void radar_softmax_forward_avx2(const float *x, float *y, long rows, long cols);

/// dx = y * (dy - dot(dy, y)) per row, the dot product summed in eight lanes as the forward's sum.
void radar_softmax_backward_avx2(const float *dy, const float *y, float *dx, long rows, long cols);

/// AdamW on [0, n), torch's single-tensor order: p *= decay; m += (g - m) * omb1;
/// v = v * beta2 + omb2 * g * g; p += negStep * (m / (sqrt(v) / bc2Sqrt + eps)).
void radar_adamw_avx2(float *p, const float *g, float *m, float *v, long n, float decay, float omb1, float beta2,
                      float omb2, float bc2Sqrt, float eps, float negStep);

/// rows x cols of a matrix with leading dimension ld, rounded to bfloat16 (nearest even, NaN kept
/// quiet) and packed: as fp32 values (`round`) or as bfloat16 bit patterns (`to`). Any CPU: with
/// allow_avx2 1 (only where `radar_tensor_kernels_avx2()` says so) eight or sixteen at a time, the
/// same bits.
void radar_round_bf16_matrix(const float *src, int64_t rows, int64_t cols, int64_t ld, float *dst, int allow_avx2);
void radar_to_bf16_matrix(const float *src, int64_t rows, int64_t cols, int64_t ld, uint16_t *dst, int allow_avx2);

/// LayerNorm on any CPU: the AVX2 build when allow_avx2 is 1 (only where
/// `radar_tensor_kernels_avx2()` says so), else the plain x86-64 one; both give the same bits. Each row's sums in eight lanes, element j into lane j % 8, the lanes combined as
/// ((0+1)+(2+3))+((4+5)+(6+7)): forward in double (mean, then squared deviations from it),
/// y = (x - mean) * rstd * gamma + beta; backward g = dy * gamma, sums of g and g * (x - mean) * rstd
/// in float, dx = rstd * (g - sumG / n - xhat * sumGX / n).
void radar_layernorm_forward_rows(const float *x, const float *gamma, const float *beta, float eps, float *y, float *mean,
                                  float *rstd, long rows, long cols, int allow_avx2);
void radar_layernorm_backward_rows(const float *dy, const float *x, const float *gamma, const float *mean, const float *rstd,
                                   float *dx, long rows, long cols, int allow_avx2);
/// dGamma[j] += sum over rows, in order, of dy * (x - mean) * rstd; dBeta[j] += sum of dy; for the
/// columns [c0, c1), at most 64 of them.
void radar_layernorm_parameter_gradients(const float *dy, const float *x, const float *mean, const float *rstd, long rows,
                                         long cols, long c0, long c1, float *dGamma, float *dBeta, int allow_avx2);

#endif
