// Fused attention for bf16 activations, flash-attention style: softmax(scale q k^T) v of every head
// without the (B, H, N, N) scores or probabilities in memory. Forward keeps each row's log-sum-exp;
// backward recomputes the probabilities from it. Products on tensor cores (mma.sync m16n8k16: bf16
// operands, fp32 accumulators); softmax statistics, the log-sum-exp and the gradients in fp32.
//
// qkv (B, N, 3D) bf16 with [q|k|v] and heads of HD channels side by side; merged (B, N, D) bf16;
// lse and delta (B, H, N) fp32; dmerged bf16 (AMP's gradient of bf16 merged); dqkv fp32, or bf16 (dqkv_bf16: the gradient of bf16 qkv,
// as AMP's; accumulated in fp32 and rounded once). A block (128 threads): one (image, head) and 64 rows
// (queries, or keys for dK/dV), 4 warps of 16 rows; it walks the other side 64 at a time through
// shared memory, each tile staged once, row-major (the products that read a tile transposed take
// their fragments from it as it is: no transposed copy, whose 16-bit stores conflicted 8 ways).
// Rows past N are zeros in, masked, never written. Deterministic: every output
// element is written by one block, summed in a fixed order (dQ and dK/dV by two kernels, no atomics).
// Three builds (the entry points at the end): plain, _ldsm (B fragments by ldmatrix: the same
// bits) and _fast (ldmatrix, softmax in base 2 by ex2.approx, bf16 packing by cvt, every tile by
// cp.async behind the products: within bf16's rounding), picked by RADAR_ATTENTION_KERNELS.

