import Foundation
import RadarCore

/// Data-parallel gradient averaging: the flat gradient buffer cut into buckets (about
/// `bucketBytes`, in reverse layer order; the last, which waits for the end of backward, about
/// `tailBytes`), each ring-all-reduced and divided by the world size.
/// With `overlap`, a communication thread reduces each bucket as soon as backward has finished
/// writing it (the model reports progress through `DataParallel.gradientsFinal`); without, all
/// buckets go after backward. Both give bit-identical results: the same buckets, the same ring.
/// After each step the BatchNorm buffers are broadcast from rank 0, as DDP does.
///
/// Device memory the host can address (the CPU backend) is reduced in place; other memory is
/// staged through a host buffer (download, ring, upload), with the same arithmetic.
public final class GradientSync: @unchecked Sendable {
    public let communicator: Communicator
    public let store: ParameterStore
    /// Bucket ranges over the gradient buffer, highest offsets first (backward's order).
    public let buckets: [Range<Int>]
    public let overlap: Bool
    /// What buckets travel as between ranks (`.bf16`: half the bytes, sums in fp32).
    public let wire: WireFormat

    private let cond = NSCondition()
    private var finalFrom = Int.max
    private var next = 0
    private var failure: Error?
    /// This step's all-reduce runs on its own thread, during backward (overlap mode).
    private var communicating = false
    private var active = false
    /// Seconds spent reducing (buckets, the flag, the buffers' broadcast) and of those the ones
    /// the training thread waited for, since `takeStatistics`; guarded by `cond`.
    private var busySeconds = 0.0, exposedSeconds = 0.0, stepsTimed = 0
    /// Host staging for buckets, buffers and flags when device memory is not host memory.
    private let staging: UnsafeMutableBufferPointer<Float>
    /// The device's copy stream, when it has one (nil: staging through `withHost`).
    private let staged: GradientStaging?
    /// Page-locked host copy of the whole gradient buffer (bucket i at its own offsets).
    private let pinned: UnsafeMutablePointer<Float>?
    /// Buckets marked final this step (training thread only).
    private var marked = 0

    /// The buckets' size unless the run chooses (`--bucket-mb`): 10 MiB.
    public static let defaultBucketBytes = 10 << 20

    public init(communicator: Communicator, store: ParameterStore, bucketBytes: Int = GradientSync.defaultBucketBytes, tailBytes: Int = 1 << 20, overlap: Bool = true,
                wire: WireFormat = .fp32) {
        self.communicator = communicator
        self.wire = wire
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
        if hi > 0 {
            // The last bucket can only go once backward has ended, so whatever it holds is
            // communication nothing hides: keep it to about `tailBytes` (the encoder's stem)
            // and let the layers above it go in the bucket before.
            let tail = max(1, tailBytes / 4)
            if hi > tail, let cut = store.layout.parameters.map(\.offset).filter({ $0 >= tail && $0 < hi }).min() {
                b.append(cut..<hi)
                hi = cut
            }
            b.append(0..<hi)
        }
        buckets = b
        let largest = max(b.map(\.count).max() ?? 1, store.layout.bufferCount, 1)
        staging = .allocate(capacity: store.backend.hostAddress(store.grads) == nil ? largest : 1)
        // A device with a copy stream: buckets travel through page-locked memory, each copied as
        // soon as backward has marked it final (see `GradientStaging`).
        if store.backend.hostAddress(store.grads) == nil, communicator.size > 1, let staged = store.backend as? GradientStaging {
            self.staged = staged
            staged.prepareStaging(slots: b.count)
            pinned = staged.allocatePinned(store.parameterCount)
        } else {
            staged = nil
            pinned = nil
        }
    }

    deinit {
        staging.deallocate()
        if let pinned { staged?.releasePinned(pinned) }
    }

    /// The buckets' sizes in MB, in reduction order, for the log.
    public var bucketSizesDescription: String { GradientSync.describeBucketSizes(buckets.map(\.count)) }

    /// Sizes in MB of buckets of `counts` floats; with many (--bucket-mb 0: one per parameter, 99
    /// for the tiny config, all written out) the first and last few and how many lie between.
    public static func describeBucketSizes(_ counts: [Int]) -> String {
        let mb = counts.map { String(format: "%.1f", Double($0 * 4) / 1e6) }
        guard mb.count > 12 else { return mb.joined(separator: " ") }
        return (mb.prefix(6) + ["... \(mb.count - 9) more ..."] + mb.suffix(3)).joined(separator: " ")
    }

    /// How buckets reach the ring, for the log.
    public var stagingDescription: String {
        staged != nil ? "via two copy streams (down, up) and page-locked host memory" : store.backend.hostAddress(store.grads) != nil ? "in place" : "via host copies"
    }

    /// Marks, in the device's queue, every bucket lying at or above `offset`, each download to the
    /// page-locked copy queued behind its mark (training thread).
    private func mark(from offset: Int) {
        guard let staged, let pinned else { return }
        while marked < buckets.count && buckets[marked].lowerBound >= offset {
            let b = buckets[marked]
            staged.markFinal(marked, store.grads.slice(from: b.lowerBound, Shape(b.count)), into: pinned + b.lowerBound)
            marked += 1
        }
    }

    /// Runs `body` on host memory holding `t`: `t` itself where the host can address it, else a
    /// staging copy that is uploaded back afterwards (when `writeBack`).
    private func withHost(_ t: Tensor, writeBack: Bool = true, _ body: (UnsafeMutablePointer<Float>) throws -> Void) throws {
        let be = store.backend
        if let p = be.hostAddress(t) { try body(p); return }
        let buf = UnsafeMutableBufferPointer(rebasing: staging[0..<t.count])
        be.download(t, into: buf)
        try body(buf.baseAddress!)
        if writeBack { be.upload(UnsafeBufferPointer(buf), into: t) }
    }

