/// Everything a layer needs to run one step: the backend, the activation arena, the parameter
/// store, the mode, the randomness keys, and the data-parallel group the replica belongs to.
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
    /// The replicas this one trains with: backward reports finished gradients to it, and
    /// SyncBatchNorm reduces its statistics through it. A single process by default.
    public var parallel: any DataParallel = SingleProcess()
    /// Backward recomputes the attention probabilities and GELU's output and CDF (less memory, a little
    /// more work) instead of keeping them; the backend's preference unless set (the same bits
    /// either way).
    public var recomputeInBackward: Bool
    /// The encoder keeps the activations only products read (LayerNorm outputs, qkv, merged
    /// heads, fc1's and GELU's outputs) as bf16 tensors: the backend's preference unless set.
    /// With fp32 products this rounds those activations (less memory, bf16-sized error).
    public var bf16Activations: Bool
    /// Linear layers read their weights from a bf16 copy of the parameters, rounded once per pass
    /// (`productWeight`): the backend's choice (where every product rounds its operands to bf16
    /// anyway, so the same bits) unless set. Off, each product rounds the weight it reads.
    public var bf16WeightCopy: Bool
    /// The encoder's residual sums are formed by the kernels that produce their other term
    /// (forward: the attention projection's and fc2's products, onto the residual and bias set
    /// in their output; backward: the LayerNorms' input-gradient kernels, which also write the
    /// bf16 copy the next products read), not by add and conversion passes. On by default; off
    /// for comparisons (forward's sums are then rounded in another order: bf16-close, not the
    /// same bits).
    public var fuseResidualSums = true
    /// In eval mode (no backward follows) the encoder releases each block's tensors once its
    /// output is written: it holds two residual streams and one block's temporaries instead of
    /// every block's saves. The same bits either way; off only to compare.
    public var releaseBlocksInEval = true
    /// While set, each encoder self-attention hands its probabilities (B, heads, N+1, N+1) here,
    /// in block order, before they are released (`Trainer.attentionRollout`).
    public var attentionProbabilitiesSink: ((Tensor) -> Void)?
    private var weightCopy: Tensor?
    private var weightCopyFresh = false
    private static let dropoutLabel = FNV1a.hash("dropout")

    public init(backend: any Backend, params: ParameterStore, arena: Arena? = nil,
                training: Bool = true, seed: UInt64 = 0) {
        precondition(params.backend === backend, "the parameter store belongs to another backend")
        self.backend = backend
        self.params = params
        self.arena = arena ?? Arena(backend: backend)
        self.training = training
        self.seed = seed
        recomputeInBackward = backend.recomputesInBackward
        bf16Activations = backend.storesBFloat16Activations
        bf16WeightCopy = backend.roundsProductOperandsToBFloat16
    }

    deinit { if let weightCopy { backend.release(weightCopy.base) } }

    /// Starts a forward/backward pass: rewinds the arena and the per-step stream numbering. The
    /// parameters are read as they are now: the bf16 weight copy is rounded again at first use.
    public func beginPass() {
        arena.reset()
        callIndex = 0
        weightCopyFresh = false
    }

    /// Parameter `s` as a product operand: with `bf16WeightCopy`, its view in a bf16 copy of every
    /// parameter, made by one conversion at the first call of a pass (so a weight read by several
    /// products, forward and backward, or by each of ERM's iterations, is rounded once per pass,
    /// not once per product); else the fp32 parameter. Every parameter's offset is a multiple of
    /// `ParameterLayout.parameterAlignment` floats, so its view in the copy starts 128-byte aligned.
    /// Parameters must not change within a pass (they change between passes: the optimizer, uploads).
    public func productWeight(_ s: ParameterSlot) -> Tensor {
        guard bf16WeightCopy, s.offset % 2 == 0 else { return params.value(s) }  // (a view starts on a float boundary)
        let values = params.values, n = values.count
        if weightCopy == nil {
            weightCopy = Tensor(backend.allocate(DType.bfloat16.floats(n)), Shape(n), dtype: .bfloat16)
        }
        guard let copy = weightCopy else { return params.value(s) }
        if !weightCopyFresh {
            backend.convert(values, into: copy)
            weightCopyFresh = true
        }
        return Tensor(copy.base + s.offset / 2, s.shape, dtype: .bfloat16)
    }

    /// The next random stream of this pass. Forward calls it in a fixed order, so stream numbers
    /// are the same on every rank and for every thread count.
    public func nextStream() -> RandomStream {
        callIndex += 1
        return RandomStream(seed: seed, stream: RandomStream.id(base: ExecutionContext.dropoutLabel, step, callIndex, 0))
    }

    @inlinable public func tensor(_ s: Shape, dtype: DType = .float32) -> Tensor { arena.tensor(s, dtype: dtype) }
    /// What an activation that only products read is kept as.
    public var productInputType: DType { bf16Activations ? .bfloat16 : .float32 }

    /// `t` as an operand of several products: where every product rounds to bf16 anyway, a bf16
    /// copy in a new arena tensor (rounded once, the same bits); else `t` itself.
    @inlinable public func productOperand(_ t: Tensor) -> Tensor {
        guard backend.roundsProductOperandsToBFloat16, t.dtype == .float32 else { return t }
        let r = tensor(t.shape, dtype: .bfloat16)
        backend.convert(t, into: r)
        return r
    }
    @inlinable public func zeros(_ s: Shape) -> Tensor { arena.zeros(s) }
}

extension ExecutionContext {
    /// A context with a fresh parameter store for `layout` on `backend`.
    public convenience init(backend: any Backend, layout: ParameterLayout, training: Bool = true, seed: UInt64 = 0) {
        self.init(backend: backend, params: ParameterStore(layout: layout, backend: backend), training: training, seed: seed)
    }
}
