import COpenBLAS
import CTensorKernels
import Foundation
import RadarCore
import RadarCUDA
import XCTest

/// bf16 products on the CPU (`--precision bf16 --device cpu`): the choice between oneDNN, the
/// rounded-operand path and the fp32 fallback; oneDNN's matmul argument conventions against
/// OpenBLAS (in fp32, which every CPU runs); the products against a rounded double reference; and
/// a whole forward/backward against PyTorch's CPU autocast on the golden cases, with tolerances
/// from PyTorch's own bf16-vs-fp32 distance (tools/golden/autocast_fixture.py).
final class CPUBF16Tests: XCTestCase {
    /// The choice is a function of the environment and the CPU's flags.
    func testBF16ChoiceFollowsTheCPUAndTheEnvironment() throws {
        let (plain, notice) = try CPUProducts.bf16(environment: [:], cpuFlags: ["avx2", "fma"])
        XCTAssertEqual(plain, .fp32)
        XCTAssertEqual(notice, "precision bf16: this CPU has neither AMX-BF16 nor AVX512-BF16, so bf16 products would be slower than fp32 here: computing in fp32")
        XCTAssertEqual(try CPUProducts.bf16(environment: ["RADAR_CPU_BF16": "rounded"], cpuFlags: ["avx2"]).0, .bf16Rounded)
        XCTAssertNil(try CPUProducts.bf16(environment: ["RADAR_CPU_BF16": "rounded"], cpuFlags: ["avx2"]).notice)
        XCTAssertThrowsError(try CPUProducts.bf16(environment: ["RADAR_CPU_BF16": "fast"], cpuFlags: [])) { e in
            XCTAssertEqual("\(e)", "precision bf16 on the CPU: RADAR_CPU_BF16=fast: expected rounded, onednn or auto")
        }
        // With bf16 instructions in the flags, oneDNN's probe decides: it must run bf16 on a CPU
        // that has them; on one without, it may refuse (AVX2 only: "no implementation") or run
        // (oneDNN emulates bf16 on AVX-512 cores whose bf16 flags a hypervisor hides, as on the
        // Intel Xeon of 2026-12-04), and the choice follows the probe either way.
        let real = BLASKernels.cpuFlags()?.flags ?? []
        let hasBF16 = real.contains("amx_bf16") || real.contains("avx512_bf16")
        let probe = CPUProducts.oneDNNBF16Failure()
        if hasBF16 { XCTAssertNil(probe, "oneDNN must run bf16 products on a CPU with bf16 instructions") }
        if !real.contains("avx512f") && !hasBF16 {
            XCTAssertTrue(probe?.hasPrefix("oneDNN bf16 matmul failed (status 3: no implementation for this data type on this CPU)") == true,
                          probe ?? "the probe passed on a CPU without AVX-512")
        }
        let (withFlags, why) = try CPUProducts.bf16(environment: [:], cpuFlags: ["avx512_bf16"])
        if let probe {
            XCTAssertEqual(withFlags, .fp32)
            XCTAssertEqual(why, "precision bf16: \(probe): computing in fp32 (Debian: apt-get install libdnnl2)")
            XCTAssertThrowsError(try CPUProducts.bf16(environment: ["RADAR_CPU_BF16": "onednn"], cpuFlags: real))
        } else {
            XCTAssertEqual(withFlags, .bf16OneDNN, why ?? "")
            XCTAssertNil(why)
            XCTAssertEqual(try CPUProducts.bf16(environment: ["RADAR_CPU_BF16": "onednn"], cpuFlags: real).0, .bf16OneDNN)
        }
        print("bf16 on this CPU: \(hasBF16 ? "bf16 instructions" : "no AMX-BF16/AVX512-BF16"); oneDNN bf16 probe: \(probe ?? "runs")")
    }

