import CCUDAEmulator
import Foundation
import RadarCPU
import RadarEngine

/// The emulated CUDA device behind the same driver calls as a real GPU (`CUDADriver`): device
/// memory the host cannot dereference (each allocation is a memfd mapped twice: at its device
/// address with no access, so any host use of a device address crashes, and at a private alias the
/// driver calls translate device addresses to: kernel pointer arguments, cuBLAS and cuFFT operands,
/// copies), kernels run by the emulator (the sources
/// NVRTC compiles, as host C++, each block's threads as fibers) through the same grid/block
/// arithmetic, cuBLAS semantics (column-major, the real argument conventions, TF32 and bf16
/// operands) by the CPU backend's single-threaded GEMM, and cuFFT's R2C by its FFTW plans.
///
/// `RADAR_EMULATED_MEMORY` (bytes, or with a K/M/G suffix; default 16G) is the device memory, so
/// out-of-memory paths can be tested; `RADAR_EMULATED_DEVICES` (default 1) the device count;
/// `RADAR_EMULATED_SCHEDULE` (`forward`, `reversed`, `shuffled[:SEED]`) the order blocks and threads
/// run in (a kernel whose output depends on it has a race a GPU would show).
public final class EmulatedDevice: CUDADriver, @unchecked Sendable {
    /// The host library standing in for cuBLAS and cuFFT.
    public let cpu: CPUBackend
    public let ordinal: Int
    public let capacity: Int
    /// Host scratch for operand conversions (TF32 rounding, bf16 expansion).
    private var scratchA = HostScratch(), scratchB = HostScratch()
    /// Host scratch for a bf16 C's fp32 values.
    private var scratchC = HostScratch()

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

    /// `RADAR_EMULATED_SCHEDULE` checked and given to the emulator (a wrong value is an error
    /// naming it, not a silent default).
    public static func applyScheduleSetting() throws {
        guard let text = ProcessInfo.processInfo.environment["RADAR_EMULATED_SCHEDULE"], !text.isEmpty else { return }
        guard radar_emu_set_schedule_text(text) == 0 else {
            throw BadSchedule(text: text)
        }
    }

    public struct BadSchedule: Error, CustomStringConvertible {
        public let text: String
        public var description: String { "RADAR_EMULATED_SCHEDULE: '\(text)' is not forward, reversed or shuffled[:SEED] (SEED a decimal number)" }
    }

    public static var memoryCapacity: Int {
        ProcessInfo.processInfo.environment["RADAR_EMULATED_MEMORY"].flatMap(HostMemory.parseBytes) ?? 16 << 30
    }

    /// Device `ordinal` with `memory` bytes (default: `RADAR_EMULATED_MEMORY`, else 16 GiB).
    public init(ordinal: Int = 0, memory: Int? = nil) {
        cpu = CPUBackend(threads: 1)
        self.ordinal = ordinal
        capacity = memory ?? EmulatedDevice.memoryCapacity
    }

    deinit {
        scratchA.base?.deallocate()
        scratchB.base?.deallocate()
        scratchC.base?.deallocate()
    }

    public var deviceDescription: String { "cuda:\(ordinal) (emulated device, \(Bytes.text(capacity)))" }
    public var computeCapability: (major: Int, minor: Int) { (9, 0) }

    public func memoryInfo() -> (free: Int, total: Int) {
        EmulatedDevice.heapLock.lock(); defer { EmulatedDevice.heapLock.unlock() }
        return (capacity - EmulatedDevice.heap.allocated, capacity)
    }
    /// The host products (OpenBLAS, FFTW) keep their scratch in host memory.
    public var libraryWorkspaceBytes: Int { 0 }

    // MARK: Memory

    /// Device memory of the process (every EmulatedDevice shares it, as backends on one GPU share
    /// its memory): regions sorted by device base, and the bytes in use.
    struct Heap {
        var regions: [(base: UInt, bytes: Int, alias: UnsafeMutableRawPointer)] = []
        var allocated = 0
    }
    nonisolated(unsafe) static var heap = Heap()
    static let heapLock = NSLock()

