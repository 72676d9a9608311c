import CTensorKernels
import RadarEngine
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

extension CPUBackend {
    public func fill(_ t: Tensor, _ value: Float) {
        parallel(t.count) { r in for i in r { t.base[i] = value } }
    }

    public func copy(_ src: Tensor, into dst: Tensor) {
        precondition(src.count == dst.count, "copy \(src.shape) -> \(dst.shape)")
        parallel(src.count) { r in (dst.base + r.lowerBound).update(from: src.base + r.lowerBound, count: r.count) }
    }

    public func add(_ a: Tensor, _ b: Tensor, into out: Tensor) {
        precondition(a.count == b.count && a.count == out.count, "add \(a.shape) + \(b.shape) -> \(out.shape)")
        parallel(a.count) { r in for i in r { out.base[i] = a.base[i] + b.base[i] } }
    }

    public func addRowBias(_ bias: Tensor, into out: Tensor) {
        let cols = bias.count
        let rows = out.count / max(cols, 1)
        parallel(rows, grain: max(1, CPUBackend.grain / max(cols, 1))) { rr in
            for r in rr {
                let o = out.base + r * cols
                for c in 0..<cols { o[c] += bias.base[c] }
            }
        }
    }

    public func addChannelBias(_ bias: Tensor, into out: Tensor) {
        let c = bias.count, hw = out.count / max(out.shape[0] * c, 1)
        parallel(out.shape[0] * c, grain: max(1, CPUBackend.grain / max(hw, 1))) { pr in
            for plane in pr {
                let v = bias.base[plane % c]
                let o = out.base + plane * hw
                for j in 0..<hw { o[j] += v }
            }
        }
    }

    public func accumulateColumnSums(_ src: Tensor, into dst: Tensor) {
        let cols = dst.count
        let rows = src.count / max(cols, 1)
        // Each thread takes one band of columns and walks the rows in order, each row's band
        // contiguous, into accumulators in its scratch buffer. Every column's sum runs over the
        // rows in order whatever the bands, so the bands may follow the thread count without
        // changing a bit. (Fixed 256-column chunks had read a 768-wide gradient 1 KB per row
        // at a time, three passes: 2.2 GB/s against 4.7 for whole rows, cold, on Zen 3.)
        let band = ((cols + threads - 1) / max(threads, 1) + 15) / 16 * 16
        parallel(cols, grain: max(band, 1)) { cr in
            let n = cr.count, acc = ThreadScratch.floats(n)
            for j in 0..<n { acc[j] = 0 }
            if src.dtype == .bfloat16 {  // a bf16 gradient (under bf16 activations), summed in fp32
                let s16 = UnsafeRawPointer(src.base).assumingMemoryBound(to: UInt16.self)
                for r in 0..<rows {
                    let row = s16 + r * cols + cr.lowerBound
                    for j in 0..<n { acc[j] += BFloat16.float(row[j]) }
                }
            } else {
                for r in 0..<rows {
                    let row = src.base + r * cols + cr.lowerBound
                    for j in 0..<n { acc[j] += row[j] }
                }
            }
            for j in 0..<n { dst.base[cr.lowerBound + j] += acc[j] }
        }
    }

    public func reluForward(_ x: Tensor, _ y: Tensor) {
        parallel(x.count) { r in for i in r { y.base[i] = x.base[i] > 0 ? x.base[i] : 0 } }
    }

    public func reluBackward(_ dy: Tensor, y: Tensor, _ dx: Tensor) {
        parallel(dy.count) { r in for i in r { dx.base[i] = y.base[i] > 0 ? dy.base[i] : 0 } }
    }

