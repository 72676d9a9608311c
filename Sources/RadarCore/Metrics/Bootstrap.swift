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
    /// A replicate holds each frame as many times as its sequence was drawn, so the frames are
    /// sorted once and each replicate is one weighted pass over them (`WeightedRanking`): the
    /// same values as scoring the replicate's frames anew (to rounding: a test compares with
    /// numpy to 1e-12), without a sort per replicate.
    public static func replicateMetrics(scores: [Float], labels: [Int], sequences: [String], draws: [[Int]]) -> [[String: Double]?] {
        let names = Array(Set(sequences)).sorted()
        let index = Dictionary(uniqueKeysWithValues: names.enumerated().map { ($1, $0) })
        let ranking = WeightedRanking(scores: scores, labels: labels, groups: sequences.map { index[$0]! })
        var weights = [Double](repeating: 0, count: names.count)
        return draws.map { draw in
            for q in weights.indices { weights[q] = 0 }
            for q in draw { weights[q] += 1 }
            return ranking.metrics(groupWeights: weights)
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

/// Is detector B better than detector A on the same images (`radar compare`)? Both are scored on
/// the same bootstrap replicates (each draws the split's sequences with replacement and takes
/// all their frames, as `SequenceBootstrap`), so the replicates' differences B - A carry the
/// correlation between the two: the test is paired. For each of AUC, accuracy and EER: the point
/// difference, the 95% percentile interval of the replicates' differences, and a two-sided
/// p-value from z = difference / sd(replicate differences) (ddof 1), p = erfc(|z| / sqrt 2): the
/// statistic of pROC's `roc.test(method = "bootstrap")`, here over sequences, not frames.
public enum PairedSequenceBootstrap {
    public struct Difference: Sendable, Equatable {
        public let a: Double, b: Double
        /// b - a, and the interval and p-value of the replicates' differences.
        public let difference: Double, low: Double, high: Double, pValue: Double
    }

    public struct Result: Sendable {
        public let replicates: Int, skipped: Int, seed: UInt64
        /// auc, accuracy, eer.
        public let metrics: [String: Difference]

        public var json: [String: Any] {
            var out: [String: Any] = ["replicates": replicates, "skipped": skipped, "seed": NSNumber(value: seed), "resampled": "sequences", "level": 0.95]
            for (k, d) in metrics {
                out[k] = ["a": d.a, "b": d.b, "difference": d.difference, "interval": [d.low, d.high], "p_value": d.pValue] as [String: Any]
            }
            return out
        }
    }

    /// nil without scores, with a NaN score, or with one class (no AUC to compare).
    public static func run(a: [Float], b: [Float], labels: [Int], sequences: [String], replicates: Int, seed: UInt64) -> Result? {
        precondition(a.count == b.count && a.count == labels.count && a.count == sequences.count, "\(a.count), \(b.count) scores for \(labels.count) labels")
        guard !a.isEmpty, !a.contains(where: \.isNaN), !b.contains(where: \.isNaN), BinaryMetrics.rocAUC(scores: a, labels: labels) != nil else { return nil }
        let draws = SequenceBootstrap.draws(sequenceCount: Set(sequences).count, replicates: replicates, seed: seed)
        let ra = SequenceBootstrap.replicateMetrics(scores: a, labels: labels, sequences: sequences, draws: draws)
        let rb = SequenceBootstrap.replicateMetrics(scores: b, labels: labels, sequences: sequences, draws: draws)
        let pairs = zip(ra, rb).compactMap { x, y in x.flatMap { x in y.map { (x, $0) } } }
        let point = { (s: [Float]) -> [String: Double] in
            ["auc": BinaryMetrics.rocAUC(scores: s, labels: labels) ?? .nan, "accuracy": BinaryMetrics.accuracy(scores: s, labels: labels),
             "eer": BinaryMetrics.equalErrorRate(scores: s, labels: labels) ?? .nan]
        }
        let (pa, pb) = (point(a), point(b))
        var metrics: [String: Difference] = [:]
        for k in ["auc", "accuracy", "eer"] {
            let d = pairs.compactMap { x, y -> Double? in
                guard let u = x[k], let v = y[k], u.isFinite, v.isFinite else { return nil }
                return v - u
            }
            let observed = pb[k]! - pa[k]!
            var p = Double.nan
            if d.count > 1 {
                let mean = d.reduce(0, +) / Double(d.count)
                let sd = (d.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(d.count - 1)).squareRoot()
                p = sd > 0 ? erfc(abs(observed / sd) / 2.0.squareRoot()) : (observed == 0 ? 1 : 0)
            }
            metrics[k] = Difference(a: pa[k]!, b: pb[k]!, difference: observed,
                                    low: SequenceBootstrap.percentile(d, 2.5), high: SequenceBootstrap.percentile(d, 97.5), pValue: p)
        }
        return Result(replicates: replicates, skipped: replicates - pairs.count, seed: seed, metrics: metrics)
    }
}

/// Frames sorted once by score (high to low, in tie groups), for metrics of the same frames
/// weighted by their group's count (a bootstrap replicate): AUC with ties counted half,
/// accuracy at 0.5 and the EER as `BinaryMetrics` computes them on the frames repeated.
struct WeightedRanking {
    let labels: [Int], groups: [Int], scores: [Float]
    /// Frame indices from the highest score down, and where each tie group ends.
    let order: [Int], ends: [Int]

    init(scores: [Float], labels: [Int], groups: [Int]) {
        (self.scores, self.labels, self.groups) = (scores, labels, groups)
        order = scores.indices.sorted { scores[$0] > scores[$1] }
        var ends: [Int] = []
        for i in order.indices where i + 1 == order.count || scores[order[i + 1]] != scores[order[i]] { ends.append(i + 1) }
        self.ends = ends
    }

    /// auc, accuracy, eer of the frames each taken `groupWeights[group]` times; nil with one class.
    func metrics(groupWeights w: [Double]) -> [String: Double]? {
        var pos = 0.0, neg = 0.0, correct = 0.0
        for i in labels.indices {
            let x = w[groups[i]]
            if labels[i] == 1 { pos += x } else { neg += x }
            if (scores[i] >= 0.5 ? 1 : 0) == labels[i] { correct += x }
        }
        guard pos > 0 && neg > 0 else { return nil }
        // From the highest score down: the ROC curve's points, and for the AUC each group's
        // positives against the negatives below it (and half those tied with it).
        var tp = 0.0, fp = 0.0, wins = 0.0
        var fpr = [0.0], tpr = [0.0]
        var start = 0
        for end in ends {
            var p = 0.0, n = 0.0
            for k in start..<end {
                let i = order[k], x = w[groups[i]]
                if labels[i] == 1 { p += x } else { n += x }
            }
            start = end
            guard p + n > 0 else { continue }  // no frame of this score was drawn
            wins += p * (neg - fp - n + 0.5 * n)
            tp += p; fp += n
            fpr.append(fp / neg); tpr.append(tp / pos)
        }
        var eer = Double.nan
        for k in 1..<fpr.count {
            let d0 = fpr[k - 1] - (1 - tpr[k - 1]), d1 = fpr[k] - (1 - tpr[k])
            if d0 <= 0 && d1 >= 0 {
                let t = d1 == d0 ? 0 : -d0 / (d1 - d0)
                eer = fpr[k - 1] + t * (fpr[k] - fpr[k - 1])
                break
            }
        }
        return ["auc": wins / (pos * neg), "accuracy": correct / (pos + neg), "eer": eer]
    }
}
