import RadarEngine
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

extension CPUBackend {
    public func smoothLabels(_ labels: Tensor, smoothing: Float, _ target: Tensor) {
        for i in 0..<labels.count { target.base[i] = labels.base[i] * (1 - smoothing) + smoothing / 2 }
    }

    public func binaryCrossEntropyWithLogits(_ logits: Tensor, targets: Tensor, scale: Float, dLogits: Tensor,
                                             loss: Tensor, weight: Float) {
        let n = logits.count
        var total: Double = 0
        for i in 0..<n {
            let x = logits.base[i], t = targets.base[i]
            total += Double(max(x, 0) - x * t + log1pf(expf(-abs(x))))
            dLogits.base[i] = scale * (1 / (1 + expf(-x)) - t) / Float(n)
        }
        loss.base[0] += Float(Double(weight) * (total / Double(n)))
    }

    public func cosineMarginPenalty(_ a: Tensor, _ b: Tensor, margin: Float, scale: Float, da: Tensor, db: Tensor,
                                    loss: Tensor, weight: Float) {
        let e = a.shape.last, n = a.count / e
        fill(da, 0)
        fill(db, 0)
        // Norms first: the penalty applies only when every evidence vector is non-degenerate.
        for i in 0..<n {
            var sa: Float = 0, sb: Float = 0
            for j in 0..<e { sa += a.base[i * e + j] * a.base[i * e + j]; sb += b.base[i * e + j] * b.base[i * e + j] }
            if sa.squareRoot() <= 1e-6 || sb.squareRoot() <= 1e-6 { return }
        }
        var total: Double = 0
        for i in 0..<n {
            let pa = a.base + i * e, pb = b.base + i * e
            var sa: Float = 0, sb: Float = 0, dot: Float = 0
            for j in 0..<e { sa += pa[j] * pa[j]; sb += pb[j] * pb[j]; dot += pa[j] * pb[j] }
            let na = sa.squareRoot(), nb = sb.squareRoot()
            let ua = na + 1e-8, ub = nb + 1e-8
            let cos = dot / (ua * ub)
            let excess = abs(cos) - margin
            guard excess > 0 else { continue }
            total += Double(excess)
            // d|cos| = sign(cos) dcos; cos = (a.b) / ((|a| + eps)(|b| + eps)).
            let g = scale * (cos > 0 ? 1 : -1) / Float(n)
            for j in 0..<e {
                let dA = pb[j] / (ua * ub) - dot / (ua * ua * ub) * pa[j] / na
                let dB = pa[j] / (ua * ub) - dot / (ua * ub * ub) * pb[j] / nb
                da.base[i * e + j] = g * dA
                db.base[i * e + j] = g * dB
            }
        }
        loss.base[0] += Float(Double(weight) * (total / Double(n)))
    }

    public func axpy(_ a: Float, _ x: Tensor, _ y: Tensor) {
        precondition(x.count == y.count, "axpy of \(x.shape) into \(y.shape)")
        for i in 0..<x.count { y.base[i] += a * x.base[i] }
    }

    public func flagNonFinite(_ x: Tensor, into flag: Tensor) {
        for i in 0..<x.count where !x.base[i].isFinite { flag.base[0] = 1 }
    }

    public func gatedFusionForward(gate: Tensor, reasoning: Tensor, external: Tensor, final: Tensor, prob: Tensor,
                                   alphaOut: Tensor) {
        let n = final.count  // plain comparisons: an array literal here would allocate in the step
        precondition(reasoning.count == n && external.count == n && prob.count == n && alphaOut.count == n,
                     "gated fusion: reasoning, external, prob and alpha must have final's \(final.count) elements")
        let alpha = 1 / (1 + expf(-gate.base[0]))
        for i in 0..<final.count {
            let f = alpha * reasoning.base[i] + (1 - alpha) * external.base[i]
            final.base[i] = f
            prob.base[i] = 1 / (1 + expf(-f))
            alphaOut.base[i] = alpha
        }
    }

    public func gatedFusionBackward(dFinal: Tensor, gate: Tensor, reasoning: Tensor, external: Tensor,
                                    dReasoning: Tensor, dExternal: Tensor, dGate: Tensor) {
        let n = dFinal.count
        precondition(reasoning.count == n && external.count == n && dReasoning.count == n && dExternal.count == n,
                     "gated fusion backward: every tensor must have dFinal's \(dFinal.count) elements")
        let alpha = 1 / (1 + expf(-gate.base[0]))
        var g: Float = 0
        for i in 0..<dFinal.count {
            let d = dFinal.base[i]
            dReasoning.base[i] = alpha * d
            dExternal.base[i] = (1 - alpha) * d
            g += d * (reasoning.base[i] - external.base[i])
        }
        dGate.base[0] += g * alpha * (1 - alpha)
    }

    public func meanAbsSigmoidDifference(_ a: Tensor, _ b: Tensor, into out: Tensor) {
        var s: Float = 0
        for i in 0..<a.count { s += abs(1 / (1 + expf(-a.base[i])) - 1 / (1 + expf(-b.base[i]))) }
        out.base[0] = s / Float(max(a.count, 1))
    }
}
