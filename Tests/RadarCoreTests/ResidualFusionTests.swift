import CCUDAEmulator
import XCTest
import RadarCPU
import RadarCore
@testable import RadarCUDA
@testable import RadarEngine

/// The encoder's residual sums formed by the kernels that produce their other term
/// (`ExecutionContext.fuseResidualSums`): LayerNorm backward joining the residual stream's
/// gradient and writing its bf16 copy, and the products that set the residual with the bias.
/// Reproducible values in [-1.5, 1.5), or [0.5, 1) with `positive` (a rstd).
private func values(_ n: Int, _ seed: UInt64, positive: Bool = false) -> [Float] {
    var s = seed
    return (0..<n).map { _ in
        s = s &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
        let u = Float(s >> 40) / Float(1 << 24) - 0.5
        return positive ? 0.5 + abs(u) : 3 * u
    }
}

/// LayerNorm backward's inputs on `be`: dy, x, gamma, mean, rstd and a residual, seeded.
private func layerNormInputs(_ be: any Backend, _ rows: Int, _ cols: Int)
    -> (DeviceTensor, DeviceTensor, DeviceTensor, DeviceTensor, DeviceTensor, DeviceTensor) {
    (DeviceTensor(be, Shape(rows, cols), values(rows * cols, 1)), DeviceTensor(be, Shape(rows, cols), values(rows * cols, 2)),
     DeviceTensor(be, Shape(cols), values(cols, 3)), DeviceTensor(be, Shape(rows), values(rows, 4)),
     DeviceTensor(be, Shape(rows), values(rows, 5, positive: true)), DeviceTensor(be, Shape(rows, cols), values(rows * cols, 6)))
}

final class ResidualFusionTests: XCTestCase {
    /// The fused LayerNorm backward gives the bits of the unfused one followed by `add` and
    /// `convert`, on the CPU and on the emulated device, fp32 and bf16 precision.
    func testLayerNormBackwardJoinsTheResidualWithTheBitsOfAnAddAndAConversion() {
        let rows = 70, cols = 37
        let backends: [(String, any Backend)] = [
            ("cpu", CPUBackend(threads: 2)),
            ("cuda-emulated fp32", CUDABackend(driver: EmulatedDevice(memory: 1 << 26), precision: .fp32)),
            ("cuda-emulated bf16", CUDABackend(driver: EmulatedDevice(memory: 1 << 26), precision: .bf16)),
        ]
        for (name, be) in backends {
            let (dy, x, gamma, mean, rstd, residual) = layerNormInputs(be, rows, cols)
            func run(fused: Bool) -> (dx: [UInt32], copy: [UInt32], dGamma: [UInt32], dBeta: [UInt32]) {
                let dx = DeviceTensor(be, Shape(rows, cols)), dGamma = DeviceTensor(be, Shape(cols), values(cols, 7))
                let dBeta = DeviceTensor(be, Shape(cols), values(cols, 8))
                let copy = Tensor(be.allocate(DType.bfloat16.floats(rows * cols)), Shape(rows, cols), dtype: .bfloat16)
                defer { be.release(copy.base) }
                if fused {
                    be.layerNormBackward(dy.tensor, x: x.tensor, gamma: gamma.tensor, mean: mean.tensor, rstd: rstd.tensor, dx.tensor,
                                         dGamma: dGamma.tensor, dBeta: dBeta.tensor, residual: residual.tensor, dxCopy: copy)
                } else {
                    be.layerNormBackward(dy.tensor, x: x.tensor, gamma: gamma.tensor, mean: mean.tensor, rstd: rstd.tensor, dx.tensor,
                                         dGamma: dGamma.tensor, dBeta: dBeta.tensor)
                    be.add(dx.tensor, residual.tensor, into: dx.tensor)
                    be.convert(dx.tensor, into: copy)
                }
                let wide = DeviceTensor(be, Shape(rows, cols))
                be.convert(copy, into: wide.tensor)
                return (dx.values.map(\.bitPattern), wide.values.map(\.bitPattern), dGamma.values.map(\.bitPattern), dBeta.values.map(\.bitPattern))
            }
            let fused = run(fused: true), unfused = run(fused: false)
            XCTAssertEqual(fused.dx, unfused.dx, "\(name): dx")
            XCTAssertEqual(fused.copy, unfused.copy, "\(name): dx's bf16 copy")
            XCTAssertEqual(fused.dGamma, unfused.dGamma, "\(name): dGamma")
            XCTAssertEqual(fused.dBeta, unfused.dBeta, "\(name): dBeta")
        }
    }

