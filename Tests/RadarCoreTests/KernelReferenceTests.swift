import Foundation
import RadarCore
import XCTest

/// Every CPU kernel against a naive loop (NaiveReference.swift), through the layers that use it.
final class KernelReferenceTests: XCTestCase {
    func testGemmMatchesNaiveLoopForAllTransposesAndTiledShapes() {
        let be = testBackend(threads: 3)
        // Small odd shapes, and shapes large enough to be tiled over rows and over columns.
        for (m, n, k) in [(1, 1, 1), (3, 5, 7), (17, 4, 9), (300, 70, 33), (40, 257, 65)] {
            for ta in [false, true] { for tb in [false, true] {
                let lda = ta ? m : k, ldb = tb ? k : n
                let a = randomValues(m * k, seed: 1), b = randomValues(k * n, seed: 2), c = randomValues(m * n, seed: 3)
                // The operands in the backend's memory (device memory on a device backend).
                let da = DeviceTensor(be, Shape(m * k), a), db = DeviceTensor(be, Shape(k * n), b), dc = DeviceTensor(be, Shape(m * n), c)
                be.gemm(transA: ta, transB: tb, m: m, n: n, k: k, alpha: 0.7, a: da.tensor.base, lda: lda,
                        b: db.tensor.base, ldb: ldb, beta: 0.3, c: dc.tensor.base, ldc: n)
                let out = withExtendedLifetime((da, db)) { dc.values }
                let ref = Naive.gemm(transA: ta, transB: tb, m: m, n: n, k: k, alpha: 0.7, a: a, lda: lda, b: b, ldb: ldb,
                                     beta: 0.3, c: c, ldc: n)
                assertClose(out, ref, rtol: 1e-4, atol: 1e-4, "gemm \(m)x\(n)x\(k) tA=\(ta) tB=\(tb)")
            } }
        }
    }

    /// A Linear's forward product with its bias set in C first (beta 1), on shapes tiled over C's
    /// rows and over its columns, with C's leading dimension past n: the columns past n untouched.
    func testBiasedProductMatchesNaiveLoopOverRowAndColumnTiles() {
        let be = testBackend(threads: 3)
        for (m, n, k) in [(3, 5, 7), (700, 90, 40), (60, 800, 50)] {
            for ta in [false, true] { for tb in [false, true] {
                let lda = ta ? m : k, ldb = tb ? k : n, ldc = n + 3
                let a = randomValues(m * k, seed: 1), b = randomValues(k * n, seed: 2), bias = randomValues(n, seed: 4)
                let c = randomValues(m * ldc, seed: 3)
                let da = DeviceTensor(be, Shape(m * k), a), db = DeviceTensor(be, Shape(k * n), b)
                let dbias = DeviceTensor(be, Shape(n), bias), dc = DeviceTensor(be, Shape(m * ldc), c)
                be.biasedProduct(transA: ta, transB: tb, m: m, n: n, k: k, alpha: 0.7, a: da.tensor, lda: lda, b: db.tensor, ldb: ldb,
                                 bias: dbias.tensor, c: dc.tensor, ldc: ldc)
                let out = withExtendedLifetime((da, db, dbias)) { dc.values }
                var start = [Float](repeating: 0, count: m * ldc)
                for i in 0..<m { for j in 0..<ldc { start[i * ldc + j] = j < n ? bias[j] : c[i * ldc + j] } }
                let ref = Naive.gemm(transA: ta, transB: tb, m: m, n: n, k: k, alpha: 0.7, a: a, lda: lda, b: b, ldb: ldb,
                                     beta: 1, c: start, ldc: ldc)
                assertClose(out, ref, rtol: 1e-4, atol: 1e-4, "biasedProduct \(m)x\(n)x\(k) tA=\(ta) tB=\(tb)")
                for i in 0..<m { for j in n..<ldc where out[i * ldc + j] != c[i * ldc + j] {
                    XCTFail("biasedProduct \(m)x\(n)x\(k) wrote C[\(i), \(j)], past n")
                } }
            } }
        }
    }

