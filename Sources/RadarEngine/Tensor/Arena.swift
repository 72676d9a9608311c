import Foundation

/// Bump allocator for activations and their gradients, over device memory from the backend.
///
/// A step calls `reset()` and then takes views in the same order every time, so after the first
/// step (or an explicit `reserve`) the arena serves every request from memory it already owns.
/// Growth after warm-up is counted in `growthCount`, which the no-allocation test checks.
public final class Arena: @unchecked Sendable {
    /// Every view starts on a 64-byte boundary (one cache line, one AVX-512 register).
    static let alignmentFloats = 16
    /// RADAR_ARENA_TRACE=1: each new high-water mark to standard error with the tensor that set it
    /// (where a step's memory peaks; one branch per view otherwise).
    static let trace = ProcessInfo.processInfo.environment["RADAR_ARENA_TRACE"] == "1"
    public let backend: any Backend

    private var blocks: [(base: UnsafeMutablePointer<Float>, capacity: Int)] = []
    private var block = 0
    private var used = 0
    private var highWater = 0
    private var totalUsed = 0
    /// How many times a request needed a new block.
    public private(set) var growthCount = 0

    public init(backend: any Backend, capacity: Int = 0) {
        self.backend = backend
        if capacity > 0 { addBlock(capacity) }
    }

    deinit { for b in blocks { backend.release(b.base) } }

    /// Floats handed out since the last reset, and the most ever handed out between resets.
    public var floatsInUse: Int { totalUsed }
    public var peakFloats: Int { highWater }
    public var capacity: Int { blocks.reduce(0) { $0 + $1.capacity } }

    private func addBlock(_ n: Int) {
        // The backend's memory is 64-byte aligned already.
        blocks.append((backend.allocate(n), n))
    }

    /// Rewind to the start; earlier views become invalid.
    public func reset() {
        block = 0
        used = 0
        totalUsed = 0
    }

    /// After a warm-up step, replace the blocks by one of the peak size so later steps touch one
    /// contiguous region.
    public func consolidate() {
        guard blocks.count > 1 else { return }
        for b in blocks { backend.release(b.base) }
        blocks.removeAll()
        addBlock(highWater + Arena.alignmentFloats * 64)
        reset()
    }

    /// A view of `shape`, uninitialised.
    public func tensor(_ shape: Shape, dtype: DType = .float32) -> Tensor {
        let n = dtype.floats(shape.count)
        let padded = (n + Arena.alignmentFloats - 1) / Arena.alignmentFloats * Arena.alignmentFloats
        while true {
            if block < blocks.count {
                let b = blocks[block]
                if used + padded <= b.capacity {
                    let t = Tensor(b.base + used, shape, dtype: dtype)
                    used += padded
                    totalUsed += padded
                    if totalUsed > highWater, Arena.trace { fputs("arena: new peak \(totalUsed * 4 / 1024) KiB at a \(shape) \(dtype) tensor\n", stderr) }
                    highWater = max(highWater, totalUsed)
                    return t
                }
                block += 1
                used = 0
            } else {
                growthCount += 1
                addBlock(max(padded, 1 << 20))
            }
        }
    }

    /// Where the arena stands now; `rewind(to:)` returns there.
    public struct Mark: Sendable {
        fileprivate let block: Int, used: Int, totalUsed: Int
    }

    public func mark() -> Mark { Mark(block: block, used: used, totalUsed: totalUsed) }

    /// Releases every view handed out since `m` (a stack discipline: backward frees a layer's
    /// temporaries once the gradient it passes on is out of them). Work queued on a device
    /// stream that still uses them is ordered before whatever reuses them: one stream.
    public func rewind(to m: Mark) {
        precondition(m.totalUsed <= totalUsed, "rewind past the arena's position")
        block = m.block
        used = m.used
        totalUsed = m.totalUsed
    }

    /// A view of `shape` filled with zeros.
    public func zeros(_ shape: Shape) -> Tensor {
        let t = tensor(shape)
        backend.fill(t, 0)
        return t
    }
}
