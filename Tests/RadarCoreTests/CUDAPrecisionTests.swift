import Foundation
@testable import RadarCUDA
import RadarCore
import XCTest

/// The CUDA backend's products in each precision (cuBLAS's column-major, strided-batched argument
/// conventions; TF32 and bf16 operands with fp32 accumulation) against naive double references
/// with the operands rounded the same way; a bf16 training step against fp32 on the CPU and
/// against itself (bit-identical run to run); and the device errors a user can meet.
final class CUDAPrecisionTests: XCTestCase {
    /// bf16 round to nearest even, written independently of the emulator's and the kernels'.
    static func bf16(_ v: Float) -> Float {
        let bits = v.bitPattern, lower = bits & 0xffff, upper = bits & 0xffff_0000
        if lower > 0x8000 || (lower == 0x8000 && (upper >> 16) & 1 == 1) { return Float(bitPattern: upper &+ 0x10000) }
        return Float(bitPattern: upper)
    }

    static func tf32(_ v: Float) -> Float {
        let bits = v.bitPattern, lower = bits & 0x1fff, upper = bits & ~UInt32(0x1fff)
        if lower > 0x1000 || (lower == 0x1000 && (upper >> 13) & 1 == 1) { return Float(bitPattern: upper &+ 0x2000) }
        return Float(bitPattern: upper)
    }

    func testRoundingReferencesOnKnownValues() {
        XCTAssertEqual(CUDAPrecisionTests.bf16(1 + 0x1p-8), 1)  // a tie, to even
        XCTAssertEqual(CUDAPrecisionTests.bf16(1 + 0x1p-8 + 0x1p-20), 1 + 0x1p-7)
        XCTAssertEqual(CUDAPrecisionTests.bf16(1 + 3 * 0x1p-8), 1 + 0x1p-6)  // a tie, up to even
        XCTAssertEqual(CUDAPrecisionTests.tf32(1 + 0x1p-11), 1)
        XCTAssertEqual(CUDAPrecisionTests.tf32(1 + 3 * 0x1p-11), 1 + 0x1p-9)
        XCTAssertEqual(EmulatedDevice.roundTF32(1 + 3 * 0x1p-11), 1 + 0x1p-9)
    }

