import Foundation

/// One replica's training step: forward, the 5-term loss, backward into the flat gradient buffer,
/// gradient accumulationSteps, the data-parallel reduction, non-finite detection, global-norm clipping
/// and AdamW with OneCycleLR. Allocation-free after the first step, and free of host
/// synchronisation inside a micro-batch: loss terms, the non-finite flag, the gradient norm and the
/// update gate stay in device memory, and the host reads them once per optimizer step.
public final class Trainer: @unchecked Sendable {
    public let model: RADARModel
    public let ctx: ExecutionContext
    public let optimizer: AdamW
    public let loss: RADARLoss
    public var schedule: OneCycleLR?
    public var clipNorm: Float = 1.0
    public let accumulationSteps: Int
    /// Micro-batches seen since the last optimizer step.
    public private(set) var pending = 0
    /// Optimizer steps skipped because the loss or a gradient was not finite (on any replica).
    public private(set) var skippedSteps = 0
    /// Arena floats in use when the last micro-batch's backward began: what the forward and the
    /// loss keep for backward (PyTorch's saved tensors; `radar bench step` reports it per image).
    public private(set) var savedForBackwardFloats = 0

    /// The step's device scalars: five loss terms per micro-batch, then the non-finite flag, the
    /// gradient norm and the update gate. Downloaded once per optimizer step into `hostScalars`.
    private let scalars: DeviceTensor
    private let hostScalars: UnsafeMutableBufferPointer<Float>
    private var nonFiniteIndex: Int { accumulationSteps * LossTerms.count }

    public struct StepResult: Sendable {
        /// The loss terms averaged over the step's micro-batches.
        public var terms: LossTerms
        /// Sum of the micro-batches' total losses (epoch means add these up).
        public var totalSum: Double
        public var microBatches: Int
        public var skipped: Bool
        public var gradNorm: Double
        public var lr: Double
    }

    public init(model: RADARModel, ctx: ExecutionContext, lr: Float = 5e-4, weightDecay: Float = 0.05, accumulationSteps: Int = 1) {
        precondition(accumulationSteps >= 1, "accumulationSteps must be at least 1")
        self.model = model
        self.ctx = ctx
        optimizer = AdamW(store: ctx.params, slots: model.activeSlots, lr: lr, weightDecay: weightDecay)
        loss = RADARLoss(iterations: model.config.reasoningIterations)
        self.accumulationSteps = accumulationSteps
        let n = accumulationSteps * LossTerms.count + 3
        scalars = DeviceTensor(ctx.backend, Shape(n))
        hostScalars = .allocate(capacity: n)
        hostScalars.initialize(repeating: 0)
    }

    deinit { hostScalars.deallocate() }

    private var nonFinite: Tensor { scalars.tensor.slice(from: nonFiniteIndex, Shape(1)) }
    private var gradNorm: Tensor { scalars.tensor.slice(from: nonFiniteIndex + 1, Shape(1)) }
    private var gate: Tensor { scalars.tensor.slice(from: nonFiniteIndex + 2, Shape(1)) }
    private func terms(_ micro: Int) -> Tensor { scalars.tensor.slice(from: micro * LossTerms.count, Shape(LossTerms.count)) }

    /// One micro-batch; every `accumulationSteps` micro-batches, an optimizer step, whose result is
    /// returned (nil for the micro-batches before it). images (B, 3, H, W) normalised, labels (B),
    /// both device tensors.
    public func step(images: Tensor, labels: Tensor) throws -> StepResult? {
        let completesStep = pending + 1 == accumulationSteps
        _ = try microBatch(images: images, labels: labels)
        guard completesStep else { return nil }
        return try optimizerStep()
    }

    /// Train-mode forward, loss and backward of one micro-batch, accumulating into the gradient
    /// buffer (scaled by 1/accumulationSteps). Returns the outputs and the five loss terms (device
    /// tensors, valid until the next pass). `step` calls it; tools call it with `optimizerStep`.
    @discardableResult
    public func microBatch(images: Tensor, labels: Tensor) throws -> (outputs: RADAROutputs, terms: Tensor) {
        precondition(pending < accumulationSteps, "microBatch after a full accumulation window without optimizerStep")
        let be = ctx.backend
        if pending == 0 {
            ctx.params.zeroGrads()
            be.fill(scalars.tensor, 0)
        }
        ctx.training = true
        ctx.beginPass()
        let out = try model.forward(images, ctx)
        ctx.profiler?.begin()
        let terms = terms(pending)
        let outputGrads = loss.compute(out, labels: labels, config: model.config, scale: 1 / Float(accumulationSteps),
                                       terms: terms, ctx)
        be.flagNonFinite(terms.slice(from: LossTerms.count - 1, Shape(1)), into: nonFinite)
        ctx.profiler?.end(.loss)
        savedForBackwardFloats = ctx.arena.floatsInUse
        if pending + 1 == accumulationSteps {
            // From here backward hands finished gradient buckets to the other replicas.
            ctx.parallel.beginGradientReduction(ctx.params, step: optimizer.step)
        }
        model.backward(outputGrads, ctx)
        // Dropout streams are keyed by the micro-batch index, so accumulated micro-batches draw
        // different masks.
        ctx.step += 1
        pending += 1
        return (out, terms)
    }

