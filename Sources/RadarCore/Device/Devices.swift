import Foundation

/// Where a command's model runs: `--device` on every command that computes, `RADAR_DEVICE` as the
/// default (tests set it to run whole suites on another backend); and in what precision
/// (`--precision`, `RADAR_PRECISION` as the default).
///
/// - `cpu`: the CPU backend (OpenBLAS, FFTW, our worker pool). fp32.
/// - `cuda`, `cuda:N`: the CUDA backend on GPU N (0 by default) through the driver API, cuBLAS,
///   cuFFT and NVRTC, all loaded at run time. With `RADAR_CUDA_DRIVER=emulator`, the same backend
///   on the emulated device (its kernels compiled for the host, device memory fenced off from the
///   host, cuBLAS/cuFFT semantics from OpenBLAS/FFTW).
/// - `cuda-emulated`: `cuda` on the emulated device whatever `RADAR_CUDA_DRIVER` says. Slow: for
///   tests of the CUDA backend without a GPU.
/// - `cpu-fenced`: the CPU backend behind a fence: tensor memory is inaccessible to the host
///   except while one of the backend's own calls runs, so any host access that bypasses the
///   backend crashes instead of hiding. Slow; for tests and for checking new code paths.
///
/// Precision: `fp32`, `tf32` (CUDA only) or `bf16`, or `auto`: bf16 on a real GPU of compute
/// capability 8.0 or newer (as the reference trains with AMP), fp32 everywhere else (the CPU and
/// the emulated device included: it exists to check the CUDA backend against the CPU backend).
/// bf16 on the CPU runs its products through oneDNN where the CPU has AMX-BF16 or AVX512-BF16,
/// and falls back to fp32 with a one-line notice elsewhere (`CPUProducts.bf16`).
public enum Devices {
    public static let names = ["cpu", "cpu-fenced", "cuda", "cuda:N", "cuda-emulated"]

    /// `RADAR_DEVICE`, else cpu (set but empty counts as unset, as a shell's `VAR=` means).
    public static var defaultName: String { setting("RADAR_DEVICE") ?? "cpu" }
    /// `RADAR_PRECISION`, else auto (empty: unset).
    public static var defaultPrecision: String { setting("RADAR_PRECISION") ?? "auto" }

    static func setting(_ name: String) -> String? {
        guard let v = ProcessInfo.processInfo.environment[name], !v.isEmpty else { return nil }
        return v
    }

    public struct UnknownDevice: Error, CustomStringConvertible {
        public let name: String
        public init(name: String) { self.name = name }
        public var description: String { "unknown device \"\(name)\": expected one of \(Devices.names.joined(separator: ", "))" }
    }

    public struct UnknownAttentionPath: Error, CustomStringConvertible {
        public let value: String
        public var description: String { "RADAR_ATTENTION=\(value): expected products or fused" }
    }

    /// RADAR_ATTENTION: `fused` (the default: the flash-attention kernels, no (B, H, N, N) tensor;
    /// bf16 on CUDA, heads of 16, 32 or 64 channels; elsewhere the products path) or `products`
    /// (cuBLAS products per head around softmax kernels). On an H200 at batch 128 (full config)
    /// fused took 46.9 ms a step and 4,210 MiB against products' 50.5 ms and 4,396 MiB.
    public static func fusedAttention(_ environment: [String: String] = ProcessInfo.processInfo.environment) throws -> Bool {
        try switchSetting(environment["RADAR_ATTENTION"], on: "fused", off: "products", byDefault: true) { UnknownAttentionPath(value: $0) }
    }

    /// A two-valued setting: `on`, `off`, empty or absent (`byDefault`), else the error made of it.
    static func switchSetting(_ value: String?, on: String, off: String, byDefault: Bool, _ error: (String) -> any Error) throws -> Bool {
        switch value ?? "" {
        case on: return true
        case off: return false
        case "": return byDefault
        case let other: throw error(other)
        }
    }

    public struct UnknownEpilogueSetting: Error, CustomStringConvertible {
        public let value: String
        public var description: String { "RADAR_GEMM_EPILOGUES=\(value): expected on or off" }
    }

    /// RADAR_GEMM_EPILOGUES: `on` (the default) puts a Linear layer's bias (and a residual block's
    /// sum) into cuBLASLt's epilogue instead of a fill pass over the output before the product;
    /// `off` keeps the fill. CUDA only; where cuBLASLt does not load, the fill. On an H100 (full
    /// config, batch 128) the epilogues took the bf16 step from 32.6-32.8 to 29.7-30.1 ms, fp32's
    /// from 117.2 to 114.0 ms.
    public static func gemmEpilogues(_ environment: [String: String] = ProcessInfo.processInfo.environment) throws -> Bool {
        try switchSetting(environment["RADAR_GEMM_EPILOGUES"], on: "on", off: "off", byDefault: true) { UnknownEpilogueSetting(value: $0) }
    }

