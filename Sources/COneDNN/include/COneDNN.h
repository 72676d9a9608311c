#ifndef RADAR_CONEDNN_H
#define RADAR_CONEDNN_H
#include <stdint.h>

// oneDNN's matmul primitive for the CPU backend's bf16 products, loaded at run time (dlopen
// "libdnnl.so.2", oneDNN 2.x): nothing links against oneDNN, so every command runs where it is
// absent. Compiled against Debian's oneDNN 2 headers when present at build time; without them the
// loader reports that this build has no oneDNN support.

/// Loads oneDNN once (OMP_NUM_THREADS is set to 1 first: our worker pool does the threading) and
/// creates its CPU engine. Returns 1 on success; 0 with a one-line reason in `why`.
int radar_onednn_load(char *why, int why_len);

/// oneDNN's version as "major.minor.patch (cpu runtime)" after a successful load, else "".
const char *radar_onednn_version(void);

/// Row-major C = alpha op(A) op(B) + beta C, op(A) m x k, op(B) k x n, C m x n in fp32; A and B
/// are fp32 (bf16 = 0) or bfloat16 bit patterns (bf16 = 1) with leading dimensions lda and ldb
/// (transposed operands stored k x m and n x k). One thread; primitives are cached per calling
/// thread by shape. Returns 1 on success; 0 with a one-line reason in `why` (e.g. no
/// implementation of this data type on this CPU).
int radar_onednn_matmul(int bf16, int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                        const void *a, int64_t lda, const void *b, int64_t ldb, float beta, float *c, int64_t ldc,
                        char *why, int why_len);

/// The implementation oneDNN chose for the last successful matmul of any thread (e.g.
/// "brg:avx512_core_amx"), or "".
const char *radar_onednn_last_implementation(void);
#endif
