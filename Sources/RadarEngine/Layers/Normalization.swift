/// torch.nn.BatchNorm2d: train mode normalises with batch statistics and moves the running ones
/// (momentum 0.1, unbiased variance, num_batches_tracked += 1); eval mode uses the running ones.
public struct BatchNorm2d: Sendable {
    public let name: String
    public let channels: Int
    public let eps: Float
    public let momentum: Float
    public let weight: ParameterSlot, bias: ParameterSlot
    public let runningMean: ParameterSlot, runningVar: ParameterSlot
    public let batchesTracked: Int

    public struct Saved {
        public let x: Tensor, mean: Tensor, invStd: Tensor
        /// Elements per channel behind the statistics; 0 in eval mode.
        public let count: Int
    }

    public init(_ name: String, _ channels: Int, eps: Float = 1e-5, momentum: Float = 0.1, layout: ParameterLayout) {
        self.name = name
        self.channels = channels
        self.eps = eps
        self.momentum = momentum
        weight = layout.parameter("\(name).weight", Shape(channels))
        bias = layout.parameter("\(name).bias", Shape(channels))
        runningMean = layout.buffer("\(name).running_mean", Shape(channels))
        runningVar = layout.buffer("\(name).running_var", Shape(channels))
        batchesTracked = layout.counter("\(name).num_batches_tracked")
    }

    /// Sets the state PyTorch starts from: weight 1, bias 0, running mean 0, running var 1.
    public func reset(_ store: ParameterStore) {
        let be = store.backend
        be.fill(store.value(weight), 1)
        be.fill(store.value(bias), 0)
        be.fill(store.buffer(runningMean), 0)
        be.fill(store.buffer(runningVar), 1)
        store.counters[batchesTracked] = 0
    }

    /// x (B, C, H, W) -> y, same shape.
    public func forward(_ x: Tensor, _ ctx: ExecutionContext) throws(ShapeMismatch) -> (Tensor, Saved) {
        if x.shape.rank != 4 || x.shape[1] != channels {
            throw ShapeMismatch(layer: name, expected: "(B, \(channels), H, W)", actual: x.shape)
        }
        let be = ctx.backend, p = ctx.params
        let y = ctx.tensor(x.shape)
        let mean: Tensor, invStd = ctx.tensor(Shape(channels))
        var count = 0
        if ctx.training {
            count = x.shape[0] * x.shape[2] * x.shape[3]
            mean = ctx.tensor(Shape(channels))
            let variance = ctx.tensor(Shape(channels))
            be.channelMoments(x, mean: mean, variance: variance)
            if ctx.parallel.synchronizesBatchNorm {
                // SyncBatchNorm: global mean and variance from all ranks' sums. Every rank trains
                // on batches of one shape (the epoch plan deals equal batches, and the replicas'
                // fingerprints agree on the batch size), so the global count is known on the host.
                let stats = ctx.tensor(Shape(2 * channels + 1))
                be.batchNormLocalSums(mean: mean, variance: variance, count: count, into: stats)
                ctx.parallel.reduceStatistics(stats)
                count *= ctx.parallel.worldSize
                be.batchNormGlobalMoments(stats, channels: channels, mean: mean, variance: variance)
            }
            be.batchNormUpdateStatistics(mean: mean, variance: variance, count: count, eps: eps, momentum: momentum,
                                         invStd: invStd, runningMean: p.buffer(runningMean), runningVar: p.buffer(runningVar))
            p.counters[batchesTracked] += 1
        } else {
            mean = p.buffer(runningMean)
            be.inverseStandardDeviation(p.buffer(runningVar), eps: eps, invStd)
        }
        be.channelNormalize(x, mean: mean, invStd: invStd, gamma: p.value(weight), beta: p.value(bias), y)
        return (y, Saved(x: x, mean: mean, invStd: invStd, count: count))
    }