    public struct UnknownLayerNormBackward: Error, CustomStringConvertible {
        public let value: String
        public var description: String { "RADAR_LAYERNORM_BACKWARD=\(value): expected chunk or staged" }
    }

    /// RADAR_LAYERNORM_BACKWARD: `chunk` (the default) or `staged`, the one-pass LayerNorm
    /// backward that reads each row of dy and x from memory once, through shared memory, where
    /// `chunk` reads them twice (`CUDABackend.stagedLayerNormBackward`; the same bits on the
    /// emulated device). CUDA only. Not yet timed on a GPU: the GPU check's step 9 times both.
    public static func stagedLayerNormBackward(_ environment: [String: String] = ProcessInfo.processInfo.environment) throws -> Bool {
        try switchSetting(environment["RADAR_LAYERNORM_BACKWARD"], on: "staged", off: "chunk", byDefault: false) { UnknownLayerNormBackward(value: $0) }
    }

    public struct UnknownAttentionKernels: Error, CustomStringConvertible {
        public let variable: String, value: String
        public var description: String {
            variable == "RADAR_ATTENTION_LOADS"
                ? "RADAR_ATTENTION_LOADS=\(value): renamed; set RADAR_ATTENTION_KERNELS (plain, ldmatrix or fast) instead"
                : "RADAR_ATTENTION_KERNELS=\(value): expected plain, ldmatrix or fast"
        }
    }

    /// RADAR_ATTENTION_KERNELS: which build of the fused attention kernels runs (`AttentionKernelBuild`):
    /// `fast` (the default: ldmatrix loads, softmax in base 2 by the special-function unit, bf16
    /// packing by cvt, tiles staged by cp.async; within bf16's rounding of the others), `plain`
    /// (the first build) or `ldmatrix` (plain's arithmetic with ldmatrix loads; the same bits as
    /// plain). On an H100 (full config, bf16, batch 128) a step took 29.7-29.8 ms with `fast`,
    /// 32.6-32.8 with `plain` and 35.1 with `ldmatrix`. RADAR_ATTENTION_LOADS, the setting's
    /// earlier name, is refused, so a setting cannot be silently ignored.
    public static func attentionKernels(_ environment: [String: String] = ProcessInfo.processInfo.environment) throws -> AttentionKernelBuild {
        if let old = environment["RADAR_ATTENTION_LOADS"], !old.isEmpty {
            throw UnknownAttentionKernels(variable: "RADAR_ATTENTION_LOADS", value: old)
        }
        guard let value = environment["RADAR_ATTENTION_KERNELS"], !value.isEmpty else { return .fast }
        guard let build = AttentionKernelBuild(rawValue: value) else { throw UnknownAttentionKernels(variable: "RADAR_ATTENTION_KERNELS", value: value) }
        return build
    }

    /// RADAR_GEMM_TABLE=FILE: cuBLASLt algorithms pinned per product shape, measured on this GPU
    /// by `radar bench gemm --write-table FILE` (`GemmTable`); unset or empty: none (cuBLAS's
    /// default algorithms). A table measured on another GPU model is refused.
    public static func gemmTable(for driver: any CUDADriver,
                                 _ environment: [String: String] = ProcessInfo.processInfo.environment) throws -> GemmTable? {
        guard let path = environment["RADAR_GEMM_TABLE"], !path.isEmpty else { return nil }
        let table = try GemmTable.load(path: path)
        let here = GemmTable.gpuName(driver.deviceDescription)
        guard table.gpu == here else {
            throw GemmTable.Invalid(path: path, reason: "field \"gpu\": measured on \(table.gpu), this is \(here) (write one here with radar bench gemm --write-table)")
        }
        return table
    }

    public struct BadWorkspaceBudget: Error, CustomStringConvertible {
        public let value: String
        public var description: String { "RADAR_CONV_WORKSPACE_MIB=\(value): expected a whole number of MiB, at least 1" }
    }

    /// RADAR_CONV_WORKSPACE_MIB: how much device memory a convolution's columns and backward
    /// scratch may take at once (images are processed in chunks that fit; at least one image).
    /// Default 64 MiB: on CUDA in bf16 the branches' largest convolution then runs in chunks of
    /// 16 images (the CPU, with fp32 columns: 12), each product still that many images wide.
    public static func convolutionWorkspaceBudget(_ environment: [String: String] = ProcessInfo.processInfo.environment) throws -> Int {
        guard let value = environment["RADAR_CONV_WORKSPACE_MIB"], !value.isEmpty else { return ConvolutionGeometry.defaultWorkspaceBudget }
        guard let mib = Int(value), mib >= 1, mib <= 1 << 20 else { throw BadWorkspaceBudget(value: value) }
        return mib << 20
    }

    public struct UnsupportedPrecision: Error, CustomStringConvertible {
        public let precision: String, device: String
        public var description: String {
            Precision(rawValue: precision) == nil && precision != "auto"
                ? "unknown precision \"\(precision)\": expected auto, fp32, tf32 or bf16"
                : "precision \(precision) needs a CUDA device (--device cuda); \(device) computes in fp32 or bf16"
        }
    }

