import CCUDAEmulator
import Foundation
@testable import RadarCUDA
import RadarCore
import XCTest

/// The fused (flash) attention path. Its CPU reference against the products path (softmax over
/// the materialised scores, checked against PyTorch by the golden cases); the layer and a whole
/// training step on the emulated device with the fused kernels against the products path; the
/// setting that selects it. (`KernelCheckTests` checks the kernels against the CPU reference.)
final class FusedAttentionTests: XCTestCase {
    /// bf16 qkv (B, N, 3D) on `be` from normal values.
    func bf16QKV(_ be: any Backend, batch b: Int, tokens n: Int, dim d: Int, seed: UInt64) -> (Tensor, DeviceTensor) {
        bf16Normal(be, Shape(b, n, 3 * d), seed: seed)
    }
    /// A bf16 tensor on `be` from normal values (and the fp32 tensor it was rounded from).
    func bf16Normal(_ be: any Backend, _ shape: Shape, seed: UInt64) -> (Tensor, DeviceTensor) {
        let x = DeviceTensor(be, shape, randomValues(shape.count, seed: seed))
        let h = Tensor(be.allocate(DType.bfloat16.floats(x.tensor.count)), x.tensor.shape, dtype: .bfloat16)
        be.convert(x.tensor, into: h)
        return (h, x)
    }

    func testTheCPUReferenceAgreesWithTheProductsPath() throws {
        let be = CPUBackend(threads: 1)
        let (b, n, h, hd) = (2, 70, 2, 16), d = h * hd, scale = 1 / Float(hd).squareRoot()
        let (qkv, keep) = bf16QKV(be, batch: b, tokens: n, dim: d, seed: 1)
        defer { be.release(qkv.base); _ = keep }
        // The products path: scores, probabilities, merged (fp32), then backward.
        let scores = DeviceTensor(be, Shape(b, h, n, n)), probs = DeviceTensor(be, Shape(b, h, n, n)), merged = DeviceTensor(be, Shape(b, n, d))
        be.attentionForward(qkv: qkv, heads: h, scale: scale, scores: scores.tensor, probs: probs.tensor, merged: merged.tensor)
        // dMerged with bf16 values: the products path reads it as fp32, the fused one as bf16.
        let dMerged = DeviceTensor(be, Shape(b, n, d), randomValues(b * n * d, seed: 2).map { BFloat16.round($0) })
        let dMerged16 = Tensor(be.allocate(DType.bfloat16.floats(b * n * d)), Shape(b, n, d), dtype: .bfloat16)
        defer { be.release(dMerged16.base) }
        be.convert(dMerged.tensor, into: dMerged16)
        let dProbs = DeviceTensor(be, Shape(b, h, n, n)), dScores = DeviceTensor(be, Shape(b, h, n, n)), dQKV = DeviceTensor(be, Shape(b, n, 3 * d))
        be.attentionBackward(dMerged: dMerged.tensor, qkv: qkv, probs: probs.tensor, heads: h, scale: scale, dProbs: dProbs.tensor,
                             dScores: dScores.tensor, dQKV: dQKV.tensor)
        // The fused reference.
        let fused = Tensor(be.allocate(DType.bfloat16.floats(b * n * d)), Shape(b, n, d), dtype: .bfloat16)
        defer { be.release(fused.base) }
        let lse = DeviceTensor(be, Shape(b, h, n)), delta = DeviceTensor(be, Shape(b, h, n)), fusedDQKV = DeviceTensor(be, Shape(b, n, 3 * d), [Float](repeating: 7, count: b * n * 3 * d))
        be.fusedAttentionForward(qkv: qkv, heads: h, scale: scale, merged: fused, logSumExp: lse.tensor)
        let fusedMerged = DeviceTensor(be, Shape(b, n, d))
        be.convert(fused, into: fusedMerged.tensor)
        be.fusedAttentionBackward(dMerged: dMerged16, qkv: qkv, merged: fused, logSumExp: lse.tensor, heads: h, scale: scale,
                                  delta: delta.tensor, dQKV: fusedDQKV.tensor)

        func assertClose(_ got: [Float], _ want: [Float], relativeToLargest tol: Float, _ what: String) {
            let largest = want.map(abs).max()!
            XCTAssertGreaterThan(largest, 0.1, "\(what): a non-trivial reference")
            let worst = zip(got, want).map { abs($0 - $1) }.max()!
            XCTAssertLessThan(worst, tol * largest, "\(what): largest difference \(worst), largest value \(largest)")
        }
        // merged: bf16 probabilities and a bf16 output against fp32 ones.
        assertClose(fusedMerged.values, merged.values, relativeToLargest: 1e-2, "merged")
        // logSumExp: log sum exp of each row of the scores, in Double.
        let s = scores.values, got = lse.values
        for row in 0..<(b * h * n) {
            let r = s[row * n..<(row + 1) * n].map(Double.init), m = r.max()!
            let want = m + log(r.map { exp($0 - m) }.reduce(0, +))
            XCTAssertEqual(Double(got[row]), want, accuracy: 1e-5 * max(1, abs(want)), "logSumExp row \(row)")
        }
        // dQKV, every element written (the 7s overwritten): bf16 dO, P and dScores as operands.
        let want = dQKV.values, fusedGrad = fusedDQKV.values
        XCTAssertFalse(fusedGrad.contains(7))
        for (part, name) in ["dq", "dk", "dv"].enumerated() {
            func pick(_ v: [Float]) -> [Float] {
                var out: [Float] = []
                for r in 0..<(b * n) { out += v[(r * 3 + part) * d..<(r * 3 + part + 1) * d] }
                return out
            }
            assertClose(pick(fusedGrad), pick(want), relativeToLargest: 2e-2, name)
        }
    }

