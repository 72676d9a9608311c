// Dropout from the same Philox4x32-10 streams as the CPU backend: element i of stream s under
// seed k is block(k; i / 4, i >> 34, s lo, s hi)[i % 4], so CPU and GPU runs draw identical masks.

__device__ __forceinline__ unsigned mulhi32(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }

__device__ __forceinline__ unsigned philox_word(unsigned key0, unsigned key1, unsigned long long index, unsigned long long stream) {
    unsigned long long blk = index >> 2;
    unsigned x0 = (unsigned)blk, x1 = (unsigned)(blk >> 32), x2 = (unsigned)stream, x3 = (unsigned)(stream >> 32);
    unsigned k0 = key0, k1 = key1;
    for (int r = 0; r < 10; ++r) {
        unsigned hi0 = mulhi32(0xD2511F53u, x0), lo0 = 0xD2511F53u * x0;
        unsigned hi1 = mulhi32(0xCD9E8D57u, x2), lo1 = 0xCD9E8D57u * x2;
        unsigned n0 = hi1 ^ x1 ^ k0, n2 = hi0 ^ x3 ^ k1;
        x0 = n0; x1 = lo1; x2 = n2; x3 = lo0;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    switch (index & 3) {
    case 0: return x0;
    case 1: return x1;
    case 2: return x2;
    default: return x3;
    }
}

// Uniform in [0, 1) with 24 bits, exactly as RandomStream.uniform.
__device__ __forceinline__ float philox_uniform(unsigned key0, unsigned key1, unsigned long long index, unsigned long long stream) {
    return (float)(philox_word(key0, key1, index, stream) >> 8) * (1.0f / 16777216.0f);
}

// Inverted dropout: y = x / (1 - p) where uniform(stream, i) >= p, else 0. Backward is the same
// kernel on dy (the mask is recomputed from the stream, never stored).
extern "C" __global__ void radar_dropout(const float* x, float* y, long n, float p, unsigned key0, unsigned key1,
                                         unsigned long long stream) {
    float scale = 1.f / (1.f - p);
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)blockDim.x * gridDim.x)
        y[i] = philox_uniform(key0, key1, (unsigned long long)i, stream) >= p ? x[i] * scale : 0.f;
}
