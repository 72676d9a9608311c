import Foundation
import RadarCore
@testable import RadarCPU
import XCTest

/// The remaining CPU kernels against naive loops, and finite-difference checks at random shapes.
final class SmallKernelTests: XCTestCase {
    let be = testBackend(threads: 3)

    func testLayoutKernelsMatchNaiveLoops() {
        let x = randomHost(Shape(3, 5, 7), seed: 1)
        let y = testTensor(Shape(3, 7, 5))
        be.transposeLastTwo(x.tensor, y.tensor)
        for b in 0..<3 { for i in 0..<5 { for j in 0..<7 { XCTAssertEqual(y.values[(b * 7 + j) * 5 + i], x.values[(b * 5 + i) * 7 + j]) } } }

        let bias = randomHost(Shape(7), seed: 2), out = testTensor(Shape(15, 7), x.values)
        be.addRowBias(bias.tensor, into: out.tensor)
        for r in 0..<15 { for c in 0..<7 { XCTAssertEqual(out.values[r * 7 + c], x.values[r * 7 + c] + bias.values[c]) } }

        // Column sums over 600 rows x 300 columns: several 256-column chunks.
        let big = randomHost(Shape(600, 300), seed: 3), sums = testTensor(Shape(300), fill: 1)
        be.accumulateColumnSums(big.tensor, into: sums.tensor)
        let bv = big.values
        for c in 0..<300 {
            let ref = (0..<600).reduce(0.0) { $0 + Double(bv[$1 * 300 + c]) }
            XCTAssertEqual(Double(sums.values[c]), 1 + ref, accuracy: 1e-3)
        }

        let img = randomHost(Shape(2, 3, 4, 5), seed: 4), cb = randomHost(Shape(3), seed: 5), o2 = testTensor(Shape(2, 3, 4, 5), img.values)
        be.addChannelBias(cb.tensor, into: o2.tensor)
        let ch = testTensor(Shape(3))
        be.accumulateChannelSums(img.tensor, into: ch.tensor)
        for b in 0..<2 { for c in 0..<3 { for j in 0..<20 {
            let i = (b * 3 + c) * 20 + j
            XCTAssertEqual(o2.values[i], img.values[i] + cb.values[c])
        } } }
        for c in 0..<3 {
            let ref = (0..<2).reduce(0.0) { acc, b in acc + (0..<20).reduce(0.0) { $0 + Double(img.values[(b * 3 + c) * 20 + $1]) } }
            XCTAssertEqual(Double(ch.values[c]), ref, accuracy: 1e-5)
        }
        let s = testTensor(Shape(5), [1, -2, 3, 0, 0.5])
        be.scale(s.tensor, by: -2)
        XCTAssertEqual(s.values, [-2, 4, -6, 0, -1])
        let f = testTensor(Shape(40000))
        be.fill(f.tensor, 3)
        XCTAssertTrue(f.values.allSatisfy { $0 == 3 })
    }

