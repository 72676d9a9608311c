#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Where one named parameter lives inside the flat buffers.
public struct ParameterSlot: Sendable, Equatable {
    public let name: String
    public let offset: Int
    public let shape: Shape
    public var count: Int { shape.count }
}

/// All trainable parameters in one contiguous Float32 device buffer, with gradients in a second
/// buffer of the same layout (the Adam moments follow it too). Each parameter is reachable by
/// its PyTorch state_dict name. Non-trainable buffers (BatchNorm running statistics) are kept by
/// name in a separate flat buffer, and integer counters (`num_batches_tracked`) as Int64 on the
/// host: they count steps, they are not data.
///
/// Layers register their tensors while the model is built (`ParameterLayout`), then the store is
/// allocated once, by the backend.
public final class ParameterStore: @unchecked Sendable {
    public let layout: ParameterLayout
    public let backend: any Backend
    /// Every parameter, flat (parameterCount).
    public let values: Tensor
    /// Every gradient, flat, in the layout of `values`: allocated at first use (the first
    /// backward, or the gradient synchronisation's set-up), so a store that only runs forwards
    /// (predict, evaluate, serve, export) never holds it.
    public var grads: Tensor {
        if let g = gradStorage { return g }
        pthread_mutex_lock(gradLock)
        defer { pthread_mutex_unlock(gradLock) }
        if let g = gradStorage { return g }
        let g = Tensor(backend.allocate(max(layout.parameterCount, 1)), Shape(layout.parameterCount))
        gradStorage = g
        return g
    }
    private var gradStorage: Tensor?
    private let gradLock: UnsafeMutablePointer<pthread_mutex_t>
    /// Whether `grads` has been allocated.
    public var holdsGradients: Bool { gradStorage != nil }
    /// Every BatchNorm running statistic, flat (layout.bufferCount).
    public let buffers: Tensor
    /// Int64 counters in `layout.counterNames` order (host memory).
    public let counters: UnsafeMutableBufferPointer<Int64>

    public init(layout: ParameterLayout, backend: any Backend) {
        self.layout = layout
        self.backend = backend
        values = Tensor(backend.allocate(max(layout.parameterCount, 1)), Shape(layout.parameterCount))
        gradLock = .allocate(capacity: 1)
        pthread_mutex_init(gradLock, nil)
        buffers = Tensor(backend.allocate(max(layout.bufferCount, 1)), Shape(layout.bufferCount))
        counters = .allocate(capacity: max(layout.counterNames.count, 1))
        counters.initialize(repeating: 0)
    }

    deinit {
        backend.release(values.base)
        if let g = gradStorage { backend.release(g.base) }
        pthread_mutex_destroy(gradLock)
        gradLock.deallocate()
        backend.release(buffers.base)
        counters.deallocate()
    }

    public func counter(named name: String) -> Int64? {
        layout.counterNames.firstIndex(of: name).map { counters[$0] }
    }

    public var parameterCount: Int { layout.parameterCount }

    public func value(_ s: ParameterSlot) -> Tensor { Tensor(values.base + s.offset, s.shape) }
    public func grad(_ s: ParameterSlot) -> Tensor { Tensor(grads.base + s.offset, s.shape) }
    public func buffer(_ s: ParameterSlot) -> Tensor { Tensor(buffers.base + s.offset, s.shape) }

    public func value(named name: String) -> Tensor? { layout.parameter(named: name).map(value) }
    public func grad(named name: String) -> Tensor? { layout.parameter(named: name).map(grad) }
    public func buffer(named name: String) -> Tensor? { layout.buffer(named: name).map(buffer) }

    public func zeroGrads() { backend.fill(grads, 0) }

    /// Host copies (downloads) and replacements (uploads) of the flat buffers, for checkpoints,
    /// the best-weights copy, hashing and tests.
    public func downloadValues() -> [Float] { backend.download(values) }
    public func downloadGrads() -> [Float] { backend.download(grads) }
    public func downloadBuffers() -> [Float] { backend.download(buffers) }
    public func uploadValues(_ v: [Float]) { backend.upload(v, into: values) }
    public func uploadBuffers(_ v: [Float]) { backend.upload(v, into: buffers) }

    /// FNV-1a over the bit patterns of every parameter and buffer (downloaded): equal on replicas
    /// that hold the same model.
    public func contentHash() -> UInt64 {
        var h = FNV1a()
        for v in downloadValues() { h.mix(v.bitPattern) }
        for v in downloadBuffers() { h.mix(v.bitPattern) }
        return h.value
    }
}

/// The ordered list of named parameter and buffer slots. Registration order is layer order; the
/// gradient buckets of the distributed trainer walk it in reverse.
public final class ParameterLayout: @unchecked Sendable {
    public private(set) var parameters: [ParameterSlot] = []
    public private(set) var bufferSlots: [ParameterSlot] = []
    public private(set) var counterNames: [String] = []
    private var parameterIndex: [String: Int] = [:]
    private var bufferIndex: [String: Int] = [:]
    /// The flat parameter buffer's length: every parameter plus the zero gaps that align them.
    public private(set) var parameterCount = 0
    /// The parameters' elements (what a model's size is quoted in; no gaps).
    public private(set) var parameterElements = 0
    public private(set) var bufferCount = 0

    /// Every parameter starts at a multiple of this many floats (256 bytes; its bf16 copy's view
    /// at 128). Packed, a weight after a tensor of odd length would start 4-byte aligned, and so
    /// would its gradient and bf16 copy: cuBLAS's fast kernels want 16-byte aligned operands. The
    /// gaps are zero and no layer reads them (at most 63 floats per parameter).
    public static let parameterAlignment = 64

    public init() {}

    /// Registers a trainable tensor; names must be unique.
    public func parameter(_ name: String, _ shape: Shape) -> ParameterSlot {
        precondition(parameterIndex[name] == nil && bufferIndex[name] == nil, "duplicate tensor name \(name)")
        let a = ParameterLayout.parameterAlignment
        let s = ParameterSlot(name: name, offset: (parameterCount + a - 1) / a * a, shape: shape)
        parameterIndex[name] = parameters.count
        parameters.append(s)
        parameterCount = s.offset + shape.count
        parameterElements += shape.count
        return s
    }

    /// Registers a non-trainable Float32 tensor kept by name (e.g. BatchNorm running_mean).
    public func buffer(_ name: String, _ shape: Shape) -> ParameterSlot {
        precondition(parameterIndex[name] == nil && bufferIndex[name] == nil, "duplicate tensor name \(name)")
        let s = ParameterSlot(name: name, offset: bufferCount, shape: shape)
        bufferIndex[name] = bufferSlots.count
        bufferSlots.append(s)
        bufferCount += shape.count
        return s
    }

    /// Registers an Int64 counter (e.g. BatchNorm num_batches_tracked); returns its index.
    public func counter(_ name: String) -> Int {
        precondition(!counterNames.contains(name), "duplicate counter \(name)")
        counterNames.append(name)
        return counterNames.count - 1
    }

    public func parameter(named n: String) -> ParameterSlot? { parameterIndex[n].map { parameters[$0] } }
    public func buffer(named n: String) -> ParameterSlot? { bufferIndex[n].map { bufferSlots[$0] } }

    /// A stable hash of names, shapes and offsets, for comparing layouts across processes.
    public var fingerprint: UInt64 {
        var h = FNV1a()
        for p in parameters { h.mix("p:\(p.name)\(p.shape)@\(p.offset);") }
        for b in bufferSlots { h.mix("b:\(b.name)\(b.shape)@\(b.offset);") }
        for c in counterNames { h.mix("c:\(c);") }
        return h.value
    }
}
