import RadarEngine
extension CPUBackend {
    /// The output columns ox whose input column ox * stride - padding + kx lies inside a row of
    /// `width`: ox in lo..<hi (empty when none does).
    @inline(__always) static func validColumns(kx: Int, stride: Int, padding: Int, width: Int, outWidth: Int) -> Range<Int> {
        let need = padding - kx, limit = width - 1 + padding - kx
        let hi = limit < 0 ? 0 : min(outWidth, limit / stride + 1)
        let lo = need <= 0 ? 0 : (need + stride - 1) / stride
        return min(lo, hi)..<hi
    }

    // col row index = (c * k + ky) * k + kx, column index = oy * Wo + ox (PyTorch's weight order).
    // Each output row: zeros left and right of the columns inside the image, a copy between (a
    // contiguous one at stride 1), so the inner loops carry no bounds test.
    func im2col(_ x: UnsafePointer<Float>, channels: Int, height: Int, width: Int, kernel: Int,
                       stride: Int, padding: Int, _ col: UnsafeMutablePointer<Float>) {
        let ho = (height + 2 * padding - kernel) / stride + 1
        let wo = (width + 2 * padding - kernel) / stride + 1
        for c in 0..<channels {
            let plane = x + c * height * width
            for ky in 0..<kernel {
                for kx in 0..<kernel {
                    let row = col + ((c * kernel + ky) * kernel + kx) * ho * wo
                    let valid = CPUBackend.validColumns(kx: kx, stride: stride, padding: padding, width: width, outWidth: wo)
                    for oy in 0..<ho {
                        let iy = oy * stride - padding + ky
                        let dst = row + oy * wo
                        if iy < 0 || iy >= height {
                            dst.update(repeating: 0, count: wo)
                            continue
                        }
                        dst.update(repeating: 0, count: valid.lowerBound)
                        let src = plane + iy * width + kx - padding  // src[ox * stride] is input column ox * stride - padding + kx
                        if stride == 1 {
                            (dst + valid.lowerBound).update(from: src + valid.lowerBound, count: valid.count)
                        } else {
                            for ox in valid { dst[ox] = src[ox * stride] }
                        }
                        (dst + valid.upperBound).update(repeating: 0, count: wo - valid.upperBound)
                    }
                }
            }
        }
    }

    /// The adjoint of im2col: every column element added to the input position it was copied
    /// from, in the same (c, ky, kx, oy, ox) order as before (each input element receives at most
    /// one term per output row, so the order of the terms it receives is unchanged).
    func col2im(_ col: UnsafePointer<Float>, channels: Int, height: Int, width: Int, kernel: Int,
                       stride: Int, padding: Int, _ dx: UnsafeMutablePointer<Float>) {
        let ho = (height + 2 * padding - kernel) / stride + 1
        let wo = (width + 2 * padding - kernel) / stride + 1
        for c in 0..<channels {
            let plane = dx + c * height * width
            for ky in 0..<kernel {
                for kx in 0..<kernel {
                    let row = col + ((c * kernel + ky) * kernel + kx) * ho * wo
                    let valid = CPUBackend.validColumns(kx: kx, stride: stride, padding: padding, width: width, outWidth: wo)
                    for oy in 0..<ho {
                        let iy = oy * stride - padding + ky
                        if iy < 0 || iy >= height { continue }
                        let src = row + oy * wo
                        let dst = plane + iy * width + kx - padding
                        if stride == 1 {
                            for ox in valid { dst[ox] += src[ox] }
                        } else {
                            for ox in valid { dst[ox * stride] += src[ox] }
                        }
                    }
                }
            }
        }
    }

    /// Images per chunk: as many as `convolutionWorkspaceBudget` holds the columns, column
    /// gradients and weight gradients of (the CUDA backend's rule, fp32 columns), at least one.
    /// The workspace and scratch hold one chunk, not the batch; the results are the same bits
    /// for any chunking (each image is its own; the weight gradients are added in image order).
    public func convolutionChunk(_ g: ConvolutionGeometry) -> Int {
        g.imagesPerChunk(budget: convolutionWorkspaceBudget, columnBytes: 4)
    }
    public func convolutionWorkspaceCount(_ g: ConvolutionGeometry) -> Int { g.with(batch: convolutionChunk(g)).columnCount }

    public func convolutionBackwardScratchCount(_ g: ConvolutionGeometry, inputGradient: Bool) -> Int {
        g.with(batch: convolutionChunk(g)).backwardScratchCount(inputGradient: inputGradient)
    }

