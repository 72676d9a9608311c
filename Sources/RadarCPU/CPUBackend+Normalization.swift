import CTensorKernels
import RadarEngine
extension CPUBackend {
    /// Each row's sums in eight lanes (CTensorKernels' LayerNorm: the same bits for any thread
    /// count and with or without AVX2).
    public func layerNormForward(_ x: Tensor, gamma: Tensor, beta: Tensor, eps: Float,
                                 _ y: Tensor, mean: Tensor, rstd: Tensor) {
        let cols = gamma.count
        let rows = x.count / cols
        let avx2: Int32 = CPUBackend.vectorKernels ? 1 : 0
        guard y.dtype == .bfloat16 else {
            parallel(rows, grain: max(1, CPUBackend.grain / cols)) { rr in
                let o = rr.lowerBound * cols
                radar_layernorm_forward_rows(x.base + o, gamma.base, beta.base, eps, y.base + o, mean.base + rr.lowerBound,
                                             rstd.base + rr.lowerBound, rr.count, cols, avx2)
            }
            return
        }
        // bf16 y: each row into this thread's fp32 scratch (slot 0, a product's: none runs here),
        // then rounded (the bits of converting an fp32 y).
        let bits = UnsafeMutableRawPointer(y.base).assumingMemoryBound(to: UInt16.self)
        parallel(rows, grain: max(1, CPUBackend.grain / cols)) { rr in
            let row = ThreadScratch.floats(cols, slot: 0)
            for r in rr {
                radar_layernorm_forward_rows(x.base + r * cols, gamma.base, beta.base, eps, row, mean.base + r, rstd.base + r, 1, cols, avx2)
                CPUBackend.packBFloat16(row, bits + r * cols, count: cols)
            }
        }
    }

    public func layerNormBackward(_ dy: Tensor, x: Tensor, gamma: Tensor, mean: Tensor, rstd: Tensor,
                                  _ dx: Tensor, dGamma: Tensor, dBeta: Tensor, residual: Tensor?, dxCopy: Tensor?) {
        let cols = gamma.count
        let rows = x.count / cols
        let avx2: Int32 = CPUBackend.vectorKernels ? 1 : 0
        precondition(dxCopy.map { $0.dtype == .bfloat16 && $0.count == dx.count } ?? true, "layerNormBackward: dxCopy bf16, of dx's count")
        precondition(residual.map { $0.count == dx.count && $0.base != dx.base } ?? true, "layerNormBackward: residual of dx's count, not dx")
        parallel(rows, grain: max(1, CPUBackend.grain / cols)) { rr in
            let o = rr.lowerBound * cols, count = rr.count * cols
            radar_layernorm_backward_rows(dy.base + o, x.base + o, gamma.base, mean.base + rr.lowerBound, rstd.base + rr.lowerBound,
                                          dx.base + o, rr.count, cols, avx2)
            if let residual {
                let d = dx.base + o, s = residual.base + o
                for j in 0..<count { d[j] = d[j] + s[j] }
            }
            if let dxCopy {
                CPUBackend.packBFloat16(dx.base + o, UnsafeMutableRawPointer(dxCopy.base).assumingMemoryBound(to: UInt16.self) + o, count: count)
            }
        }
        // Parameter gradients: 64-column chunks, each column's rows summed in order.
        let chunk = 64
        parallel((cols + chunk - 1) / chunk, grain: 1) { cr in
            for c in cr {
                radar_layernorm_parameter_gradients(dy.base, x.base, mean.base, rstd.base, rows, cols, c * chunk,
                                                    min(cols, (c + 1) * chunk), dGamma.base, dBeta.base, avx2)
            }
        }
    }

    public func channelMoments(_ x: Tensor, mean: Tensor, variance: Tensor) {
        let b = x.shape[0], c = x.shape[1], hw = x.shape[2] * x.shape[3]
        let n = Double(b * hw)
        parallel(c, grain: 1) { cr in
            for ch in cr {
                var s: Double = 0
                for i in 0..<b {
                    let p = x.base + (i * c + ch) * hw
                    for j in 0..<hw { s += Double(p[j]) }
                }
                let m = s / n
                var v: Double = 0
                for i in 0..<b {
                    let p = x.base + (i * c + ch) * hw
                    for j in 0..<hw { let d = Double(p[j]) - m; v += d * d }
                }
                mean.base[ch] = Float(m)
                variance.base[ch] = Float(v / n)
            }
        }
    }

