// The CUDA vocabulary on the host, for the emulated device. Kernel sources include this (not
// the CUDA headers) when RADAR_EMULATOR is defined. Each block's threads are fibers on one OS
// thread; threadIdx and friends are that thread's view of the running fiber.
#pragma once
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <cmath>

#define RADAR_EMULATOR 1
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
// Shared memory: one copy per OS thread, which runs one block at a time.
#define __shared__ static thread_local

struct dim3 { unsigned x, y, z; };

namespace radar_emu {
extern thread_local dim3 thread_index, block_index, block_dim, grid_dim;
void sync_block(const void *site);
float shuffle_xor(float v, int lane_mask);
void warp_gather(const uint32_t *mine, unsigned count, uint32_t *all);
void mma_bf16_m16n8k16(float *d, const unsigned *a, const unsigned *b);
void ldmatrix(unsigned *r, const void *row, unsigned count, bool trans);
void cp_async16(void *dst, const void *src, unsigned src_bytes);
void cp_async_commit();
void cp_async_wait(unsigned newest_groups_left);
}  // namespace radar_emu

#define threadIdx radar_emu::thread_index
#define blockIdx radar_emu::block_index
#define blockDim radar_emu::block_dim
#define gridDim radar_emu::grid_dim

// The call site (its line) tells barriers apart: threads waiting at different ones deadlock.
#define __syncthreads() radar_emu::sync_block((const void *)(uintptr_t)__LINE__)
inline float __shfl_xor_sync(unsigned, float v, int lane_mask) { return radar_emu::shuffle_xor(v, lane_mask); }

// The tensor-core product kernels call (the GPU build: one mma.sync instruction, inline PTX):
// d (16 x 8, fp32) += a (16 x 16, bf16) b (16 x 8, bf16) over the warp, fragments as the PTX ISA lays them out.
inline void radar_mma_bf16(float *d, const unsigned *a, const unsigned *b) { radar_emu::mma_bf16_m16n8k16(d, a, b); }
// ldmatrix.sync.aligned.m8n8.x{2,4}[.trans].shared.b16 (the GPU build: one instruction each), at
// an address in the shared window (the GPU's 32-bit offset; here the host address), plus bytes.
typedef uintptr_t radar_smem_addr;
inline radar_smem_addr radar_smem(const void *p) { return (uintptr_t)p; }
inline void radar_ldmatrix_x2(unsigned *r, radar_smem_addr row) { radar_emu::ldmatrix(r, (const void *)row, 2, false); }
inline void radar_ldmatrix_x4(unsigned *r, radar_smem_addr row) { radar_emu::ldmatrix(r, (const void *)row, 4, false); }
inline void radar_ldmatrix_x4_trans(unsigned *r, radar_smem_addr row) { radar_emu::ldmatrix(r, (const void *)row, 4, true); }
// cp.async.cg.shared.global 16 bytes, commit_group, wait_group 0 and 1 (the GPU build: one instruction
// each). The copies land in shared memory at the issuing thread's wait, not before, so a kernel
// that reads a tile before waiting (or before the barrier after the waits) reads what was there.
inline void radar_cp_async16(radar_smem_addr dst, const void *src, unsigned src_bytes) { radar_emu::cp_async16((void *)dst, src, src_bytes); }
inline void radar_cp_async_commit() { radar_emu::cp_async_commit(); }
inline void radar_cp_async_wait_all() { radar_emu::cp_async_wait(0); }
inline void radar_cp_async_wait_all_but_newest() { radar_emu::cp_async_wait(1); }
// An empty asm in the GPU build (so the compiler recomputes what derives from p where it is used
// instead of holding it in registers); nothing here.
inline const unsigned short *radar_opaque(const unsigned short *p) { return p; }

