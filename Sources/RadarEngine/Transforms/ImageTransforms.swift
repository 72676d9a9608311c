#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The fixed (gradient-free) transforms of MODEL.md §2-3. Inputs are normalised images
/// (B, 3, H, W); each transform writes a fresh arena tensor, or the last of a chain writes into
/// one its caller allocated before the chain's intermediates (which it then releases).
public enum ImageTransforms {
    /// (B, 3, H, W) -> (B, 1, H, W), 0.299 R + 0.587 G + 0.114 B.
    public static func grayscale(_ x: Tensor, _ ctx: ExecutionContext) throws(ShapeMismatch) -> Tensor {
        try x.expect4(-1, 3, -1, -1, in: "grayscale")
        let y = ctx.tensor(Shape(x.shape[0], 1, x.shape[2], x.shape[3]))
        ctx.backend.grayscale(x, y)
        return y
    }

    /// Sobel gradient magnitude (zero padding 1), each image divided by its own max when > 1e-8.
    public static func sobel(_ gray: Tensor, _ ctx: ExecutionContext, into out: Tensor? = nil) throws(ShapeMismatch) -> Tensor {
        try gray.expect4(-1, 1, -1, -1, in: "sobel")
        let y = output(out, gray.shape, ctx)
        ctx.backend.sobelMagnitude(gray, y)
        return y
    }

    /// Bilinear resize to size x size, align_corners false, no antialias (F.interpolate).
    public static func resize(_ x: Tensor, to size: Int, _ ctx: ExecutionContext) throws(ShapeMismatch) -> Tensor {
        try x.expect4(-1, -1, -1, -1, in: "resize")
        let y = ctx.tensor(Shape(x.shape[0], x.shape[1], size, size))
        ctx.backend.resizeBilinear(x, y)
        return y
    }

    /// |FFT2| with fftshift over the two spatial axes (not the batch axis).
    static func output(_ out: Tensor?, _ shape: Shape, _ ctx: ExecutionContext) -> Tensor {
        guard let out else { return ctx.tensor(shape) }
        precondition(out.shape == shape, "transform output \(out.shape), expected \(shape)")
        return out
    }

    public static func fftMagnitude(_ gray: Tensor, _ ctx: ExecutionContext) throws(ShapeMismatch) -> Tensor {
        try gray.expect4(-1, 1, -1, gray.shape.rank == 4 ? gray.shape[2] : -1, in: "fftMagnitude")
        let y = ctx.tensor(gray.shape)
        ctx.backend.fftMagnitudeShifted(gray, y)
        return y
    }
}

/// AADM's soft high-pass on a shifted spectrum: mask = sigmoid((dist - F/8) / 10) around the
/// centre (F/2, F/2) (integer division), then log1p(|F| mask), then per-image min-max to [0, 1].
public final class HighPassFilter: @unchecked Sendable {
    public let size: Int
    /// The mask on the host; uploaded to a backend at its first forward there.
    public let mask: HostTensor
    private var deviceMask: DeviceTensor?

    public init(size: Int) {
        self.size = size
        mask = HostTensor(Shape(size, size))
        let c = size / 2
        let cutoff = Float(size) / 8
        for i in 0..<size {
            for j in 0..<size {
                let di = Float(i - c), dj = Float(j - c)
                let dist = (di * di + dj * dj).squareRoot()
                mask.storage[i * size + j] = 1 / (1 + expf(-(dist - cutoff) / 10))
            }
        }
    }

    public func forward(_ magnitude: Tensor, _ ctx: ExecutionContext, into out: Tensor? = nil) throws(ShapeMismatch) -> Tensor {
        try magnitude.expect4(-1, 1, size, size, in: "highPass")
        let y = ImageTransforms.output(out, magnitude.shape, ctx)
        if deviceMask == nil || deviceMask!.backend !== ctx.backend { deviceMask = DeviceTensor(ctx.backend, mask) }
        ctx.backend.highPassLogNormalize(magnitude, mask: deviceMask!.tensor, y)
        return y
    }
}
