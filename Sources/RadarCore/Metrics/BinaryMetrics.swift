/// Exact ranking metrics for binary labels (1 = fake), matching scikit-learn's definitions.
public enum BinaryMetrics {
    /// ROC AUC with ties counted half (the Mann-Whitney statistic), which equals
    /// sklearn.metrics.roc_auc_score. Returns nil when a class is missing.
    public static func rocAUC(scores: [Float], labels: [Int]) -> Double? {
        precondition(scores.count == labels.count, "\(scores.count) scores for \(labels.count) labels")
        let pos = labels.filter { $0 == 1 }.count, neg = labels.count - pos
        guard pos > 0 && neg > 0 else { return nil }
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

    /// Fraction of correct predictions at threshold 0.5 (score >= 0.5 means fake).
    public static func accuracy(scores: [Float], labels: [Int], threshold: Float = 0.5) -> Double {
        guard !scores.isEmpty else { return 0 }
        let correct = zip(scores, labels).filter { ($0 >= threshold ? 1 : 0) == $1 }.count
        return Double(correct) / Double(scores.count)
    }
}