    func testConv2dForwardMatchesDirectConvolution() throws {
        for (i, c) in [(2, 3, 4, 9, 7, 3, 2, 1), (1, 1, 5, 12, 12, 7, 4, 3), (3, 2, 3, 8, 8, 4, 4, 0)].enumerated() {
            let layout = ParameterLayout()
            let conv = Conv2d("conv", c.1, c.2, kernel: c.5, stride: c.6, padding: c.7, layout: layout)
            let ctx = makeContext(layout, threads: 2)
            randomizeParameters(ctx.params, seed: UInt64(i))
            let x = randomHost(Shape(c.0, c.1, c.3, c.4), seed: 11)
            let (y, _) = try conv.forward(x.tensor, ctx)
            let ref = Naive.conv2d(x.values, b: c.0, c: c.1, h: c.3, w: c.4, weight: ctx.params.value(conv.weight).toArray(),
                                   bias: ctx.params.value(conv.bias!).toArray(), out: c.2, kernel: c.5, stride: c.6, padding: c.7)
            assertClose(y.toArray(), ref, rtol: 1e-4, atol: 1e-5, "conv case \(i)")
        }
    }

    func testLayerNormAndSoftmaxAndGELUMatchNaiveLoops() throws {
        let layout = ParameterLayout()
        let ln = LayerNorm("ln", 13, eps: 1e-6, layout: layout)
        let ctx = makeContext(layout, threads: 2)
        randomizeParameters(ctx.params, seed: 3)
        let x = randomHost(Shape(5, 13), seed: 4, std: 3)
        let (y, _) = try ln.forward(x.tensor, ctx)
        assertClose(y.toArray(), Naive.layerNorm(x.values, cols: 13, gamma: ctx.params.value(ln.weight).toArray(),
                                                 beta: ctx.params.value(ln.bias).toArray(), eps: 1e-6),
                    rtol: 1e-5, atol: 1e-5, "layerNorm")
        assertClose(Softmax.forward(x.tensor, ctx).toArray(), Naive.softmax(x.values, cols: 13), rtol: 1e-5, atol: 1e-7, "softmax")
        let gelu = GELU.forward(x.tensor, ctx).0.toArray()
        let ref = x.values.map { v in Float(0.5 * Double(v) * (1 + Foundation.erf(Double(v) / 2.0.squareRoot()))) }
        assertClose(gelu, ref, rtol: 1e-5, atol: 1e-6, "gelu")
        // GELU's normal CDF over a wide range against the libm erf in double precision: the
        // absolute error of Phi is what matters (x Phi(x)), bound 2e-7.
        let wide = testTensor(Shape(20001), (0..<20001).map { Float(-12 + 0.0012 * Double($0)) })
        let (gy, _) = GELU.forward(wide.tensor, ctx)
        let gyv = gy.toArray()
        for (i, v) in wide.values.enumerated() where v != 0 {
            let phi = 0.5 * (1 + Foundation.erf(Double(v) / 2.0.squareRoot()))
            XCTAssertEqual(Double(gyv[i]) / Double(v), phi, accuracy: 2e-7, "Phi(\(v))")
        }
        let relu = ReLU.forward(x.tensor, ctx).toArray()
        XCTAssertEqual(relu, x.values.map { max($0, 0) })
    }