    /// RADAR_LAYERNORM_BACKWARD: chunk by default (staged is not yet timed on a GPU), staged on
    /// request, anything else a one-line error; the start line says when staged is on.
    func testTheLayerNormBackwardSettingParses() throws {
        XCTAssertFalse(try Devices.stagedLayerNormBackward([:]))
        XCTAssertFalse(try Devices.stagedLayerNormBackward(["RADAR_LAYERNORM_BACKWARD": "chunk"]))
        XCTAssertTrue(try Devices.stagedLayerNormBackward(["RADAR_LAYERNORM_BACKWARD": "staged"]))
        XCTAssertThrowsError(try Devices.stagedLayerNormBackward(["RADAR_LAYERNORM_BACKWARD": "shared"])) {
            XCTAssertEqual("\($0)", "RADAR_LAYERNORM_BACKWARD=shared: expected chunk or staged")
        }
        let be = CUDABackend(driver: EmulatedDevice(memory: 1 << 26), precision: .bf16, fusedAttention: true)
        XCTAssertFalse(be.stagedLayerNormBackward, "the backend's default is the commands'")
        be.stagedLayerNormBackward = true
        XCTAssertEqual(be.kernelSettings, "attention fused (fast kernels), biases in cuBLASLt epilogues, LayerNorm backward staged")
    }

    /// LayerNorm backward in one pass (`radar_layernorm_backward_chunk`: a block per chunk of rows,
    /// a thread per column) gives the bits of the input-gradient and parameter-partial kernels it
    /// replaces, with and without the residual and the bf16 copy, on chunks of 8 and 64 rows, columns
    /// not a multiple of 32, a last chunk cut short and rows wider than one warp's stride; one
    /// launch instead of two. (It runs where there are at least 132 chunks.) So does its staged
    /// build (`radar_layernorm_backward_staged`: groups of 8 rows through shared memory, the last
    /// group of a chunk cut short at 37 and 300 columns' 1100 and 9000 rows).
    func testOnePassLayerNormBackwardHasTheBitsOfTheTwoKernels() {
        for (rows, cols, joined) in [(1100, 37, true), (1100, 100, false), (9000, 300, true)] {
            let device = EmulatedDevice(memory: 1 << 28)
            let be = CUDABackend(driver: device, precision: .bf16)
            let (dy, x, gamma, mean, rstd, residual) = layerNormInputs(be, rows, cols)
            func run(onePass: Bool, staged: Bool = false) -> [[UInt32]] {
                be.fuseLayerNormBackward = onePass
                be.stagedLayerNormBackward = staged
                defer { be.stagedLayerNormBackward = false }
                let dx = DeviceTensor(be, Shape(rows, cols)), dGamma = DeviceTensor(be, Shape(cols), values(cols, 7))
                let dBeta = DeviceTensor(be, Shape(cols), values(cols, 8))
                let copy = Tensor(be.allocate(DType.bfloat16.floats(rows * cols)), Shape(rows, cols), dtype: .bfloat16)
                defer { be.release(copy.base) }
                device.launchLog = []
                be.layerNormBackward(dy.tensor, x: x.tensor, gamma: gamma.tensor, mean: mean.tensor, rstd: rstd.tensor, dx.tensor,
                                     dGamma: dGamma.tensor, dBeta: dBeta.tensor, residual: joined ? residual.tensor : nil, dxCopy: joined ? copy : nil)
                let kernels = (device.launchLog ?? []).map(\.kernel).filter { $0.hasPrefix("radar_layernorm") }
                XCTAssertEqual(kernels, onePass ? [staged ? "radar_layernorm_backward_staged" : "radar_layernorm_backward_chunk"]
                                                : ["radar_layernorm_backward_input", "radar_layernorm_param_partials"])
                device.launchLog = nil
                let wide = DeviceTensor(be, Shape(rows, cols))
                if joined { be.convert(copy, into: wide.tensor) }
                return [dx.values.map(\.bitPattern), wide.values.map(\.bitPattern), dGamma.values.map(\.bitPattern), dBeta.values.map(\.bitPattern)]
            }
            let one = run(onePass: true), two = run(onePass: false), staged = run(onePass: true, staged: true)
            for (i, what) in ["dx", "dx's bf16 copy", "dGamma", "dBeta"].enumerated() {
                XCTAssertEqual(one[i], two[i], "\(rows) x \(cols): \(what)")
                XCTAssertEqual(staged[i], two[i], "\(rows) x \(cols): \(what), staged")
            }
            // Blocks and threads in any order (its barrier between the row sums and the columns;
            // the staged build's three a group).
            for schedule in ["reversed", "shuffled:3"] {
                XCTAssertEqual(radar_emu_set_schedule_text(schedule), 0)
                let other = run(onePass: true), otherStaged = run(onePass: true, staged: true)
                _ = radar_emu_set_schedule_text("forward")
                XCTAssertEqual(other, one, "\(rows) x \(cols): \(schedule)")
                XCTAssertEqual(otherStaged, one, "\(rows) x \(cols): \(schedule), staged")
            }
            XCTAssertTrue(one[2].contains { $0 != 0 }, "\(rows) x \(cols): dGamma computed")
        }
    }

