import Foundation
import RadarEngine

/// NVRTC, loaded at run time: CUDA C++ source to CUBIN for one real architecture (never PTX for
/// the driver to JIT: what runs is what was compiled and cached).
public final class NVRTC: @unchecked Sendable {
    typealias CreateProgram = @convention(c) (UnsafeMutablePointer<OpaquePointer?>, UnsafePointer<CChar>, UnsafePointer<CChar>?, Int32,
                                              UnsafePointer<UnsafePointer<CChar>?>?, UnsafePointer<UnsafePointer<CChar>?>?) -> Int32
    typealias CompileProgram = @convention(c) (OpaquePointer?, Int32, UnsafePointer<UnsafePointer<CChar>?>?) -> Int32
    typealias GetSize = @convention(c) (OpaquePointer?, UnsafeMutablePointer<Int>) -> Int32
    typealias GetBytes = @convention(c) (OpaquePointer?, UnsafeMutablePointer<CChar>) -> Int32
    typealias DestroyProgram = @convention(c) (UnsafeMutablePointer<OpaquePointer?>) -> Int32
    typealias Version = @convention(c) (UnsafeMutablePointer<Int32>, UnsafeMutablePointer<Int32>) -> Int32
    typealias ErrorString = @convention(c) (Int32) -> UnsafePointer<CChar>?

    private let create: CreateProgram, compile: CompileProgram, destroy: DestroyProgram
    private let logSize: GetSize, log: GetBytes, cubinSize: GetSize, cubin: GetBytes
    private let errorString: ErrorString
    /// (major, minor) of the loaded NVRTC.
    public let version: (Int, Int)

    /// One compile that failed: the program (kernel family), the architecture and NVRTC's log.
    public struct CompileError: Error, CustomStringConvertible {
        public let program: String, architecture: String, log: String
        public var description: String { "NVRTC could not compile \(program) for \(architecture):\n\(log)" }
    }

    public struct CallFailed: Error, CustomStringConvertible {
        public let call: String, message: String
        public var description: String { "\(call) failed: \(message)" }
    }

    /// Loads libnvrtc (CUDA 13, then 12).
    public convenience init() throws {
        let h = try CUDALibraries.load(["libnvrtc.so.13", "libnvrtc.so.12"], component: "cuda_nvrtc")
        try self.init(handle: h, path: CUDALibraries.loaded["cuda_nvrtc"])
    }

    /// Loads the libnvrtc at `path` (the compile gate runs NVRTC 12 and 13 side by side).
    public convenience init(library path: String) throws {
        guard let h = dlopen(path, RTLD_NOW | RTLD_LOCAL) else {
            throw CUDALibraries.NotFound(library: path, tried: ["\(path): \(String(cString: dlerror()))"])
        }
        try self.init(handle: h, path: path)
    }

    /// `path`: where `h` was loaded from (a bare soname when the dynamic loader found it).
    private init(handle h: UnsafeMutableRawPointer, path: String?) throws {
        create = try CUDALibraries.symbol(h, "nvrtcCreateProgram", as: CreateProgram.self)
        if let path { NVRTC.preloadBuiltins(beside: path) }
        compile = try CUDALibraries.symbol(h, "nvrtcCompileProgram", as: CompileProgram.self)
        destroy = try CUDALibraries.symbol(h, "nvrtcDestroyProgram", as: DestroyProgram.self)
        logSize = try CUDALibraries.symbol(h, "nvrtcGetProgramLogSize", as: GetSize.self)
        log = try CUDALibraries.symbol(h, "nvrtcGetProgramLog", as: GetBytes.self)
        cubinSize = try CUDALibraries.symbol(h, "nvrtcGetCUBINSize", as: GetSize.self)
        cubin = try CUDALibraries.symbol(h, "nvrtcGetCUBIN", as: GetBytes.self)
        errorString = try CUDALibraries.symbol(h, "nvrtcGetErrorString", as: ErrorString.self)
        let v = try CUDALibraries.symbol(h, "nvrtcVersion", as: Version.self)
        var major: Int32 = 0, minor: Int32 = 0
        _ = v(&major, &minor)
        version = (Int(major), Int(minor))
    }

    /// libnvrtc dlopens its builtins (`libnvrtc-builtins.so.13.0`) by bare name when it first
    /// compiles. CUDA 13.0's wheel (what PyTorch's cu130 wheels bring) has no `$ORIGIN` run path,
    /// so loaded by full path from a wheel folder it would not find them ("failed to open
    /// libnvrtc-builtins.so.13.0") unless LD_LIBRARY_PATH named the folder. Loading the builtins
    /// from libnvrtc's own folder first makes that dlopen find them by soname.
    static func preloadBuiltins(beside path: String) {
        let folder = parentPath(path)
        let name = (path as NSString).lastPathComponent  // libnvrtc.so.13
        guard !folder.isEmpty, name.hasPrefix("libnvrtc.so."), let files = try? FileManager.default.contentsOfDirectory(atPath: folder) else { return }
        let major = name.dropFirst("libnvrtc.so.".count).prefix { $0 != "." }
        for f in files.sorted() where f.hasPrefix("libnvrtc-builtins.so.\(major)") {
            _ = dlopen(folder + "/" + f, RTLD_NOW | RTLD_LOCAL)
        }
    }

    private func check(_ r: Int32, _ call: String) throws {
        if r != CUDAConstants.values.NVRTC_SUCCESS { throw CallFailed(call: call, message: errorString(r).map { String(cString: $0) } ?? "error \(r)") }
    }

    /// CUBIN of `source` for `architecture` (e.g. "sm_80"). `name` names the program in errors.
    public func compileCUBIN(_ source: String, name: String, architecture: String, options: [String]) throws -> Data {
        try compileCUBINWithLog(source, name: name, architecture: architecture, options: options).cubin
    }

    /// The same, with NVRTC's log of a successful compile (ptxas's report, with `--ptxas-options=-v`).
    public func compileCUBINWithLog(_ source: String, name: String, architecture: String, options: [String]) throws -> (cubin: Data, log: String) {
        var program: OpaquePointer?
        try check(source.withCString { s in name.withCString { n in create(&program, s, n, 0, nil, nil) } }, "nvrtcCreateProgram(\(name))")
        defer { _ = destroy(&program) }
        let all = ["--gpu-architecture=\(architecture)"] + options
        let cStrings = all.map { strdup($0) }
        defer { cStrings.forEach { free($0) } }
        let result = cStrings.map { UnsafePointer($0) }.withUnsafeBufferPointer { compile(program, Int32(all.count), $0.baseAddress) }
        var n = 0
        _ = logSize(program, &n)
        var logText = ""
        if n > 1 {
            var buf = [CChar](repeating: 0, count: n)
            _ = log(program, &buf)
            logText = String(cString: buf)
        }
        if result != CUDAConstants.values.NVRTC_SUCCESS {
            throw CompileError(program: name, architecture: architecture, log: logText.isEmpty ? (errorString(result).map { String(cString: $0) } ?? "") : logText)
        }
        try check(cubinSize(program, &n), "nvrtcGetCUBINSize(\(name))")
        var bytes = [CChar](repeating: 0, count: n)
        try check(cubin(program, &bytes), "nvrtcGetCUBIN(\(name))")
        return (bytes.withUnsafeBytes { Data($0) }, logText)
    }
}
