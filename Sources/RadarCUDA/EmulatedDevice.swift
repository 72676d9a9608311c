import CCUDAEmulator
import RadarCPU
import RadarEngine

/// One kernel argument, passed as cuLaunchKernel passes them (a pointer to the value).
public enum KernelArg {
    case ptr(UnsafeMutablePointer<Float>?)
    case doubles(UnsafeMutablePointer<Double>)
    case i32(Int)
    case i64(Int)
    case f32(Float)
    case u32(UInt32)
    case u64(UInt64)
}

/// The emulated CUDA device behind the driver-like calls the CUDA backend makes: device memory
/// in mappings the host cannot dereference (the fence of the fenced backend: readable only while
/// a driver call runs), kernels run by the emulator (the same sources NVRTC compiles, as host
/// C++, block threads as fibers), cuBLAS semantics by the CPU backend's single-threaded GEMM and
/// cuFFT semantics by its FFTW plans, both on device memory inside the fence.
public final class EmulatedDevice: @unchecked Sendable {
    /// The host library standing in for cuBLAS and cuFFT.
    public let host: CPUBackend
    public init() { host = CPUBackend(threads: 1) }

    public func allocate(_ count: Int) -> UnsafeMutablePointer<Float> { Fence.shared.map(floats: max(count, 1)) }
    public func free(_ p: UnsafeMutablePointer<Float>) { Fence.shared.unmap(p) }

    /// Runs `body` with device memory accessible (a driver call in progress).
    @inline(__always)
    public func inside<T>(_ body: () -> T) -> T {
        Fence.shared.open()
        defer { Fence.shared.close() }
        return body()
    }

    public struct LaunchFailed: Error, CustomStringConvertible {
        public let kernel: String, message: String
        public var description: String { "kernel \(kernel) failed on the emulated device: \(message)" }
    }

    private var launchers: [String: radar_emu_kernel] = [:]

    /// cuLaunchKernel: `grid` blocks of `block` threads. A failed launch (deadlock, barrier
    /// misuse) is a programming error in a kernel: it stops the process with the emulator's report.
    public func launch(_ name: String, grid: Int, block: Int, _ args: [KernelArg]) {
        guard grid > 0 else { return }
        let kernel: radar_emu_kernel
        if let k = launchers[name] { kernel = k } else {
            guard let k = radar_emu_lookup(name) else { fatalError("emulated device: no kernel \(name)") }
            launchers[name] = k
            kernel = k
        }
        withUnsafeTemporaryAllocation(of: UInt64.self, capacity: max(args.count, 1)) { slots in
            withUnsafeTemporaryAllocation(of: UnsafeMutableRawPointer?.self, capacity: max(args.count, 1)) { argv in
                for (i, a) in args.enumerated() {
                    let p = UnsafeMutableRawPointer(slots.baseAddress! + i)
                    switch a {
                    case .ptr(let v): p.storeBytes(of: v, as: UnsafeMutablePointer<Float>?.self)
                    case .doubles(let v): p.storeBytes(of: v, as: UnsafeMutablePointer<Double>.self)
                    case .i32(let v): p.storeBytes(of: Int32(v), as: Int32.self)
                    case .i64(let v): p.storeBytes(of: v, as: Int.self)
                    case .f32(let v): p.storeBytes(of: v, as: Float.self)
                    case .u32(let v): p.storeBytes(of: v, as: UInt32.self)
                    case .u64(let v): p.storeBytes(of: v, as: UInt64.self)
                    }
                    argv[i] = p
                }
                var g: (UInt32, UInt32, UInt32) = (UInt32(grid), 1, 1), b: (UInt32, UInt32, UInt32) = (UInt32(block), 1, 1)
                let status = inside {
                    withUnsafePointer(to: &g) { gp in withUnsafePointer(to: &b) { bp in
                        gp.withMemoryRebound(to: UInt32.self, capacity: 3) { g3 in bp.withMemoryRebound(to: UInt32.self, capacity: 3) { b3 in
                            kernel(g3, b3, argv.baseAddress)
                        } }
                    } }
                }
                if status != 0 { fatalError("\(LaunchFailed(kernel: name, message: String(cString: radar_emu_last_error())))") }
            }
        }
    }
}
