/// ReLU, in place (PyTorch's `inplace=True`): backward reads the output only, so the input's
/// memory holds it and the forward keeps one tensor, not two. Every caller's input is a Linear
/// or BatchNorm output whose backward does not read it.
public enum ReLU {
    public static func forward(_ x: Tensor, _ ctx: ExecutionContext) -> Tensor {
        ctx.backend.reluForward(x, x)
        return x
    }

    /// dx into `into` when given (it may be dy itself: each element reads only its own).
    public static func backward(_ dy: Tensor, y: Tensor, _ ctx: ExecutionContext, into: Tensor? = nil) -> Tensor {
        let dx = into ?? ctx.tensor(y.shape)
        ctx.backend.reluBackward(dy, y: y, dx)
        return dx
    }
}

/// Exact GELU (erf form, torch's approximate='none'): backward reads the input, and the CDF
/// forward kept, or recomputes it (`ctx.recomputeInBackward`, as PyTorch's GELU backward does).
/// A bf16 input (fc1's output under bf16 activations) is computed on as its fp32 value, in
/// forward and backward alike, as AMP runs GELU on the bf16 tensor it saves.
public enum GELU {
    public struct Saved { public let x: Tensor, cdf: Tensor? }

    /// The backend reads a bf16 x and writes a bf16 y as they are (no widened copy of x, no fp32
    /// y to convert): the bits of widening, computing in fp32 and rounding y.
    public static func forward(_ x: Tensor, _ ctx: ExecutionContext, output: DType = .float32) -> (Tensor, Saved) {
        let cdf = ctx.recomputeInBackward ? nil : ctx.tensor(x.shape)
        let y = ctx.tensor(x.shape, dtype: output)
        ctx.backend.geluForward(x, y, cdf: cdf)
        return (y, Saved(x: x, cdf: cdf))
    }

    /// dx of dtype `output` (dy and the saved x may be bf16; computed in fp32, dx rounded once).
    /// `biasGradient`: dx's column sums added there as it is written (the bias gradient of the
    /// Linear layer that produced GELU's input; that layer's backward is then told so).
    public static func backward(_ dy: Tensor, _ saved: Saved, _ ctx: ExecutionContext, output: DType = .float32,
                                biasGradient: Tensor? = nil) -> Tensor {
        let dx = ctx.tensor(saved.x.shape, dtype: output)
        if let biasGradient {
            ctx.backend.geluBackward(dy, x: saved.x, cdf: saved.cdf, dx, columnSumsInto: biasGradient)
        } else {
            ctx.backend.geluBackward(dy, x: saved.x, cdf: saved.cdf, dx)
        }
        return dx
    }
}

/// Softmax over the last axis.
public enum Softmax {
    public static func forward(_ x: Tensor, _ ctx: ExecutionContext) -> Tensor {
        let y = ctx.tensor(x.shape)
        ctx.backend.softmaxForward(x, y, cols: x.shape.last)
        return y
    }

    public static func backward(_ dy: Tensor, y: Tensor, _ ctx: ExecutionContext) -> Tensor {
        let dx = ctx.tensor(y.shape)
        ctx.backend.softmaxBackward(dy, y: y, dx, cols: y.shape.last)
        return dx
    }
}

/// Inverted dropout with masks from the counter-based generator: the mask of a call is a pure
/// function of (seed, step, call index, element index), and backward regenerates it instead of
/// storing it.
public struct Dropout: Sendable {
    public let p: Float

    public init(_ p: Float) {
        precondition(p >= 0 && p < 1, "dropout probability must be in [0, 1), got \(p)")
        self.p = p
    }

    /// Returns y and the stream used (nil when inactive: eval mode or p = 0, where y is x).
    public func forward(_ x: Tensor, _ ctx: ExecutionContext) -> (Tensor, RandomStream?) {
        guard ctx.training && p > 0 else { return (x, nil) }
        let stream = ctx.nextStream()
        let y = ctx.tensor(x.shape)
        ctx.backend.dropoutForward(x, y, p: p, stream: stream)
        return (y, stream)
    }

    public func backward(_ dy: Tensor, stream: RandomStream?, _ ctx: ExecutionContext) -> Tensor {
        guard let stream else { return dy }
        let dx = ctx.tensor(dy.shape)
        ctx.backend.dropoutBackward(dy, dx, p: p, stream: stream)
        return dx
    }
}