    /// im2col + one GEMM per image, the chunk's images spread over the pool.
    public func convolutionForward(_ x: Tensor, weight: Tensor, bias: Tensor?, _ g: ConvolutionGeometry,
                                   workspace: Tensor, _ y: Tensor) {
        let (cin, h, w, k, s, p, cout) = (g.inChannels, g.height, g.width, g.kernel, g.stride, g.padding, g.outChannels)
        let ckk = g.patchSize, hw = g.outHeight * g.outWidth, chunk = convolutionChunk(g)
        let wOperand = sharedWeight(weight, count: cout * ckk)
        for first in g.chunkStarts(chunk) {
            forEach(min(chunk, g.batch - first)) { j in
                let i = first + j, ci = workspace.base + j * ckk * hw
                im2col(x.base + i * cin * h * w, channels: cin, height: h, width: w, kernel: k, stride: s, padding: p, ci)
                serialGemm(transA: false, transB: false, m: cout, n: hw, k: ckk, alpha: 1,
                           a: wOperand, lda: ckk, b: .fp32(ci), ldb: hw, beta: 0, c: y.base + i * cout * hw, ldc: hw)
            }
        }
        if let bias { addChannelBias(bias, into: y) }
    }

    /// Per-image weight gradients added in image order (independent of which thread handled
    /// which image), each from the image's columns rebuilt just before; dx by the transposed
    /// product and col2im.
    public func convolutionBackward(_ dy: Tensor, x: Tensor, weight: Tensor, _ g: ConvolutionGeometry, workspace: Tensor,
                                    scratch: Tensor, dWeight: Tensor, dBias: Tensor?, dx: Tensor?) {
        let (cin, h, w, k, s, p, cout) = (g.inChannels, g.height, g.width, g.kernel, g.stride, g.padding, g.outChannels)
        let ckk = g.patchSize, hw = g.outHeight * g.outWidth, chunk = convolutionChunk(g)
        let parts = scratch.base, dcol = scratch.base + chunk * cout * ckk
        if let dx { fill(dx, 0) }
        let wOperand = dx == nil ? Operand(weight) : sharedWeight(weight, count: cout * ckk)
        for first in g.chunkStarts(chunk) {
            let count = min(chunk, g.batch - first)
            forEach(count) { j in
                let i = first + j, ci = workspace.base + j * ckk * hw
                im2col(x.base + i * cin * h * w, channels: cin, height: h, width: w, kernel: k, stride: s, padding: p, ci)
                // dy, read by both products: rounded once where the products are bf16.
                let (dyi, ldy) = dx == nil ? (.fp32(dy.base + i * cout * hw), hw) : sharedByTwo(.fp32(dy.base + i * cout * hw), rows: cout, cols: hw, ld: hw)
                serialGemm(transA: false, transB: true, m: cout, n: ckk, k: hw, alpha: 1,
                           a: dyi, lda: ldy, b: .fp32(ci), ldb: hw, beta: 0, c: parts + j * cout * ckk, ldc: ckk)
                if let dx {
                    let dci = dcol + j * ckk * hw
                    serialGemm(transA: true, transB: false, m: ckk, n: hw, k: cout, alpha: 1,
                               a: wOperand, lda: ckk, b: dyi, ldb: ldy, beta: 0, c: dci, ldc: hw)
                    col2im(dci, channels: cin, height: h, width: w, kernel: k, stride: s, padding: p, dx.base + i * cin * h * w)
                }
            }
            sumParts(parts, partCount: count, n: cout * ckk, accumulateInto: dWeight.base)
        }
        if let dBias { accumulateChannelSums(dy, into: dBias) }
    }

    // MARK: Multi-head attention: one serial GEMM per (image, head), spread over the pool.
    // qkv may be bf16 (`ExecutionContext.bf16Activations`): bf16 products read it as it is.

    public func attentionProbabilities(qkv: Tensor, heads h: Int, scale: Float, scores: Tensor, probs: Tensor) {
        let b = qkv.shape[0], n = qkv.shape[1], d = qkv.shape[2] / 3, hd = d / h
        let qkvOperand = Operand(qkv)
        forEach(b * h) { i in
            let bi = i / h, hi = i % h
            let q = qkvOperand.advanced(by: bi * n * 3 * d + hi * hd)
            serialGemm(transA: false, transB: true, m: n, n: n, k: hd, alpha: scale,
                       a: q, lda: 3 * d, b: q.advanced(by: d), ldb: 3 * d, beta: 0, c: scores.base + i * n * n, ldc: n)
        }
        softmaxForward(scores, probs, cols: n)
    }

    /// A serial product (beta 0) whose m x n result goes to `c` at element `offset` with leading
    /// dimension `ldc`: written there (fp32 c), or formed in this thread's scratch slot 6 and
    /// rounded in (bf16 c: the bits of converting the fp32 result).
    func serialProduct(into c: Tensor, offset: Int, ldc: Int, m: Int, n: Int, _ form: (UnsafeMutablePointer<Float>, Int) -> Void) {
        guard c.dtype == .bfloat16 else { return form(c.base + offset, ldc) }
        let scratch = ThreadScratch.floats(m * n, slot: 6), c16 = UnsafeMutableRawPointer(c.base).assumingMemoryBound(to: UInt16.self)
        form(scratch, n)
        for r in 0..<m { CPUBackend.packBFloat16(scratch + r * n, c16 + offset + r * ldc, count: n) }
    }