    func testLossAndFusionKernelsMatchClosedForms() {
        let logits = testTensor(Shape(4, 1), [-3, -0.5, 0.2, 4]), targets = testTensor(Shape(4, 1), [0.05, 0.95, 0.05, 0.95])
        let d = testTensor(Shape(4, 1))
        let out = testTensor(Shape(1), [0.25])
        be.binaryCrossEntropyWithLogits(logits.tensor, targets: targets.tensor, scale: 2, dLogits: d.tensor, loss: out.tensor, weight: 0.5)
        // The kernel adds weight * mean to what the loss tensor held.
        let loss = (Double(out.values[0]) - 0.25) / 0.5
        var ref = 0.0
        for i in 0..<4 {
            let x = Double(logits.values[i]), t = Double(targets.values[i]), p = 1 / (1 + exp(-x))
            ref += -(t * log(p) + (1 - t) * log(1 - p))
            XCTAssertEqual(Double(d.values[i]), 2 * (p - t) / 4, accuracy: 1e-7)
        }
        XCTAssertEqual(loss, ref / 4, accuracy: 1e-6)

        let labels = testTensor(Shape(3), [0, 1, 1]), smoothed = testTensor(Shape(3))
        be.smoothLabels(labels.tensor, smoothing: 0.1, smoothed.tensor)
        assertClose(smoothed.values, [0.05, 0.95, 0.95], rtol: 1e-6, atol: 1e-7, "label smoothing")

        // Gated fusion: value and all three gradients.
        let gate = testTensor(Shape(), [0.3]), r = randomHost(Shape(3, 1), seed: 7), e = randomHost(Shape(3, 1), seed: 8)
        let final = testTensor(Shape(3, 1)), prob = testTensor(Shape(3, 1)), alpha = testTensor(Shape(3, 1))
        be.gatedFusionForward(gate: gate.tensor, reasoning: r.tensor, external: e.tensor, final: final.tensor, prob: prob.tensor, alphaOut: alpha.tensor)
        let a = 1 / (1 + exp(-0.3))
        for i in 0..<3 {
            XCTAssertEqual(Double(final.values[i]), a * Double(r.values[i]) + (1 - a) * Double(e.values[i]), accuracy: 1e-6)
            XCTAssertEqual(Double(prob.values[i]), 1 / (1 + exp(-Double(final.values[i]))), accuracy: 1e-6)
        }
        let dF = testTensor(Shape(3, 1), [1, -2, 0.5]), dR = testTensor(Shape(3, 1)), dE = testTensor(Shape(3, 1)), dG = testTensor(Shape(), [0])
        be.gatedFusionBackward(dFinal: dF.tensor, gate: gate.tensor, reasoning: r.tensor, external: e.tensor, dReasoning: dR.tensor,
                               dExternal: dE.tensor, dGate: dG.tensor)
        var g = 0.0
        for i in 0..<3 {
            XCTAssertEqual(Double(dR.values[i]), a * Double(dF.values[i]), accuracy: 1e-6)
            XCTAssertEqual(Double(dE.values[i]), (1 - a) * Double(dF.values[i]), accuracy: 1e-6)
            g += Double(dF.values[i]) * (Double(r.values[i]) - Double(e.values[i])) * a * (1 - a)
        }
        XCTAssertEqual(Double(dG.values[0]), g, accuracy: 1e-6)
        let mt = testTensor(Shape(1))
        be.meanAbsSigmoidDifference(r.tensor, e.tensor, into: mt.tensor)
        let m = mt.values[0]
        var mref = 0.0
        for i in 0..<3 {
            let pr: Double = 1 / (1 + exp(-Double(r.values[i]))), pe: Double = 1 / (1 + exp(-Double(e.values[i])))
            mref += abs(pr - pe) / 3
        }
        XCTAssertEqual(Double(m), mref, accuracy: 1e-6)
    }

    func testCosineMarginPenaltyValueAndFiniteDifferenceGradient() {
        // |cos| - 0.1 is positive for these vectors; gradient by central differences in Double.
        let a = randomHost(Shape(3, 6), seed: 9)
        let noise = randomValues(18, seed: 10), av = a.values
        var bv = [Float](repeating: 0, count: 18)
        for i in 0..<18 { bv[i] = noise[i] + 0.8 * av[i] }
        let b = testTensor(Shape(3, 6), bv)
        let da = testTensor(Shape(3, 6)), db = testTensor(Shape(3, 6))
        let vt = testTensor(Shape(1))
        be.cosineMarginPenalty(a.tensor, b.tensor, margin: 0.1, scale: 1, da: da.tensor, db: db.tensor, loss: vt.tensor, weight: 1)
        let v = Double(vt.values[0])
        func penalty(_ av: [Float], _ bv: [Float]) -> Double {
            var s = 0.0
            for i in 0..<3 {
                let x = (0..<6).map { Double(av[i * 6 + $0]) }, y = (0..<6).map { Double(bv[i * 6 + $0]) }
                let nx = x.map { $0 * $0 }.reduce(0, +).squareRoot() + 1e-8, ny = y.map { $0 * $0 }.reduce(0, +).squareRoot() + 1e-8
                let c = zip(x, y).map { $0 * $1 }.reduce(0, +) / (nx * ny)
                s += max(abs(c) - 0.1, 0)
            }
            return s / 3
        }
        XCTAssertEqual(v, penalty(a.values, b.values), accuracy: 1e-6)
        for k in 0..<18 {
            var ap = a.values, am = a.values
            ap[k] += 1e-3; am[k] -= 1e-3
            XCTAssertEqual(Double(da.values[k]), (penalty(ap, b.values) - penalty(am, b.values)) / 2e-3, accuracy: 1e-4, "d/da[\(k)]")
        }
        // A degenerate (near-zero) evidence vector switches the penalty off entirely.
        let z = testTensor(Shape(3, 6), a.values.enumerated().map { $0.offset < 6 ? 0 : $0.element })
        let zt = testTensor(Shape(1))
        be.cosineMarginPenalty(z.tensor, b.tensor, margin: 0.1, scale: 1, da: da.tensor, db: db.tensor, loss: zt.tensor, weight: 1)
        XCTAssertEqual(zt.values[0], 0)
        XCTAssertTrue(da.values.allSatisfy { $0 == 0 })
    }

