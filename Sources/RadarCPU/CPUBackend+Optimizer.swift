import CTensorKernels
import RadarEngine
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

extension CPUBackend {
    public func adamW(params pt: Tensor, grads gt: Tensor, expAvg mt: Tensor, expAvgSq vt: Tensor, lr: Float, beta1: Float,
                      beta2: Float, eps: Float, weightDecay: Float, step: Int, gate: Tensor) {
        guard gate.base[0] != 0 else { return }
        let params = pt.base, grads = gt.base, expAvg = mt.base, expAvgSq = vt.base, count = pt.count
        // Same operation order as torch's single-tensor AdamW: decay, moments, bias corrections.
        // The scalars are formed in double precision and rounded once, as Python floats are.
        let bc1 = 1 - pow(Double(beta1), Double(step))
        let bc2 = 1 - pow(Double(beta2), Double(step))
        let stepSize = Float(Double(lr) / bc1)
        let bc2Sqrt = Float(bc2.squareRoot())
        let decay = Float(1 - Double(lr) * Double(weightDecay))
        parallel(count) { r in
            if CPUBackend.vectorKernels {
                let o = r.lowerBound
                radar_adamw_avx2(params + o, grads + o, expAvg + o, expAvgSq + o, r.count, decay, 1 - beta1, beta2, 1 - beta2,
                                 bc2Sqrt, eps, -stepSize)
                return
            }
            for i in r {
                let g = grads[i]
                params[i] *= decay
                expAvg[i] += (g - expAvg[i]) * (1 - beta1)
                expAvgSq[i] = expAvgSq[i] * beta2 + (1 - beta2) * g * g
                let denom = expAvgSq[i].squareRoot() / bc2Sqrt + eps
                params[i] += -stepSize * (expAvg[i] / denom)
            }
        }
    }

    public func clipGradientNorm(_ grads: Tensor, ranges: [Range<Int>], maxNorm: Float, nonFinite: Tensor,
                                 norm: Tensor, gate: Tensor) {
        var s: Double = 0
        for i in 0..<ranges.count { let r = ranges[i]; s += sumOfSquares(grads.base + r.lowerBound, count: r.count) }
        let total = s.squareRoot()
        norm.base[0] = Float(total)
        let open = nonFinite.base[0] == 0 && total.isFinite
        gate.base[0] = open ? 1 : 0
        // clip_grad_norm_: the coefficient in double precision, as torch forms it from a Python float.
        let coef = Double(maxNorm) / (total + 1e-6)
        if open && coef < 1 {
            for i in 0..<ranges.count { let r = ranges[i]; scale(grads.base + r.lowerBound, count: r.count, by: Float(coef)) }
        }
    }

    /// Sum of squares of n values, accumulated in Double in a fixed order.
    func sumOfSquares(_ x: UnsafePointer<Float>, count: Int) -> Double {
        // Fixed chunks, partial sums combined in chunk order: independent of thread count.
        let chunk = 65_536
        let chunks = (count + chunk - 1) / chunk
        if chunks <= 1 {
            var s: Double = 0
            for i in 0..<count { s += Double(x[i]) * Double(x[i]) }
            return s
        }
        let partial = reductionScratch(count: chunks)
        forEach(chunks) { c in
            var s: Double = 0
            for i in (c * chunk)..<min(count, (c + 1) * chunk) { s += Double(x[i]) * Double(x[i]) }
            partial[c] = s
        }
        var total: Double = 0
        for c in 0..<chunks { total += partial[c] }
        return total
    }

    func scale(_ x: UnsafeMutablePointer<Float>, count: Int, by s: Float) {
        parallel(count) { r in for i in r { x[i] *= s } }
    }

    public func scale(_ x: Tensor, by s: Float) { scale(x.base, count: x.count, by: s) }
}
