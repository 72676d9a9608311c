#include "CImageKernels.h"
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

int radar_image_kernels_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") ? 1 : 0;
}

// Eight pixels at a time. Every step is the scalar path's IEEE operation in the same order
// (separate multiply and add, no fused multiply-add), so the bytes are identical.
__attribute__((target("avx2")))
int radar_warp_affine_row_avx2(const uint8_t *src, int w, int h, uint8_t *dst, int x0, int x1,
                               float bx, float by, float a0, float a3) {
    const int stride = w * 3;
    const __m256 vbx = _mm256_set1_ps(bx), vby = _mm256_set1_ps(by);
    const __m256 va0 = _mm256_set1_ps(a0), va3 = _mm256_set1_ps(a3);
    const __m256 zero = _mm256_setzero_ps(), top = _mm256_set1_ps(255.0f), magic = _mm256_set1_ps(12582912.0f);
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i byte = _mm256_set1_epi32(0xff);
    const __m256i wLast = _mm256_set1_epi32(w - 1), hLast = _mm256_set1_epi32(h - 1);
    const long total = (long)stride * h;
    int x = x0;
    for (; x + 8 <= x1; x += 8) {
        __m256 xf = _mm256_cvtepi32_ps(_mm256_add_epi32(_mm256_set1_epi32(x), lane));
        __m256 sx = _mm256_add_ps(vbx, _mm256_mul_ps(va0, xf));
        __m256 sy = _mm256_add_ps(vby, _mm256_mul_ps(va3, xf));
        __m256 fx = _mm256_floor_ps(sx), fy = _mm256_floor_ps(sy);
        __m256i ix = _mm256_cvttps_epi32(fx), iy = _mm256_cvttps_epi32(fy);
        // Every tap inside: 0 <= ix < w - 1 and 0 <= iy < h - 1 (else leave these 8 to the caller).
        __m256i bad = _mm256_or_si256(
            _mm256_or_si256(_mm256_cmpgt_epi32(_mm256_setzero_si256(), ix), _mm256_cmpgt_epi32(ix, _mm256_sub_epi32(wLast, _mm256_set1_epi32(1)))),
            _mm256_or_si256(_mm256_cmpgt_epi32(_mm256_setzero_si256(), iy), _mm256_cmpgt_epi32(iy, _mm256_sub_epi32(hLast, _mm256_set1_epi32(1)))));
        if (!_mm256_testz_si256(bad, bad)) break;
        __m256 ax = _mm256_sub_ps(sx, fx), ay = _mm256_sub_ps(sy, fy);
        __m256i p00 = _mm256_add_epi32(_mm256_mullo_epi32(iy, _mm256_set1_epi32(stride)), _mm256_mullo_epi32(ix, _mm256_set1_epi32(3)));
        // A 32-bit gather reads one byte past the pixel's 3: the very last pixel of the image
        // would read past the buffer, so a group that reaches it is left to the caller.
        int maxOffset = _mm256_extract_epi32(p00, 0);
        for (int k = 1; k < 8; k++) { int o = ((int *)&p00)[k]; if (o > maxOffset) maxOffset = o; }
        if ((long)maxOffset + stride + 3 + 4 > total) break;
        __m256i t00 = _mm256_i32gather_epi32((const int *)src, p00, 1);
        __m256i t01 = _mm256_i32gather_epi32((const int *)(src + 3), p00, 1);
        __m256i t10 = _mm256_i32gather_epi32((const int *)(src + stride), p00, 1);
        __m256i t11 = _mm256_i32gather_epi32((const int *)(src + stride + 3), p00, 1);
        __m256i r[3];
        for (int c = 0; c < 3; c++) {
            __m256 q00 = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(t00, 8 * c), byte));
            __m256 q01 = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(t01, 8 * c), byte));
            __m256 q10 = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(t10, 8 * c), byte));
            __m256 q11 = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(t11, 8 * c), byte));
            __m256 v0 = _mm256_add_ps(q00, _mm256_mul_ps(ax, _mm256_sub_ps(q01, q00)));
            __m256 v1 = _mm256_add_ps(q10, _mm256_mul_ps(ax, _mm256_sub_ps(q11, q10)));
            __m256 v = _mm256_add_ps(v0, _mm256_mul_ps(ay, _mm256_sub_ps(v1, v0)));
            v = _mm256_min_ps(top, _mm256_max_ps(zero, v));
            v = _mm256_sub_ps(_mm256_add_ps(v, magic), magic);
            r[c] = _mm256_cvttps_epi32(v);
        }
        int32_t rr[8], gg[8], bb[8];
        _mm256_storeu_si256((__m256i *)rr, r[0]);
        _mm256_storeu_si256((__m256i *)gg, r[1]);
        _mm256_storeu_si256((__m256i *)bb, r[2]);
        uint8_t *o = dst + x * 3;
        for (int k = 0; k < 8; k++) { o[3 * k] = (uint8_t)rr[k]; o[3 * k + 1] = (uint8_t)gg[k]; o[3 * k + 2] = (uint8_t)bb[k]; }
    }
    (void)wLast; (void)hLast;
    return x;
}
static inline int reflect101(int i, int n) {
    if (n == 1) return 0;
    while (i < 0 || i >= n) i = i < 0 ? -i : 2 * n - 2 - i;
    return i;
}