    /// The optimizer step after `accumulationSteps` micro-batches: the gradient reduction, the
    /// schedule, clipping and AdamW, then the step's one host read.
    public func optimizerStep() throws -> StepResult {
        precondition(pending == accumulationSteps, "optimizerStep after \(pending) of \(accumulationSteps) micro-batches")
        pending = 0
        ctx.profiler?.begin()
        defer { ctx.profiler?.end(.optimizer) }
        // Gradients averaged over the replicas; the non-finite flag is agreed on by all of them.
        try ctx.parallel.finishGradientReduction(ctx.params, nonFinite: nonFinite)
        if let schedule {
            let v = schedule.values(at: optimizer.step)
            optimizer.lr = Float(v.lr)
            optimizer.beta1 = Float(v.beta1)
        }
        optimizer.clipGradients(maxNorm: clipNorm, nonFinite: nonFinite, norm: gradNorm, gate: gate)
        optimizer.update(gate: gate)
        // The one host read of the optimizer step: loss terms, norm and whether the update ran.
        ctx.backend.download(scalars.tensor, into: hostScalars)
        let taken = hostScalars[nonFiniteIndex + 2] != 0
        if taken { optimizer.step += 1 } else { skippedSteps += 1 }
        var mean = LossTerms(), sum = 0.0
        for m in 0..<accumulationSteps {
            let t = LossTerms(UnsafeBufferPointer(rebasing: hostScalars[(m * LossTerms.count)..<((m + 1) * LossTerms.count)]))
            mean.main += t.main; mean.branch += t.branch; mean.orth += t.orth; mean.deep += t.deep; mean.total += t.total
            sum += t.total
        }
        let n = Double(accumulationSteps)
        mean = LossTerms(main: mean.main / n, branch: mean.branch / n, orth: mean.orth / n, deep: mean.deep / n, total: mean.total / n)
        try ctx.parallel.stepFinished(ctx.params, step: optimizer.step)
        return StepResult(terms: mean, totalSum: sum, microBatches: accumulationSteps, skipped: !taken,
                          gradNorm: Double(hostScalars[nonFiniteIndex + 1]), lr: Double(optimizer.lr))
    }

    /// Eval-mode forward: probabilities (B) downloaded into `probs` (a host synchronisation).
    public func predict(images: Tensor, into probs: UnsafeMutablePointer<Float>) throws(ShapeMismatch) {
        let out = try evalForward(images: images)
        ctx.backend.download(out.prob, into: UnsafeMutableBufferPointer(start: probs, count: out.prob.count))
    }

    /// One eval-mode forward (BatchNorm on its running statistics, no dropout, nothing kept for
    /// a backward): every output, as views valid until the next pass.
    public func evalForward(images: Tensor) throws(ShapeMismatch) -> RADAROutputs {
        ctx.training = false
        defer { ctx.training = true }
        ctx.beginPass()
        return try model.forward(images, ctx)
    }

    /// Eval-mode forward with each image's interpretability outputs (MODEL.md §4-5): what each
    /// head said and how the reasoning weighed the evidence. Eight small reads (probability, the
    /// four heads' logits, gate, iteration logits, attention), each a host synchronisation on a
    /// GPU: a few per batch in evaluation, none in a training step.
    public func explain(images: Tensor) throws(ShapeMismatch) -> [Explanation] {
        return explanations(of: try evalForward(images: images))
    }

