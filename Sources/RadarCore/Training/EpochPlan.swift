import Foundation

/// Which samples each rank trains on in an epoch: a pure function of (seed, epoch, manifest,
/// world size). The split's samples are shuffled by (seed, epoch), cut to a whole number of
/// global batches, and dealt round-robin, so every rank gets the same number of micro-batches.
public struct EpochPlan: Sendable {
    public let epoch: Int
    public let worldSize: Int
    public let batchesPerRank: Int
    /// The epoch's samples in global order; rank r takes positions r, r + worldSize, ...
    public let order: [SampleRef]

    /// Micro-batches per rank are a whole number of optimizer steps (`accumulationSteps` each),
    /// at most `maxStepsPerEpoch` of them when that is positive.
    public init(set: ShardSet, split: Split = .train, seed: UInt64, epoch: Int, worldSize: Int, batchSize: Int,
                accumulationSteps: Int = 1, maxStepsPerEpoch: Int = 0) {
        self.epoch = epoch
        self.worldSize = worldSize
        let all = set.shuffled(set.refs(split), seed: seed, epoch: epoch)
        var perRank = all.count / (batchSize * worldSize)
        // (A cap past what Int holds caps nothing: `--max-steps-per-epoch 9223372036854775807` trapped.)
        let (cap, overflow) = maxStepsPerEpoch.multipliedReportingOverflow(by: accumulationSteps)
        if maxStepsPerEpoch > 0 && !overflow { perRank = min(perRank, cap) }
        perRank = perRank / accumulationSteps * accumulationSteps
        batchesPerRank = perRank
        order = Array(all.prefix(perRank * batchSize * worldSize))
    }

    public func samples(rank: Int) -> [SampleRef] {
        stride(from: rank, to: order.count, by: worldSize).map { order[$0] }
    }

    /// A digest every rank (and the coordinator) can compare.
    public var digest: String {
        let d = SHA256Digest()
        let words = order.flatMap { [UInt32($0.shard), UInt32($0.index)] }
        words.withUnsafeBytes { d.update($0) }
        return String(d.finalize().prefix(16))
    }
}
