#ifndef RADAR_CPNG_SHIM_H
#define RADAR_CPNG_SHIM_H
// Swift calls only libpng's simplified png_image_* API (to write PNGs): the classic API reports
// errors by longjmp, which Swift cannot survive, so reading runs it wholly in C
// (CImageKernels/png_decode.c).
#include <png.h>
// PNG_IMAGE_* function-like macros do not import; restate what we need.
static inline int radar_png_format_rgb(void) { return PNG_FORMAT_RGB; }
static inline unsigned radar_png_image_version(void) { return PNG_IMAGE_VERSION; }
static inline int radar_png_image_failed(const png_image *img) { return PNG_IMAGE_FAILED(*img); }
// The largest PNG png_image_write_to_memory can write for `img` (its width, height, format set).
static inline size_t radar_png_size_max(const png_image *img) { return PNG_IMAGE_PNG_SIZE_MAX(*img); }
#endif
