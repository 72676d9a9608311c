import Foundation
import RadarEngine

/// How products are computed on the device (`--precision`):
/// - `fp32`: fp32 operands and accumulation (matches the CPU backend within the golden tolerances).
/// - `tf32`: fp32 storage, GEMM operands rounded to TF32 (10-bit mantissa) on tensor cores, fp32
///   accumulation (PyTorch's `allow_tf32`).
/// - `bf16`: mixed precision as PyTorch AMP runs it on these layers: GEMM and convolution operands
///   in bf16, fp32 accumulation and outputs; fp32 master weights, optimizer state, LayerNorm,
///   softmax, BatchNorm statistics and losses.
public enum Precision: String, CaseIterable, Sendable {
    case fp32, tf32, bf16
}

/// The element type of a product's A and B operands.
public enum GemmOperands: Sendable {
    case fp32, tf32, bf16
}

/// One `cublasGemmStridedBatchedEx` call, in cuBLAS's own conventions: column-major matrices,
/// `C_i = alpha op(A_i) op(B_i) + beta C_i` for i in 0..<batch, op(A) m x k, op(B) k x n,
/// C m x n, each matrix i at its base + i * stride elements. C is fp32, or bf16 with bf16
/// operands (`outputBF16`: C read as its fp32 value, the fp32 result rounded once to nearest even,
/// as cuBLAS's CUDA_R_16BF output).
public struct StridedGemm {
    public var transA: Bool, transB: Bool
    public var m: Int, n: Int, k: Int
    public var alpha: Float
    public var a: UnsafeRawPointer, lda: Int, strideA: Int
    public var b: UnsafeRawPointer, ldb: Int, strideB: Int
    public var beta: Float
    public var c: UnsafeMutablePointer<Float>, ldc: Int, strideC: Int
    public var batch: Int
    public var operands: GemmOperands
    /// C holds bf16 elements (only with bf16 operands); its address is still typed as floats.
    public var outputBF16: Bool
    /// Epilogues (cuBLASLt; only where `CUDADriver.supportsGemmEpilogues`): `bias`, of C's element
    /// type and m elements, added to every column of the result (a Linear's bias: row-major, its
    /// output features); `d`, the result's address when not C (same layout; C then only read,
    /// with beta: a residual).
    public var bias: UnsafeRawPointer? = nil
    public var d: UnsafeMutablePointer<Float>? = nil

    public init(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float, a: UnsafeRawPointer, lda: Int, strideA: Int = 0,
                b: UnsafeRawPointer, ldb: Int, strideB: Int = 0, beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int, strideC: Int = 0,
                batch: Int = 1, operands: GemmOperands = .fp32, outputBF16: Bool = false) {
        precondition(!outputBF16 || operands == .bf16, "a bf16 C needs bf16 operands")
        self.transA = transA; self.transB = transB
        self.m = m; self.n = n; self.k = k
        self.alpha = alpha
        self.a = a; self.lda = lda; self.strideA = strideA
        self.b = b; self.ldb = ldb; self.strideB = strideB
        self.beta = beta
        self.c = c; self.ldc = ldc; self.strideC = strideC
        self.batch = batch
        self.operands = operands
        self.outputBF16 = outputBF16
    }
}

/// A device allocation that did not fit.
public struct DeviceOutOfMemory: Error, CustomStringConvertible {
    public let device: String, requested: Int, free: Int, total: Int
    /// What the bytes were for, when not a tensor (e.g. "cuFFT work area").
    public var purpose = ""
    public init(device: String, requested: Int, free: Int, total: Int, purpose: String = "") {
        self.device = device; self.requested = requested; self.free = free; self.total = total; self.purpose = purpose
    }
    public var description: String {
        "out of device memory on \(device): \(Bytes.text(requested)) requested\(purpose.isEmpty ? "" : " for the \(purpose)"), \(Bytes.text(free)) free of \(Bytes.text(total))"
    }
}

