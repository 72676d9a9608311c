/// The nn.Sequential shapes RADAR uses around its branches, with PyTorch's index names:
/// `.0` Linear, `.1` ReLU, `.2` Dropout, `.3` Linear, `.4` ReLU (each part optional after `.0`).
/// - `init_proj_*`: Linear, ReLU.                       (hasDropout false, no second)
/// - `cls_processor`: Linear, ReLU, Dropout.             (no second)
/// - `fusion`, `external_classifier_*`: Linear, ReLU, Dropout, Linear.
/// - `patch_processor`: Linear, ReLU, Dropout, Linear, ReLU.
public struct MLPHead: Sendable {
    public let first: Linear
    public let second: Linear?
    public let dropout: Dropout?
    public let finalReLU: Bool

    public struct Saved {
        public let x: Tensor, hidden: Tensor, dropped: Tensor, stream: RandomStream?, out: Tensor
    }

    public init(_ name: String, _ input: Int, _ hidden: Int, output: Int? = nil, dropout: Float? = nil,
                finalReLU: Bool = false, layout: ParameterLayout) {
        first = Linear("\(name).0", input, hidden, layout: layout)
        second = output.map { Linear("\(name).3", hidden, $0, layout: layout) }
        self.dropout = dropout.map { Dropout($0) }
        self.finalReLU = finalReLU
    }

    public var slots: [ParameterSlot] { [first.weight, first.bias!] + (second.map { [$0.weight, $0.bias!] } ?? []) }

    public func forward(_ x: Tensor, _ ctx: ExecutionContext) throws(ShapeMismatch) -> (Tensor, Saved) {
        let hidden = ReLU.forward(try first.forward(x, ctx), ctx)
        var dropped = hidden, stream: RandomStream? = nil
        if let dropout { (dropped, stream) = dropout.forward(hidden, ctx) }
        var out = dropped
        if let second {
            out = try second.forward(dropped, ctx)
            if finalReLU { out = ReLU.forward(out, ctx) }
        }
        return (out, Saved(x: x, hidden: hidden, dropped: dropped, stream: stream, out: out))
    }

    @discardableResult
    public func backward(_ dy: Tensor, _ s: Saved, _ ctx: ExecutionContext, inputGradient: Bool = true) -> Tensor? {
        var d = dy
        if let second {
            if finalReLU { d = ReLU.backward(d, y: s.out, ctx) }
            d = second.backward(d, x: s.dropped, ctx)!
        }
        if let dropout { d = dropout.backward(d, stream: s.stream, ctx) }
        d = ReLU.backward(d, y: s.hidden, ctx)
        return first.backward(d, x: s.x, ctx, inputGradient: inputGradient)
    }
}
