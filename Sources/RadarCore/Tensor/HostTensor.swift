/// A tensor that owns its memory: for constants (masks), fixtures and tests. Training-path
/// tensors come from an `Arena` instead.
public final class HostTensor: @unchecked Sendable {
    public let tensor: Tensor

    public init(_ shape: Shape, fill: Float = 0) {
        let p = UnsafeMutablePointer<Float>.allocate(capacity: max(shape.count, 1))
        p.initialize(repeating: fill, count: max(shape.count, 1))
        tensor = Tensor(p, shape)
    }

    public convenience init(_ shape: Shape, _ values: [Float]) {
        precondition(values.count == shape.count, "\(values.count) values for shape \(shape)")
        self.init(shape)
        tensor.copy(from: values)
    }

    deinit { tensor.base.deallocate() }

    public var shape: Shape { tensor.shape }
    public var values: [Float] { tensor.toArray() }
}