    /// Accumulates dgamma, dbeta; returns dx, written into `into` when given (it may be dy itself:
    /// the sums are taken first, then each element of dx reads only its own dy).
    public func backward(_ dy: Tensor, _ saved: Saved, _ ctx: ExecutionContext, into: Tensor? = nil) -> Tensor {
        let be = ctx.backend, p = ctx.params
        let sumDy = ctx.tensor(Shape(channels)), sumDyXhat = ctx.tensor(Shape(channels))
        be.channelGradientSums(dy, x: saved.x, mean: saved.mean, invStd: saved.invStd, sumDy: sumDy, sumDyXhat: sumDyXhat)
        be.add(p.grad(weight), sumDyXhat, into: p.grad(weight))
        be.add(p.grad(bias), sumDy, into: p.grad(bias))
        if ctx.parallel.synchronizesBatchNorm, saved.count > 0 {
            // SyncBatchNorm backward: the input gradient needs the sums over every rank's batch.
            ctx.parallel.reduceStatistics(sumDy)
            ctx.parallel.reduceStatistics(sumDyXhat)
        }
        let dx = into ?? ctx.tensor(saved.x.shape)
        be.batchNormInputGradient(dy, x: saved.x, mean: saved.mean, invStd: saved.invStd, gamma: p.value(weight),
                                  sumDy: sumDy, sumDyXhat: sumDyXhat, count: saved.count, dx)
        return dx
    }
}

/// torch.nn.LayerNorm over the last axis, with affine weight and bias.
public struct LayerNorm: Sendable {
    public let name: String
    public let dim: Int
    public let eps: Float
    public let weight: ParameterSlot, bias: ParameterSlot

    public struct Saved { public let x: Tensor, mean: Tensor, rstd: Tensor }

    public init(_ name: String, _ dim: Int, eps: Float, layout: ParameterLayout) {
        self.name = name
        self.dim = dim
        self.eps = eps
        weight = layout.parameter("\(name).weight", Shape(dim))
        bias = layout.parameter("\(name).bias", Shape(dim))
    }

    /// y kept as `output` (bf16 where only products read it); statistics in fp32.
    public func forward(_ x: Tensor, _ ctx: ExecutionContext, output: DType = .float32) throws(ShapeMismatch) -> (Tensor, Saved) {
        if x.shape.rank == 0 || x.shape.last != dim {
            throw ShapeMismatch(layer: name, expected: "(*, \(dim))", actual: x.shape)
        }
        let rows = x.shape.rows
        let mean = ctx.tensor(Shape(rows)), rstd = ctx.tensor(Shape(rows))
        // A bf16 output is written as bf16 (no fp32 copy to convert).
        let y = ctx.tensor(x.shape, dtype: output)
        ctx.backend.layerNormForward(x, gamma: ctx.params.value(weight), beta: ctx.params.value(bias), eps: eps, y, mean: mean, rstd: rstd)
        return (y, Saved(x: x, mean: mean, rstd: rstd))
    }

    /// dx into `into` when given (not dy: a row's dx needs the whole row of dy); plus `residual`
    /// (a residual stream's gradient, not dx) and its bf16 copy into `copy` when given, by the
    /// same kernel. `biasGradient`: dx's column sums (residual included) added there as dx is
    /// written: the bias gradient of the Linear layer whose output gradient dx is (that layer is
    /// then told so).
    @discardableResult
    public func backward(_ dy: Tensor, _ saved: Saved, _ ctx: ExecutionContext, into: Tensor? = nil, residual: Tensor? = nil,
                         copy: Tensor? = nil, biasGradient: Tensor? = nil) -> Tensor {
        let dx = into ?? ctx.tensor(saved.x.shape)
        if let biasGradient {
            ctx.backend.layerNormBackward(dy, x: saved.x, gamma: ctx.params.value(weight), mean: saved.mean, rstd: saved.rstd, dx,
                                          dGamma: ctx.params.grad(weight), dBeta: ctx.params.grad(bias), residual: residual, dxCopy: copy,
                                          dxColumnSumsInto: biasGradient)
        } else {
            ctx.backend.layerNormBackward(dy, x: saved.x, gamma: ctx.params.value(weight), mean: saved.mean, rstd: saved.rstd,
                                          dx, dGamma: ctx.params.grad(weight), dBeta: ctx.params.grad(bias), residual: residual, dxCopy: copy)
        }
        return dx
    }
}
