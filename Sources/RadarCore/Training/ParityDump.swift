/// The computation behind `radar dump-step` (docs/checkpoints.md, "dump-step format"): one train-mode
/// forward/backward on given weights and batch, and optionally K AdamW steps at a constant
/// learning rate (clip 1.0, betas 0.9/0.999, eps 1e-8), every tensor named as PyTorch names it.
/// With `evalForward`, first an eval-mode forward of the same weights and batch: its outputs as
/// `eval.out.<name>` and each image's `Trainer.explain` values as `eval.explain.<name>`, with its
/// attention rollout (`Trainer.attentionRollout`) as `eval.explain.rollout` (B, grid, grid).
/// With a `Recipe`, instead the training loop itself over a sequence of micro-batches.
public enum ParityDump {
    public struct BatchError: Error, CustomStringConvertible {
        public let description: String
    }

    /// The training recipe over a sequence of micro-batches (`radar dump-step --micro-batch-size`):
    /// the batch's images taken `microBatch` at a time in order, each through `Trainer.microBatch`,
    /// and every `accumulationSteps` of them an optimizer step (`Trainer.optimizerStep`: clip 1.0,
    /// AdamW), with OneCycleLR over the steps (max lr: the run's lr) or a constant learning rate.
    public struct Recipe: Sendable, Equatable {
        public var microBatch: Int
        public var accumulationSteps: Int
        public var oneCycle: Bool
        public init(microBatch: Int, accumulationSteps: Int = 1, oneCycle: Bool = false) {
            self.microBatch = microBatch
            self.accumulationSteps = accumulationSteps
            self.oneCycle = oneCycle
        }
    }

    public static func run(config: RADARConfig, weights: [String: SafeTensor], weightsSource: String,
                           batch: [String: SafeTensor], batchSource: String, steps: Int, lr: Double, weightDecay: Double,
                           threads: Int = 1, device: String = Devices.defaultName, precision: String? = nil,
                           evalForward: Bool = false, recipe: Recipe? = nil) throws -> [String: SafeTensor] {
        let model = try RADARModel(config: config)
        let ctx = ExecutionContext(backend: try Devices.backend(device, threads: threads, precision: precision), layout: model.layout)
        try StateDict.load(weights, into: ctx.params, source: weightsSource)
        guard let img = batch["images"], img.shape.count == 4, img.dtype != .i64 else {
            throw BatchError(description: "\(batchSource): expected a float tensor `images` of shape (B, 3, H, W)")
        }
        guard let lab = batch["labels"], lab.shape == [img.shape[0]], lab.dtype != .i64 else {
            throw BatchError(description: "\(batchSource): expected a float tensor `labels` of shape (\(img.shape[0]))")
        }
        let be = ctx.backend
        if let recipe {
            return try run(recipe, model: model, ctx: ctx, images: img, labels: lab, batchSource: batchSource, lr: lr, weightDecay: weightDecay)
        }
        let images = DeviceTensor(be, Shape(img.shape), img.floats), labels = DeviceTensor(be, Shape(lab.shape), lab.floats)
        let trainer = Trainer(model: model, ctx: ctx, lr: Float(lr), weightDecay: Float(weightDecay))
        trainer.clipNorm = 1.0
        var out: [String: SafeTensor] = [:]
        if evalForward {
            // Before the train-mode pass, which moves BatchNorm's running statistics.
            let (o, rollout) = try trainer.attentionRollout { try trainer.evalForward(images: images.tensor) }
            for (name, t) in o.named { out["eval.out.\(name)"] = SafeTensor(shape: t.shape.dims, floats: be.download(t)) }
            out["eval.out.convergence_delta"] = SafeTensor(shape: [], floats: be.download(o.convergenceDelta))
            let ex = trainer.explanations(of: o)
            let t = config.reasoningIterations, g = config.gridSize
            func put(_ name: String, _ v: [Float], _ shape: [Int]) { out["eval.explain.\(name)"] = SafeTensor(shape: shape, floats: v) }
            if config.useBadm { put("boundary_probability", ex.map { $0.boundary! }, [ex.count]) }
            if config.useAadm { put("frequency_probability", ex.map { $0.frequency! }, [ex.count]) }
            put("reasoning_probability", ex.map(\.reasoning), [ex.count])
            put("external_probability", ex.map(\.external), [ex.count])
            put("iteration_probabilities", ex.flatMap(\.iterations), [ex.count, t])
            put("attention", ex.flatMap { $0.attention.flatMap { $0 } }, [ex.count, t, 2])
            put("probability", ex.map(\.probability), [ex.count])
            put("gate", ex.map(\.gate), [ex.count])
            put("rollout", rollout.flatMap { $0 }, [ex.count, g, g])
        }
        let (outputs, termsTensor) = try trainer.microBatch(images: images.tensor, labels: labels.tensor)
        let terms = be.download(termsTensor).withUnsafeBufferPointer { LossTerms($0) }
        for (name, t) in outputs.named { out["out.\(name)"] = SafeTensor(shape: t.shape.dims, floats: be.download(t)) }
        out["out.convergence_delta"] = SafeTensor(shape: [], floats: be.download(outputs.convergenceDelta))
        for (name, v) in terms.named { out["loss.\(name)"] = SafeTensor(shape: [], floats: [Float(v)]) }
        let grads = ctx.params.downloadGrads()
        for s in model.layout.parameters {
            out["grad.\(s.name)"] = SafeTensor(shape: s.shape.dims, floats: Array(grads[s.offset..<(s.offset + s.count)]))
        }
        guard steps > 0 else { return out }
        out["loss.step0"] = SafeTensor(shape: [], floats: [Float(terms.total)])
        _ = try trainer.optimizerStep()
        for i in 1..<steps {
            let r = try trainer.step(images: images.tensor, labels: labels.tensor)!
            out["loss.step\(i)"] = SafeTensor(shape: [], floats: [Float(r.terms.total)])
        }
        for (name, t) in StateDict.export(ctx.params) {
            out[(model.layout.parameter(named: name) != nil ? "param." : "buffer.") + name] = t
        }
        return out
    }

