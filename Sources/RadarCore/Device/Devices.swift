import Foundation

/// Where a command's model runs: `--device` on every command that computes, `RADAR_DEVICE` as the
/// default (tests set it to run whole suites on another backend).
///
/// - `cpu`: the CPU backend (OpenBLAS, FFTW, our worker pool).
/// - `cuda-emulated`: the CUDA backend on the emulated device (its kernels compiled for the host,
///   device memory fenced off from the host, cuBLAS/cuFFT semantics from OpenBLAS/FFTW). Slow:
///   for tests of the CUDA backend without a GPU.
/// - `cpu-fenced`: the CPU backend behind a fence: tensor memory is inaccessible to the host
///   except while one of the backend's own calls runs, so any host access that bypasses the
///   backend crashes instead of hiding. Slow; for tests and for checking new code paths.
public enum Devices {
    public static let names = ["cpu", "cpu-fenced", "cuda-emulated"]

    /// `RADAR_DEVICE`, else cpu.
    public static var defaultName: String { ProcessInfo.processInfo.environment["RADAR_DEVICE"] ?? "cpu" }

    public struct UnknownDevice: Error, CustomStringConvertible {
        public let name: String
        public init(name: String) { self.name = name }
        public var description: String { "unknown device \"\(name)\": expected one of \(Devices.names.joined(separator: ", "))" }
    }

    /// A backend for `name` with `threads` compute threads.
    public static func backend(_ name: String, threads: Int) throws -> any Backend {
        switch name {
        case "cpu": return CPUBackend(threads: threads)
        case "cpu-fenced": return FencedBackend(wrapping: CPUBackend(threads: threads))
        case "cuda-emulated": return CUDABackend(device: EmulatedDevice())
        default: throw UnknownDevice(name: name)
        }
    }
}
