#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

extension CPUBackend {
    public func adamW(params: UnsafeMutablePointer<Float>, grads: UnsafePointer<Float>, expAvg: UnsafeMutablePointer<Float>,
                      expAvgSq: UnsafeMutablePointer<Float>, count: Int, lr: Float, beta1: Float, beta2: Float,
                      eps: Float, weightDecay: Float, step: Int) {
        // Same operation order as torch's single-tensor AdamW: decay, moments, bias corrections.
        // The scalars are formed in double precision and rounded once, as Python floats are.
        let bc1 = 1 - pow(Double(beta1), Double(step))
        let bc2 = 1 - pow(Double(beta2), Double(step))
        let stepSize = Float(Double(lr) / bc1)
        let bc2Sqrt = Float(bc2.squareRoot())
        let decay = Float(1 - Double(lr) * Double(weightDecay))
        parallel(count) { r in
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

    public func sumOfSquares(_ x: UnsafePointer<Float>, count: Int) -> Double {
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

    public func scale(_ x: UnsafeMutablePointer<Float>, count: Int, by s: Float) {
        parallel(count) { r in for i in r { x[i] *= s } }
    }
}
