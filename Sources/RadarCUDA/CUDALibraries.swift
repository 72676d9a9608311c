import Foundation
import Synchronization
import RadarEngine
#if canImport(Glibc)
import Glibc
#endif

/// Finds and loads the CUDA libraries at run time (`dlopen`), so nothing links against CUDA and
/// every CPU command runs where no CUDA exists. Sonames are tried newest first (CUDA 13, then 12)
/// in: the folders of `RADAR_CUDA_LIBS` (colon-separated), the `nvidia/*/lib` folders of pip
/// wheels in the active virtualenv, the user site and the system site-packages, then the usual
/// system locations and the dynamic loader's own path.
public enum CUDALibraries {
    public struct NotFound: Error, CustomStringConvertible {
        public let library: String
        public let tried: [String]
        public var description: String {
            "cannot load \(library) (tried \(tried.count) places; set RADAR_CUDA_LIBS to the folder holding it, or install the nvidia-* wheels into the virtualenv): last error: \(tried.last ?? "-")"
        }
    }

    /// Folders that pip's nvidia-* wheels install into, for `component` (e.g. "cuda_nvrtc").
    static func wheelFolders(_ component: String, leaf: String) -> [String] {
        let env = ProcessInfo.processInfo.environment
        var roots: [String] = []
        if let v = env["VIRTUAL_ENV"] { roots.append(v) }
        if let v = env["CONDA_PREFIX"] { roots.append(v) }
        if let p = env["RADAR_PYTHON"] {  // .../venv/bin/python -> .../venv
            roots.append(parentPath(parentPath(p)))
        }
        roots.append(FileManager.default.currentDirectoryPath + "/.build/pyvenv")
        if let h = env["HOME"] { roots.append(h + "/.local") }
        roots += ["/usr/local", "/usr", "/opt/conda"]
        var out: [String] = []
        for r in roots {
            for libdir in ["lib", "lib64"] {
                let base = "\(r)/\(libdir)"
                guard let pys = try? FileManager.default.contentsOfDirectory(atPath: base) else { continue }
                for py in pys.sorted().reversed() where py.hasPrefix("python3") {
                    for site in ["site-packages", "dist-packages"] {
                        // CUDA 12 wheels: nvidia/<component>/lib; CUDA 13 wheels share nvidia/cu13/lib.
                        for d in ["\(base)/\(py)/\(site)/nvidia/\(component)/\(leaf)", "\(base)/\(py)/\(site)/nvidia/cu13/\(leaf)"]
                        where FileManager.default.fileExists(atPath: d) && !out.contains(d) { out.append(d) }
                    }
                }
            }
        }
        return out
    }

    /// Every folder to look in for `component`'s libraries, in order.
    public static func searchPath(_ component: String) -> [String] {
        let env = ProcessInfo.processInfo.environment
        let user = (env["RADAR_CUDA_LIBS"] ?? "").split(separator: ":").map(String.init)
        return user + wheelFolders(component, leaf: "lib") + ["/usr/local/cuda/lib64", "/usr/lib/x86_64-linux-gnu", "/usr/lib64"]
    }

    /// The include folder of the runtime wheel (cuda_bf16.h, cuda_fp16.h), when there is one.
    public static func runtimeIncludeFolder() -> String? {
        if let d = ProcessInfo.processInfo.environment["RADAR_CUDA_INCLUDE"] { return d }
        return wheelFolders("cuda_runtime", leaf: "include").first
            ?? (FileManager.default.fileExists(atPath: "/usr/local/cuda/include/cuda_bf16.h") ? "/usr/local/cuda/include" : nil)
    }

    private static let loadedPaths = Mutex<[String: String]>([:])
    /// What was loaded, by soname asked for: the path (or the bare soname when the dynamic
    /// loader found it), for probes and logs.
    public static var loaded: [String: String] { loadedPaths.withLock { $0 } }

    /// dlopen of the first soname found, in `component`'s folders; the handle stays open for the
    /// process. Listed in `loaded` under `key` (the component's name unless given).
    public static func load(_ sonames: [String], component: String, key: String? = nil) throws -> UnsafeMutableRawPointer {
        var tried: [String] = []
        for dir in searchPath(component) {
            for name in sonames {
                let path = dir + "/" + name
                guard FileManager.default.fileExists(atPath: path) else { continue }
                if let h = dlopen(path, RTLD_NOW | RTLD_LOCAL) {
                    loadedPaths.withLock { $0[key ?? component] = path }
                    return h
                }
                tried.append("\(path): \(String(cString: dlerror()))")
            }
        }
        for name in sonames {  // the loader's own search (LD_LIBRARY_PATH, ld.so.cache)
            if let h = dlopen(name, RTLD_NOW | RTLD_LOCAL) {
                loadedPaths.withLock { $0[key ?? component] = name }
                return h
            }
            tried.append("\(name): \(String(cString: dlerror()))")
        }
        throw NotFound(library: sonames.first ?? component, tried: tried)
    }

    /// A C function of a loaded library, as `T` (a `@convention(c)` type).
    public static func symbol<T>(_ handle: UnsafeMutableRawPointer, _ name: String, as: T.Type) throws -> T {
        guard let p = dlsym(handle, name) else { throw NotFound(library: name, tried: ["dlsym: \(String(cString: dlerror()))"]) }
        return unsafeBitCast(p, to: T.self)
    }
}
