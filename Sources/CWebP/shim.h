#ifndef RADAR_CWEBP_SHIM_H
#define RADAR_CWEBP_SHIM_H
// libwebp's decoder (Debian 12: 1.2.4): still WebP images, lossy or lossless, as RGB.
#include <webp/decode.h>
// WebPGetFeatures is an inline wrapper over a versioned function; restate it so Swift sees it.
static inline int radar_webp_features(const uint8_t *data, size_t size, WebPBitstreamFeatures *features) {
    return WebPGetFeatures(data, size, features) == VP8_STATUS_OK;
}
#endif