/// The calls the CUDA backend makes, on one device and one stream: memory, kernel launches,
/// cuBLAS products and cuFFT transforms. Two implementations: `DriverAPI` (libcuda, cuBLAS and
/// cuFFT through dlopen, a real GPU) and `EmulatedDevice` (the kernels compiled for the host,
/// fenced memory, cuBLAS/cuFFT semantics from OpenBLAS/FFTW). Everything is queued on the one
/// stream in call order; `download` and `synchronize` wait for it.
public protocol CUDADriver: AnyObject {
    /// e.g. "cuda:0 (NVIDIA H200, sm_90, 139.8 GiB)".
    var deviceDescription: String { get }
    /// The GPU's PCI address ("0000:3B:00.0", cuDeviceGetPCIBusId); nil on the emulated device.
    var pciBusId: String? { get }
    /// (major, minor) compute capability.
    var computeCapability: (major: Int, minor: Int) { get }
    /// (free, total) device memory in bytes.
    func memoryInfo() -> (free: Int, total: Int)
    /// Device bytes the libraries hold for their own work (cuBLAS's workspace, cuFFT's work
    /// area), allocated by us so that they count and an out-of-memory names them.
    var libraryWorkspaceBytes: Int { get }

    /// Device memory (256-byte aligned), zero-filled.
    func allocate(bytes: Int) throws -> UnsafeMutableRawPointer
    func free(_ address: UnsafeMutableRawPointer)
    /// Host -> device, queued; the host buffer may be reused when this returns.
    func upload(_ source: UnsafeRawPointer, to destination: UnsafeMutableRawPointer, bytes: Int)
    /// Device -> host after all queued work (waits).
    func download(_ source: UnsafeRawPointer, to destination: UnsafeMutableRawPointer, bytes: Int)
    /// Waits for all queued work.
    func synchronize()

    /// cuLaunchKernel of `kernel` (its extern "C" name) on a 1-D grid of 1-D blocks.
    func launch(_ kernel: String, grid: Int, block: Int, _ args: KernelArgs)
    /// Kernel launches and cuBLAS products queued so far (`radar bench step` reports a step's).
    var queued: (launches: Int, products: Int) { get }
    /// cublasGemmStridedBatchedEx (column-major; fixed algorithm and workspace: deterministic);
    /// with a bias or an out-of-place D, cublasLtMatmul (one algorithm per shape, chosen once).
    func gemm(_ g: StridedGemm)
    /// Whether `gemm` takes `bias` and `d` (cuBLASLt loaded; always on the emulated device).
    var supportsGemmEpilogues: Bool { get }
    /// Whether cuBLASLt has an algorithm for `g`, a product with an epilogue (asked once per shape:
    /// its heuristic may offer none for some types, sizes or alignments on some GPUs); where it
    /// has none the backend adds the bias by a fill before a plain product instead.
    func gemmEpilogueAvailable(_ g: StridedGemm) -> Bool
    /// The cuBLASLt algorithms its heuristic offers for `g` (its types, epilogue, sizes and the
    /// operands' alignment), best first, at most `limit`; empty where cuBLASLt is not loaded.
    /// `radar bench gemm` times them.
    func gemmAlgorithms(_ g: StridedGemm, limit: Int) -> [GemmAlgorithm]
    /// `g` through cublasLtMatmul with `algorithm` (one `gemmAlgorithms` offered for g's shape).
    func gemm(_ g: StridedGemm, algorithm: GemmAlgorithm)
    /// Algorithms pinned per product shape (`GemmTable`, RADAR_GEMM_TABLE): a product whose shape
    /// is in it runs through cuBLASLt with that algorithm.
    var gemmTable: GemmTable? { get set }
    /// Products run with a pinned algorithm so far.
    var pinnedProducts: Int { get }
    /// Milliseconds of device time `body`'s queued work takes, between two events (waits for it);
    /// on the emulated device, which runs work as it is queued, the wall-clock time of `body`.
    func elapsedMilliseconds(_ body: () -> Void) -> Double
    /// cufftExecR2C of `batch` size x size real planes into size x (size/2+1) complex planes
    /// (interleaved re, im).
    func fftRealToComplex(_ input: UnsafeRawPointer, _ output: UnsafeMutableRawPointer, size: Int, batch: Int)