    func testBatchNormTrainStatisticsAndRunningUpdateMatchPyTorchSemantics() throws {
        let layout = ParameterLayout()
        let bn = BatchNorm2d("bn", 3, layout: layout)
        let ctx = makeContext(layout, threads: 2)
        bn.reset(ctx.params)
        ctx.params.value(bn.weight).copy(from: [1.5, -0.5, 2])
        ctx.params.value(bn.bias).copy(from: [0.1, 0.2, -0.3])
        let (b, c, hw) = (2, 3, 5)
        let x = randomHost(Shape(b, c, 1, hw), seed: 9, std: 2)
        let (y, _) = try bn.forward(x.tensor, ctx)
        let xv = x.values, yv = y.toArray()
        let rm = ctx.params.buffer(bn.runningMean).toArray(), rv = ctx.params.buffer(bn.runningVar).toArray()
        for ch in 0..<c {
            let vals = (0..<b).flatMap { n in (0..<hw).map { Double(xv[(n * c + ch) * hw + $0]) } }
            let m = vals.reduce(0, +) / Double(vals.count)
            let v = vals.map { ($0 - m) * ($0 - m) }.reduce(0, +) / Double(vals.count)
            XCTAssertEqual(Double(rm[ch]), 0.1 * m, accuracy: 1e-6, "running_mean[\(ch)]")
            XCTAssertEqual(Double(rv[ch]), 0.9 + 0.1 * v * Double(vals.count) / Double(vals.count - 1), accuracy: 1e-5,
                           "running_var[\(ch)] uses the unbiased variance")
            let g = [1.5, -0.5, 2][ch], be = [0.1, 0.2, -0.3][ch]
            for n in 0..<b { for j in 0..<hw {
                let i = (n * c + ch) * hw + j
                XCTAssertEqual(Double(yv[i]), (Double(xv[i]) - m) / (v + 1e-5).squareRoot() * g + be, accuracy: 1e-5)
            } }
        }
        XCTAssertEqual(ctx.params.counter(named: "bn.num_batches_tracked"), 1)
        // Eval mode normalises with the running statistics and leaves them alone.
        ctx.training = false
        ctx.beginPass()
        let (ye, _) = try bn.forward(x.tensor, ctx)
        let yev = ye.toArray()
        for i in 0..<xv.count {
            let ch = (i / hw) % c
            let ref = (Double(xv[i]) - Double(rm[ch])) / (Double(rv[ch]) + 1e-5).squareRoot() * [1.5, -0.5, 2][ch] + [0.1, 0.2, -0.3][ch]
            XCTAssertEqual(Double(yev[i]), ref, accuracy: 1e-5)
        }
        XCTAssertEqual(ctx.params.buffer(bn.runningMean).toArray(), rm)
        XCTAssertEqual(ctx.params.counter(named: "bn.num_batches_tracked"), 1)
    }

    func testSelfAttentionMatchesExplicitHeadLoops() throws {
        let (b, n, d, h) = (2, 5, 12, 3)
        let hd = d / h
        let layout = ParameterLayout()
        let attn = SelfAttention("attn", dim: d, heads: h, layout: layout)
        let ctx = makeContext(layout, threads: 3)
        randomizeParameters(ctx.params, seed: 12, std: 0.3)
        let x = randomHost(Shape(b, n, d), seed: 13)
        let (y, saved) = try attn.forward(x.tensor, ctx)
        let qkv = saved.qkv.toArray()
        var merged = [Float](repeating: 0, count: b * n * d)
        for bi in 0..<b { for hh in 0..<h { for i in 0..<n {
            var s = [Double](repeating: 0, count: n)
            for j in 0..<n {
                for t in 0..<hd {
                    s[j] += Double(qkv[(bi * n + i) * 3 * d + hh * hd + t]) * Double(qkv[(bi * n + j) * 3 * d + d + hh * hd + t])
                }
                s[j] /= Double(hd).squareRoot()
            }
            let p = Naive.softmax(s.map(Float.init), cols: n)
            for t in 0..<hd {
                var acc: Double = 0
                for j in 0..<n { acc += Double(p[j]) * Double(qkv[(bi * n + j) * 3 * d + 2 * d + hh * hd + t]) }
                merged[(bi * n + i) * d + hh * hd + t] = Float(acc)
            }
        } } }
        assertClose(saved.merged.toArray(), merged, rtol: 1e-4, atol: 1e-5, "attention heads")
        let w = ctx.params.value(attn.proj.weight).toArray(), pb = ctx.params.value(attn.proj.bias!).toArray()
        let proj = Naive.gemm(transA: false, transB: true, m: b * n, n: d, k: d, alpha: 1, a: merged, lda: d, b: w, ldb: d,
                              beta: 0, c: [Float](repeating: 0, count: b * n * d), ldc: d)
        assertClose(y.toArray(), (0..<(b * n * d)).map { proj[$0] + pb[$0 % d] }, rtol: 1e-4, atol: 1e-5, "attention output")
    }

