#ifndef RADAR_CIMAGEKERNELS_H
#define RADAR_CIMAGEKERNELS_H
#include <stddef.h>
#include <stdint.h>

// Image kernels vectorised across pixels for CPUs that have AVX2, chosen at run time (the Swift
// build targets baseline x86-64). Each gives the same bytes as the Swift path it replaces.

/// 1 when this CPU runs the AVX2 kernels below.
int radar_image_kernels_avx2(void);

/// One output row of warpAffine (bilinear, Float arithmetic in the Swift path's order) for the
/// pixels x in [x0, x1) whose four taps all lie inside the image (the caller checks): source
/// coordinates sx = bx + a0 * x, sy = by + a3 * x. `src` is the whole w x h RGB image, `dst` the
/// output row. Returns the first x it did not write (it stops early at a pixel whose taps
/// leave the image, so the caller's reflect-101 path takes it).
int radar_warp_affine_row_avx2(const uint8_t *src, int w, int h, uint8_t *dst, int x0, int x1,
                               float bx, float by, float a0, float a3);

/// cv2.GaussianBlur(ksize k = 3 or 5, sigma 0) of a w x h RGB image, BORDER_REFLECT_101, exact
/// integer sums rounded once, as the Swift path computes it. `tmp` holds w * h * 3 uint16 values.
void radar_gaussian_blur_avx2(const uint8_t *src, int w, int h, uint8_t *dst, uint16_t *tmp, int k);

/// torchvision's adjust_hue on interleaved RGB bytes, in the Swift path's Float operations, for
/// the first pixels in groups of 8; returns how many pixels it wrote (the caller does the rest).
int radar_adjust_hue_avx2(const uint8_t *src, uint8_t *dst, int pixels, float shift);

/// Horizontal flip of a w x h RGB image (any CPU).
void radar_flip_rgb(const uint8_t *src, int w, int h, uint8_t *dst);

/// The same flip, five pixels per byte shuffle.
void radar_flip_rgb_avx2(const uint8_t *src, int w, int h, uint8_t *dst);

/// Saturation blend (v * f + r * g0 + g * g1 + b * g2, in Double, the Swift path's order) for
/// the first pixels in groups of 8; returns how many pixels it wrote.
int radar_adjust_saturation_avx2(const uint8_t *src, uint8_t *dst, int pixels, double f, double g0, double g1, double g2);

/// dst[c * pixels + i] = src[3 i + c] * scale[c] - shift[c] (Float) for the first pixels in
/// groups of 8; returns how many it wrote.
int radar_normalize_rgb_avx2(const uint8_t *src, int pixels, const float *scale, const float *shift, float *dst);

/// A PNG decoded to 8-bit RGB with libpng's classic API (its longjmp kept inside the C file):
/// palette and low-bit grey expanded, 16-bit samples cut to their high byte, alpha and
/// transparency dropped, and no colour management (gAMA, cHRM, sRGB and iCCP are not applied),
/// the pixels Pillow's convert("RGB") and OpenCV's imread give. Returns 0 with *pixels (free with
/// radar_png_free), -1 with libpng's message in `message`, or -2 when width x height is 0 or
/// exceeds max_pixels (width and height are set in every case where the header was read).
int radar_png_decode_rgb(const uint8_t *data, size_t size, long max_pixels, uint8_t **pixels,
                         int *width, int *height, char *message, size_t message_size);
void radar_png_free(uint8_t *pixels);

#endif