    /// A bf16 training step with the sums fused against one with add and conversion passes: per
    /// step 4 fewer `radar_add` launches per block (two forward, two backward) and 2 fewer
    /// `radar_to_bf16` (the residual gradients fc2 and the projection read), losses and gradients
    /// bf16-close (forward's sums are rounded in another order), each bit-identical run to run.
    func testFusedResidualSumsDropTheAddAndConversionPassesAndStayClose() throws {
        let depth = RADARConfig.preset("tiny")!.depth
        func run(fuse: Bool) throws -> (loss: Double, grads: [Float], launches: [String: Int]) {
            let device = EmulatedDevice(memory: 1 << 30)
            let (trainer, images, labels) = try makeTinyTrainer(batch: 2, backend: CUDABackend(driver: device, precision: .bf16))
            trainer.ctx.fuseResidualSums = fuse
            device.launchLog = []
            let r = try XCTUnwrap(try trainer.step(images: images.tensor, labels: labels.tensor))
            var launches: [String: Int] = [:]
            for l in device.launchLog ?? [] { launches[l.kernel, default: 0] += 1 }
            return (r.terms.total, trainer.ctx.backend.download(trainer.ctx.params.grads), launches)
        }
        let fused = try run(fuse: true), unfused = try run(fuse: false), again = try run(fuse: true)
        XCTAssertEqual(fused.grads.map(\.bitPattern), again.grads.map(\.bitPattern), "fused: run to run")
        XCTAssertEqual((unfused.launches["radar_add"] ?? 0) - (fused.launches["radar_add"] ?? 0), 4 * depth, "radar_add launches")
        XCTAssertEqual((unfused.launches["radar_to_bf16"] ?? 0) - (fused.launches["radar_to_bf16"] ?? 0), 2 * depth, "radar_to_bf16 launches")
        XCTAssertEqual(fused.launches["radar_layernorm_backward_input"], unfused.launches["radar_layernorm_backward_input"])
        XCTAssertEqual(fused.loss, unfused.loss, accuracy: 1e-3 * abs(unfused.loss))
        let diff = zip(fused.grads, unfused.grads).map { Double($0 - $1) * Double($0 - $1) }.reduce(0, +).squareRoot()
        let norm = unfused.grads.map { Double($0) * Double($0) }.reduce(0, +).squareRoot()
        XCTAssertGreaterThan(norm, 0)
        XCTAssertLessThan(diff / norm, 0.05, "relative L2 distance of the gradients")
    }

