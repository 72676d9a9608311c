/// ERM (MODEL.md §4): a hidden state initialised from the evidence, refined `iterations` times by
/// cross-attention over the evidence tokens and a GRUCell, with a logit after every iteration.
public struct EvidenceRefinement: Sendable {
    public let initProjDual: MLPHead
    public let initProjSingle: MLPHead
    public let attention: CrossAttention
    public let gru: GRUCell
    public let predictor: Linear
    public let iterations: Int

    public struct Step { let attn: CrossAttention.Saved, gru: GRUCell.Saved, h: Tensor }

    public init(_ p: String, config c: RADARConfig, layout: ParameterLayout) {
        let e = c.evidenceDim
        initProjDual = MLPHead("\(p).init_proj_dual", 2 * e, e, layout: layout)
        initProjSingle = MLPHead("\(p).init_proj_single", e, e, layout: layout)
        attention = CrossAttention("\(p).attention", dim: e, heads: c.reasoningHeads, dropout: Float(c.dropout), layout: layout)
        gru = GRUCell("\(p).gru", inputSize: e, hiddenSize: e, layout: layout)
        predictor = Linear("\(p).predictor", e, 1, layout: layout)
        iterations = c.reasoningIterations
    }

    /// tokens (B, T, E) with T = 1 or 2; `initInput` is cat(e_b, e_a) (dual) or the evidence
    /// (single). Writes iteration logits (B, iterations) and attention history (B, iterations, 2)
    /// (column `historyColumn + t` for a single token).
    public func forward(tokens: Tensor, initInput: Tensor, dual: Bool, historyColumn: Int, _ ctx: ExecutionContext,
                        steps: inout [Step], iterationLogits: Tensor, history: Tensor) throws(ShapeMismatch)
        -> (MLPHead.Saved, Tensor)
    {
        let be = ctx.backend
        let t = tokens.shape[1]
        let (h0, initSaved) = try (dual ? initProjDual : initProjSingle).forward(initInput, ctx)
        var h = h0
        var last = h0
        steps.removeAll(keepingCapacity: true)
        for i in 0..<iterations {
            let (context, meanWeights, attnSaved) = try attention.forward(query: h, tokens: tokens, ctx)
            let (hNew, gruSaved) = try gru.forward(context, h: h, ctx)
            let logit = try predictor.forward(hNew, ctx)
            be.copyColumns(logit, srcCols: 1, into: iterationLogits, dstCols: iterations, offset: i)
            be.copyColumns(meanWeights, srcCols: t, into: history, dstCols: 2 * iterations, offset: 2 * i + (t == 2 ? 0 : historyColumn))
            steps.append(Step(attn: attnSaved, gru: gruSaved, h: hNew))
            h = hNew
            last = logit
        }
        return (initSaved, last)
    }

    /// dIteration (B, iterations) -> (d tokens (B, T, E), d initInput).
    public func backward(dIterationLogits: Tensor, tokens: Tensor, dual: Bool, initSaved: MLPHead.Saved,
                         steps: [Step], _ ctx: ExecutionContext) -> (Tensor, Tensor) {
        let be = ctx.backend
        let b = tokens.shape[0], e = tokens.shape[2]
        let dTokens = ctx.zeros(tokens.shape)
        var dCarry: Tensor? = nil
        var i = iterations - 1
        while i >= 0 {
            let s = steps[i]
            defer { i -= 1 }
            let dLogit = ctx.tensor(Shape(b, 1))
            be.sliceColumns(dIterationLogits, srcCols: iterations, offset: i, into: dLogit, dstCols: 1)
            let dh = predictor.backward(dLogit, x: s.h, ctx)!
            if let dCarry { be.add(dh, dCarry, into: dh) }
            let (dContext, dhPrev) = gru.backward(dh, s.gru, ctx)
            let (dQuery, dT) = attention.backward(dContext, s.attn, ctx)
            be.add(dTokens, dT, into: dTokens)
            be.add(dhPrev, dQuery, into: dhPrev)
            dCarry = dhPrev
        }
        let dInit = (dual ? initProjDual : initProjSingle).backward(dCarry ?? ctx.zeros(Shape(b, e)), initSaved, ctx)!
        return (dTokens, dInit)
    }
}
