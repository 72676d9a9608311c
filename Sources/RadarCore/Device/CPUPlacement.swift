import CProcess
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A GPU rank's threads on the CPUs next to its GPU. On a machine of two sockets, half the GPUs
/// hang off each socket's PCIe root: a rank whose loader, staging copies and host all-reduce run
/// on the other socket crosses the socket link for every byte (pinned copies at about half
/// speed). The GPU's PCI address (cuDeviceGetPCIBusId) names its CPUs in sysfs
/// (`/sys/bus/pci/devices/ADDR/local_cpulist`); the process keeps the CPUs it was given that are
/// among them. A launcher that bound the rank to CPUs none of which are the GPU's (OpenMPI's
/// `--bind-to socket` maps ranks to sockets round-robin, not by GPU) is left as it is, and said.
public enum CPUPlacement {
    /// "0-3,8,10-11" (sysfs and `taskset -c` syntax) as a set; nil when malformed.
    public static func parseList(_ text: String) -> Set<Int>? {
        var cpus = Set<Int>()
        for part in text.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: ",") {
            let ends = part.split(separator: "-", omittingEmptySubsequences: false).map { Int($0) }
            guard ends.count <= 2, let lo = ends.first ?? nil, lo >= 0, lo < 1 << 16 else { return nil }
            let hi = ends.count == 2 ? ends[1] : lo
            guard let hi, hi >= lo, hi < 1 << 16 else { return nil }
            cpus.formUnion(lo...hi)
        }
        return cpus.isEmpty ? nil : cpus
    }

    /// The set as ranges, ascending: "0-3,8,10-11".
    public static func listText(_ cpus: Set<Int>) -> String {
        var runs: [(lo: Int, hi: Int)] = []
        for c in cpus.sorted() {
            if let last = runs.last, c == last.hi + 1 { runs[runs.count - 1].hi = c } else { runs.append((c, c)) }
        }
        return runs.map { $0.lo == $0.hi ? "\($0.lo)" : "\($0.lo)-\($0.hi)" }.joined(separator: ",")
    }

    /// The CPUs sysfs lists as local to the PCI device at `busId` (cuDeviceGetPCIBusId's
    /// "0000:3B:00.0"; sysfs spells it in lower case); nil where sysfs does not say.
    public static func localCPUs(busId: String, sysfs: String = "/sys") -> Set<Int>? {
        let path = "\(sysfs)/bus/pci/devices/\(busId.lowercased())/local_cpulist"
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return nil }
        return parseList(text)
    }

    public enum Decision: Equatable {
        /// Every CPU this process may use is already the GPU's (or the GPU's are all of them).
        case keep
        /// Keep only these (the GPU's among the allowed ones).
        case narrow(Set<Int>)
        /// None of the allowed CPUs is the GPU's: the launcher bound the rank elsewhere.
        case elsewhere
    }

    public static func decide(allowed: Set<Int>, local: Set<Int>) -> Decision {
        let both = allowed.intersection(local)
        if both.isEmpty { return .elsewhere }
        return both == allowed ? .keep : .narrow(both)
    }

    /// Mask words (64 CPUs each): 16 cover 1024 CPUs, as glibc's cpu_set_t.
    static let maskWords = 16

    /// The CPUs thread `tid` (0: this one) may run on (sched_getaffinity).
    public static func allowed(thread tid: Int32 = 0) -> Set<Int>? {
        var mask = [UInt64](repeating: 0, count: maskWords)
        guard radar_get_affinity(tid, &mask, Int32(maskWords)) == 0 else { return nil }
        var cpus = Set<Int>()
        for (w, word) in mask.enumerated() where word != 0 {
            for bit in 0..<64 where word & (1 << UInt64(bit)) != 0 { cpus.insert(w * 64 + bit) }
        }
        return cpus
    }

    /// Restricts every thread of this process (and those it starts later) to `cpus`; returns
    /// how many threads could not be moved (one that ended meanwhile is not a failure).
    @discardableResult
    public static func restrictProcess(to cpus: Set<Int>) -> Int {
        var mask = [UInt64](repeating: 0, count: maskWords)
        for c in cpus where c < maskWords * 64 { mask[c / 64] |= 1 << UInt64(c % 64) }
        var failed = 0
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []
        for t in tasks.compactMap({ Int32($0) }) where radar_set_affinity(t, mask, Int32(maskWords)) != 0 {
            if errno != ESRCH { failed += 1 }
        }
        // This thread last (and even where /proc is not mounted): threads it starts inherit it.
        if radar_set_affinity(0, mask, Int32(maskWords)) != 0 { failed += 1 }
        return failed
    }

    /// Places this process next to the GPU at `busId`: a line for the log saying what was done,
    /// or nil when there was nothing to do or sysfs does not know the device.
    public static func placeNear(busId: String, gpu: String, sysfs: String = "/sys") -> String? {
        guard let local = localCPUs(busId: busId, sysfs: sysfs), let allowed = allowed() else { return nil }
        switch decide(allowed: allowed, local: local) {
        case .keep:
            return nil
        case .narrow(let cpus):
            let failed = restrictProcess(to: cpus)
            return "CPUs \(listText(cpus)) of \(listText(allowed)): those next to \(gpu) (PCI \(busId.lowercased()))"
                + (failed > 0 ? "; \(failed) thread\(failed == 1 ? "" : "s") could not be moved" : "")
        case .elsewhere:
            return "warning: bound by its launcher to CPUs \(listText(allowed)), none of them next to \(gpu) (CPUs \(listText(local))): "
                + "host copies cross the socket link; bind ranks by GPU (mpirun --bind-to none, or a rankfile)"
        }
    }
}