    public func channelNormalize(_ x: Tensor, mean: Tensor, invStd: Tensor, gamma: Tensor, beta: Tensor, _ y: Tensor) {
        let b = x.shape[0], c = x.shape[1], hw = x.shape[2] * x.shape[3]
        parallel(b * c, grain: max(1, CPUBackend.grain / max(hw, 1))) { pr in
            for plane in pr {
                let ch = plane % c
                let a = invStd.base[ch] * gamma.base[ch], m = mean.base[ch], bb = beta.base[ch]
                let xi = x.base + plane * hw, yi = y.base + plane * hw
                for j in 0..<hw { yi[j] = (xi[j] - m) * a + bb }
            }
        }
    }

    public func channelGradientSums(_ dy: Tensor, x: Tensor, mean: Tensor, invStd: Tensor,
                                    sumDy: Tensor, sumDyXhat: Tensor) {
        let b = x.shape[0], c = x.shape[1], hw = x.shape[2] * x.shape[3]
        parallel(c, grain: 1) { cr in
            for ch in cr {
                var s: Double = 0, sx: Double = 0
                let m = mean.base[ch], inv = invStd.base[ch]
                for i in 0..<b {
                    let d = dy.base + (i * c + ch) * hw, xi = x.base + (i * c + ch) * hw
                    for j in 0..<hw {
                        s += Double(d[j])
                        sx += Double(d[j] * ((xi[j] - m) * inv))
                    }
                }
                sumDy.base[ch] = Float(s)
                sumDyXhat.base[ch] = Float(sx)
            }
        }
    }

    public func batchNormInputGradient(_ dy: Tensor, x: Tensor, mean: Tensor, invStd: Tensor, gamma: Tensor,
                                       sumDy: Tensor, sumDyXhat: Tensor, count: Int, _ dx: Tensor) {
        let b = x.shape[0], c = x.shape[1], hw = x.shape[2] * x.shape[3]
        parallel(b * c, grain: max(1, CPUBackend.grain / max(hw, 1))) { pr in
            for plane in pr {
                let ch = plane % c
                let m = mean.base[ch], inv = invStd.base[ch], g = gamma.base[ch] * inv
                let d = dy.base + plane * hw, xi = x.base + plane * hw, o = dx.base + plane * hw
                if count == 0 {
                    for j in 0..<hw { o[j] = d[j] * g }
                } else {
                    let mDy = sumDy.base[ch] / Float(count), mDyX = sumDyXhat.base[ch] / Float(count)
                    for j in 0..<hw { o[j] = g * (d[j] - mDy - (xi[j] - m) * inv * mDyX) }
                }
            }
        }
    }

    public func accumulateChannelSums(_ x: Tensor, into dst: Tensor) {
        let b = x.shape[0], c = x.shape[1], hw = x.count / max(b * c, 1)
        parallel(c, grain: 1) { cr in
            for ch in cr {
                // In double, as the batch statistics are (and as the CUDA backend sums planes).
                var s: Double = 0
                for i in 0..<b {
                    let p = x.base + (i * c + ch) * hw
                    for j in 0..<hw { s += Double(p[j]) }
                }
                dst.base[ch] += Float(s)
            }
        }
    }

    public func batchNormUpdateStatistics(mean: Tensor, variance: Tensor, count: Int, eps: Float, momentum: Float,
                                          invStd: Tensor, runningMean: Tensor, runningVar: Tensor) {
        let unbias = count > 1 ? Float(count) / Float(count - 1) : 1
        for c in 0..<mean.count {
            invStd.base[c] = 1 / (variance.base[c] + eps).squareRoot()
            runningMean.base[c] = (1 - momentum) * runningMean.base[c] + momentum * mean.base[c]
            runningVar.base[c] = (1 - momentum) * runningVar.base[c] + momentum * variance.base[c] * unbias
        }
    }

    public func inverseStandardDeviation(_ variance: Tensor, eps: Float, _ invStd: Tensor) {
        for c in 0..<variance.count { invStd.base[c] = 1 / (variance.base[c] + eps).squareRoot() }
    }

    public func batchNormLocalSums(mean: Tensor, variance: Tensor, count: Int, into sums: Tensor) {
        let c = mean.count, n = Float(count)
        for i in 0..<c {
            sums.base[i] = mean.base[i] * n
            sums.base[c + i] = (variance.base[i] + mean.base[i] * mean.base[i]) * n
        }
        sums.base[2 * c] = n
    }

    public func batchNormGlobalMoments(_ sums: Tensor, channels c: Int, mean: Tensor, variance: Tensor) {
        let n = sums.base[2 * c]
        for i in 0..<c {
            let m = sums.base[i] / n
            mean.base[i] = m
            variance.base[i] = max(sums.base[c + i] / n - m * m, 0)
        }
    }
}
