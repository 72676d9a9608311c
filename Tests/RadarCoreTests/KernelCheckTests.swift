import Foundation
import RadarCUDA
import RadarCore
import XCTest

/// `radar check-device`'s kernel check: every Backend kernel on the emulated CUDA device against
/// the CPU backend, and the check's list against the Backend protocol itself (a new kernel
/// without a check case fails here).
final class KernelCheckTests: XCTestCase {
    func testEveryKernelMatchesTheCPUBackendOnTheEmulatedDevice() {
        for precision in [Precision.fp32] {
            let results = KernelCheck.run(on: CUDABackend(driver: EmulatedDevice(memory: 1 << 28), precision: precision))
            XCTAssertEqual(results.count, KernelCheck.kernelNames.count)
            for r in results { XCTAssertTrue(r.passed, "\(r.kernel): \(r.detail) (ratio \(r.worst))") }
            // Most kernels agree bit for bit on the emulated device (same float operations in the same order).
            XCTAssertGreaterThan(results.filter { $0.maxAbsError == 0 }.count, results.count / 2)
        }
    }

    func testTheCheckCoversEveryBackendKernel() throws {
        let source = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../Sources/RadarEngine/Backend/Backend.swift")
        let text = try String(contentsOf: source, encoding: .utf8)
        let body = text[text.range(of: "public protocol Backend")!.lowerBound...]
        let end = body.range(of: "\n}\n")!.lowerBound
        let names = try NSRegularExpression(pattern: #"func (\w+)\("#).matches(in: String(body[..<end]), range: NSRange(body[..<end].startIndex..., in: String(body[..<end])))
            .map { String(String(body[..<end])[Range($0.range(at: 1), in: String(body[..<end]))!]) }
        let memory: Set = ["allocate", "release", "upload", "download", "synchronize", "hostAddress", "convolutionWorkspaceCount",
                           "convolutionBackwardScratchCount", "fusedAttention"]
        let kernels = Set(names).subtracting(memory)
        XCTAssertGreaterThan(kernels.count, 50)
        XCTAssertEqual(kernels.subtracting(KernelCheck.kernelNames), [], "Backend kernels without a check case")
    }

    /// A normwise tensor is compared against its largest magnitude: a small sum off by its terms'
    /// rounding passes, an error of that size on its largest element, or one past it, does not.
    func testNormwiseComparison() {
        let want: [[Float]] = [[3, 0.01]]
        func worst(_ got: [Float], normwise: Set<Int>) -> Double {
            KernelCheck.disagreement(want: want, got: [got], rtol: 1e-2, atol: 5e-4, normwise: normwise).worst
        }
        XCTAssertGreaterThan(worst([3, 0.02], normwise: []), 1, "elementwise: 0.01 off 0.01")
        XCTAssertLessThan(worst([3, 0.02], normwise: [0]), 1, "normwise: 0.01 off against 3")
        XCTAssertGreaterThan(worst([3.1, 0.01], normwise: [0]), 1, "normwise: 0.1 off against 3")
        XCTAssertGreaterThan(worst([3, 0.1], normwise: [0]), 1, "normwise: 0.09 off against 3")
        XCTAssertEqual(KernelCheck.disagreement(want: want, got: [[3, 0.02]], rtol: 1e-2, atol: 5e-4, normwise: [0]).detail,
                       "tensor 0 [1]: device 0.02, cpu 0.01")
    }

    /// The check fails when a kernel disagrees: in bf16 the products round their operands, which
    /// the fp32 tolerances catch, while the kernels without products still pass.
    func testDisagreementIsCaught() {
        let results = KernelCheck.run(on: CUDABackend(driver: EmulatedDevice(memory: 1 << 28), precision: .bf16))
        let failed = Set(results.filter { !$0.passed }.map(\.kernel))
        XCTAssertTrue(failed.isSuperset(of: ["gemm", "convolutionForward", "attentionForward"]), "\(failed)")
        XCTAssertTrue(results.first { $0.kernel == "layerNormForward" }!.passed)
    }
}