    /// `explain`'s values from an eval forward's outputs (`evalForward`).
    public func explanations(of out: RADAROutputs) -> [Explanation] {
        let be = ctx.backend, c = model.config
        let prob = be.download(out.prob), logit = be.download(out.logit), badm = be.download(out.badmLogit), aadm = be.download(out.aadmLogit)
        let reasoning = be.download(out.reasoningLogit), external = be.download(out.externalLogit)
        let alpha = be.download(out.gatingAlpha), iterations = be.download(out.iterationLogits)
        let history = be.download(out.attentionHistory)
        let t = c.reasoningIterations
        return (0..<prob.count).map { i in
            Explanation(probability: prob[i], logit: logit[i],
                        boundary: c.useBadm ? Explanation.sigmoid(badm[i]) : nil,
                        frequency: c.useAadm ? Explanation.sigmoid(aadm[i]) : nil,
                        reasoning: Explanation.sigmoid(reasoning[i]), external: Explanation.sigmoid(external[i]),
                        gate: alpha[i],
                        iterations: (0..<t).map { Explanation.sigmoid(iterations[i * t + $0]) },
                        attention: (0..<t).map { k in [history[(i * t + k) * 2], history[(i * t + k) * 2 + 1]] })
        }
    }

    /// Attention rollout (Abnar and Zuidema, 2020) over the encoder, for the eval forward `body`
    /// runs (`explain` or `predict`, whose result comes back with the maps): how much of the
    /// class token's last state flows from each image patch through the blocks' self-attention
    /// and residual paths. Each block's attention averaged over its heads, A, becomes (A + I) / 2
    /// (the residual), and the class token's row of their product R = Â_L ... Â_1 is read at
    /// the patches: grid x grid weights per image, row-major, which sum to at most 1 (the rest
    /// stays on the class token). Computed as the row vector e_0 Â_L ... Â_1 (N^2 per block,
    /// not N^3). Every block's probabilities are downloaded: a host synchronisation each on a GPU.
    public func attentionRollout<T>(_ body: () throws -> T) throws -> (T, [[Float]]) {
        var means: [[Float]] = []
        let be = ctx.backend
        ctx.attentionProbabilitiesSink = { probs in
            let b = probs.shape[0], h = probs.shape[1], t = probs.shape[2], tt = t * t
            let host = be.download(probs)
            var mean = [Float](repeating: 0, count: b * tt)
            for i in 0..<b {
                for k in 0..<h {
                    let from = (i * h + k) * tt
                    for j in 0..<tt { mean[i * tt + j] += host[from + j] }
                }
            }
            let inv = 1 / Float(h)
            for j in mean.indices { mean[j] *= inv }
            means.append(mean)
        }
        defer { ctx.attentionProbabilitiesSink = nil }
        let result = try body()
        guard let first = means.first else { return (result, []) }
        let t = model.config.patchCount + 1, b = first.count / (t * t)
        let maps = (0..<b).map { i -> [Float] in
            var v = [Double](repeating: 0, count: t), next = v
            v[0] = 1
            for a in means.reversed() {
                let base = i * t * t
                for j in 0..<t { next[j] = 0.5 * v[j] }
                for r in 0..<t where v[r] != 0 {
                    let w = 0.5 * v[r], row = base + r * t
                    for j in 0..<t { next[j] += w * Double(a[row + j]) }
                }
                swap(&v, &next)
            }
            return v[1...].map { Float($0) }
        }
        return (result, maps)
    }
}

/// One image's interpretability outputs (`Trainer.explain`, `radar predict --explain`): the
/// probability of "fake" from the final logit and from each head, the gate and the attention of
/// the evidence refinement over the two evidence tokens.
public struct Explanation: Sendable, Equatable {
    /// sigmoid(final logit) = sigmoid(gate * reasoning logit + (1 - gate) * external logit).
    public let probability: Float
    /// The final logit itself (what `probability` is the sigmoid of): temperature scaling divides it.
    public let logit: Float
    /// sigmoid of the boundary (BADM) and frequency (AADM) branch classifiers; nil for a branch
    /// the model does not use.
    public let boundary: Float?, frequency: Float?
    /// sigmoid of the evidence refinement's last logit and of the external classifier's.
    public let reasoning: Float, external: Float
    /// alpha = sigmoid(_gating_logit): the weight of the reasoning logit in the final one.
    public let gate: Float
    /// sigmoid of each refinement iteration's logit (the last is `reasoning`).
    public let iterations: [Float]
    /// Per iteration, the attention (averaged over heads) on [boundary evidence, frequency
    /// evidence]; a disabled branch's column is 0.
    public let attention: [[Float]]

    public init(probability: Float, logit: Float, boundary: Float?, frequency: Float?, reasoning: Float, external: Float, gate: Float,
                iterations: [Float], attention: [[Float]]) {
        self.probability = probability
        self.logit = logit
        self.boundary = boundary
        self.frequency = frequency
        self.reasoning = reasoning
        self.external = external
        self.gate = gate
        self.iterations = iterations
        self.attention = attention
    }

    public static func sigmoid(_ x: Float) -> Float { 1 / (1 + Foundation.exp(-x)) }
}