    public func attentionForward(qkv: Tensor, heads h: Int, scale: Float, scores: Tensor, probs: Tensor, merged: Tensor) {
        let b = qkv.shape[0], n = qkv.shape[1], d = qkv.shape[2] / 3, hd = d / h
        attentionProbabilities(qkv: qkv, heads: h, scale: scale, scores: scores, probs: probs)
        let qkvOperand = Operand(qkv)
        forEach(b * h) { i in
            let bi = i / h, hi = i % h
            let v = qkvOperand.advanced(by: bi * n * 3 * d + 2 * d + hi * hd)
            serialProduct(into: merged, offset: bi * n * d + hi * hd, ldc: d, m: n, n: hd) { c, ldc in
                serialGemm(transA: false, transB: false, m: n, n: hd, k: n, alpha: 1,
                           a: .fp32(probs.base + i * n * n), lda: n, b: v, ldb: 3 * d, beta: 0, c: c, ldc: ldc)
            }
        }
    }

    public func attentionBackward(dMerged: Tensor, qkv: Tensor, probs: Tensor, heads h: Int, scale: Float,
                                  dProbs: Tensor, dScores: Tensor, dQKV: Tensor, recompute: Bool) {
        if recompute { attentionProbabilities(qkv: qkv, heads: h, scale: scale, scores: dScores, probs: probs) }
        let b = qkv.shape[0], n = qkv.shape[1], d = qkv.shape[2] / 3, hd = d / h
        let qkvOperand = Operand(qkv)
        forEach(b * h) { i in
            let bi = i / h, hi = i % h
            let v = qkvOperand.advanced(by: bi * n * 3 * d + 2 * d + hi * hd)
            // dO, read by both products: rounded once where the products are bf16.
            let (dO, ldO) = sharedByTwo(.fp32(dMerged.base + bi * n * d + hi * hd), rows: n, cols: hd, ld: d)
            // dP = dO v^T ; dv = P^T dO
            serialGemm(transA: false, transB: true, m: n, n: n, k: hd, alpha: 1,
                       a: dO, lda: ldO, b: v, ldb: 3 * d, beta: 0, c: dProbs.base + i * n * n, ldc: n)
            serialProduct(into: dQKV, offset: bi * n * 3 * d + 2 * d + hi * hd, ldc: 3 * d, m: n, n: hd) { c, ldc in
                serialGemm(transA: true, transB: false, m: n, n: hd, k: n, alpha: 1,
                           a: .fp32(probs.base + i * n * n), lda: n, b: dO, ldb: ldO, beta: 0, c: c, ldc: ldc)
            }
        }
        softmaxBackward(dProbs, y: probs, dScores, cols: n)
        forEach(b * h) { i in
            let bi = i / h, hi = i % h
            let q = qkvOperand.advanced(by: bi * n * 3 * d + hi * hd)
            let dq = bi * n * 3 * d + hi * hd
            let (ds, ldS) = sharedByTwo(.fp32(dScores.base + i * n * n), rows: n, cols: n, ld: n)
            // dq = scale dS k ; dk = scale dS^T q
            serialProduct(into: dQKV, offset: dq, ldc: 3 * d, m: n, n: hd) { c, ldc in
                serialGemm(transA: false, transB: false, m: n, n: hd, k: n, alpha: scale,
                           a: ds, lda: ldS, b: q.advanced(by: d), ldb: 3 * d, beta: 0, c: c, ldc: ldc)
            }
            serialProduct(into: dQKV, offset: dq + d, ldc: 3 * d, m: n, n: hd) { c, ldc in
                serialGemm(transA: true, transB: false, m: n, n: hd, k: n, alpha: scale,
                           a: ds, lda: ldS, b: q, ldb: 3 * d, beta: 0, c: c, ldc: ldc)
            }
        }
    }

    /// A convolution's weight, which every image's product reads: for oneDNN's bf16 products,
    /// rounded once per call into the backend's operand buffer 0 (the tiled products' buffer: no
    /// tiled product runs inside a convolution); else as it is.
    func sharedWeight(_ weight: Tensor, count: Int) -> Operand {
        guard products == .bf16OneDNN, weight.dtype == .float32 else { return Operand(weight) }
        return .bf16(sharedBits(.fp32(weight.base), rows: 1, cols: count, ld: count, slot: 0).0)
    }

    /// An operand two serial products on this thread read: for oneDNN's bf16 products, rounded
    /// once into this thread's scratch (slot 3) instead of once per product; else as it is.
    func sharedByTwo(_ o: Operand, rows: Int, cols: Int, ld: Int) -> (Operand, Int) {
        guard products == .bf16OneDNN, case .fp32 = o else { return (o, ld) }
        let (bits, packedLD) = threadBits(o, rows: rows, cols: cols, ld: ld, slot: 3)
        return (.bf16(bits), packedLD)
    }
}
