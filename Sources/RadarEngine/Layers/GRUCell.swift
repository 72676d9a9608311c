/// torch.nn.GRUCell, gate order r, z, n:
/// r = s(W_ir x + b_ir + W_hr h + b_hr), z = s(W_iz x + b_iz + W_hz h + b_hz),
/// n = tanh(W_in x + b_in + r (W_hn h + b_hn)), h' = (1 - z) n + z h.
public struct GRUCell: Sendable {
    public let name: String
    public let inputSize: Int, hiddenSize: Int
    public let inputLinear: Linear, hiddenLinear: Linear

    public struct Saved {
        public let x: Tensor, h: Tensor, gh: Tensor, r: Tensor, z: Tensor, n: Tensor
    }

    public init(_ name: String, inputSize: Int, hiddenSize: Int, layout: ParameterLayout) {
        self.name = name
        self.inputSize = inputSize
        self.hiddenSize = hiddenSize
        inputLinear = Linear(name, inputSize, 3 * hiddenSize, weightName: "\(name).weight_ih",
                             biasName: "\(name).bias_ih", layout: layout)
        hiddenLinear = Linear(name, hiddenSize, 3 * hiddenSize, weightName: "\(name).weight_hh",
                              biasName: "\(name).bias_hh", layout: layout)
    }

    /// x (B, I), h (B, E) -> h' (B, E).
    public func forward(_ x: Tensor, h: Tensor, _ ctx: ExecutionContext) throws(ShapeMismatch) -> (Tensor, Saved) {
        if h.shape.rank != 2 || h.shape[1] != hiddenSize || x.shape.rank != 2 || x.shape[0] != h.shape[0] {
            throw ShapeMismatch(layer: name, expected: "h (\(x.shape.rank == 2 ? x.shape[0] : -1), \(hiddenSize))",
                                actual: h.shape)
        }
        let gi = try inputLinear.forward(x, ctx)
        let gh = try hiddenLinear.forward(h, ctx)
        let hNew = ctx.tensor(h.shape), r = ctx.tensor(h.shape), z = ctx.tensor(h.shape), n = ctx.tensor(h.shape)
        ctx.backend.gruGatesForward(gi: gi, gh: gh, h: h, hNew: hNew, r: r, z: z, n: n)
        return (hNew, Saved(x: x, h: h, gh: gh, r: r, z: z, n: n))
    }

    /// Returns (dx, dh).
    public func backward(_ dhNew: Tensor, _ s: Saved, _ ctx: ExecutionContext) -> (Tensor, Tensor) {
        let dgi = ctx.tensor(s.gh.shape), dgh = ctx.tensor(s.gh.shape), dh = ctx.tensor(s.h.shape)
        ctx.backend.gruGatesBackward(dhNew: dhNew, gh: s.gh, h: s.h, r: s.r, z: s.z, n: s.n, dgi: dgi, dgh: dgh, dh: dh)
        let dx = inputLinear.backward(dgi, x: s.x, ctx)!
        let dhLinear = hiddenLinear.backward(dgh, x: s.h, ctx)!
        ctx.backend.add(dh, dhLinear, into: dh)
        return (dx, dh)
    }
}