__attribute__((target("avx2")))
void radar_gaussian_blur_avx2(const uint8_t *src, int w, int h, uint8_t *dst, uint16_t *tmp, int k) {
    static const uint16_t w3[3] = {1, 2, 1}, w5[5] = {1, 4, 6, 4, 1};
    const uint16_t *wt = k == 3 ? w3 : w5;
    const int taps = k == 3 ? 3 : 5, r = taps / 2, stride = w * 3;
    const int shift = k == 3 ? 4 : 8;
    // Horizontal: 16 sums at a time over the interior, reflect-101 at the edges.
    for (int y = 0; y < h; y++) {
        const uint8_t *row = src + (long)y * stride;
        uint16_t *t = tmp + (long)y * stride;
        int lo = r * 3, hi = (w - r) * 3, i = lo;
        if (w > 2 * r) {
            for (; i + 16 <= hi; i += 16) {
                __m256i c = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(row + i)));
                __m256i l1 = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(row + i - 3)));
                __m256i r1 = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(row + i + 3)));
                __m256i s;
                if (taps == 3) {
                    s = _mm256_add_epi16(_mm256_add_epi16(l1, r1), _mm256_slli_epi16(c, 1));
                } else {
                    __m256i l2 = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(row + i - 6)));
                    // i + 16 <= (w - 2) * 3, so bytes up to i + 21 stay inside the row.
                    __m256i r2 = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(row + i + 6)));
                    s = _mm256_add_epi16(_mm256_add_epi16(l2, r2),
                                         _mm256_add_epi16(_mm256_slli_epi16(_mm256_add_epi16(l1, r1), 2),
                                                          _mm256_mullo_epi16(c, _mm256_set1_epi16(6))));
                }
                _mm256_storeu_si256((__m256i *)(t + i), s);
            }
            for (; i < hi; i++) {
                uint16_t s = 0;
                for (int j = 0; j < taps; j++) s += wt[j] * row[i + (j - r) * 3];
                t[i] = s;
            }
        }
        for (int x = 0; x < w; x++) {
            if (!(x < r || x >= w - r || w <= 2 * r)) continue;
            for (int c = 0; c < 3; c++) {
                uint16_t s = 0;
                for (int j = 0; j < taps; j++) s += wt[j] * row[reflect101(x + j - r, w) * 3 + c];
                t[x * 3 + c] = s;
            }
        }
    }
    // Vertical: 16 columns at a time. The sums fit 16 bits (at most 255 * 16 * 16 + 128 = 65408),
    // rounded (sum + half) >> shift and packed to bytes.
    const __m256i half = _mm256_set1_epi16((short)(1 << (shift - 1)));
    const __m128i count = _mm_cvtsi32_si128(shift);
    for (int y = 0; y < h; y++) {
        const uint16_t *rows[5];
        for (int j = 0; j < taps; j++) rows[j] = tmp + (long)(y >= r && y < h - r ? y + j - r : reflect101(y + j - r, h)) * stride;
        uint8_t *o = dst + (long)y * stride;
        int i = 0;
        for (; i + 16 <= stride; i += 16) {
            __m256i acc;
            if (taps == 3) {
                __m256i a = _mm256_loadu_si256((const __m256i *)(rows[0] + i)), b = _mm256_loadu_si256((const __m256i *)(rows[1] + i));
                __m256i c = _mm256_loadu_si256((const __m256i *)(rows[2] + i));
                acc = _mm256_add_epi16(_mm256_add_epi16(a, c), _mm256_slli_epi16(b, 1));
            } else {
                __m256i a = _mm256_loadu_si256((const __m256i *)(rows[0] + i)), b = _mm256_loadu_si256((const __m256i *)(rows[1] + i));
                __m256i c = _mm256_loadu_si256((const __m256i *)(rows[2] + i)), d = _mm256_loadu_si256((const __m256i *)(rows[3] + i));
                __m256i e = _mm256_loadu_si256((const __m256i *)(rows[4] + i));
                acc = _mm256_add_epi16(_mm256_add_epi16(a, e),
                                       _mm256_add_epi16(_mm256_slli_epi16(_mm256_add_epi16(b, d), 2), _mm256_mullo_epi16(c, _mm256_set1_epi16(6))));
            }
            acc = _mm256_srl_epi16(_mm256_add_epi16(acc, half), count);
            // Pack 16 words to 16 bytes (values are at most 255).
            __m128i lo = _mm256_castsi256_si128(acc), hi = _mm256_extracti128_si256(acc, 1);
            _mm_storeu_si128((__m128i *)(o + i), _mm_packus_epi16(lo, hi));
        }
        for (; i < stride; i++) {
            uint32_t s = 0;
            for (int j = 0; j < taps; j++) s += (uint32_t)wt[j] * rows[j][i];
            o[i] = (uint8_t)((s + (1u << (shift - 1))) >> shift);
        }
    }
}

