import Foundation
import RadarCUDA
import RadarCore
import XCTest

/// Kernels that read and write bf16 activations as they are (under bf16 activations): GELU's
/// bf16 x and y (fc1's output and its own), LayerNorm's bf16 y, products' bf16 C (qkv's and fc1's
/// outputs, the bias rounded to bf16 as autocast's addmm). The same bits as widening x,
/// computing in fp32 and converting y, which the layers did before (passes and fp32 copies more),
/// on the CPU (through fp32 chunks, several per thread here) and on the emulated device.
final class BFloat16OutputTests: XCTestCase {
    static func backends() -> [(String, any Backend)] {
        [("cpu", CPUBackend(threads: 2)), ("cuda-emulated", CUDABackend(driver: EmulatedDevice(memory: 1 << 26), precision: .bf16))]
    }

    func testLayerNormWritesTheBitsOfConvertingItsFloatOutput() {
        let (rows, cols) = (67, 384)
        for (name, be) in BFloat16OutputTests.backends() {
            let x = DeviceTensor(be, Shape(rows, cols), randomValues(rows * cols, seed: 3, std: 2, mean: 0.5))
            let g = DeviceTensor(be, Shape(cols), randomValues(cols, seed: 4, mean: 1)), bt = DeviceTensor(be, Shape(cols), randomValues(cols, seed: 5))
            let yf = DeviceTensor(be, Shape(rows, cols)), m1 = DeviceTensor(be, Shape(rows)), r1 = DeviceTensor(be, Shape(rows))
            let m2 = DeviceTensor(be, Shape(rows)), r2 = DeviceTensor(be, Shape(rows)), wide = DeviceTensor(be, Shape(rows, cols))
            let yb = Tensor(be.allocate(DType.bfloat16.floats(rows * cols)), Shape(rows, cols), dtype: .bfloat16)
            let old = Tensor(be.allocate(DType.bfloat16.floats(rows * cols)), Shape(rows, cols), dtype: .bfloat16)
            defer { be.release(yb.base); be.release(old.base) }
            be.layerNormForward(x.tensor, gamma: g.tensor, beta: bt.tensor, eps: 1e-6, yf.tensor, mean: m1.tensor, rstd: r1.tensor)
            be.convert(yf.tensor, into: old)
            be.layerNormForward(x.tensor, gamma: g.tensor, beta: bt.tensor, eps: 1e-6, yb, mean: m2.tensor, rstd: r2.tensor)
            be.convert(yb, into: wide.tensor)
            let want = DeviceTensor(be, Shape(rows, cols))
            be.convert(old, into: want.tensor)
            XCTAssertEqual(wide.values.map(\.bitPattern), want.values.map(\.bitPattern), "\(name): y")
            XCTAssertNotEqual(wide.values, yf.values, "\(name): y is rounded")
            XCTAssertEqual(m2.values, m1.values, name)
            XCTAssertEqual(r2.values, r1.values, name)
        }
    }

