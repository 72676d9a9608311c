// The fixed image transforms of BADM and AADM (no gradient): grayscale, Sobel magnitude with
// each image divided by its own maximum, and the soft high-pass + log1p + per-image min-max of
// the shifted spectrum. Per-image reductions: one block per image, fixed-order trees.
#define RADAR_IMAGE_BLOCK 256

extern "C" __global__ void radar_grayscale(const float* x, float* y, int batch, int hw) {
    long total = (long)batch * hw;
    for (long k = (long)blockIdx.x * blockDim.x + threadIdx.x; k < total; k += (long)blockDim.x * gridDim.x) {
        long i = k / hw, j = k % hw;
        const float* p = x + i * 3 * hw + j;
        y[k] = 0.299f * p[0] + 0.587f * p[hw] + 0.114f * p[2 * hw];
    }
}

__device__ __forceinline__ float pixel(const float* src, int h, int w, int r, int c) {
    return (r < 0 || r >= h || c < 0 || c >= w) ? 0.f : src[r * w + c];
}

__device__ __forceinline__ float block_max(float v, float* s) {
    s[threadIdx.x] = v;
    __syncthreads();
    for (int k = blockDim.x / 2; k > 0; k >>= 1) {
        if (threadIdx.x < k) s[threadIdx.x] = fmaxf(s[threadIdx.x], s[threadIdx.x + k]);
        __syncthreads();
    }
    float m = s[0];
    __syncthreads();
    return m;
}

__device__ __forceinline__ float block_min(float v, float* s) {
    s[threadIdx.x] = v;
    __syncthreads();
    for (int k = blockDim.x / 2; k > 0; k >>= 1) {
        if (threadIdx.x < k) s[threadIdx.x] = fminf(s[threadIdx.x], s[threadIdx.x + k]);
        __syncthreads();
    }
    float m = s[0];
    __syncthreads();
    return m;
}

// Cross-correlation as F.conv2d with zero padding 1: gx [[-1,0,1],[-2,0,2],[-1,0,1]], gy its
// transpose; magnitude, then divided by the image's maximum when that exceeds 1e-8.
extern "C" __global__ void radar_sobel_magnitude(const float* x, float* y, int h, int w) {
    __shared__ float s[RADAR_IMAGE_BLOCK];
    const float* src = x + (long)blockIdx.x * h * w;
    float* dst = y + (long)blockIdx.x * h * w;
    float peak = 0.f;
    for (int k = threadIdx.x; k < h * w; k += blockDim.x) {
        int r = k / w, c = k % w;
        float gx = (pixel(src, h, w, r - 1, c + 1) - pixel(src, h, w, r - 1, c - 1)) + 2.f * (pixel(src, h, w, r, c + 1) - pixel(src, h, w, r, c - 1))
                 + (pixel(src, h, w, r + 1, c + 1) - pixel(src, h, w, r + 1, c - 1));
        float gy = (pixel(src, h, w, r + 1, c - 1) - pixel(src, h, w, r - 1, c - 1)) + 2.f * (pixel(src, h, w, r + 1, c) - pixel(src, h, w, r - 1, c))
                 + (pixel(src, h, w, r + 1, c + 1) - pixel(src, h, w, r - 1, c + 1));
        float m = sqrtf(gx * gx + gy * gy);
        dst[k] = m;
        peak = fmaxf(peak, m);
    }
    peak = block_max(peak, s);
    if (peak > 1e-8f)
        for (int k = threadIdx.x; k < h * w; k += blockDim.x) dst[k] /= peak;
}

// y = minmax_per_image(log1p(x * mask)), mask (plane).
extern "C" __global__ void radar_high_pass_log_normalize(const float* x, const float* mask, float* y, int plane) {
    __shared__ float s[RADAR_IMAGE_BLOCK];
    const float* src = x + (long)blockIdx.x * plane;
    float* dst = y + (long)blockIdx.x * plane;
    float lo = __int_as_float(0x7f800000), hi = __int_as_float(0xff800000);
    for (int k = threadIdx.x; k < plane; k += blockDim.x) {
        float v = log1pf(src[k] * mask[k]);
        dst[k] = v;
        lo = fminf(lo, v);
        hi = fmaxf(hi, v);
    }
    lo = block_min(lo, s);
    hi = block_max(hi, s);
    float den = fmaxf(hi - lo, 1e-8f);
    for (int k = threadIdx.x; k < plane; k += blockDim.x) dst[k] = (dst[k] - lo) / den;
}

// Bilinear resize (B, C, H, W) -> (B, C, h, w), align_corners false, no antialias
// (F.interpolate), in the CPU backend's arithmetic order.
extern "C" __global__ void radar_resize_bilinear(const float* x, float* y, int planes, int ih, int iw, int oh, int ow) {
    long total = (long)planes * oh * ow;
    float sh = (float)ih / (float)oh, sw = (float)iw / (float)ow;
    for (long e = (long)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (long)blockDim.x * gridDim.x) {
        long p = e / ((long)oh * ow);
        int oy = (int)((e / ow) % oh), ox = (int)(e % ow);
        const float* src = x + p * ih * iw;
        float fy = fmaxf(sh * ((float)oy + 0.5f) - 0.5f, 0.f);
        int y0 = (int)fy, y1 = y0 + (y0 < ih - 1 ? 1 : 0);
        float ly1 = fy - (float)y0, ly0 = 1.f - ly1;
        float fx = fmaxf(sw * ((float)ox + 0.5f) - 0.5f, 0.f);
        int x0 = (int)fx, x1 = x0 + (x0 < iw - 1 ? 1 : 0);
        float lx1 = fx - (float)x0, lx0 = 1.f - lx1;
        y[e] = ly0 * (lx0 * src[y0 * iw + x0] + lx1 * src[y0 * iw + x1]) + ly1 * (lx0 * src[y1 * iw + x0] + lx1 * src[y1 * iw + x1]);
    }
}

// |X| of each plane's r2c half-spectrum (size x (size/2+1) complex, cuFFT's layout), the columns
// r2c leaves out by Hermitian symmetry, written fftshift-ed into size x size planes.
extern "C" __global__ void radar_fft_magnitude_shifted(const float* spectrum, float* y, int planes, int size) {
    int half = size / 2 + 1, shift = size / 2;
    long plane = (long)size * size, total = planes * plane;
    for (long k = (long)blockIdx.x * blockDim.x + threadIdx.x; k < total; k += (long)blockDim.x * gridDim.x) {
        long p = k / plane;
        int rem = (int)(k % plane), ou = rem / size, ov = rem % size;
        int u = (ou + size - shift) % size, v = (ov + size - shift) % size;
        int su = u, sv = v;
        if (v >= half) { su = (size - u) % size; sv = size - v; }
        const float* c = spectrum + (p * size * half + (long)su * half + sv) * 2;
        float re = c[0], im = c[1];
        y[k] = sqrtf(re * re + im * im);
    }
}