    /// A tiny-config step (heads of 16 channels) on the emulated device, fused against products:
    /// the encoder's attention goes through the fused kernels (per block one forward, two
    /// backward) and no longer through softmax over (B, H, N, N); the loss and every parameter's
    /// gradient agree to bf16's precision; fused runs are bit-identical run to run.
    func testATrainingStepWithFusedAttentionMatchesTheProductsPath() throws {
        func run(fused: Bool) throws -> (loss: Double, gradNorm: Double, grads: [Float], launches: [String: Int]) {
            let device = EmulatedDevice(memory: 1 << 30)
            let backend = CUDABackend(driver: device, precision: .bf16, fusedAttention: fused)
            let (trainer, images, labels) = try makeTinyTrainer(batch: 2, backend: backend) { $0.dropout = 0.1 }
            device.launchLog = []
            let r = try XCTUnwrap(try trainer.step(images: images.tensor, labels: labels.tensor))
            var launches: [String: Int] = [:]
            for l in device.launchLog ?? [] { launches[l.kernel, default: 0] += 1 }
            return (r.terms.total, r.gradNorm, backend.download(trainer.ctx.params.grads), launches)
        }
        let products = try run(fused: false), fused = try run(fused: true), again = try run(fused: true)
        let depth = RADARConfig.preset("tiny")!.depth
        XCTAssertEqual(fused.launches["radar_attention_forward_hd16_fast"], depth, "the fast build by default")
        XCTAssertEqual(fused.launches["radar_attention_backward_query_hd16_fast"], depth)
        XCTAssertEqual(fused.launches["radar_attention_backward_key_value_hd16_fast"], depth)
        XCTAssertNil(products.launches["radar_attention_forward_hd16_fast"])
        XCTAssertLessThan(fused.launches["radar_softmax_forward", default: 0], products.launches["radar_softmax_forward", default: 0])
        XCTAssertEqual(fused.loss, products.loss, accuracy: 2e-3 * abs(products.loss))
        XCTAssertEqual(fused.gradNorm, products.gradNorm, accuracy: 1e-2 * products.gradNorm)
        XCTAssertNotEqual(fused.grads, products.grads, "a different path: not the same bits")
        let largest = products.grads.map(abs).max()!, worst = zip(fused.grads, products.grads).map { abs($0 - $1) }.max()!
        XCTAssertLessThan(worst, 1e-2 * largest, "gradients: largest difference \(worst), largest gradient \(largest)")
        var dot = 0.0, a2 = 0.0, b2 = 0.0
        for (a, b) in zip(fused.grads, products.grads) { dot += Double(a) * Double(b); a2 += Double(a * a); b2 += Double(b * b) }
        XCTAssertGreaterThan(dot / (a2 * b2).squareRoot(), 0.9999, "gradient direction")
        XCTAssertEqual(fused.grads.map(\.bitPattern), again.grads.map(\.bitPattern), "fused run to run")
        XCTAssertEqual(fused.loss, again.loss)
    }