    func testBFloat16GELUGivesTheBitsOfTheFloatPath() {
        let n = 5003
        for (name, be) in BFloat16OutputTests.backends() {
            func bf16(_ count: Int) -> Tensor { Tensor(be.allocate(DType.bfloat16.floats(count)), Shape(count), dtype: .bfloat16) }
            func floats(_ t: Tensor) -> [Float] {
                guard t.dtype == .bfloat16 else { return be.download(t) }
                let w = DeviceTensor(be, t.shape)
                be.convert(t, into: w.tensor)
                return w.values
            }
            let x = DeviceTensor(be, Shape(n), randomValues(n, seed: 7, std: 3)), dy = DeviceTensor(be, Shape(n), randomValues(n, seed: 8))
            let xb = bf16(n), yb = bf16(n), yOld = bf16(n), yFromFloat = bf16(n)
            defer { [xb, yb, yOld, yFromFloat].forEach { be.release($0.base) } }
            be.convert(x.tensor, into: xb)
            // The old way: widen, fp32 GELU, round.
            let wide = DeviceTensor(be, Shape(n)), yf = DeviceTensor(be, Shape(n)), cdfOld = DeviceTensor(be, Shape(n))
            be.convert(xb, into: wide.tensor)
            be.geluForward(wide.tensor, yf.tensor, cdf: cdfOld.tensor)
            be.convert(yf.tensor, into: yOld)
            // bf16 in and out; bf16 in, fp32 out; fp32 in, bf16 out.
            let cdf = DeviceTensor(be, Shape(n)), yMixed = DeviceTensor(be, Shape(n))
            be.geluForward(xb, yb, cdf: cdf.tensor)
            be.geluForward(xb, yMixed.tensor, cdf: nil)
            be.geluForward(wide.tensor, yFromFloat, cdf: nil)
            let want = floats(yOld)
            XCTAssertEqual(floats(yb).map(\.bitPattern), want.map(\.bitPattern), "\(name): y")
            XCTAssertEqual(floats(yFromFloat).map(\.bitPattern), want.map(\.bitPattern), "\(name): fp32 x, bf16 y")
            XCTAssertEqual(yMixed.values.map(\.bitPattern), yf.values.map(\.bitPattern), "\(name): bf16 x, fp32 y")
            XCTAssertEqual(cdf.values.map(\.bitPattern), cdfOld.values.map(\.bitPattern), "\(name): cdf")
            XCTAssertNotEqual(yf.values, want, "\(name): y is rounded")
            // Backward from a bf16 x, with the CDF recomputed and kept; then with a bf16 dy and a
            // bf16 dx too (fc2's and fc1's gradients under bf16 activations): the bits of widening
            // dy, the fp32 backward and converting dx.
            let dyb = bf16(n), dxb = bf16(n), dxOldB = bf16(n)
            defer { [dyb, dxb, dxOldB].forEach { be.release($0.base) } }
            be.convert(dy.tensor, into: dyb)
            let dyWide = DeviceTensor(be, Shape(n))
            be.convert(dyb, into: dyWide.tensor)
            for kept in [nil, cdf.tensor] as [Tensor?] {
                let dxOld = DeviceTensor(be, Shape(n)), dx = DeviceTensor(be, Shape(n))
                be.geluBackward(dy.tensor, x: wide.tensor, cdf: kept, dxOld.tensor)
                be.geluBackward(dy.tensor, x: xb, cdf: kept, dx.tensor)
                XCTAssertEqual(dx.values.map(\.bitPattern), dxOld.values.map(\.bitPattern), "\(name): dx, cdf kept \(kept != nil)")
                be.geluBackward(dyWide.tensor, x: wide.tensor, cdf: kept, dxOld.tensor)
                be.convert(dxOld.tensor, into: dxOldB)
                be.geluBackward(dyb, x: xb, cdf: kept, dxb)
                XCTAssertEqual(floats(dxb).map(\.bitPattern), floats(dxOldB).map(\.bitPattern), "\(name): bf16 dy and dx, cdf kept \(kept != nil)")
                be.geluBackward(dyb, x: wide.tensor, cdf: kept, dx.tensor)
                XCTAssertEqual(dx.values.map(\.bitPattern), dxOld.values.map(\.bitPattern), "\(name): bf16 dy, fp32 dx")
            }
            let dxFloat = DeviceTensor(be, Shape(n))
            be.geluBackward(dyWide.tensor, x: wide.tensor, cdf: nil, dxFloat.tensor)
            XCTAssertNotEqual(floats(dxb), dxFloat.values, "\(name): a bf16 dx is rounded")
        }
    }