    func testSyncBatchNormSumsRoundTrip() {
        let mean = testTensor(Shape(2), [0.5, -1]), variance = testTensor(Shape(2), [2, 0.25]), sums = testTensor(Shape(5))
        be.batchNormLocalSums(mean: mean.tensor, variance: variance.tensor, count: 10, into: sums.tensor)
        XCTAssertEqual(sums.values, [5, -10, 22.5, 12.5, 10])
        let m2 = testTensor(Shape(2)), v2 = testTensor(Shape(2))
        be.batchNormGlobalMoments(sums.tensor, channels: 2, mean: m2.tensor, variance: v2.tensor)
        assertClose(m2.values, mean.values, rtol: 1e-6, atol: 1e-7, "mean")
        assertClose(v2.values, variance.values, rtol: 1e-6, atol: 1e-7, "variance")
    }

    func testRandomShapesPassFiniteDifferenceChecks() throws {
        // Shapes drawn from Philox (seeded); tolerance as in LayerGradientTests.
        let r = RandomStream(seed: 2026, stream: 1)
        var k: UInt64 = 0
        func pick(_ lo: Int, _ hi: Int) -> Int { k += 1; return lo + Int(r.bits(k) % UInt32(hi - lo + 1)) }
        let check = GradientCheck()
        for trial in 0..<4 {
            let (b, cin, cout, kernel) = (pick(1, 3), pick(1, 3), pick(1, 4), pick(1, 5))
            let stride = pick(1, 3), padding = pick(0, kernel - 1)
            let h = pick(max(kernel - 2 * padding, 1), 9), w = pick(max(kernel - 2 * padding, 1), 9)
            let layout = ParameterLayout()
            let conv = Conv2d("conv", cin, cout, kernel: kernel, stride: stride, padding: padding, layout: layout)
            let ctx = makeContext(layout)
            randomizeParameters(ctx.params, seed: UInt64(trial))
            try check.run("random Conv2d b\(b) c\(cin)->\(cout) k\(kernel) s\(stride) p\(padding) \(h)x\(w)", ctx,
                          inputs: [randomHost(Shape(b, cin, h, w), seed: UInt64(100 + trial))]) { ctx, x in
                let (y, saved) = try conv.forward(x[0], ctx)
                return (y, { dy in [conv.backward(dy, saved, ctx)] })
            }
            let heads = pick(1, 3), dim = heads * pick(1, 4), n = pick(1, 6)
            let l2 = ParameterLayout()
            let attn = SelfAttention("attn", dim: dim, heads: heads, layout: l2)
            let ctx2 = makeContext(l2)
            randomizeParameters(ctx2.params, seed: UInt64(50 + trial))
            try check.run("random SelfAttention b\(b) n\(n) d\(dim) h\(heads)", ctx2, inputs: [randomHost(Shape(b, n, dim), seed: UInt64(200 + trial))]) { ctx, x in
                let (y, s) = try attn.forward(x[0], ctx)
                return (y, { dy in [attn.backward(dy, s, ctx)] })
            }
        }
    }
}