    /// With fused attention on, the attention rollout (which needs the probabilities) still gets
    /// them: those blocks take the products path while the sink is set.
    func testRolloutStillSeesTheProbabilitiesWithFusedAttention() throws {
        let backend = CUDABackend(driver: EmulatedDevice(memory: 1 << 30), precision: .bf16, fusedAttention: true)
        let (trainer, images, _) = try makeTinyTrainer(batch: 2, backend: backend)
        let (_, maps) = try trainer.attentionRollout { try trainer.evalForward(images: images.tensor) }
        XCTAssertEqual(maps.count, 2)
        let grid = trainer.model.config.patchCount
        XCTAssertEqual(maps[0].count, grid)
        XCTAssertTrue(maps.allSatisfy { $0.allSatisfy(\.isFinite) && $0.contains { $0 > 0 } })
    }

    /// The launcher's table of kernel names (made once, not formatted per launch) names exactly the
    /// attention family's entry points: each kernel for each head size, in each build.
    func testTheAttentionKernelNameTableNamesEveryAttentionKernel() throws {
        let family = try XCTUnwrap(KernelSources.all.first { $0.kernels.contains { $0.name == "radar_attention_forward_hd64" } })
        let entryPoints = Set(family.kernels.map(\.name).filter { $0.hasPrefix("radar_attention_") && $0.contains("_hd") })
        XCTAssertEqual(Set(CUDABackend.attentionKernelNames.values), entryPoints)
        XCTAssertEqual(CUDABackend.attentionKernelNames.count, 27)
        let be = CUDABackend(driver: EmulatedDevice(memory: 1 << 20), precision: .bf16, fusedAttention: true)
        XCTAssertEqual(be.attentionKernel(.backward_key_value, headDim: 32), "radar_attention_backward_key_value_hd32_fast", "the default build")
        be.attentionKernels = .plain
        XCTAssertEqual(be.attentionKernel(.backward_key_value, headDim: 32), "radar_attention_backward_key_value_hd32")
        be.attentionKernels = .ldmatrix
        XCTAssertEqual(be.attentionKernel(.forward, headDim: 16), "radar_attention_forward_hd16_ldsm")
        be.attentionKernels = .fast
        XCTAssertEqual(be.attentionKernel(.backward_query, headDim: 64), "radar_attention_backward_query_hd64_fast")
    }

    /// The `_ldsm` kernels (operands from shared memory by ldmatrix, emulated by the PTX ISA's
    /// layout) give the bits of the plain ones: every output of forward and backward, each head
    /// size, several 64-row tiles with a short last one, under index order and a shuffled schedule
    /// (lanes reach ldmatrix's warp exchange in another order); and a whole training step.
    func testTheLdmatrixKernelsGiveThePlainKernelsBits() throws {
        func run(_ loads: Bool, h: Int, hd: Int, n: Int) -> (launched: [String], outputs: [UInt32]) {
            let (launched, outputs) = runFusedAttention(loads ? .ldmatrix : .plain, h: h, hd: hd, n: n)
            return (launched, outputs.map(\.bitPattern))
        }
        defer { _ = radar_emu_set_schedule_text("forward") }
        for (h, hd, n) in [(2, 64, 130), (3, 16, 70), (2, 32, 65)] {
            let plain = run(false, h: h, hd: hd, n: n)
            XCTAssertEqual(plain.launched, ["radar_attention_forward_hd\(hd)", "radar_attention_backward_query_hd\(hd)", "radar_attention_backward_key_value_hd\(hd)"])
            XCTAssertTrue(plain.outputs.contains { $0 != 0 })
            for schedule in ["forward", "shuffled:3"] {
                XCTAssertEqual(radar_emu_set_schedule_text(schedule), 0)
                let ldsm = run(true, h: h, hd: hd, n: n)
                XCTAssertEqual(ldsm.launched, plain.launched.map { $0 + "_ldsm" })
                XCTAssertEqual(ldsm.outputs.count, plain.outputs.count)
                let differing = zip(ldsm.outputs, plain.outputs).filter { $0 != $1 }.count
                XCTAssertEqual(differing, 0, "head size \(hd), \(n) tokens, \(schedule): values not the plain kernels' bits")
            }
            _ = radar_emu_set_schedule_text("forward")
        }
        // A tiny-config training step (dropout on): the same loss and gradients, bit for bit.
        let (withLoads, plainStep) = (try tinyStep(.ldmatrix), try tinyStep(.plain))
        XCTAssertEqual(withLoads.count, plainStep.count)
        XCTAssertEqual(zip(withLoads, plainStep).filter { $0.bitPattern != $1.bitPattern }.count, 0, "a training step's loss and gradients")
    }

