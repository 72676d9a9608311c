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

    /// x (..., in) -> y (..., out).
    public func forward(_ x: Tensor, _ ctx: ExecutionContext) throws(ShapeMismatch) -> Tensor {
        if x.shape.rank == 0 || x.shape.last != inFeatures {
            throw ShapeMismatch(layer: name, expected: "(*, \(inFeatures))", actual: x.shape)
        }
        let y = ctx.tensor(x.shape.replacingLast(outFeatures))
        let rows = x.shape.rows
        let w = ctx.params.value(weight)
        ctx.backend.gemm(transA: false, transB: true, m: rows, n: outFeatures, k: inFeatures, alpha: 1,
                         a: x.base, lda: inFeatures, b: w.base, ldb: inFeatures, beta: 0, c: y.base, ldc: outFeatures)
        if let bias { ctx.backend.addRowBias(ctx.params.value(bias), into: y) }
        return y
    }

    /// Accumulates dW += dy^T x and db += colsum(dy); returns dx = dy W (or nil when not wanted).
    @discardableResult
    public func backward(_ dy: Tensor, x: Tensor, _ ctx: ExecutionContext, inputGradient: Bool = true) -> Tensor? {
        let rows = x.shape.rows
        let w = ctx.params.value(weight), dw = ctx.params.grad(weight)
        ctx.backend.gemm(transA: true, transB: false, m: outFeatures, n: inFeatures, k: rows, alpha: 1,
                         a: dy.base, lda: outFeatures, b: x.base, ldb: inFeatures, beta: 1, c: dw.base, ldc: inFeatures)
        if let bias { ctx.backend.accumulateColumnSums(dy, into: ctx.params.grad(bias)) }
        guard inputGradient else { return nil }
        let dx = ctx.tensor(x.shape)
        ctx.backend.gemm(transA: false, transB: false, m: rows, n: inFeatures, k: outFeatures, alpha: 1,
                         a: dy.base, lda: outFeatures, b: w.base, ldb: inFeatures, beta: 0, c: dx.base, ldc: inFeatures)
        return dx
    }
}