/// The fenced backend's memory is really fenced: its pages are PROT_NONE between backend calls,
/// so host code that dereferences a tensor address crashes there.
final class FencedBackendTests: XCTestCase {
    /// The protection of the mapping holding `address`, from /proc/self/maps (e.g. "---p").
    func protection(of address: UnsafeMutablePointer<Float>) throws -> String? {
        // Read to the end: /proc files report size 0, and a large maps file must not be cut short.
        guard let h = FileHandle(forReadingAtPath: "/proc/self/maps") else { return nil }
        let maps = String(decoding: h.readDataToEndOfFile(), as: UTF8.self)
        try h.close()
        let a = UInt(bitPattern: address)
        for line in maps.split(separator: "\n") {
            let f = line.split(separator: " ")
            let r = f[0].split(separator: "-")
            if let lo = UInt(r[0], radix: 16), let hi = UInt(r[1], radix: 16), a >= lo, a < hi { return String(f[1]) }
        }
        return nil
    }

    func testTensorMemoryIsInaccessibleOutsideBackendCalls() throws {
        let be = FencedBackend(wrapping: CPUBackend(threads: 2))
        let t = DeviceTensor(be, Shape(3000), (0..<3000).map(Float.init))
        XCTAssertEqual(try protection(of: t.tensor.base), "---p", "fenced memory outside a backend call")
        be.scale(t.tensor, by: 2)
        XCTAssertEqual(try protection(of: t.tensor.base), "---p")
        XCTAssertEqual(t.values[2999], 5998, "kernels and downloads still reach it")
        XCTAssertNil(be.hostAddress(t.tensor))
        // A CPU backend's memory is plain host memory.
        let cpu = CPUBackend(threads: 1)
        let c = DeviceTensor(cpu, Shape(4), [1, 2, 3, 4])
        XCTAssertEqual(cpu.hostAddress(c.tensor)?[3], 4)
    }
}

/// The CPU backend's AVX2 elementwise kernels (CTensorKernels) against its Swift loops: the same
/// bits, on every kind of value and on lengths that leave a scalar tail.
final class CPUVectorKernelTests: XCTestCase {
    /// `body` on the AVX2 kernels (where the CPU has them), then on the Swift loops.
    func bothPaths<T>(_ body: () -> T) -> (vector: T, scalar: T) {
        let saved = CPUBackend.vectorKernels
        defer { CPUBackend.vectorKernels = saved }
        let vector = body()
        CPUBackend.vectorKernels = false
        return (vector, body())
    }

    func testVectorGELUEqualsTheScalarPath() {
        print("tensor kernels: \(CPUBackend.vectorKernels ? "AVX2 (compared with the Swift loops)" : "Swift loops only (no AVX2 on this CPU)")")
        var values: [Float] = [0, -0, 1, -1, .nan, -.nan, .infinity, -.infinity, .greatestFiniteMagnitude, -.greatestFiniteMagnitude,
                               .leastNonzeroMagnitude, -.leastNonzeroMagnitude, .leastNormalMagnitude, 13.2, -13.2, 13.3, -13.3, 14, -14, 100, -100]
        let stream = RandomStream(seed: 5, stream: 1)
        for i in 0..<4_000 { values.append(stream.normal(UInt64(i)) * Float(1 + i % 7)) }
        for i in 0..<400 { values.append(Float(i - 200) * 0.05) }  // a grid through the knee
        let cpu = CPUBackend(threads: 2)
        for n in [values.count, 1, 7, 8, 9, 17, 65_537] {
            let xs = (0..<n).map { values[$0 % values.count] }
            let dys = (0..<n).map { Float(($0 * 37) % 101) / 50 - 1 }
            // Keeping the CDF or recomputing it in backward: the same bits either way.
            func run() -> ([UInt32], [UInt32], [UInt32], [UInt32]) {
                let x = DeviceTensor(cpu, Shape(n), xs), dy = DeviceTensor(cpu, Shape(n), dys)
                let y = DeviceTensor(cpu, Shape(n)), cdf = DeviceTensor(cpu, Shape(n)), dx = DeviceTensor(cpu, Shape(n))
                let dxRecomputed = DeviceTensor(cpu, Shape(n))
                cpu.geluForward(x.tensor, y.tensor, cdf: cdf.tensor)
                cpu.geluBackward(dy.tensor, x: x.tensor, cdf: cdf.tensor, dx.tensor)
                cpu.geluBackward(dy.tensor, x: x.tensor, cdf: nil, dxRecomputed.tensor)
                return (y.values.map(\.bitPattern), cdf.values.map(\.bitPattern), dx.values.map(\.bitPattern),
                        dxRecomputed.values.map(\.bitPattern))
            }
            let (vector, scalar) = bothPaths(run)
            XCTAssertEqual(vector.0, scalar.0, "GELU forward, \(n) values")
            XCTAssertEqual(vector.1, scalar.1, "normal CDF, \(n) values")
            XCTAssertEqual(vector.2, scalar.2, "GELU backward, \(n) values")
            XCTAssertEqual(vector.2, vector.3, "GELU backward from the kept CDF and from a recomputed one, \(n) values")
            XCTAssertEqual(scalar.2, scalar.3, "GELU backward (scalar) from the kept CDF and from a recomputed one, \(n) values")
        }
    }
}

