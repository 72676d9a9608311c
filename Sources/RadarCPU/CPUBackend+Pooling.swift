import RadarEngine
extension CPUBackend {
    public func globalAvgPoolForward(_ x: Tensor, _ y: Tensor) {
        let planes = x.shape[0] * x.shape[1], hw = x.shape[2] * x.shape[3]
        parallel(planes, grain: max(1, CPUBackend.grain / max(hw, 1))) { pr in
            for p in pr {
                var s: Float = 0
                let xi = x.base + p * hw
                for j in 0..<hw { s += xi[j] }
                y.base[p] = s / Float(hw)
            }
        }
    }

    public func globalAvgPoolBackward(_ dy: Tensor, _ dx: Tensor) {
        let planes = dx.shape[0] * dx.shape[1], hw = dx.shape[2] * dx.shape[3]
        parallel(planes, grain: max(1, CPUBackend.grain / max(hw, 1))) { pr in
            for p in pr {
                let g = dy.base[p] / Float(hw)
                let o = dx.base + p * hw
                for j in 0..<hw { o[j] = g }
            }
        }
    }

    public func tokenMeanMaxForward(_ x: Tensor, mean: Tensor, max: Tensor, argmax: Tensor) {
        let b = x.shape[0], n = x.shape[1], d = x.shape[2]
        parallel(b, grain: 1) { br in
            for i in br {
                let xi = x.base + i * n * d
                for j in 0..<d {
                    var s: Float = 0, m = -Float.infinity, am = 0
                    for t in 0..<n {
                        let v = xi[t * d + j]
                        s += v
                        if v > m || (v.isNaN && !m.isNaN) { m = v; am = t }
                    }
                    mean.base[i * d + j] = s / Float(n)
                    max.base[i * d + j] = m
                    argmax.base[i * d + j] = Float(am)
                }
            }
        }
    }

    public func tokenMeanMaxBackward(dMean: Tensor, dMax: Tensor, argmax: Tensor, _ dx: Tensor) {
        let b = dx.shape[0], n = dx.shape[1], d = dx.shape[2]
        parallel(b, grain: 1) { br in
            for i in br {
                let o = dx.base + i * n * d
                for j in 0..<d {
                    let g = dMean.base[i * d + j] / Float(n)
                    for t in 0..<n { o[t * d + j] = g }
                    o[Int(argmax.base[i * d + j]) * d + j] += dMax.base[i * d + j]
                }
            }
        }
    }

    public func copyColumns(_ src: Tensor, srcCols: Int, into dst: Tensor, dstCols: Int, offset: Int) {
        let rows = src.count / srcCols
        parallel(rows, grain: max(1, CPUBackend.grain / srcCols)) { rr in
            for r in rr { (dst.base + r * dstCols + offset).update(from: src.base + r * srcCols, count: srcCols) }
        }
    }

    public func sliceColumns(_ src: Tensor, srcCols: Int, offset: Int, into dst: Tensor, dstCols: Int) {
        let rows = dst.count / dstCols
        parallel(rows, grain: max(1, CPUBackend.grain / dstCols)) { rr in
            for r in rr { (dst.base + r * dstCols).update(from: src.base + r * srcCols + offset, count: dstCols) }
        }
    }

    public func transposeLastTwo(_ x: Tensor, _ y: Tensor) {
        let b = x.shape[0], r = x.shape[1], c = x.shape[2]
        forEach(b) { i in
            let src = x.base + i * r * c, dst = y.base + i * r * c
            for a in 0..<r { for k in 0..<c { dst[k * r + a] = src[a * c + k] } }
        }
    }
}
