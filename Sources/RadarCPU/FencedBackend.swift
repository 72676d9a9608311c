import RadarEngine
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A test backend that proves the engine's seam: it runs every kernel on a wrapped CPU backend,
/// but keeps all tensor memory in mappings that are inaccessible (`PROT_NONE`) except while one of
/// its own calls runs. Host code that reads or writes tensor memory without going through the
/// backend (`upload`, `download`, a kernel) crashes with SIGSEGV instead of silently working, as it
/// would fail on a GPU. `hostAddress` is always nil, so callers take the device path.
///
/// The fence is process-wide (all fenced backends share it), so tensors from one fenced backend
/// can be read through another, as tests do.
public final class FencedBackend: Backend, @unchecked Sendable {
    public let inner: CPUBackend
    private let syncCount = Atomic<Int>(0)

    public init(wrapping inner: CPUBackend) { self.inner = inner }

    public var recomputesInBackward: Bool { inner.recomputesInBackward }
    public var storesBFloat16Activations: Bool { inner.storesBFloat16Activations }
    public var roundsProductOperandsToBFloat16: Bool { inner.roundsProductOperandsToBFloat16 }
    public var deviceDescription: String { "cpu-fenced (\(inner.threads) thread\(inner.threads == 1 ? "" : "s"))" }
    public var threads: Int { inner.threads }

    /// Runs `body` with every fenced mapping readable and writable.
    @inline(__always)
    func fenced<T>(_ body: () -> T) -> T {
        Fence.shared.open()
        defer { Fence.shared.close() }
        return body()
    }

    public func allocate(_ count: Int) -> UnsafeMutablePointer<Float> { Fence.shared.map(floats: max(count, 1)) }
    public func release(_ address: UnsafeMutablePointer<Float>) { Fence.shared.unmap(address) }

    public func upload(_ values: UnsafeBufferPointer<Float>, into t: Tensor) {
        precondition(values.count == t.count && t.dtype == .float32, "upload of \(values.count) values into \(t.dtype.name) \(t.shape)")
        fenced { if let b = values.baseAddress { t.base.update(from: b, count: t.count) } }
    }

    public func download(_ t: Tensor, into host: UnsafeMutableBufferPointer<Float>) {
        precondition(host.count >= t.count && t.dtype == .float32, "download of \(t.dtype.name) \(t.shape) into \(host.count) values")
        syncCount.wrappingAdd(1, ordering: .relaxed)
        fenced { if let b = host.baseAddress { b.update(from: t.base, count: t.count) } }
    }

    public func synchronize() { syncCount.wrappingAdd(1, ordering: .relaxed) }
    public var synchronizations: Int { syncCount.load(ordering: .relaxed) }
    public func hostAddress(_ t: Tensor) -> UnsafeMutablePointer<Float>? { nil }
}

/// The process-wide fence: every fenced mapping, and how many backend calls are in flight. The
/// mappings are readable and writable exactly while that count is above zero.
public final class Fence: @unchecked Sendable {
    public static let shared = Fence()
    private var lock = pthread_mutex_t()
    private var regions: [UInt: Int] = [:]  // base address -> bytes
    private var depth = 0
    private let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))

    private init() { pthread_mutex_init(&lock, nil) }

    private func protect(_ base: UInt, _ bytes: Int, _ prot: Int32) {
        if mprotect(UnsafeMutableRawPointer(bitPattern: base), bytes, prot) != 0 {
            fatalError("fenced backend: mprotect failed: \(String(cString: strerror(errno)))")
        }
    }

    public func open() {
        pthread_mutex_lock(&lock)
        if depth == 0 { for (b, n) in regions { protect(b, n, PROT_READ | PROT_WRITE) } }
        depth += 1
        pthread_mutex_unlock(&lock)
    }

    public func close() {
        pthread_mutex_lock(&lock)
        depth -= 1
        if depth == 0 { for (b, n) in regions { protect(b, n, PROT_NONE) } }
        pthread_mutex_unlock(&lock)
    }

    /// Zero-filled pages of their own, inaccessible unless the fence is open.
    public func map(floats: Int) -> UnsafeMutablePointer<Float> {
        let bytes = (floats * MemoryLayout<Float>.size + pageSize - 1) / pageSize * pageSize
        pthread_mutex_lock(&lock)
        defer { pthread_mutex_unlock(&lock) }
        let prot = depth > 0 ? PROT_READ | PROT_WRITE : PROT_NONE
        guard let p = mmap(nil, bytes, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), p != MAP_FAILED else {
            fatalError("fenced backend: cannot map \(bytes) bytes: \(String(cString: strerror(errno)))")
        }
        regions[UInt(bitPattern: p)] = bytes
        return p.bindMemory(to: Float.self, capacity: floats)
    }

    public func unmap(_ address: UnsafeMutablePointer<Float>) {
        pthread_mutex_lock(&lock)
        defer { pthread_mutex_unlock(&lock) }
        let key = UInt(bitPattern: address)
        guard let bytes = regions.removeValue(forKey: key) else { fatalError("fenced backend: release of unknown memory") }
        munmap(UnsafeMutableRawPointer(address), bytes)
    }
}
