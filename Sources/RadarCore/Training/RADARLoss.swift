/// The five loss terms of MODEL.md §6, each reported.
public struct LossTerms: Sendable, Equatable {
    public var main: Double = 0, branch: Double = 0, orth: Double = 0, deep: Double = 0, total: Double = 0

    public var named: [(String, Double)] {
        [("main", main), ("branch", branch), ("orth", orth), ("deep", deep), ("total", total)]
    }
}

/// total = 1.0 main + 0.3 branch + 0.1 orth + 0.05 deep, with label smoothing 0.1.
public struct RADARLoss: Sendable {
    public var smoothing: Float = 0.1
    public var branchWeight: Float = 0.3
    public var orthWeight: Float = 0.1
    public var deepWeight: Float = 0.05
    public var orthMargin: Float = 0.1
    /// Deep-supervision weights, computed once.
    public let deepWeights: [Float]

    public init(iterations: Int) { deepWeights = RADARLoss.deepWeights(iterations) }

    /// Deep-supervision weights linspace(1/T, 1, T), normalised to sum 1.
    public static func deepWeights(_ t: Int) -> [Float] {
        let raw = (0..<t).map { t == 1 ? 1 : 1 / Float(t) + (1 - 1 / Float(t)) * Float($0) / Float(t - 1) }
        let s = raw.reduce(0, +)
        return raw.map { $0 / s }
    }

    /// Computes the terms and the gradients of `scale * total` with respect to the outputs.
    /// `labels` (B) in {0, 1}.
    public func compute(_ o: RADAROutputs, labels: Tensor, config: RADARConfig, scale: Float = 1, _ ctx: ExecutionContext)
        -> (LossTerms, OutputGradients)
    {
        let be = ctx.backend
        let b = labels.count, t = config.reasoningIterations, e = config.evidenceDim
        precondition(deepWeights.count == t, "RADARLoss made for \(deepWeights.count) iterations, config has \(t)")
        let target = ctx.tensor(Shape(b, 1))
        be.smoothLabels(labels, smoothing: smoothing, target)
        var terms = LossTerms()
        let dLogit = ctx.tensor(Shape(b, 1))
        terms.main = be.binaryCrossEntropyWithLogits(o.logit, targets: target, scale: scale, dLogits: dLogit)

        let dBadm = ctx.zeros(Shape(b, 1)), dAadm = ctx.zeros(Shape(b, 1))
        let dual = config.useBadm && config.useAadm
        let branchFactor: Float = dual ? 0.5 : 1
        if config.useBadm {
            terms.branch += Double(branchFactor) * be.binaryCrossEntropyWithLogits(
                o.badmLogit, targets: target, scale: scale * branchWeight * branchFactor, dLogits: dBadm)
        }
        if config.useAadm {
            terms.branch += Double(branchFactor) * be.binaryCrossEntropyWithLogits(
                o.aadmLogit, targets: target, scale: scale * branchWeight * branchFactor, dLogits: dAadm)
        }
        let dEb = ctx.zeros(Shape(b, e)), dEa = ctx.zeros(Shape(b, e))
        if dual {
            terms.orth = be.cosineMarginPenalty(o.badmEvidence, o.aadmEvidence, margin: orthMargin, scale: scale * orthWeight,
                                                da: dEb, db: dEa)
        }
        let dIter = ctx.tensor(Shape(b, t))
        let logitT = ctx.tensor(Shape(b, 1)), dT = ctx.tensor(Shape(b, 1))
        for i in 0..<t {
            let w = deepWeights[i]
            be.sliceColumns(o.iterationLogits, srcCols: t, offset: i, into: logitT, dstCols: 1)
            terms.deep += Double(w) * be.binaryCrossEntropyWithLogits(logitT, targets: target, scale: scale * deepWeight * w, dLogits: dT)
            be.copyColumns(dT, srcCols: 1, into: dIter, dstCols: t, offset: i)
        }
        terms.total = terms.main + Double(branchWeight) * terms.branch + Double(orthWeight) * terms.orth + Double(deepWeight) * terms.deep
        return (terms, OutputGradients(logit: dLogit, badmLogit: dBadm, aadmLogit: dAadm, badmEvidence: dEb,
                                       aadmEvidence: dEa, iterationLogits: dIter))
    }
}
