import CCUDAEmulator
import Foundation
import RadarCPU
import RadarEngine

/// The emulated CUDA device behind the same driver calls as a real GPU (`CUDADriver`): device
/// memory in mappings the host cannot dereference (the fenced backend's fence: readable only while
/// a driver call runs, so a missed download crashes), kernels run by the emulator (the sources
/// NVRTC compiles, as host C++, each block's threads as fibers) through the same grid/block
/// arithmetic, cuBLAS semantics (column-major, the real argument conventions, TF32 and bf16
/// operands) by the CPU backend's single-threaded GEMM, and cuFFT's R2C by its FFTW plans.
///
/// `RADAR_EMULATED_MEMORY` (bytes, or with a K/M/G suffix; default 16G) is the device memory, so
/// out-of-memory paths can be tested; `RADAR_EMULATED_DEVICES` (default 1) the device count.
public final class EmulatedDevice: CUDADriver, @unchecked Sendable {
    /// The host library standing in for cuBLAS and cuFFT.
    public let host: CPUBackend
    public let ordinal: Int
    public let capacity: Int
    private var allocated = 0
    private var sizes: [UInt: Int] = [:]
    private let lock = NSLock()
    /// Host scratch for operand conversions (TF32 rounding, bf16 expansion).
    private var scratchA = HostScratch(), scratchB = HostScratch()

    /// A host buffer that only grows.
    struct HostScratch {
        var base: UnsafeMutablePointer<Float>?
        var capacity = 0
        mutating func at(least n: Int) -> UnsafeMutablePointer<Float> {
            if n > capacity {
                base?.deallocate()
                base = .allocate(capacity: n)
                capacity = n
            }
            return base!
        }
    }

    public static var deviceCount: Int { Int(ProcessInfo.processInfo.environment["RADAR_EMULATED_DEVICES"] ?? "") ?? 1 }

    public static var memoryCapacity: Int {
        guard let v = ProcessInfo.processInfo.environment["RADAR_EMULATED_MEMORY"], let last = v.last else { return 16 << 30 }
        let shift = ["K": 10, "M": 20, "G": 30][String(last).uppercased()]
        let digits = shift == nil ? v : String(v.dropLast())
        return (Int(digits) ?? 16) << (shift ?? 0)
    }

    /// Device `ordinal` with `memory` bytes (default: `RADAR_EMULATED_MEMORY`, else 16 GiB).
    public init(ordinal: Int = 0, memory: Int? = nil) {
        host = CPUBackend(threads: 1)
        self.ordinal = ordinal
        capacity = memory ?? EmulatedDevice.memoryCapacity
    }

    deinit {
        scratchA.base?.deallocate()
        scratchB.base?.deallocate()
    }

    public var deviceDescription: String { "cuda:\(ordinal) (emulated device, \(Bytes.text(capacity)))" }
    public var computeCapability: (major: Int, minor: Int) { (9, 0) }

    public func memoryInfo() -> (free: Int, total: Int) {
        lock.lock(); defer { lock.unlock() }
        return (capacity - allocated, capacity)
    }

    // MARK: Memory

    public func allocate(bytes: Int) throws -> UnsafeMutableRawPointer {
        let n = max(bytes, 4)
        lock.lock()
        guard allocated + n <= capacity else {
            let free = capacity - allocated
            lock.unlock()
            throw DeviceOutOfMemory(device: deviceDescription, requested: n, free: free, total: capacity)
        }
        allocated += n
        lock.unlock()
        let p = UnsafeMutableRawPointer(Fence.shared.map(floats: (n + 3) / 4))
        lock.lock(); sizes[UInt(bitPattern: p)] = n; lock.unlock()
        return p
    }

    public func free(_ address: UnsafeMutableRawPointer) {
        lock.lock()
        if let n = sizes.removeValue(forKey: UInt(bitPattern: address)) { allocated -= n }
        lock.unlock()
        Fence.shared.unmap(address.assumingMemoryBound(to: Float.self))
    }

    public func upload(_ source: UnsafeRawPointer, to destination: UnsafeMutableRawPointer, bytes: Int) {
        inside { destination.copyMemory(from: source, byteCount: bytes) }
    }

    public func download(_ source: UnsafeRawPointer, to destination: UnsafeMutableRawPointer, bytes: Int) {
        inside { destination.copyMemory(from: source, byteCount: bytes) }
    }

    public func synchronize() {}

    /// Runs `body` with device memory accessible (a driver call in progress).
    @inline(__always)
    public func inside<T>(_ body: () -> T) -> T {
        Fence.shared.open()
        defer { Fence.shared.close() }
        return body()
    }

    // MARK: Kernels