#ifndef RADAR_EMULATOR
// d (16 x 8, fp32) += a (16 x 16, bf16, row-major) b (16 x 8, bf16, column-major): one warp-wide
// tensor-core instruction (sm_80 and newer), fragments as the PTX ISA lays them out.
__device__ __forceinline__ void radar_mma_bf16(float* d, const unsigned* a, const unsigned* b) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
// 8 x 8 matrices of bf16 from shared memory, one warp-wide instruction (sm_75 and newer): lanes
// 8 i to 8 i + 7 give the addresses of matrix i's rows (16 bytes, 16-byte aligned); register i of
// a lane gets matrix i's elements (g, 2 t) and (g, 2 t + 1), or with .trans (2 t, g) and (2 t + 1, g).
// Addresses in the shared window (radar_smem of a tile, plus byte offsets: integer arithmetic the
// compiler folds into the instruction, where a conversion per address kept one register each).
// By NVRTC's builtin, which the compiler folds for a __shared__ array (a cvta in inline asm was
// redone at every use: 6-9% of the fast build's loop instructions, ptxas's SASS on sm_90).
typedef unsigned radar_smem_addr;
__device__ __forceinline__ radar_smem_addr radar_smem(const void* p) {
    return (unsigned)__cvta_generic_to_shared(p);
}
__device__ __forceinline__ void radar_ldmatrix_x2(unsigned* r, radar_smem_addr row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];" : "=r"(r[0]), "=r"(r[1]) : "r"(row));
}
__device__ __forceinline__ void radar_ldmatrix_x4(unsigned* r, radar_smem_addr row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(row));
}
__device__ __forceinline__ void radar_ldmatrix_x4_trans(unsigned* r, radar_smem_addr row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(row));
}
// Two floats to bf16, rounded to nearest even, packed (lo in the low half): one instruction
// (sm_80 and newer), the bits of radar_bf16_bits but for a NaN's (the canonical 0x7fff here).
__device__ __forceinline__ unsigned radar_cvt_bf16x2(float lo, float hi) {
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
// 16 bytes from global to shared memory without passing through registers (cp.async.cg, sm_80 and
// newer): src_bytes of them read (16, or 0 for a row of zeros). They land after a wait by the same
// thread (radar_cp_async_wait_all, for every group it committed), for the block after a
// __syncthreads that follows the waits.
__device__ __forceinline__ void radar_cp_async16(radar_smem_addr dst, const void* src, unsigned src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void radar_cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
__device__ __forceinline__ void radar_cp_async_wait_all() { asm volatile("cp.async.wait_group 0;" ::: "memory"); }
// The same for every group but the newest one this thread committed (which may still be in flight).
__device__ __forceinline__ void radar_cp_async_wait_all_but_newest() { asm volatile("cp.async.wait_group 1;" ::: "memory"); }
// p, as far as the compiler knows a new value: what is computed from it is computed where it is
// used, not hoisted out of a loop into registers held across it.
__device__ __forceinline__ const unsigned short* radar_opaque(const unsigned short* p) {
    asm volatile("" : "+l"(p));
    return p;
}
// 2^x by the special-function unit (one MUFU.EX2; about 2 ulp; subnormals flushed to zero).
__device__ __forceinline__ float radar_ex2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}
#endif

#define ATTN_TILE 64  // rows per block (4 warps of 16) and per step of the other side
#define ATTN_PAD 8    // bf16 elements of padding per shared row (spreads a fragment's loads over banks)
#define ATTN_LOG2E 1.44269504088896341f

__device__ __forceinline__ unsigned attn_pack(float lo, float hi) { return radar_bf16_bits(lo) | (unsigned)radar_bf16_bits(hi) << 16; }
// The fast build packs by one cvt instruction (the same bits but a NaN's).
template <bool FAST>
__device__ __forceinline__ unsigned attn_pack2(float lo, float hi) {
    if constexpr (FAST) return radar_cvt_bf16x2(lo, hi);
    else return attn_pack(lo, hi);
}
// Where a thread of the launch stands (blocks: the 64-row tile fastest, then head, then image):
// d the model width, ld qkv's row length, the lane with its accumulator row group g and column
// pair t, the block's head and image, and the first of the warp's 16 rows.
struct AttnPlace { int d; long ld; int lane, g, t, h, image, row; };
__device__ __forceinline__ AttnPlace attn_place(int n, int heads, int hd) {
    const int tiles = (n + ATTN_TILE - 1) / ATTN_TILE, lane = threadIdx.x % 32;
    return {heads * hd, 3L * heads * hd, lane, lane / 4, lane % 4, (int)(blockIdx.x / tiles % heads), (int)(blockIdx.x / tiles / heads),
            (int)(blockIdx.x % tiles * ATTN_TILE + (threadIdx.x / 32) * 16)};
}
// Two adjacent gradient elements (i even): fp32, or bf16 as one 32-bit store.
template <bool FAST>
__device__ __forceinline__ void attn_store2(float* dst, int bf16, long i, float a, float b) {
    if (bf16) *(unsigned*)((unsigned short*)dst + i) = attn_pack2<FAST>(a, b);
    else dst[i] = a, dst[i + 1] = b;
}
__device__ __forceinline__ float attn_low(unsigned r) { return __uint_as_float(r << 16); }
__device__ __forceinline__ float attn_high(unsigned r) { return __uint_as_float(r & 0xffff0000u); }
// Over the four lanes that hold one accumulator row.
__device__ __forceinline__ float attn_quad_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float attn_quad_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// The A fragment (16 x 16) at rows [row, row + 16), columns [col, col + 16) of a row-major bf16
// matrix with leading dimension ld; rows at or past `rows` are zeros.
__device__ __forceinline__ void attn_load_a(unsigned* a, const unsigned short* m, long ld, int row, int rows, int col, int lane) {
    const int r0 = row + lane / 4, c = col + 2 * (lane % 4);
    const bool v0 = r0 < rows, v1 = r0 + 8 < rows;
    a[0] = v0 ? *(const unsigned*)(m + r0 * ld + c) : 0u;
    a[1] = v1 ? *(const unsigned*)(m + (r0 + 8) * ld + c) : 0u;
    a[2] = v0 ? *(const unsigned*)(m + r0 * ld + c + 8) : 0u;
    a[3] = v1 ? *(const unsigned*)(m + (r0 + 8) * ld + c + 8) : 0u;
}
// The B fragment (16 x 8) with k in [k0, k0 + 16), n in [n0, n0 + 8) of shared bf16 rows indexed
// by n, k contiguous (a row-major matrix read transposed).
__device__ __forceinline__ void attn_load_b(unsigned* b, const unsigned short* s, int ld, int n0, int k0, int lane) {
    const unsigned short* r = s + (n0 + lane / 4) * ld + k0 + 2 * (lane % 4);
    b[0] = *(const unsigned*)r;
    b[1] = *(const unsigned*)(r + 8);
}
// The same fragment from shared bf16 rows indexed by k, n contiguous (a row-major k x n matrix):
// each register's two k values come from two rows. With ld = HD + 8 the 32 lanes read 16 words in
// 16 banks (lanes g and g ^ 1 share a word): no bank conflict.
__device__ __forceinline__ void attn_load_b_kn(unsigned* b, const unsigned short* s, int ld, int n0, int k0, int lane) {
    const unsigned short* r = s + (k0 + 2 * (lane % 4)) * ld + n0 + lane / 4;
    b[0] = (unsigned)r[0] | (unsigned)r[ld] << 16;
    b[1] = (unsigned)r[8 * ld] | (unsigned)r[9 * ld] << 16;
}
// A fragment from four 16 x 8 accumulator tiles' worth of values: the PTX layouts of a 16 x 8
// accumulator and a 16 x 16 operand coincide per 8 columns, so columns [16 kk, 16 kk + 16) of
// the accumulators c[2 kk] and c[2 kk + 1] are that k-step's A fragment, rounded to bf16.
template <bool FAST>
__device__ __forceinline__ void attn_a_from_c(unsigned* a, const float* c0, const float* c1) {
    a[0] = attn_pack2<FAST>(c0[0], c0[1]);
    a[1] = attn_pack2<FAST>(c0[2], c0[3]);
    a[2] = attn_pack2<FAST>(c1[0], c1[1]);
    a[3] = attn_pack2<FAST>(c1[2], c1[3]);
}

// Rows [row0, row0 + 64) x HD channels of a global row-major matrix into shared rows
// (dst[r * ldd + c]), eight channels (16 bytes) per access; rows past `rows` as zeros. Every
// address is 16-byte aligned: the arena's tensors are 64-byte aligned, qkv's rows are 6 D bytes
// and dmerged's 2 D (D = heads x HD, a multiple of 16), a head starts 2 HD bytes in, and a
// shared row is 2 (HD + 8) bytes of a uint4 array.
template <int HD>
__device__ __forceinline__ void attn_stage(unsigned short* dst, int ldd, const unsigned short* src, long lds, int row0, int rows) {
    for (int i = threadIdx.x; i < ATTN_TILE * HD / 8; i += blockDim.x) {
        const int r = i / (HD / 8), c = (i % (HD / 8)) * 8;
        uint4 v = make_uint4(0u, 0u, 0u, 0u);
        if (row0 + r < rows) v = *(const uint4*)(src + (row0 + r) * lds + c);
        *(uint4*)(dst + r * ldd + c) = v;
    }
}
// The same by cp.async (the fast build), not committed: in shared memory once the group the caller
// commits it in is waited for (radar_cp_async_wait_*) and, for the block, after a __syncthreads
// that follows the waits.
template <int HD>
__device__ __forceinline__ void attn_stage_async(radar_smem_addr dst, int ldd, const unsigned short* src, long lds, int row0, int rows) {
    for (int i = threadIdx.x; i < ATTN_TILE * HD / 8; i += blockDim.x) {
        const int r = i / (HD / 8), c = (i % (HD / 8)) * 8;
        const bool real = row0 + r < rows;
        radar_cp_async16(dst + 2 * (r * ldd + c), real ? src + (long)(row0 + r) * lds + c : src, real ? 16u : 0u);
    }
}
// s (16 x 64: this warp's rows against 64 shared rows) = a b^T over HD channels. `valid`: how many
// of the 64 shared rows are real (N - first row); the products past it are skipped (N = 197 pads
// its last step of 64 from 5: a fifth of the work).
// One 16 x 8 block of it, columns [8 j, 8 j + 8): zeros past the last valid row (warp-uniform),
// masked by the caller.
// LDSM: the B fragments by ldmatrix (two k-steps an instruction; one for HD 16) instead of two
// 32-bit shared loads each.
template <int HD, bool LDSM>
__device__ __forceinline__ void attn_score_block(float* s, const unsigned (*a)[4], const unsigned short* rows, int ld, int lane, int valid,
                                                 int j) {
    s[0] = s[1] = s[2] = s[3] = 0.f;
    if (j * 8 >= valid) return;
    if constexpr (LDSM) {
        // Matrix i of an instruction: rows [8 j, 8 j + 8), channels [16 kk + 8 i, 16 kk + 8 i + 8):
        // registers 0, 1 are k-step kk's fragment, 2, 3 the next one's.
        const radar_smem_addr row = radar_smem(rows) + 2 * ((j * 8 + lane % 8) * ld + 8 * (lane / 8 % (HD == 16 ? 2 : 4)));
        if constexpr (HD == 16) {
            unsigned b[2];
            radar_ldmatrix_x2(b, row);
            radar_mma_bf16(s, a[0], b);
        } else {
#pragma unroll
            for (int kk = 0; kk < HD / 16; kk += 2) {
                unsigned b[4];
                radar_ldmatrix_x4(b, row + 2 * kk * 16);
                radar_mma_bf16(s, a[kk], b);
                radar_mma_bf16(s, a[kk + 1], b + 2);
            }
        }
    } else {
#pragma unroll
        for (int kk = 0; kk < HD / 16; ++kk) {
            unsigned b[2];
            attn_load_b(b, rows, ld, j * 8, kk * 16, lane);
            radar_mma_bf16(s, a[kk], b);
        }
    }
}
template <int HD, bool LDSM>
__device__ __forceinline__ void attn_scores(float (*s)[4], const unsigned (*a)[4], const unsigned short* rows, int ld, int lane, int valid) {
#pragma unroll
    for (int j = 0; j < ATTN_TILE / 8; ++j) attn_score_block<HD, LDSM>(s[j], a, rows, ld, lane, valid, j);
}
// acc (16 x HD) += p (16 x 64, accumulator layout, rounded to bf16) times the 64 x HD matrix held
// row-major in shared memory (a row per key or query, the channels contiguous).
// LDSM: the B fragments by ldmatrix.trans, two n-blocks an instruction (matrix i: rows
// [16 kk + 8 (i % 2), + 8), channels [8 jn + 8 (i / 2), + 8)) instead of four 16-bit loads each.
template <int HD, bool LDSM, bool FAST>
__device__ __forceinline__ void attn_accumulate(float (*acc)[4], const float (*p)[4], const unsigned short* rows, int ld, int lane,
                                                int valid) {
#pragma unroll
    for (int kk = 0; kk < ATTN_TILE / 16; ++kk) {
        if (kk * 16 >= valid) break;  // the rest of p is zeros (warp-uniform): nothing to add
        unsigned a[4];
        attn_a_from_c<FAST>(a, p[2 * kk], p[2 * kk + 1]);
        if constexpr (LDSM) {
            const radar_smem_addr row = radar_smem(rows) + 2 * ((kk * 16 + lane % 8 + 8 * (lane / 8 % 2)) * ld + 8 * (lane / 16));
#pragma unroll
            for (int jn = 0; jn < HD / 8; jn += 2) {
                unsigned b[4];
                radar_ldmatrix_x4_trans(b, row + 2 * jn * 8);
                radar_mma_bf16(acc[jn], a, b);
                radar_mma_bf16(acc[jn + 1], a, b + 2);
            }
        } else {
#pragma unroll
            for (int jn = 0; jn < HD / 8; ++jn) {
                unsigned b[2];
                attn_load_b_kn(b, rows, ld, jn * 8, kk * 16, lane);
                radar_mma_bf16(acc[jn], a, b);
            }
        }
    }
}

// Keys (columns) at or past `valid` of a step's 16 x 64 scores to -inf: only where the step is
// partial (warp-uniform), so full steps pay no compare.
__device__ __forceinline__ void attn_mask_columns(float (*s)[4], int valid, int t) {
    if (valid >= ATTN_TILE) return;
    const float minus_inf = __int_as_float(0xff800000);
#pragma unroll
    for (int j = 0; j < ATTN_TILE / 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e)
            if (j * 8 + 2 * t + (e & 1) >= valid) s[j][e] = minus_inf;
}
// The fast build's online softmax step: s (unscaled scores) becomes the step's unnormalised
// probabilities 2^(s sl2 - m sl2), m (unscaled maxima), l (sums) and o are updated. sl2 = scale
// log2(e). Every step has a key below N, so the new maxima are finite (the first step's alpha is
// 2^-inf = 0).
template <int HD>
__device__ __forceinline__ void attn_online_softmax_fast(float (*s)[4], float* m, float* l, float (*o)[4], int valid, int t, float sl2) {
    attn_mask_columns(s, valid, t);
    float mx[2] = {m[0], m[1]};
#pragma unroll
    for (int j = 0; j < ATTN_TILE / 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) mx[e / 2] = fmaxf(mx[e / 2], s[j][e]);
    float alpha[2], ms[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        mx[i] = attn_quad_max(mx[i]);
        alpha[i] = radar_ex2((m[i] - mx[i]) * sl2);
        m[i] = mx[i];
        ms[i] = mx[i] * sl2;
        l[i] *= alpha[i];
    }
#pragma unroll
    for (int j = 0; j < ATTN_TILE / 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            s[j][e] = radar_ex2(fmaf(s[j][e], sl2, -ms[e / 2]));
            l[e / 2] += s[j][e];
        }
#pragma unroll
    for (int jn = 0; jn < HD / 8; ++jn) {
        o[jn][0] *= alpha[0], o[jn][1] *= alpha[0];
        o[jn][2] *= alpha[1], o[jn][3] *= alpha[1];
    }
}
// FAST (the fast build): softmax in base 2 (each probability one FFMA and one MUFU.EX2, the maxima
// kept in unscaled scores), keys past N masked only in the last, partial step, bf16 packing by
// cvt, the tiles staged by cp.async. Within bf16's rounding of the plain build, not its bits.
template <int HD, bool LDSM, bool FAST>
__device__ __forceinline__ void attention_forward(const unsigned short* qkv, unsigned short* merged, float* lse, int n, int heads, float scale) {
    constexpr int LK = HD + ATTN_PAD;
    __shared__ uint4 ks_words[ATTN_TILE * LK / 8];  // this step's keys, a row each (uint4: 16-byte aligned)
    __shared__ uint4 vs_words[ATTN_TILE * LK / 8];  // its values, a row each
    unsigned short* ks = (unsigned short*)ks_words;
    unsigned short* vs = (unsigned short*)vs_words;
    const auto [d, ld, lane, g, t, h, image, row] = attn_place(n, heads, HD);
    const bool active = row < n;
    const unsigned short* q = qkv + (long)image * n * ld + h * HD;
    unsigned qa[HD / 16][4];
#pragma unroll
    for (int kk = 0; kk < HD / 16; ++kk) attn_load_a(qa[kk], q, ld, row, n, kk * 16, lane);
    const float minus_inf = __int_as_float(0xff800000);
    float m[2] = {minus_inf, minus_inf}, l[2] = {0.f, 0.f}, o[HD / 8][4];
#pragma unroll
    for (int jn = 0; jn < HD / 8; ++jn) o[jn][0] = o[jn][1] = o[jn][2] = o[jn][3] = 0.f;
    // FAST: the tiles come by cp.async, each while the other's products run (flash attention 2's
    // order): K(k0) lands, V(k0) is requested, scores and softmax run; V(k0) lands, K(k0 + 64) is
    // requested, P V(k0) runs. The same two tiles of shared memory, two barriers a step.
    for (int k0 = 0; FAST && k0 < n; k0 += ATTN_TILE) {
        if (k0 == 0) attn_stage_async<HD>(radar_smem(ks), LK, q + d, ld, 0, n), radar_cp_async_commit();
        radar_cp_async_wait_all();
        __syncthreads();  // K(k0) is in for every thread; every warp is done with V(k0 - 64)
        attn_stage_async<HD>(radar_smem(vs), LK, q + 2 * d, ld, k0, n);
        radar_cp_async_commit();
        float s[ATTN_TILE / 8][4];
        if (active) {
            attn_scores<HD, LDSM>(s, qa, ks, LK, lane, n - k0);
            attn_online_softmax_fast<HD>(s, m, l, o, n - k0, t, scale * ATTN_LOG2E);
        }
        radar_cp_async_wait_all();
        __syncthreads();  // V(k0) is in; every warp is done with K(k0)
        if (k0 + ATTN_TILE < n) attn_stage_async<HD>(radar_smem(ks), LK, q + d, ld, k0 + ATTN_TILE, n), radar_cp_async_commit();
        if (active) attn_accumulate<HD, LDSM, FAST>(o, s, vs, LK, lane, n - k0);
    }
    for (int k0 = 0; !FAST && k0 < n; k0 += ATTN_TILE) {
        __syncthreads();  // the last step's tiles are read
        attn_stage<HD>(ks, LK, q + d, ld, k0, n);
        attn_stage<HD>(vs, LK, q + 2 * d, ld, k0, n);
        __syncthreads();
        float s[ATTN_TILE / 8][4];
        if (!active) continue;  // a warp whose 16 rows are all past N only helps stage
        attn_scores<HD, LDSM>(s, qa, ks, LK, lane, n - k0);
        // Online softmax: every step has a key below n, so the new maxima are finite.
        float mx[2] = {m[0], m[1]};
#pragma unroll
        for (int j = 0; j < ATTN_TILE / 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const float v = k0 + j * 8 + 2 * t + (e & 1) < n ? s[j][e] * scale : minus_inf;
                s[j][e] = v;
                mx[e / 2] = fmaxf(mx[e / 2], v);
            }
        float alpha[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            mx[i] = attn_quad_max(mx[i]);
            alpha[i] = expf(m[i] - mx[i]);
            m[i] = mx[i];
            l[i] *= alpha[i];
        }
#pragma unroll
        for (int j = 0; j < ATTN_TILE / 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                s[j][e] = expf(s[j][e] - m[e / 2]);
                l[e / 2] += s[j][e];
            }
#pragma unroll
        for (int jn = 0; jn < HD / 8; ++jn) {
            o[jn][0] *= alpha[0], o[jn][1] *= alpha[0];
            o[jn][2] *= alpha[1], o[jn][3] *= alpha[1];
        }
        attn_accumulate<HD, LDSM, FAST>(o, s, vs, LK, lane, n - k0);
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        l[i] = attn_quad_sum(l[i]);
        const int r = row + g + 8 * i;
        if (r >= n) continue;
        unsigned short* out = merged + ((long)image * n + r) * d + h * HD + 2 * t;
#pragma unroll
        for (int jn = 0; jn < HD / 8; ++jn) *(unsigned*)(out + jn * 8) = attn_pack2<FAST>(o[jn][2 * i] / l[i], o[jn][2 * i + 1] / l[i]);
        if (t == 0) lse[((long)image * heads + h) * n + r] = (FAST ? m[i] * scale : m[i]) + logf(l[i]);
    }
}

// The backward kernels' tiles. The plain and _ldsm builds stage both of a step's tiles and wait
// (two barriers a step). The fast build keeps two tiles of the side read at both ends of a step
// (keys for dQ, queries for dK/dV) and one of the side read in its middle (values, dO), all by
// cp.async: after the step's first barrier it requests the middle tile of this step and the end
// tile of the next, then computes the scores while they load; before the middle it waits for its
// own middle tile (not the next end tile: that group is the newest) and meets the second barrier.
// Three tiles of shared memory, not four: 27 KiB for heads of 64, so three blocks an SM fit in an
// sm_86's 100 KiB as well as in the register file.
template <bool FAST>
constexpr int attn_end_tiles() { return FAST ? 2 : 1; }

// dQ of 64 query rows (and delta = rowsum(dO o O), which the key/value kernel reads): walks the keys.
template <int HD, bool LDSM, bool FAST>
__device__ __forceinline__ void attention_backward_query(const unsigned short* qkv, const unsigned short* merged, const unsigned short* dmerged,
                                                         const float* lse, float* delta, float* dqkv, int dqkv_bf16, int n, int heads,
                                                         float scale) {
    constexpr int LK = HD + ATTN_PAD, TILE = ATTN_TILE * LK;
    __shared__ uint4 ks_words[attn_end_tiles<FAST>() * TILE / 8], vs_words[TILE / 8];
    unsigned short* ks = (unsigned short*)ks_words;  // keys, a row each (FAST: this step's and the next's)
    unsigned short* vs = (unsigned short*)vs_words;  // values, a row each
    const auto [d, ld, lane, g, t, h, image, row] = attn_place(n, heads, HD);
    const bool active = row < n;
    const unsigned short* q = qkv + (long)image * n * ld + h * HD;
    const unsigned short* dout = dmerged + (long)image * n * d + h * HD;
    const unsigned short* out = merged + (long)image * n * d + h * HD;
    if constexpr (FAST) attn_stage_async<HD>(radar_smem(ks), LK, q + d, ld, 0, n), radar_cp_async_commit();
    unsigned qa[HD / 16][4], da[HD / 16][4];
#pragma unroll
    for (int kk = 0; kk < HD / 16; ++kk) {
        attn_load_a(qa[kk], q, ld, row, n, kk * 16, lane);
        attn_load_a(da[kk], dout, d, row, n, kk * 16, lane);
    }
    // delta over this lane's columns of its two rows (bf16 dO and O, summed in fp32), then over the quad.
    float dl[2] = {0.f, 0.f}, ls[2] = {0.f, 0.f};
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int r = row + g + 8 * i;
        if (r < n) {
            for (int c = 2 * t; c < HD; c += 8) {
                const unsigned o = *(const unsigned*)(out + (long)r * d + c), dy = *(const unsigned*)(dout + (long)r * d + c);
                dl[i] += attn_low(dy) * attn_low(o) + attn_high(dy) * attn_high(o);
            }
            ls[i] = lse[((long)image * heads + h) * n + r];
            if constexpr (FAST) ls[i] *= ATTN_LOG2E;  // in base 2
        }
        dl[i] = attn_quad_sum(dl[i]);
        if (t == 0 && r < n) delta[((long)image * heads + h) * n + r] = dl[i];
    }
    float dq[HD / 8][4];
#pragma unroll
    for (int jn = 0; jn < HD / 8; ++jn) dq[jn][0] = dq[jn][1] = dq[jn][2] = dq[jn][3] = 0.f;
    for (int k0 = 0, at = 0; k0 < n; k0 += ATTN_TILE, at ^= attn_end_tiles<FAST>() - 1) {
        unsigned short* kt = ks + at * TILE;  // this step's keys
        if constexpr (FAST) {
            radar_cp_async_wait_all();
            __syncthreads();  // K(k0) is in for every thread; every warp is done with the last step's tiles
            // The requests' addresses from q afresh each step: hoisted, they held registers across
            // the loop, and ptxas spilled at 3 blocks an SM (sm_90).
            const unsigned short* staged = radar_opaque(q);
            attn_stage_async<HD>(radar_smem(vs), LK, staged + 2 * d, ld, k0, n);
            radar_cp_async_commit();
            if (k0 + ATTN_TILE < n) attn_stage_async<HD>(radar_smem(ks + (at ^ 1) * TILE), LK, staged + d, ld, k0 + ATTN_TILE, n);
            radar_cp_async_commit();  // (empty in the last step: the wait below leaves one group, never V's)
        } else {
            __syncthreads();  // the last step's tiles are read
            attn_stage<HD>(kt, LK, q + d, ld, k0, n);
            attn_stage<HD>(vs, LK, q + 2 * d, ld, k0, n);
            __syncthreads();
        }
        float s[ATTN_TILE / 8][4];
        if (active) {  // a warp whose 16 rows are all past N only helps stage
            attn_scores<HD, LDSM>(s, qa, kt, LK, lane, n - k0);
            if constexpr (FAST) attn_mask_columns(s, n - k0, t);
        }
        if constexpr (FAST) {
            radar_cp_async_wait_all_but_newest();
            __syncthreads();  // V(k0) is in for every thread
        }
        if (!active) continue;
        // dS = P o (dP - delta), P recomputed from the forward's log-sum-exp; dP = dO V^T a block
        // of 8 keys at a time, used at once.
#pragma unroll
        for (int j = 0; j < ATTN_TILE / 8; ++j) {
            float dp[4];
            attn_score_block<HD, LDSM>(dp, da, vs, LK, lane, n - k0, j);
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                float p;
                if constexpr (FAST) p = radar_ex2(fmaf(s[j][e], scale * ATTN_LOG2E, -ls[e / 2]));  // 0 where masked
                else p = k0 + j * 8 + 2 * t + (e & 1) < n ? expf(s[j][e] * scale - ls[e / 2]) : 0.f;
                s[j][e] = p * (dp[e] - dl[e / 2]);
            }
        }
        attn_accumulate<HD, LDSM, FAST>(dq, s, kt, LK, lane, n - k0);
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int r = row + g + 8 * i;
        if (r >= n) continue;
        const long dst = ((long)image * n + r) * ld + h * HD + 2 * t;
#pragma unroll
        for (int jn = 0; jn < HD / 8; ++jn) attn_store2<FAST>(dqkv, dqkv_bf16, dst + jn * 8, dq[jn][2 * i] * scale, dq[jn][2 * i + 1] * scale);
    }
}

