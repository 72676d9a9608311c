/// y = x W^T + b over the last axis, as torch.nn.Linear. Weight (out, in), bias (out).
public struct Linear: Sendable {
    public let name: String
    public let inFeatures: Int
    public let outFeatures: Int
    public let weight: ParameterSlot
    public let bias: ParameterSlot?

    /// Registers `<name>.weight` and `<name>.bias` (or the explicit names, for GRUCell's).
    public init(_ name: String, _ inFeatures: Int, _ outFeatures: Int, bias: Bool = true,
                weightName: String? = nil, biasName: String? = nil, layout: ParameterLayout) {
        self.name = name
        self.inFeatures = inFeatures
        self.outFeatures = outFeatures
        weight = layout.parameter(weightName ?? "\(name).weight", Shape(outFeatures, inFeatures))
        self.bias = bias ? layout.parameter(biasName ?? "\(name).bias", Shape(outFeatures)) : nil
    }

    /// x (..., in) -> y (..., out) of dtype `output` (x may be bf16: see `Tensor.dtype`). A bf16 y
    /// is written by the product itself, as autocast's addmm: the bias rounded to bf16, the sum in
    /// fp32, rounded once (`Backend.biasedProduct`). `into`: y there (its shape and dtype), not in
    /// a new tensor. `residual` (fp32, y's shape; fp32 y): y = residual + (x W^T + b), the sum
    /// formed by the product itself (the bias and the residual set in y, the product accumulated
    /// onto them), as a residual block's.
    public func forward(_ x: Tensor, _ ctx: ExecutionContext, output: DType = .float32, into: Tensor? = nil,
                        residual: Tensor? = nil) throws(ShapeMismatch) -> Tensor {
        if x.shape.rank == 0 || x.shape.last != inFeatures {
            throw ShapeMismatch(layer: name, expected: "(*, \(inFeatures))", actual: x.shape)
        }
        let rows = x.shape.rows
        let w = ctx.productWeight(weight)
        if let into, into.shape != x.shape.replacingLast(outFeatures) {
            throw ShapeMismatch(layer: name, expected: "output \(x.shape.replacingLast(outFeatures))", actual: into.shape)
        }
        let y = into ?? ctx.tensor(x.shape.replacingLast(outFeatures), dtype: output)
        if let residual, residual.shape != y.shape || residual.dtype != .float32 || y.dtype != .float32 {
            throw ShapeMismatch(layer: name, expected: "an fp32 residual and output of \(y.shape)", actual: residual.shape)
        }
        if let bias {
            ctx.backend.biasedProduct(transA: false, transB: true, m: rows, n: outFeatures, k: inFeatures, alpha: 1, a: x,
                                      lda: inFeatures, b: w, ldb: inFeatures, bias: ctx.params.value(bias), residual: residual,
                                      c: y, ldc: outFeatures)
        } else {
            if let residual, residual.base != y.base { ctx.backend.copy(residual, into: y) }
            ctx.backend.product(transA: false, transB: true, m: rows, n: outFeatures, k: inFeatures, alpha: 1,
                                a: x, lda: inFeatures, b: w, ldb: inFeatures, beta: residual == nil ? 0 : 1, c: y, ldc: outFeatures)
        }
        return y
    }

    /// Accumulates dW += dy^T x and db += colsum(dy); returns dx = dy W (or nil when not wanted)
    /// of dtype `inputGradientType` (bf16: written by the product, rounded once, as AMP's
    /// gradient of a bf16 activation). dy may be bf16 (the bias gradient sums it in fp32).
    /// `dyOperand`: dy's bf16 copy where products round to bf16, made by whoever wrote dy (the
    /// products read it instead of converting dy again). `biasSummed`: db was accumulated by
    /// whoever wrote dy (GELU's or LayerNorm's backward with `biasGradient`), not summed again here.
    @discardableResult
    public func backward(_ dy: Tensor, x: Tensor, _ ctx: ExecutionContext, inputGradient: Bool = true,
                         inputGradientType: DType = .float32, dyOperand: Tensor? = nil, biasSummed: Bool = false) -> Tensor? {
        let rows = x.shape.rows
        let w = ctx.productWeight(weight), dw = ctx.params.grad(weight)
        let dx = inputGradient ? ctx.tensor(x.shape, dtype: inputGradientType) : nil
        // dy feeds both products: under bf16 products, rounded once (released after them).
        let mark = ctx.arena.mark()
        let g = dyOperand ?? ctx.productOperand(dy)
        ctx.backend.product(transA: true, transB: false, m: outFeatures, n: inFeatures, k: rows, alpha: 1,
                            a: g, lda: outFeatures, b: x, ldb: inFeatures, beta: 1, c: dw, ldc: inFeatures)
        if let bias, !biasSummed { ctx.backend.accumulateColumnSums(dy, into: ctx.params.grad(bias)) }
        if let dx {
            ctx.backend.product(transA: false, transB: false, m: rows, n: inFeatures, k: outFeatures, alpha: 1,
                                a: g, lda: outFeatures, b: w, ldb: inFeatures, beta: 0, c: dx, ldc: inFeatures)
        }
        ctx.arena.rewind(to: mark)
        return dx
    }
}