    public func geluForward(_ x: Tensor, _ y: Tensor, cdf: Tensor?) {
        guard x.dtype == .bfloat16 || y.dtype == .bfloat16 else {
            parallel(x.count) { r in geluForward(x.base + r.lowerBound, y.base + r.lowerBound, cdf.map { $0.base + r.lowerBound }, r.count) }
            return
        }
        // bf16 x or y: through fp32 chunks on the stack (widening is exact; y rounded once).
        parallel(x.count) { r in
            CPUBackend.inFloatChunks(r, x, y) { xs, ys, range in
                geluForward(xs, ys, cdf.map { $0.base + range.lowerBound }, range.count)
            }
        }
    }

    private func geluForward(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ cdf: UnsafeMutablePointer<Float>?, _ n: Int) {
        if CPUBackend.vectorKernels {
            radar_gelu_forward_avx2(x, y, cdf, n)
            return
        }
        for i in 0..<n {
            let v = x[i], phi = fastNormalCDF(v, fused: true)
            cdf?[i] = phi
            y[i] = v * phi
        }
    }

    /// `body` over `r` in chunks of up to 1,024 elements: x's as fp32 (itself, or a widened copy)
    /// and y's fp32 destination (itself, or a buffer packed into bf16 y when body returns). The
    /// buffers are this thread's scratch slot 0 (a product's; no product runs inside an
    /// elementwise kernel): allocated once per thread, not per call.
    static func inFloatChunks(_ r: Range<Int>, _ x: Tensor, _ y: Tensor?,
                              _ body: (UnsafePointer<Float>, UnsafeMutablePointer<Float>, Range<Int>) -> Void) {
        let chunk = 1024
        let xs = ThreadScratch.floats(2 * chunk, slot: 0), ys = xs + chunk
        var i = r.lowerBound
        while i < r.upperBound {
            let range = i..<min(r.upperBound, i + chunk), n = range.count
            let xp: UnsafePointer<Float>
            if x.dtype == .bfloat16 {
                BFloat16.unpack(UnsafeRawPointer(x.base).assumingMemoryBound(to: UInt16.self) + i, xs, count: n)
                xp = UnsafePointer(xs)
            } else {
                xp = UnsafePointer(x.base + i)
            }
            if let y, y.dtype == .float32 {
                body(xp, y.base + i, range)
            } else {
                body(xp, ys, range)
                if let y { CPUBackend.packBFloat16(ys, UnsafeMutableRawPointer(y.base).assumingMemoryBound(to: UInt16.self) + i, count: n) }
            }
            i = range.upperBound
        }
    }

    public func geluBackward(_ dy: Tensor, x: Tensor, cdf: Tensor?, _ dx: Tensor) {
        parallel(dy.count) { r in
            guard x.dtype == .bfloat16 || dy.dtype == .bfloat16 || dx.dtype == .bfloat16 else {
                geluBackward(dy.base + r.lowerBound, x.base + r.lowerBound, cdf.map { UnsafePointer($0.base + r.lowerBound) }, dx.base + r.lowerBound,
                             r.count)
                return
            }
            // bf16 dy, x or dx: through fp32 chunks in this thread's scratch slot 0 (widening is
            // exact; dx rounded once).
            let chunk = 1024, buffer = ThreadScratch.floats(3 * chunk, slot: 0)
            var i = r.lowerBound
            while i < r.upperBound {
                let n = min(r.upperBound - i, chunk)
                let xs = CPUBackend.floats(x, from: i, count: n, into: buffer), ds = CPUBackend.floats(dy, from: i, count: n, into: buffer + chunk)
                let out = dx.dtype == .float32 ? dx.base + i : buffer + 2 * chunk
                geluBackward(ds, xs, cdf.map { UnsafePointer($0.base + i) }, out, n)
                if dx.dtype == .bfloat16 { CPUBackend.packBFloat16(out, UnsafeMutableRawPointer(dx.base).assumingMemoryBound(to: UInt16.self) + i, count: n) }
                i += n
            }
        }
    }

