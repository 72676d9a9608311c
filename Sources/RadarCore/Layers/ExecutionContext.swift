/// Everything a layer needs to run one step: the backend, the activation arena, the parameter
/// store, the mode, and the randomness keys.
public final class ExecutionContext: @unchecked Sendable {
    public let backend: any Backend
    public let arena: Arena
    public let params: ParameterStore
    /// Train mode: dropout active, BatchNorm uses (and updates) batch statistics.
    public var training: Bool
    /// Base seed of every random stream this context hands out.
    public var seed: UInt64
    /// The micro-batch counter; dropout masks are keyed by (seed, step, call index).
    public var step: UInt64 = 0
    private var callIndex: UInt64 = 0
    /// Set by benchmarks to time the parts of a step.
    public var profiler: StepProfiler?
    /// Called by backward with an offset: every gradient at or above it is final (lets a
    /// data-parallel trainer start reducing those buckets while backward continues).
    public var gradientsFinal: ((Int) -> Void)?
    /// Set for SyncBatchNorm: sums per-channel statistics across ranks in place.
    public var statisticsReducer: ((UnsafeMutablePointer<Float>, Int) -> Void)?
    private static let dropoutLabel: UInt64 = {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in "dropout".utf8 { h = (h ^ UInt64(byte)) &* 0x100_0000_01b3 }
        return h
    }()

    public init(backend: any Backend, params: ParameterStore, arena: Arena = Arena(),
                training: Bool = true, seed: UInt64 = 0) {
        self.backend = backend
        self.params = params
        self.arena = arena
        self.training = training
        self.seed = seed
    }

    /// Starts a forward/backward pass: rewinds the arena and the per-step stream numbering.
    public func beginPass() {
        arena.reset()
        callIndex = 0
    }

    /// The next random stream of this pass. Forward calls it in a fixed order, so stream numbers
    /// are the same on every rank and for every thread count.
    public func nextStream() -> RandomStream {
        callIndex += 1
        return RandomStream(seed: seed, stream: RandomStream.id(base: ExecutionContext.dropoutLabel, step, callIndex, 0))
    }

    @inlinable public func tensor(_ s: Shape) -> Tensor { arena.tensor(s) }
    @inlinable public func zeros(_ s: Shape) -> Tensor { arena.zeros(s) }
}
