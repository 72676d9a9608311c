/// torch.nn.Conv2d with square kernel, any stride and padding: one backend kernel each way
/// (the CPU backend does im2col + GEMM per image).
/// Weight (out, in, k, k), bias (out).
public struct Conv2d: Sendable {
    public let name: String
    public let inChannels: Int, outChannels: Int, kernel: Int, stride: Int, padding: Int
    public let weight: ParameterSlot
    public let bias: ParameterSlot?

    public struct Saved {
        public let x: Tensor
    }

    public init(_ name: String, _ inChannels: Int, _ outChannels: Int, kernel: Int, stride: Int = 1,
                padding: Int = 0, bias: Bool = true, layout: ParameterLayout) {
        precondition(kernel > 0 && stride > 0 && padding >= 0, "\(name): bad kernel/stride/padding")
        self.name = name
        self.inChannels = inChannels
        self.outChannels = outChannels
        self.kernel = kernel
        self.stride = stride
        self.padding = padding
        weight = layout.parameter("\(name).weight", Shape(outChannels, inChannels, kernel, kernel))
        self.bias = bias ? layout.parameter("\(name).bias", Shape(outChannels)) : nil
    }

    public func outputSize(_ n: Int) -> Int { (n + 2 * padding - kernel) / stride + 1 }

    public func geometry(_ x: Shape) -> ConvolutionGeometry {
        ConvolutionGeometry(batch: x[0], inChannels: inChannels, height: x[2], width: x[3], outChannels: outChannels,
                            kernel: kernel, stride: stride, padding: padding)
    }

    /// x (B, C, H, W) -> y (B, out, Ho, Wo).
    public func forward(_ x: Tensor, _ ctx: ExecutionContext) throws(ShapeMismatch) -> (Tensor, Saved) {
        if x.shape.rank != 4 || x.shape[1] != inChannels || outputSize(x.shape[2]) < 1 || outputSize(x.shape[3]) < 1 {
            throw ShapeMismatch(layer: name, expected: "(B, \(inChannels), H >= \(kernel - 2 * padding), W >= \(kernel - 2 * padding))",
                                actual: x.shape)
        }
        let g = geometry(x.shape)
        let be = ctx.backend
        let y = ctx.tensor(Shape(g.batch, outChannels, g.outHeight, g.outWidth))
        // The columns are scratch, released at once: backward rebuilds them from x.
        let mark = ctx.arena.mark()
        let workspace = ctx.tensor(Shape(be.convolutionWorkspaceCount(g)))
        be.convolutionForward(x, weight: ctx.params.value(weight), bias: bias.map { ctx.params.value($0) }, g,
                              workspace: workspace, y)
        ctx.arena.rewind(to: mark)
        return (y, Saved(x: x))
    }

    /// Accumulates dW and db; returns dx unless `inputGradient` is false.
    @discardableResult
    public func backward(_ dy: Tensor, _ saved: Saved, _ ctx: ExecutionContext, inputGradient: Bool = true) -> Tensor? {
        let g = geometry(saved.x.shape)
        let be = ctx.backend
        let dx: Tensor? = inputGradient ? ctx.tensor(saved.x.shape) : nil
        // The columns and the per-image weight gradients are released at once: only dx is passed
        // on (they would otherwise sit under the rest of the backward pass).
        let mark = ctx.arena.mark()
        let workspace = ctx.tensor(Shape(be.convolutionWorkspaceCount(g)))
        let scratch = ctx.tensor(Shape(be.convolutionBackwardScratchCount(g, inputGradient: inputGradient)))
        be.convolutionBackward(dy, x: saved.x, weight: ctx.params.value(weight), g, workspace: workspace, scratch: scratch,
                               dWeight: ctx.params.grad(weight), dBias: bias.map { ctx.params.grad($0) }, dx: dx)
        ctx.arena.rewind(to: mark)
        return dx
    }
}
