// Prepended to every kernel family (tools/codegen/cuda_kernels.py): in front of each NVRTC
// program's source, and included before the family in its emulated translation unit. What more
// than one family uses; no CUDA header is needed (bf16 is bit operations).

// One thread per element over a grid-stride loop.
#define GRID_STRIDE(i, n) for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (long)blockDim.x * gridDim.x)

// Kernels that split a flat index into coordinates do it in 32-bit unsigned arithmetic when the
// whole range fits (a 64-bit division is a long software routine on a GPU; im2col spent most of
// its time in it), in 64-bit otherwise: RADAR_INDEXED(body, n, args...) calls body<unsigned> or
// body<long> with the range as that type.
#define RADAR_INDEXED(body, n, ...) \
    do { if ((n) <= 0x7fffffffL) body<unsigned>((unsigned)(n), __VA_ARGS__); else body<long>((long)(n), __VA_ARGS__); } while (0)
#define GRID_STRIDE_AS(I, i, n) for (I i = (I)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (I)blockDim.x * gridDim.x)

// bf16 as its 16 bits: the high half of the float, rounded to nearest even; NaN stays NaN.
__device__ __forceinline__ unsigned short radar_bf16_bits(float f) {
    unsigned u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}

// Four bf16 values as one 8-byte word (two per 32-bit half, the lower index in the low bits).
__device__ __forceinline__ bool radar_aligned8(const void* p) { return ((unsigned long long)p & 7) == 0; }
__device__ __forceinline__ float radar_bf16_at(uint2 w, int k) {
    const unsigned h = k < 2 ? w.x : w.y;
    return __uint_as_float(k % 2 == 0 ? h << 16 : h & 0xffff0000u);
}
__device__ __forceinline__ uint2 radar_bf16_word(const float* f) {
    return make_uint2((unsigned)radar_bf16_bits(f[0]) | (unsigned)radar_bf16_bits(f[1]) << 16,
                      (unsigned)radar_bf16_bits(f[2]) | (unsigned)radar_bf16_bits(f[3]) << 16);
}