extension CPUVectorKernelTests {
    func testVectorSoftmaxEqualsTheScalarPath() {
        let cpu = CPUBackend(threads: 2)
        let s = RandomStream(seed: 11, stream: 3)
        for cols in [1, 7, 8, 9, 65, 197] {
            let rows = 37
            var xs = (0..<(rows * cols)).map { s.normal(UInt64($0)) * Float(1 + $0 % 5) * 3 }
            // Rows with zeros of both signs, a NaN, infinities, and values far apart.
            for j in 0..<cols { xs[j] = j % 2 == 0 ? 0 : -0.0 }
            if rows > 2 { xs[cols] = .nan; xs[2 * cols] = .infinity; xs[3 * cols] = -.infinity; xs[4 * cols] = 200; xs[4 * cols + cols - 1] = -200 }
            let dys = (0..<(rows * cols)).map { Float(($0 * 13) % 29) / 14 - 1 }
            func run() -> ([UInt32], [UInt32]) {
                let x = DeviceTensor(cpu, Shape(rows, cols), xs), dy = DeviceTensor(cpu, Shape(rows, cols), dys)
                let y = DeviceTensor(cpu, Shape(rows, cols)), dx = DeviceTensor(cpu, Shape(rows, cols))
                cpu.softmaxForward(x.tensor, y.tensor, cols: cols)
                cpu.softmaxBackward(dy.tensor, y: y.tensor, dx.tensor, cols: cols)
                return (y.values.map(\.bitPattern), dx.values.map(\.bitPattern))
            }
            let (vector, scalar) = bothPaths(run)
            XCTAssertEqual(vector.0, scalar.0, "softmax forward, \(cols) columns")
            XCTAssertEqual(vector.1, scalar.1, "softmax backward, \(cols) columns")
        }
    }

    func testVectorAdamWEqualsTheScalarPath() {
        let cpu = CPUBackend(threads: 2)
        let s = RandomStream(seed: 9, stream: 2)
        for (n, step) in [(1, 1), (7, 2), (9, 10), (70_001, 1000)] {
            var grads = (0..<n).map { s.normal(UInt64($0)) * 0.01 }
            if n > 5 { grads[3] = 0; grads[4] = -0.0; grads[5] = 1e-30 }
            let params = (0..<n).map { s.normal(UInt64($0 + n)) }
            let m = (0..<n).map { s.normal(UInt64($0 + 2 * n)) * 1e-3 }, v = (0..<n).map { abs(s.normal(UInt64($0 + 3 * n))) * 1e-5 }
            func run() -> [[UInt32]] {
                let t = [params, grads, m, v].map { DeviceTensor(cpu, Shape(n), $0) }
                let gate = DeviceTensor(cpu, Shape(1), [1])
                cpu.adamW(params: t[0].tensor, grads: t[1].tensor, expAvg: t[2].tensor, expAvgSq: t[3].tensor, lr: 5e-4, beta1: 0.9,
                          beta2: 0.999, eps: 1e-8, weightDecay: 0.05, step: step, gate: gate.tensor)
                return [t[0], t[2], t[3]].map { $0.values.map(\.bitPattern) }
            }
            let (vector, scalar) = bothPaths(run)
            XCTAssertEqual(vector, scalar, "AdamW on \(n) values, step \(step)")
            XCTAssertNotEqual(vector[0], params.map(\.bitPattern), "the step moved the parameters")
        }
    }
}