    // Two more streams for gradient copies (`GradientStaging`), one down and one up, so a bucket's
    // download never queues behind another's upload (PCIe moves both ways at once), and for each
    // of `slots` buckets three events: a mark recorded on the compute stream, the download's
    // landing on the down stream, the upload on the up stream.
    /// Creates the copy streams and the events (once; more slots later adds events).
    func prepareCopyStream(slots: Int)
    /// Page-locked host memory (cuMemHostAlloc), `bytes`.
    func allocatePinned(bytes: Int) -> UnsafeMutableRawPointer
    func freePinned(_ p: UnsafeMutableRawPointer)
    /// Records mark `slot` on the compute stream (after everything queued so far), and queues on
    /// the down stream, after it, the copy device -> host of the bucket; returns at once (the
    /// training thread calls it as backward finishes the bucket, so the copy starts then, while
    /// the communication thread may still be reducing an earlier bucket).
    func copyDownAfterMark(_ slot: Int, _ source: UnsafeRawPointer, to destination: UnsafeMutableRawPointer, bytes: Int)
    /// Returns when bucket `slot`'s download (`copyDownAfterMark`) has landed in host memory.
    func awaitCopyDown(_ slot: Int)
    /// On the up stream: host -> device, then records upload `slot`; returns at once.
    func copyUp(_ source: UnsafeRawPointer, to destination: UnsafeMutableRawPointer, bytes: Int, slot: Int)
    /// The compute stream waits for upload `slot` (no host wait).
    func computeWaitsForUpload(_ slot: Int)
}

/// One kernel argument, passed as cuLaunchKernel passes them (a pointer to the value).
public enum KernelArg {
    case ptr(UnsafeMutablePointer<Float>?)
    case raw(UnsafeMutableRawPointer?)
    case doubles(UnsafeMutablePointer<Double>)
    case i32(Int)
    case i64(Int)
    case f32(Float)
    case u32(UInt32)
    case u64(UInt64)
}

/// A launch's arguments, held inline: up to `capacity` (the most any kernel takes is 13), so a launch
/// makes no heap allocation. `KernelArgs(.ptr(x), .i32(n))` lists them in the kernel's order. Not an
/// array literal on purpose: a literal builds an `[KernelArg]` first, on the heap in a debug build
/// and in a dozen launchers of a release build (the optimizer keeps it on the stack only where its
/// escape analysis can); a tiny bf16 step made 138 such allocations in release, 576 in debug.
/// Iterated by index (`self[i]`), never through `Collection`'s iterator in the launch path: in a
/// debug build that goes through the subscript's `read` coroutine, whose frame is a heap allocation.
public struct KernelArgs: RandomAccessCollection {
    public static let capacity = 16
    private typealias Storage = (KernelArg, KernelArg, KernelArg, KernelArg, KernelArg, KernelArg, KernelArg, KernelArg,
                                 KernelArg, KernelArg, KernelArg, KernelArg, KernelArg, KernelArg, KernelArg, KernelArg)
    private var storage: Storage = (.u64(0), .u64(0), .u64(0), .u64(0), .u64(0), .u64(0), .u64(0), .u64(0),
                                    .u64(0), .u64(0), .u64(0), .u64(0), .u64(0), .u64(0), .u64(0), .u64(0))
    public private(set) var count = 0

    /// The arguments in order; the first absent one ends them (an argument after it is refused, so
    /// an optional that happens to be nil cannot shift the rest).
    public init(_ a0: KernelArg? = nil, _ a1: KernelArg? = nil, _ a2: KernelArg? = nil, _ a3: KernelArg? = nil, _ a4: KernelArg? = nil,
                _ a5: KernelArg? = nil, _ a6: KernelArg? = nil, _ a7: KernelArg? = nil, _ a8: KernelArg? = nil, _ a9: KernelArg? = nil,
                _ a10: KernelArg? = nil, _ a11: KernelArg? = nil, _ a12: KernelArg? = nil, _ a13: KernelArg? = nil, _ a14: KernelArg? = nil, _ a15: KernelArg? = nil) {
        var ended = false
        take(a0, &ended); take(a1, &ended); take(a2, &ended); take(a3, &ended); take(a4, &ended); take(a5, &ended)
        take(a6, &ended); take(a7, &ended); take(a8, &ended); take(a9, &ended); take(a10, &ended); take(a11, &ended)
        take(a12, &ended); take(a13, &ended); take(a14, &ended); take(a15, &ended)
    }
    @inline(__always) private mutating func take(_ a: KernelArg?, _ ended: inout Bool) {
        guard let a else { ended = true; return }
        precondition(!ended, "a kernel argument after an absent one")
        append(a)
    }

    @inline(__always) public mutating func append(_ a: KernelArg) {
        precondition(count < KernelArgs.capacity, "a kernel launch with more than \(KernelArgs.capacity) arguments")
        withUnsafeMutableBytes(of: &storage) { $0.baseAddress!.assumingMemoryBound(to: KernelArg.self)[count] = a }
        count += 1
    }

