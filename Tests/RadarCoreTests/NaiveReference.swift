import Foundation

/// Plain loops in Double: the independent references the CPU kernels are checked against.
enum Naive {
    static func gemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float, a: [Float], lda: Int,
                     b: [Float], ldb: Int, beta: Float, c: [Float], ldc: Int) -> [Float] {
        var out = c
        for i in 0..<m {
            for j in 0..<n {
                var s: Double = 0
                for p in 0..<k {
                    let av = transA ? a[p * lda + i] : a[i * lda + p]
                    let bv = transB ? b[j * ldb + p] : b[p * ldb + j]
                    s += Double(av) * Double(bv)
                }
                out[i * ldc + j] = Float(Double(alpha) * s + Double(beta) * Double(c[i * ldc + j]))
            }
        }
        return out
    }

    /// x (B, C, H, W), w (O, C, k, k), bias (O) -> (B, O, Ho, Wo), cross-correlation.
    static func conv2d(_ x: [Float], b: Int, c: Int, h: Int, w: Int, weight: [Float], bias: [Float], out o: Int,
                       kernel k: Int, stride s: Int, padding p: Int) -> [Float] {
        let ho = (h + 2 * p - k) / s + 1, wo = (w + 2 * p - k) / s + 1
        var y = [Float](repeating: 0, count: b * o * ho * wo)
        for n in 0..<b { for oc in 0..<o { for oy in 0..<ho { for ox in 0..<wo {
            var acc = Double(bias[oc])
            for ic in 0..<c { for ky in 0..<k { for kx in 0..<k {
                let iy = oy * s - p + ky, ix = ox * s - p + kx
                if iy >= 0 && iy < h && ix >= 0 && ix < w {
                    acc += Double(x[((n * c + ic) * h + iy) * w + ix]) * Double(weight[((oc * c + ic) * k + ky) * k + kx])
                }
            } } }
            y[((n * o + oc) * ho + oy) * wo + ox] = Float(acc)
        } } } }
        return y
    }

    static func layerNorm(_ x: [Float], cols: Int, gamma: [Float], beta: [Float], eps: Double) -> [Float] {
        var y = x
        for r in 0..<(x.count / cols) {
            let row = x[(r * cols)..<((r + 1) * cols)].map(Double.init)
            let m = row.reduce(0, +) / Double(cols)
            let v = row.map { ($0 - m) * ($0 - m) }.reduce(0, +) / Double(cols)
            for j in 0..<cols { y[r * cols + j] = Float((row[j] - m) / (v + eps).squareRoot() * Double(gamma[j]) + Double(beta[j])) }
        }
        return y
    }

    static func softmax(_ x: [Float], cols: Int) -> [Float] {
        var y = x
        for r in 0..<(x.count / cols) {
            let row = x[(r * cols)..<((r + 1) * cols)].map(Double.init)
            let m = row.max()!
            let e = row.map { Foundation.exp($0 - m) }
            let s = e.reduce(0, +)
            for j in 0..<cols { y[r * cols + j] = Float(e[j] / s) }
        }
        return y
    }

    static func sigmoid(_ x: Double) -> Double { 1 / (1 + Foundation.exp(-x)) }

    /// Bilinear resize with PyTorch's align_corners=False source index rule.
    static func resize(_ x: [Float], planes: Int, h: Int, w: Int, oh: Int, ow: Int) -> [Float] {
        var y = [Float](repeating: 0, count: planes * oh * ow)
        func src(_ o: Int, _ inSize: Int, _ outSize: Int) -> (Int, Int, Double) {
            let f = max((Double(o) + 0.5) * Double(inSize) / Double(outSize) - 0.5, 0)
            let i0 = min(Int(f), inSize - 1)
            return (i0, min(i0 + 1, inSize - 1), f - Double(i0))
        }
        for p in 0..<planes { for oy in 0..<oh { for ox in 0..<ow {
            let (y0, y1, ly) = src(oy, h, oh), (x0, x1, lx) = src(ox, w, ow)
            func at(_ r: Int, _ c: Int) -> Double { Double(x[(p * h + r) * w + c]) }
            let v = (1 - ly) * ((1 - lx) * at(y0, x0) + lx * at(y0, x1)) + ly * ((1 - lx) * at(y1, x0) + lx * at(y1, x1))
            y[(p * oh + oy) * ow + ox] = Float(v)
        } } }
        return y
    }

    /// |DFT2| with fftshift, by the O(F^4) definition.
    static func dftMagnitudeShifted(_ x: [Float], f: Int) -> [Float] {
        var y = [Float](repeating: 0, count: f * f)
        for u in 0..<f { for v in 0..<f {
            var re: Double = 0, im: Double = 0
            for r in 0..<f { for c in 0..<f {
                let ang = -2 * Double.pi * (Double(u * r) / Double(f) + Double(v * c) / Double(f))
                re += Double(x[r * f + c]) * Foundation.cos(ang)
                im += Double(x[r * f + c]) * Foundation.sin(ang)
            } }
            y[((u + f / 2) % f) * f + (v + f / 2) % f] = Float((re * re + im * im).squareRoot())
        } }
        return y
    }
}