/// The OpenBLAS kernel choice is a pure function of the CPU's flags and OpenBLAS's own pick.
final class BLASKernelChoiceTests: XCTestCase {
    let sapphireRapids: Set<String> = ["sse3", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd",
                                       "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile"]

    func testWeakPicksAreUpgradedAndGoodOnesKept() {
        // Debian's 0.3.21 on Sapphire/Emerald Rapids falls back to Prescott: Cooperlake has bf16 AVX-512.
        XCTAssertEqual(BLASKernels.upgrade(current: "Prescott", flags: sapphireRapids, vendor: "GenuineIntel"), "Cooperlake")
        XCTAssertNil(BLASKernels.upgrade(current: "Cooperlake", flags: sapphireRapids, vendor: "GenuineIntel"))
        // Skylake-SP / Ice Lake: AVX-512 without bf16.
        let skx = sapphireRapids.subtracting(["avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile"])
        XCTAssertEqual(BLASKernels.upgrade(current: "Haswell", flags: skx, vendor: "GenuineIntel"), "SkylakeX")
        XCTAssertNil(BLASKernels.upgrade(current: "SkylakeX", flags: skx, vendor: "GenuineIntel"))
        // An AMD VM that exposes AVX2 but not AVX-512 (this project's EPYC machines): Zen is right.
        let zen: Set<String> = ["sse3", "avx", "avx2", "fma"]
        XCTAssertNil(BLASKernels.upgrade(current: "Zen", flags: zen, vendor: "AuthenticAMD"))
        XCTAssertEqual(BLASKernels.upgrade(current: "Prescott", flags: zen, vendor: "AuthenticAMD"), "Zen")
        // Zen 4 with AVX-512 and bf16 exposed.
        XCTAssertEqual(BLASKernels.upgrade(current: "Zen", flags: sapphireRapids, vendor: "AuthenticAMD"), "Cooperlake")
        // No AVX at all, or a core type we do not know: leave OpenBLAS's choice alone.
        XCTAssertNil(BLASKernels.upgrade(current: "Prescott", flags: ["sse3"], vendor: "GenuineIntel"))
        XCTAssertNil(BLASKernels.upgrade(current: "SapphireRapids", flags: sapphireRapids, vendor: "GenuineIntel"))
    }

    func testCPUInfoParsing() {
        let text = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum\nflags\t\t: fpu sse3 avx avx2 fma avx512f\n\nprocessor\t: 1\nflags\t\t: fpu\n"
        let parsed = BLASKernels.cpuFlags(text)
        XCTAssertEqual(parsed?.vendor, "GenuineIntel")
        XCTAssertEqual(parsed?.flags, ["fpu", "sse3", "avx", "avx2", "fma", "avx512f"])
        XCTAssertNil(BLASKernels.cpuFlags(nil))
        XCTAssertNotNil(BLASKernels.cpuFlags(), "this machine's /proc/cpuinfo")
    }

