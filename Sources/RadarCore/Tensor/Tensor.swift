/// A view of contiguous Float32 memory with a shape. It owns nothing: the memory belongs to an
/// `Arena` (activations), a `ParameterStore` (parameters, gradients) or a test. Views are plain
/// values (pointer + inline shape), so creating one never allocates.
///
/// On the CPU backend `base` is host memory; a device backend would hand out device addresses in
/// the same type and only its own kernels would dereference them.
public struct Tensor: @unchecked Sendable {
    public let base: UnsafeMutablePointer<Float>
    public let shape: Shape

    @inlinable public init(_ base: UnsafeMutablePointer<Float>, _ shape: Shape) {
        self.base = base
        self.shape = shape
    }

    @inlinable public var count: Int { shape.count }

    @inlinable public var buffer: UnsafeMutableBufferPointer<Float> {
        UnsafeMutableBufferPointer(start: base, count: shape.count)
    }

    /// The same memory seen with another shape of equal element count.
    public func reshaped(_ s: Shape) -> Tensor {
        precondition(s.count == count, "reshape \(shape) -> \(s) changes the element count")
        return Tensor(base, s)
    }

    /// Host-side copy of the values (tests, tooling; never on the training path).
    public func toArray() -> [Float] { Array(buffer) }

    public func fill(_ v: Float) { buffer.update(repeating: v) }

    public func copy(from values: [Float]) {
        precondition(values.count == count, "copy of \(values.count) values into \(shape)")
        _ = buffer.update(fromContentsOf: values)
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
