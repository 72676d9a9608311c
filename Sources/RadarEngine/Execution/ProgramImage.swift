import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// How this process was started: by the kernel from its own file, or by a dynamic loader run as a
/// program. The bundle's launchers do the latter on a machine whose glibc is older than the
/// bundle's files need: `glibc/lib/ld-linux-x86-64.so.2 --library-path ... --argv0 bin/radar
/// libexec/radar ARGS` (scripts/bundle.sh). Then `/proc/self/exe` is the loader, not the program:
/// executing it again with the program's arguments would run the loader on them, and the kernel
/// names the process after the loader's file.
public enum ProgramImage {
    /// Whether `path` (what /proc/self/exe points at) is a dynamic loader's file.
    public static func isLoader(_ path: String) -> Bool {
        let name = (path as NSString).lastPathComponent
        return name.hasPrefix("ld-linux") || (name.hasPrefix("ld-") && name.contains(".so"))
    }

    /// The file the kernel executed (/proc/self/exe), nil where it cannot be read.
    public static let executedFile: String? = {
        var buf = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = readlink("/proc/self/exe", &buf, buf.count - 1)
        guard n > 0 else { return nil }
        return String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }()

    /// True when a loader run as a program started this process.
    public static var startedByLoader: Bool { executedFile.map(isLoader) ?? false }

    /// What to execute to run this program again with the same arguments: the program's own file
    /// (what /proc/self/exe points at), or, when a loader started it, `argv0` (the bundle's
    /// launcher, which the launcher passed as `--argv0` and which runs the loader again).
    /// /proc/self/exe itself only where the file is gone (replaced by a rebuild: "... (deleted)"):
    /// the kernel names a process after the file it executes, so every process that re-executed
    /// through /proc/self/exe was "exe" to ps, top, pgrep, pkill and killall (on a CPU OpenBLAS
    /// 0.3.21 takes for a Prescott, every radar process re-executes).
    public static func reexecPath(executed: String?, argv0: String) -> String {
        if let e = executed, isLoader(e), argv0.contains("/") { return argv0 }
        if let e = executed, e.hasPrefix("/"), !e.hasSuffix(" (deleted)"), access(e, X_OK) == 0 { return e }
        return "/proc/self/exe"
    }

    public static var reexecPath: String {
        reexecPath(executed: executedFile, argv0: CommandLine.arguments.first ?? "")
    }

    /// The glibc this process runs on, and whose: "2.36" (the machine's) or "2.36 (the bundle's,
    /// through LOADER)" when a loader run as a program started it (radar check-device's probe).
    public static var glibcDescription: String {
        var buf = [CChar](repeating: 0, count: 64)
        let n = confstr(Int32(_CS_GNU_LIBC_VERSION), &buf, buf.count)
        let version = n > 0 ? String(cString: buf).replacingOccurrences(of: "glibc ", with: "") : "unknown"
        guard startedByLoader, let loader = executedFile else { return version }
        return "\(version) (the bundle's, through \(loader))"
    }

    /// When a loader started this process, names it after the program (argv[0]'s last component,
    /// the first 15 bytes as the kernel keeps them), which `ps`, `top` and `pkill` read, instead of
    /// `ld-linux-x86-64`. Call first thing in `main` (the main thread's name is the process's).
    public static func nameAfterProgram() {
        guard startedByLoader, let argv0 = CommandLine.arguments.first else { return }
        let name = Array(((argv0 as NSString).lastPathComponent).utf8.prefix(15))
        let fd = open("/proc/self/comm", O_WRONLY)  // the main thread's: the process's name
        guard fd >= 0 else { return }
        _ = name.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
    }
}
