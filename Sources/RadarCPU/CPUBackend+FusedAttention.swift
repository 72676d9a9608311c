import Foundation
import RadarEngine

/// Fused attention on the CPU: the reference that device kernels are checked against (the kernel
/// check, the tests), row by row in plain loops with the device's roundings (bf16 probabilities
/// for the product with v, bf16 P and dScores as product operands; statistics in fp32). The
/// CPU backend itself trains with the BLAS products of `attentionForward` (faster here), so it
/// does not offer this path to the layers.
extension CPUBackend {
    public func fusedAttention(headDim: Int) -> Bool { false }
    /// Keys per step of the device's online softmax (kernels/attention.cuh's ATTN_TILE).
    static let fusedAttentionTile = 64

    public func fusedAttentionForward(qkv: Tensor, heads h: Int, scale: Float, merged: Tensor, logSumExp: Tensor) {
        precondition(qkv.dtype == .bfloat16 && merged.dtype == .bfloat16, "fused attention: bf16 qkv and merged expected")
        let b = qkv.shape[0], n = qkv.shape[1], d = qkv.shape[2] / 3, hd = d / h
        let x = UnsafeRawPointer(qkv.base).assumingMemoryBound(to: UInt16.self)
        let out = UnsafeMutableRawPointer(merged.base).assumingMemoryBound(to: UInt16.self)
        let lse = logSumExp.base
        forEach(b * h) { i in
            let bi = i / h, hi = i % h, image = bi * n * 3 * d
            var s = [Float](repeating: 0, count: n), acc = [Float](repeating: 0, count: hd)
            for r in 0..<n {
                let q = image + r * 3 * d + hi * hd
                for c in 0..<n {
                    let k = image + c * 3 * d + d + hi * hd
                    var dot: Float = 0
                    for e in 0..<hd { dot += BFloat16.float(x[q + e]) * BFloat16.float(x[k + e]) }
                    s[c] = dot * scale
                }
                // Online softmax over keys 64 at a time, as the device walks them: each step's
                // probabilities are rounded relative to the maximum so far.
                var mx = -Float.infinity, l: Float = 0
                for e in 0..<hd { acc[e] = 0 }
                for k0 in stride(from: 0, to: n, by: CPUBackend.fusedAttentionTile) {
                    let keys = k0..<min(n, k0 + CPUBackend.fusedAttentionTile)
                    let newMax = max(mx, s[keys].max()!), alpha = expf(mx - newMax)
                    mx = newMax
                    l *= alpha
                    for e in 0..<hd { acc[e] *= alpha }
                    for c in keys {
                        let p = expf(s[c] - mx), pr = BFloat16.round(p), v = image + c * 3 * d + 2 * d + hi * hd
                        l += p
                        for e in 0..<hd { acc[e] += pr * BFloat16.float(x[v + e]) }
                    }
                }
                for e in 0..<hd { out[(bi * n + r) * d + hi * hd + e] = BFloat16.bits(acc[e] / l) }
                lse[i * n + r] = mx + logf(l)
            }
        }
    }

    public func fusedAttentionBackward(dMerged: Tensor, qkv: Tensor, merged: Tensor, logSumExp: Tensor, heads h: Int, scale: Float,
                                       delta: Tensor, dQKV: Tensor) {
        precondition(qkv.dtype == .bfloat16 && merged.dtype == .bfloat16 && dMerged.dtype == .bfloat16,
                     "fused attention: bf16 qkv, merged and dMerged expected (dQKV fp32 or bf16)")
        let b = qkv.shape[0], n = qkv.shape[1], d = qkv.shape[2] / 3, hd = d / h
        let x = UnsafeRawPointer(qkv.base).assumingMemoryBound(to: UInt16.self)
        let o = UnsafeRawPointer(merged.base).assumingMemoryBound(to: UInt16.self)
        let dO = UnsafeRawPointer(dMerged.base).assumingMemoryBound(to: UInt16.self), lse = logSumExp.base, dl = delta.base
        forEach(b * h) { i in
            let bi = i / h, hi = i % h, image = bi * n * 3 * d
            // This head's dq, dk, dv (n rows of 3 hd) accumulated in fp32 in thread scratch, then
            // stored (a bf16 dQKV rounded once).
            let g = ThreadScratch.floats(n * 3 * hd, slot: 6)
            g.update(repeating: 0, count: n * 3 * hd)
            for r in 0..<n {
                let row = (bi * n + r) * d + hi * hd
                var sum: Float = 0
                for e in 0..<hd { sum += BFloat16.float(dO[row + e]) * BFloat16.float(o[row + e]) }
                dl[i * n + r] = sum
            }
            for r in 0..<n {
                let q = image + r * 3 * d + hi * hd, row = (bi * n + r) * d + hi * hd
                for c in 0..<n {
                    let k = image + c * 3 * d + d + hi * hd, v = k + d
                    var dot: Float = 0, dp: Float = 0
                    for e in 0..<hd {
                        dot += BFloat16.float(x[q + e]) * BFloat16.float(x[k + e])
                        dp += BFloat16.float(dO[row + e]) * BFloat16.float(x[v + e])
                    }
                    let p = expf(dot * scale - lse[i * n + r])
                    let ds = BFloat16.round(p * (dp - dl[i * n + r])), pr = BFloat16.round(p)
                    let gq = g + r * 3 * hd, gk = g + c * 3 * hd + hd, gv = gk + hd
                    for e in 0..<hd {
                        gq[e] += scale * ds * BFloat16.float(x[k + e])                   // dq
                        gk[e] += scale * ds * BFloat16.float(x[q + e])                   // dk
                        gv[e] += pr * BFloat16.float(dO[row + e])                        // dv
                    }
                }
            }
            for r in 0..<n {
                for part in 0..<3 {
                    let at = image + r * 3 * d + part * d + hi * hd, from = g + r * 3 * hd + part * hd
                    if dQKV.dtype == .bfloat16 {
                        CPUBackend.packBFloat16(from, UnsafeMutableRawPointer(dQKV.base).assumingMemoryBound(to: UInt16.self) + at, count: hd)
                    } else {
                        (dQKV.base + at).update(from: from, count: hd)
                    }
                }
            }
        }
    }
}
