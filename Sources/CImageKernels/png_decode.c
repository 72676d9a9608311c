#include "CImageKernels.h"
#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// libpng's classic API, wholly inside this file: it reports errors by longjmp, which must never
// cross a Swift frame, so the jump target is here and every libpng call is made from here.

typedef struct {
    const uint8_t *data;
    size_t size, pos;
    char *message;
    size_t message_size;
} radar_png_reader;

static void radar_png_read(png_structp png, png_bytep out, size_t count) {
    radar_png_reader *r = (radar_png_reader *)png_get_io_ptr(png);
    if (count > r->size - r->pos) png_error(png, "the file ends inside the image data (truncated)");
    memcpy(out, r->data + r->pos, count);
    r->pos += count;
}

static void radar_png_error(png_structp png, png_const_charp message) {
    radar_png_reader *r = (radar_png_reader *)png_get_error_ptr(png);
    snprintf(r->message, r->message_size, "%s", message);
    png_longjmp(png, 1);
}

// Warnings (an unknown ancillary chunk, a bad CRC in one, an invalid ICC profile) leave the
// pixels alone: quiet, as Pillow and OpenCV are.
static void radar_png_warning(png_structp png, png_const_charp message) { (void)png; (void)message; }

int radar_png_decode_rgb(const uint8_t *data, size_t size, long max_pixels, uint8_t **pixels_out,
                         int *width_out, int *height_out, char *message, size_t message_size) {
    radar_png_reader reader = {data, size, 0, message, message_size};
    *pixels_out = NULL;
    *width_out = 0;
    *height_out = 0;
    if (message_size) message[0] = 0;
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &reader, radar_png_error, radar_png_warning);
    if (!png) {
        snprintf(message, message_size, "libpng could not start (out of memory)");
        return -1;
    }
    png_infop info = png_create_info_struct(png);
    uint8_t *volatile pixels = NULL;
    png_bytep *volatile rows = NULL;
    if (!info || setjmp(png_jmpbuf(png))) {
        if (!info) snprintf(message, message_size, "libpng could not start (out of memory)");
        free(rows);
        free(pixels);
        png_destroy_read_struct(&png, info ? &info : NULL, NULL);
        return -1;
    }
    png_set_read_fn(png, &reader, radar_png_read);
    png_read_info(png, info);
    png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
    *width_out = (int)(w > 0x7fffffff ? 0x7fffffff : w);
    *height_out = (int)(h > 0x7fffffff ? 0x7fffffff : h);
    if (w == 0 || h == 0 || (double)w * (double)h > (double)max_pixels) {
        png_destroy_read_struct(&png, &info, NULL);
        return -2;  // the caller words the size limit
    }
    int colour = png_get_color_type(png, info);
    // No colour management (gAMA, cHRM, sRGB, iCCP are not applied) and 16-bit samples keep their
    // high byte: the pixels Pillow's convert("RGB") and OpenCV's imread give. Palette and grey
    // below 8 bits are expanded (grey by bit replication), transparency is dropped with alpha.
    png_set_expand(png);
    png_set_strip_16(png);
    png_set_strip_alpha(png);
    if (!(colour & PNG_COLOR_MASK_COLOR)) png_set_gray_to_rgb(png);
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    if (png_get_rowbytes(png, info) != (size_t)w * 3) png_error(png, "unexpected row layout after expansion to RGB");
    pixels = (uint8_t *)malloc((size_t)w * h * 3);
    rows = (png_bytep *)malloc(sizeof(png_bytep) * h);
    if (!pixels || !rows) png_error(png, "out of memory for the pixels");
    for (png_uint_32 y = 0; y < h; y++) rows[y] = pixels + (size_t)y * w * 3;
    png_read_image(png, rows);
    free(rows);
    png_destroy_read_struct(&png, &info, NULL);
    *pixels_out = pixels;
    return 0;
}

void radar_png_free(uint8_t *pixels) { free(pixels); }