    /// The GPU ordinal of a `cuda`, `cuda:N` name; nil for other devices.
    public static func cudaOrdinal(_ name: String) -> Int? {
        if name == "cuda" || name == "cuda-emulated" { return 0 }
        guard name.hasPrefix("cuda:"), let n = Int(name.dropFirst(5)), n >= 0 else { return nil }
        return n
    }

    /// Loader (decode + augment) threads when none are asked for. On a GPU the host's cores are
    /// free for decoding: this rank's share of them less one (the thread that drives the GPU), at
    /// most 16 (a PNG at 224 px decodes and augments at about 1,000 images/s per thread, and a
    /// GPU step wants 1,500). On the CPU the compute threads take the cores, and one loader
    /// thread runs beside them. Batches are the same for any count.
    public static func defaultLoaderThreads(device: String, localRanks: Int) -> Int {
        guard device != "cuda-emulated", cudaOrdinal(device) != nil else { return 1 }
        return min(16, max(1, ProcessInfo.processInfo.activeProcessorCount / max(localRanks, 1) - 1))
    }

    /// Whether `name` names a device (not whether this machine has it).
    public static func isValid(_ name: String) -> Bool { ["cpu", "cpu-fenced"].contains(name) || cudaOrdinal(name) != nil }
    public static func isValidPrecision(_ p: String) -> Bool { p == "auto" || Precision(rawValue: p) != nil }

    /// `--precision`'s help, the same on every command.
    public static let precisionHelp = "auto (bf16 mixed precision on GPUs of compute capability 8.0+, else fp32), fp32, tf32 (CUDA) or bf16 (CUDA; the CPU where it has AMX-BF16 or AVX512-BF16, else fp32 with a notice). Default: RADAR_PRECISION, else auto."

    /// The precision a backend computes in: fp32, tf32 or bf16.
    public static func precision(of backend: any Backend) -> String {
        if let c = backend as? CUDABackend { return c.precision.rawValue }
        let cpu = (backend as? CPUBackend) ?? (backend as? FencedBackend)?.inner
        return cpu?.products.isBF16 == true ? "bf16" : "fp32"
    }

    /// Whether `localRanks` processes of `threads` compute threads each oversubscribe `cores`.
    public static func threadsShareCores(threads: Int, localRanks: Int, cores: Int) -> Bool {
        threads * max(localRanks, 1) > max(cores, 1)
    }

    /// A backend for `name` with `threads` compute threads (CPU) in `precision` (nil: the default).
    /// `threadsShareCores`: this node runs more compute threads than cores (`threadsShareCores(...)`),
    /// so a CPU backend's worker pool sleeps between tasks at once instead of spinning for a core
    /// another process's thread needs (`WorkerPool.spinMicroseconds`).
    public static func backend(_ name: String, threads: Int, precision: String? = nil, threadsShareCores: Bool = false) throws
        -> any Backend
    {
        let p = precision ?? defaultPrecision
        guard isValidPrecision(p) else { throw UnsupportedPrecision(precision: p, device: name) }
        switch name {
        case "cpu", "cpu-fenced":
            guard p != "tf32" else { throw UnsupportedPrecision(precision: p, device: name) }
            var products = CPUProducts.fp32
            if p == "bf16" {
                let (chosen, notice) = try CPUProducts.bf16()
                products = chosen
                if let notice { CPUProducts.notice(notice) }
            }
            let cpu = CPUBackend(threads: threads, products: products, poolSpinMicroseconds: threadsShareCores ? 0 : nil)
            cpu.convolutionWorkspaceBudget = try convolutionWorkspaceBudget()
            return name == "cpu" ? cpu : FencedBackend(wrapping: cpu)
        default:
            guard let ordinal = cudaOrdinal(name) else { throw UnknownDevice(name: name) }
            let driver = try CUDADrivers.open(ordinal: ordinal, emulated: name == "cuda-emulated")
            let resolved: Precision
            if let explicit = Precision(rawValue: p) { resolved = explicit } else {
                resolved = driver is EmulatedDevice || driver.computeCapability.major < 8 ? .fp32 : .bf16
            }
            if resolved == .bf16 && driver.computeCapability.major < 8 {
                throw UnsupportedPrecision(precision: p, device: driver.deviceDescription + " (bf16 needs compute capability 8.0)")
            }
            driver.gemmTable = try gemmTable(for: driver)
            let backend = CUDABackend(driver: driver, precision: resolved, fusedAttention: try fusedAttention(),
                                      convolutionWorkspaceBudget: try convolutionWorkspaceBudget(), gemmEpilogues: try gemmEpilogues())
            backend.attentionKernels = try attentionKernels()
            backend.stagedLayerNormBackward = try stagedLayerNormBackward()
            return backend
        }
    }
}