    /// Started by a loader run as a program (the bundle on an older glibc), the kernels' re-exec
    /// goes through argv[0], the bundle's launcher; otherwise through the program's own file (the
    /// kernel names the process after it: through /proc/self/exe every process was "exe"), and
    /// through /proc/self/exe only where that file is gone.
    func testReexecutionGoesThroughTheLauncherWhenALoaderStartedUs() throws {
        XCTAssertTrue(ProgramImage.isLoader("/opt/radar-bundle/glibc/lib/ld-linux-x86-64.so.2"))
        XCTAssertTrue(ProgramImage.isLoader("/lib/ld-2.31.so"))
        XCTAssertFalse(ProgramImage.isLoader("/opt/radar-bundle/libexec/radar"))
        XCTAssertFalse(ProgramImage.isLoader("/usr/bin/ld"))
        XCTAssertEqual(ProgramImage.reexecPath(executed: "/b/glibc/lib/ld-linux-x86-64.so.2", argv0: "/b/bin/radar"), "/b/bin/radar")
        XCTAssertEqual(ProgramImage.reexecPath(executed: "/b/libexec/radar", argv0: "/b/libexec/radar"), "/proc/self/exe", "no such file")
        XCTAssertEqual(ProgramImage.reexecPath(executed: "/b/glibc/lib/ld-linux-x86-64.so.2", argv0: "radar"), "/proc/self/exe",
                       "a bare name is no path to execute")
        XCTAssertFalse(ProgramImage.startedByLoader, "the test runner was started by the kernel")
        let own = try XCTUnwrap(ProgramImage.executedFile)
        XCTAssertEqual(ProgramImage.reexecPath, own, "the test runner's own file")
        XCTAssertEqual(ProgramImage.reexecPath(executed: own + " (deleted)", argv0: own), "/proc/self/exe", "replaced since it started")
    }

    /// The device line names OpenBLAS once, with its version and kernels (it read "OpenBLAS
    /// OpenBLAS 0.3.21 ...").
    func testTheDeviceLineNamesTheBLASOnce() {
        let line = CPUBackend(threads: 1).deviceDescription
        XCTAssertEqual(line.components(separatedBy: "OpenBLAS").count - 1, 1, line)
        XCTAssertTrue(line.hasPrefix("cpu (1 thread, OpenBLAS ") && line.hasSuffix("(\(BLASKernels.current)))") && line.contains(CPUBackend.blasDescription), line)
    }
}

extension CPUVectorKernelTests {
    /// LayerNorm's AVX2 and plain x86-64 builds (one C source, eight-lane sums) give the same bits,
    /// forward and backward, on widths with and without a tail of lanes.
    func testVectorLayerNormEqualsThePlainBuild() {
        let cpu = CPUBackend(threads: 2)
        let s = RandomStream(seed: 13, stream: 4)
        for cols in [1, 7, 8, 9, 65, 197, 384] {
            let rows = 37
            let xs: [Float] = (0..<(rows * cols)).map { i in
                let spread = Float(1 + i % 5), shift = Float(i % 3)
                return s.normal(UInt64(i)) * spread + shift
            }
            let dys: [Float] = (0..<(rows * cols)).map { s.normal(UInt64(100_000 + $0)) }
            let gs: [Float] = (0..<cols).map { 1 + 0.1 * s.normal(UInt64(200_000 + $0)) }
            let bs: [Float] = (0..<cols).map { 0.1 * s.normal(UInt64(300_000 + $0)) }
            func run() -> [[UInt32]] {
                let x = DeviceTensor(cpu, Shape(rows, cols), xs), dy = DeviceTensor(cpu, Shape(rows, cols), dys)
                let gamma = DeviceTensor(cpu, Shape(cols), gs), beta = DeviceTensor(cpu, Shape(cols), bs)
                let y = DeviceTensor(cpu, Shape(rows, cols)), mean = DeviceTensor(cpu, Shape(rows)), rstd = DeviceTensor(cpu, Shape(rows))
                let dx = DeviceTensor(cpu, Shape(rows, cols)), dGamma = DeviceTensor(cpu, Shape(cols), gs), dBeta = DeviceTensor(cpu, Shape(cols), bs)
                cpu.layerNormForward(x.tensor, gamma: gamma.tensor, beta: beta.tensor, eps: 1e-6, y.tensor, mean: mean.tensor, rstd: rstd.tensor)
                cpu.layerNormBackward(dy.tensor, x: x.tensor, gamma: gamma.tensor, mean: mean.tensor, rstd: rstd.tensor, dx.tensor,
                                      dGamma: dGamma.tensor, dBeta: dBeta.tensor)
                return [y, mean, rstd, dx, dGamma, dBeta].map { $0.values.map(\.bitPattern) }
            }
            let (vector, plain) = bothPaths(run)
            for (i, name) in ["y", "mean", "rstd", "dx", "dGamma", "dBeta"].enumerated() {
                XCTAssertEqual(vector[i], plain[i], "LayerNorm \(name), \(rows) x \(cols)")
            }
            // And close to the definition (double), so the lanes sum what they should.
            let r = 5
            let row: [Double] = xs[(r * cols)..<((r + 1) * cols)].map { Double($0) }
            let m: Double = row.reduce(0, +) / Double(cols)
            let v: Double = row.map { ($0 - m) * ($0 - m) }.reduce(0, +) / Double(cols)
            XCTAssertEqual(Double(Float(bitPattern: vector[1][r])), m, accuracy: 1e-5 * max(1, abs(m)), "mean, \(cols) columns")
            XCTAssertEqual(Double(Float(bitPattern: vector[2][r])), 1 / (v + 1e-6).squareRoot(), accuracy: 1e-4 / (v + 1e-6).squareRoot(),
                           "rstd, \(cols) columns")
        }
    }
}