    /// `count` elements of `t` from element `start` as fp32: `t`'s own memory, or (bf16) widened
    /// into `buffer`.
    static func floats(_ t: Tensor, from start: Int, count: Int, into buffer: UnsafeMutablePointer<Float>) -> UnsafePointer<Float> {
        guard t.dtype == .bfloat16 else { return UnsafePointer(t.base + start) }
        BFloat16.unpack(UnsafeRawPointer(t.base).assumingMemoryBound(to: UInt16.self) + start, buffer, count: count)
        return UnsafePointer(buffer)
    }

    private func geluBackward(_ dy: UnsafePointer<Float>, _ x: UnsafePointer<Float>, _ cdf: UnsafePointer<Float>?, _ dx: UnsafeMutablePointer<Float>,
                              _ n: Int) {
        if CPUBackend.vectorKernels {
            radar_gelu_backward_avx2(dy, x, cdf, dx, n)
            return
        }
        for i in 0..<n {
            let v = x[i]
            let pdf = fastExp(-0.5 * v * v, fused: true) * 0.398_942_28
            dx[i] = dy[i] * ((cdf?[i] ?? fastNormalCDF(v, fused: true)) + v * pdf)
        }
    }

    /// Eight lanes combined as ((0+1)+(2+3))+((4+5)+(6+7)): softmax's sums, in the AVX2 kernels'
    /// order (a row's sum then depends on its length only, and the kernels need no serial chain).
    @inline(__always) static func laneTotal(_ a: SIMD8<Float>) -> Float {
        ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]))
    }

    public func softmaxForward(_ x: Tensor, _ y: Tensor, cols: Int) {
        let rows = x.count / cols
        parallel(rows, grain: max(1, CPUBackend.grain / cols)) { rr in
            if CPUBackend.vectorKernels {
                radar_softmax_forward_avx2(x.base + rr.lowerBound * cols, y.base + rr.lowerBound * cols, rr.count, cols)
                return
            }
            for row in rr {
                let xi = x.base + row * cols, yi = y.base + row * cols
                var m = -Float.infinity
                for j in 0..<cols { m = max(m, xi[j]) }
                for j in 0..<cols { yi[j] = fastExp(xi[j] - m) }
                // The sum in eight lanes (element j in lane j % 8), as the AVX2 kernel adds it.
                var lanes = SIMD8<Float>(repeating: 0)
                for j in 0..<cols { lanes[j & 7] += yi[j] }
                let inv = 1 / CPUBackend.laneTotal(lanes)
                for j in 0..<cols { yi[j] *= inv }
            }
        }
    }

    public func softmaxBackward(_ dy: Tensor, y: Tensor, _ dx: Tensor, cols: Int) {
        let rows = y.count / cols
        parallel(rows, grain: max(1, CPUBackend.grain / cols)) { rr in
            if CPUBackend.vectorKernels {
                let o = rr.lowerBound * cols
                radar_softmax_backward_avx2(dy.base + o, y.base + o, dx.base + o, rr.count, cols)
                return
            }
            for row in rr {
                let d = dy.base + row * cols, yi = y.base + row * cols, o = dx.base + row * cols
                var lanes = SIMD8<Float>(repeating: 0)
                for j in 0..<cols { lanes[j & 7] += d[j] * yi[j] }
                let dot = CPUBackend.laneTotal(lanes)
                for j in 0..<cols { o[j] = yi[j] * (d[j] - dot) }
            }
        }
    }

    public func dropoutForward(_ x: Tensor, _ y: Tensor, p: Float, stream: RandomStream) {
        let scale = 1 / (1 - p)
        parallel(x.count) { r in
            for i in r { y.base[i] = stream.uniform(UInt64(i)) >= p ? x.base[i] * scale : 0 }
        }
    }

    public func dropoutBackward(_ dy: Tensor, _ dx: Tensor, p: Float, stream: RandomStream) {
        let scale = 1 / (1 - p)
        parallel(dy.count) { r in
            for i in r { dx.base[i] = stream.uniform(UInt64(i)) >= p ? dy.base[i] * scale : 0 }
        }
    }
}
