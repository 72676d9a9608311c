/// A tensor that owns its device memory, freed with the value: constants (masks, loss weights),
/// the uploaded input batch, fixtures and tests. Per-step tensors come from an `Arena` instead.
public final class DeviceTensor: @unchecked Sendable {
    public let backend: any Backend
    public let tensor: Tensor

    /// Zero-filled.
    public init(_ backend: any Backend, _ shape: Shape) {
        self.backend = backend
        tensor = Tensor(backend.allocate(max(shape.count, 1)), shape)
    }

    public convenience init(_ backend: any Backend, _ shape: Shape, _ values: [Float]) {
        precondition(values.count == shape.count, "\(values.count) values for shape \(shape)")
        self.init(backend, shape)
        backend.upload(values, into: tensor)
    }

    public convenience init(_ backend: any Backend, _ host: HostTensor) {
        self.init(backend, host.shape)
        backend.upload(UnsafeBufferPointer(rebasing: host.storage[0..<host.count]), into: tensor)
    }

    deinit { backend.release(tensor.base) }

    public var shape: Shape { tensor.shape }
    /// A host copy (a host synchronisation).
    public var values: [Float] { backend.download(tensor) }
}

/// Host memory with a shape: what the data loader produces and what tests and tools build
/// inputs in. Not a `Tensor`: kernels never see it; it reaches the device through `upload`.
public final class HostTensor: @unchecked Sendable {
    public let shape: Shape
    public let storage: UnsafeMutableBufferPointer<Float>

    public init(_ shape: Shape, fill: Float = 0) {
        self.shape = shape
        storage = .allocate(capacity: max(shape.count, 1))
        storage.initialize(repeating: fill)
    }

    public convenience init(_ shape: Shape, _ values: [Float]) {
        precondition(values.count == shape.count, "\(values.count) values for shape \(shape)")
        self.init(shape)
        _ = storage.update(fromContentsOf: values)
    }

    /// A tensor sized from the command line (a benchmark's or the demo's whole input): checked
    /// against what the machine can give first (`radar bench step --config full --batch 65536`
    /// trapped in Swift's allocator). Not in `init`: the loader makes one per batch.
    public static func checked(_ shape: Shape) -> HostTensor {
        HostMemory.requireAvailable(max(shape.count, 1) * MemoryLayout<Float>.size)
        return HostTensor(shape)
    }

    deinit { storage.deallocate() }

    public var count: Int { shape.count }
    public var pointer: UnsafeMutablePointer<Float> { storage.baseAddress! }
    /// The first `count` values (what `upload` takes).
    public var buffer: UnsafeBufferPointer<Float> { UnsafeBufferPointer(rebasing: storage[0..<count]) }
    public var values: [Float] { Array(storage.prefix(shape.count)) }
}