// A query's log-sum-exp (FAST: in base 2, +inf past N, so its probabilities come out 2^-inf = 0
// unmasked) and delta as the key/value kernel keeps them per step; 0 past N in the plain builds.
template <bool FAST>
__device__ __forceinline__ float attn_query_lse(const float* lse_h, int i, int n) {
    if constexpr (FAST) return i < n ? lse_h[i] * ATTN_LOG2E : __int_as_float(0x7f800000);
    else return i < n ? lse_h[i] : 0.f;
}
__device__ __forceinline__ float attn_query_delta(const float* delta_h, int i, int n) { return i < n ? delta_h[i] : 0.f; }
// The fast key/value kernel's statistics of the step at q0, a value a thread (128 threads: thread
// t < 64 the log-sum-exp of query q0 + t, thread 64 + t its delta), and their store into buffer `at`.
__device__ __forceinline__ float attn_query_stat(const float* lse_h, const float* delta_h, int q0, int n) {
    const int i = q0 + (int)threadIdx.x % ATTN_TILE;
    return threadIdx.x < ATTN_TILE ? attn_query_lse<true>(lse_h, i, n) : attn_query_delta(delta_h, i, n);
}
__device__ __forceinline__ void attn_store_query_stat(float (*lse_s)[ATTN_TILE], float (*delta_s)[ATTN_TILE], int at, float v) {
    if (threadIdx.x < ATTN_TILE) lse_s[at][threadIdx.x] = v;
    else delta_s[at][threadIdx.x - ATTN_TILE] = v;
}

