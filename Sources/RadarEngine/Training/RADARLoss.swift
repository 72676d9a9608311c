/// The five loss terms of MODEL.md §6, each reported (host values read from the device once per
/// optimizer step).
public struct LossTerms: Sendable, Equatable {
    public var main: Double = 0, branch: Double = 0, orth: Double = 0, deep: Double = 0, total: Double = 0

    /// Their order in the device tensor the loss writes: main, branch, orth, deep, total.
    public static let count = 5

    public init(main: Double = 0, branch: Double = 0, orth: Double = 0, deep: Double = 0, total: Double = 0) {
        self.main = main
        self.branch = branch
        self.orth = orth
        self.deep = deep
        self.total = total
    }

    /// From the five floats the loss wrote.
    public init(_ v: UnsafeBufferPointer<Float>) {
        self.init(main: Double(v[0]), branch: Double(v[1]), orth: Double(v[2]), deep: Double(v[3]), total: Double(v[4]))
    }

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

    /// Writes the terms into `terms` (5 device floats: main, branch, orth, deep, total; zeroed by
    /// the caller) and returns the gradients of `scale * total` with respect to the outputs.
    /// `labels` (B) in {0, 1}. Nothing is read back to the host.
    public func compute(_ o: RADAROutputs, labels: Tensor, config: RADARConfig, scale: Float = 1, terms: Tensor,
                        _ ctx: ExecutionContext) -> OutputGradients {
        let be = ctx.backend
        let b = labels.count, t = config.reasoningIterations, e = config.evidenceDim
        precondition(deepWeights.count == t, "RADARLoss made for \(deepWeights.count) iterations, config has \(t)")
        precondition(terms.count == LossTerms.count, "loss terms tensor of \(terms.count) values")
        let main = terms.slice(from: 0, Shape(1)), branch = terms.slice(from: 1, Shape(1))
        let orth = terms.slice(from: 2, Shape(1)), deep = terms.slice(from: 3, Shape(1)), total = terms.slice(from: 4, Shape(1))
        let target = ctx.tensor(Shape(b, 1))
        be.smoothLabels(labels, smoothing: smoothing, target)
        let dLogit = ctx.tensor(Shape(b, 1))
        be.binaryCrossEntropyWithLogits(o.logit, targets: target, scale: scale, dLogits: dLogit, loss: main, weight: 1)

        let dBadm = ctx.zeros(Shape(b, 1)), dAadm = ctx.zeros(Shape(b, 1))
        let dual = config.useBadm && config.useAadm
        let branchFactor: Float = dual ? 0.5 : 1
        if config.useBadm {
            be.binaryCrossEntropyWithLogits(o.badmLogit, targets: target, scale: scale * branchWeight * branchFactor,
                                            dLogits: dBadm, loss: branch, weight: branchFactor)
        }
        if config.useAadm {
            be.binaryCrossEntropyWithLogits(o.aadmLogit, targets: target, scale: scale * branchWeight * branchFactor,
                                            dLogits: dAadm, loss: branch, weight: branchFactor)
        }
        let dEb = ctx.zeros(Shape(b, e)), dEa = ctx.zeros(Shape(b, e))
        if dual {
            be.cosineMarginPenalty(o.badmEvidence, o.aadmEvidence, margin: orthMargin, scale: scale * orthWeight,
                                   da: dEb, db: dEa, loss: orth, weight: 1)
        }
        let dIter = ctx.tensor(Shape(b, t))
        let logitT = ctx.tensor(Shape(b, 1)), dT = ctx.tensor(Shape(b, 1))
        for i in 0..<t {
            let w = deepWeights[i]
            be.sliceColumns(o.iterationLogits, srcCols: t, offset: i, into: logitT, dstCols: 1)
            be.binaryCrossEntropyWithLogits(logitT, targets: target, scale: scale * deepWeight * w, dLogits: dT, loss: deep, weight: w)
            be.copyColumns(dT, srcCols: 1, into: dIter, dstCols: t, offset: i)
        }
        be.axpy(1, main, total)
        be.axpy(branchWeight, branch, total)
        be.axpy(orthWeight, orth, total)
        be.axpy(deepWeight, deep, total)
        return OutputGradients(logit: dLogit, badmLogit: dBadm, aadmLogit: dAadm, badmEvidence: dEb,
                               aadmEvidence: dEa, iterationLogits: dIter)
    }
}
