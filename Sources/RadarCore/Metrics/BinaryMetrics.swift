/// Exact ranking metrics for binary labels (1 = fake), matching scikit-learn's definitions.
public enum BinaryMetrics {
    /// ROC AUC with ties counted half (the Mann-Whitney statistic), which equals
    /// sklearn.metrics.roc_auc_score. Returns nil when a class is missing or a score is NaN
    /// (scikit-learn refuses NaN input; a diverged model's scores are NaN).
    public static func rocAUC(scores: [Float], labels: [Int]) -> Double? {
        rocAUC(scores: scores.map(Double.init), labels: labels)
    }

    public static func rocAUC(scores: [Double], labels: [Int]) -> Double? {
        precondition(scores.count == labels.count, "\(scores.count) scores for \(labels.count) labels")
        let pos = labels.filter { $0 == 1 }.count, neg = labels.count - pos
        guard pos > 0 && neg > 0, !scores.contains(where: \.isNaN) else { return nil }
        let order = scores.indices.sorted { scores[$0] < scores[$1] }
        var rankSumPos = 0.0
        var i = 0
        while i < order.count {
            var j = i
            while j + 1 < order.count && scores[order[j + 1]] == scores[order[i]] { j += 1 }
            let avgRank = Double(i + j) / 2 + 1  // 1-based average rank of the tie group
            for k in i...j where labels[order[k]] == 1 { rankSumPos += avgRank }
            i = j + 1
        }
        return (rankSumPos - Double(pos) * Double(pos + 1) / 2) / (Double(pos) * Double(neg))
    }

    /// Fraction of correct predictions at threshold 0.5 (score >= 0.5 means fake); NaN when a
    /// score is NaN (neither side of the threshold).
    public static func accuracy(scores: [Float], labels: [Int], threshold: Float = 0.5) -> Double {
        guard !scores.isEmpty else { return 0 }
        guard !scores.contains(where: \.isNaN) else { return .nan }
        let correct = zip(scores, labels).filter { ($0 >= threshold ? 1 : 0) == $1 }.count
        return Double(correct) / Double(scores.count)
    }

    /// The ROC curve as scikit-learn's roc_curve(drop_intermediate=False) builds it: one point per
    /// distinct score, from the highest threshold down, starting at (0, 0). With a NaN score
    /// there is no order to walk, and the curve is that first point alone.
    public static func rocCurve(scores: [Float], labels: [Int]) -> (fpr: [Double], tpr: [Double], thresholds: [Float]) {
        var fpr = [0.0], tpr = [0.0], thr = [Float.infinity]
        guard !scores.contains(where: \.isNaN) else { return (fpr, tpr, thr) }
        let order = scores.indices.sorted { scores[$0] > scores[$1] }
        let pos = Double(labels.filter { $0 == 1 }.count), neg = Double(labels.count) - pos
        var tp = 0.0, fp = 0.0
        var i = 0
        while i < order.count {
            let s = scores[order[i]]
            while i < order.count && scores[order[i]] == s {
                if labels[order[i]] == 1 { tp += 1 } else { fp += 1 }
                i += 1
            }
            fpr.append(neg > 0 ? fp / neg : 0)
            tpr.append(pos > 0 ? tp / pos : 0)
            thr.append(s)
        }
        return (fpr, tpr, thr)
    }

    /// Equal error rate: where the false-positive rate equals the false-negative rate (1 - TPR),
    /// linearly interpolated between the two ROC points that bracket it (nil with a NaN score:
    /// the curve is then its first point alone).
    public static func equalErrorRate(scores: [Float], labels: [Int]) -> Double? {
        let pos = labels.filter { $0 == 1 }.count
        guard pos > 0 && pos < labels.count else { return nil }
        let (fpr, tpr, _) = rocCurve(scores: scores, labels: labels)
        for k in 1..<fpr.count {
            let d0 = fpr[k - 1] - (1 - tpr[k - 1]), d1 = fpr[k] - (1 - tpr[k])
            if d0 <= 0 && d1 >= 0 {
                let t = d1 == d0 ? 0 : -d0 / (d1 - d0)
                return fpr[k - 1] + t * (fpr[k] - fpr[k - 1])
            }
        }
        return nil
    }

    /// Average precision as sklearn.metrics.average_precision_score: sum over distinct
    /// thresholds (high to low) of (R_n - R_{n-1}) P_n; nil without positives or with a NaN score.
    public static func averagePrecision(scores: [Float], labels: [Int]) -> Double? {
        let pos = Double(labels.filter { $0 == 1 }.count)
        guard pos > 0, !scores.contains(where: \.isNaN) else { return nil }
        let order = scores.indices.sorted { scores[$0] > scores[$1] }
        var tp = 0.0, seen = 0.0, ap = 0.0, lastRecall = 0.0
        var i = 0
        while i < order.count {
            let s = scores[order[i]]
            while i < order.count && scores[order[i]] == s {
                if labels[order[i]] == 1 { tp += 1 }
                seen += 1
                i += 1
            }
            let recall = tp / pos, precision = tp / seen
            ap += (recall - lastRecall) * precision
            lastRecall = recall
        }
        return ap
    }