    /// A product into a bf16 C gives the bits of the same product into an fp32 C, converted; a
    /// biased one those of the bias rounded to bf16 first. On every backend and precision that
    /// runs bf16 activations, with fp32 and bf16 A, beta 0 and 1, and a C wider than the product.
    func testProductsIntoBFloat16GiveTheBitsOfConvertingAFloatC() {
        var backends = BFloat16OutputTests.backends()
        backends.append(("cpu bf16", CPUBackend(threads: 2, products: .bf16Rounded)))
        backends.append(("cuda-emulated fp32", CUDABackend(driver: EmulatedDevice(memory: 1 << 26), precision: .fp32)))
        let (m, n, k) = (67, 45, 33)
        for (name, be) in backends {
            let ldc = n + 3
            func bf16(_ shape: Shape) -> Tensor { Tensor(be.allocate(DType.bfloat16.floats(shape.count)), shape, dtype: .bfloat16) }
            func widened(_ t: Tensor) -> [Float] {
                let w = DeviceTensor(be, t.shape)
                be.convert(t, into: w.tensor)
                return w.values
            }
            let a32 = DeviceTensor(be, Shape(m, k), randomValues(m * k, seed: 11)), b = DeviceTensor(be, Shape(n, k), randomValues(n * k, seed: 12))
            let a16 = bf16(Shape(m, k))
            be.convert(a32.tensor, into: a16)
            let bias = DeviceTensor(be, Shape(n), randomValues(n, seed: 13, std: 3))
            let roundedBias = DeviceTensor(be, Shape(n), bias.values.map { BFloat16.round($0) })
            let start = randomValues(m * ldc, seed: 14), startC = DeviceTensor(be, Shape(m, ldc), start)
            let c16 = bf16(Shape(m, ldc)), before16 = bf16(Shape(m, ldc))
            defer { [a16, c16, before16].forEach { be.release($0.base) } }
            for (aName, a) in [("fp32 A", a32.tensor), ("bf16 A", a16)] {
                for beta: Float in [0, 1] {
                    // The fp32 way: C's values as bf16 (what a bf16 C holds), the product, converted.
                    let c32 = DeviceTensor(be, Shape(m, ldc), start)
                    be.convert(c32.tensor, into: before16)
                    be.convert(before16, into: c32.tensor)
                    be.product(transA: false, transB: true, m: m, n: n, k: k, alpha: 0.75, a: a, lda: k, b: b.tensor, ldb: k,
                               beta: beta, c: c32.tensor, ldc: ldc)
                    let want = DeviceTensor(be, Shape(m, ldc)), want16 = bf16(Shape(m, ldc))
                    be.convert(c32.tensor, into: want16)
                    be.convert(want16, into: want.tensor)
                    be.release(want16.base)
                    be.convert(startC.tensor, into: c16)
                    be.product(transA: false, transB: true, m: m, n: n, k: k, alpha: 0.75, a: a, lda: k, b: b.tensor, ldb: k,
                               beta: beta, c: c16, ldc: ldc)
                    XCTAssertEqual(widened(c16).map(\.bitPattern), want.values.map(\.bitPattern), "\(name), \(aName): product, beta \(beta)")
                    XCTAssertNotEqual(widened(c16), c32.values, "\(name): C is rounded")
                }
                let c32 = DeviceTensor(be, Shape(m, ldc), start)
                be.biasedProduct(transA: false, transB: true, m: m, n: n, k: k, alpha: 1, a: a, lda: k, b: b.tensor, ldb: k,
                                 bias: roundedBias.tensor, c: c32.tensor, ldc: ldc)
                let want16 = bf16(Shape(m, ldc))
                defer { be.release(want16.base) }
                be.convert(c32.tensor, into: want16)
                be.convert(startC.tensor, into: c16)
                be.biasedProduct(transA: false, transB: true, m: m, n: n, k: k, alpha: 1, a: a, lda: k, b: b.tensor, ldb: k,
                                 bias: bias.tensor, c: c16, ldc: ldc)
                let got = widened(c16)
                XCTAssertEqual(got.map(\.bitPattern), widened(want16).map(\.bitPattern), "\(name), \(aName): biased product")
                // Columns past n are C's own (untouched).
                let untouched = widened(before16)
                for r in 0..<m { for j in n..<ldc { XCTAssertEqual(got[r * ldc + j], untouched[r * ldc + j], "\(name): C past n") } }
            }
        }
    }