__attribute__((target("avx2")))
int radar_adjust_hue_avx2(const uint8_t *src, uint8_t *dst, int pixels, float shift) {
    const __m256i lane3 = _mm256_setr_epi32(0, 3, 6, 9, 12, 15, 18, 21), byte = _mm256_set1_epi32(0xff);
    const __m256 zero = _mm256_setzero_ps(), top = _mm256_set1_ps(255.0f), half = _mm256_set1_ps(0.5f);
    const __m256 two = _mm256_set1_ps(2.0f), four = _mm256_set1_ps(4.0f), six = _mm256_set1_ps(6.0f), sh = _mm256_set1_ps(shift);
    int i = 0;
    // A 32-bit gather reads one byte past a pixel: stop before the last pixel of the buffer.
    for (; i + 8 < pixels; i += 8) {
        __m256i px = _mm256_i32gather_epi32((const int *)(src + 3 * i), lane3, 1);
        __m256 r = _mm256_cvtepi32_ps(_mm256_and_si256(px, byte));
        __m256 g = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(px, 8), byte));
        __m256 b = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(px, 16), byte));
        __m256 mx = _mm256_max_ps(_mm256_max_ps(r, g), b), mn = _mm256_min_ps(_mm256_min_ps(r, g), b);
        __m256 d = _mm256_sub_ps(mx, mn);
        __m256 isR = _mm256_cmp_ps(mx, r, _CMP_EQ_OQ), isG = _mm256_cmp_ps(mx, g, _CMP_EQ_OQ);
        // mx == r: (g - b) / d; else mx == g: 2 + (b - r) / d; else 4 + (r - g) / d.
        __m256 hR = _mm256_div_ps(_mm256_sub_ps(g, b), d);
        __m256 hG = _mm256_add_ps(two, _mm256_div_ps(_mm256_sub_ps(b, r), d));
        __m256 hB = _mm256_add_ps(four, _mm256_div_ps(_mm256_sub_ps(r, g), d));
        __m256 h = _mm256_blendv_ps(_mm256_blendv_ps(hB, hG, isG), hR, isR);
        h = _mm256_add_ps(_mm256_div_ps(h, six), sh);
        h = _mm256_sub_ps(h, _mm256_floor_ps(h));
        __m256 h6 = _mm256_mul_ps(h, six);
        __m256i k = _mm256_cvttps_epi32(h6);
        __m256 f = _mm256_sub_ps(h6, _mm256_cvtepi32_ps(k));
        __m256i sector = _mm256_sub_epi32(k, _mm256_and_si256(_mm256_cmpgt_epi32(k, _mm256_set1_epi32(5)), _mm256_set1_epi32(6)));
        __m256 pv = mn, q = _mm256_sub_ps(mx, _mm256_mul_ps(d, f)), t = _mm256_add_ps(mn, _mm256_mul_ps(d, f));
        __m256 s[6];
        for (int j = 0; j < 6; j++) s[j] = _mm256_castsi256_ps(_mm256_cmpeq_epi32(sector, _mm256_set1_epi32(j)));
        #define PICK(a0, a1, a2, a3, a4, a5) \
            _mm256_blendv_ps(_mm256_blendv_ps(_mm256_blendv_ps(_mm256_blendv_ps(_mm256_blendv_ps(a5, a4, s[4]), a3, s[3]), a2, s[2]), a1, s[1]), a0, s[0])
        __m256 r2 = PICK(mx, q, pv, pv, t, mx), g2 = PICK(t, mx, mx, q, pv, pv), b2 = PICK(pv, pv, t, mx, mx, q);
        #undef PICK
        __m256 grey = _mm256_cmp_ps(d, zero, _CMP_EQ_OQ);  // hue has no effect: the bytes stay
        r2 = _mm256_blendv_ps(r2, r, grey); g2 = _mm256_blendv_ps(g2, g, grey); b2 = _mm256_blendv_ps(b2, b, grey);
        int32_t rr[8], gg[8], bb[8];
        _mm256_storeu_si256((__m256i *)rr, _mm256_cvttps_epi32(_mm256_add_ps(_mm256_min_ps(top, _mm256_max_ps(zero, r2)), half)));
        _mm256_storeu_si256((__m256i *)gg, _mm256_cvttps_epi32(_mm256_add_ps(_mm256_min_ps(top, _mm256_max_ps(zero, g2)), half)));
        _mm256_storeu_si256((__m256i *)bb, _mm256_cvttps_epi32(_mm256_add_ps(_mm256_min_ps(top, _mm256_max_ps(zero, b2)), half)));
        uint8_t *o = dst + 3 * i;
        for (int j = 0; j < 8; j++) { o[3 * j] = (uint8_t)rr[j]; o[3 * j + 1] = (uint8_t)gg[j]; o[3 * j + 2] = (uint8_t)bb[j]; }
    }
    return i;
}
// Five pixels (15 bytes) per shuffle: the 16 bytes loaded start one byte before the five source
// pixels, so no load leaves the row's image; the 16th byte stored is the first of the next
// output pixel, written again by the next group or by the scalar tail.
__attribute__((target("avx2")))
void radar_flip_rgb_avx2(const uint8_t *src, int w, int h, uint8_t *dst) {
    const __m128i reverse5 = _mm_setr_epi8(13, 14, 15, 10, 11, 12, 7, 8, 9, 4, 5, 6, 1, 2, 3, (char)0x80);
    for (int y = 0; y < h; y++) {
        const uint8_t *s = src + (long)y * w * 3;
        uint8_t *d = dst + (long)y * w * 3;
        int x = 0;
        for (; x + 5 < w; x += 5) {  // source pixels w-5-x ... w-1-x, the first of them >= 1
            __m128i v = _mm_loadu_si128((const __m128i *)(s + 3L * (w - 5 - x) - 1));
            _mm_storeu_si128((__m128i *)(d + 3L * x), _mm_shuffle_epi8(v, reverse5));
        }
        for (; x < w; x++) {
            const uint8_t *p = s + (long)(w - 1 - x) * 3;
            d[3 * x] = p[0]; d[3 * x + 1] = p[1]; d[3 * x + 2] = p[2];
        }
    }
}

