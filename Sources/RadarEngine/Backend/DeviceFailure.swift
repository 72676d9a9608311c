import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// How a backend stops on what it cannot recover from: memory the device (or, for the CPU
/// backend, the host) cannot give, and a CUDA call that failed after start-up: a device fault (an illegal address, an uncorrectable
/// ECC error, a GPU that fell off the bus), a library out of its resources, or a bug. CUDA's
/// faults are sticky (the context is lost and every later call fails), so nothing can be retried
/// in-process: the process stops with one line naming the device, the call and CUDA's own words,
/// exit status 1, no crash report. Checkpoints are written to a temporary file and renamed, so the
/// last one stays whole; a data-parallel job's other ranks see this rank go and stop, naming it.
/// A fault reaches every thread that uses the device (the training thread's next launch, the
/// communication thread's wait for a download): the first thread to stop prints the line and
/// ends the process, any other waits for that (it would print a second line otherwise, as two
/// ranks' threads did under ThreadSanitizer, whose exit takes long enough to see it).
public enum DeviceFailure {
    /// Whether a thread has begun to stop the process.
    static let stopping = FirstCaller()

    /// Writes `PROGRAM: error: MESSAGE` to standard error and exits with status 1; a thread that
    /// comes after another's stop waits, silent, for that to end the process.
    public static func stop(_ message: String) -> Never {
        guard stopping.claim() else { while true { sleep(60) } }
        for action in cleanups.withLock({ c in defer { c.actions.removeAll() }; return c.actions.sorted { $0.key < $1.key }.map(\.value) }) { action() }
        let program = (CommandLine.arguments.first.map { ($0 as NSString).lastPathComponent }) ?? "radar"
        writeStandardError("\(program): error: \(message)\n")
        exitNow(1)
    }

    /// What to do before `stop` ends the process, by id (`atStop`).
    private static let cleanups = Mutex<(next: Int, actions: [Int: @Sendable () -> Void])>((0, [:]))

    /// Registers `action` to run (once, on the stopping thread) before a stop ends the process:
    /// a run removes the experiment folder it made while that holds nothing yet. Returns the id
    /// `cancelAtStop` takes.
    public static func atStop(_ action: @escaping @Sendable () -> Void) -> Int {
        cleanups.withLock { c in
            c.next += 1
            c.actions[c.next] = action
            return c.next
        }
    }

    public static func cancelAtStop(_ id: Int) {
        _ = cleanups.withLock { $0.actions.removeValue(forKey: id) }
    }

    /// An allocation that did not fit while the run sizes its memory: the error, what was being
    /// sized (`DeviceMemoryContext`, e.g. the batch) and the remedy.
    public static func outOfMemory(_ error: Any) -> Never {
        let context = DeviceMemoryContext.current
        stop("\(error)\(context.isEmpty ? "" : " while sizing \(context): lower it")")
    }
}

/// True for the first call of `claim()` only, whichever thread makes it.
public final class FirstCaller: Sendable {
    private let claimed = Atomic<Bool>(false)
    public init() {}
    public func claim() -> Bool {
        claimed.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged
    }
}

/// Byte counts for messages.
public enum Bytes {
    public static func text(_ n: Int) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var v = Double(n), u = 0
        while v >= 1024 && u < units.count - 1 { v /= 1024; u += 1 }
        return u == 0 ? "\(n) B" : String(format: "%.1f %@ (%ld bytes)", v, units[u], n)
    }

    /// A limit, which is a round number: "16 GiB", "64 MiB", "64 KiB", "100 bytes".
    public static func limitText(_ n: Int) -> String {
        for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] where n >= 1 << shift && n % (1 << shift) == 0 { return "\(n >> shift) \(unit)" }
        return "\(n) bytes"
    }
}

/// Host memory for the CPU backend's allocations: what the machine can still give this process.
public enum HostMemory {
    /// Bytes that can still be allocated and touched without the kernel's OOM killer stepping in:
    /// MemAvailable plus SwapFree, bounded by what the process's memory cgroups leave
    /// (`cgroupHeadroom`: a container's, a SLURM job's, v1 or v2). Nil where unknown.
    /// `RADAR_HOST_MEMORY` (e.g. 512M, 2G) stands for a machine of that size, for tests: then
    /// it is that less this process's resident memory.
    public static func available() -> Int? {
        if let text = ProcessInfo.processInfo.environment["RADAR_HOST_MEMORY"], let budget = parseBytes(text) {
            return max(0, budget - residentBytes())
        }
        guard let info = readKernelFile("/proc/meminfo") else { return nil }
        func field(_ name: String) -> Int? {
            for line in info.split(separator: "\n") where line.hasPrefix(name + ":") {
                return line.split(whereSeparator: { $0 == " " || $0 == "\t" }).dropFirst().first.flatMap { Int($0) }.map { $0 * 1024 }
            }
            return nil
        }
        guard let avail = field("MemAvailable") else { return nil }
        var result = avail + (field("SwapFree") ?? 0)
        if let headroom = cgroupHeadroom(cgroups: readKernelFile("/proc/self/cgroup")) { result = min(result, headroom) }
        return result
    }

