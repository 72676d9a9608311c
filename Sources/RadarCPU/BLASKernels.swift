import COpenBLAS
import Foundation
import RadarEngine
#if canImport(Glibc)
import Glibc
#endif

/// Which OpenBLAS kernel set runs our GEMMs. Debian's OpenBLAS 0.3.21 (DYNAMIC_ARCH) picks its
/// kernels from the CPU model when the library loads, and on CPUs newer than it knows (Sapphire
/// and Emerald Rapids) it falls back to Prescott (SSE3): 5x slower GEMMs. It honours
/// `OPENBLAS_CORETYPE`, read at load time (before `main`), so the commands check at start and,
/// when OpenBLAS chose a weaker core type than the CPU's features allow, set the variable and
/// re-execute themselves once (before MPI initialises). A user's own `OPENBLAS_CORETYPE` is
/// always respected.
public enum BLASKernels {
    /// OpenBLAS 0.3.21's x86-64 core types by capability (Haswell and Zen are both AVX2 + FMA).
    static let rank: [String: Int] = [
        "prescott": 0, "core2": 1, "penryn": 2, "dunnington": 3, "nehalem": 4, "sandybridge": 5, "bulldozer": 5,
        "piledriver": 5, "steamroller": 5, "excavator": 5, "haswell": 6, "zen": 6, "skylakex": 7, "cooperlake": 8,
    ]

    /// The strongest core type this OpenBLAS has for a CPU with these /proc/cpuinfo flags.
    public static func bestCoreType(flags: Set<String>, vendor: String) -> String? {
        let avx512 = ["avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd"].allSatisfy(flags.contains)
        if avx512 && flags.contains("avx512_bf16") { return "Cooperlake" }
        if avx512 { return "SkylakeX" }
        if flags.contains("avx2") && flags.contains("fma") { return vendor == "AuthenticAMD" ? "Zen" : "Haswell" }
        if flags.contains("avx") { return "Sandybridge" }
        return nil
    }

    /// The core type to switch to, or nil to keep `current` (already as strong, or unknown to us).
    public static func upgrade(current: String, flags: Set<String>, vendor: String) -> String? {
        guard let best = bestCoreType(flags: flags, vendor: vendor), let b = rank[best.lowercased()],
              let c = rank[current.lowercased()], c < b else { return nil }
        return best
    }

    /// The core type OpenBLAS is using ("Prescott", "Zen", "SkylakeX", ...).
    public static var current: String { openblas_get_corename().map { String(cString: $0) } ?? "unknown" }

    /// (flags, vendor) of the first CPU in /proc/cpuinfo; nil where it cannot be read.
    public static func cpuFlags(_ cpuinfo: String? = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8))
        -> (flags: Set<String>, vendor: String)?
    {
        guard let text = cpuinfo else { return nil }
        var flags: Set<String>?, vendor = ""
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            guard parts.count == 2 else { continue }
            if parts[0] == "vendor_id" && vendor.isEmpty { vendor = parts[1] }
            if parts[0] == "flags" && flags == nil { flags = Set(parts[1].split(separator: " ").map(String.init)) }
            if flags != nil && !vendor.isEmpty { break }
        }
        return flags.map { ($0, vendor) }
    }

    /// Call first thing in `main`: re-executes the process with the better kernels when OpenBLAS
    /// chose weak ones (at most once; returns when nothing needs doing or exec fails).
    /// `RADAR_TEST_CPUINFO=FILE` reads the CPU's flags from FILE instead of /proc/cpuinfo (for
    /// tests of the re-execution itself, scripts/check-bundle.sh).
    public static func reexecWithBestKernelsIfNeeded() {
        let env = ProcessInfo.processInfo.environment
        let cpuinfo = env["RADAR_TEST_CPUINFO"].map { try? String(contentsOfFile: $0, encoding: .utf8) }
            ?? (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8))
        guard env["OPENBLAS_CORETYPE"] == nil, env["RADAR_BLAS_REEXEC"] == nil,
              let cpu = cpuFlags(cpuinfo), let target = upgrade(current: current, flags: cpu.flags, vendor: cpu.vendor) else { return }
        setenv("OPENBLAS_CORETYPE", target, 1)
        setenv("RADAR_BLAS_REEXEC", "\(current)->\(target)", 1)
        // (Through the bundle's launcher when its glibc's loader started us: ProgramImage.)
        execv(ProgramImage.reexecPath, CommandLine.unsafeArgv)
        // exec failed: go on with the kernels we have.
        unsetenv("OPENBLAS_CORETYPE")
    }

    /// For benchmark records: the kernel set in use, and whether we chose it.
    public static var record: String {
        let chosen = ProcessInfo.processInfo.environment["RADAR_BLAS_REEXEC"].map { " (switched \($0) from the CPU's features)" } ?? ""
        return current + chosen
    }
}