// Saturation in Double, the Swift path's operations in its order: y = r*g0 + g*g1 + b*g2, then
// each channel v*f + y, clamped to [0, 255], plus 0.5, truncated.
__attribute__((target("avx2")))
int radar_adjust_saturation_avx2(const uint8_t *src, uint8_t *dst, int pixels, double f, double g0, double g1, double g2) {
    const __m256i lane3 = _mm256_setr_epi32(0, 3, 6, 9, 12, 15, 18, 21), byte = _mm256_set1_epi32(0xff);
    const __m256d vf = _mm256_set1_pd(f), w0 = _mm256_set1_pd(g0), w1 = _mm256_set1_pd(g1), w2 = _mm256_set1_pd(g2);
    const __m256d zero = _mm256_setzero_pd(), top = _mm256_set1_pd(255.0), half = _mm256_set1_pd(0.5);
    int i = 0;
    for (; i + 8 < pixels; i += 8) {  // the gather reads one byte past a pixel: not the last one
        __m256i px = _mm256_i32gather_epi32((const int *)(src + 3 * i), lane3, 1);
        __m256i ch[3] = {_mm256_and_si256(px, byte), _mm256_and_si256(_mm256_srli_epi32(px, 8), byte),
                         _mm256_and_si256(_mm256_srli_epi32(px, 16), byte)};
        __m128i out[3][2];
        for (int half_ = 0; half_ < 2; half_++) {
            __m256d c[3];
            for (int k = 0; k < 3; k++)
                c[k] = _mm256_cvtepi32_pd(half_ ? _mm256_extracti128_si256(ch[k], 1) : _mm256_castsi256_si128(ch[k]));
            __m256d y = _mm256_add_pd(_mm256_add_pd(_mm256_mul_pd(c[0], w0), _mm256_mul_pd(c[1], w1)), _mm256_mul_pd(c[2], w2));
            for (int k = 0; k < 3; k++) {
                __m256d v = _mm256_add_pd(_mm256_mul_pd(c[k], vf), y);
                v = _mm256_add_pd(_mm256_min_pd(top, _mm256_max_pd(zero, v)), half);
                out[k][half_] = _mm256_cvttpd_epi32(v);
            }
        }
        int32_t rr[8], gg[8], bb[8];
        _mm_storeu_si128((__m128i *)rr, out[0][0]); _mm_storeu_si128((__m128i *)(rr + 4), out[0][1]);
        _mm_storeu_si128((__m128i *)gg, out[1][0]); _mm_storeu_si128((__m128i *)(gg + 4), out[1][1]);
        _mm_storeu_si128((__m128i *)bb, out[2][0]); _mm_storeu_si128((__m128i *)(bb + 4), out[2][1]);
        uint8_t *o = dst + 3 * i;
        for (int j = 0; j < 8; j++) { o[3 * j] = (uint8_t)rr[j]; o[3 * j + 1] = (uint8_t)gg[j]; o[3 * j + 2] = (uint8_t)bb[j]; }
    }
    return i;
}