    /// Rank 0's parameters, buffers and counters to every rank.
    public func broadcastInitialState() throws {
        // Parameters may exceed the staging buffer: go through a host copy of the whole buffer.
        var values = store.downloadValues()
        try values.withUnsafeMutableBytes { try communicator.broadcast($0.baseAddress!, bytes: $0.count) }
        store.uploadValues(values)
        try broadcastBuffers()
    }

    /// BatchNorm running statistics and counters from rank 0.
    private func broadcastBuffers() throws {
        try withHost(store.buffers) { try communicator.broadcast($0, bytes: store.buffers.count * 4) }
        try communicator.broadcast(store.counters.baseAddress!, bytes: store.counters.count * 8)
    }

    /// Call before backward: starts the communication thread for this step (overlap mode).
    public func beginBackward(step: Int) {
        communicator.step = step
        marked = 0
        guard overlap, communicator.size > 1 else { return }
        cond.lock()
        finalFrom = Int.max
        next = 0
        failure = nil
        active = true
        cond.unlock()
        // The thread holds the sync until it returns (an unowned capture trapped where the sync
        // was released, on an error path, before the thread first ran).
        do {
            try startThread("the gradient all-reduce overlapped with backward") { self.communicate() }
            communicating = true
        } catch {
            // The system's limit on threads: this step reduces its buckets after backward.
            cond.lock(); active = false; cond.unlock()
            printNotice("\(error): gradients are all-reduced after backward, not during it, until a thread can be started")
        }
    }

    /// Backward's report: every gradient at offset >= `offset` is final.
    public func gradientsFinal(from offset: Int) {
        guard communicating else { return }
        mark(from: offset)
        cond.lock()
        finalFrom = min(finalFrom, offset)
        cond.broadcast()
        cond.unlock()
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
            let i = next
            cond.unlock()
            let t0 = DispatchTime.now().uptimeNanoseconds
            do { try reduce(i) } catch {
                cond.lock(); failure = error; cond.unlock()
            }
            cond.lock()
            busySeconds += Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
            next += 1
            cond.broadcast()
            cond.unlock()
        }
    }

    /// Bucket `i`: ring-all-reduced (it travels as tensor 100 + i) and divided by the world size.
    private func reduce(_ i: Int) throws {
        let b = buckets[i]
        let slice = store.grads.slice(from: b.lowerBound, Shape(b.count))
        func average(_ p: UnsafeMutablePointer<Float>) throws {
            try communicator.allReduce(p, count: b.count, tensor: 100 + i, wire: wire)
            let inv = 1 / Float(communicator.size)
            for j in 0..<b.count { p[j] *= inv }
        }
        if let staged, let pinned {
            let p = pinned + b.lowerBound
            staged.awaitDown(i)  // queued when backward marked the bucket final
            try average(p)
            staged.stageUp(p, into: slice, slot: i)
        } else {
            try withHost(slice) { try average($0) }
        }
    }

    /// After backward: finishes the all-reduce (all buckets), then agrees on the non-finite flag
    /// (device, one float) with a MAX all-reduce, and broadcasts rank 0's BatchNorm buffers.
    public func finish(nonFinite: Tensor) throws {
        guard communicator.size > 1 else { return }
        let t0 = DispatchTime.now().uptimeNanoseconds
        var sequential = 0.0
        defer {
            let waited = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
            cond.lock()
            // Everything after the overlapped buckets was done by this thread: exposed.
            busySeconds += sequential
            exposedSeconds += waited
            stepsTimed += 1
            cond.unlock()
        }
        let overlapped = overlap && communicating
        mark(from: 0)  // backward has ended: every bucket is final
        if overlapped {
            cond.lock()
            finalFrom = 0
            cond.broadcast()
            while active { cond.wait() }
            let f = failure
            cond.unlock()
            communicating = false
            if let f { throw f }
        } else {
            for i in buckets.indices { try reduce(i) }
        }
        // The optimizer's kernels come after the copies back (a wait on the device, not the host).
        staged?.computeWaitsForUploads(buckets.indices)
        let t1 = DispatchTime.now().uptimeNanoseconds
        // Through the same host path as the buckets: no arrays allocated per step.
        try withHost(nonFinite) { try communicator.allReduce($0, count: 1, op: .max, tensor: 4) }
        // BatchNorm running statistics follow rank 0 (PyTorch DDP's broadcast_buffers), so every
        // replica evaluates and checkpoints the same model.
        try broadcastBuffers()
        sequential = Double(DispatchTime.now().uptimeNanoseconds - (overlapped ? t1 : t0)) / 1e9
    }

    /// Communication time since the last call, per optimizer step: `allreduce_seconds` (all of it:
    /// buckets, the non-finite flag, the BatchNorm buffers), `allreduce_exposed_seconds` (what the
    /// training thread waited for after backward) and `overlap_fraction` (the share hidden behind
    /// backward). Empty when no step was timed (one rank).
    public func takeStatistics() -> [String: Double] {
        cond.lock()
        defer { busySeconds = 0; exposedSeconds = 0; stepsTimed = 0; cond.unlock() }
        guard stepsTimed > 0 else { return [:] }
        let n = Double(stepsTimed)
        return ["allreduce_seconds": busySeconds / n, "allreduce_exposed_seconds": exposedSeconds / n,
                "overlap_fraction": busySeconds > 0 ? max(0, 1 - exposedSeconds / busySeconds) : 0]
    }
}
