import Foundation

/// A seeded generator (SplitMix64): the benchmark's shuffles and the bootstrap's draws, the same
/// on every machine.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    public var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Confidence intervals for the headline metrics by a bootstrap over sequences (`radar evaluate
/// --bootstrap N`): frames of one face sequence are not independent (WildDeepfake's test split
/// holds a few hundred sequences of many frames each), so each replicate draws as many sequences
/// as there are, with replacement, and takes all their frames. A replicate with one class only
/// has no AUC and is skipped (counted). The interval is the 2.5th to 97.5th percentile of the
/// replicates (numpy.percentile's linear interpolation).
public enum SequenceBootstrap {
    public struct Interval: Sendable, Equatable {
        public let low: Double, high: Double
    }

    public struct Result: Sendable {
        public let replicates: Int, skipped: Int, seed: UInt64
        /// auc, accuracy, eer: the 95% interval of each.
        public let intervals: [String: Interval]

        public var json: [String: Any] {
            var out: [String: Any] = ["replicates": replicates, "skipped": skipped, "seed": NSNumber(value: seed), "resampled": "sequences", "level": 0.95]
            for (k, v) in intervals { out[k] = [v.low, v.high] }
            return out
        }
    }

    /// The sequences each replicate draws (indices into the sorted distinct sequence names).
    public static func draws(sequenceCount n: Int, replicates: Int, seed: UInt64) -> [[Int]] {
        var rng = SplitMix64(seed: seed)
        return (0..<replicates).map { _ in (0..<n).map { _ in Int.random(in: 0..<n, using: &rng) } }
    }

    /// Each replicate's auc, accuracy and eer (nil for a replicate with one class only).
    public static func replicateMetrics(scores: [Float], labels: [Int], sequences: [String], draws: [[Int]]) -> [[String: Double]?] {
        let names = Array(Set(sequences)).sorted()
        var frames = [String: [Int]]()
        for (i, s) in sequences.enumerated() { frames[s, default: []].append(i) }
        let members = names.map { frames[$0]! }
        return draws.map { draw in
            var s: [Float] = [], y: [Int] = []
            for q in draw { for i in members[q] { s.append(scores[i]); y.append(labels[i]) } }
            guard let auc = BinaryMetrics.rocAUC(scores: s, labels: y) else { return nil }
            return ["auc": auc, "accuracy": BinaryMetrics.accuracy(scores: s, labels: y),
                    "eer": BinaryMetrics.equalErrorRate(scores: s, labels: y) ?? .nan]
        }
    }

    /// numpy.percentile(values, q) (linear interpolation); NaN for no values.
    public static func percentile(_ values: [Double], _ q: Double) -> Double {
        let v = values.sorted()
        guard !v.isEmpty else { return .nan }
        let pos = Double(v.count - 1) * q / 100, lo = Int(pos.rounded(.down)), hi = min(lo + 1, v.count - 1)
        return v[lo] + (v[hi] - v[lo]) * (pos - Double(lo))
    }

    /// The intervals from `replicates` draws of `seed`; nil without scores or with NaN scores.
    public static func run(scores: [Float], labels: [Int], sequences: [String], replicates: Int, seed: UInt64) -> Result? {
        guard !scores.isEmpty, !scores.contains(where: \.isNaN) else { return nil }
        let n = Set(sequences).count
        let metrics = replicateMetrics(scores: scores, labels: labels, sequences: sequences,
                                       draws: draws(sequenceCount: n, replicates: replicates, seed: seed))
        let kept = metrics.compactMap { $0 }
        var intervals: [String: Interval] = [:]
        for k in ["auc", "accuracy", "eer"] {
            let v = kept.compactMap { $0[k] }.filter(\.isFinite)
            intervals[k] = Interval(low: percentile(v, 2.5), high: percentile(v, 97.5))
        }
        return Result(replicates: replicates, skipped: metrics.count - kept.count, seed: seed, intervals: intervals)
    }
}