    /// The fast build (softmax in base 2 by ex2.approx, masks only in a step past N, the key/value
    /// kernel's queries past N zeroed by +inf log-sum-exps, bf16 packing by cvt) against the plain
    /// build: each output of forward and backward within bf16's rounding (merged and the
    /// log-sum-exps elementwise, delta and dQKV normwise, as the kernel check compares a device with
    /// the CPU), every head size, tokens a multiple of 64 (no partial step), across a tile edge and
    /// one past it, in index order and shuffled; then the kernel check's attention cases against the
    /// CPU reference, and a whole training step.
    func testTheFastKernelsAgreeWithThePlainKernelsWithinBF16Rounding() throws {
        defer { _ = radar_emu_set_schedule_text("forward") }
        for (h, hd, n) in [(2, 64, 130), (3, 16, 64), (2, 32, 65), (1, 64, 33)] {
            let plain = runFusedAttention(.plain, h: h, hd: hd, n: n)
            for schedule in ["forward", "shuffled:5"] {
                XCTAssertEqual(radar_emu_set_schedule_text(schedule), 0)
                let fast = runFusedAttention(.fast, h: h, hd: hd, n: n)
                XCTAssertEqual(fast.launched, plain.launched.map { $0 + "_fast" })
                let (b, d) = (2, h * hd)
                // merged, lse, delta, dQKV as runFusedAttention concatenates them.
                let sizes = [b * n * d, b * h * n, b * h * n, b * n * 3 * d]
                func split(_ v: [Float]) -> [[Float]] {
                    var at = 0
                    return sizes.map { c in defer { at += c }; return Array(v[at..<at + c]) }
                }
                let (want, got) = (split(plain.outputs), split(fast.outputs))
                let d0 = KernelCheck.disagreement(want: want, got: got, rtol: 1e-2, atol: 5e-4, normwise: [2, 3])
                XCTAssertLessThanOrEqual(d0.worst, 1, "head size \(hd), \(n) tokens, \(schedule): \(d0.detail)")
                XCTAssertTrue(got.allSatisfy { $0.allSatisfy(\.isFinite) }, "head size \(hd), \(n) tokens: a non-finite output")
            }
            _ = radar_emu_set_schedule_text("forward")
        }
        let be = CUDABackend(driver: EmulatedDevice(memory: 1 << 28), precision: .bf16, fusedAttention: true)
        be.attentionKernels = .fast
        let checked = KernelCheck.run(on: be, only: { $0.hasPrefix("fusedAttention") })
        XCTAssertEqual(checked.count, 5)
        for r in checked { XCTAssertLessThanOrEqual(r.worst, 1, "\(r.kernel) against the CPU reference: \(r.detail)") }
        // A tiny-config training step (dropout on): the loss and every gradient close to the plain build's.
        let (fast, plain) = (try tinyStep(.fast), try tinyStep(.plain))
        XCTAssertEqual(fast.count, plain.count)
        XCTAssertEqual(Double(fast[0]), Double(plain[0]), accuracy: 1e-3 * Double(abs(plain[0])), "loss")
        let gotGrads: [Double] = fast.dropFirst().map(Double.init), wantGrads: [Double] = plain.dropFirst().map(Double.init)
        let largest = wantGrads.map(abs).max() ?? 0
        let worst = zip(gotGrads, wantGrads).map { abs($0 - $1) }.max() ?? .infinity
        let dot: Double = zip(gotGrads, wantGrads).map(*).reduce(0, +)
        let norms: Double = gotGrads.map { $0 * $0 }.reduce(0, +).squareRoot() * wantGrads.map { $0 * $0 }.reduce(0, +).squareRoot()
        let cosine = dot / norms
        XCTAssertGreaterThan(largest, 0)
        XCTAssertLessThanOrEqual(worst, 0.01 * largest, "gradients: worst difference \(worst), largest \(largest)")
        XCTAssertGreaterThan(cosine, 0.9999, "gradients' cosine")
    }

