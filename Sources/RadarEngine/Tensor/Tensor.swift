/// How a tensor's elements are stored: fp32, or bf16 (the upper half of the fp32 pattern, two
/// bytes each). bf16 tensors are activations that only products read, kept that way where the
/// backend stores them (`Backend.storesBFloat16Activations`: the CUDA backend in bf16 precision),
/// as PyTorch AMP keeps the bf16 copies of the GEMM inputs it saves for backward.
public enum DType: UInt8, Sendable {
    case float32, bfloat16

    /// Floats of memory `count` elements occupy.
    @inlinable public func floats(_ count: Int) -> Int { self == .float32 ? count : (count + 1) / 2 }
    public var name: String { self == .float32 ? "fp32" : "bf16" }
}

/// A view of contiguous device memory (fp32, or bf16: `dtype`) with a shape. It owns nothing: the memory belongs
/// to the backend, handed out through an `Arena` (activations), a `ParameterStore` (parameters,
/// gradients, buffers), the optimizer (moments) or a `DeviceTensor`. Views are plain values
/// (address + inline shape), so creating one never allocates.
///
/// `base` is a device address: only the backend's kernels dereference it. On the CPU backend it
/// happens to be host memory; on a GPU it is not, and the fenced test backend makes it
/// inaccessible outside kernels, so host code that reads it directly crashes there.
public struct Tensor: @unchecked Sendable {
    /// The first element's device address (for bf16, of its two bytes).
    public let base: UnsafeMutablePointer<Float>
    public let shape: Shape
    public let dtype: DType

    @inlinable public init(_ base: UnsafeMutablePointer<Float>, _ shape: Shape, dtype: DType = .float32) {
        self.base = base
        self.shape = shape
        self.dtype = dtype
    }

    @inlinable public var count: Int { shape.count }
    /// Floats of memory the elements occupy.
    @inlinable public var storageFloats: Int { dtype.floats(count) }

    /// The same memory seen with another shape of equal element count.
    public func reshaped(_ s: Shape) -> Tensor {
        precondition(s.count == count, "reshape \(shape) -> \(s) changes the element count")
        return Tensor(base, s, dtype: dtype)
    }

    /// Elements [offset, offset + shape.count) of this (fp32) view, with `shape`.
    @inlinable public func slice(from offset: Int, _ shape: Shape) -> Tensor {
        precondition(dtype == .float32, "slice of a bf16 tensor")
        precondition(offset >= 0 && offset + shape.count <= count, "slice \(offset)+\(shape) of \(self.shape)")
        return Tensor(base + offset, shape)
    }
}

/// A shape check that failed: names the layer, the expected and the actual shape.
public struct ShapeMismatch: Error, CustomStringConvertible, Equatable {
    public let layer: String
    public let expected: String
    public let actual: Shape

    public init(layer: String, expected: String, actual: Shape) {
        self.layer = layer
        self.expected = expected
        self.actual = actual
    }

    public var description: String { "\(layer): expected input of shape \(expected), got \(actual)" }
}

extension Tensor {
    /// Throws `ShapeMismatch` unless this view has exactly `expected`.
    @inlinable public func expect(_ expected: Shape, in layer: String) throws(ShapeMismatch) {
        if shape != expected { throw ShapeMismatch(layer: layer, expected: expected.description, actual: shape) }
    }

    /// Throws unless this is a rank-4 view whose axes match (a, b, c, d), where -1 matches any
    /// size. Fixed arity: an array argument would allocate on the training path.
    public func expect4(_ a: Int, _ b: Int, _ c: Int, _ d: Int, in layer: String) throws(ShapeMismatch) {
        let s = shape
        if s.rank == 4 && (a < 0 || s[0] == a) && (b < 0 || s[1] == b) && (c < 0 || s[2] == c) && (d < 0 || s[3] == d) { return }
        let text = "(" + [a, b, c, d].map { $0 < 0 ? "*" : String($0) }.joined(separator: ", ") + ")"
        throw ShapeMismatch(layer: layer, expected: text, actual: s)
    }
}
