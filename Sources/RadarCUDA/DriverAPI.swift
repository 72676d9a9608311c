import Foundation
#if canImport(Glibc)
import Glibc
#endif
import RadarEngine

/// The CUDA headers' numbers (`CUDAConstants`), under their C names.
private let C = CUDAConstants.values

/// A real GPU through the CUDA driver API (libcuda.so.1), cuBLAS and cuFFT, all loaded with
/// dlopen: nothing links against CUDA. One device, its primary context, one non-blocking stream;
/// every kernel family compiled by NVRTC to CUBIN for the device's own architecture (cached on
/// disk by `KernelCache`) and loaded with cuModuleLoadData. cuBLAS runs with a fixed workspace
/// and the default algorithm (deterministic run to run on one GPU model); cuFFT plans are kept per
/// (size, batch) and share one work area that we allocate (counted, and an out-of-memory names it).
/// A call that fails after start-up stops the process with one line (`DeviceFailure`).
public final class DriverAPI: CUDADriver, @unchecked Sendable {
    // Driver API (cuda.h): CUresult is an int, CUdevice an int, handles are pointers, CUdeviceptr a 64-bit integer.
    // Every function type below and every number in `CUDAConstants` is compared with NVIDIA's
    // CUDA 12 and 13 headers by `CUDAABIGateTests` (the symbol names too: no header macro may
    // rename one, as cuda.h does for the _v2 functions).
    typealias FnInit = @convention(c) (UInt32) -> Int32
    typealias FnIntOut = @convention(c) (UnsafeMutablePointer<Int32>) -> Int32
    typealias FnDeviceGet = @convention(c) (UnsafeMutablePointer<Int32>, Int32) -> Int32
    typealias FnDeviceName = @convention(c) (UnsafeMutablePointer<CChar>, Int32, Int32) -> Int32
    typealias FnDeviceTotalMem = @convention(c) (UnsafeMutablePointer<Int>, Int32) -> Int32
    typealias FnDeviceAttribute = @convention(c) (UnsafeMutablePointer<Int32>, Int32, Int32) -> Int32
    typealias FnPrimaryCtxRetain = @convention(c) (UnsafeMutablePointer<OpaquePointer?>, Int32) -> Int32
    typealias FnCtxSetCurrent = @convention(c) (OpaquePointer?) -> Int32
    typealias FnStreamCreate = @convention(c) (UnsafeMutablePointer<OpaquePointer?>, UInt32) -> Int32
    typealias FnStream = @convention(c) (OpaquePointer?) -> Int32
    typealias FnMemAlloc = @convention(c) (UnsafeMutablePointer<UInt64>, Int) -> Int32
    typealias FnMemFree = @convention(c) (UInt64) -> Int32
    typealias FnMemGetInfo = @convention(c) (UnsafeMutablePointer<Int>, UnsafeMutablePointer<Int>) -> Int32
    typealias FnMemsetD8Async = @convention(c) (UInt64, UInt8, Int, OpaquePointer?) -> Int32
    typealias FnHtoDAsync = @convention(c) (UInt64, UnsafeRawPointer, Int, OpaquePointer?) -> Int32
    typealias FnDtoHAsync = @convention(c) (UnsafeMutableRawPointer, UInt64, Int, OpaquePointer?) -> Int32
    typealias FnModuleLoadData = @convention(c) (UnsafeMutablePointer<OpaquePointer?>, UnsafeRawPointer) -> Int32
    typealias FnModuleGetFunction = @convention(c) (UnsafeMutablePointer<OpaquePointer?>, OpaquePointer?, UnsafePointer<CChar>) -> Int32
    typealias FnLaunchKernel = @convention(c) (OpaquePointer?, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, OpaquePointer?,
                                               UnsafeMutablePointer<UnsafeMutableRawPointer?>?, UnsafeMutablePointer<UnsafeMutableRawPointer?>?) -> Int32
    typealias FnErrorString = @convention(c) (Int32, UnsafeMutablePointer<UnsafePointer<CChar>?>) -> Int32
    typealias FnEventRecord = @convention(c) (OpaquePointer?, OpaquePointer?) -> Int32
    typealias FnEventElapsedTime = @convention(c) (UnsafeMutablePointer<Float>, OpaquePointer?, OpaquePointer?) -> Int32
    typealias FnStreamWaitEvent = @convention(c) (OpaquePointer?, OpaquePointer?, UInt32) -> Int32
    typealias FnMemHostAlloc = @convention(c) (UnsafeMutablePointer<UnsafeMutableRawPointer?>, Int, UInt32) -> Int32
    typealias FnMemFreeHost = @convention(c) (UnsafeMutableRawPointer?) -> Int32
    // cuBLAS
    typealias FnBlasCreate = @convention(c) (UnsafeMutablePointer<OpaquePointer?>) -> Int32
    typealias FnBlasSetStream = @convention(c) (OpaquePointer?, OpaquePointer?) -> Int32
    typealias FnBlasSetMathMode = @convention(c) (OpaquePointer?, Int32) -> Int32
    typealias FnBlasSetWorkspace = @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?, Int) -> Int32
    typealias FnBlasGemmEx = @convention(c) (OpaquePointer?, Int32, Int32, Int32, Int32, Int32, UnsafeRawPointer, UnsafeRawPointer?, Int32,
                                             Int32, Int64, UnsafeRawPointer?, Int32, Int32, Int64, UnsafeRawPointer,
                                             UnsafeMutableRawPointer?, Int32, Int32, Int64, Int32, Int32, Int32) -> Int32
    typealias FnBlasStatusString = @convention(c) (Int32) -> UnsafePointer<CChar>?
    // cuFFT
    typealias FnFFTCreate = @convention(c) (UnsafeMutablePointer<Int32>) -> Int32
    typealias FnFFTSetAutoAllocation = @convention(c) (Int32, Int32) -> Int32
    typealias FnFFTMakePlanMany = @convention(c) (Int32, Int32, UnsafeMutablePointer<Int32>, UnsafeMutablePointer<Int32>?, Int32, Int32,
                                                  UnsafeMutablePointer<Int32>?, Int32, Int32, Int32, Int32, UnsafeMutablePointer<Int>) -> Int32
    typealias FnFFTSetWorkArea = @convention(c) (Int32, UnsafeMutableRawPointer?) -> Int32
    typealias FnFFTSetStream = @convention(c) (Int32, OpaquePointer?) -> Int32
    typealias FnFFTExecR2C = @convention(c) (Int32, UnsafeMutableRawPointer?, UnsafeMutableRawPointer?) -> Int32

    /// A driver call that failed at start-up (no driver, no device, a library missing).
    public struct Unavailable: Error, CustomStringConvertible {
        public let message: String
        public var description: String { message }
    }

    private let ctxSetCurrent: FnCtxSetCurrent
    private let memAlloc: FnMemAlloc, memFree: FnMemFree, memGetInfo: FnMemGetInfo, memsetAsync: FnMemsetD8Async
    private let htod: FnHtoDAsync, dtoh: FnDtoHAsync, streamSync: FnStream, eventSync: FnStream
    private let moduleLoad: FnModuleLoadData, moduleFunction: FnModuleGetFunction, launchKernel: FnLaunchKernel
    private let errorString: FnErrorString
    private let streamCreate: FnStreamCreate, eventCreate: FnStreamCreate, eventRecord: FnEventRecord
    private let streamWaitEvent: FnStreamWaitEvent, memHostAlloc: FnMemHostAlloc, memFreeHost: FnMemFreeHost
    /// cuEventElapsedTime_v2, for `kernelTiming` only (a driver without it cannot time kernels).
    private let eventElapsedTime: FnEventElapsedTime?
    /// Kernel timing: an event pair around every launch, product and FFT, read at the next wait.
    private var timingEvents: [OpaquePointer?] = []
    private var timed: [(name: String, start: OpaquePointer?, end: OpaquePointer?)] = []
    public private(set) var kernelTimes: [String: (ms: Double, count: Int)] = [:]
    /// The gradient copy streams (down and up) and their events (`prepareCopyStream`).
    private var downStream: OpaquePointer?, upStream: OpaquePointer?
    private var marks: [OpaquePointer?] = [], landed: [OpaquePointer?] = [], uploads: [OpaquePointer?] = []
    private let blasSetMathMode: FnBlasSetMathMode, blasGemm: FnBlasGemmEx, blasStatusString: FnBlasStatusString?
    private let fftCreate: FnFFTCreate, fftSetAutoAllocation: FnFFTSetAutoAllocation, fftMakePlanMany: FnFFTMakePlanMany
    private let fftSetWorkArea: FnFFTSetWorkArea, fftSetStream: FnFFTSetStream, fftExecR2C: FnFFTExecR2C

    public let ordinal: Int
    public let name: String
    public let computeCapability: (major: Int, minor: Int)
    public let totalMemory: Int
    public let pciBusId: String?
    public let driverVersion: Int
    private let context: OpaquePointer?
    private var stream: OpaquePointer?
    private var blas: OpaquePointer?
    private var workspace: UInt64 = 0
    private var modules: [OpaquePointer?] = []
    private var functions: [String: OpaquePointer] = [:]
    private var fftPlans: [Int: Int32] = [:]
    /// cuFFT's work area: ours (plans are made with auto-allocation off), one for every plan (they
    /// run one at a time on the one stream), as large as the largest plan needs.
    private var fftWork: UnsafeMutableRawPointer?
    private var fftWorkBytes = 0
    private var mathMode: Int32 = -1
    /// cuBLASLt, where it loads (products with epilogues).
    private var lt: BlasLt?
    public var supportsGemmEpilogues: Bool { lt != nil }
    /// Where each kernel family came from ("hit", "compiled", "recompiled"), for the probe.
    public private(set) var kernelOrigins: [String: String] = [:]

    static let workspaceBytes = 32 << 20

    /// Opens device `ordinal`: loads libcuda, cuBLAS, cuFFT and NVRTC, compiles (or loads from
    /// the cache) every kernel family for the device's architecture.
    public init(ordinal: Int) throws {
        let (cuda, errorString, count) = try DriverAPI.start(device: "device cuda:\(ordinal): ")
        self.errorString = errorString
        func sym<T>(_ h: UnsafeMutableRawPointer, _ n: String, _ t: T.Type) throws -> T { try CUDALibraries.symbol(h, n, as: t) }
        var version: Int32 = 0
        _ = try sym(cuda, "cuDriverGetVersion", FnIntOut.self)(&version)
        driverVersion = Int(version)
        guard ordinal >= 0 && ordinal < count else { throw CUDADrivers.NoSuchDevice(ordinal: ordinal, count: count) }
        var device: Int32 = 0
        try DriverAPI.check(try sym(cuda, "cuDeviceGet", FnDeviceGet.self)(&device, Int32(ordinal)), "cuDeviceGet", errorString)
        var nameBuffer = [CChar](repeating: 0, count: 256)
        _ = try sym(cuda, "cuDeviceGetName", FnDeviceName.self)(&nameBuffer, 255, device)
        name = String(cString: nameBuffer)
        var total = 0
        _ = try sym(cuda, "cuDeviceTotalMem_v2", FnDeviceTotalMem.self)(&total, device)
        totalMemory = total
        var bus = [CChar](repeating: 0, count: 64)
        let busId = try? sym(cuda, "cuDeviceGetPCIBusId", FnDeviceName.self)
        pciBusId = busId.flatMap { $0(&bus, 63, device) == 0 ? String(cString: bus) : nil }.flatMap { $0.isEmpty ? nil : $0 }
        let attribute = try sym(cuda, "cuDeviceGetAttribute", FnDeviceAttribute.self)
        var major: Int32 = 0, minor: Int32 = 0
        _ = attribute(&major, C.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device)
        _ = attribute(&minor, C.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device)
        computeCapability = (Int(major), Int(minor))
        var ctx: OpaquePointer?
        try DriverAPI.check(try sym(cuda, "cuDevicePrimaryCtxRetain", FnPrimaryCtxRetain.self)(&ctx, device), "cuDevicePrimaryCtxRetain", errorString)
        context = ctx
        ctxSetCurrent = try sym(cuda, "cuCtxSetCurrent", FnCtxSetCurrent.self)
        try DriverAPI.check(ctxSetCurrent(ctx), "cuCtxSetCurrent", errorString)
        var s: OpaquePointer?
        streamCreate = try sym(cuda, "cuStreamCreate", FnStreamCreate.self)
        try DriverAPI.check(streamCreate(&s, C.CU_STREAM_NON_BLOCKING), "cuStreamCreate", errorString)
        stream = s
        eventCreate = try sym(cuda, "cuEventCreate", FnStreamCreate.self)
        eventRecord = try sym(cuda, "cuEventRecord", FnEventRecord.self)
        eventElapsedTime = try? sym(cuda, "cuEventElapsedTime_v2", FnEventElapsedTime.self)  // drivers of CUDA 12.8 and later
        streamWaitEvent = try sym(cuda, "cuStreamWaitEvent", FnStreamWaitEvent.self)
        memHostAlloc = try sym(cuda, "cuMemHostAlloc", FnMemHostAlloc.self)
        memFreeHost = try sym(cuda, "cuMemFreeHost", FnMemFreeHost.self)
        memAlloc = try sym(cuda, "cuMemAlloc_v2", FnMemAlloc.self)
        memFree = try sym(cuda, "cuMemFree_v2", FnMemFree.self)
        memGetInfo = try sym(cuda, "cuMemGetInfo_v2", FnMemGetInfo.self)
        memsetAsync = try sym(cuda, "cuMemsetD8Async", FnMemsetD8Async.self)
        htod = try sym(cuda, "cuMemcpyHtoDAsync_v2", FnHtoDAsync.self)
        dtoh = try sym(cuda, "cuMemcpyDtoHAsync_v2", FnDtoHAsync.self)
        streamSync = try sym(cuda, "cuStreamSynchronize", FnStream.self)
        eventSync = try sym(cuda, "cuEventSynchronize", FnStream.self)
        moduleLoad = try sym(cuda, "cuModuleLoadData", FnModuleLoadData.self)
        moduleFunction = try sym(cuda, "cuModuleGetFunction", FnModuleGetFunction.self)
        launchKernel = try sym(cuda, "cuLaunchKernel", FnLaunchKernel.self)

        // cuBLAS (cuBLASLt comes with it through the library's own RUNPATH).
        let blasLib: UnsafeMutableRawPointer, fftLib: UnsafeMutableRawPointer
        do {
            blasLib = try CUDALibraries.load(["libcublas.so.13", "libcublas.so.12"], component: "cublas")
            fftLib = try CUDALibraries.load(["libcufft.so.12", "libcufft.so.11"], component: "cufft")
        } catch { throw Unavailable(message: "device cuda:\(ordinal): \(error)") }
        var handle: OpaquePointer?
        let created = try sym(blasLib, "cublasCreate_v2", FnBlasCreate.self)(&handle)
        guard created == C.CUBLAS_STATUS_SUCCESS else { throw Unavailable(message: "device cuda:\(ordinal): cublasCreate failed (status \(created))") }
        blas = handle
        _ = try sym(blasLib, "cublasSetStream_v2", FnBlasSetStream.self)(handle, s)
        blasSetMathMode = try sym(blasLib, "cublasSetMathMode", FnBlasSetMathMode.self)
        blasGemm = try sym(blasLib, "cublasGemmStridedBatchedEx", FnBlasGemmEx.self)
        blasStatusString = try? sym(blasLib, "cublasGetStatusString", FnBlasStatusString.self)
        lt = BlasLt()
        fftCreate = try sym(fftLib, "cufftCreate", FnFFTCreate.self)
        fftSetAutoAllocation = try sym(fftLib, "cufftSetAutoAllocation", FnFFTSetAutoAllocation.self)
        fftMakePlanMany = try sym(fftLib, "cufftMakePlanMany", FnFFTMakePlanMany.self)
        fftSetWorkArea = try sym(fftLib, "cufftSetWorkArea", FnFFTSetWorkArea.self)
        fftSetStream = try sym(fftLib, "cufftSetStream", FnFFTSetStream.self)
        fftExecR2C = try sym(fftLib, "cufftExecR2C", FnFFTExecR2C.self)
        self.ordinal = ordinal
        // A fixed workspace: cuBLAS picks the same algorithms every run.
        var ws: UInt64 = 0
        try DriverAPI.check(memAlloc(&ws, DriverAPI.workspaceBytes), "cuMemAlloc (cuBLAS workspace)", errorString)
        workspace = ws
        _ = try sym(blasLib, "cublasSetWorkspace_v2", FnBlasSetWorkspace.self)(handle, UnsafeMutableRawPointer(bitPattern: UInt(ws)),
                                                                              DriverAPI.workspaceBytes)
        try loadKernels()
    }

    /// GPUs visible to this process (cuInit + cuDeviceGetCount).
    public static func deviceCount() throws -> Int { try start(device: "").count }

    /// libcuda loaded and initialised: its handle, cuGetErrorString and the visible GPU count.
    /// `device` prefixes the errors ("device cuda:N: ").
    static func start(device: String) throws -> (UnsafeMutableRawPointer, FnErrorString, count: Int) {
        guard let cuda = try? CUDALibraries.load(["libcuda.so.1", "libcuda.so"], component: "cuda_driver") else {
            throw Unavailable(message: "\(device)no CUDA driver on this machine (libcuda.so.1 cannot be loaded; a GPU node has it from the NVIDIA driver package)")
        }
        let errorString = try CUDALibraries.symbol(cuda, "cuGetErrorString", as: FnErrorString.self)
        let r = try CUDALibraries.symbol(cuda, "cuInit", as: FnInit.self)(0)
        if r != C.CUDA_SUCCESS { throw Unavailable(message: "\(device)the CUDA driver does not start (cuInit: \(describe(r, errorString)))") }
        var count: Int32 = 0
        try check(try CUDALibraries.symbol(cuda, "cuDeviceGetCount", as: FnIntOut.self)(&count), "\(device)cuDeviceGetCount", errorString)
        return (cuda, errorString, Int(count))
    }

    static func describe(_ r: Int32, _ errorString: FnErrorString) -> String {
        var p: UnsafePointer<CChar>?
        _ = errorString(r, &p)
        return p.map { "\(String(cString: $0)) (\(r))" } ?? "error \(r)"
    }

    static func check(_ r: Int32, _ call: String, _ errorString: FnErrorString) throws {
        if r != C.CUDA_SUCCESS { throw Unavailable(message: "\(call): \(describe(r, errorString))") }
    }

    /// After start-up a failing call is a device fault or a bug: stop with the call and the error.
    @inline(__always) private func must(_ r: Int32, _ call: @autoclosure () -> String) {
        if r != C.CUDA_SUCCESS { DeviceFailure.stop("CUDA error on cuda:\(ordinal) in \(call()): \(DriverAPI.describe(r, errorString))") }
    }

    @inline(__always) private func fftMust(_ r: Int32, _ call: @autoclosure () -> String) {
        if r != C.CUFFT_SUCCESS { DeviceFailure.stop("cuFFT error on cuda:\(ordinal) in \(call()): \(DriverAPI.fftResult(r))") }
    }

    /// cufftResult's name (cuFFT has no error-string function).
    static func fftResult(_ r: Int32) -> String {
        let names: [Int32: String] = [C.CUFFT_INVALID_PLAN: "CUFFT_INVALID_PLAN", C.CUFFT_ALLOC_FAILED: "CUFFT_ALLOC_FAILED",
                                      C.CUFFT_INVALID_VALUE: "CUFFT_INVALID_VALUE", C.CUFFT_INTERNAL_ERROR: "CUFFT_INTERNAL_ERROR",
                                      C.CUFFT_EXEC_FAILED: "CUFFT_EXEC_FAILED", C.CUFFT_SETUP_FAILED: "CUFFT_SETUP_FAILED",
                                      C.CUFFT_INVALID_SIZE: "CUFFT_INVALID_SIZE"]
        return "\(names[r] ?? "cufftResult") (\(r))"
    }

    public var architecture: String { "sm_\(computeCapability.major)\(computeCapability.minor)" }

    private func loadKernels() throws {
        let compiler = try NVRTC()
        let cache = KernelCache(compiler: compiler)
        let options = KernelSources.options(include: CUDALibraries.runtimeIncludeFolder())
        for family in KernelSources.all {
            let cubin = try cache.cubin(family, architecture: architecture, options: options)
            kernelOrigins[family.name] = cache.lastOutcome
            var module: OpaquePointer?
            let r = cubin.withUnsafeBytes { moduleLoad(&module, $0.baseAddress!) }
            try DriverAPI.check(r, "cuModuleLoadData(\(family.name), \(architecture))", errorString)
            modules.append(module)
        }
    }

    public var deviceDescription: String {
        "cuda:\(ordinal) (\(name), \(architecture), \(Bytes.text(totalMemory)), driver \(driverVersion / 1000).\(driverVersion % 1000 / 10))"
    }

    public func memoryInfo() -> (free: Int, total: Int) {
        _ = ctxSetCurrent(context)
        var free = 0, total = 0
        _ = memGetInfo(&free, &total)
        return (free, total)
    }

    // MARK: Memory

    @inline(__always) private func address(_ p: UnsafeRawPointer) -> UInt64 { UInt64(UInt(bitPattern: p)) }

    public func allocate(bytes: Int) throws -> UnsafeMutableRawPointer {
        _ = ctxSetCurrent(context)
        let n = (max(bytes, 4) + 255) / 256 * 256
        var p: UInt64 = 0
        let r = memAlloc(&p, n)
        if r == C.CUDA_ERROR_OUT_OF_MEMORY {
            let info = memoryInfo()
            throw DeviceOutOfMemory(device: deviceDescription, requested: n, free: info.free, total: info.total)
        }
        must(r, "cuMemAlloc(\(n) bytes)")
        must(memsetAsync(p, 0, n, stream), "cuMemsetD8Async")
        return UnsafeMutableRawPointer(bitPattern: UInt(p))!
    }

    public func free(_ address: UnsafeMutableRawPointer) {
        _ = ctxSetCurrent(context)
        must(memFree(self.address(address)), "cuMemFree")
    }

    public func upload(_ source: UnsafeRawPointer, to destination: UnsafeMutableRawPointer, bytes: Int) {
        guard bytes > 0 else { return }
        _ = ctxSetCurrent(context)
        must(htod(address(destination), source, bytes, stream), "cuMemcpyHtoDAsync(\(bytes) bytes)")
    }

    public func download(_ source: UnsafeRawPointer, to destination: UnsafeMutableRawPointer, bytes: Int) {
        _ = ctxSetCurrent(context)
        if bytes > 0 { must(dtoh(destination, address(source), bytes, stream), "cuMemcpyDtoHAsync(\(bytes) bytes)") }
        must(streamSync(stream), "cuStreamSynchronize")
        collectKernelTimes()
    }

    public func synchronize() {
        _ = ctxSetCurrent(context)
        must(streamSync(stream), "cuStreamSynchronize")
        collectKernelTimes()
    }

    // MARK: Kernel timing (`radar bench step --kernel-times`)

    public var canTimeKernels: Bool { eventElapsedTime != nil }

    public var kernelTiming = false {
        didSet { if !kernelTiming { synchronize(); kernelTimes = [:] } }
    }

    public func resetKernelTimes() {
        synchronize()
        kernelTimes = [:]
    }

    /// `body` between two events on the compute stream, when timing.
    @inline(__always) private func timing(_ name: @autoclosure () -> String, _ body: () -> Void) {
        guard kernelTiming, eventElapsedTime != nil else { return body() }
        if timed.count >= 4096 { synchronize() }  // bounded: the events are read back and reused
        func take() -> OpaquePointer? {
            if let e = timingEvents.popLast() { return e }
            var e: OpaquePointer?
            must(eventCreate(&e, 0), "cuEventCreate (timing)")
            return e
        }
        let start = take(), end = take()
        must(eventRecord(start, stream), "cuEventRecord (timing)")
        body()
        must(eventRecord(end, stream), "cuEventRecord (timing)")
        timed.append((name(), start, end))
    }

    private var benchEvents: (start: OpaquePointer?, end: OpaquePointer?)?

    public func elapsedMilliseconds(_ body: () -> Void) -> Double {
        _ = ctxSetCurrent(context)
        guard let elapsed = eventElapsedTime else {
            synchronize()
            let started = DispatchTime.now().uptimeNanoseconds
            body()
            synchronize()
            return Double(DispatchTime.now().uptimeNanoseconds - started) / 1e6
        }
        if benchEvents == nil {
            var start: OpaquePointer?, end: OpaquePointer?
            must(eventCreate(&start, 0), "cuEventCreate (bench)")
            must(eventCreate(&end, 0), "cuEventCreate (bench)")
            benchEvents = (start, end)
        }
        let (start, end) = benchEvents!
        must(eventRecord(start, stream), "cuEventRecord (bench)")
        body()
        must(eventRecord(end, stream), "cuEventRecord (bench)")
        synchronize()
        var ms: Float = 0
        must(elapsed(&ms, start, end), "cuEventElapsedTime (bench)")
        return Double(ms)
    }

    /// A launch's name for kernel timing: the kernel and its integer arguments (sizes), so that one
    /// kernel's calls on different tensors are told apart ("radar_to_bf16 (9683968)").
    static func timingName(_ kernel: String, _ args: KernelArgs) -> String {
        let sizes = args.compactMap { a -> String? in
            switch a {
            case .i32(let v), .i64(let v): return String(v)
            default: return nil
            }
        }
        return sizes.isEmpty ? kernel : "\(kernel) (\(sizes.joined(separator: ", ")))"
    }

    /// After a stream wait: the elapsed time of every timed call, summed by name.
    private func collectKernelTimes() {
        guard !timed.isEmpty, let elapsed = eventElapsedTime else { return }
        for t in timed {
            var ms: Float = 0
            must(elapsed(&ms, t.start, t.end), "cuEventElapsedTime (\(t.name))")
            let old = kernelTimes[t.name] ?? (0, 0)
            kernelTimes[t.name] = (old.ms + Double(ms), old.count + 1)
            timingEvents.append(t.start)
            timingEvents.append(t.end)
        }
        timed.removeAll(keepingCapacity: true)
    }

    // MARK: The gradient copy streams

    public func prepareCopyStream(slots: Int) {
        _ = ctxSetCurrent(context)
        if downStream == nil {
            var d: OpaquePointer?, u: OpaquePointer?
            must(streamCreate(&d, C.CU_STREAM_NON_BLOCKING), "cuStreamCreate (down stream)")
            must(streamCreate(&u, C.CU_STREAM_NON_BLOCKING), "cuStreamCreate (up stream)")
            downStream = d
            upStream = u
        }
        while marks.count < slots {
            var m: OpaquePointer?, l: OpaquePointer?, u: OpaquePointer?
            must(eventCreate(&m, C.CU_EVENT_DISABLE_TIMING), "cuEventCreate")
            must(eventCreate(&l, C.CU_EVENT_DISABLE_TIMING), "cuEventCreate")
            must(eventCreate(&u, C.CU_EVENT_DISABLE_TIMING), "cuEventCreate")
            marks.append(m)
            landed.append(l)
            uploads.append(u)
        }
    }

    public func allocatePinned(bytes: Int) -> UnsafeMutableRawPointer {
        _ = ctxSetCurrent(context)
        var p: UnsafeMutableRawPointer?
        must(memHostAlloc(&p, max(bytes, 4), 0), "cuMemHostAlloc(\(bytes) bytes)")
        return p!
    }

    public func freePinned(_ p: UnsafeMutableRawPointer) {
        _ = ctxSetCurrent(context)
        must(memFreeHost(p), "cuMemFreeHost")
    }

    public func copyDownAfterMark(_ slot: Int, _ source: UnsafeRawPointer, to destination: UnsafeMutableRawPointer, bytes: Int) {
        _ = ctxSetCurrent(context)
        must(eventRecord(marks[slot], stream), "cuEventRecord (gradient bucket \(slot))")
        must(streamWaitEvent(downStream, marks[slot], C.CU_EVENT_WAIT_DEFAULT), "cuStreamWaitEvent (down stream, bucket \(slot))")
        if bytes > 0 { must(dtoh(destination, address(source), bytes, downStream), "cuMemcpyDtoHAsync (bucket \(slot), \(bytes) bytes)") }
        must(eventRecord(landed[slot], downStream), "cuEventRecord (download \(slot))")
    }

    public func awaitCopyDown(_ slot: Int) {
        _ = ctxSetCurrent(context)
        must(eventSync(landed[slot]), "cuEventSynchronize (download \(slot))")
    }

    public func copyUp(_ source: UnsafeRawPointer, to destination: UnsafeMutableRawPointer, bytes: Int, slot: Int) {
        _ = ctxSetCurrent(context)
        if bytes > 0 { must(htod(address(destination), source, bytes, upStream), "cuMemcpyHtoDAsync (bucket \(slot), \(bytes) bytes)") }
        must(eventRecord(uploads[slot], upStream), "cuEventRecord (upload \(slot))")
    }

    public func computeWaitsForUpload(_ slot: Int) {
        _ = ctxSetCurrent(context)
        must(streamWaitEvent(stream, uploads[slot], C.CU_EVENT_WAIT_DEFAULT), "cuStreamWaitEvent (compute stream, upload \(slot))")
    }

    // MARK: Kernels

    private func function(_ name: String) -> OpaquePointer {
        if let f = functions[name] { return f }
        for m in modules {
            var f: OpaquePointer?
            if name.withCString({ moduleFunction(&f, m, $0) }) == C.CUDA_SUCCESS, let f {
                functions[name] = f
                return f
            }
        }
        DeviceFailure.stop("cuda:\(ordinal): no kernel \(name) in the loaded modules")
    }

    public private(set) var queued = (launches: 0, products: 0)

    public func launch(_ kernel: String, grid: Int, block: Int, _ args: KernelArgs) {
        guard grid > 0 else { return }
        queued.launches += 1
        _ = ctxSetCurrent(context)
        let f = function(kernel)
        var r: Int32 = 0
        timing(DriverAPI.timingName(kernel, args)) {
            r = args.withArgumentArray { argv in
                launchKernel(f, UInt32(grid), 1, 1, UInt32(block), 1, 1, 0, stream, argv, nil)
            }
        }
        must(r, "cuLaunchKernel(\(kernel), grid \(grid), block \(block))")
    }

    // MARK: cuBLAS

    public func gemm(_ g: StridedGemm) { gemm(g, pinned: nil) }

    public func gemm(_ g: StridedGemm, algorithm: GemmAlgorithm) { gemm(g, pinned: algorithm.bytes) }

    public var gemmTable: GemmTable?
    public private(set) var pinnedProducts = 0

    public func gemmEpilogueAvailable(_ g: StridedGemm) -> Bool {
        guard let lt else { return false }
        guard g.m > 0 && g.n > 0 && g.batch > 0 else { return true }
        _ = ctxSetCurrent(context)
        return lt.available(g, workspaceBytes: DriverAPI.workspaceBytes)
    }

    public func gemmAlgorithms(_ g: StridedGemm, limit: Int) -> [GemmAlgorithm] {
        guard let lt, g.m > 0 && g.n > 0 && g.batch > 0 else { return [] }
        _ = ctxSetCurrent(context)
        switch lt.algorithms(g, workspaceBytes: DriverAPI.workspaceBytes, limit: limit) {
        case .success(let offers): return offers
        case .failure: return []  // no algorithm for this shape: the bench reports none
        }
    }

    /// A product through cublasGemmStridedBatchedEx, or cublasLtMatmul where it has an epilogue or
    /// an algorithm pinned (`pinned`, else the table's for its shape).
    private func gemm(_ g: StridedGemm, pinned given: [UInt8]?) {
        guard g.m > 0 && g.n > 0 && g.batch > 0 else { return }
        queued.products += 1
        _ = ctxSetCurrent(context)
        var pinned = given
        if pinned == nil, lt != nil, let table = gemmTable, !table.entries.isEmpty, let chosen = table.entries[GemmTable.key(g)] {
            pinned = chosen
            pinnedProducts += 1
        }
        if g.bias != nil || g.d != nil || pinned != nil {
            guard let lt else { DeviceFailure.stop("cuda:\(ordinal): a product with an epilogue, but cuBLASLt is not loaded") }
            var failure: BlasLtFailure?
            timing("gemm lt \(g.operands)\(g.outputBF16 ? "->bf16" : "")\(g.bias != nil ? "+bias" : "")\(g.d != nil ? "+c" : "") \(g.transA ? "T" : "N")\(g.transB ? "T" : "N") m \(g.m) n \(g.n) k \(g.k) batch \(g.batch)") {
                failure = lt.gemm(g, pinned: pinned, workspace: UnsafeMutableRawPointer(bitPattern: UInt(workspace)),
                                  workspaceBytes: DriverAPI.workspaceBytes, stream: stream)
            }
            if let failure {
                let text = blasStatusString?(failure.status).map { String(cString: $0) } ?? "status"
                DeviceFailure.stop("cuBLASLt error on cuda:\(ordinal) in \(failure.call): \(text) (\(failure.status))")
            }
            return
        }
        let mode = g.operands == .tf32 ? C.CUBLAS_TF32_TENSOR_OP_MATH : C.CUBLAS_DEFAULT_MATH
        if mode != mathMode { _ = blasSetMathMode(blas, mode); mathMode = mode }
        let type = g.operands == .bf16 ? C.CUDA_R_16BF : C.CUDA_R_32F
        let compute = g.operands == .tf32 ? C.CUBLAS_COMPUTE_32F_FAST_TF32 : C.CUBLAS_COMPUTE_32F
        var alpha = g.alpha, beta = g.beta
        var r: Int32 = 0
        timing("gemm \(g.operands)\(g.outputBF16 ? "->bf16" : "") \(g.transA ? "T" : "N")\(g.transB ? "T" : "N") m \(g.m) n \(g.n) k \(g.k) batch \(g.batch)") {
        r = blasGemm(blas, g.transA ? C.CUBLAS_OP_T : C.CUBLAS_OP_N, g.transB ? C.CUBLAS_OP_T : C.CUBLAS_OP_N,
                         Int32(g.m), Int32(g.n), Int32(g.k), &alpha, g.a, type, Int32(g.lda), Int64(g.strideA), g.b, type, Int32(g.ldb),
                         Int64(g.strideB), &beta, UnsafeMutableRawPointer(g.c), g.outputBF16 ? C.CUDA_R_16BF : C.CUDA_R_32F, Int32(g.ldc), Int64(g.strideC),
                         Int32(g.batch), compute, C.CUBLAS_GEMM_DEFAULT)
        }
        if r != C.CUBLAS_STATUS_SUCCESS {
            let text = blasStatusString?(r).map { String(cString: $0) } ?? "status"
            DeviceFailure.stop("cuBLAS error on cuda:\(ordinal) in cublasGemmStridedBatchedEx(m \(g.m) n \(g.n) k \(g.k) batch \(g.batch)): \(text) (\(r))")
        }
    }

    // MARK: cuFFT

    public var libraryWorkspaceBytes: Int { DriverAPI.workspaceBytes + fftWorkBytes }

    /// The plan for `batch` planes of size x size, made once: auto-allocation off, our work area.
    private func fftPlan(size: Int, batch: Int) -> Int32 {
        let key = size << 32 | batch
        if let p = fftPlans[key] { return p }
        let what = "\(size)x\(size) R2C, batch \(batch)"
        var p: Int32 = 0
        fftMust(fftCreate(&p), "cufftCreate(\(what))")
        fftMust(fftSetAutoAllocation(p, 0), "cufftSetAutoAllocation(\(what))")
        var dims: [Int32] = [Int32(size), Int32(size)]
        var need = 0
        let made = fftMakePlanMany(p, 2, &dims, nil, 1, 0, nil, 1, 0, C.CUFFT_R2C, Int32(batch), &need)
        if made == C.CUFFT_ALLOC_FAILED {
            let info = memoryInfo()
            DeviceFailure.outOfMemory("out of device memory on \(deviceDescription): cufftMakePlanMany(\(what)) could not allocate its plan, \(Bytes.text(info.free)) free of \(Bytes.text(info.total))")
        }
        fftMust(made, "cufftMakePlanMany(\(what))")
        if need > fftWorkBytes {
            if let old = fftWork {  // the plans that use it have run: the stream is drained first
                must(streamSync(stream), "cuStreamSynchronize")
                free(old)
                fftWork = nil
                fftWorkBytes = 0
            }
            do {
                fftWork = try allocate(bytes: need)
            } catch var e as DeviceOutOfMemory {
                e.purpose = "cuFFT work area (\(what))"
                DeviceFailure.outOfMemory(e)
            } catch {
                DeviceFailure.outOfMemory(error)
            }
            fftWorkBytes = need
            for (k, q) in fftPlans { fftMust(fftSetWorkArea(q, fftWork), "cufftSetWorkArea(plan \(k >> 32)x\(k >> 32), batch \(k & 0xffff_ffff))") }
        }
        if fftWork != nil { fftMust(fftSetWorkArea(p, fftWork), "cufftSetWorkArea(\(what))") }
        fftMust(fftSetStream(p, stream), "cufftSetStream(\(what))")
        fftPlans[key] = p
        return p
    }

    public func fftRealToComplex(_ input: UnsafeRawPointer, _ output: UnsafeMutableRawPointer, size: Int, batch: Int) {
        _ = ctxSetCurrent(context)
        let plan = fftPlan(size: size, batch: batch)
        var r: Int32 = 0
        timing("cufft R2C \(size)x\(size) batch \(batch)") { r = fftExecR2C(plan, UnsafeMutableRawPointer(mutating: input), output) }
        fftMust(r, "cufftExecR2C(\(size)x\(size), batch \(batch))")
    }
}
