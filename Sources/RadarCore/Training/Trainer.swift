/// One process's training step: forward, the 5-term loss, backward into the flat gradient
/// buffer, gradient accumulation, a gradient hook (the distributed all-reduce), non-finite
/// detection, global-norm clipping and AdamW with OneCycleLR. Allocation-free after the first step.
public final class Trainer: @unchecked Sendable {
    public let model: RADARModel
    public let ctx: ExecutionContext
    public let optimizer: AdamW
    public let loss: RADARLoss
    public var schedule: OneCycleLR?
    public var clipNorm: Double = 1.0
    public var accumulation: Int
    /// Micro-batches seen since the last optimizer step.
    public private(set) var pending = 0
    /// Optimizer steps skipped because the loss or a gradient was not finite.
    public private(set) var skippedSteps = 0
    /// Runs after the last micro-batch's backward and before the update (e.g. the all-reduce);
    /// returns false when any rank saw a non-finite value.
    public var gradientHook: ((ParameterStore, Bool) -> Bool)?
    private var pendingFinite = true
    /// Called before each backward with whether it is the last micro-batch of an optimizer step
    /// (the distributed trainer starts its overlapped all-reduce there).
    public var beforeBackward: ((Bool) -> Void)?

    public struct StepResult: Sendable {
        public var terms: LossTerms
        /// True when this micro-batch completed an optimizer step (taken or skipped).
        public var stepped: Bool
        public var skipped: Bool
        public var gradNorm: Double
        public var lr: Double
    }

    public init(model: RADARModel, ctx: ExecutionContext, lr: Float = 5e-4, weightDecay: Float = 0.05, accumulation: Int = 1) {
        self.model = model
        self.ctx = ctx
        optimizer = AdamW(store: ctx.params, slots: model.activeSlots, lr: lr, weightDecay: weightDecay)
        loss = RADARLoss(iterations: model.config.reasoningIterations)
        self.accumulation = max(1, accumulation)
    }

    /// Train-mode forward, loss and backward of one micro-batch, accumulating into the gradient
    /// buffer (scaled by 1/accumulation). The outputs stay valid until the next pass.
    public func accumulateGradients(images: Tensor, labels: Tensor) throws(ShapeMismatch) -> (LossTerms, RADAROutputs) {
        if pending == 0 { ctx.params.zeroGrads() }
        ctx.training = true
        ctx.beginPass()
        let out = try model.forward(images, ctx)
        ctx.profiler?.begin()
        let (terms, grads) = loss.compute(out, labels: labels, config: model.config, scale: 1 / Float(accumulation), ctx)
        ctx.profiler?.end(.loss)
        beforeBackward?(pending + 1 == accumulation)
        model.backward(grads, ctx)
        // Dropout streams are keyed by the micro-batch index, so accumulated micro-batches draw
        // different masks.
        ctx.step += 1
        pending += 1
        return (terms, out)
    }

    /// One micro-batch; every `accumulation` micro-batches, an optimizer step.
    /// images (B, 3, H, W) normalised, labels (B).
    public func step(images: Tensor, labels: Tensor) throws(ShapeMismatch) -> StepResult {
        let (terms, _) = try accumulateGradients(images: images, labels: labels)
        if !terms.total.isFinite { pendingFinite = false }
        var result = StepResult(terms: terms, stepped: false, skipped: false, gradNorm: 0, lr: Double(optimizer.lr))
        guard pending == accumulation else { return result }
        let update = applyAccumulatedGradients()
        result.stepped = true
        result.skipped = update.skipped
        result.gradNorm = update.gradNorm
        result.lr = update.lr
        return result
    }

    /// The optimizer step after `accumulation` micro-batches: the gradient hook, the non-finite
    /// check, the schedule, clipping and AdamW.
    @discardableResult
    public func applyAccumulatedGradients() -> (skipped: Bool, gradNorm: Double, lr: Double) {
        pending = 0
        ctx.profiler?.begin()
        defer { ctx.profiler?.end(.optimizer) }
        var finite = pendingFinite
        pendingFinite = true
        if let hook = gradientHook { finite = hook(ctx.params, finite) }
        let norm = optimizer.gradientNorm(ctx.backend)
        if !finite || !norm.isFinite {
            skippedSteps += 1
            return (true, norm, Double(optimizer.lr))
        }
        if let schedule {
            let v = schedule.values(at: optimizer.step)
            optimizer.lr = Float(v.lr)
            optimizer.beta1 = Float(v.beta1)
        }
        optimizer.clipGradients(norm: norm, maxNorm: clipNorm, ctx.backend)
        optimizer.update(ctx.backend)
        return (false, norm, Double(optimizer.lr))
    }

    /// Eval-mode forward: probabilities (B) into `probs`.
    public func predict(images: Tensor, into probs: UnsafeMutablePointer<Float>) throws(ShapeMismatch) {
        ctx.training = false
        ctx.beginPass()
        let out = try model.forward(images, ctx)
        for i in 0..<out.prob.count { probs[i] = out.prob.base[i] }
        ctx.training = true
    }
}