// cvt.rn.bf16x2.f32 (the GPU build: one instruction): lo and hi rounded to bf16, nearest even,
// lo in the low half; a NaN becomes the canonical 0x7fff, as the instruction gives it.
inline unsigned radar_cvt_bf16x2(float lo, float hi) {
    unsigned r = 0;
    for (int i = 0; i < 2; ++i) {
        uint32_t u;
        memcpy(&u, i == 0 ? &lo : &hi, 4);
        u = (u & 0x7fffffffu) > 0x7f800000u ? 0x7fffu : (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
        r |= u << (16 * i);
    }
    return r;
}
// ex2.approx.ftz.f32 (the GPU build: one MUFU.EX2, within 2 ulp): 2^x, a subnormal input or result
// flushed to zero (of the same sign).
inline float radar_ex2(float x) {
    if (std::fpclassify(x) == FP_SUBNORMAL) x = 0.f;
    const float y = exp2f(x);
    return std::fpclassify(y) == FP_SUBNORMAL ? 0.f : y;
}
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
inline float __int_as_float(unsigned i) { float f; memcpy(&f, &i, 4); return f; }
inline float __uint_as_float(unsigned i) { float f; memcpy(&f, &i, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned u; memcpy(&u, &f, 4); return u; }
using std::isfinite;

// CUDA's vector types that kernels load and store whole (16- and 8-byte accesses on a GPU, which
// fault unless the address is a multiple of the size). Copies are user-written: a trivial copy
// compiles to a memcpy, which -fsanitize=alignment does not check (emulator.cpp), while binding the
// source and calling the assignment on the destination are checked.
#define RADAR_EMU_VECTOR(name, align, type, ...)                                                         \
    struct alignas(align) name {                                                                          \
        type __VA_ARGS__;                                                                                 \
        name() = default;                                                                                 \
        name(const name &o) { copy(o); }                                                                  \
        name &operator=(const name &o) { copy(o); return *this; }                                       \
        void copy(const name &o);                                                                         \
    }
RADAR_EMU_VECTOR(float4, 16, float, x, y, z, w);
RADAR_EMU_VECTOR(uint4, 16, unsigned, x, y, z, w);
RADAR_EMU_VECTOR(uint2, 8, unsigned, x, y);
#undef RADAR_EMU_VECTOR
// The bytes go through pointers whose alignment the optimizer cannot see (the emulator is built
// with -O2): knowing the type's, it would move 16 bytes with an aligned SSE instruction, which
// faults on the very address the alignment check has just reported; the access must go on, as
// x86 allows it, so the launch can fail with the report.
inline void radar_emu_copy_bytes(void *dst, const void *src, size_t n) {
    asm("" : "+r"(dst), "+r"(src));
    memcpy(dst, src, n);
}
inline void float4::copy(const float4 &o) { radar_emu_copy_bytes(this, &o, sizeof o); }
inline void uint4::copy(const uint4 &o) { radar_emu_copy_bytes(this, &o, sizeof o); }
inline void uint2::copy(const uint2 &o) { radar_emu_copy_bytes(this, &o, sizeof o); }
inline uint2 make_uint2(unsigned x, unsigned y) { uint2 v; v.x = x, v.y = y; return v; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { uint4 v; v.x = x, v.y = y, v.z = z, v.w = w; return v; }
inline float4 make_float4(float x, float y, float z, float w) { float4 v; v.x = x, v.y = y, v.z = z, v.w = w; return v; }
// bf16 as CUDA stores it: the high half of a float, rounded to nearest even.
struct __nv_bfloat16 { uint16_t bits; };
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    uint32_t u; memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return __nv_bfloat16{uint16_t((u >> 16) | 0x40)};  // NaN stays NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return __nv_bfloat16{uint16_t(u >> 16)};
}
inline float __bfloat162float(__nv_bfloat16 b) { uint32_t u = uint32_t(b.bits) << 16; float f; memcpy(&f, &u, 4); return f; }

#include <functional>
namespace radar_emu {
/// Runs `body` as every thread of every block of the grid: 0, or 1 with `radar_emu_last_error`.
/// `barrier_free` (the code generator's finding that the kernel never waits at a barrier or a warp
/// exchange): threads run one after another on the calling stack, no fibers.
/// `block_limit`: the kernel's __launch_bounds__, or 0 when it declares none: then 256 (a block of 256
/// threads fits any kernel's registers on a GPU; a larger one only what ptxas was told to fit):
/// a larger block fails the launch, as "too many resources requested" may on a GPU.
int launch(const unsigned grid[3], const unsigned block[3], const std::function<void()> &body, bool barrier_free, unsigned block_limit);
}  // namespace radar_emu