    public struct LaunchFailed: Error, CustomStringConvertible {
        public let kernel: String, message: String
        public var description: String { "kernel \(kernel) failed on the emulated device: \(message)" }
    }

    private var launchers: [String: radar_emu_kernel] = [:]

    /// cuLaunchKernel: `grid` blocks of `block` threads. A failed launch (deadlock, barrier
    /// misuse) is a programming error in a kernel: it stops the process with the emulator's report.
    public func launch(_ name: String, grid: Int, block: Int, _ args: [KernelArg]) {
        guard grid > 0 else { return }
        precondition(block > 0 && block <= 1024, "kernel \(name): \(block) threads per block (1...1024)")
        let kernel: radar_emu_kernel
        if let k = launchers[name] { kernel = k } else {
            guard let k = radar_emu_lookup(name) else { fatalError("emulated device: no kernel \(name)") }
            launchers[name] = k
            kernel = k
        }
        let status = KernelArg.withArgumentArray(args) { argv in
            let g: [UInt32] = [UInt32(grid), 1, 1], b: [UInt32] = [UInt32(block), 1, 1]
            return inside { kernel(g, b, argv) }
        }
        if status != 0 { fatalError("\(LaunchFailed(kernel: name, message: String(cString: radar_emu_last_error())))") }
    }

    // MARK: cuBLAS

    /// Elements a column-major operand spans: `rows x cols` with leading dimension `ld`.
    static func span(rows: Int, cols: Int, ld: Int) -> Int { cols == 0 || rows == 0 ? 0 : ld * (cols - 1) + rows }

    /// TF32 as tensor cores read fp32 operands: the low 13 mantissa bits rounded off (nearest even).
    @inline(__always) static func roundTF32(_ v: Float) -> Float {
        guard v.isFinite else { return v }
        let u = v.bitPattern
        return Float(bitPattern: (u &+ 0xfff &+ ((u >> 13) & 1)) & ~0x1fff)
    }

    /// The operand at `p` (span `count`) as fp32 values the host GEMM can read.
    private func operand(_ p: UnsafeRawPointer, count: Int, _ type: GemmOperands, into buffer: inout HostScratch) -> UnsafePointer<Float> {
        switch type {
        case .fp32: return p.assumingMemoryBound(to: Float.self)
        case .tf32:
            let dst = buffer.at(least: count), src = p.assumingMemoryBound(to: Float.self)
            for i in 0..<count { dst[i] = EmulatedDevice.roundTF32(src[i]) }
            return UnsafePointer(dst)
        case .bf16:
            let dst = buffer.at(least: count), src = p.assumingMemoryBound(to: UInt16.self)
            for i in 0..<count { dst[i] = Float(bitPattern: UInt32(src[i]) << 16) }
            return UnsafePointer(dst)
        }
    }

    /// Column-major C = op(A) op(B) is row-major C^T = op(B)^T op(A)^T: the host's row-major GEMM
    /// with the operands swapped (the same call a row-major caller would make, so fp32 products
    /// are bit-identical to the CPU backend's).
    public func gemm(_ g: StridedGemm) {
        guard g.m > 0 && g.n > 0 && g.batch > 0 else { return }
        let elementBytes = g.operands == .bf16 ? 2 : 4
        let spanA = EmulatedDevice.span(rows: g.transA ? g.k : g.m, cols: g.transA ? g.m : g.k, ld: g.lda)
        let spanB = EmulatedDevice.span(rows: g.transB ? g.n : g.k, cols: g.transB ? g.k : g.n, ld: g.ldb)
        inside {
            for i in 0..<g.batch {
                let a = operand(g.a + i * g.strideA * elementBytes, count: spanA, g.operands, into: &scratchA)
                let b = operand(g.b + i * g.strideB * elementBytes, count: spanB, g.operands, into: &scratchB)
                host.gemmSerial(transA: g.transB, transB: g.transA, m: g.n, n: g.m, k: g.k, alpha: g.alpha, a: b, lda: g.ldb,
                                b: a, ldb: g.lda, beta: g.beta, c: g.c + i * g.strideC, ldc: g.ldc)
            }
        }
    }

    // MARK: cuFFT

    public func fftRealToComplex(_ input: UnsafeRawPointer, _ output: UnsafeMutableRawPointer, size: Int, batch: Int) {
        let plane = size * size, spectrum = size * (size / 2 + 1) * 2
        inside {
            for i in 0..<batch {
                host.fftRealToComplexPlane(input.assumingMemoryBound(to: Float.self) + i * plane,
                                           output.assumingMemoryBound(to: Float.self) + i * spectrum, size: size)
            }
        }
    }
}