    /// The recipe: `loss.micro<i>` (micro-batch i's total loss), `lr.step<k>`, `beta1.step<k>` and
    /// `grad_norm.step<k>` (before clipping) of optimizer step k, then every parameter and buffer.
    static func run(_ recipe: Recipe, model: RADARModel, ctx: ExecutionContext, images img: SafeTensor, labels lab: SafeTensor,
                    batchSource: String, lr: Double, weightDecay: Double) throws -> [String: SafeTensor] {
        let n = img.shape[0], b = recipe.microBatch, a = recipe.accumulationSteps
        guard b >= 1, n % b == 0 else {
            throw BatchError(description: "\(batchSource): \(n) images are not a whole number of micro-batches of \(b)")
        }
        guard a >= 1, (n / b) % a == 0 else {
            throw BatchError(description: "\(batchSource): \(n / b) micro-batches of \(b) are not a whole number of optimizer steps of \(a) (accumulation steps)")
        }
        let be = ctx.backend, per = img.shape.dropFirst().reduce(1, *), steps = n / b / a
        let images = img.floats, labels = lab.floats
        let trainer = Trainer(model: model, ctx: ctx, lr: Float(lr), weightDecay: Float(weightDecay), accumulationSteps: a)
        trainer.clipNorm = 1.0
        if recipe.oneCycle { trainer.schedule = OneCycleLR(maxLR: lr, totalSteps: steps) }
        var out: [String: SafeTensor] = [:]
        var k = 0  // optimizer steps so far (a step skipped as not finite counts too)
        for i in 0..<(n / b) {
            let x = DeviceTensor(be, Shape([b] + Array(img.shape.dropFirst())), Array(images[(i * b * per)..<((i + 1) * b * per)]))
            let y = DeviceTensor(be, Shape(b), Array(labels[(i * b)..<((i + 1) * b)]))
            let (_, t) = try trainer.microBatch(images: x.tensor, labels: y.tensor)
            // The total is the last of the five terms (main, branch, orth, deep, total).
            out["loss.micro\(i)"] = SafeTensor(shape: [], floats: [be.download(t)[LossTerms.count - 1]])
            guard trainer.pending == a else { continue }
            let r = try trainer.optimizerStep()
            out["lr.step\(k)"] = SafeTensor(shape: [], floats: [Float(r.lr)])
            out["beta1.step\(k)"] = SafeTensor(shape: [], floats: [trainer.optimizer.beta1])
            out["grad_norm.step\(k)"] = SafeTensor(shape: [], floats: [Float(r.gradNorm)])
            k += 1
        }
        for (name, t) in StateDict.export(ctx.params) {
            out[(model.layout.parameter(named: name) != nil ? "param." : "buffer.") + name] = t
        }
        return out
    }
}
