/// torch.nn.Conv2d with square kernel, any stride and padding, by im2col + GEMM per image.
/// Weight (out, in, k, k), bias (out).
public struct Conv2d: Sendable {
    public let name: String
    public let inChannels: Int, outChannels: Int, kernel: Int, stride: Int, padding: Int
    public let weight: ParameterSlot
    public let bias: ParameterSlot?

    public struct Saved {
        public let x: Tensor
        /// im2col of every image, (B, C*k*k, Ho*Wo): reused by the weight gradient.
        public let col: Tensor
    }

    public init(_ name: String, _ inChannels: Int, _ outChannels: Int, kernel: Int, stride: Int = 1,
                padding: Int = 0, bias: Bool = true, layout: ParameterLayout) {
        precondition(kernel > 0 && stride > 0 && padding >= 0, "\(name): bad kernel/stride/padding")
        self.name = name
        self.inChannels = inChannels
        self.outChannels = outChannels
        self.kernel = kernel
        self.stride = stride
        self.padding = padding
        weight = layout.parameter("\(name).weight", Shape(outChannels, inChannels, kernel, kernel))
        self.bias = bias ? layout.parameter("\(name).bias", Shape(outChannels)) : nil
    }

    public func outputSize(_ n: Int) -> Int { (n + 2 * padding - kernel) / stride + 1 }

    /// x (B, C, H, W) -> y (B, out, Ho, Wo).
    public func forward(_ x: Tensor, _ ctx: ExecutionContext) throws(ShapeMismatch) -> (Tensor, Saved) {
        if x.shape.rank != 4 || x.shape[1] != inChannels || outputSize(x.shape[2]) < 1 || outputSize(x.shape[3]) < 1 {
            throw ShapeMismatch(layer: name, expected: "(B, \(inChannels), H >= \(kernel - 2 * padding), W >= \(kernel - 2 * padding))",
                                actual: x.shape)
        }
        let b = x.shape[0], h = x.shape[2], w = x.shape[3]
        let ho = outputSize(h), wo = outputSize(w)
        let ckk = inChannels * kernel * kernel
        let col = ctx.tensor(Shape(b, ckk, ho * wo))
        let y = ctx.tensor(Shape(b, outChannels, ho, wo))
        let wt = ctx.params.value(weight)
        let be = ctx.backend
        let (cin, k, s, p, cout) = (inChannels, kernel, stride, padding, outChannels)
        be.forEach(b) { i in
            let ci = col.base + i * ckk * ho * wo
            be.im2col(x.base + i * cin * h * w, channels: cin, height: h, width: w, kernel: k,
                      stride: s, padding: p, ci)
            be.serialGemm(transA: false, transB: false, m: cout, n: ho * wo, k: ckk, alpha: 1,
                          a: wt.base, lda: ckk, b: ci, ldb: ho * wo, beta: 0, c: y.base + i * cout * ho * wo, ldc: ho * wo)
        }
        if let bias {
            be.addChannelBias(ctx.params.value(bias), into: y)
        }
        return (y, Saved(x: x, col: col))
    }

    /// Accumulates dW and db; returns dx unless `inputGradient` is false.
    @discardableResult
    public func backward(_ dy: Tensor, _ saved: Saved, _ ctx: ExecutionContext, inputGradient: Bool = true) -> Tensor? {
        let x = saved.x
        let b = x.shape[0], h = x.shape[2], w = x.shape[3]
        let ho = dy.shape[2], wo = dy.shape[3]
        let ckk = inChannels * kernel * kernel
        let be = ctx.backend
        let wt = ctx.params.value(weight)
        // Per-image weight gradients, then summed in image order: the result does not depend on
        // which thread handled which image.
        let parts = ctx.tensor(Shape(b, outChannels * ckk))
        let dx: Tensor? = inputGradient ? ctx.zeros(x.shape) : nil
        let dcol: Tensor? = inputGradient ? ctx.tensor(Shape(b, ckk, ho * wo)) : nil
        let (cin, k, s, p, cout) = (inChannels, kernel, stride, padding, outChannels)
        be.forEach(b) { i in
            let dyi = dy.base + i * cout * ho * wo
            be.serialGemm(transA: false, transB: true, m: cout, n: ckk, k: ho * wo, alpha: 1,
                          a: dyi, lda: ho * wo, b: saved.col.base + i * ckk * ho * wo, ldb: ho * wo,
                          beta: 0, c: parts.base + i * cout * ckk, ldc: ckk)
            if let dx, let dcol {
                let dci = dcol.base + i * ckk * ho * wo
                be.serialGemm(transA: true, transB: false, m: ckk, n: ho * wo, k: cout, alpha: 1,
                              a: wt.base, lda: ckk, b: dyi, ldb: ho * wo, beta: 0, c: dci, ldc: ho * wo)
                be.col2im(dci, channels: cin, height: h, width: w, kernel: k, stride: s, padding: p,
                          dx.base + i * cin * h * w)
            }
        }
        be.sumParts(parts.base, partCount: b, n: outChannels * ckk, accumulateInto: ctx.params.grad(weight).base)
        if let bias { be.accumulateChannelSums(dy, into: ctx.params.grad(bias)) }
        return dx
    }
}
