/// Global average pooling (B, C, H, W) -> (B, C).
public enum GlobalAvgPool {
    public static func forward(_ x: Tensor, _ ctx: ExecutionContext) -> Tensor {
        let y = ctx.tensor(Shape(x.shape[0], x.shape[1]))
        ctx.backend.globalAvgPoolForward(x, y)
        return y
    }

    public static func backward(_ dy: Tensor, inputShape: Shape, _ ctx: ExecutionContext) -> Tensor {
        let dx = ctx.tensor(inputShape)
        ctx.backend.globalAvgPoolBackward(dy, dx)
        return dx
    }
}

/// Mean and max over tokens (B, N, D) -> (B, D) each. Max's gradient goes to the first maximal
/// token, as torch.max(dim) does.
public enum TokenMeanMax {
    public struct Saved { public let inputShape: Shape; public let argmax: Tensor }

    public static func forward(_ x: Tensor, _ ctx: ExecutionContext) -> (mean: Tensor, max: Tensor, saved: Saved) {
        let s = Shape(x.shape[0], x.shape[2])
        let mean = ctx.tensor(s), mx = ctx.tensor(s), am = ctx.tensor(s)
        ctx.backend.tokenMeanMaxForward(x, mean: mean, max: mx, argmax: am)
        return (mean, mx, Saved(inputShape: x.shape, argmax: am))
    }

    public static func backward(dMean: Tensor, dMax: Tensor, _ saved: Saved, _ ctx: ExecutionContext) -> Tensor {
        let dx = ctx.tensor(saved.inputShape)
        ctx.backend.tokenMeanMaxBackward(dMean: dMean, dMax: dMax, argmax: saved.argmax, dx)
        return dx
    }
}

/// Concatenation of two (B, a) and (B, b) tensors along the feature axis, and its inverse.
/// stack([e1, e2], dim=1) of (B, E) tensors is the same memory as cat reshaped to (B, 2, E).
public enum Concat {
    public static func forward(_ a: Tensor, _ b: Tensor, _ ctx: ExecutionContext) -> Tensor {
        let ca = a.shape.last, cb = b.shape.last
        let out = ctx.tensor(a.shape.replacingLast(ca + cb))
        ctx.backend.copyColumns(a, srcCols: ca, into: out, dstCols: ca + cb, offset: 0)
        ctx.backend.copyColumns(b, srcCols: cb, into: out, dstCols: ca + cb, offset: ca)
        return out
    }

    /// Splits d(out) back into (d a, d b) of widths `first` and the rest.
    public static func backward(_ dy: Tensor, first: Int, _ ctx: ExecutionContext) -> (Tensor, Tensor) {
        let total = dy.shape.last, second = total - first
        let da = ctx.tensor(dy.shape.replacingLast(first)), db = ctx.tensor(dy.shape.replacingLast(second))
        ctx.backend.sliceColumns(dy, srcCols: total, offset: 0, into: da, dstCols: first)
        ctx.backend.sliceColumns(dy, srcCols: total, offset: first, into: db, dstCols: second)
        return (da, db)
    }
}
