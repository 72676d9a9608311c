/// The CNN both artifact branches run on a one-channel map (`edge_encoder`, `freq_encoder`):
/// 0 Conv(1,32,k7,s4,p3) 1 BN 2 ReLU 3 Conv(32,64,k5,s2,p2) 4 BN 5 ReLU 6 Conv(64,128,k3,s2,p1)
/// 7 BN 8 ReLU 9 global average pool -> (B, 128).
public struct ArtifactCNN: Sendable {
    public let convs: [Conv2d]
    public let norms: [BatchNorm2d]
    public static let outputChannels = 128

    public struct Saved {
        var conv: (Conv2d.Saved, Conv2d.Saved, Conv2d.Saved)
        var norm: (BatchNorm2d.Saved, BatchNorm2d.Saved, BatchNorm2d.Saved)
        var relu: (Tensor, Tensor, Tensor)
    }

    public init(_ name: String, layout: ParameterLayout) {
        let specs = [(1, 32, 7, 4, 3), (32, 64, 5, 2, 2), (64, 128, 3, 2, 1)]
        var convs: [Conv2d] = [], norms: [BatchNorm2d] = []
        for (i, s) in specs.enumerated() {
            convs.append(Conv2d("\(name).\(3 * i)", s.0, s.1, kernel: s.2, stride: s.3, padding: s.4, layout: layout))
            norms.append(BatchNorm2d("\(name).\(3 * i + 1)", s.1, layout: layout))
        }
        self.convs = convs
        self.norms = norms
    }

    /// x (B, 1, H, W) -> (B, 128).
    public func forward(_ x: Tensor, _ ctx: ExecutionContext) throws(ShapeMismatch) -> (Tensor, Saved) {
        let (c0, s0) = try convs[0].forward(x, ctx)
        let (n0, t0) = try norms[0].forward(c0, ctx)
        let r0 = ReLU.forward(n0, ctx)
        let (c1, s1) = try convs[1].forward(r0, ctx)
        let (n1, t1) = try norms[1].forward(c1, ctx)
        let r1 = ReLU.forward(n1, ctx)
        let (c2, s2) = try convs[2].forward(r1, ctx)
        let (n2, t2) = try norms[2].forward(c2, ctx)
        let r2 = ReLU.forward(n2, ctx)
        return (GlobalAvgPool.forward(r2, ctx), Saved(conv: (s0, s1, s2), norm: (t0, t1, t2), relu: (r0, r1, r2)))
    }

    /// Parameter gradients only: the input is a fixed transform of the image.
    /// ReLU's and BatchNorm's input gradients overwrite their output gradients (each element's
    /// own: nothing else reads them), so a layer adds one tensor, its convolution's dx.
    public func backward(_ dy: Tensor, _ s: Saved, _ ctx: ExecutionContext) {
        var d = GlobalAvgPool.backward(dy, inputShape: s.relu.2.shape, ctx)
        d = norms[2].backward(ReLU.backward(d, y: s.relu.2, ctx, into: d), s.norm.2, ctx, into: d)
        d = convs[2].backward(d, s.conv.2, ctx)!
        d = norms[1].backward(ReLU.backward(d, y: s.relu.1, ctx, into: d), s.norm.1, ctx, into: d)
        d = convs[1].backward(d, s.conv.1, ctx)!
        d = norms[0].backward(ReLU.backward(d, y: s.relu.0, ctx, into: d), s.norm.0, ctx, into: d)
        convs[0].backward(d, s.conv.0, ctx, inputGradient: false)
    }
}
