import RadarCore
import XCTest

/// Finite-difference checks of every layer's backward (tolerance in `GradientCheck`:
/// |fd - analytic| <= 3e-3 + 3e-2 |analytic|, eps 1e-2, unless a test says otherwise).
final class LayerGradientTests: XCTestCase {
    let check = GradientCheck()

    func testLinearGradients() throws {
        for (i, (lead, inF, outF)) in [([1], 5, 3), ([2, 3], 7, 4), ([4], 1, 1)].enumerated() {
            let layout = ParameterLayout()
            let lin = Linear("lin", inF, outF, layout: layout)
            let ctx = makeContext(layout)
            randomizeParameters(ctx.params, seed: UInt64(i))
            let shape = lead.count == 1 ? Shape(lead[0], inF) : Shape(lead[0], lead[1], inF)
            try check.run("Linear \(shape)", ctx, inputs: [randomHost(shape, seed: 10 + UInt64(i))]) { ctx, x in
                let y = try lin.forward(x[0], ctx)
                return (y, { dy in [lin.backward(dy, x: x[0], ctx)] })
            }
        }
    }

    func testConv2dGradientsOverStridesAndPaddings() throws {
        // (batch, in, out, h, w, kernel, stride, padding): odd sizes, batch 1, stride > kernel
        // coverage gaps, padding as large as the kernel allows, BADM's k7 s4 p3, patch-embed k4 s4.
        let cases = [(1, 2, 3, 7, 6, 3, 1, 1), (2, 1, 2, 9, 9, 7, 4, 3), (2, 3, 4, 8, 8, 4, 4, 0),
                     (1, 2, 2, 5, 5, 5, 2, 2), (1, 1, 2, 7, 8, 3, 3, 0), (3, 2, 1, 4, 3, 1, 1, 0)]
        for (i, c) in cases.enumerated() {
            let layout = ParameterLayout()
            let conv = Conv2d("conv", c.1, c.2, kernel: c.5, stride: c.6, padding: c.7, layout: layout)
            let ctx = makeContext(layout)
            randomizeParameters(ctx.params, seed: UInt64(i))
            try check.run("Conv2d case \(i)", ctx, inputs: [randomHost(Shape(c.0, c.1, c.3, c.4), seed: UInt64(30 + i))]) { ctx, x in
                let (y, saved) = try conv.forward(x[0], ctx)
                return (y, { dy in [conv.backward(dy, saved, ctx)] })
            }
        }
    }

    func testBatchNormTrainAndEvalGradients() throws {
        for (i, (shape, training)) in [(Shape(2, 3, 4, 5), true), (Shape(1, 2, 3, 3), true), (Shape(2, 2, 3, 1), false)].enumerated() {
            let layout = ParameterLayout()
            let bn = BatchNorm2d("bn", shape[1], layout: layout)
            let ctx = makeContext(layout, training: training)
            randomizeParameters(ctx.params, seed: UInt64(i))
            // BatchNorm's output is scale-free in x: a looser atol absorbs float32 noise in the
            // normalised values.
            var c = check
            c.atol = 5e-3
            try c.run("BatchNorm2d \(shape) training=\(training)", ctx, inputs: [randomHost(shape, seed: UInt64(40 + i))]) { ctx, x in
                let (y, saved) = try bn.forward(x[0], ctx)
                return (y, { dy in [bn.backward(dy, saved, ctx)] })
            }
        }
    }

    func testLayerNormGradients() throws {
        for (i, shape) in [Shape(3, 7), Shape(2, 4, 5), Shape(1, 1, 2)].enumerated() {
            let layout = ParameterLayout()
            let ln = LayerNorm("ln", shape.last, eps: 1e-6, layout: layout)
            let ctx = makeContext(layout)
            randomizeParameters(ctx.params, seed: UInt64(i))
            try check.run("LayerNorm \(shape)", ctx, inputs: [randomHost(shape, seed: UInt64(50 + i))]) { ctx, x in
                let (y, saved) = try ln.forward(x[0], ctx)
                return (y, { dy in [ln.backward(dy, saved, ctx)] })
            }
        }
    }

    func testActivationAndSoftmaxGradients() throws {
        let ctx = makeContext(ParameterLayout())
        try check.run("GELU", ctx, inputs: [randomHost(Shape(3, 11), seed: 1, std: 2)]) { ctx, x in
            let (y, saved) = GELU.forward(x[0], ctx)
            return (y, { dy in [GELU.backward(dy, saved, ctx)] })
        }
        // Keep ReLU inputs away from the kink, where finite differences are meaningless.
        let values = randomValues(40, seed: 2).map { $0 + ($0 >= 0 ? 0.1 : -0.1) }
        try check.run("ReLU", ctx, inputs: [testTensor(Shape(4, 10), values)]) { ctx, x in
            // In place, as after a Linear or BatchNorm: on a copy (the checker's input is reused).
            let h = ctx.tensor(x[0].shape)
            ctx.backend.copy(x[0], into: h)
            let y = ReLU.forward(h, ctx)
            return (y, { dy in [ReLU.backward(dy, y: y, ctx)] })
        }
        for shape in [Shape(3, 5), Shape(2, 1), Shape(2, 2, 7)] {
            try check.run("Softmax \(shape)", ctx, inputs: [randomHost(shape, seed: 3)]) { ctx, x in
                let y = Softmax.forward(x[0], ctx)
                return (y, { dy in [Softmax.backward(dy, y: y, ctx)] })
            }
        }
    }

