import Foundation

/// torch.optim.AdamW over the flat parameter buffer. Only the given slots are updated (merged
/// into contiguous ranges): parameters the forward never reads get no update, not even weight
/// decay, as in PyTorch where their .grad is None. The moments live in two buffers of the same
/// layout as the parameters.
public final class AdamW: @unchecked Sendable {
    public let store: ParameterStore
    public let expAvg: UnsafeMutableBufferPointer<Float>
    public let expAvgSq: UnsafeMutableBufferPointer<Float>
    public let ranges: [Range<Int>]
    public var lr: Float
    public var beta1: Float
    public var beta2: Float
    public var eps: Float
    public var weightDecay: Float
    /// Optimizer steps taken (PyTorch's per-parameter `step`).
    public var step = 0

    public init(store: ParameterStore, slots: [ParameterSlot], lr: Float = 5e-4, beta1: Float = 0.9, beta2: Float = 0.999,
                eps: Float = 1e-8, weightDecay: Float = 0.05) {
        self.store = store
        expAvg = .allocate(capacity: max(store.parameterCount, 1))
        expAvgSq = .allocate(capacity: max(store.parameterCount, 1))
        expAvg.initialize(repeating: 0)
        expAvgSq.initialize(repeating: 0)
        var merged: [Range<Int>] = []
        for s in slots.sorted(by: { $0.offset < $1.offset }) {
            let r = s.offset..<(s.offset + s.count)
            if let lastRange = merged.last, lastRange.upperBound == r.lowerBound {
                merged[merged.count - 1] = lastRange.lowerBound..<r.upperBound
            } else {
                merged.append(r)
            }
        }
        ranges = merged
        self.lr = lr
        self.beta1 = beta1
        self.beta2 = beta2
        self.eps = eps
        self.weightDecay = weightDecay
    }

    deinit {
        expAvg.deallocate()
        expAvgSq.deallocate()
    }

    /// Global L2 norm of the updated parameters' gradients.
    public func gradientNorm(_ backend: any Backend) -> Double {
        var s: Double = 0
        for i in 0..<ranges.count { let r = ranges[i]; s += backend.sumOfSquares(store.grads.baseAddress! + r.lowerBound, count: r.count) }
        return s.squareRoot()
    }

    /// clip_grad_norm_: scales the gradients by max_norm / (norm + 1e-6) when that is below 1,
    /// given the norm from `gradientNorm`.
    public func clipGradients(norm: Double, maxNorm: Double, _ backend: any Backend) {
        let coef = maxNorm / (norm + 1e-6)
        if coef < 1 {
            for i in 0..<ranges.count { let r = ranges[i]; backend.scale(store.grads.baseAddress! + r.lowerBound, count: r.count, by: Float(coef)) }
        }
    }

    public func update(_ backend: any Backend) {
        step += 1
        for i in 0..<ranges.count {
            let r = ranges[i]
            backend.adamW(params: store.values.baseAddress! + r.lowerBound, grads: store.grads.baseAddress! + r.lowerBound,
                          expAvg: expAvg.baseAddress! + r.lowerBound, expAvgSq: expAvgSq.baseAddress! + r.lowerBound,
                          count: r.count, lr: lr, beta1: beta1, beta2: beta2, eps: eps, weightDecay: weightDecay, step: step)
        }
    }
}

/// torch.optim.lr_scheduler.OneCycleLR as MODEL.md fixes it: pct_start 0.1 (torch's default is
/// 0.3), and torch's defaults otherwise: cosine annealing,
/// div_factor 25, final_div_factor 1e4, cycle_momentum with Adam's beta1 moving 0.95 -> 0.85 ->
/// 0.95 against the learning rate, two phases. `values(at: k)` is what the k-th optimizer step
/// (from 0) uses.
public struct OneCycleLR: Sendable, Equatable {
    public let maxLR: Double
    public let totalSteps: Int
    public var pctStart = 0.1
    public var divFactor = 25.0
    public var finalDivFactor = 1e4
    public var baseMomentum = 0.85
    public var maxMomentum = 0.95

    public init(maxLR: Double, totalSteps: Int) {
        precondition(totalSteps > 0, "OneCycleLR needs total_steps > 0")
        self.maxLR = maxLR
        self.totalSteps = totalSteps
    }

    static func cosine(_ start: Double, _ end: Double, _ pct: Double) -> Double {
        end + (start - end) / 2 * (Foundation.cos(Double.pi * pct) + 1)
    }

    /// (lr, beta1) for optimizer step `k`.
    public func values(at k: Int) -> (lr: Double, beta1: Double) {
        let initial = maxLR / divFactor, minLR = initial / finalDivFactor
        let step = Double(k)
        let warmEnd = pctStart * Double(totalSteps) - 1, lastEnd = Double(totalSteps) - 1
        if step <= warmEnd {
            let pct = step / warmEnd
            return (OneCycleLR.cosine(initial, maxLR, pct), OneCycleLR.cosine(maxMomentum, baseMomentum, pct))
        }
        let pct = (step - warmEnd) / (lastEnd - warmEnd)
        return (OneCycleLR.cosine(maxLR, minLR, pct), OneCycleLR.cosine(baseMomentum, maxMomentum, pct))
    }
}
