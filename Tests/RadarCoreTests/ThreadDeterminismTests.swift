import RadarCore
import XCTest

/// Multi-threaded results must be bit-identical to single-threaded ones: kernels split work by
/// shape, never by thread count, and reduce in a fixed order.
final class ThreadDeterminismTests: XCTestCase {
    /// Runs forward and backward of `pass` with `threads` and returns output, input gradients and
    /// all parameter gradients and buffers, flattened.
    func run(threads: Int, layout: () -> ParameterLayout, inputShapes: [Shape],
             _ pass: (ExecutionContext, [Tensor]) throws -> (Tensor, (Tensor) -> [Tensor?])) throws -> [[Float]] {
        let l = layout()
        let ctx = makeContext(l, threads: threads)
        randomizeParameters(ctx.params, seed: 77, std: 0.2)
        let inputs = inputShapes.enumerated().map { randomHost($1, seed: UInt64(100 + $0)) }
        ctx.beginPass()
        let (y, back) = try pass(ctx, inputs.map(\.tensor))
        let dy = randomHost(y.shape, seed: 55)
        let grads = back(dy.tensor).compactMap { $0?.toArray() }
        return [y.toArray()] + grads + [ctx.params.downloadGrads(), ctx.params.downloadBuffers()]
    }

    func assertSameForThreadCounts(_ label: String, layout: () -> ParameterLayout, inputShapes: [Shape],
                                   _ pass: (ExecutionContext, [Tensor]) throws -> (Tensor, (Tensor) -> [Tensor?])) throws {
        let one = try run(threads: 1, layout: layout, inputShapes: inputShapes, pass)
        for t in [2, 3] {
            let many = try run(threads: t, layout: layout, inputShapes: inputShapes, pass)
            XCTAssertEqual(one.count, many.count)
            for (i, (a, b)) in zip(one, many).enumerated() { assertBitIdentical(a, b, "\(label) tensor \(i), threads 1 vs \(t)") }
        }
    }

    func testLinearAndAttentionAreBitIdenticalAcrossThreadCounts() throws {
        // Big enough that the GEMMs are tiled (over rows and over columns).
        try assertSameForThreadCounts("Linear", layout: { let l = ParameterLayout(); _ = Linear("lin", 96, 200, layout: l); return l },
                                      inputShapes: [Shape(3, 100, 96)]) { ctx, x in
            let lin = Linear("lin", 96, 200, layout: ParameterLayout())
            let y = try lin.forward(x[0], ctx)
            return (y, { dy in [lin.backward(dy, x: x[0], ctx)] })
        }
        try assertSameForThreadCounts("SelfAttention", layout: { let l = ParameterLayout(); _ = SelfAttention("a", dim: 48, heads: 3, layout: l); return l },
                                      inputShapes: [Shape(4, 17, 48)]) { ctx, x in
            let attn = SelfAttention("a", dim: 48, heads: 3, layout: ParameterLayout())
            let (y, s) = try attn.forward(x[0], ctx)
            return (y, { dy in [attn.backward(dy, s, ctx)] })
        }
    }

    func testConvolutionStackIsBitIdenticalAcrossThreadCounts() throws {
        func build(_ l: ParameterLayout) -> (Conv2d, BatchNorm2d, Conv2d) {
            (Conv2d("c1", 1, 8, kernel: 7, stride: 4, padding: 3, layout: l), BatchNorm2d("bn", 8, layout: l),
             Conv2d("c2", 8, 16, kernel: 5, stride: 2, padding: 2, layout: l))
        }
        try assertSameForThreadCounts("conv-bn-relu-conv-pool", layout: { let l = ParameterLayout(); _ = build(l); return l },
                                      inputShapes: [Shape(5, 1, 48, 48)]) { ctx, x in
            let (c1, bn, c2) = build(ParameterLayout())
            let (a, s1) = try c1.forward(x[0], ctx)
            let (b, s2) = try bn.forward(a, ctx)
            let r = ReLU.forward(b, ctx)
            let (c, s3) = try c2.forward(r, ctx)
            let y = GlobalAvgPool.forward(c, ctx)
            return (y, { dy in
                let dc = GlobalAvgPool.backward(dy, inputShape: c.shape, ctx)
                let dr = c2.backward(dc, s3, ctx)!
                let db = ReLU.backward(dr, y: r, ctx)
                return [c1.backward(bn.backward(db, s2, ctx), s1, ctx)]
            })
        }
    }

    func testNormalisationRecurrenceAndTransformsAreBitIdenticalAcrossThreadCounts() throws {
        try assertSameForThreadCounts("LayerNorm+GELU+GRU", layout: {
            let l = ParameterLayout(); _ = LayerNorm("ln", 64, eps: 1e-6, layout: l)
            _ = GRUCell("g", inputSize: 64, hiddenSize: 64, layout: l); return l
        }, inputShapes: [Shape(300, 64), Shape(300, 64)]) { ctx, x in
            let l = ParameterLayout()
            let ln = LayerNorm("ln", 64, eps: 1e-6, layout: l), gru = GRUCell("g", inputSize: 64, hiddenSize: 64, layout: l)
            let (a, s1) = try ln.forward(x[0], ctx)
            let (g, gs) = GELU.forward(a, ctx)
            let (h, s2) = try gru.forward(g, h: x[1], ctx)
            return (h, { dy in
                let (dx, dh) = gru.backward(dy, s2, ctx)
                return [ln.backward(GELU.backward(dx, gs, ctx), s1, ctx), dh]
            })
        }
        try assertSameForThreadCounts("transforms", layout: { ParameterLayout() }, inputShapes: [Shape(3, 3, 40, 40)]) { ctx, x in
            let gray = try ImageTransforms.grayscale(x[0], ctx)
            let edges = try ImageTransforms.sobel(gray, ctx)
            let spec = try HighPassFilter(size: 20).forward(try ImageTransforms.fftMagnitude(try ImageTransforms.resize(gray, to: 20, ctx), ctx), ctx)
            let y = Concat.forward(edges.reshaped(Shape(3, 1600)), spec.reshaped(Shape(3, 400)), ctx)
            return (y, { _ in [] })
        }
    }
}
