/// How a model replica takes part in data-parallel training: the one seam between the training
/// loop and other processes. `Trainer.step` calls it at the points where a replica must agree with
/// the others (gradients, non-finite steps, SyncBatchNorm statistics), and `TrainingRun` where a
/// run must (epoch plans, gathered scores, progress). `SingleProcess` is the identity; the
/// MPI/TCP implementation lives in RadarDistributed.
///
/// Methods called from inside forward or backward (`gradientsFinal`, `reduceStatistics`) cannot
/// fail back into the layer: an implementation that loses its peers ends the job with a message.
public protocol DataParallel: AnyObject {
    var rank: Int { get }
    var worldSize: Int { get }

    /// Before the backward of the micro-batch that completes an optimizer step: from now on
    /// `gradientsFinal` reports buckets of `store.grads` that may be reduced while backward goes on.
    func beginGradientReduction(_ store: ParameterStore, step: Int)
    /// Called by backward: every gradient at flat offset >= `offset` is final.
    func gradientsFinal(from offset: Int)
    /// After that backward: every gradient averaged over the replicas, the non-finite flag (one
    /// element, 0 or 1) replaced by its maximum over the replicas, and the BatchNorm running
    /// statistics made equal to rank 0's (as DDP's broadcast_buffers).
    func finishGradientReduction(_ store: ParameterStore, nonFinite: Tensor) throws

    /// SyncBatchNorm: whether batch statistics are reduced across replicas.
    var synchronizesBatchNorm: Bool { get }
    /// Sums `t` over the replicas, in place.
    func reduceStatistics(_ t: Tensor)

    /// After every optimizer step (e.g. compare replica hashes).
    func stepFinished(_ store: ParameterStore, step: Int) throws
    /// After every optimizer step: true when any replica was asked to stop (`requested` on at
    /// least one), so all stop after the same step.
    func agreeToStop(_ requested: Bool) throws -> Bool
    /// Every replica's `values` (equal lengths), in rank order.
    func gather(_ values: [Float]) throws -> [[Float]]
    /// Before each epoch: agree on the epoch plan, known by its digest.
    func confirmEpochPlan(epoch: Int, digest: String) throws
    /// After each epoch's validation.
    func epochFinished(epoch: Int, step: Int, metrics: [String: Double])
    /// Communication figures per optimizer step since the last call (see
    /// `GradientSync.takeStatistics`); empty where nothing is communicated.
    func communicationStatistics() -> [String: Double]
}

extension DataParallel {
    public func communicationStatistics() -> [String: Double] { [:] }
}

/// One process: nothing to reduce, gather or confirm.
public final class SingleProcess: DataParallel {
    public init() {}
    public var rank: Int { 0 }
    public var worldSize: Int { 1 }
    public func beginGradientReduction(_ store: ParameterStore, step: Int) {}
    public func gradientsFinal(from offset: Int) {}
    public func finishGradientReduction(_ store: ParameterStore, nonFinite: Tensor) throws {}
    public var synchronizesBatchNorm: Bool { false }
    public func reduceStatistics(_ t: Tensor) {}
    public func stepFinished(_ store: ParameterStore, step: Int) throws {}
    public func agreeToStop(_ requested: Bool) throws -> Bool { requested }
    public func gather(_ values: [Float]) throws -> [[Float]] { [values] }
    public func confirmEpochPlan(epoch: Int, digest: String) throws {}
    public func epochFinished(epoch: Int, step: Int, metrics: [String: Double]) {}
}