    /// What this process's memory cgroups leave it: the least, over its cgroup and each ancestor
    /// that has a limit, of the limit less what the cgroup holds that the kernel cannot reclaim
    /// (its usage less its inactive file pages, as `docker stats` counts it: a dataset read through
    /// the page cache fills a cgroup's usage to its limit, and that is no shortage). cgroup v2
    /// (`0::PATH` in /proc/self/cgroup: `memory.max`, `memory.current`, `memory.stat`'s
    /// `inactive_file` under ROOT/PATH) or v1 (the line naming the memory controller:
    /// `memory.limit_in_bytes`, `memory.usage_in_bytes`, `total_inactive_file` under
    /// ROOT/memory/PATH). A SLURM job step, a Kubernetes pod or a systemd slice is such an
    /// ancestor; reading only ROOT's `memory.max` (a container's own cgroup namespace) missed
    /// them, and v1 (this development machine, RHEL 8's default) entirely. Nil: no limit found.
    public static func cgroupHeadroom(cgroups: String?, root: String = "/sys/fs/cgroup") -> Int? {
        guard let cgroups else { return nil }
        var v1: String?, v2: String?
        for line in cgroups.split(separator: "\n") {
            let f = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            guard f.count == 3 else { continue }
            if f[0] == "0" && f[1].isEmpty { v2 = String(f[2]) } else if f[1].split(separator: ",").contains("memory") { v1 = String(f[2]) }
        }
        let (base, path, limitName, usageName, inactiveName) = v1.map { (root + "/memory", $0, "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file") }
            ?? (root, v2 ?? "/", "memory.max", "memory.current", "inactive_file")
        func number(_ file: String) -> Int? { readKernelFile(file).flatMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) } }
        func inactiveFile(_ dir: String) -> Int {
            guard let stat = readKernelFile(dir + "/memory.stat") else { return 0 }
            for line in stat.split(separator: "\n") {
                let kv = line.split(separator: " ")
                if kv.count == 2 && kv[0] == inactiveName { return Int(kv[1]) ?? 0 }
            }
            return 0
        }
        var least: Int?, p = path.isEmpty ? "/" : path
        while true {
            let dir = p == "/" ? base : base + p
            // v1 writes "no limit" as a page-rounded Int64.max; v2 as "max" (not a number).
            if let limit = number(dir + "/" + limitName), limit < 1 << 60, let used = number(dir + "/" + usageName) {
                least = min(least ?? .max, limit - max(0, used - inactiveFile(dir)))
            }
            if p == "/" { break }
            p = parentPath(p)
            if p.isEmpty { p = "/" }
        }
        return least.map { max(0, $0) }
    }

    /// This process's resident memory in bytes (/proc/self/statm).
    public static func residentBytes() -> Int {
        guard let s = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8),
              let pages = s.split(separator: " ").dropFirst().first.flatMap({ Int($0) }) else { return 0 }
        return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
    }

    /// "64M", "2G", "1024" (bytes); nil when not a size (or past Int).
    public static func parseBytes(_ text: String) -> Int? {
        let t = text.trimmingCharacters(in: .whitespaces).uppercased()
        let units: [Character: Int] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40]
        if let u = t.last.flatMap({ units[$0] }) {
            return Int(t.dropLast()).flatMap { n in let (v, o) = n.multipliedReportingOverflow(by: u); return o ? nil : v }
        }
        return Int(t)
    }

    /// The memory is touched at once (memset, a fill), so what the machine cannot give would end
    /// the process by the kernel's OOM killer without a word, or Swift's allocator with a trap: a
    /// request of 16 MiB or more is checked first and refused in one line naming what was being
    /// sized (`DeviceMemoryContext`, e.g. the batch).
    public static func requireAvailable(_ bytes: Int) {
        if bytes >= 16 << 20, let available = available(), bytes > available {
            DeviceFailure.outOfMemory(HostOutOfMemory(requested: bytes, available: available))
        }
    }
}

/// A host allocation that would not fit in what the machine has left.
public struct HostOutOfMemory: Error, CustomStringConvertible {
    public let requested: Int, available: Int
    public init(requested: Int, available: Int) { self.requested = requested; self.available = available }
    public var description: String {
        "out of host memory on cpu: \(Bytes.text(requested)) requested, \(Bytes.text(available)) available (free and reclaimable memory plus free swap)"
    }
}