    /// fc1's bias gradient summed by GELU backward as it writes dx (`radar_gelu_backward_chunk_sums`)
    /// gives the bits of GELU backward then `accumulateColumnSums` (two kernels, dx read back): fp32
    /// with a kept CDF; bf16 dy, x and dx on a width of 4s (the four-column path) and on an odd
    /// width; bf16 dy and dx over an fp32 x; chunks of 8 and 64 rows with a last one cut short;
    /// blocks and threads in any order. One launch where there were two before the chunk sums.
    func testGELUBackwardSumsTheBiasGradientWithTheBitsOfASecondPass() {
        let device = EmulatedDevice(memory: 1 << 28)
        let be = CUDABackend(driver: device, precision: .bf16)
        for (rows, cols, dyB, xB, dxB, withCDF) in [(1100, 37, false, false, false, true), (1100, 36, true, true, true, false),
                                                    (300, 37, true, true, true, false), (301, 10, true, false, true, false)] {
            let label = "\(rows) x \(cols) dy \(dyB ? "bf16" : "fp32") x \(xB ? "bf16" : "fp32") dx \(dxB ? "bf16" : "fp32")"
            var held: [DeviceTensor] = [], narrow: [Tensor] = []
            func tensor(_ bf: Bool, _ seed: UInt64, positive: Bool = false) -> Tensor {
                let wide = DeviceTensor(be, Shape(rows, cols), values(rows * cols, seed, positive: positive))
                held.append(wide)
                guard bf else { return wide.tensor }
                let t = Tensor(be.allocate(DType.bfloat16.floats(rows * cols)), Shape(rows, cols), dtype: .bfloat16)
                be.convert(wide.tensor, into: t)
                narrow.append(t)
                return t
            }
            let dy = tensor(dyB, 1), x = tensor(xB, 2), cdf = withCDF ? tensor(false, 3, positive: true) : nil
            defer { for t in narrow { be.release(t.base) } }
            func run(fused: Bool) -> (dx: [UInt32], sums: [UInt32], kernels: [String], grid: Int) {
                be.fuseGELUColumnSums = fused
                defer { be.fuseGELUColumnSums = true }
                let dx = dxB ? Tensor(be.allocate(DType.bfloat16.floats(rows * cols)), Shape(rows, cols), dtype: .bfloat16)
                             : Tensor(be.allocate(rows * cols), Shape(rows, cols))
                defer { be.release(dx.base) }
                let sums = DeviceTensor(be, Shape(cols), values(cols, 4))
                device.launchLog = []
                be.geluBackward(dy, x: x, cdf: cdf, dx, columnSumsInto: sums.tensor)
                let launches = device.launchLog ?? []
                device.launchLog = nil
                let wide = DeviceTensor(be, Shape(rows, cols))
                if dxB { be.convert(dx, into: wide.tensor) } else { be.copy(dx, into: wide.tensor) }
                return (wide.values.map(\.bitPattern), sums.values.map(\.bitPattern), launches.map(\.kernel), launches.first?.grid ?? 0)
            }
            let one = run(fused: true), two = run(fused: false)
            // Sized for a thread per chunk and column, or per four columns where all is bf16.
            let chunk = CUDABackend.reductionRows(rows: rows, cols: cols), chunks = (rows + chunk - 1) / chunk
            let quads = dyB && xB && dxB && !withCDF && cols % 4 == 0
            XCTAssertEqual(one.grid, (chunks * (quads ? cols / 4 : cols) + 255) / 256, "\(label): blocks")
            XCTAssertEqual(one.kernels, ["radar_gelu_backward_chunk_sums", "radar_add_chunk_sums"], label)
            XCTAssertEqual(two.kernels, ["radar_gelu_backward", "radar_column_chunk_sums", "radar_add_chunk_sums"], label)
            XCTAssertEqual(one.dx, two.dx, "\(label): dx")
            XCTAssertEqual(one.sums, two.sums, "\(label): the column sums")
            XCTAssertTrue(one.dx.contains { $0 != 0 }, "\(label): dx computed")
            XCTAssertNotEqual(one.sums, values(cols, 4).map(\.bitPattern), "\(label): sums added")
            for schedule in ["reversed", "shuffled:5"] {
                XCTAssertEqual(radar_emu_set_schedule_text(schedule), 0)
                let other = run(fused: true)
                _ = radar_emu_set_schedule_text("forward")
                XCTAssertEqual(other.dx, one.dx, "\(label): \(schedule): dx")
                XCTAssertEqual(other.sums, one.sums, "\(label): \(schedule): sums")
            }
        }
    }