// dK and dV of 64 key rows: walks the queries (after attention_backward_query wrote delta).
template <int HD, bool LDSM, bool FAST>
__device__ __forceinline__ void attention_backward_key_value(const unsigned short* qkv, const unsigned short* dmerged, const float* lse,
                                                             const float* delta, float* dqkv, int dqkv_bf16, int n, int heads,
                                                             float scale) {
    constexpr int LK = HD + ATTN_PAD, TILE = ATTN_TILE * LK, ENDS = attn_end_tiles<FAST>();
    __shared__ uint4 qs_words[ENDS * TILE / 8], os_words[TILE / 8];
    __shared__ float lse_s[ENDS][ATTN_TILE], delta_s[ENDS][ATTN_TILE];
    unsigned short* qs = (unsigned short*)qs_words;  // queries, a row each (FAST: this step's and the next's)
    unsigned short* os = (unsigned short*)os_words;  // dO, a row each
    const auto [d, ld, lane, g, t, h, image, row] = attn_place(n, heads, HD);
    const bool active = row < n;
    const unsigned short* q = qkv + (long)image * n * ld + h * HD;
    const unsigned short* dout = dmerged + (long)image * n * d + h * HD;
    const float* lse_h = lse + ((long)image * heads + h) * n;
    const float* delta_h = delta + ((long)image * heads + h) * n;
    if constexpr (FAST) {
        // The first step's queries by cp.async; its log-sum-exps and deltas stored here (a thread
        // each: the launch's 128 threads are 64 of each), the later steps' loaded a step ahead
        // into `ahead` (the load's latency behind the step's products) and stored at its end.
        attn_stage_async<HD>(radar_smem(qs), LK, q, ld, 0, n);
        radar_cp_async_commit();
        attn_store_query_stat(lse_s, delta_s, 0, attn_query_stat(lse_h, delta_h, 0, n));
    }
    unsigned ka[HD / 16][4], va[HD / 16][4];
#pragma unroll
    for (int kk = 0; kk < HD / 16; ++kk) {
        attn_load_a(ka[kk], q + d, ld, row, n, kk * 16, lane);
        attn_load_a(va[kk], q + 2 * d, ld, row, n, kk * 16, lane);
    }
    float dk[HD / 8][4], dv[HD / 8][4];
#pragma unroll
    for (int jn = 0; jn < HD / 8; ++jn) {
        dk[jn][0] = dk[jn][1] = dk[jn][2] = dk[jn][3] = 0.f;
        dv[jn][0] = dv[jn][1] = dv[jn][2] = dv[jn][3] = 0.f;
    }
    for (int q0 = 0, at = 0; q0 < n; q0 += ATTN_TILE, at ^= ENDS - 1) {
        unsigned short* qt = qs + at * TILE;  // this step's queries
        const float* lse_t = lse_s[at];
        const float* delta_t = delta_s[at];
        const bool next = q0 + ATTN_TILE < n;
        float ahead = 0.f;  // FAST: the next step's log-sum-exp or delta of this thread's query
        if constexpr (FAST) {
            radar_cp_async_wait_all();
            __syncthreads();  // Q(q0), its lse and delta are in; every warp is done with the last step's
            attn_stage_async<HD>(radar_smem(os), LK, dout, d, q0, n);
            radar_cp_async_commit();
            if (next) attn_stage_async<HD>(radar_smem(qs + (at ^ 1) * TILE), LK, q, ld, q0 + ATTN_TILE, n);
            radar_cp_async_commit();  // (empty in the last step: the wait below leaves one group, never dO's)
            if (next) ahead = attn_query_stat(lse_h, delta_h, q0 + ATTN_TILE, n);
        } else {
            __syncthreads();  // the last step's tiles are read
            attn_stage<HD>(qt, LK, q, ld, q0, n);
            attn_stage<HD>(os, LK, dout, d, q0, n);
            for (int i = threadIdx.x; i < ATTN_TILE; i += blockDim.x) {
                lse_s[0][i] = attn_query_lse<FAST>(lse_h, q0 + i, n);
                delta_s[0][i] = attn_query_delta(delta_h, q0 + i, n);
            }
            __syncthreads();
        }
        // P^T (these 16 keys x 64 queries) from the log-sum-exp of each query (a column here).
        float p[ATTN_TILE / 8][4];
        if (active) {  // a warp whose 16 rows are all past N only helps stage
            attn_scores<HD, LDSM>(p, ka, qt, LK, lane, n - q0);
#pragma unroll
            for (int j = 0; j < ATTN_TILE / 8; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int c = j * 8 + 2 * t + (e & 1);
                    if constexpr (FAST) p[j][e] = radar_ex2(fmaf(p[j][e], scale * ATTN_LOG2E, -lse_t[c]));  // 2^-inf = 0 past N
                    else p[j][e] = q0 + c < n ? expf(p[j][e] * scale - lse_t[c]) : 0.f;
                }
        }
        if constexpr (FAST) {
            radar_cp_async_wait_all_but_newest();
            __syncthreads();  // dO(q0) is in for every thread
        }
        if (active) {
            attn_accumulate<HD, LDSM, FAST>(dv, p, os, LK, lane, n - q0);  // dV += P^T dO
            // dP^T = V dO^T a block of 8 queries at a time, each used at once (dS^T = P^T o (dP^T -
            // delta)): 4 live accumulators instead of 32 (run 5's 204 registers allowed 2 blocks an SM).
#pragma unroll
            for (int j = 0; j < ATTN_TILE / 8; ++j) {
                float dp[4];
                attn_score_block<HD, LDSM>(dp, va, os, LK, lane, n - q0, j);
#pragma unroll
                for (int e = 0; e < 4; ++e) p[j][e] *= dp[e] - delta_t[j * 8 + 2 * t + (e & 1)];
            }
            attn_accumulate<HD, LDSM, FAST>(dk, p, qt, LK, lane, n - q0);  // dK += dS^T Q
        }
        // The next step's statistics into the other buffer, read last in the step before this one.
        if constexpr (FAST) {
            if (next) attn_store_query_stat(lse_s, delta_s, at ^ 1, ahead);
        }
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int r = row + g + 8 * i;
        if (r >= n) continue;
        const long dst = ((long)image * n + r) * ld + h * HD + 2 * t;
#pragma unroll
        for (int jn = 0; jn < HD / 8; ++jn) {
            attn_store2<FAST>(dqkv, dqkv_bf16, dst + d + jn * 8, dk[jn][2 * i] * scale, dk[jn][2 * i + 1] * scale);
            attn_store2<FAST>(dqkv, dqkv_bf16, dst + 2 * d + jn * 8, dv[jn][2 * i], dv[jn][2 * i + 1]);
        }
    }
}