    /// Column sums of a bf16 source (fc1's bf16 output gradient: its bias gradient) give the bits
    /// of summing its widened fp32 copy, rows over several of the GPU's chunks.
    func testColumnSumsOfABFloat16SourceGiveTheBitsOfItsWidenedCopy() {
        let (rows, cols) = (301, 37)
        for (name, be) in BFloat16OutputTests.backends() {
            let src = DeviceTensor(be, Shape(rows, cols), randomValues(rows * cols, seed: 21, std: 2))
            let s16 = Tensor(be.allocate(DType.bfloat16.floats(rows * cols)), Shape(rows, cols), dtype: .bfloat16)
            defer { be.release(s16.base) }
            be.convert(src.tensor, into: s16)
            let wide = DeviceTensor(be, Shape(rows, cols))
            be.convert(s16, into: wide.tensor)
            let start = randomValues(cols, seed: 22)
            let want = DeviceTensor(be, Shape(cols), start), got = DeviceTensor(be, Shape(cols), start)
            be.accumulateColumnSums(wide.tensor, into: want.tensor)
            be.accumulateColumnSums(s16, into: got.tensor)
            XCTAssertEqual(got.values.map(\.bitPattern), want.values.map(\.bitPattern), name)
            XCTAssertNotEqual(got.values, start, "\(name): accumulated")
        }
    }

    /// Attention's bf16 outputs (merged in forward, dQKV in backward, on the products path and
    /// the fused one) give the bits of the fp32 outputs converted.
    func testAttentionOutputsInBFloat16GiveTheBitsOfConvertingFloatOutputs() {
        let (b, n, h, hd) = (2, 37, 2, 16), d = h * hd
        var backends = BFloat16OutputTests.backends()
        backends.append(("cpu bf16", CPUBackend(threads: 2, products: .bf16Rounded)))
        backends.append(("cuda-emulated fp32", CUDABackend(driver: EmulatedDevice(memory: 1 << 26), precision: .fp32)))
        for (name, be) in backends {
            func bf16(_ shape: Shape) -> Tensor { Tensor(be.allocate(DType.bfloat16.floats(shape.count)), shape, dtype: .bfloat16) }
            func bits(_ t: Tensor) -> [UInt32] {
                guard t.dtype == .bfloat16 else { return be.download(t).map(\.bitPattern) }
                let w = DeviceTensor(be, t.shape)
                be.convert(t, into: w.tensor)
                return w.values.map(\.bitPattern)
            }
            func rounded(_ t: Tensor) -> [UInt32] {
                let r = bf16(t.shape)
                defer { be.release(r.base) }
                be.convert(t, into: r)
                return bits(r)
            }
            let qkv32 = DeviceTensor(be, Shape(b, n, 3 * d), randomValues(b * n * 3 * d, seed: 31))
            let qkv = bf16(qkv32.shape), merged16 = bf16(Shape(b, n, d)), dQKV16 = bf16(Shape(b, n, 3 * d))
            defer { [qkv, merged16, dQKV16].forEach { be.release($0.base) } }
            be.convert(qkv32.tensor, into: qkv)
            let hhnn = Shape(b, h, n, n)
            let scores = DeviceTensor(be, hhnn), probs = DeviceTensor(be, hhnn), dProbs = DeviceTensor(be, hhnn), dScores = DeviceTensor(be, hhnn)
            let merged32 = DeviceTensor(be, Shape(b, n, d)), dMerged = DeviceTensor(be, Shape(b, n, d), randomValues(b * n * d, seed: 32))
            let dQKV32 = DeviceTensor(be, Shape(b, n, 3 * d))
            be.attentionForward(qkv: qkv, heads: h, scale: 0.25, scores: scores.tensor, probs: probs.tensor, merged: merged32.tensor)
            be.attentionForward(qkv: qkv, heads: h, scale: 0.25, scores: scores.tensor, probs: probs.tensor, merged: merged16)
            XCTAssertEqual(bits(merged16), rounded(merged32.tensor), "\(name): merged")
            be.attentionBackward(dMerged: dMerged.tensor, qkv: qkv, probs: probs.tensor, heads: h, scale: 0.25, dProbs: dProbs.tensor,
                                 dScores: dScores.tensor, dQKV: dQKV32.tensor)
            be.attentionBackward(dMerged: dMerged.tensor, qkv: qkv, probs: probs.tensor, heads: h, scale: 0.25, dProbs: dProbs.tensor,
                                 dScores: dScores.tensor, dQKV: dQKV16)
            XCTAssertEqual(bits(dQKV16), rounded(dQKV32.tensor), "\(name): dQKV")
            XCTAssertNotEqual(bits(dQKV16), bits(dQKV32.tensor), "\(name): dQKV is rounded")
            // Recomputing the probabilities in backward (over others: zeros) gives forward's and
            // the same dQKV (CUDA bf16: from the bf16 operand its softmax writes on the way).
            let keptProbs = bits(probs.tensor), recomputedDQKV = bf16(dQKV16.shape)
            defer { be.release(recomputedDQKV.base) }
            be.fill(probs.tensor, 0)
            be.attentionBackward(dMerged: dMerged.tensor, qkv: qkv, probs: probs.tensor, heads: h, scale: 0.25, dProbs: dProbs.tensor,
                                 dScores: dScores.tensor, dQKV: recomputedDQKV, recompute: true)
            XCTAssertEqual(bits(probs.tensor), keptProbs, "\(name): recomputed probabilities")
            XCTAssertEqual(bits(recomputedDQKV), bits(dQKV16), "\(name): dQKV from recomputed probabilities")
            // The fused path: the CPU's reference, and the kernels on the emulated device (bf16).
            if be is CPUBackend { checkFused(be, name: name + " fused reference", b: b, n: n, h: h, hd: hd) }
            if let cuda = be as? CUDABackend, cuda.precision == .bf16 {
                let fused = CUDABackend(driver: EmulatedDevice(memory: 1 << 26), precision: .bf16, fusedAttention: true)
                XCTAssertTrue(fused.fusedAttention(headDim: hd))
                checkFused(fused, name: name + " fused", b: b, n: n, h: h, hd: hd)
            }
        }
    }