    /// The one-pass LayerNorm backward summing its dx (the bias gradient of fc2 or the attention
    /// projection, whose output gradient it is) gives the bits of the two kernels followed by
    /// `accumulateColumnSums`, with and without the residual, on chunks of 8 and 64 rows and a last
    /// one cut short, under reversed and shuffled schedules; no `radar_column_chunk_sums` launch.
    func testOnePassLayerNormBackwardSumsItsOutputWithTheBitsOfASecondPass() {
        for (rows, cols, joined) in [(1100, 37, true), (1100, 100, false), (9000, 300, true)] {
            let device = EmulatedDevice(memory: 1 << 28)
            let be = CUDABackend(driver: device, precision: .bf16)
            let (dy, x, gamma, mean, rstd, residual) = layerNormInputs(be, rows, cols)
            func run(onePass: Bool, staged: Bool = false) -> (bits: [[UInt32]], kernels: [String]) {
                be.fuseLayerNormBackward = onePass
                be.stagedLayerNormBackward = staged
                defer { be.fuseLayerNormBackward = true; be.stagedLayerNormBackward = false }
                let dx = DeviceTensor(be, Shape(rows, cols)), dGamma = DeviceTensor(be, Shape(cols), values(cols, 7))
                let dBeta = DeviceTensor(be, Shape(cols), values(cols, 8)), sums = DeviceTensor(be, Shape(cols), values(cols, 9))
                device.launchLog = []
                be.layerNormBackward(dy.tensor, x: x.tensor, gamma: gamma.tensor, mean: mean.tensor, rstd: rstd.tensor, dx.tensor,
                                     dGamma: dGamma.tensor, dBeta: dBeta.tensor, residual: joined ? residual.tensor : nil, dxCopy: nil,
                                     dxColumnSumsInto: sums.tensor)
                let kernels = (device.launchLog ?? []).map(\.kernel)
                device.launchLog = nil
                return ([dx, dGamma, dBeta, sums].map { $0.values.map(\.bitPattern) }, kernels)
            }
            let one = run(onePass: true), two = run(onePass: false), staged = run(onePass: true, staged: true)
            XCTAssertEqual(one.kernels, ["radar_layernorm_backward_chunk"] + Array(repeating: "radar_add_chunk_sums", count: 3), "\(rows) x \(cols)")
            XCTAssertEqual(staged.kernels, ["radar_layernorm_backward_staged"] + Array(repeating: "radar_add_chunk_sums", count: 3), "\(rows) x \(cols)")
            XCTAssertEqual(staged.bits, one.bits, "\(rows) x \(cols): staged")
            XCTAssertEqual(two.kernels, ["radar_layernorm_backward_input", "radar_layernorm_param_partials", "radar_add_chunk_sums",
                                         "radar_add_chunk_sums", "radar_column_chunk_sums", "radar_add_chunk_sums"], "\(rows) x \(cols)")
            for (k, what) in ["dx", "dGamma", "dBeta", "dx's column sums"].enumerated() {
                XCTAssertEqual(one.bits[k], two.bits[k], "\(rows) x \(cols): \(what)")
            }
            XCTAssertNotEqual(one.bits[3], values(cols, 9).map(\.bitPattern), "\(rows) x \(cols): sums added")
            for schedule in ["reversed", "shuffled:7"] {
                XCTAssertEqual(radar_emu_set_schedule_text(schedule), 0)
                let other = run(onePass: true), otherStaged = run(onePass: true, staged: true)
                _ = radar_emu_set_schedule_text("forward")
                XCTAssertEqual(other.bits, one.bits, "\(rows) x \(cols): \(schedule)")
                XCTAssertEqual(otherStaged.bits, one.bits, "\(rows) x \(cols): \(schedule), staged")
            }
        }
    }