    /// Row-major op(A) op(B) through `backend.gemm` (its conversion kernels and the column-major
    /// call), every transpose combination, odd shapes, alpha and beta.
    func testRowMajorProductsInEachPrecisionMatchTheRoundedReference() {
        let (m, n, k) = (5, 7, 19)
        for precision in Precision.allCases {
            let be = CUDABackend(driver: EmulatedDevice(memory: 1 << 26), precision: precision)
            let round: (Float) -> Float = precision == .bf16 ? CUDAPrecisionTests.bf16 : precision == .tf32 ? CUDAPrecisionTests.tf32 : { $0 }
            for transA in [false, true] {
                for transB in [false, true] {
                    let a = randomValues(m * k, seed: 1, std: 1.5), b = randomValues(k * n, seed: 2), c0 = randomValues(m * n, seed: 3)
                    let lda = transA ? m : k, ldb = transB ? k : n
                    let da = DeviceTensor(be, Shape(m * k), a), db = DeviceTensor(be, Shape(k * n), b), dc = DeviceTensor(be, Shape(m * n), c0)
                    be.gemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: 0.75, a: da.tensor.base, lda: lda, b: db.tensor.base,
                            ldb: ldb, beta: 0.5, c: dc.tensor.base, ldc: n)
                    let got = dc.values
                    for i in 0..<m {
                        for j in 0..<n {
                            var s = 0.0
                            for p in 0..<k {
                                let av = transA ? a[p * lda + i] : a[i * lda + p], bv = transB ? b[j * ldb + p] : b[p * ldb + j]
                                s += Double(round(av)) * Double(round(bv))
                            }
                            let want = 0.75 * s + 0.5 * Double(c0[i * n + j])
                            XCTAssertEqual(Double(got[i * n + j]), want, accuracy: 1e-4 * max(1, abs(want)),
                                           "\(precision) transA \(transA) transB \(transB) [\(i), \(j)]")
                        }
                    }
                    // The rounding matters: bf16 and tf32 differ from the fp32 product.
                    if precision != .fp32 {
                        var exact = 0.0
                        for p in 0..<k { exact += Double(transA ? a[p * lda] : a[p]) * Double(transB ? b[p] : b[p * ldb]) }
                        XCTAssertNotEqual(Double(got[0]), 0.75 * exact + 0.5 * Double(c0[0]), "\(precision): operands were not rounded")
                    }
                }
            }
        }
    }

    /// The emulated cuBLAS itself, column-major and strided-batched, as cublasGemmStridedBatchedEx
    /// documents it (with a zero stride broadcasting one operand).
    func testStridedBatchedColumnMajorProduct() {
        let dev = EmulatedDevice(memory: 1 << 26)
        let (m, n, k, batch) = (4, 3, 6, 3)
        let (lda, ldb, ldc) = (m + 1, k + 2, m)
        let strideA = 0, strideB = ldb * n + 1, strideC = ldc * n
        let a = randomValues(lda * k, seed: 4), b = randomValues(strideB * batch, seed: 5)
        let pa = try! dev.allocate(bytes: a.count * 4), pb = try! dev.allocate(bytes: b.count * 4), pc = try! dev.allocate(bytes: strideC * batch * 4)
        defer { [pa, pb, pc].forEach { dev.free($0) } }
        a.withUnsafeBytes { dev.upload($0.baseAddress!, to: pa, bytes: $0.count) }
        b.withUnsafeBytes { dev.upload($0.baseAddress!, to: pb, bytes: $0.count) }
        dev.gemm(StridedGemm(transA: false, transB: false, m: m, n: n, k: k, alpha: 1, a: pa, lda: lda, strideA: strideA, b: pb, ldb: ldb,
                             strideB: strideB, beta: 0, c: pc.assumingMemoryBound(to: Float.self), ldc: ldc, strideC: strideC, batch: batch))
        var c = [Float](repeating: 0, count: strideC * batch)
        c.withUnsafeMutableBytes { dev.download(pc, to: $0.baseAddress!, bytes: $0.count) }
        for i in 0..<batch {
            for col in 0..<n {
                for row in 0..<m {
                    var s = 0.0
                    for p in 0..<k { s += Double(a[row + p * lda]) * Double(b[i * strideB + p + col * ldb]) }
                    XCTAssertEqual(Double(c[i * strideC + row + col * ldc]), s, accuracy: 1e-5, "batch \(i) (\(row), \(col))")
                }
            }
        }
    }

    func tinyStep(_ backend: any Backend) throws -> (Trainer.StepResult, [Float]) {
        let (trainer, images, labels) = try makeTinyTrainer(batch: 2, backend: backend) { $0.dropout = 0.1 }
        let r = try XCTUnwrap(try trainer.step(images: images.tensor, labels: labels.tensor))
        return (r, backend.download(trainer.ctx.params.values))
    }

    /// bf16 runs are bit-identical run to run (no atomics, fixed algorithms) and their loss is
    /// near fp32's on the CPU.
    func testBF16StepIsBitIdenticalRunToRun() throws {
        let (cpu, _) = try tinyStep(CPUBackend(threads: 1))
        let (a, aParams) = try tinyStep(CUDABackend(driver: EmulatedDevice(memory: 1 << 30), precision: .bf16))
        let (b, bParams) = try tinyStep(CUDABackend(driver: EmulatedDevice(memory: 1 << 30), precision: .bf16))
        XCTAssertEqual(a.terms, b.terms)
        XCTAssertEqual(a.gradNorm, b.gradNorm)
        XCTAssertEqual(aParams.map(\.bitPattern), bParams.map(\.bitPattern), "bf16 run to run")
        XCTAssertEqual(a.terms.total, cpu.terms.total, accuracy: 0.02 * abs(cpu.terms.total))
        XCTAssertNotEqual(a.terms.total, cpu.terms.total, "bf16 operands change the result")
    }

    /// Under bf16 the encoder keeps what only products read as bf16 (as AMP keeps its GEMM
    /// inputs): per block and token, h1 and h2 in fp32 and LN1 out, q k v, merged, LN2 out and fc1
    /// out in bf16 (GELU's output is recomputed in backward), 7 D-wide floats instead of 12.
    /// Turning it off keeps fp32. The CPU keeps fp32 by default and the same bf16 set when asked.
    func testBF16ActivationsHalveWhatABlockKeeps() throws {
        func forwardFloats(_ backend: any Backend, depth: Int, bf16Activations: Bool) throws -> Int {
            let (trainer, images, _) = try makeTinyTrainer(backend: backend) { $0.depth = depth }
            XCTAssertEqual(trainer.ctx.bf16Activations, backend is CUDABackend, "the backend's default")
            trainer.ctx.bf16Activations = bf16Activations
            trainer.ctx.recomputeInBackward = true  // the CPU's default keeps the probabilities and the CDF
            trainer.ctx.beginPass()
            _ = try trainer.model.forward(images.tensor, trainer.ctx)
            return trainer.ctx.arena.floatsInUse
        }
        let c = RADARConfig.preset("tiny")!, tokens = c.patchCount + 1
        let oneWide = 4 * tokens * c.embedDim, hidden = 4 * tokens * c.mlpHidden  // batch 4
        for device in ["cuda-emulated bf16", "cpu"] {
            func backend() -> any Backend {
                device == "cpu" ? CPUBackend() : CUDABackend(driver: EmulatedDevice(memory: 1 << 30), precision: .bf16)
            }
            for bf16 in [true, false] {
                let perBlock = (try forwardFloats(backend(), depth: 3, bf16Activations: bf16) - (try forwardFloats(backend(), depth: 1, bf16Activations: bf16))) / 2
                let saves = bf16 ? 2 * oneWide + 6 * oneWide / 2 + hidden / 2 : 8 * oneWide + hidden
                XCTAssertGreaterThanOrEqual(perBlock, saves, "\(device), bf16 activations \(bf16)")
                XCTAssertLessThan(perBlock, saves + oneWide / 2, "\(device), bf16 activations \(bf16): one block keeps \(perBlock) floats: more than \(saves) and LayerNorm's statistics")
            }
        }
    }

    /// Under bf16 products, Linear layers read a bf16 copy of the parameters rounded once per pass,
    /// and each output gradient is rounded once for its two products: the same bits as rounding
    /// per product (three steps, so a copy that missed an optimizer update would show), with
    /// fewer conversions. The CPU does neither by default.
    func testRoundingWeightsAndGradientsOncePerPassGivesTheSameBits() throws {
        func train(weightCopy: Bool) throws -> (losses: [Double], params: [UInt32], conversions: Int) {
            let device = EmulatedDevice(memory: 1 << 30)
            let (trainer, images, labels) = try makeTinyTrainer(batch: 2, backend: CUDABackend(driver: device, precision: .bf16)) {
                $0.dropout = 0.1
            }
            XCTAssertTrue(trainer.ctx.bf16WeightCopy, "the CUDA bf16 default")
            trainer.ctx.bf16WeightCopy = weightCopy
            var losses: [Double] = []
            for i in 0..<3 {
                if i == 2 { device.launchLog = [] }
                losses.append(try XCTUnwrap(try trainer.step(images: images.tensor, labels: labels.tensor)).terms.total)
            }
            let conversions = (device.launchLog ?? []).filter { $0.kernel == "radar_to_bf16" }.count
            return (losses, trainer.ctx.backend.download(trainer.ctx.params.values).map(\.bitPattern), conversions)
        }
        let once = try train(weightCopy: true), perProduct = try train(weightCopy: false)
        XCTAssertEqual(once.losses, perProduct.losses)
        XCTAssertEqual(once.params, perProduct.params, "parameters after 3 steps")
        XCTAssertLessThan(once.conversions, perProduct.conversions * 3 / 4, "bf16 conversions per step: \(once.conversions) against \(perProduct.conversions)")
        let (cpuTrainer, _, _) = try makeTinyTrainer(backend: CPUBackend(threads: 1))
        XCTAssertFalse(cpuTrainer.ctx.bf16WeightCopy)
        XCTAssertFalse(cpuTrainer.ctx.backend.roundsProductOperandsToBFloat16)
    }

    /// bf16 activations with fp32 products (the CPU, asked): training runs, allocates nothing
    /// after warm-up, and stays near fp32, with a loss that differs (the activations were rounded).
    func testBF16ActivationsOnTheCPUTrainNearFP32() throws {
        func train(_ bf16: Bool) throws -> [Double] {
            let (trainer, images, labels) = try makeTinyTrainer(threads: 2)
            trainer.ctx.bf16Activations = bf16
            return try (0..<3).map { _ in try XCTUnwrap(try trainer.step(images: images.tensor, labels: labels.tensor)).terms.total }
        }
        let fp32 = try train(false), bf16 = try train(true)
        for (a, b) in zip(fp32, bf16) { XCTAssertEqual(a, b, accuracy: 0.02 * abs(a)) }
        XCTAssertNotEqual(fp32, bf16, "rounded activations change the losses")
    }

    /// The golden small_dual case (PyTorch's own weights and batch) in tf32 and bf16 against fp32
    /// on the CPU: losses and logits close, the whole gradient within a relative L2 distance that
    /// grows with the operands' lost mantissa bits (tf32 keeps 10, bf16 7). Measured here: tf32
    /// 0.023, bf16 0.082 (BatchNorm over a batch of 2 amplifies rounding; the losses agree to 3e-4).
    func testReducedPrecisionsStayNearFP32OnTheGoldenCase() throws {
        let dir = fixturesDirectory.appendingPathComponent("parity/small_dual")
        let config = try RADARConfig.load(dir.appendingPathComponent("config.json").path)
        let weights = try SafeTensors.read(dir.appendingPathComponent("weights.safetensors").path).tensors
        let batch = try SafeTensors.read(dir.appendingPathComponent("batch.safetensors").path).tensors
        func dump(_ device: String, _ precision: String) throws -> [String: SafeTensor] {
            try ParityDump.run(config: config, weights: weights, weightsSource: "weights", batch: batch, batchSource: "batch", steps: 0,
                               lr: 1e-3, weightDecay: 0.05, device: device, precision: precision)
        }
        let ref = try dump("cpu", "fp32")
        var distances: [String: Double] = [:]
        for precision in ["tf32", "bf16"] {
            let got = try dump("cuda-emulated", precision)
            var num = 0.0, den = 0.0
            for (k, t) in ref where k.hasPrefix("grad.") {
                let g = try XCTUnwrap(got[k]).floats
                for (x, y) in zip(t.floats, g) { num += Double(x - y) * Double(x - y); den += Double(x) * Double(x) }
            }
            distances[precision] = (num / den).squareRoot()
            let loss = Double(ref["loss.total"]!.floats[0])
            XCTAssertEqual(Double(got["loss.total"]!.floats[0]), loss, accuracy: 2e-3 * loss, precision)
            for (x, y) in zip(ref["out.logit"]!.floats, got["out.logit"]!.floats) { XCTAssertEqual(x, y, accuracy: 5e-3, precision) }
        }
        XCTAssertLessThan(distances["tf32"]!, 0.05)
        XCTAssertLessThan(distances["bf16"]!, 0.15)
        XCTAssertGreaterThan(distances["tf32"]!, 1e-4, "tf32 operands were not rounded")
        XCTAssertLessThan(distances["tf32"]!, distances["bf16"]!)
    }

    func testLoaderThreadsDefaultToTheHostsFreeCoresOnAGPU() {
        // On the CPU the compute threads own the cores; on a GPU this rank's share less one decodes.
        let cores = ProcessInfo.processInfo.activeProcessorCount
        for d in ["cpu", "cpu-fenced", "cuda-emulated"] { XCTAssertEqual(Devices.defaultLoaderThreads(device: d, localRanks: 1), 1, d) }
        XCTAssertEqual(Devices.defaultLoaderThreads(device: "cuda:1", localRanks: 1), min(16, max(1, cores - 1)))
        XCTAssertEqual(Devices.defaultLoaderThreads(device: "cuda", localRanks: 4 * cores), 1, "more ranks than cores: one each")
        XCTAssertEqual(Devices.defaultLoaderThreads(device: "cuda:0", localRanks: 1) <= 16, true)
    }

    func testDeviceErrors() throws {
        XCTAssertThrowsError(try CUDADrivers.open(ordinal: 7, emulated: true)) { e in
            XCTAssertEqual("\(e)", "device cuda:7: this machine has 1 CUDA device (cuda:0)")
        }
        let dev = EmulatedDevice(memory: 1 << 20)
        XCTAssertThrowsError(try dev.allocate(bytes: 3 << 20)) { e in
            XCTAssertTrue("\(e)".hasPrefix("out of device memory on cuda:0 (emulated device"), "\(e)")
            XCTAssertTrue("\(e)".contains("3.0 MiB (3145728 bytes) requested"), "\(e)")
        }
        XCTAssertThrowsError(try Devices.backend("cpu", threads: 1, precision: "tf32")) { e in
            XCTAssertEqual("\(e)", "precision tf32 needs a CUDA device (--device cuda); cpu computes in fp32 or bf16")
        }
        XCTAssertThrowsError(try Devices.backend("cuda:x", threads: 1)) { e in XCTAssertTrue("\(e)".hasPrefix("unknown device \"cuda:x\"")) }
        // The emulated device is fp32 under auto; the real driver is absent on machines without a GPU.
        XCTAssertEqual((try Devices.backend("cuda-emulated", threads: 1) as? CUDABackend)?.precision, .fp32)
        if dlopen("libcuda.so.1", RTLD_NOW) == nil && !CUDADrivers.emulatorSelected {
            XCTAssertThrowsError(try CUDADrivers.open(ordinal: 0)) { e in
                XCTAssertTrue("\(e)".contains("no CUDA driver on this machine (libcuda.so.1 cannot be loaded"), "\(e)")
            }
        } else {
            XCTAssertNoThrow(try CUDADrivers.open(ordinal: 0))
        }
    }
}