    func testCrossAttentionAndGRUCellMatchNaiveLoops() throws {
        let (b, t, e, h) = (2, 2, 8, 4)
        let layout = ParameterLayout()
        let attn = CrossAttention("x", dim: e, heads: h, dropout: 0, layout: layout)
        let gru = GRUCell("gru", inputSize: e, hiddenSize: e, layout: layout)
        let ctx = makeContext(layout, threads: 2)
        randomizeParameters(ctx.params, seed: 21, std: 0.4)
        let q = randomHost(Shape(b, e), seed: 22), s = randomHost(Shape(b, t, e), seed: 23)
        let (out, meanW, saved) = try attn.forward(query: q.tensor, tokens: s.tensor, ctx)
        let qv = saved.q.toArray(), kv = saved.k.toArray(), vv = saved.v.toArray()
        let hd = e / h
        var context = [Float](repeating: 0, count: b * e), avg = [Float](repeating: 0, count: b * t)
        for bi in 0..<b { for hh in 0..<h {
            var sc = [Float](repeating: 0, count: t)
            for tt in 0..<t {
                var acc: Double = 0
                for j in 0..<hd { acc += Double(qv[bi * e + hh * hd + j]) * Double(kv[(bi * t + tt) * e + hh * hd + j]) }
                sc[tt] = Float(acc / Double(hd).squareRoot())
            }
            let w = Naive.softmax(sc, cols: t)
            for tt in 0..<t { avg[bi * t + tt] += w[tt] / Float(h) }
            for j in 0..<hd {
                context[bi * e + hh * hd + j] = (0..<t).reduce(Float(0)) { $0 + w[$1] * vv[(bi * t + $1) * e + hh * hd + j] }
            }
        } }
        assertClose(saved.context.toArray(), context, rtol: 1e-5, atol: 1e-6, "cross-attention context")
        assertClose(meanW.toArray(), avg, rtol: 1e-5, atol: 1e-6, "mean attention weights")
        XCTAssertEqual(out.shape, Shape(b, e))

        // GRUCell against its defining equations.
        let hPrev = randomHost(Shape(b, e), seed: 24)
        let (hNew, _) = try gru.forward(out, h: hPrev.tensor, ctx)
        let p = ctx.params
        let wih = p.value(named: "gru.weight_ih")!.toArray(), whh = p.value(named: "gru.weight_hh")!.toArray()
        let bih = p.value(named: "gru.bias_ih")!.toArray(), bhh = p.value(named: "gru.bias_hh")!.toArray()
        let xin = out.toArray(), hv = hPrev.values
        var ref = [Float](repeating: 0, count: b * e)
        for bi in 0..<b { for j in 0..<e {
            func lin(_ w: [Float], _ bias: [Float], _ v: [Float], _ row: Int) -> Double {
                var s = Double(bias[row])
                for c in 0..<e { s += Double(w[row * e + c]) * Double(v[bi * e + c]) }
                return s
            }
            let r = Naive.sigmoid(lin(wih, bih, xin, j) + lin(whh, bhh, hv, j))
            let z = Naive.sigmoid(lin(wih, bih, xin, e + j) + lin(whh, bhh, hv, e + j))
            let nn = Foundation.tanh(lin(wih, bih, xin, 2 * e + j) + r * lin(whh, bhh, hv, 2 * e + j))
            ref[bi * e + j] = Float((1 - z) * nn + z * Double(hv[bi * e + j]))
        } }
        assertClose(hNew.toArray(), ref, rtol: 1e-5, atol: 1e-6, "GRUCell")
    }

