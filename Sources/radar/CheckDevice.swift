import ArgumentParser
import Foundation
import RadarCore

/// The GPU check in one command: what was found (driver, GPU, memory, libraries, kernel cache),
/// every Backend kernel against the CPU backend on the device, and the golden PyTorch parity
/// cases on the device. One JSON object on stdout; exit status 1 when anything disagrees.
struct CheckDevice: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check-device",
        abstract: "Probe a device, check every kernel against the CPU backend on it, and run the golden parity cases (JSON).")
    @Option(help: "Device (cuda, cuda:N; cuda-emulated or RADAR_CUDA_DRIVER=emulator without a GPU).") var device = "cuda"
    @Option(help: "Golden fixture folder (its subfolders are cases; default: the bundle's share/fixtures/parity or the repository's).")
    var fixtures: String?
    @Option(help: "Multiplies every golden bound (a GPU's fused multiply-adds round differently from the CPU's).") var slack: Float = 1
    @Flag(help: "Only the probe.") var probeOnly = false

    func defaultFixtures() -> String? {
        let exe = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
        // The bundle's, then the repository's: from here, or above a SwiftPM build folder
        // (.build/release, .build/<triple>/release).
        let repo = "Tests/RadarCoreTests/Fixtures/parity"
        let candidates = [exe.appendingPathComponent("../share/fixtures/parity").standardized.path,
                          FileManager.default.currentDirectoryPath + "/" + repo,
                          exe.appendingPathComponent("../../" + repo).standardized.path,
                          exe.appendingPathComponent("../../../" + repo).standardized.path]
        return candidates.first { FileManager.default.fileExists(atPath: $0) }
    }

    func run() throws {
        try failing {
            // The fixtures are found first: a missing folder is said before minutes of kernels.
            let folder = probeOnly ? nil : fixtures ?? defaultFixtures()
            if !probeOnly {
                guard let folder else { throw ValidationError("no golden fixtures found: pass --fixtures DIR (Tests/RadarCoreTests/Fixtures/parity)") }
                var isDir: ObjCBool = false
                guard FileManager.default.fileExists(atPath: folder, isDirectory: &isDir), isDir.boolValue else {
                    throw ValidationError("--fixtures \(folder): no such folder")
                }
            }
            var report: [String: Any] = ["check": "device", "device_name": device]
            let t0 = Date()
            let backend = try Devices.backend(device, threads: 1, precision: "fp32")
            var probe: [String: Any] = ["device": backend.deviceDescription, "libraries": CUDALibraries.loaded,
                                        "setup_seconds": Date().timeIntervalSince(t0), "glibc": ProgramImage.glibcDescription,
                                        "ctype_locale": setlocale(LC_CTYPE, nil).map { String(cString: $0) } ?? "unknown"]
            if let cuda = backend as? CUDABackend {
                let m = cuda.driver.memoryInfo()
                probe["memory_free_mib"] = Double(m.free) / 1_048_576
                probe["memory_total_mib"] = Double(m.total) / 1_048_576
                probe["compute_capability"] = "\(cuda.driver.computeCapability.major).\(cuda.driver.computeCapability.minor)"
                probe["gemm_epilogues"] = cuda.gemmEpiloguesInUse
                probe["attention_kernels"] = cuda.attentionKernels.rawValue
                probe["layernorm_backward"] = cuda.stagedLayerNormBackward ? "staged" : "chunk"
                // The GPUs this process sees (CUDA_VISIBLE_DEVICES honoured): gpu-check.sh runs
                // one rank a GPU where there are several.
                probe["device_count"] = device == "cuda-emulated" ? EmulatedDevice.deviceCount : (try? CUDADrivers.deviceCount()) ?? 1
                // Where the GPU sits (CPUPlacement): its PCI address, the CPUs sysfs names as
                // next to it and the CPUs this process may use.
                probe["allowed_cpus"] = CPUPlacement.allowed().map { CPUPlacement.listText($0) } ?? NSNull()
                if let bus = cuda.driver.pciBusId {
                    probe["pci_bus_id"] = bus
                    probe["local_cpus"] = CPUPlacement.localCPUs(busId: bus).map { CPUPlacement.listText($0) } ?? NSNull()
                }
                if let real = cuda.driver as? DriverAPI {
                    probe["kernel_cache"] = real.kernelOrigins
                    probe["kernel_cache_folder"] = KernelCache.defaultFolder
                }
            }
            report["probe"] = probe
            var passed = true
            if let folder {  // nil only with --probe-only
                logLine("check-device: \(KernelCheck.kernelNames.count) kernels against the CPU backend on \(backend.deviceDescription)")
                let results = KernelCheck.run(on: backend)
                report["kernels"] = results.map {
                    ["kernel": $0.kernel, "passed": $0.passed, "worst_ratio": $0.worst, "max_abs_error": $0.maxAbsError, "detail": $0.detail] as [String: Any]
                }
                report["kernels_passed"] = results.filter(\.passed).count
                report["kernels_total"] = results.count
                passed = passed && results.allSatisfy(\.passed)
                for r in results where !r.passed { logLine("check-device: kernel \(r.kernel) disagrees: \(r.detail) (ratio \(r.worst))") }
                var golden: [[String: Any]] = []
                for name in try FileManager.default.contentsOfDirectory(atPath: folder).sorted()
                where FileManager.default.fileExists(atPath: "\(folder)/\(name)/expected.safetensors") {
                    let t = Date()
                    let g = try GoldenParity.run(URL(fileURLWithPath: "\(folder)/\(name)"), device: device, precision: "fp32", slack: slack)
                    logLine("check-device: golden \(name): \(g.passed ? "passed" : "FAILED") (\(g.lines.count) tensors)")
                    for f in g.failures { logLine("  \(f)") }
                    golden.append(["case": name, "passed": g.passed, "tensors": g.lines.count, "failures": g.failures,
                                   "seconds": Date().timeIntervalSince(t)])
                    passed = passed && g.passed
                }
                if golden.isEmpty { throw ValidationError("\(folder): no golden cases (folders with expected.safetensors)") }
                report["golden"] = golden
            }
            report["passed"] = passed
            printJSON(report)
            if !passed { throw ExitCode.failure }
        }
    }
}
