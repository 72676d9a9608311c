import Foundation
import RadarCore

/// Data-parallel gradient averaging: the flat gradient buffer cut into buckets (about
/// `bucketBytes`, in reverse layer order), each ring-all-reduced and divided by the world size.
/// With `overlap`, a communication thread reduces each bucket as soon as backward has finished
/// writing it (the model reports progress through `ExecutionContext.gradientsFinal`); without,
/// all buckets go after backward. Both give bit-identical results: the same buckets, the same ring.
/// After each step the BatchNorm buffers are broadcast from rank 0, as DDP does.
public final class GradientSync: @unchecked Sendable {
    public let communicator: Communicator
    public let store: ParameterStore
    /// Bucket ranges over the gradient buffer, highest offsets first (backward's order).
    public let buckets: [Range<Int>]
    public let overlap: Bool

    private let cond = NSCondition()
    private var finalFrom = Int.max
    private var next = 0
    private var failure: Error?
    private var worker: Thread?
    private var active = false

    public init(communicator: Communicator, store: ParameterStore, bucketBytes: Int = 25 << 20, overlap: Bool = true) {
        self.communicator = communicator
        self.store = store
        self.overlap = overlap
        let per = max(1, bucketBytes / 4)
        var b: [Range<Int>] = []
        var hi = store.parameterCount
        // Cut at parameter boundaries, walking the layout backwards.
        var lo = hi
        for s in store.layout.parameters.reversed() {
            lo = s.offset
            if hi - lo >= per { b.append(lo..<hi); hi = lo }
        }
        if hi > 0 { b.append(0..<hi) }
        buckets = b
    }

    /// Rank 0's parameters, buffers and counters to every rank.
    public func broadcastInitialState() throws {
        try communicator.broadcast(store.values.baseAddress!, bytes: store.values.count * 4)
        try communicator.broadcast(store.buffers.baseAddress!, bytes: store.buffers.count * 4)
        try communicator.broadcast(store.counters.baseAddress!, bytes: store.counters.count * 8)
    }

    /// Call before backward: starts the communication thread for this step (overlap mode).
    public func beginBackward(_ ctx: ExecutionContext, step: Int) {
        communicator.step = step
        guard overlap, communicator.size > 1 else { return }
        cond.lock()
        finalFrom = Int.max
        next = 0
        failure = nil
        active = true
        cond.unlock()
        ctx.gradientsFinal = { [unowned self] offset in
            self.cond.lock()
            self.finalFrom = min(self.finalFrom, offset)
            self.cond.broadcast()
            self.cond.unlock()
        }
        let t = Thread { [unowned self] in self.communicate() }
        worker = t
        t.start()
    }

    private func communicate() {
        while true {
            cond.lock()
            while next < buckets.count && buckets[next].lowerBound < finalFrom && failure == nil { cond.wait() }
            if next >= buckets.count || failure != nil {
                active = false
                cond.broadcast()
                cond.unlock()
                return
            }
            let b = buckets[next]
            cond.unlock()
            do { try reduce(b) } catch {
                cond.lock(); failure = error; cond.unlock()
            }
            cond.lock()
            next += 1
            cond.broadcast()
            cond.unlock()
        }
    }

    private func reduce(_ b: Range<Int>) throws {
        let p = store.grads.baseAddress! + b.lowerBound
        // Bucket i travels as tensor 100 + i.
        try communicator.allReduce(p, count: b.count, tensor: 100 + (buckets.firstIndex(of: b) ?? 0))
        let inv = 1 / Float(communicator.size)
        for i in 0..<b.count { p[i] *= inv }
    }

    /// The trainer's gradient hook: finishes the all-reduce (all buckets), then agrees on
    /// finiteness with a MAX all-reduce of a flag. Returns whether every rank was finite.
    public func finish(_ ctx: ExecutionContext, localFinite: Bool) throws -> Bool {
        guard communicator.size > 1 else { return localFinite }
        if overlap && worker != nil {
            cond.lock()
            finalFrom = 0
            cond.broadcast()
            while active { cond.wait() }
            let f = failure
            cond.unlock()
            worker = nil
            ctx.gradientsFinal = nil
            if let f { throw f }
        } else {
            for b in buckets { try reduce(b) }
        }
        var flag: Float = localFinite ? 0 : 1
        try communicator.allReduce(&flag, count: 1, op: .max, tensor: 4)
        // BatchNorm running statistics follow rank 0 (PyTorch DDP's broadcast_buffers), so every
        // replica evaluates and checkpoints the same model.
        try communicator.broadcast(store.buffers.baseAddress!, bytes: store.buffers.count * 4)
        try communicator.broadcast(store.counters.baseAddress!, bytes: store.counters.count * 8)
        return flag == 0
    }
}
