import XCTest
import RadarCPU
import RadarCore
@testable import RadarCUDA
@testable import RadarEngine

/// Linear layers' biases and residual sums through cuBLASLt's epilogue (RADAR_GEMM_EPILOGUES=on),
/// on the emulated device (which runs cublasLtMatmul's semantics: D = alpha op(A) op(B) + beta C
/// + bias, rounded once into D's type).
final class GemmEpilogueTests: XCTestCase {
    func testTheSettingParses() throws {
        XCTAssertTrue(try Devices.gemmEpilogues([:]), "on by default (faster on an H100 in every precision)")
        XCTAssertTrue(CUDABackend(driver: EmulatedDevice(memory: 1 << 26)).gemmEpilogues, "the backend's default is the commands'")
        // What a run's start line says of these choices.
        XCTAssertEqual(CUDABackend(driver: EmulatedDevice(memory: 1 << 26), precision: .bf16, fusedAttention: true).kernelSettings,
                       "attention fused (fast kernels), biases in cuBLASLt epilogues")
        let plain = CUDABackend(driver: EmulatedDevice(memory: 1 << 26), precision: .bf16, fusedAttention: true, gemmEpilogues: false)
        plain.attentionKernels = .plain
        XCTAssertEqual(plain.kernelSettings, "attention fused (plain kernels), biases filled before the products")
        XCTAssertEqual(CUDABackend(driver: EmulatedDevice(memory: 1 << 26), precision: .fp32, fusedAttention: true).kernelSettings,
                       "attention by products, biases in cuBLASLt epilogues", "fused attention is bf16 only")
        XCTAssertNil(CPUBackend(threads: 1).kernelSettings)
        XCTAssertTrue(try Devices.gemmEpilogues(["RADAR_GEMM_EPILOGUES": "on"]))
        XCTAssertFalse(try Devices.gemmEpilogues(["RADAR_GEMM_EPILOGUES": "off"]))
        XCTAssertThrowsError(try Devices.gemmEpilogues(["RADAR_GEMM_EPILOGUES": "yes"])) { error in
            XCTAssertEqual("\(error)", "RADAR_GEMM_EPILOGUES=yes: expected on or off")
        }
    }

    /// Every kernel case (the biased products with a bf16 C, a leading dimension past n and a
    /// residual that is C itself included) against the CPU backend, fp32, with the epilogues on;
    /// in bf16 (where the CPU backend is no reference) the biased products against the fill path.
    func testTheKernelCheckPassesWithEpilogues() {
        let fp32 = KernelCheck.run(on: CUDABackend(driver: EmulatedDevice(memory: 1 << 28), precision: .fp32, gemmEpilogues: true))
        XCTAssertEqual(fp32.count, KernelCheck.kernelNames.count)
        for r in fp32 { XCTAssertTrue(r.passed, "fp32 \(r.kernel): \(r.detail) (ratio \(r.worst))") }
        let bf16 = KernelCheck.run(on: CUDABackend(driver: EmulatedDevice(memory: 1 << 28), precision: .bf16, gemmEpilogues: true),
                                   reference: CUDABackend(driver: EmulatedDevice(memory: 1 << 28), precision: .bf16),
                                   only: { $0.hasPrefix("biasedProduct") })
        XCTAssertEqual(bf16.map(\.kernel), ["biasedProduct", "biasedProduct/residual", "biasedProduct/bf16"])
        for r in bf16 { XCTAssertTrue(r.passed, "bf16 \(r.kernel): \(r.detail) (ratio \(r.worst))") }
    }

    /// A bf16 training step with the epilogues: no fill launches (every Linear's bias is in its
    /// product), the same number of products, bit-identical run to run, and bf16-close to the fill
    /// path (the bias and residual are added in another order).
    func testEpiloguesReplaceTheFillsAndTrainClose() throws {
        let (on, off, again) = (try GemmEpilogueTests.step(epilogues: true), try GemmEpilogueTests.step(epilogues: false),
                                try GemmEpilogueTests.step(epilogues: true))
        XCTAssertGreaterThan(off.launches["radar_fill_rows"] ?? 0, 0)
        XCTAssertNil(on.launches["radar_fill_rows"], "no fill launches with the epilogues")
        XCTAssertEqual(on.products, off.products)
        XCTAssertEqual(on.grads.map(\.bitPattern), again.grads.map(\.bitPattern), "run to run")
        XCTAssertEqual(on.loss, off.loss, accuracy: 1e-3 * abs(off.loss))
        let diff = zip(on.grads, off.grads).map { Double($0 - $1) * Double($0 - $1) }.reduce(0, +).squareRoot()
        let norm = off.grads.map { Double($0) * Double($0) }.reduce(0, +).squareRoot()
        XCTAssertGreaterThan(norm, 0)
        XCTAssertLessThan(diff / norm, 0.05, "relative L2 distance of the gradients")
    }

    /// Where cuBLASLt offers no algorithm with an epilogue (its heuristic may refuse some shapes,
    /// types or alignments on some GPU), the bias is filled before a plain product instead: with
    /// every epilogue refused the step is the fill path's, launch for launch and bit for bit; with
    /// only the wide products refused, those are filled and the rest keep their epilogues.
    func testAShapeWithoutAnEpilogueAlgorithmIsFilledInstead() throws {
        let off = try GemmEpilogueTests.step(epilogues: false)
        let refused = try GemmEpilogueTests.step(epilogues: true) { $0.bias != nil }
        XCTAssertEqual(refused.launches, off.launches)
        XCTAssertEqual(refused.products, off.products)
        XCTAssertEqual(refused.grads.map(\.bitPattern), off.grads.map(\.bitPattern))
        XCTAssertEqual(refused.loss.bitPattern, off.loss.bitPattern)
        let on = try GemmEpilogueTests.step(epilogues: true)
        let some = try GemmEpilogueTests.step(epilogues: true) { $0.bias != nil && $0.m > 64 }
        let fills = some.launches["radar_fill_rows"] ?? 0
        XCTAssertGreaterThan(fills, 0)
        XCTAssertLessThan(fills, off.launches["radar_fill_rows"] ?? 0)
        XCTAssertEqual(some.products, on.products)
        XCTAssertEqual(some.loss, on.loss, accuracy: 1e-3 * abs(on.loss))
    }

    /// One bf16 training step of the tiny config on the emulated device: loss, gradients, launches
    /// by kernel and products queued; `refuse`: the shapes its cuBLASLt has no epilogue algorithm for.
    static func step(epilogues: Bool, refuse: ((StridedGemm) -> Bool)? = nil)
        throws -> (loss: Double, grads: [Float], launches: [String: Int], products: Int) {
            let device = EmulatedDevice(memory: 1 << 30)
            device.refusesEpilogue = refuse
            let backend = CUDABackend(driver: device, precision: .bf16, gemmEpilogues: epilogues)
            let (trainer, images, labels) = try makeTinyTrainer(batch: 2, backend: backend)
            device.launchLog = []
            let before = device.queued.products
            let r = try XCTUnwrap(try trainer.step(images: images.tensor, labels: labels.tensor))
            var launches: [String: Int] = [:]
            for l in device.launchLog ?? [] { launches[l.kernel, default: 0] += 1 }
            return (r.terms.total, backend.download(trainer.ctx.params.grads), launches, device.queued.products - before)
    }
}