    func testDropoutGradientUsesTheForwardMask() throws {
        let ctx = makeContext(ParameterLayout())
        let drop = Dropout(0.3)
        try check.run("Dropout", ctx, inputs: [randomHost(Shape(5, 9), seed: 4)]) { ctx, x in
            let (y, stream) = drop.forward(x[0], ctx)
            return (y, { dy in [drop.backward(dy, stream: stream, ctx)] })
        }
    }

    func testSelfAttentionGradients() throws {
        for (i, (b, n, d, h)) in [(2, 5, 6, 2), (1, 3, 4, 1), (1, 1, 6, 3), (2, 4, 9, 3)].enumerated() {
            let layout = ParameterLayout()
            let attn = SelfAttention("attn", dim: d, heads: h, layout: layout)
            let ctx = makeContext(layout)
            randomizeParameters(ctx.params, seed: UInt64(i))
            try check.run("SelfAttention B\(b) N\(n) D\(d) H\(h)", ctx, inputs: [randomHost(Shape(b, n, d), seed: UInt64(60 + i))]) { ctx, x in
                let (y, saved) = try attn.forward(x[0], ctx)
                return (y, { dy in [attn.backward(dy, saved, ctx)] })
            }
        }
    }

    func testCrossAttentionGradientsWithAndWithoutDropout() throws {
        for (i, (b, t, e, h, p)) in [(3, 2, 8, 4, Float(0.2)), (1, 1, 4, 2, Float(0)), (2, 2, 6, 1, Float(0))].enumerated() {
            let layout = ParameterLayout()
            let attn = CrossAttention("xattn", dim: e, heads: h, dropout: p, layout: layout)
            let ctx = makeContext(layout)
            randomizeParameters(ctx.params, seed: UInt64(i))
            let inputs = [randomHost(Shape(b, e), seed: UInt64(70 + i)), randomHost(Shape(b, t, e), seed: UInt64(80 + i))]
            try check.run("CrossAttention B\(b) T\(t) E\(e) H\(h) p\(p)", ctx, inputs: inputs) { ctx, x in
                let (y, _, saved) = try attn.forward(query: x[0], tokens: x[1], ctx)
                return (y, { dy in let (dq, dt) = attn.backward(dy, saved, ctx); return [dq, dt] })
            }
        }
    }

    func testGRUCellGradients() throws {
        for (i, (b, inp, hid)) in [(2, 5, 4), (1, 3, 3)].enumerated() {
            let layout = ParameterLayout()
            let gru = GRUCell("gru", inputSize: inp, hiddenSize: hid, layout: layout)
            let ctx = makeContext(layout)
            randomizeParameters(ctx.params, seed: UInt64(i))
            let inputs = [randomHost(Shape(b, inp), seed: UInt64(90 + i)), randomHost(Shape(b, hid), seed: UInt64(95 + i))]
            try check.run("GRUCell B\(b) I\(inp) E\(hid)", ctx, inputs: inputs) { ctx, x in
                let (y, saved) = try gru.forward(x[0], h: x[1], ctx)
                return (y, { dy in let (dx, dh) = gru.backward(dy, saved, ctx); return [dx, dh] })
            }
        }
    }

    func testPoolingAndConcatenationGradients() throws {
        let ctx = makeContext(ParameterLayout())
        try check.run("GlobalAvgPool", ctx, inputs: [randomHost(Shape(2, 3, 4, 5), seed: 5)]) { ctx, x in
            let y = GlobalAvgPool.forward(x[0], ctx)
            return (y, { dy in [GlobalAvgPool.backward(dy, inputShape: x[0].shape, ctx)] })
        }
        // Distinct, well-separated values so +-eps never changes which token is the max.
        var spaced = (0..<30).map { Float($0) * 0.05 - 0.7 }
        let order = (0..<30).map { Int(RandomStream(seed: 6, stream: 1).bits(UInt64($0)) % 1000) }
        spaced = zip(order, spaced).sorted { $0.0 < $1.0 }.map(\.1)
        var c = check
        c.eps = 1e-3
        try c.run("TokenMeanMax", ctx, inputs: [testTensor(Shape(2, 5, 3), spaced)]) { ctx, x in
            let r = TokenMeanMax.forward(x[0], ctx)
            // Both outputs feed the checked scalar through one concatenation.
            let y = Concat.forward(r.mean, r.max, ctx)
            return (y, { dy in
                let (dm, dx) = Concat.backward(dy, first: 3, ctx)
                return [TokenMeanMax.backward(dMean: dm, dMax: dx, r.saved, ctx)]
            })
        }
        try check.run("Concat", ctx, inputs: [randomHost(Shape(2, 3), seed: 7), randomHost(Shape(2, 4), seed: 8)]) { ctx, x in
            let y = Concat.forward(x[0], x[1], ctx)
            return (y, { dy in let (a, b) = Concat.backward(dy, first: 3, ctx); return [a, b] })
        }
    }
}