    public func allocate(bytes: Int) throws -> UnsafeMutableRawPointer {
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let n = (max(bytes, 4) + page - 1) / page * page
        EmulatedDevice.heapLock.lock()
        defer { EmulatedDevice.heapLock.unlock() }
        guard EmulatedDevice.heap.allocated + n <= capacity else {
            throw DeviceOutOfMemory(device: deviceDescription, requested: n, free: capacity - EmulatedDevice.heap.allocated, total: capacity)
        }
        let fd = radar_emu_memory_file(UInt(n))
        guard fd >= 0 else { fatalError("emulated device: memfd: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        guard let device = mmap(nil, n, PROT_NONE, MAP_SHARED, fd, 0), device != MAP_FAILED,
              let alias = mmap(nil, n, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), alias != MAP_FAILED
        else { fatalError("emulated device: cannot map \(n) bytes: \(String(cString: strerror(errno)))") }
        EmulatedDevice.heap.allocated += n
        let base = UInt(bitPattern: device)
        let at = EmulatedDevice.heap.regions.firstIndex { $0.base > base } ?? EmulatedDevice.heap.regions.count
        EmulatedDevice.heap.regions.insert((base, n, alias), at: at)
        return device
    }

    public func free(_ address: UnsafeMutableRawPointer) {
        EmulatedDevice.heapLock.lock()
        defer { EmulatedDevice.heapLock.unlock() }
        guard let i = EmulatedDevice.heap.regions.firstIndex(where: { $0.base == UInt(bitPattern: address) }) else {
            fatalError("emulated device: free of memory it did not allocate")
        }
        let r = EmulatedDevice.heap.regions.remove(at: i)
        munmap(address, r.bytes)
        munmap(r.alias, r.bytes)
        EmulatedDevice.heap.allocated -= r.bytes
    }

    /// The host alias of device address `p` (nil stays nil). A pointer into no allocation is a bug
    /// in the caller (a host pointer passed as device memory): stop and say where.
    @inline(__always)
    func host(_ p: UnsafeRawPointer?, _ what: @autoclosure () -> String) -> UnsafeMutableRawPointer? {
        guard let p else { return nil }
        let a = UInt(bitPattern: p)
        EmulatedDevice.heapLock.lock()
        defer { EmulatedDevice.heapLock.unlock() }
        let regions = EmulatedDevice.heap.regions
        var lo = 0, hi = regions.count  // last region with base <= a
        while lo < hi {
            let mid = (lo + hi) / 2
            if regions[mid].base <= a { lo = mid + 1 } else { hi = mid }
        }
        guard lo > 0, a < regions[lo - 1].base + UInt(regions[lo - 1].bytes) else {
            fatalError("emulated device: \(what()) is not device memory (\(p))")
        }
        return regions[lo - 1].alias + Int(a - regions[lo - 1].base)
    }

    public func upload(_ source: UnsafeRawPointer, to destination: UnsafeMutableRawPointer, bytes: Int) {
        host(destination, "upload destination")!.copyMemory(from: source, byteCount: bytes)
    }

    public func download(_ source: UnsafeRawPointer, to destination: UnsafeMutableRawPointer, bytes: Int) {
        destination.copyMemory(from: host(source, "download source")!, byteCount: bytes)
    }

    public func synchronize() {}

    // MARK: The gradient copy streams

    /// Kernels run when launched, so a mark is passed as soon as it is recorded and a copy lands
    /// when it is made. What the emulator checks is the protocol the real copy streams rely on, per
    /// slot: a download awaited only once queued behind a mark since the last wait (the bucket was
    /// reported final this step), every download awaited and every upload waited for by the
    /// compute stream before the slot is marked again. Breaking any stops the process naming the slot.
    private let copyLock = NSLock()
    private var landed: [Bool] = [], uploadPending: [Bool] = []

    public func prepareCopyStream(slots: Int) {
        copyLock.lock(); defer { copyLock.unlock() }
        while landed.count < slots { landed.append(false); uploadPending.append(false) }
    }

    public func allocatePinned(bytes: Int) -> UnsafeMutableRawPointer {
        UnsafeMutableRawPointer.allocate(byteCount: max(bytes, 4), alignment: 4096)
    }

    public func freePinned(_ p: UnsafeMutableRawPointer) { p.deallocate() }

    /// Work runs as it is queued here, so the download lands at once; `awaitCopyDown` checks that
    /// it was queued (a bucket awaited before backward marked it final stops the process).
    public func copyDownAfterMark(_ slot: Int, _ source: UnsafeRawPointer, to destination: UnsafeMutableRawPointer, bytes: Int) {
        copyLock.lock()
        precondition(slot < landed.count, "emulated device: mark \(slot) of \(landed.count) prepared")
        let pending = uploadPending[slot], unread = landed[slot]
        copyLock.unlock()
        if pending { fatalError("emulated device: bucket \(slot) marked again while its upload was never waited for by the compute stream") }
        if unread { fatalError("emulated device: bucket \(slot) marked again while its last download was never awaited") }
        destination.copyMemory(from: host(source, "copy-stream source")!, byteCount: bytes)
        copyLock.lock(); landed[slot] = true; copyLock.unlock()
    }

    public func awaitCopyDown(_ slot: Int) {
        copyLock.lock()
        let ok = slot < landed.count && landed[slot]
        if ok { landed[slot] = false }
        copyLock.unlock()
        if !ok { fatalError("emulated device: copy of bucket \(slot) awaited before backward marked it final") }
    }

    public func copyUp(_ source: UnsafeRawPointer, to destination: UnsafeMutableRawPointer, bytes: Int, slot: Int) {
        host(destination, "copy-stream destination")!.copyMemory(from: source, byteCount: bytes)
        copyLock.lock(); uploadPending[slot] = true; copyLock.unlock()
    }

    public func computeWaitsForUpload(_ slot: Int) {
        copyLock.lock(); uploadPending[slot] = false; copyLock.unlock()
    }

    // MARK: Kernels

    public struct LaunchFailed: Error, CustomStringConvertible {
        public let kernel: String, message: String
        public var description: String { "kernel \(kernel) failed on the emulated device: \(message)" }
    }

    private var launchers: [String: radar_emu_kernel] = [:]

    /// One kernel launch: its name and geometry.
    public struct Launch: Equatable {
        public let kernel: String, grid: Int, block: Int
        public var threads: Int { grid * block }
    }
    /// While non-nil, every launch is appended (the tests audit how kernels spread their work).
    public var launchLog: [Launch]?
    public var supportsGemmEpilogues: Bool { true }
    public var gemmTable: GemmTable?
    public private(set) var pinnedProducts = 0

    /// Shapes for which this device's cuBLASLt offers no algorithm, as a real one's heuristic may
    /// for some (tests: the backend must fall back to the fill).
    public var refusesEpilogue: ((StridedGemm) -> Bool)?
    public func gemmEpilogueAvailable(_ g: StridedGemm) -> Bool { !(refusesEpilogue?(g) ?? false) }

    /// One offer, whatever the shape: the emulated device has one way to compute a product.
    public func gemmAlgorithms(_ g: StridedGemm, limit: Int) -> [GemmAlgorithm] {
        guard g.m > 0 && g.n > 0 && g.batch > 0 && limit > 0 else { return [] }
        return [GemmAlgorithm(bytes: [UInt8](repeating: 0, count: BlasLt.algoBytes), workspaceBytes: 0, index: 0)]
    }

    public func gemm(_ g: StridedGemm, algorithm: GemmAlgorithm) { gemm(g) }

    /// The work runs as it is queued: the wall-clock time of `body`.
    public func elapsedMilliseconds(_ body: () -> Void) -> Double {
        let started = DispatchTime.now().uptimeNanoseconds
        body()
        return Double(DispatchTime.now().uptimeNanoseconds - started) / 1e6
    }
    public private(set) var queued = (launches: 0, products: 0)

    /// cuLaunchKernel: `grid` blocks of `block` threads. A failed launch (deadlock, barrier
    /// misuse) is a programming error in a kernel: it stops the process with the emulator's report.
    public func launch(_ name: String, grid: Int, block: Int, _ args: KernelArgs) {
        guard grid > 0 else { return }
        precondition(block > 0 && block <= 1024, "kernel \(name): \(block) threads per block (1...1024)")
        launchLog?.append(Launch(kernel: name, grid: grid, block: block))
        queued.launches += 1
        let kernel: radar_emu_kernel
        if let k = launchers[name] { kernel = k } else {
            guard let k = radar_emu_lookup(name) else { fatalError("emulated device: no kernel \(name)") }
            launchers[name] = k
            kernel = k
        }
        var translated = args
        for i in translated.indices {
            switch translated[i] {
            case .ptr(let p): translated[i] = .raw(host(p, "argument \(i) of \(name)"))
            case .raw(let p): translated[i] = .raw(host(p, "argument \(i) of \(name)"))
            case .doubles(let p): translated[i] = .raw(host(p, "argument \(i) of \(name)"))
            default: break
            }
        }
        let status = translated.withArgumentArray { argv in
            let g: [UInt32] = [UInt32(grid), 1, 1], b: [UInt32] = [UInt32(block), 1, 1]
            return kernel(g, b, argv)
        }
        if status != 0 { DeviceFailure.stop("\(LaunchFailed(kernel: name, message: String(cString: radar_emu_last_error())))") }
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
            for i in 0..<count { dst[i] = BFloat16.float(src[i]) }
            return UnsafePointer(dst)
        }
    }

    /// Column-major C = op(A) op(B) is row-major C^T = op(B)^T op(A)^T: the host's row-major GEMM
    /// with the operands swapped (the same call a row-major caller would make, so fp32 products
    /// are bit-identical to the CPU backend's).
    public func gemm(_ g: StridedGemm) {
        guard g.m > 0 && g.n > 0 && g.batch > 0 else { return }
        queued.products += 1
        if let table = gemmTable, !table.entries.isEmpty, table.entries[GemmTable.key(g)] != nil { pinnedProducts += 1 }
        let elementBytes = g.operands == .bf16 ? 2 : 4
        let spanA = EmulatedDevice.span(rows: g.transA ? g.k : g.m, cols: g.transA ? g.m : g.k, ld: g.lda)
        let spanB = EmulatedDevice.span(rows: g.transB ? g.n : g.k, cols: g.transB ? g.k : g.n, ld: g.ldb)
        let ha = UnsafeRawPointer(host(g.a, "cuBLAS A")!), hb = UnsafeRawPointer(host(g.b, "cuBLAS B")!)
        let hc = host(g.c, "cuBLAS C")!
        let epilogue = g.bias != nil || g.d != nil
        let hd = epilogue ? host(g.d ?? g.c, "cuBLASLt D")! : hc
        let hbias = g.bias.map { UnsafeRawPointer(host($0, "cuBLASLt bias")!) }
        for i in 0..<g.batch {
            let a = operand(ha + i * g.strideA * elementBytes, count: spanA, g.operands, into: &scratchA)
            let b = operand(hb + i * g.strideB * elementBytes, count: spanB, g.operands, into: &scratchB)
            if epilogue {
                // cuBLASLt: D = alpha op(A) op(B) + beta C in fp32, then + bias (of D's type) on
                // every column, rounded once into D's type.
                let c32 = scratchC.at(least: g.m * g.n), offset = i * g.strideC
                func load(_ p: UnsafeMutableRawPointer, _ at: Int) -> Float {
                    g.outputBF16 ? BFloat16.float(p.assumingMemoryBound(to: UInt16.self)[at]) : p.assumingMemoryBound(to: Float.self)[at]
                }
                for col in 0..<g.n {
                    for row in 0..<g.m { c32[col * g.m + row] = g.beta == 0 ? 0 : load(hc, offset + col * g.ldc + row) }
                }
                cpu.gemmSerial(transA: g.transB, transB: g.transA, m: g.n, n: g.m, k: g.k, alpha: g.alpha, a: b, lda: g.ldb,
                               b: a, ldb: g.lda, beta: g.beta, c: c32, ldc: g.m)
                for col in 0..<g.n {
                    for row in 0..<g.m {
                        var v = c32[col * g.m + row]
                        if let hbias {
                            v += g.outputBF16 ? BFloat16.float(hbias.assumingMemoryBound(to: UInt16.self)[row]) : hbias.assumingMemoryBound(to: Float.self)[row]
                        }
                        let at = offset + col * g.ldc + row
                        if g.outputBF16 { hd.assumingMemoryBound(to: UInt16.self)[at] = BFloat16.bits(v) } else { hd.assumingMemoryBound(to: Float.self)[at] = v }
                    }
                }
                continue
            }
            guard g.outputBF16 else {
                cpu.gemmSerial(transA: g.transB, transB: g.transA, m: g.n, n: g.m, k: g.k, alpha: g.alpha, a: b, lda: g.ldb,
                               b: a, ldb: g.lda, beta: g.beta, c: hc.assumingMemoryBound(to: Float.self) + i * g.strideC, ldc: g.ldc)
                continue
            }
            // A bf16 C: its fp32 values (when beta reads them), the same fp32 product, rounded once.
            let c16 = UnsafeMutableRawPointer(hc).assumingMemoryBound(to: UInt16.self) + i * g.strideC
            let c32 = scratchC.at(least: g.m * g.n)
            for col in 0..<g.n {
                for row in 0..<g.m { c32[col * g.m + row] = g.beta == 0 ? 0 : BFloat16.float(c16[col * g.ldc + row]) }
            }
            cpu.gemmSerial(transA: g.transB, transB: g.transA, m: g.n, n: g.m, k: g.k, alpha: g.alpha, a: b, lda: g.ldb,
                           b: a, ldb: g.lda, beta: g.beta, c: c32, ldc: g.m)
            for col in 0..<g.n {
                for row in 0..<g.m { c16[col * g.ldc + row] = BFloat16.bits(c32[col * g.m + row]) }
            }
        }
    }

    // MARK: cuFFT

    public func fftRealToComplex(_ input: UnsafeRawPointer, _ output: UnsafeMutableRawPointer, size: Int, batch: Int) {
        let plane = size * size, spectrum = size * (size / 2 + 1) * 2
        let hi = host(input, "cuFFT input")!.assumingMemoryBound(to: Float.self)
        let ho = host(output, "cuFFT output")!.assumingMemoryBound(to: Float.self)
        for i in 0..<batch { cpu.fftRealToComplexPlane(hi + i * plane, ho + i * spectrum, size: size) }
    }
}