// (pixel * scale[c] - shift[c]) into three planes, eight pixels at a time (multiply, then
// subtract: the Swift loop's two roundings).
__attribute__((target("avx2")))
int radar_normalize_rgb_avx2(const uint8_t *src, int pixels, const float *scale, const float *shift, float *dst) {
    const __m256i lane3 = _mm256_setr_epi32(0, 3, 6, 9, 12, 15, 18, 21), byte = _mm256_set1_epi32(0xff);
    __m256 sc[3], sh[3];
    for (int k = 0; k < 3; k++) { sc[k] = _mm256_set1_ps(scale[k]); sh[k] = _mm256_set1_ps(shift[k]); }
    int i = 0;
    for (; i + 8 < pixels; i += 8) {
        __m256i px = _mm256_i32gather_epi32((const int *)(src + 3 * i), lane3, 1);
        for (int k = 0; k < 3; k++) {
            __m256 v = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(px, 8 * k), byte));
            _mm256_storeu_ps(dst + (long)k * pixels + i, _mm256_sub_ps(_mm256_mul_ps(v, sc[k]), sh[k]));
        }
    }
    return i;
}
#else
void radar_flip_rgb_avx2(const uint8_t *src, int w, int h, uint8_t *dst) { radar_flip_rgb(src, w, h, dst); }
int radar_adjust_saturation_avx2(const uint8_t *src, uint8_t *dst, int pixels, double f, double g0, double g1, double g2) {
    (void)src; (void)dst; (void)pixels; (void)f; (void)g0; (void)g1; (void)g2; return 0;
}
int radar_normalize_rgb_avx2(const uint8_t *src, int pixels, const float *scale, const float *shift, float *dst) {
    (void)src; (void)pixels; (void)scale; (void)shift; (void)dst; return 0;
}
int radar_adjust_hue_avx2(const uint8_t *src, uint8_t *dst, int pixels, float shift) {
    (void)src; (void)dst; (void)pixels; (void)shift; return 0;
}
void radar_gaussian_blur_avx2(const uint8_t *src, int w, int h, uint8_t *dst, uint16_t *tmp, int k) {
    (void)src; (void)w; (void)h; (void)dst; (void)tmp; (void)k;
}
int radar_image_kernels_avx2(void) { return 0; }
int radar_warp_affine_row_avx2(const uint8_t *src, int w, int h, uint8_t *dst, int x0, int x1,
                               float bx, float by, float a0, float a3) {
    (void)src; (void)w; (void)h; (void)dst; (void)x1; (void)bx; (void)by; (void)a0; (void)a3;
    return x0;
}
#endif

/// Horizontal flip of a w x h RGB image (plain C, any CPU: the compiler's loop beats Swift's here).
void radar_flip_rgb(const uint8_t *src, int w, int h, uint8_t *dst) {
    for (int y = 0; y < h; y++) {
        const uint8_t *s = src + (long)y * w * 3;
        uint8_t *d = dst + (long)y * w * 3;
        for (int x = 0; x < w; x++) {
            const uint8_t *p = s + (long)(w - 1 - x) * 3;
            d[3 * x] = p[0]; d[3 * x + 1] = p[1]; d[3 * x + 2] = p[2];
        }
    }
}
