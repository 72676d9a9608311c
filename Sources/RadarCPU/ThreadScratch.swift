import RadarEngine
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Per-thread scratch memory for kernels that run inside pool tasks. Each thread keeps one
/// buffer that only grows, so after warm-up no call allocates.
enum ThreadScratch {
    private final class Buffer {
        var base: UnsafeMutablePointer<Float>
        var capacity: Int
        init(_ n: Int) { base = .allocate(capacity: n); capacity = n }
        deinit { base.deallocate() }
    }

    /// One key per slot: a kernel that needs two or three buffers at once takes distinct slots
    /// (0: the NN-product transposition, 1 and 2: a product's converted operands, 3: an operand
    /// two products read, converted once, 4 and 5: the operands of a bf16 product oneDNN refused,
    /// widened, 6: a serial product's fp32 output before it is rounded into a bf16 C).
    private static let keys: [pthread_key_t] = (0..<7).map { _ in
        var k = pthread_key_t()
        pthread_key_create(&k) { raw in
            #if canImport(Darwin)
            Unmanaged<AnyObject>.fromOpaque(raw).release()
            #else
            if let raw { Unmanaged<AnyObject>.fromOpaque(raw).release() }
            #endif
        }
        return k
    }

    /// At least `count` floats owned by the calling thread in `slot`; valid until its next call
    /// with that slot.
    static func floats(_ count: Int, slot: Int = 0) -> UnsafeMutablePointer<Float> {
        let key = keys[slot]
        if let raw = pthread_getspecific(key) {
            let b = Unmanaged<Buffer>.fromOpaque(raw).takeUnretainedValue()
            if b.capacity >= count { return b.base }
            b.base.deallocate()
            b.capacity = max(count, b.capacity * 2)
            b.base = .allocate(capacity: b.capacity)
            return b.base
        }
        let b = Buffer(max(count, 4096))
        pthread_setspecific(key, Unmanaged.passRetained(b).toOpaque())
        return b.base
    }
}
