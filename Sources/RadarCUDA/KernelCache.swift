import Foundation
import RadarEngine
#if canImport(Glibc)
import Glibc
#endif

/// Compiled kernels on disk, keyed by everything that determines the CUBIN: the source, the
/// options, the NVRTC version and the architecture. A file that does not match its own checksum
/// (a corrupt or truncated cache entry) is recompiled and replaced, never loaded.
///
/// Folder: `RADAR_KERNEL_CACHE`, else `$XDG_CACHE_HOME/radar/kernels`, else `~/.cache/radar/kernels`.
public final class KernelCache: @unchecked Sendable {
    public let folder: String
    public let compiler: NVRTC
    /// What the last `cubin` call did, for logs and tests: "hit", "compiled" or "recompiled", the
    /// last two followed by " (not cached)" when the folder could not take the entry.
    public private(set) var lastOutcome = ""
    private var warnedAboutStoring = false

    static let magic = "RADARCUBIN1"

    public static var defaultFolder: String {
        let env = ProcessInfo.processInfo.environment
        if let d = env["RADAR_KERNEL_CACHE"] { return d }
        let base = env["XDG_CACHE_HOME"] ?? ((env["HOME"] ?? NSTemporaryDirectory()) + "/.cache")
        return base + "/radar/kernels"
    }

    public init(compiler: NVRTC, folder: String = KernelCache.defaultFolder) {
        self.compiler = compiler
        self.folder = folder
    }

    /// The cache key of a compile, as hex.
    public func key(_ family: KernelFamily, architecture: String, options: [String]) -> String {
        var h = FNV1a()
        h.mix(family.source)
        for o in options { h.mix("\u{1}" + o) }
        h.mix("\u{2}nvrtc \(compiler.version.0).\(compiler.version.1)\u{2}\(architecture)")
        // A second, differently seeded pass makes a 128-bit key (collisions are not a concern at
        // a few dozen entries, but a wrong CUBIN would be silent).
        var g = FNV1a(h.value ^ 0x9e37_79b9_7f4a_7c15)
        g.mix(family.source)
        return String(format: "%016llx%016llx", h.value, g.value)
    }

    /// The CUBIN of `family` for `architecture`, from the cache or compiled (and stored).
    public func cubin(_ family: KernelFamily, architecture: String, options: [String]) throws -> Data {
        let k = key(family, architecture: architecture, options: options)
        let path = "\(folder)/\(family.name)-\(architecture)-\(k).cubin"
        var hadCorrupt = false
        if let d = FileManager.default.contents(atPath: path) {
            if let cubin = KernelCache.decode(d, key: k) {
                lastOutcome = "hit"
                return cubin
            }
            hadCorrupt = true
        }
        let cubin = try compiler.compileCUBIN(family.source, name: family.name, architecture: architecture, options: options)
        lastOutcome = hadCorrupt ? "recompiled" : "compiled"
        do {
            try store(cubin, key: k, at: path)
        } catch {
            // A read-only or full cache folder costs a compile at the next start, not this run.
            lastOutcome += " (not cached)"
            if !warnedAboutStoring {
                warnedAboutStoring = true
                writeStandardError("\(error); kernels are compiled at every start (set RADAR_KERNEL_CACHE to a writable folder)\n")
            }
        }
        return cubin
    }

    /// magic \n key \n checksum \n bytes.
    static func encode(_ cubin: Data, key: String) -> Data {
        var d = Data("\(magic)\n\(key)\n\(String(FNV1a.hash(bytes: cubin), radix: 16))\n".utf8)
        d.append(cubin)
        return d
    }

    static func decode(_ d: Data, key: String) -> Data? {
        var lines: [Data] = [], start = d.startIndex
        while lines.count < 3, let nl = d[start...].firstIndex(of: 0x0a) {
            lines.append(d[start..<nl])
            start = d.index(after: nl)
        }
        guard lines.count == 3, String(decoding: lines[0], as: UTF8.self) == magic, String(decoding: lines[1], as: UTF8.self) == key
        else { return nil }
        let body = d[start...]
        guard !body.isEmpty, String(decoding: lines[2], as: UTF8.self) == String(FNV1a.hash(bytes: body), radix: 16) else { return nil }
        return Data(body)
    }

    /// Written beside the target and renamed, so a reader never sees half a file.
    private func store(_ cubin: Data, key: String, at path: String) throws {
        do {
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        } catch {
            throw NVRTC.CallFailed(call: "kernel cache write", message: "\(folder): cannot create the folder")
        }
        let tmp = path + ".tmp-\(getpid())"
        guard FileManager.default.createFile(atPath: tmp, contents: KernelCache.encode(cubin, key: key)), rename(tmp, path) == 0 else {
            unlink(tmp)
            throw NVRTC.CallFailed(call: "kernel cache write", message: "\(path): \(String(cString: strerror(errno)))")
        }
    }
}
