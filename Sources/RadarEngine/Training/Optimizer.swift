import Foundation

/// torch.optim.AdamW over the flat parameter buffer. Only the given slots are updated (slots next
/// to each other in the layout merged into one range, with the zero gaps that align them, which
/// stay zero): parameters the forward never reads get no update, not even weight decay, as in
/// PyTorch where their .grad is None. The moments live in two device buffers of the
/// same layout as the parameters.
///
/// Clipping and the update are gated on the device: `clipGradients` computes the global norm
/// and opens the gate only for a finite step, and the update kernels read the gate, so the host
/// learns whether the step was taken when it reads the step's scalars (`stepTaken`).
public final class AdamW: @unchecked Sendable {
    public let store: ParameterStore
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
        var merged: [Range<Int>] = []
        var place: [String: Int] = [:]
        for (i, s) in store.layout.parameters.enumerated() { place[s.name] = i }
        var previous = -2
        for s in slots.sorted(by: { $0.offset < $1.offset }) {
            let r = s.offset..<(s.offset + s.count), at = place[s.name] ?? -2
            if let lastRange = merged.last, at == previous + 1 {
                merged[merged.count - 1] = lastRange.lowerBound..<r.upperBound
            } else {
                merged.append(r)
            }
            previous = at
        }
        ranges = merged
        self.lr = lr
        self.beta1 = beta1
        self.beta2 = beta2
        self.eps = eps
        self.weightDecay = weightDecay
    }

    deinit {
        if let m = moments {
            store.backend.release(m.0.base)
            store.backend.release(m.1.base)
        }
    }

    /// The moments, allocated (zeroed, as PyTorch starts them) at the first update or resume: a
    /// Trainer that only runs forwards (predict, evaluate, serve) never holds them.
    private var moments: (Tensor, Tensor)?
    public var expAvg: Tensor { allocatedMoments.0 }
    public var expAvgSq: Tensor { allocatedMoments.1 }
    private var allocatedMoments: (Tensor, Tensor) {
        if let m = moments { return m }
        let be = store.backend, n = store.parameterCount
        let m = (Tensor(be.allocate(max(n, 1)), Shape(n)), Tensor(be.allocate(max(n, 1)), Shape(n)))
        be.fill(m.0, 0)
        be.fill(m.1, 0)
        moments = m
        return m
    }
    /// Whether the moments have been allocated.
    public var holdsMoments: Bool { moments != nil }

    /// clip_grad_norm_(maxNorm) over the updated parameters' gradients, on the device: the norm
    /// into norm[0], and gate[0] = 1 unless nonFinite[0] is set or the norm is not finite.
    public func clipGradients(maxNorm: Float, nonFinite: Tensor, norm: Tensor, gate: Tensor) {
        store.backend.clipGradientNorm(store.grads, ranges: ranges, maxNorm: maxNorm, nonFinite: nonFinite, norm: norm, gate: gate)
    }

    /// Queues the AdamW update of step `step + 1`, applied where gate[0] is open.
    public func update(gate: Tensor) {
        let be = store.backend
        for i in 0..<ranges.count {
            let r = ranges[i]
            let shape = Shape(r.count)
            be.adamW(params: store.values.slice(from: r.lowerBound, shape), grads: store.grads.slice(from: r.lowerBound, shape),
                     expAvg: expAvg.slice(from: r.lowerBound, shape), expAvgSq: expAvgSq.slice(from: r.lowerBound, shape),
                     lr: lr, beta1: beta1, beta2: beta2, eps: eps, weightDecay: weightDecay, step: step + 1, gate: gate)
        }
    }

    /// Host copies of the moments (checkpoints) and their replacement (resume).
    public func downloadMoments() -> (expAvg: [Float], expAvgSq: [Float]) {
        (store.backend.download(expAvg), store.backend.download(expAvgSq))
    }

    public func uploadMoments(expAvg m: [Float], expAvgSq v: [Float]) {
        store.backend.upload(m, into: expAvg)
        store.backend.upload(v, into: expAvgSq)
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
        // A phase of zero length (pct_start x total_steps = 1, e.g. 10 steps at 0.1: warm-up is step
        // 0 alone) is at its start: PyTorch divides 0 by 0 there (ZeroDivisionError), and 0 / 0
        // here would be a NaN learning rate that turns every parameter into NaN.
        if step <= warmEnd {
            let pct = warmEnd > 0 ? step / warmEnd : 0
            return (OneCycleLR.cosine(initial, maxLR, pct), OneCycleLR.cosine(maxMomentum, baseMomentum, pct))
        }
        let pct = lastEnd > warmEnd ? (step - warmEnd) / (lastEnd - warmEnd) : 0
        return (OneCycleLR.cosine(maxLR, minLR, pct), OneCycleLR.cosine(baseMomentum, maxMomentum, pct))
    }
}
