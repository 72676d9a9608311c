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