/// im2col and col2im (the CPU convolutions' column copies) against element-by-element loops with a
/// bounds test per element, bit for bit, over kernels, strides and paddings where the valid
/// columns are empty, partial or whole (padding past the kernel, strides past the width).
final class ColumnCopyTests: XCTestCase {
    func testIm2colAndCol2imEqualElementwiseLoops() {
        let cpu = CPUBackend(threads: 1)
        var cases = 0
        for (h, w) in [(7, 9), (5, 1), (1, 6), (12, 12)] {
            for kernel in [1, 2, 3, 5, 7] {
                for stride in [1, 2, 3, 4] {
                    for padding in [0, 1, 2, 3, 8] {
                        let ho = (h + 2 * padding - kernel) / stride + 1, wo = (w + 2 * padding - kernel) / stride + 1
                        guard h + 2 * padding >= kernel, w + 2 * padding >= kernel, ho > 0, wo > 0 else { continue }
                        let channels = 2, rows = channels * kernel * kernel
                        let x = (0..<(channels * h * w)).map { Float($0 % 23) * 0.37 - 3.1 }
                        var want = [Float](repeating: .nan, count: rows * ho * wo), got = want
                        for c in 0..<channels { for ky in 0..<kernel { for kx in 0..<kernel { for oy in 0..<ho { for ox in 0..<wo {
                            let iy = oy * stride - padding + ky, ix = ox * stride - padding + kx
                            want[((c * kernel + ky) * kernel + kx) * ho * wo + oy * wo + ox] =
                                iy >= 0 && iy < h && ix >= 0 && ix < w ? x[c * h * w + iy * w + ix] : 0
                        } } } } }
                        cpu.im2col(x, channels: channels, height: h, width: w, kernel: kernel, stride: stride, padding: padding, &got)
                        let name = "h \(h) w \(w) kernel \(kernel) stride \(stride) padding \(padding)"
                        XCTAssertEqual(got.map(\.bitPattern), want.map(\.bitPattern), "im2col, \(name)")
                        // col2im adds into dx: from a non-zero start, terms in (c, ky, kx, oy, ox) order.
                        let columns = (0..<(rows * ho * wo)).map { Float(($0 * 7) % 31) * 0.11 - 1.7 }
                        var dxWant = (0..<(channels * h * w)).map { Float($0 % 5) * 0.3 }, dxGot = dxWant
                        for c in 0..<channels { for ky in 0..<kernel { for kx in 0..<kernel { for oy in 0..<ho { for ox in 0..<wo {
                            let iy = oy * stride - padding + ky, ix = ox * stride - padding + kx
                            if iy >= 0 && iy < h && ix >= 0 && ix < w {
                                dxWant[c * h * w + iy * w + ix] += columns[((c * kernel + ky) * kernel + kx) * ho * wo + oy * wo + ox]
                            }
                        } } } } }
                        cpu.col2im(columns, channels: channels, height: h, width: w, kernel: kernel, stride: stride, padding: padding, &dxGot)
                        XCTAssertEqual(dxGot.map(\.bitPattern), dxWant.map(\.bitPattern), "col2im, \(name)")
                        cases += 1
                    }
                }
            }
        }
        XCTAssertGreaterThan(cases, 200)
    }
}