    public var startIndex: Int { 0 }
    public var endIndex: Int { count }
    public subscript(i: Int) -> KernelArg {
        get {
            precondition(i >= 0 && i < count, "kernel argument \(i) of \(count)")
            return withUnsafeBytes(of: storage) { $0.baseAddress!.assumingMemoryBound(to: KernelArg.self)[i] }
        }
        set {
            precondition(i >= 0 && i < count, "kernel argument \(i) of \(count)")
            withUnsafeMutableBytes(of: &storage) { $0.baseAddress!.assumingMemoryBound(to: KernelArg.self)[i] = newValue }
        }
    }

    @inline(__always) public static func + (l: KernelArgs, r: KernelArgs) -> KernelArgs {
        var all = l
        for i in 0..<r.count { all.append(r[i]) }
        return all
    }

    /// Runs `body` with the `void**` array cuLaunchKernel takes (each entry points at a value).
    func withArgumentArray<R>(_ body: (UnsafeMutablePointer<UnsafeMutableRawPointer?>) -> R) -> R {
        var slots: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64,
                    UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        var argv: (UnsafeMutableRawPointer?, UnsafeMutableRawPointer?, UnsafeMutableRawPointer?, UnsafeMutableRawPointer?,
                   UnsafeMutableRawPointer?, UnsafeMutableRawPointer?, UnsafeMutableRawPointer?, UnsafeMutableRawPointer?,
                   UnsafeMutableRawPointer?, UnsafeMutableRawPointer?, UnsafeMutableRawPointer?, UnsafeMutableRawPointer?,
                   UnsafeMutableRawPointer?, UnsafeMutableRawPointer?, UnsafeMutableRawPointer?, UnsafeMutableRawPointer?) =
            (nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil)
        return withUnsafeMutableBytes(of: &slots) { slotBytes in
            withUnsafeMutableBytes(of: &argv) { argvBytes in
                let argv = argvBytes.baseAddress!.assumingMemoryBound(to: UnsafeMutableRawPointer?.self)
                for i in 0..<count {
                    let p = slotBytes.baseAddress! + 8 * i
                    switch self[i] {
                    case .ptr(let v): p.storeBytes(of: v, as: UnsafeMutablePointer<Float>?.self)
                    case .raw(let v): p.storeBytes(of: v, as: UnsafeMutableRawPointer?.self)
                    case .doubles(let v): p.storeBytes(of: v, as: UnsafeMutablePointer<Double>.self)
                    case .i32(let v): p.storeBytes(of: Int32(v), as: Int32.self)
                    case .i64(let v): p.storeBytes(of: v, as: Int.self)
                    case .f32(let v): p.storeBytes(of: v, as: Float.self)
                    case .u32(let v): p.storeBytes(of: v, as: UInt32.self)
                    case .u64(let v): p.storeBytes(of: v, as: UInt64.self)
                    }
                    argv[i] = p
                }
                return body(argv)
            }
        }
    }
}

/// Which driver `--device cuda` uses: `RADAR_CUDA_DRIVER=emulator` selects the emulated device
/// for any command and any test; otherwise the real driver (libcuda).
public enum CUDADrivers {
    public static var emulatorSelected: Bool { ProcessInfo.processInfo.environment["RADAR_CUDA_DRIVER"] == "emulator" }

    /// `--device cuda:N` on a machine (or emulator) without device N.
    public struct NoSuchDevice: Error, CustomStringConvertible {
        public let ordinal: Int, count: Int
        public var description: String {
            count == 0 ? "device cuda:\(ordinal): no CUDA device on this machine"
                : "device cuda:\(ordinal): this machine has \(count) CUDA device\(count == 1 ? "" : "s") (cuda:0\(count > 1 ? "...cuda:\(count - 1)" : ""))"
        }
    }

    /// How many GPUs this process sees (the emulator: `RADAR_EMULATED_DEVICES`).
    public static func deviceCount() throws -> Int {
        emulatorSelected ? EmulatedDevice.deviceCount : try DriverAPI.deviceCount()
    }

    /// The driver for device `ordinal`: the emulator when selected (or `emulated`), else the real one.
    public static func open(ordinal: Int, emulated: Bool = false) throws -> any CUDADriver {
        if emulated || emulatorSelected {
            let count = EmulatedDevice.deviceCount
            guard ordinal >= 0 && ordinal < count else { throw NoSuchDevice(ordinal: ordinal, count: count) }
            try EmulatedDevice.applyScheduleSetting()
            return EmulatedDevice(ordinal: ordinal)
        }
        return try DriverAPI(ordinal: ordinal)
    }
}

extension CUDADriver {
    public var pciBusId: String? { nil }
}
