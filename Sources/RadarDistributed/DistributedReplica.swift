import Foundation
import RadarCore

/// A replica in a data-parallel job over MPI or TCP: the `DataParallel` the training loop takes.
/// Gradients go through `GradientSync` (buckets, ring all-reduce, overlap with backward),
/// SyncBatchNorm statistics through a plain all-reduce, scores through an all-gather, epoch plans
/// through the coordinator, and, with `verifyReplicas`, every optimizer step ends with a
/// comparison of the replicas' parameter hashes.
public final class DistributedReplica: DataParallel, @unchecked Sendable {
    public let communicator: Communicator
    public let gradients: GradientSync
    public let coordinator: CoordinatorClient
    public let synchronizesBatchNorm: Bool
    public let verifyReplicas: Bool
    /// The run's epoch-plan parameters, which the coordinator's digest is computed from.
    public let planRequest: (seed: UInt64, batchSize: Int, accumulationSteps: Int, maxStepsPerEpoch: Int)
    public let timeout: TimeInterval
    /// Heartbeat payloads (progress) go through the coordinator client.
    public var progressInterval: TimeInterval = 1

    public init(communicator: Communicator, gradients: GradientSync, coordinator: CoordinatorClient, syncBatchNorm: Bool,
                verifyReplicas: Bool, planRequest: (seed: UInt64, batchSize: Int, accumulationSteps: Int, maxStepsPerEpoch: Int),
                timeout: TimeInterval) {
        self.communicator = communicator
        self.gradients = gradients
        self.coordinator = coordinator
        synchronizesBatchNorm = syncBatchNorm
        self.verifyReplicas = verifyReplicas
        self.planRequest = planRequest
        self.timeout = timeout
    }

    public var rank: Int { communicator.rank }
    public var worldSize: Int { communicator.size }

    /// Ends the job from inside forward or backward, where a failure cannot be thrown.
    private func fail(_ error: Error) -> Never {
        CoordinatorClient.reportFailure(error, rank: rank, client: coordinator)
        communicator.abort(1)
    }

    public func beginGradientReduction(_ store: ParameterStore, step: Int) { gradients.beginBackward(step: step) }
    public func gradientsFinal(from offset: Int) { gradients.gradientsFinal(from: offset) }
    public func finishGradientReduction(_ store: ParameterStore, nonFinite: Tensor) throws { try gradients.finish(nonFinite: nonFinite) }
    public func communicationStatistics() -> [String: Double] { gradients.takeStatistics() }

    public func reduceStatistics(_ t: Tensor) {
        let be = gradients.store.backend
        do {
            if let p = be.hostAddress(t) {
                try communicator.allReduce(p, count: t.count)
            } else {
                var host = be.download(t)
                try host.withUnsafeMutableBufferPointer { try communicator.allReduce($0.baseAddress!, count: t.count) }
                be.upload(host, into: t)
            }
        } catch { fail(error) }
    }

    public func stepFinished(_ store: ParameterStore, step: Int) throws {
        guard verifyReplicas else { return }
        let all = try communicator.allGather(withUnsafeBytes(of: store.contentHash()) { Data($0) })
        if Set(all).count != 1 {
            throw CommunicationError(rank: rank, peer: nil, reason: "replicas differ after optimizer step \(step)")
        }
    }

    public func agreeToStop(_ requested: Bool) throws -> Bool {
        var flag: Float = requested ? 1 : 0
        try communicator.allReduce(&flag, count: 1, op: .max, tensor: 5)
        return flag > 0
    }

    public func gather(_ values: [Float]) throws -> [[Float]] {
        let parts = try values.withUnsafeBytes { try communicator.allGather(Data($0)) }
        return parts.map { d in d.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) } }
    }

    /// The coordinator computes the same plan from its own copy of the manifest (when it has one).
    public func confirmEpochPlan(epoch: Int, digest: String) throws {
        let r = planRequest
        let theirs = try coordinator.epochPlanDigest(epoch: epoch, seed: r.seed, batchSize: r.batchSize, accumulationSteps: r.accumulationSteps,
                                                     maxStepsPerEpoch: r.maxStepsPerEpoch, timeout: timeout)
        if !theirs.isEmpty && theirs != digest {
            throw CommunicationError(rank: rank, peer: nil, reason: "epoch \(epoch) plan differs from the coordinator's (\(digest) vs \(theirs))")
        }
    }

    public func epochFinished(epoch: Int, step: Int, metrics: [String: Double]) {
        var v: [String: Any] = ["epoch": epoch, "step": step]
        for (k, x) in metrics where x.isFinite { v[k == "auc" ? "val_auc" : (k == "accuracy" ? "val_acc" : k)] = x }
        coordinator.sendProgress(v)
    }
}
