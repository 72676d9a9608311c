/// timm's ViT attention: fused qkv Linear(D, 3D) split as [q|k|v] then heads, softmax(q k^T *
/// head_dim^-0.5) v, then proj Linear(D, D). No dropout (timm defaults).
public struct SelfAttention: Sendable {
    public let name: String
    public let dim: Int, heads: Int
    public let qkv: Linear, proj: Linear
    public var headDim: Int { dim / heads }
    public var scale: Float { 1 / Float(headDim).squareRoot() }

    public struct Saved {
        public let x: Tensor
        /// (B, N, 3D)
        public let qkv: Tensor
        /// Heads merged, before proj: (B, N, D).
        public let merged: Tensor
        /// The probabilities (B, H, N, N), unless backward recomputes them.
        public let probs: Tensor?
        /// The fused path's row log-sum-exps (B, H, N); nil on the products path.
        public var logSumExp: Tensor? = nil
    }

    public init(_ name: String, dim: Int, heads: Int, layout: ParameterLayout) {
        precondition(heads > 0 && dim % heads == 0, "\(name): dim \(dim) not divisible by heads \(heads)")
        self.name = name
        self.dim = dim
        self.heads = heads
        qkv = Linear("\(name).qkv", dim, 3 * dim, layout: layout)
        proj = Linear("\(name).proj", dim, dim, layout: layout)
    }

    /// x (B, N, D) -> (B, N, D). qkv and the merged heads are kept as `ctx.productInputType`
    /// (only products read them). With a `residual` (fp32, (B, N, D)) the output is residual +
    /// attention(x), summed by the projection's product (`Linear.forward(residual:)`).
    public func forward(_ x: Tensor, _ ctx: ExecutionContext, residual: Tensor? = nil) throws(ShapeMismatch) -> (Tensor, Saved) {
        if x.shape.rank != 3 || x.shape[2] != dim {
            throw ShapeMismatch(layer: name, expected: "(B, N, \(dim))", actual: x.shape)
        }
        let b = x.shape[0], n = x.shape[1]
        let qkvOut = try qkv.forward(x, ctx, output: ctx.productInputType)
        // Flash attention where the backend offers it (bf16; not while probabilities are wanted):
        // merged straight from qkv, and one float per row (its log-sum-exp) kept for backward.
        if qkvOut.dtype == .bfloat16, ctx.attentionProbabilitiesSink == nil, ctx.backend.fusedAttention(headDim: headDim) {
            let merged = ctx.tensor(Shape(b, n, dim), dtype: .bfloat16), lse = ctx.tensor(Shape(b, heads, n))
            ctx.backend.fusedAttentionForward(qkv: qkvOut, heads: heads, scale: scale, merged: merged, logSumExp: lse)
            let y = try proj.forward(merged, ctx, residual: residual)
            return (y, Saved(x: x, qkv: qkvOut, merged: merged, probs: nil, logSumExp: lse))
        }
        // The scores are scratch, released at once; so are the probabilities when backward
        // recomputes them from qkv (as PyTorch's fused attention does): then a block keeps no
        // (B, H, N, N) tensor from forward to backward.
        // merged is written in its kept dtype by the products themselves (bf16: rounded once).
        let kept = ctx.recomputeInBackward ? nil : ctx.tensor(Shape(b, heads, n, n))
        let merged = ctx.tensor(Shape(b, n, dim), dtype: ctx.productInputType)
        let mark = ctx.arena.mark()
        let scores = ctx.tensor(Shape(b, heads, n, n)), probs = kept ?? ctx.tensor(Shape(b, heads, n, n))
        ctx.backend.attentionForward(qkv: qkvOut, heads: heads, scale: scale, scores: scores, probs: probs, merged: merged)
        ctx.attentionProbabilitiesSink?(probs)
        ctx.arena.rewind(to: mark)
        let y = try proj.forward(merged, ctx, residual: residual)
        return (y, Saved(x: x, qkv: qkvOut, merged: merged, probs: kept))
    }

    /// `dyOperand`: dy's bf16 copy, as `Linear.backward` takes it. `projBiasSummed`: the
    /// projection's bias gradient was summed by whoever wrote dy (`Linear.backward`'s `biasSummed`).
    public func backward(_ dy: Tensor, _ saved: Saved, _ ctx: ExecutionContext, dyOperand: Tensor? = nil,
                         projBiasSummed: Bool = false) -> Tensor {
        let x = saved.x
        // The fused kernels take dMerged as AMP's gradient of the bf16 merged is: bf16, written so by
        // the projection's product (half the bytes to write and for the kernels to read, and no
        // rounding of their own); the products path keeps fp32.
        let dMerged = proj.backward(dy, x: saved.merged, ctx, inputGradientType: saved.logSumExp == nil ? .float32 : .bfloat16,
                                    dyOperand: dyOperand, biasSummed: projBiasSummed)!
        let b = x.shape[0], n = x.shape[1]
        // dQKV in qkv's dtype (AMP's gradient of a bf16 qkv is bf16): qkv's products read it as it
        // is and its bias gradient sums it in fp32; no fp32 copy to convert.
        if let lse = saved.logSumExp {
            let dQKV = ctx.tensor(saved.qkv.shape, dtype: saved.qkv.dtype), delta = ctx.tensor(lse.shape)
            ctx.backend.fusedAttentionBackward(dMerged: dMerged, qkv: saved.qkv, merged: saved.merged, logSumExp: lse, heads: heads,
                                               scale: scale, delta: delta, dQKV: dQKV)
            return qkv.backward(dQKV, x: x, ctx)!
        }
        let dProbs = ctx.tensor(Shape(b, heads, n, n)), dScores = ctx.tensor(dProbs.shape)
        let dQKV = ctx.tensor(saved.qkv.shape, dtype: saved.qkv.dtype)
        // Not kept: the backend recomputes them first (dScores holding the scores until it
        // overwrites them).
        let probs = saved.probs ?? ctx.tensor(dProbs.shape)
        ctx.backend.attentionBackward(dMerged: dMerged, qkv: saved.qkv, probs: probs, heads: heads, scale: scale,
                                      dProbs: dProbs, dScores: dScores, dQKV: dQKV, recompute: saved.probs == nil)
        return qkv.backward(dQKV, x: x, ctx)!
    }
}