    func testPoolingConcatAndDropoutKernels() throws {
        let ctx = makeContext(ParameterLayout(), threads: 2)
        let x = randomHost(Shape(2, 3, 4, 5), seed: 31)
        let pooled = GlobalAvgPool.forward(x.tensor, ctx).toArray()
        let xv = x.values
        assertClose(pooled, (0..<6).map { p in xv[(p * 20)..<((p + 1) * 20)].reduce(0, +) / 20 }, rtol: 1e-6, atol: 1e-6, "avg pool")
        let tokens = randomHost(Shape(2, 4, 3), seed: 32)
        let tv = tokens.values
        let r = TokenMeanMax.forward(tokens.tensor, ctx)
        for bi in 0..<2 { for j in 0..<3 {
            let col = (0..<4).map { tv[(bi * 4 + $0) * 3 + j] }
            XCTAssertEqual(r.mean.toArray()[bi * 3 + j], col.reduce(0, +) / 4, accuracy: 1e-6)
            XCTAssertEqual(r.max.toArray()[bi * 3 + j], col.max()!)
        } }
        let cat = Concat.forward(r.mean, r.max, ctx).toArray()
        let means = r.mean.toArray(), maxes = r.max.toArray()
        var expected: [Float] = []
        for bi in 0..<2 {
            expected += means[(bi * 3)..<(bi * 3 + 3)]
            expected += maxes[(bi * 3)..<(bi * 3 + 3)]
        }
        XCTAssertEqual(cat, expected)

        // Dropout: inverted scaling, the drop rate within 5 sigma of p, and the same mask for the
        // same (seed, step, call).
        let big = testTensor(Shape(100_000), fill: 1)
        let drop = Dropout(0.25)
        ctx.beginPass()
        let (y1, _) = drop.forward(big.tensor, ctx)
        let v1 = y1.toArray()
        let dropped = v1.filter { $0 == 0 }.count
        XCTAssertEqual(Double(dropped), 25_000, accuracy: 5 * (100_000 * 0.25 * 0.75).squareRoot())
        XCTAssertTrue(v1.allSatisfy { $0 == 0 || $0 == Float(1) / Float(0.75) })
        ctx.beginPass()
        XCTAssertEqual(drop.forward(big.tensor, ctx).0.toArray(), v1, "same step and call index give the same mask")
        ctx.step += 1
        ctx.beginPass()
        XCTAssertNotEqual(drop.forward(big.tensor, ctx).0.toArray(), v1, "the next step draws a new mask")
        ctx.training = false
        XCTAssertEqual(drop.forward(big.tensor, ctx).0.base, big.tensor.base, "eval mode passes x through")
    }

    func testSoftmaxExpIsWithinTwoUlpOfDoublePrecisionExp() {
        // The softmax kernel's exp, probed through softmax over [x, -inf-like] pairs is awkward;
        // instead compare softmax of [x, 0] rows: y0 = e^x / (e^x + 1) against the double result.
        let xs = stride(from: -80.0, through: 80.0, by: 0.37).map { Float($0) }
        let ctx = makeContext(ParameterLayout())
        let x = testTensor(Shape(xs.count, 2), xs.flatMap { [$0, 0] })
        let y = Softmax.forward(x.tensor, ctx).toArray()
        for (i, v) in xs.enumerated() {
            let ref = 1 / (1 + Foundation.exp(-Double(v)))
            XCTAssertEqual(Double(y[2 * i]), ref, accuracy: max(4 * Double(Float.ulpOfOne) * ref, 1e-30), "softmax([\(v), 0])")
        }
    }

    func testAdamWMatchesTorchFormula() {
        let be = testBackend(threads: 2)
        let n = 50
        let p = DeviceTensor(be, Shape(n), randomValues(n, seed: 1)), m = DeviceTensor(be, Shape(n)), v = DeviceTensor(be, Shape(n))
        let gate = DeviceTensor(be, Shape(1), [1]), closed = DeviceTensor(be, Shape(1), [0])
        var rp = p.values.map(Double.init), rm = [Double](repeating: 0, count: n), rv = [Double](repeating: 0, count: n)
        let (lr, b1, b2, eps, wd) = (Float(1e-2), Float(0.9), Float(0.999), Float(1e-8), Float(0.05))
        for step in 1...3 {
            let g = randomValues(n, seed: UInt64(10 + step))
            let gt = DeviceTensor(be, Shape(n), g)
            be.adamW(params: p.tensor, grads: gt.tensor, expAvg: m.tensor, expAvgSq: v.tensor, lr: lr, beta1: b1,
                     beta2: b2, eps: eps, weightDecay: wd, step: step, gate: gate.tensor)
            // A closed gate (a skipped, non-finite step) leaves everything as it was.
            let before = p.values
            be.adamW(params: p.tensor, grads: gt.tensor, expAvg: m.tensor, expAvgSq: v.tensor, lr: lr, beta1: b1,
                     beta2: b2, eps: eps, weightDecay: wd, step: step, gate: closed.tensor)
            assertBitIdentical(p.values, before, "AdamW with a closed gate")
            for i in 0..<n {
                let gd = Double(g[i])
                rp[i] *= 1 - Double(lr) * Double(wd)
                rm[i] = Double(b1) * rm[i] + (1 - Double(b1)) * gd
                rv[i] = Double(b2) * rv[i] + (1 - Double(b2)) * gd * gd
                let mh = rm[i] / (1 - pow(Double(b1), Double(step))), vh = rv[i] / (1 - pow(Double(b2), Double(step)))
                rp[i] -= Double(lr) * mh / (vh.squareRoot() + Double(eps))
            }
        }
        assertClose(p.values, rp.map(Float.init), rtol: 1e-5, atol: 1e-6, "AdamW parameters after 3 steps")
    }

