// Kernels that exercise the emulator itself (compiled only for the emulated device): barrier
// misuse must be reported, and a missing __syncthreads must change results when the schedule
// changes (reversed or shuffled threads or blocks).

extern "C" __global__ void radar_selftest_divergent_barrier(float* x) {
    if (threadIdx.x < 16) {
        __syncthreads();
        x[threadIdx.x] = 1.f;
    } else {
        __syncthreads();
        x[threadIdx.x] = 2.f;
    }
}

extern "C" __global__ void radar_selftest_early_return(float* x) {
    if (threadIdx.x == 0) return;
    __syncthreads();
    x[threadIdx.x] = 1.f;
}

// out[t] = (t + 1 mod n) + 1000 tag when the barrier is there; without it, what a thread reads
// depends on whether its neighbour already ran in this launch (shared memory keeps the values of
// an earlier launch, as a GPU's would hold garbage: the tag tells them apart).
extern "C" __global__ void radar_selftest_neighbour(float* out, int with_barrier, int tag) {
    __shared__ float s[64];
    unsigned t = threadIdx.x, n = blockDim.x;
    s[t] = (float)t + 1000.f * (float)tag;
    if (with_barrier) __syncthreads();
    out[t] = s[(t + 1) % n];
}

extern "C" __global__ void __launch_bounds__(1024) radar_selftest_warp_sum(const float* x, float* out) {
    float v = x[threadIdx.x];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    out[threadIdx.x] = v;
}

// Block b > 0 reads what block b - 1 wrote in the same launch: a race on a GPU (blocks run in
// no promised order). In index order x = 1, 2, 3, ...; in any other order some block reads 0.
extern "C" __global__ void radar_selftest_block_chain(float* x) {
    if (threadIdx.x != 0) return;
    unsigned b = blockIdx.x;
    x[b] = b == 0 ? 1.f : x[b - 1] + 1.f;
}

// Copies 16 bytes a thread as one uint4, from x + load_offset floats to out + store_offset: a GPU
// faults unless both offsets are multiples of 4 (the buffers are 256-byte aligned); the emulator
// must fail the launch naming the line.
extern "C" __global__ void radar_selftest_vector_copy(const float* x, float* out, int load_offset, int store_offset) {
    const uint4 v = *(const uint4*)(x + load_offset + 4 * threadIdx.x);
    *(uint4*)(out + store_offset + 4 * threadIdx.x) = v;
}

// cp.async: each thread requests x[4 t + src_offset, + 4) into its 16 bytes of a shared tile (set
// to all-ones bits first), then waits (wait 1), waits only after reading (wait 0) or never (wait 2),
// and after a barrier copies its neighbour's 16 bytes to out. A GPU's copy lands at any moment up to
// the wait: the emulator lands it at the wait under the forward schedule, at once under reversed.
extern "C" __global__ void radar_selftest_cp_async(const float* x, float* out, int wait, int src_offset) {
    __shared__ uint4 tile[64];
    tile[threadIdx.x] = make_uint4(~0u, ~0u, ~0u, ~0u);
    __syncthreads();
    radar_cp_async16(radar_smem(&tile[threadIdx.x]), x + src_offset + 4 * threadIdx.x, 16);
    radar_cp_async_commit();
    if (wait == 1) radar_cp_async_wait_all();
    __syncthreads();
    *(uint4*)(out + 4 * threadIdx.x) = tile[(threadIdx.x + 1) % blockDim.x];
    if (wait == 0) radar_cp_async_wait_all();
}

// Warps drifting apart: each of 64 threads requests its 16 bytes of a tile by cp.async, takes part
// in a warp exchange, waits for its copy, takes part in another exchange, then reads the other
// warp's half of the tile, after a barrier (with_barrier) or not. Without it the read races the
// other warp's wait, and a GPU lets warp 0 run its exchanges and reach the read while warp 1 has
// not yet waited: the emulator runs one warp ahead to the next block barrier, so the read sees
// the tile as it was (forward schedule). out[4 t..] = the other half's copy; exchanged[t] = t ^ 1 ^ 1.
extern "C" __global__ void radar_selftest_warp_drift(const float* x, float* out, float* exchanged, int with_barrier) {
    __shared__ uint4 tile[64];
    tile[threadIdx.x] = make_uint4(~0u, ~0u, ~0u, ~0u);
    __syncthreads();
    radar_cp_async16(radar_smem(&tile[threadIdx.x]), x + 4 * threadIdx.x, 16);
    radar_cp_async_commit();
    float v = __shfl_xor_sync(0xffffffffu, (float)threadIdx.x, 1);
    radar_cp_async_wait_all();
    if (with_barrier) __syncthreads();
    v = __shfl_xor_sync(0xffffffffu, v, 1);
    *(uint4*)(out + 4 * threadIdx.x) = tile[(threadIdx.x + 32) % 64];
    exchanged[threadIdx.x] = v;
}
