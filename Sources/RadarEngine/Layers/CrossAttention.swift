/// Cross-attention of one query token per batch row over `tokens` evidence tokens, with separate
/// q/k/v/out projections (ERM's `attention`). Dropout acts on the attention weights; the weights
/// averaged over heads (after dropout) are returned for interpretability.
public struct CrossAttention: Sendable {
    public let name: String
    public let dim: Int, heads: Int
    public let qProj: Linear, kProj: Linear, vProj: Linear, outProj: Linear
    public let dropout: Dropout
    public var headDim: Int { dim / heads }
    public var scale: Float { 1 / Float(headDim).squareRoot() }

    public struct Saved {
        public let query: Tensor, tokens: Tensor
        public let q: Tensor, k: Tensor, v: Tensor
        public let weights: Tensor, dropped: Tensor
        public let stream: RandomStream?
        public let context: Tensor
    }

    public init(_ name: String, dim: Int, heads: Int, dropout: Float, layout: ParameterLayout) {
        precondition(heads > 0 && dim % heads == 0, "\(name): dim \(dim) not divisible by heads \(heads)")
        self.name = name
        self.dim = dim
        self.heads = heads
        qProj = Linear("\(name).q_proj", dim, dim, layout: layout)
        kProj = Linear("\(name).k_proj", dim, dim, layout: layout)
        vProj = Linear("\(name).v_proj", dim, dim, layout: layout)
        outProj = Linear("\(name).out_proj", dim, dim, layout: layout)
        self.dropout = Dropout(dropout)
    }

    /// query (B, E), tokens (B, T, E) -> output (B, E) and mean attention weights (B, T).
    public func forward(query: Tensor, tokens: Tensor, _ ctx: ExecutionContext) throws(ShapeMismatch)
        -> (Tensor, Tensor, Saved)
    {
        if query.shape.rank != 2 || query.shape[1] != dim {
            throw ShapeMismatch(layer: name, expected: "query (B, \(dim))", actual: query.shape)
        }
        if tokens.shape.rank != 3 || tokens.shape[0] != query.shape[0] || tokens.shape[2] != dim {
            throw ShapeMismatch(layer: name, expected: "tokens (\(query.shape[0]), T, \(dim))", actual: tokens.shape)
        }
        let b = query.shape[0], t = tokens.shape[1]
        let be = ctx.backend
        let q = try qProj.forward(query, ctx)
        let k = try kProj.forward(tokens, ctx)
        let v = try vProj.forward(tokens, ctx)
        let scores = ctx.tensor(Shape(b, heads, t))
        be.queryKeyScores(q: q, k: k, tokens: t, heads: heads, scale: scale, scores)
        let w = Softmax.forward(scores, ctx)
        let (wd, stream) = dropout.forward(w, ctx)
        let context = ctx.tensor(Shape(b, dim))
        be.weightedValues(wd, v: v, tokens: t, heads: heads, context)
        let out = try outProj.forward(context, ctx)
        let mean = ctx.tensor(Shape(b, t))
        be.meanOverHeads(wd, heads: heads, tokens: t, mean)
        return (out, mean, Saved(query: query, tokens: tokens, q: q, k: k, v: v, weights: w, dropped: wd,
                                 stream: stream, context: context))
    }

    /// Returns (d query, d tokens).
    public func backward(_ dy: Tensor, _ s: Saved, _ ctx: ExecutionContext) -> (Tensor, Tensor) {
        let t = s.tokens.shape[1]
        let be = ctx.backend
        let dContext = outProj.backward(dy, x: s.context, ctx)!
        let dDropped = ctx.tensor(s.weights.shape), dV = ctx.tensor(s.v.shape)
        be.weightedValuesBackward(dCtx: dContext, w: s.dropped, v: s.v, tokens: t, heads: heads, dW: dDropped, dV: dV)
        let dW = dropout.backward(dDropped, stream: s.stream, ctx)
        let dScores = Softmax.backward(dW, y: s.weights, ctx)
        let dQ = ctx.tensor(s.q.shape), dK = ctx.tensor(s.k.shape)
        be.queryKeyScoresBackward(dScores: dScores, q: s.q, k: s.k, tokens: t, heads: heads, scale: scale, dQ: dQ, dK: dK)
        let dQuery = qProj.backward(dQ, x: s.query, ctx)!
        let dTokens = kProj.backward(dK, x: s.tokens, ctx)!
        let dTokensV = vProj.backward(dV, x: s.tokens, ctx)!
        be.add(dTokens, dTokensV, into: dTokens)
        return (dQuery, dTokens)
    }
}
