import Foundation

/// The metrics of each head of the model on a split (`radar evaluate`'s `heads`, `gate` and
/// `attention`): whether the boundary branch, the frequency branch, the evidence refinement and
/// the external classifier each separate real from fake, what the gated fusion adds, and how the
/// refinement's last iteration weighs the two kinds of evidence on real and on fake images.
public struct HeadMetrics {
    public private(set) var boundary: [Float] = [], frequency: [Float] = [], reasoning: [Float] = [], external: [Float] = []
    /// The last iteration's attention on [boundary, frequency] evidence, per image.
    public private(set) var attention: [[Float]] = []
    public private(set) var gate: Float = .nan
    public let useBadm: Bool, useAadm: Bool

    public init(useBadm: Bool, useAadm: Bool) {
        self.useBadm = useBadm
        self.useAadm = useAadm
    }

    public mutating func append(_ e: Explanation) {
        if let b = e.boundary { boundary.append(b) }
        if let f = e.frequency { frequency.append(f) }
        reasoning.append(e.reasoning)
        external.append(e.external)
        attention.append(e.attention.last ?? [.nan, .nan])
        gate = e.gate  // one parameter: the same for every image
    }

    /// JSON-ready: `heads` (each head's metrics as `BinaryMetrics.all` names them; null for a
    /// disabled branch), `gate` (alpha, the reasoning logit's weight) and `attention` (mean
    /// last-iteration attention on each evidence token over the real and over the fake images;
    /// null for a class with no image). Missing values are NaN (written as null).
    public func report(labels: [Int], sequences: [String]) -> [String: Any] {
        func metrics(_ s: [Float]) -> Any { s.count == labels.count ? BinaryMetrics.all(scores: s, labels: labels, sequences: sequences) : NSNull() }
        var heads: [String: Any] = ["reasoning": metrics(reasoning), "external": metrics(external)]
        heads["boundary"] = useBadm ? metrics(boundary) : NSNull()
        heads["frequency"] = useAadm ? metrics(frequency) : NSNull()
        var byClass: [String: Any] = [:]
        for (name, label) in [("real", 0), ("fake", 1)] {
            let rows = zip(attention, labels).filter { $0.1 == label }.map(\.0)
            byClass[name] = rows.isEmpty ? NSNull() : [
                "boundary": rows.reduce(0.0) { $0 + Double($1[0]) } / Double(rows.count),
                "frequency": rows.reduce(0.0) { $0 + Double($1[1]) } / Double(rows.count)]
        }
        return ["heads": heads, "gate": Double(gate), "attention": byClass]
    }

    /// A report's numbers as TensorBoard scalars: `<prefix>/<head>_auc` for each enabled head,
    /// `<prefix>/gate`, `<prefix>/attention_frequency_{real,fake}` (the last iteration's mean
    /// attention on the frequency evidence; the boundary's is 1 minus it).
    public static func scalars(_ report: [String: Any], prefix: String) -> [(String, Double)] {
        var out: [(String, Double)] = []
        let heads = report["heads"] as? [String: Any] ?? [:]
        for name in ["boundary", "frequency", "reasoning", "external"] {
            // From metrics.jsonl a head's other metrics may be null: read the AUC alone.
            if let auc = (heads[name] as? [String: Any])?["auc"] as? Double { out.append(("\(prefix)/\(name)_auc", auc)) }
        }
        if let g = report["gate"] as? Double { out.append(("\(prefix)/gate", g)) }
        let attention = report["attention"] as? [String: Any] ?? [:]
        for name in ["real", "fake"] {
            if let f = (attention[name] as? [String: Any])?["frequency"] as? Double { out.append(("\(prefix)/attention_frequency_\(name)", f)) }
        }
        return out
    }
}