    /// AUC over sequences, each scored by the mean probability of its frames (its label is that
    /// of its frames).
    public static func sequenceAUC(scores: [Float], labels: [Int], sequences: [String]) -> Double? {
        var sum: [String: (Double, Int, Int)] = [:]
        for i in scores.indices {
            let e = sum[sequences[i]] ?? (0, 0, labels[i])
            sum[sequences[i]] = (e.0 + Double(scores[i]), e.1 + 1, labels[i])
        }
        let keys = sum.keys.sorted()
        return rocAUC(scores: keys.map { sum[$0]!.0 / Double(sum[$0]!.1) }, labels: keys.map { sum[$0]!.2 })
    }

    /// The Brier score, as sklearn.metrics.brier_score_loss: the mean of (p(fake) - label)^2
    /// (0 is perfect; 0.25 is a constant 0.5). NaN with a NaN score, nil with no scores.
    public static func brierScore(scores: [Float], labels: [Int]) -> Double? {
        guard !scores.isEmpty else { return nil }
        var sum = 0.0
        for (s, y) in zip(scores, labels) { let d = Double(s) - Double(y); sum += d * d }
        return sum / Double(scores.count)
    }

    /// Expected calibration error of p(fake): the scores in `bins` equal-width bins binned as
    /// sklearn.calibration.calibration_curve(strategy="uniform") bins them (a score equal to an
    /// inner edge k / bins goes to the bin below it), then the sum over non-empty bins of
    /// (its share of the images) x |fraction fake - mean score|. How far "0.9 fake" is from
    /// nine fakes in ten. NaN with a NaN score, nil with no scores.
    public static func expectedCalibrationError(scores: [Float], labels: [Int], bins: Int = 10) -> Double? {
        guard !scores.isEmpty else { return nil }
        guard !scores.contains(where: \.isNaN) else { return .nan }
        let edges = (1..<bins).map { Double($0) * (1 / Double(bins)) }  // numpy.linspace's inner edges
        var total = [Int](repeating: 0, count: bins), fake = [Double](repeating: 0, count: bins), sum = [Double](repeating: 0, count: bins)
        for (s, y) in zip(scores, labels) {
            let p = Double(s), b = edges.firstIndex { p <= $0 } ?? bins - 1
            total[b] += 1; fake[b] += Double(y); sum[b] += p
        }
        var ece = 0.0
        for b in 0..<bins where total[b] > 0 {
            let n = Double(total[b])
            ece += n / Double(scores.count) * abs(fake[b] / n - sum[b] / n)
        }
        return ece
    }

    /// Why AUC is undefined for these scores and labels (NaN scores, or one class only), or nil.
    public static func undefinedAUCReason(scores: [Float], labels: [Int]) -> String? {
        let nan = scores.filter(\.isNaN).count
        if nan > 0 { return "\(nan) of \(scores.count) scores are NaN (the model's outputs are not finite)" }
        let fake = labels.filter { $0 == 1 }.count
        if fake == 0 || fake == labels.count { return "\(labels.count - fake) real and \(fake) fake images: AUC needs both" }
        return nil
    }

    /// The names `all` gives, in the order reports list them.
    public static let names = ["auc", "accuracy", "eer", "average_precision", "sequence_auc", "ece", "brier", "log_loss"]

    /// All of the above as a dictionary (metrics.json's names); missing values are NaN. With the
    /// final logits the scores came from, also `log_loss` (mean binary cross-entropy in nats,
    /// from the logits divided by `temperature`: exact where float32 probabilities round to 0 or 1).
    public static func all(scores: [Float], labels: [Int], sequences: [String], logits: [Float]? = nil, temperature: Double = 1) -> [String: Double] {
        var m = all(scores: scores, labels: labels, sequences: sequences)
        if let logits, !labels.isEmpty {
            m["log_loss"] = TemperatureScaling.logLoss(logits: logits, labels: labels, temperature: temperature)
        }
        return m
    }

    static func all(scores: [Float], labels: [Int], sequences: [String]) -> [String: Double] {
        ["auc": rocAUC(scores: scores, labels: labels) ?? .nan,
         "accuracy": accuracy(scores: scores, labels: labels),
         "eer": equalErrorRate(scores: scores, labels: labels) ?? .nan,
         "average_precision": averagePrecision(scores: scores, labels: labels) ?? .nan,
         "sequence_auc": sequenceAUC(scores: scores, labels: labels, sequences: sequences) ?? .nan,
         "brier": brierScore(scores: scores, labels: labels) ?? .nan,
         "ece": expectedCalibrationError(scores: scores, labels: labels) ?? .nan]
    }
}