    func testGradientClipNormGateAndScaleMatchTorchClipGradNorm() {
        let be = testBackend(threads: 2)
        let n = 70_000  // more than one reduction chunk
        let g = randomValues(n, seed: 3, std: 0.02)
        let grads = DeviceTensor(be, Shape(n), g)
        let flag = DeviceTensor(be, Shape(1)), norm = DeviceTensor(be, Shape(1)), gate = DeviceTensor(be, Shape(1))
        // Two ranges with a gap: the gap is neither counted nor scaled.
        let ranges = [0..<30_000, 30_010..<n]
        be.clipGradientNorm(grads.tensor, ranges: ranges, maxNorm: 1, nonFinite: flag.tensor, norm: norm.tensor, gate: gate.tensor)
        var ss = 0.0
        for r in ranges { for i in r { ss += Double(g[i]) * Double(g[i]) } }
        let refNorm = ss.squareRoot()
        XCTAssertEqual(Double(norm.values[0]), refNorm, accuracy: 1e-5 * refNorm)
        XCTAssertEqual(gate.values[0], 1)
        let coef = 1 / (refNorm + 1e-6)
        XCTAssertLessThan(coef, 1, "the test gradients must be large enough to be clipped")
        let after = grads.values
        for r in ranges { for i in r.prefix(50) { XCTAssertEqual(Double(after[i]), Double(g[i]) * coef, accuracy: 1e-7) } }
        XCTAssertEqual(after[30_005], g[30_005], "outside the ranges")
        // A non-finite flag (or norm) closes the gate and leaves the gradients alone.
        let before = grads.values
        flag.tensor.copy(from: [1])
        be.clipGradientNorm(grads.tensor, ranges: ranges, maxNorm: 1, nonFinite: flag.tensor, norm: norm.tensor, gate: gate.tensor)
        XCTAssertEqual(gate.values[0], 0)
        assertBitIdentical(grads.values, before, "gradients of a gated-off step")
        flag.tensor.copy(from: [0])
        grads.tensor[7] = .nan
        be.clipGradientNorm(grads.tensor, ranges: ranges, maxNorm: 1, nonFinite: flag.tensor, norm: norm.tensor, gate: gate.tensor)
        XCTAssertEqual(gate.values[0], 0)
        XCTAssertTrue(norm.values[0].isNaN)
    }

    func testPhiloxMatchesRandom123KnownAnswers() {
        // Known-answer vectors of Philox4x32-10 from the Random123 distribution (kat_vectors).
        let zero = Philox(seed: 0).block(0, 0, 0, 0)
        XCTAssertEqual([zero.0, zero.1, zero.2, zero.3], [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8])
        let ones = Philox(seed: 0xffff_ffff_ffff_ffff).block(0xffff_ffff, 0xffff_ffff, 0xffff_ffff, 0xffff_ffff)
        XCTAssertEqual([ones.0, ones.1, ones.2, ones.3], [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd])
        let pi = Philox(seed: 0x299f_31d0_a409_3822).block(0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344)
        XCTAssertEqual([pi.0, pi.1, pi.2, pi.3], [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1])
        // Uniforms are in [0, 1) and normals have about unit variance.
        let s = RandomStream(seed: 5, stream: 1)
        let u = (0..<20_000).map { s.uniform(UInt64($0)) }
        XCTAssertTrue(u.allSatisfy { $0 >= 0 && $0 < 1 })
        let z = (0..<20_000).map { Double(s.normal(UInt64($0))) }
        let mean = z.reduce(0, +) / 20_000
        XCTAssertEqual(mean, 0, accuracy: 0.05)
        XCTAssertEqual(z.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / 20_000, 1, accuracy: 0.05)
    }
}
