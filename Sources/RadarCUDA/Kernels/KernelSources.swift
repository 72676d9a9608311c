import CCUDAEmulator
/// The CUDA C++ source of one kernel family (one NVRTC program).
public struct KernelFamily: Sendable {
    public let name: String
    public let source: String

    public init(name: String, source: String) {
        self.name = name
        self.source = source
    }
}

/// Every kernel family of the CUDA backend. Each compiles with NVRTC to CUBIN for the device's
/// own architecture at start-up (cached on disk); CI compiles all of them for sm_80, sm_86 and
/// sm_90 on a machine without a GPU.
public enum KernelSources {
    public static let all: [KernelFamily] = [attention, channels, elementwise, layout, losses, normalization, optimizer, random, reasoning, transforms]

    /// NVRTC options for every family; `include` is the runtime wheel's include folder (cuda_bf16.h).
    public static func options(include: String?) -> [String] {
        ["-std=c++17", "-default-device"] + (include.map { ["--include-path=\($0)"] } ?? [])
    }
}

extension KernelFamily {
    /// Its kernels (`extern "C" __global__ void [__launch_bounds__(N[, M])] name(`) in source order,
    /// each with the most threads a block may have when it is launched: its `__launch_bounds__`, or
    /// `KernelSources.defaultBlockLimit` when it declares none (the emulated device refuses more).
    public var kernels: [(name: String, blockLimit: Int)] {
        let pattern = #/extern "C" __global__ void (?:__launch_bounds__\((\d+)(?:, *\w+)?\) )?(\w+)\(/#
        return source.matches(of: pattern).map { m in (String(m.output.2), m.output.1.flatMap { Int($0) } ?? KernelSources.defaultBlockLimit) }
    }
}

extension KernelSources {
    /// Threads a block of a kernel without `__launch_bounds__` may have: 256 threads fit any
    /// kernel's registers (255 a thread at most, 64K a block); past that ptxas must be told. The
    /// emulated device's own limit, so the two cannot disagree.
    public static let defaultBlockLimit = Int(RADAR_EMU_DEFAULT_BLOCK_LIMIT)
    /// NVRTC's option for ptxas's resource report in the log of a successful compile.
    public static let resourceReportOption = "--ptxas-options=-v"

    /// What ptxas reported for one kernel on one architecture.
    public struct Resources: Codable, Equatable, Sendable {
        public var kernel: String
        public var architecture: String
        public var registers = 0
        public var stackFrameBytes = 0
        public var spillStoreBytes = 0
        public var spillLoadBytes = 0
        public var sharedBytes = 0
        public var barriers = 0

        /// Resident blocks of `threads` threads per SM as the register file allows (64K 32-bit
        /// registers on every architecture from sm_80 to sm_120, given out per warp in units of 256).
        public func blocksPerSMByRegisters(threads: Int) -> Int {
            let perWarp = (max(registers, 1) * 32 + 255) / 256 * 256, warps = (threads + 31) / 32
            return 65_536 / (perWarp * warps)
        }
    }

    /// ptxas's `-v` report in an NVRTC log, kernel by kernel (the order ptxas compiled them).
    public static func resources(fromLog log: String, architecture: String) -> [Resources] {
        var out: [Resources] = []
        func number(_ line: Substring, before unit: String) -> Int {
            guard let r = line.range(of: unit) else { return 0 }
            return Int(line[..<r.lowerBound].split(separator: " ").last ?? "") ?? 0
        }
        for line in log.split(separator: "\n") {
            if let m = line.firstMatch(of: #/Compiling entry function '(\w+)'/#) {
                out.append(Resources(kernel: String(m.output.1), architecture: architecture))
            } else if !out.isEmpty, line.contains("bytes stack frame") {
                out[out.count - 1].stackFrameBytes = number(line, before: " bytes stack frame")
                out[out.count - 1].spillStoreBytes = number(line, before: " bytes spill stores")
                out[out.count - 1].spillLoadBytes = number(line, before: " bytes spill loads")
            } else if !out.isEmpty, line.contains("Used "), line.contains(" registers") {
                out[out.count - 1].registers = number(line, before: " registers")
                out[out.count - 1].barriers = number(line, before: " barriers")
                out[out.count - 1].sharedBytes = number(line, before: " bytes smem")
            }
        }
        return out
    }
}