    private func checkFused(_ be: any Backend, name: String, b: Int, n: Int, h: Int, hd: Int) {
        let d = h * hd
        func bf16(_ shape: Shape) -> Tensor { Tensor(be.allocate(DType.bfloat16.floats(shape.count)), shape, dtype: .bfloat16) }
        let qkv32 = DeviceTensor(be, Shape(b, n, 3 * d), randomValues(b * n * 3 * d, seed: 33))
        let qkv = bf16(qkv32.shape), merged = bf16(Shape(b, n, d)), dQKV16 = bf16(Shape(b, n, 3 * d)), want16 = bf16(Shape(b, n, 3 * d))
        defer { [qkv, merged, dQKV16, want16].forEach { be.release($0.base) } }
        be.convert(qkv32.tensor, into: qkv)
        let lse = DeviceTensor(be, Shape(b, h, n)), delta = DeviceTensor(be, Shape(b, h, n))
        let dMerged32 = DeviceTensor(be, Shape(b, n, d), randomValues(b * n * d, seed: 34)), dQKV32 = DeviceTensor(be, Shape(b, n, 3 * d))
        let dMerged = bf16(dMerged32.shape)
        defer { be.release(dMerged.base) }
        be.convert(dMerged32.tensor, into: dMerged)
        be.fusedAttentionForward(qkv: qkv, heads: h, scale: 0.25, merged: merged, logSumExp: lse.tensor)
        be.fusedAttentionBackward(dMerged: dMerged, qkv: qkv, merged: merged, logSumExp: lse.tensor, heads: h, scale: 0.25,
                                  delta: delta.tensor, dQKV: dQKV32.tensor)
        be.fusedAttentionBackward(dMerged: dMerged, qkv: qkv, merged: merged, logSumExp: lse.tensor, heads: h, scale: 0.25,
                                  delta: delta.tensor, dQKV: dQKV16)
        be.convert(dQKV32.tensor, into: want16)
        let got = DeviceTensor(be, dQKV32.shape), want = DeviceTensor(be, dQKV32.shape)
        be.convert(dQKV16, into: got.tensor)
        be.convert(want16, into: want.tensor)
        XCTAssertEqual(got.values.map(\.bitPattern), want.values.map(\.bitPattern), "\(name): dQKV")
        XCTAssertNotEqual(got.values, dQKV32.values, "\(name): dQKV is rounded")
    }
}