    /// One forward and backward of the fused kernels of `build` on a fresh emulated device: the
    /// kernels launched, and merged (as fp32), the log-sum-exps, delta and dQKV, concatenated.
    func runFusedAttention(_ build: AttentionKernelBuild, h: Int, hd: Int, n: Int) -> (launched: [String], outputs: [Float]) {
        let device = EmulatedDevice(memory: 1 << 28)
        let be = CUDABackend(driver: device, precision: .bf16, fusedAttention: true)
        be.attentionKernels = build
        let b = 2, d = h * hd, scale = 1 / Float(hd).squareRoot()
        let (qkv, keep) = bf16QKV(be, batch: b, tokens: n, dim: d, seed: 21)
        let merged = Tensor(be.allocate(DType.bfloat16.floats(b * n * d)), Shape(b, n, d), dtype: .bfloat16)
        let lse = DeviceTensor(be, Shape(b, h, n)), delta = DeviceTensor(be, Shape(b, h, n))
        let (dMerged, keepDMerged) = bf16Normal(be, Shape(b, n, d), seed: 22)
        let dQKV = DeviceTensor(be, Shape(b, n, 3 * d))
        device.launchLog = []
        be.fusedAttentionForward(qkv: qkv, heads: h, scale: scale, merged: merged, logSumExp: lse.tensor)
        be.fusedAttentionBackward(dMerged: dMerged, qkv: qkv, merged: merged, logSumExp: lse.tensor, heads: h, scale: scale,
                                  delta: delta.tensor, dQKV: dQKV.tensor)
        let launched = device.launchLog?.map(\.kernel) ?? []
        let mergedValues = DeviceTensor(be, Shape(b, n, d))
        be.convert(merged, into: mergedValues.tensor)
        _ = (keep, keepDMerged)
        return (launched, mergedValues.values + lse.values + delta.values + dQKV.values)
    }

    /// A tiny-config training step (dropout on) with the fused kernels of `build`: the loss, then
    /// every gradient.
    func tinyStep(_ build: AttentionKernelBuild) throws -> [Float] {
        let backend = CUDABackend(driver: EmulatedDevice(memory: 1 << 30), precision: .bf16, fusedAttention: true)
        backend.attentionKernels = build
        let (trainer, images, labels) = try makeTinyTrainer(batch: 2, backend: backend) { $0.dropout = 0.1 }
        let r = try XCTUnwrap(try trainer.step(images: images.tensor, labels: labels.tensor))
        return [Float(r.terms.total)] + backend.download(trainer.ctx.params.grads)
    }

    func testTheSettingThatSelectsIt() throws {
        XCTAssertEqual(try Devices.attentionKernels([:]), .fast, "the fast build by default (the fastest on an H100)")
        XCTAssertEqual(CUDABackend(driver: EmulatedDevice(memory: 1 << 26)).attentionKernels, .fast, "the backend's default is the commands'")
        XCTAssertEqual(try Devices.attentionKernels(["RADAR_ATTENTION_KERNELS": "ldmatrix"]), .ldmatrix)
        XCTAssertEqual(try Devices.attentionKernels(["RADAR_ATTENTION_KERNELS": "fast"]), .fast)
        XCTAssertEqual(try Devices.attentionKernels(["RADAR_ATTENTION_KERNELS": "plain"]), .plain)
        XCTAssertThrowsError(try Devices.attentionKernels(["RADAR_ATTENTION_KERNELS": "ldsm"])) {
            XCTAssertEqual("\($0)", "RADAR_ATTENTION_KERNELS=ldsm: expected plain, ldmatrix or fast")
        }
        XCTAssertThrowsError(try Devices.attentionKernels(["RADAR_ATTENTION_LOADS": "ldmatrix"])) {
            XCTAssertEqual("\($0)", "RADAR_ATTENTION_LOADS=ldmatrix: renamed; set RADAR_ATTENTION_KERNELS (plain, ldmatrix or fast) instead")
        }
        XCTAssertTrue(try Devices.fusedAttention([:]), "fused by default (the faster on an H200)")
        XCTAssertFalse(try Devices.fusedAttention(["RADAR_ATTENTION": "products"]))
        XCTAssertTrue(try Devices.fusedAttention(["RADAR_ATTENTION": "fused"]))
        XCTAssertThrowsError(try Devices.fusedAttention(["RADAR_ATTENTION": "flash"])) {
            XCTAssertEqual("\($0)", "RADAR_ATTENTION=flash: expected products or fused")
        }
        // Only bf16 on CUDA, only the head sizes the kernels are built for.
        let on = CUDABackend(driver: EmulatedDevice(memory: 1 << 26), precision: .bf16, fusedAttention: true)
        XCTAssertTrue(on.fusedAttention(headDim: 64))
        XCTAssertFalse(on.fusedAttention(headDim: 48))
        XCTAssertFalse(CUDABackend(driver: EmulatedDevice(memory: 1 << 26), precision: .fp32, fusedAttention: true).fusedAttention(headDim: 64))
        XCTAssertFalse(CUDABackend(driver: EmulatedDevice(memory: 1 << 26), precision: .bf16).fusedAttention(headDim: 64))
        XCTAssertFalse(CPUBackend(threads: 1).fusedAttention(headDim: 64))
    }
}