    /// A bf16 training step with the bias gradients of fc1 (by GELU backward), fc2 and the
    /// attention projection (by the one-pass LayerNorm backward, run here on the tiny model's few
    /// chunks) summed as their output gradients are written, against one with GELU backward, the
    /// two LayerNorm kernels and a column-sum pass each: per block three `radar_column_chunk_sums`
    /// and one `radar_gelu_backward` launch fewer, and the loss and every gradient bit-identical.
    func testATrainingStepWithTheBiasSumsFusedHasTheBitsOfTheSeparatePasses() throws {
        let depth = RADARConfig.preset("tiny")!.depth
        func run(fuse: Bool, staged: Bool = false) throws -> (loss: Double, grads: [UInt32], launches: [String: Int]) {
            let device = EmulatedDevice(memory: 1 << 30)
            let backend = CUDABackend(driver: device, precision: .bf16)
            backend.fuseGELUColumnSums = fuse
            backend.fuseLayerNormBackward = fuse
            backend.stagedLayerNormBackward = staged
            backend.layerNormOnePassMinChunks = 1
            let (trainer, images, labels) = try makeTinyTrainer(batch: 2, backend: backend)
            device.launchLog = []
            let r = try XCTUnwrap(try trainer.step(images: images.tensor, labels: labels.tensor))
            var launches: [String: Int] = [:]
            for l in device.launchLog ?? [] { launches[l.kernel, default: 0] += 1 }
            return (r.terms.total, trainer.ctx.backend.download(trainer.ctx.params.grads).map(\.bitPattern), launches)
        }
        let fused = try run(fuse: true), unfused = try run(fuse: false), staged = try run(fuse: true, staged: true)
        XCTAssertEqual(fused.launches["radar_gelu_backward_chunk_sums"], depth)
        // RADAR_LAYERNORM_BACKWARD=staged: every one-pass launch staged, the same bits.
        XCTAssertEqual(staged.launches["radar_layernorm_backward_staged"], fused.launches["radar_layernorm_backward_chunk"])
        XCTAssertNil(staged.launches["radar_layernorm_backward_chunk"])
        XCTAssertEqual(staged.loss, fused.loss)
        XCTAssertEqual(staged.grads, fused.grads, "every gradient bit-identical, staged")
        XCTAssertGreaterThanOrEqual(fused.launches["radar_layernorm_backward_chunk"] ?? 0, 2 * depth + 1)
        XCTAssertEqual((unfused.launches["radar_gelu_backward"] ?? 0) - (fused.launches["radar_gelu_backward"] ?? 0), depth)
        XCTAssertEqual((unfused.launches["radar_column_chunk_sums"] ?? 0) - (fused.launches["radar_column_chunk_sums"] ?? 0), 3 * depth)
        XCTAssertEqual(fused.loss, unfused.loss)
        XCTAssertEqual(fused.grads, unfused.grads, "every gradient bit-identical")
        XCTAssertTrue(fused.grads.contains { $0 != 0 })
    }
}