    /// oneDNN's matmul as the bf16 path calls it (strides for transposed operands, leading
    /// dimensions wider than the matrix, alpha as an output scale, beta as a sum post-op), in fp32
    /// against OpenBLAS. oneDNN must load: CI installs it, and this test fails rather than skip.
    func testOneDNNProductsFollowOpenBLASConventions() throws {
        let (m, n, k) = (7, 5, 19)
        for (transA, transB) in [(false, false), (true, false), (false, true), (true, true)] {
            for (alpha, beta) in [(Float(1), Float(0)), (0.75, 0.5), (-2, 1)] {
                let lda = (transA ? m : k) + 3, ldb = (transB ? k : n) + 1, ldc = n + 2
                let a = randomValues((transA ? k : m) * lda, seed: 1), b = randomValues((transB ? n : k) * ldb, seed: 2)
                let c0 = randomValues(m * ldc, seed: 3)
                var want = c0, got = c0
                cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans, Int32(m), Int32(n), Int32(k),
                            alpha, a, Int32(lda), b, Int32(ldb), beta, &want, Int32(ldc))
                let failure = CPUProducts.oneDNNProductFP32(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda,
                                                            b: b, ldb: ldb, beta: beta, c: &got, ldc: ldc)
                XCTAssertNil(failure, "oneDNN: \(failure ?? "")")
                let name = "transA \(transA) transB \(transB) alpha \(alpha) beta \(beta)"
                for i in 0..<m {
                    for j in 0..<ldc {
                        if j >= n {
                            XCTAssertEqual(got[i * ldc + j], c0[i * ldc + j], "padding untouched: \(name)")
                        } else {
                            XCTAssertEqual(got[i * ldc + j], want[i * ldc + j], accuracy: 1e-4 * max(1, abs(want[i * ldc + j])), "\(name) [\(i), \(j)]")
                        }
                    }
                }
            }
        }
        let d = CPUProducts.oneDNNDescription
        print("oneDNN \(d.version), last implementation \(d.lastImplementation)")
        XCTAssertFalse(d.version.isEmpty)
        XCTAssertFalse(d.lastImplementation.isEmpty, "the implementation oneDNN chose is reported")
        // The start-up probe's own expectations and operand packing, in fp32 (the bf16 probe
        // differs only in the operands' type).
        XCTAssertNil(CPUProducts.oneDNNProbeFailure(bf16: false))
    }

    /// The bf16 operands handed to oneDNN: rows x cols out of a padded matrix, packed, each the bit
    /// pattern RadarEngine's BFloat16 gives (nearest even, NaN quiet), and the rounded-fp32 twin the
    /// OpenBLAS path uses is the same value; the AVX2 kernels (16 and 8 at a time, then a scalar
    /// tail) give the plain loop's bits, random bit patterns included (NaN payloads, subnormals).
    func testBF16OperandConversionMatchesBFloat16() {
        let (rows, cols, ld) = (9, 37, 41)
        var values = randomValues(rows * ld, seed: 11, std: 3)
        var state: UInt64 = 0x9e37_79b9_7f4a_7c15
        for i in stride(from: 9, to: values.count, by: 3) {  // every third: any 32 bits at all
            state = state &* 6364136223846793005 &+ 1442695040888963407
            values[i] = Float(bitPattern: UInt32(truncatingIfNeeded: state >> 29))
        }
        values[0] = .nan; values[1] = .infinity; values[2] = -.infinity; values[3] = 0x1p-130; values[4] = -0.0
        values[5] = Float(bitPattern: 0x3f80_8000); values[6] = Float(bitPattern: 0x3f81_8000); values[7] = .greatestFiniteMagnitude
        values[8] = Float(bitPattern: 0xff80_0001); values[20] = Float(bitPattern: 0x7f7f_ffff); values[30] = Float(bitPattern: 0x0000_8000)
        values[33] = Float(bitPattern: 0x7fc0_0000); values[34] = Float(bitPattern: 0x8000_7fff)
        let kernels: [Int32] = radar_tensor_kernels_avx2() != 0 ? [0, 1] : [0]
        for avx2 in kernels {
            var bits = [UInt16](repeating: 0, count: rows * cols), rounded = [Float](repeating: 0, count: rows * cols)
            radar_to_bf16_matrix(values, Int64(rows), Int64(cols), Int64(ld), &bits, avx2)
            radar_round_bf16_matrix(values, Int64(rows), Int64(cols), Int64(ld), &rounded, avx2)
            for r in 0..<rows {
                for c in 0..<cols {
                    let v = values[r * ld + c], i = r * cols + c
                    XCTAssertEqual(bits[i], BFloat16.bits(v), "avx2 \(avx2) [\(r), \(c)] \(v.bitPattern)")
                    XCTAssertEqual(rounded[i].bitPattern, UInt32(bits[i]) << 16, "avx2 \(avx2) [\(r), \(c)] \(v.bitPattern)")
                }
            }
            XCTAssertEqual(bits[5], 0x3f80, "a tie rounds to even (down)")
            XCTAssertEqual(bits[6], 0x3f82, "a tie rounds to even (up)")
            XCTAssertEqual(bits[8], 0xffc0, "a signalling NaN comes out quiet")
            XCTAssertTrue(Float(bitPattern: UInt32(bits[0]) << 16).isNaN)
        }
        // The wrappers the ring's bf16 wire packs and rounds with (one row, rounded in place).
        let saved = CPUBackend.vectorKernels
        defer { CPUBackend.vectorKernels = saved }
        for vector in kernels.map({ $0 == 1 }) {
            CPUBackend.vectorKernels = vector
            var packed = [UInt16](repeating: 0, count: values.count), inPlace = values
            CPUBackend.packBFloat16(values, &packed, count: values.count)
            CPUBackend.roundBFloat16(&inPlace, count: values.count)
            XCTAssertEqual(packed, values.map(BFloat16.bits), "vector \(vector)")
            XCTAssertEqual(inPlace.map(\.bitPattern), values.map { BFloat16.round($0).bitPattern }, "vector \(vector)")
        }
        print("bf16 conversion checked with \(kernels.count == 2 ? "the AVX2 kernels and the plain loop" : "the plain loop (no AVX2 here)")")
    }

    /// The bf16 products (through the backend's tiled gemm: one tile, and several over rows or
    /// over columns, the operands rounded once for all tiles) equal a double reference over
    /// bf16-rounded operands and differ from the fp32 product, on the rounded-operand path and on
    /// oneDNN where this CPU runs its bf16 matmul; 1 and 2 threads give the same bits.
    func testBF16ProductsMatchARoundedReference() {
        let modes: [CPUProducts] = [.bf16Rounded] + (CPUProducts.oneDNNBF16Failure() == nil ? [.bf16OneDNN] : [])
        for mode in modes {
            for (m, n, k) in [(33, 9, 40), (300, 40, 200), (40, 300, 200)] {
                for (transA, transB) in [(false, false), (true, false), (false, true), (true, true)] {
                    let lda = (transA ? m : k) + 2, ldb = (transB ? k : n) + 1, ldc = n + 3
                    let a = randomValues((transA ? k : m) * lda, seed: 4, std: 1.5), b = randomValues((transB ? n : k) * ldb, seed: 5)
                    let c0 = randomValues(m * ldc, seed: 6)
                    func product(threads: Int) -> [Float] {
                        var c = c0
                        a.withUnsafeBufferPointer { pa in b.withUnsafeBufferPointer { pb in c.withUnsafeMutableBufferPointer { pc in
                            CPUBackend(threads: threads, products: mode).gemm(
                                transA: transA, transB: transB, m: m, n: n, k: k, alpha: 0.75, a: pa.baseAddress!, lda: lda,
                                b: pb.baseAddress!, ldb: ldb, beta: 0.5, c: pc.baseAddress!, ldc: ldc)
                        } } }
                        return c
                    }
                    let c = product(threads: 2), name = "\(mode) \(m)x\(n)x\(k) transA \(transA) transB \(transB)"
                    XCTAssertEqual(c.map(\.bitPattern), product(threads: 1).map(\.bitPattern), "\(name): threads")
                    var unrounded = 0.0
                    for i in 0..<m {
                        for j in 0..<ldc {
                            guard j < n else { XCTAssertEqual(c[i * ldc + j], c0[i * ldc + j], "\(name): padding"); continue }
                            var s = 0.0, exact = 0.0
                            for p in 0..<k {
                                let av = transA ? a[p * lda + i] : a[i * lda + p], bv = transB ? b[j * ldb + p] : b[p * ldb + j]
                                s += Double(CUDAPrecisionTests.bf16(av)) * Double(CUDAPrecisionTests.bf16(bv))
                                exact += Double(av) * Double(bv)
                            }
                            let want = 0.75 * s + 0.5 * Double(c0[i * ldc + j])
                            XCTAssertEqual(Double(c[i * ldc + j]), want, accuracy: 1e-4 * max(1, abs(want)), "\(name) [\(i), \(j)]")
                            unrounded = max(unrounded, abs(Double(c[i * ldc + j]) - (0.75 * exact + 0.5 * Double(c0[i * ldc + j]))))
                        }
                    }
                    XCTAssertGreaterThan(unrounded, 1e-3, "\(name): operands were rounded")
                }
            }
        }
    }

    /// A product oneDNN refuses mid-run goes through OpenBLAS on the widened bf16 operands: the
    /// rounded path's bits, whether the product is tiled (operands rounded once for all tiles) or
    /// one thread's (attention's, the convolutions'). `CPUBackend.refuseOneDNN` makes oneDNN refuse
    /// here too; where oneDNN runs bf16 its own products agree with the rounded path to
    /// accumulation order.
    func testOneDNNRefusalFallsBackToTheRoundedPath() {
        defer { CPUBackend.refuseOneDNN = false }
        for (m, n, k) in [(20, 12, 50), (300, 40, 200)] {
            let a = randomValues(m * k, seed: 7), b = randomValues(k * n, seed: 8)
            func product(_ products: CPUProducts, serial: Bool = false) -> [Float] {
                var c = [Float](repeating: 0, count: m * n)
                let backend = CPUBackend(threads: 2, products: products)
                if serial {
                    backend.gemmSerial(transA: false, transB: true, m: m, n: n, k: k, alpha: 1, a: a, lda: k, b: b, ldb: k, beta: 0, c: &c, ldc: n)
                } else {
                    backend.gemm(transA: false, transB: true, m: m, n: n, k: k, alpha: 1, a: a, lda: k, b: b, ldb: k, beta: 0, c: &c, ldc: n)
                }
                return c
            }
            let rounded = product(.bf16Rounded)
            CPUBackend.refuseOneDNN = true
            XCTAssertEqual(product(.bf16OneDNN).map(\.bitPattern), rounded.map(\.bitPattern), "\(m)x\(n)x\(k) tiled")
            XCTAssertEqual(product(.bf16OneDNN, serial: true).map(\.bitPattern), product(.bf16Rounded, serial: true).map(\.bitPattern),
                           "\(m)x\(n)x\(k) serial")
            CPUBackend.refuseOneDNN = false
            let onednn = product(.bf16OneDNN)
            if CPUProducts.oneDNNBF16Failure() != nil {
                XCTAssertEqual(onednn.map(\.bitPattern), rounded.map(\.bitPattern))
            } else {
                for (x, y) in zip(onednn, rounded) { XCTAssertEqual(x, y, accuracy: 1e-4 * max(1, abs(y))) }
            }
            XCTAssertNotEqual(rounded, product(.fp32), "bf16 operands change the product")
        }
    }

    /// One forward/backward of the golden cases with bf16 products against PyTorch's CPU autocast:
    /// the gradient at most 1.5x as far from fp32 as PyTorch's own bf16 is (we round only the
    /// operands; PyTorch also rounds the products' outputs), and within 2x that distance of
    /// PyTorch's bf16 gradient; logits and loss within 2x PyTorch's own distance, with floors
    /// (logits 1e-4, loss 5e-4 relative) where that distance happens to be smaller (tiny_badm_only's
    /// PyTorch loss moved by 6e-8; ours by 2.3e-4, measured). Measured here: gradient from fp32
    /// 0.082 / 0.120 (PyTorch 0.107 / 0.096), from PyTorch's bf16 0.104 / 0.150.
    func testBF16StepAgainstPyTorchAutocast() throws {
        // The rounded-operand path everywhere; oneDNN's bf16 matmul too where the CPU has it.
        let flags = BLASKernels.cpuFlags()?.flags ?? []
        let modes = ["rounded"] + (flags.contains("amx_bf16") || flags.contains("avx512_bf16") ? ["onednn"] : [])
        defer { unsetenv("RADAR_CPU_BF16") }
        for mode in modes { setenv("RADAR_CPU_BF16", mode, 1); for name in ["small_dual", "tiny_badm_only"] {
            let dir = fixturesDirectory.appendingPathComponent("parity/\(name)")
            let config = try RADARConfig.load(dir.appendingPathComponent("config.json").path)
            let weightsDir = (try? String(contentsOf: dir.appendingPathComponent("weights_from"), encoding: .utf8))
                .map { fixturesDirectory.appendingPathComponent("parity/\($0.trimmingCharacters(in: .whitespacesAndNewlines))") } ?? dir
            let weights = try SafeTensors.read(weightsDir.appendingPathComponent("weights.safetensors").path).tensors
            let batch = try SafeTensors.read(dir.appendingPathComponent("batch.safetensors").path).tensors
            let fp32 = try SafeTensors.read(dir.appendingPathComponent("expected.safetensors").path).tensors
            let (torch16, meta) = try SafeTensors.read(dir.appendingPathComponent("autocast_bf16.safetensors").path)
            let ours = try ParityDump.run(config: config, weights: weights, weightsSource: "weights", batch: batch, batchSource: "batch", steps: 0,
                                          lr: 1e-3, weightDecay: 0.05, device: "cpu", precision: "bf16")
            func relL2(_ x: [String: SafeTensor], _ y: [String: SafeTensor]) throws -> Double {
                var num = 0.0, den = 0.0
                for (k, t) in y where k.hasPrefix("grad.") {
                    let g = try XCTUnwrap(x[k], k).floats
                    for (u, v) in zip(g, t.floats) { num += Double(u - v) * Double(u - v); den += Double(v) * Double(v) }
                }
                return (num / den).squareRoot()
            }
            let pytorch = try XCTUnwrap(Double(meta["distance.grad_rel_l2"] ?? ""))
            let fromFP32 = try relL2(ours, fp32), fromTorch = try relL2(ours, torch16)
            print("\(name) (\(mode)): gradient rel L2: ours bf16 vs fp32 \(fromFP32), vs PyTorch autocast \(fromTorch); PyTorch autocast vs fp32 \(pytorch)")
            XCTAssertGreaterThan(fromFP32, 1e-3, "\(name): bf16 operands change the gradient")
            XCTAssertLessThan(fromFP32, 1.5 * pytorch, name)
            XCTAssertLessThan(fromTorch, 2 * pytorch, name)
            let logitTol = 2 * max(try XCTUnwrap(Double(meta["distance.logit_max"] ?? "")), 1e-4)
            for (x, y) in zip(ours["out.logit"]!.floats, torch16["out.logit"]!.floats) { XCTAssertEqual(Double(x), Double(y), accuracy: logitTol, "\(name) logit") }
            let loss = Double(torch16["loss.total"]!.floats[0])
            let lossTol = 2 * max(try XCTUnwrap(Double(meta["distance.loss_rel"] ?? "")), 5e-4) * abs(loss)
            XCTAssertEqual(Double(ours["loss.total"]!.floats[0]), loss, accuracy: lossTol, "\(name) loss")
        } }
    }

    /// Training with bf16 products: deterministic across thread counts, a run stopped and resumed
    /// ends with the bits of an uninterrupted one (the checkpoints are the fp32 files every device
    /// writes), and the result is not the fp32 run's.
    func testBF16TrainingIsDeterministicAndResumesBitIdentically() throws {
        // The rounded-operand path everywhere; oneDNN's bf16 matmul too where the CPU runs it.
        for mode in ["rounded"] + (CPUProducts.oneDNNBF16Failure() == nil ? ["onednn"] : []) {
            setenv("RADAR_CPU_BF16", mode, 1)
            defer { unsetenv("RADAR_CPU_BF16") }
            try checkBF16TrainingIsDeterministicAndResumes(mode)
        }
    }

    private func checkBF16TrainingIsDeterministicAndResumes(_ mode: String) throws {
        let data = temporaryDirectory("bf16-data")
        _ = try DatasetPreparer(options: PrepareOptions(output: data).with { $0.valFraction = 0.2 }).run(
            SyntheticSource(size: 32, count: 120, seed: 5, difficulty: 0.2, framesPerSequence: 4))
        func train(_ name: String, precision: String, threads: Int = 1, stop: Int, resumeTo: Int? = nil) throws -> [String: SafeTensor] {
            let out = temporaryDirectory("bf16-\(name)")
            var o = TrainOptions(data: data, output: out, experiment: "r", config: RADARConfig.preset("tiny")!)
            (o.device, o.precision, o.threads, o.batchSize, o.epochs, o.accumulationSteps, o.learningRate, o.stopAfterSteps) =
                ("cpu", precision, threads, 8, 2, 1, 1e-3, stop)
            _ = try TrainingRun(options: o).run()
            if let total = resumeTo {
                (o.stopAfterSteps, o.resume) = (total, "auto")
                _ = try TrainingRun(options: o).run()
            }
            let c = try Checkpoint.read("\(out)/r/last.safetensors.lz4")
            XCTAssertEqual(c.state.optimizerStep, 4, name)
            return c.tensors
        }
        func bits(_ t: [String: SafeTensor]) -> [String: [UInt32]] { t.filter { $0.value.dtype == .f32 }.mapValues { $0.floats.map(\.bitPattern) } }
        let one = try train("t1", precision: "bf16", stop: 4), two = try train("t2", precision: "bf16", threads: 2, stop: 4)
        let resumed = try train("resumed", precision: "bf16", stop: 2, resumeTo: 4), fp32 = try train("fp32", precision: "fp32", stop: 4)
        XCTAssertEqual(bits(one), bits(two), "\(mode): bf16 results do not depend on the thread count")
        XCTAssertEqual(bits(one), bits(resumed), "\(mode): 2 + 2 steps resumed equal 4 straight")
        XCTAssertNotEqual(bits(one), bits(fp32), "\(mode): bf16 products change the run")
        XCTAssertTrue(one.values.allSatisfy { $0.dtype != .f32 || $0.floats.allSatisfy(\.isFinite) })
    }
}
