/// Bump allocator for activations and their gradients.
///
/// A step calls `reset()` and then takes views in the same order every time, so after the first
/// step (or an explicit `reserve`) the arena serves every request from memory it already owns.
/// Growth after warm-up is counted in `growthCount`, which the no-allocation test checks.
public final class Arena: @unchecked Sendable {
    /// Every view starts on a 64-byte boundary (one cache line, one AVX-512 register).
    static let alignmentFloats = 16

    private var blocks: [(base: UnsafeMutablePointer<Float>, capacity: Int)] = []
    private var block = 0
    private var used = 0
    private var highWater = 0
    private var totalUsed = 0
    /// How many times a request needed a new block.
    public private(set) var growthCount = 0

    public init(capacity: Int = 0) {
        if capacity > 0 { addBlock(capacity) }
    }

    deinit { for b in blocks { b.base.deallocate() } }

    /// Floats handed out since the last reset, and the most ever handed out between resets.
    public var floatsInUse: Int { totalUsed }
    public var peakFloats: Int { highWater }
    public var capacity: Int { blocks.reduce(0) { $0 + $1.capacity } }

    private func addBlock(_ n: Int) {
        let p = UnsafeMutablePointer<Float>.allocate(capacity: n + Arena.alignmentFloats)
        blocks.append((p, n))
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
        for b in blocks { b.base.deallocate() }
        blocks.removeAll()
        addBlock(highWater + Arena.alignmentFloats * 64)
        reset()
    }

    /// A view of `shape`, uninitialised.
    public func tensor(_ shape: Shape) -> Tensor {
        let n = shape.count
        let padded = (n + Arena.alignmentFloats - 1) / Arena.alignmentFloats * Arena.alignmentFloats
        while true {
            if block < blocks.count {
                let b = blocks[block]
                let aligned = Arena.align(b.base)
                if used + padded <= b.capacity {
                    let t = Tensor(aligned + used, shape)
                    used += padded
                    totalUsed += padded
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

    /// A view of `shape` filled with zeros.
    public func zeros(_ shape: Shape) -> Tensor {
        let t = tensor(shape)
        t.fill(0)
        return t
    }

    private static func align(_ p: UnsafeMutablePointer<Float>) -> UnsafeMutablePointer<Float> {
        let bytes = alignmentFloats * MemoryLayout<Float>.size
        let raw = UInt(bitPattern: p)
        let aligned = (raw + UInt(bytes - 1)) & ~UInt(bytes - 1)
        return UnsafeMutablePointer(bitPattern: aligned)!
    }
}