// Launch: ceil(n / 64) * heads * batch blocks (tile fastest, then head, then image) of 128 threads.
// One kernel per head size; the _ldsm ones (RADAR_ATTENTION_KERNELS=ldmatrix, off by default until
// a GPU run has checked and timed them) load the B fragments from shared memory by ldmatrix.
extern "C" __global__ void radar_attention_forward_hd16(const unsigned short* qkv, unsigned short* merged, float* lse, int n, int heads,
                                                        float scale) {
    attention_forward<16, false, false>(qkv, merged, lse, n, heads, scale);
}
extern "C" __global__ void radar_attention_forward_hd32(const unsigned short* qkv, unsigned short* merged, float* lse, int n, int heads,
                                                        float scale) {
    attention_forward<32, false, false>(qkv, merged, lse, n, heads, scale);
}
extern "C" __global__ void radar_attention_forward_hd64(const unsigned short* qkv, unsigned short* merged, float* lse, int n, int heads,
                                                        float scale) {
    attention_forward<64, false, false>(qkv, merged, lse, n, heads, scale);
}
extern "C" __global__ void radar_attention_backward_query_hd16(const unsigned short* qkv, const unsigned short* merged, const unsigned short* dmerged,
                                                               const float* lse, float* delta, float* dqkv, int dqkv_bf16, int n, int heads,
                                                               float scale) {
    attention_backward_query<16, false, false>(qkv, merged, dmerged, lse, delta, dqkv, dqkv_bf16, n, heads, scale);
}
extern "C" __global__ void radar_attention_backward_query_hd32(const unsigned short* qkv, const unsigned short* merged, const unsigned short* dmerged,
                                                               const float* lse, float* delta, float* dqkv, int dqkv_bf16, int n, int heads,
                                                               float scale) {
    attention_backward_query<32, false, false>(qkv, merged, dmerged, lse, delta, dqkv, dqkv_bf16, n, heads, scale);
}
// __launch_bounds__: 4 blocks an SM (128 registers a thread; 158 before dP went a block at a
// time, 3 blocks), which ptxas fits with no spill.
extern "C" __global__ void __launch_bounds__(128, 4) radar_attention_backward_query_hd64(const unsigned short* qkv, const unsigned short* merged,
                                                                                          const unsigned short* dmerged, const float* lse, float* delta,
                                                                                          float* dqkv, int dqkv_bf16, int n, int heads,
                                                                                          float scale) {
    attention_backward_query<64, false, false>(qkv, merged, dmerged, lse, delta, dqkv, dqkv_bf16, n, heads, scale);
}
extern "C" __global__ void radar_attention_backward_key_value_hd16(const unsigned short* qkv, const unsigned short* dmerged, const float* lse,
                                                                   const float* delta, float* dqkv, int dqkv_bf16, int n, int heads,
                                                                   float scale) {
    attention_backward_key_value<16, false, false>(qkv, dmerged, lse, delta, dqkv, dqkv_bf16, n, heads, scale);
}
extern "C" __global__ void radar_attention_backward_key_value_hd32(const unsigned short* qkv, const unsigned short* dmerged, const float* lse,
                                                                   const float* delta, float* dqkv, int dqkv_bf16, int n, int heads,
                                                                   float scale) {
    attention_backward_key_value<32, false, false>(qkv, dmerged, lse, delta, dqkv, dqkv_bf16, n, heads, scale);
}
// The ViT-S head size: __launch_bounds__ asks ptxas for 3 blocks an SM (168 registers a thread;
// without it 204, 2 blocks), which it fits with no spill once dP is used a block at a time.
// (ptxas on sm_80 to sm_120, CUDA 12.9; the compile gate fails on any spill.)
extern "C" __global__ void __launch_bounds__(128, 3) radar_attention_backward_key_value_hd64(const unsigned short* qkv, const unsigned short* dmerged,
                                                                                              const float* lse, const float* delta, float* dqkv,
                                                                                              int dqkv_bf16, int n, int heads, float scale) {
    attention_backward_key_value<64, false, false>(qkv, dmerged, lse, delta, dqkv, dqkv_bf16, n, heads, scale);
}
extern "C" __global__ void radar_attention_forward_hd16_ldsm(const unsigned short* qkv, unsigned short* merged, float* lse, int n, int heads,
                                                             float scale) {
    attention_forward<16, true, false>(qkv, merged, lse, n, heads, scale);
}
extern "C" __global__ void radar_attention_forward_hd32_ldsm(const unsigned short* qkv, unsigned short* merged, float* lse, int n, int heads,
                                                             float scale) {
    attention_forward<32, true, false>(qkv, merged, lse, n, heads, scale);
}
extern "C" __global__ void radar_attention_forward_hd64_ldsm(const unsigned short* qkv, unsigned short* merged, float* lse, int n, int heads,
                                                             float scale) {
    attention_forward<64, true, false>(qkv, merged, lse, n, heads, scale);
}
extern "C" __global__ void radar_attention_backward_query_hd16_ldsm(const unsigned short* qkv, const unsigned short* merged,
                                                                    const unsigned short* dmerged, const float* lse, float* delta, float* dqkv,
                                                                    int dqkv_bf16, int n, int heads, float scale) {
    attention_backward_query<16, true, false>(qkv, merged, dmerged, lse, delta, dqkv, dqkv_bf16, n, heads, scale);
}
extern "C" __global__ void radar_attention_backward_query_hd32_ldsm(const unsigned short* qkv, const unsigned short* merged,
                                                                    const unsigned short* dmerged, const float* lse, float* delta, float* dqkv,
                                                                    int dqkv_bf16, int n, int heads, float scale) {
    attention_backward_query<32, true, false>(qkv, merged, dmerged, lse, delta, dqkv, dqkv_bf16, n, heads, scale);
}
extern "C" __global__ void radar_attention_backward_query_hd64_ldsm(const unsigned short* qkv, const unsigned short* merged,
                                                                    const unsigned short* dmerged, const float* lse, float* delta, float* dqkv,
                                                                    int dqkv_bf16, int n, int heads, float scale) {
    attention_backward_query<64, true, false>(qkv, merged, dmerged, lse, delta, dqkv, dqkv_bf16, n, heads, scale);
}
extern "C" __global__ void radar_attention_backward_key_value_hd16_ldsm(const unsigned short* qkv, const unsigned short* dmerged, const float* lse,
                                                                        const float* delta, float* dqkv, int dqkv_bf16, int n, int heads,
                                                                        float scale) {
    attention_backward_key_value<16, true, false>(qkv, dmerged, lse, delta, dqkv, dqkv_bf16, n, heads, scale);
}
extern "C" __global__ void radar_attention_backward_key_value_hd32_ldsm(const unsigned short* qkv, const unsigned short* dmerged, const float* lse,
                                                                        const float* delta, float* dqkv, int dqkv_bf16, int n, int heads,
                                                                        float scale) {
    attention_backward_key_value<32, true, false>(qkv, dmerged, lse, delta, dqkv, dqkv_bf16, n, heads, scale);
}
extern "C" __global__ void radar_attention_backward_key_value_hd64_ldsm(const unsigned short* qkv, const unsigned short* dmerged, const float* lse,
                                                                        const float* delta, float* dqkv, int dqkv_bf16, int n, int heads,
                                                                        float scale) {
    attention_backward_key_value<64, true, false>(qkv, dmerged, lse, delta, dqkv, dqkv_bf16, n, heads, scale);
}
// Blocks an SM the fast query kernel (head 64) asks ptxas for: 3 (168 registers a thread) fits
// without spilling up to sm_90; ptxas for sm_100 and sm_120 spills there, so 2.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 1000
#define ATTN_FAST_QUERY_BLOCKS 2
#else
#define ATTN_FAST_QUERY_BLOCKS 3
#endif
// The small-head fast key/value kernels likewise: ptxas for sm_120 spills at 3 blocks (head 32)
// and 4 (head 16), so one fewer there.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 1200
#define ATTN_FAST_KV32_BLOCKS 2
#define ATTN_FAST_KV16_BLOCKS 3
#else
#define ATTN_FAST_KV32_BLOCKS 3
#define ATTN_FAST_KV16_BLOCKS 4
#endif
// The fast build (RADAR_ATTENTION_KERNELS=fast; off by default until a GPU run has timed it): the
// ldmatrix loads, softmax in base 2 by MUFU.EX2, masks only in a partial step (none at all for the
// key/value kernel's queries: +inf log-sum-exps past N), bf16 packing by cvt, the tiles by
// cp.async behind the products (backward: a second tile of keys or queries). Blocks of 128 threads.
extern "C" __global__ void __launch_bounds__(128, 4) radar_attention_forward_hd16_fast(const unsigned short* qkv, unsigned short* merged, float* lse,
                                                                                   int n, int heads, float scale) {
    attention_forward<16, true, true>(qkv, merged, lse, n, heads, scale);
}
extern "C" __global__ void __launch_bounds__(128, 4) radar_attention_forward_hd32_fast(const unsigned short* qkv, unsigned short* merged, float* lse,
                                                                                   int n, int heads, float scale) {
    attention_forward<32, true, true>(qkv, merged, lse, n, heads, scale);
}
extern "C" __global__ void __launch_bounds__(128, 4) radar_attention_forward_hd64_fast(const unsigned short* qkv, unsigned short* merged, float* lse,
                                                                                   int n, int heads, float scale) {
    attention_forward<64, true, true>(qkv, merged, lse, n, heads, scale);
}
extern "C" __global__ void __launch_bounds__(128, 4) radar_attention_backward_query_hd16_fast(const unsigned short* qkv, const unsigned short* merged,
                                                                                          const unsigned short* dmerged, const float* lse, float* delta,
                                                                                          float* dqkv, int dqkv_bf16, int n, int heads,
                                                                                          float scale) {
    attention_backward_query<16, true, true>(qkv, merged, dmerged, lse, delta, dqkv, dqkv_bf16, n, heads, scale);
}
extern "C" __global__ void __launch_bounds__(128, 3) radar_attention_backward_query_hd32_fast(const unsigned short* qkv, const unsigned short* merged,
                                                                                          const unsigned short* dmerged, const float* lse, float* delta,
                                                                                          float* dqkv, int dqkv_bf16, int n, int heads,
                                                                                          float scale) {
    attention_backward_query<32, true, true>(qkv, merged, dmerged, lse, delta, dqkv, dqkv_bf16, n, heads, scale);
}
extern "C" __global__ void __launch_bounds__(128, ATTN_FAST_QUERY_BLOCKS) radar_attention_backward_query_hd64_fast(const unsigned short* qkv, const unsigned short* merged,
                                                                                          const unsigned short* dmerged, const float* lse, float* delta,
                                                                                          float* dqkv, int dqkv_bf16, int n, int heads,
                                                                                          float scale) {
    attention_backward_query<64, true, true>(qkv, merged, dmerged, lse, delta, dqkv, dqkv_bf16, n, heads, scale);
}
extern "C" __global__ void __launch_bounds__(128, ATTN_FAST_KV16_BLOCKS) radar_attention_backward_key_value_hd16_fast(const unsigned short* qkv, const unsigned short* dmerged,
                                                                                              const float* lse, const float* delta, float* dqkv,
                                                                                              int dqkv_bf16, int n, int heads, float scale) {
    attention_backward_key_value<16, true, true>(qkv, dmerged, lse, delta, dqkv, dqkv_bf16, n, heads, scale);
}
extern "C" __global__ void __launch_bounds__(128, ATTN_FAST_KV32_BLOCKS) radar_attention_backward_key_value_hd32_fast(const unsigned short* qkv, const unsigned short* dmerged,
                                                                                              const float* lse, const float* delta, float* dqkv,
                                                                                              int dqkv_bf16, int n, int heads, float scale) {
    attention_backward_key_value<32, true, true>(qkv, dmerged, lse, delta, dqkv, dqkv_bf16, n, heads, scale);
}
extern "C" __global__ void __launch_bounds__(128) radar_attention_backward_key_value_hd64_fast(const unsigned short* qkv, const unsigned short* dmerged,
                                                                                              const float* lse, const float* delta, float* dqkv,
                                                                                              int dqkv_bf16, int n, int heads, float scale) {
    attention_backward_key_value<64, true, true>(qkv, dmerged, lse, delta, dqkv, dqkv_bf16, n, heads, scale);
}
