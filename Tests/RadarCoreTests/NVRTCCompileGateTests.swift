import Foundation
import RadarCUDA
import XCTest

/// The compile gate: every kernel family of the CUDA backend compiles with NVRTC to CUBIN for the
/// real architectures we ship for (A100/A40-class sm_80 and sm_86, H100/H200 sm_90, Blackwell
/// sm_100 and sm_120), on this GPU-less machine, with CUDA 12.9's NVRTC (the nvidia-cuda-nvrtc-cu12
/// wheel that scripts/test.sh installs) and CUDA 13.0's (from tools/cuda_headers.py: what a pod
/// with driver 580 and PyTorch's cu130 wheels compiles with). When either cannot be loaded these
/// tests fail (they never skip).
final class NVRTCCompileGateTests: XCTestCase {
    static let architectures = ["sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]

    func compiler() throws -> NVRTC {
        do { return try NVRTC() } catch {
            XCTFail("NVRTC is required for the compile gate (scripts/test.sh installs nvidia-cuda-nvrtc-cu12): \(error)")
            throw error
        }
    }

    func testEveryKernelFamilyCompilesToCUBINForAmpereAndHopper() throws {
        let nvrtc = try compiler()
        XCTAssertGreaterThanOrEqual(nvrtc.version.0, 12)
        try assertEveryFamilyCompiles(nvrtc)
    }

    func testEveryKernelFamilyCompilesWithCUDA13NVRTC() throws {
        let library = try CUDAABIGateTests.headers("cu13").appendingPathComponent("lib/libnvrtc.so.13").path
        let nvrtc = try NVRTC(library: library)
        XCTAssertEqual(nvrtc.version.0, 13, library)
        // CUDA 13.0's libnvrtc has no $ORIGIN run path: its builtins must have been loaded from
        // its folder (else every compile fails with "failed to open libnvrtc-builtins.so.13.0").
        XCTAssertNotNil(dlopen("libnvrtc-builtins.so.13.\(nvrtc.version.1)", RTLD_NOW | RTLD_NOLOAD), "NVRTC 13's builtins preloaded")
        try assertEveryFamilyCompiles(nvrtc)
    }

    func assertEveryFamilyCompiles(_ nvrtc: NVRTC, file: StaticString = #filePath, line: UInt = #line) throws {
        // No CUDA header is needed (bf16 is bit operations): a pod with only NVRTC's library compiles them.
        let include: String? = nil
        var kernels = 0
        for family in KernelSources.all {
            // Every extern "C" kernel of the source must be in every CUBIN.
            let names = family.kernels.map(\.name)
            XCTAssertFalse(names.isEmpty, family.name)
            XCTAssertEqual(names.count, family.source.components(separatedBy: "__global__").count - 1, "\(family.name): a kernel the parser missed")
            kernels += names.count
            for arch in NVRTCCompileGateTests.architectures {
                let (cubin, log) = try nvrtc.compileCUBINWithLog(family.source, name: family.name, architecture: arch,
                                                                 options: KernelSources.options(include: include) + [KernelSources.resourceReportOption])
                XCTAssertEqual(Array(cubin.prefix(4)), [0x7f, 0x45, 0x4c, 0x46], "\(family.name) \(arch): an ELF (CUBIN), not PTX",
                               file: file, line: line)
                for n in names {
                    XCTAssertNotNil(cubin.range(of: Data(n.utf8)), "\(family.name) \(arch): kernel \(n) missing from the CUBIN", file: file, line: line)
                }
                assertResources(KernelSources.resources(fromLog: log, architecture: arch), of: family, file: file, line: line)
            }
        }
        XCTAssertGreaterThan(kernels, 20, file: file, line: line)
    }

    /// ptxas's report of every kernel: none spills registers to local memory (a slow kernel the
    /// tests would not notice), and a block of as many threads as the kernel may be launched with
    /// (its `__launch_bounds__`, else 256; the emulated device refuses more) fits the register file.
    func assertResources(_ report: [KernelSources.Resources], of family: KernelFamily, file: StaticString, line: UInt) {
        let byName = Dictionary(report.map { ($0.kernel, $0) }, uniquingKeysWith: { a, _ in a })
        for (name, limit) in family.kernels {
            guard let r = byName[name] else {
                XCTFail("\(family.name): no ptxas report for \(name) on \(report.first?.architecture ?? "?")", file: file, line: line)
                continue
            }
            XCTAssertTrue(r.registers > 0 && r.registers <= 255, "\(name) \(r.architecture): \(r.registers) registers", file: file, line: line)
            XCTAssertEqual(r.spillStoreBytes + r.spillLoadBytes, 0, "\(name) \(r.architecture) spills: \(r)", file: file, line: line)
            XCTAssertGreaterThanOrEqual(r.blocksPerSMByRegisters(threads: limit), 1,
                                        "\(name) \(r.architecture): \(r.registers) registers a thread, blocks of \(limit)", file: file, line: line)
            XCTAssertLessThanOrEqual(r.sharedBytes, 48 * 1024, "\(name) \(r.architecture): static shared memory", file: file, line: line)
        }
    }

    /// The report parser on ptxas's own words (CUDA 12.9, sm_90), and the register-file arithmetic.
    func testPTXASReportsParseAndBlocksPerSMFollowTheRegisterFile() {
        let log = """
            ptxas info    : 0 bytes gmem
            ptxas info    : Compiling entry function 'k2' for 'sm_90'
            ptxas info    : Function properties for k2
            ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
            ptxas info    : Used 8 registers, used 0 barriers
            ptxas info    : Compile time = 3.749 ms
            ptxas info    : Compiling entry function 'k' for 'sm_90'
            ptxas info    : Function properties for k
            ptxas         .     16 bytes stack frame, 12 bytes spill stores, 20 bytes spill loads
            ptxas info    : Used 204 registers, used 1 barriers, 18944 bytes smem, 408 bytes cmem[0]
            """
        let r = KernelSources.resources(fromLog: log, architecture: "sm_90")
        XCTAssertEqual(r.map(\.kernel), ["k2", "k"])
        XCTAssertEqual(r[0].registers, 8)
        XCTAssertEqual([r[1].registers, r[1].stackFrameBytes, r[1].spillStoreBytes, r[1].spillLoadBytes, r[1].sharedBytes, r[1].barriers],
                       [204, 16, 12, 20, 18944, 1])
        // 204 registers: 6,656 a warp (26 units of 256), 4 warps a block: 2 blocks in 65,536.
        XCTAssertEqual(r[1].blocksPerSMByRegisters(threads: 128), 2)
        XCTAssertEqual(r[0].blocksPerSMByRegisters(threads: 1024), 8)
        var full = r[1]
        full.registers = 255
        XCTAssertEqual(full.blocksPerSMByRegisters(threads: 256), 1, "256 threads fit any kernel")
        XCTAssertEqual(full.blocksPerSMByRegisters(threads: 288), 0)
    }

    func testACompileErrorNamesTheProgramAndCarriesNVRTCsLog() throws {
        let nvrtc = try compiler()
        let broken = KernelFamily(name: "broken_family", source: "extern \"C\" __global__ void k(float* x) { x[0] = undefined_name; }")
        XCTAssertThrowsError(try nvrtc.compileCUBIN(broken.source, name: broken.name, architecture: "sm_80", options: [])) { e in
            let text = "\(e)"
            XCTAssertTrue(text.contains("broken_family") && text.contains("sm_80"), text)
            XCTAssertTrue(text.contains("undefined_name"), "NVRTC's log names the problem: \(text)")
        }
    }

    func testKernelCacheHitsAndRecompilesACorruptEntry() throws {
        let nvrtc = try compiler()
        let dir = NSTemporaryDirectory() + "radar-kernel-cache-\(UUID().uuidString.prefix(6))"
        let cache = KernelCache(compiler: nvrtc, folder: dir)
        let family = KernelSources.all.first { $0.name == "optimizer" }!
        let opts = KernelSources.options(include: CUDALibraries.runtimeIncludeFolder())
        let first = try cache.cubin(family, architecture: "sm_86", options: opts)
        XCTAssertEqual(cache.lastOutcome, "compiled")
        XCTAssertEqual(try cache.cubin(family, architecture: "sm_86", options: opts), first)
        XCTAssertEqual(cache.lastOutcome, "hit")
        // Another architecture or option set is another entry.
        _ = try cache.cubin(family, architecture: "sm_90", options: opts)
        XCTAssertEqual(cache.lastOutcome, "compiled")
        XCTAssertNotEqual(cache.key(family, architecture: "sm_86", options: opts), cache.key(family, architecture: "sm_86", options: opts + ["-lineinfo"]))
        // Flip a byte of the stored CUBIN, then truncate it: both are recompiled, never loaded.
        let file = try FileManager.default.contentsOfDirectory(atPath: dir).first { $0.contains("sm_86") }!
        let path = dir + "/" + file
        var bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        bytes[bytes.count - 10] ^= 0xff
        try bytes.write(to: URL(fileURLWithPath: path))
        XCTAssertEqual(try cache.cubin(family, architecture: "sm_86", options: opts), first)
        XCTAssertEqual(cache.lastOutcome, "recompiled")
        try bytes.prefix(40).write(to: URL(fileURLWithPath: path))
        XCTAssertEqual(try cache.cubin(family, architecture: "sm_86", options: opts), first)
        XCTAssertEqual(cache.lastOutcome, "recompiled")
        XCTAssertEqual(try cache.cubin(family, architecture: "sm_86", options: opts), first)
        XCTAssertEqual(cache.lastOutcome, "hit")
    }

    /// A cache folder that cannot be made (here: under a regular file, which stops root too) costs
    /// a compile at every start, not the run.
    func testAnUnwritableKernelCacheStillCompiles() throws {
        let nvrtc = try compiler()
        let file = NSTemporaryDirectory() + "radar-kernel-cache-file-\(UUID().uuidString.prefix(6))"
        XCTAssertTrue(FileManager.default.createFile(atPath: file, contents: Data("not a folder".utf8)))
        defer { try? FileManager.default.removeItem(atPath: file) }
        let cache = KernelCache(compiler: nvrtc, folder: file + "/kernels")
        let family = KernelSources.all.first { $0.name == "optimizer" }!
        let opts = KernelSources.options(include: CUDALibraries.runtimeIncludeFolder())
        let cubin = try cache.cubin(family, architecture: "sm_90", options: opts)
        XCTAssertEqual(cache.lastOutcome, "compiled (not cached)")
        XCTAssertEqual(Array(cubin.prefix(4)), [0x7f, 0x45, 0x4c, 0x46], "an ELF CUBIN")
        XCTAssertEqual(try cache.cubin(family, architecture: "sm_90", options: opts), cubin)
        XCTAssertEqual(cache.lastOutcome, "compiled (not cached)")
    }

    func testAMissingLibraryIsOneClearError() {
        XCTAssertThrowsError(try CUDALibraries.load(["libradar-no-such-library.so.1"], component: "nothing")) { e in
            XCTAssertTrue("\(e)".contains("libradar-no-such-library.so.1") && "\(e)".contains("RADAR_CUDA_LIBS"), "\(e)")
        }
    }
}
