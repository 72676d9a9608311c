import ArgumentParser
import Foundation
import RadarCLI
import RadarCore

struct Compare: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Is detector B better than detector A on the same images? Paired bootstrap over sequences of the AUC, accuracy and EER differences (JSON on stdout).",
        discussion: """
        A and B are radar evaluate --predictions files (or any CSV with key, label and probability columns, and sequence \
        and perturbation when known) scored on the same images. Each replicate draws the sequences with replacement and \
        scores both detectors on the same frames; for each metric the output gives A's and B's values, B - A, the 95% \
        interval of the replicates' differences and a two-sided p-value (z = difference / sd of the replicates' \
        differences, as pROC's bootstrap test).
        """)
    @Argument(help: "Two predictions files: A, then B.") var files: [String]
    @Option(help: "The pass to compare: empty for the clean one, else as radar evaluate --perturb named it (jpeg:50).") var perturbation = ""
    @Option(help: "Bootstrap replicates.") var bootstrap = 2000
    @Option(help: "The bootstrap's seed (the same seed and files give the same intervals).") var seed: UInt64 = 0

    func validate() throws {
        guard files.count == 2 else { throw ValidationError("expected two predictions files (A, then B), got \(files.count)") }
        try requireFlag((10...100_000).contains(bootstrap), "bootstrap", "in 10...100000", bootstrap)
    }

    func run() throws {
        try failing {
            let (ta, tb) = (try PredictionTable(path: files[0]), try PredictionTable(path: files[1]))
            let which = perturbation.isEmpty ? "clean pass" : "pass \(perturbation)"
            let (pa, pb) = (try ta.pass(perturbation), try tb.pass(perturbation))
            for (t, p) in [(ta, pa), (tb, pb)] {
                if t.rows.isEmpty { throw ValidationError("\(t.path): no predictions (a header line alone)") }
                if p.isEmpty {
                    throw ValidationError("\(t.path): no \(which) (its passes: " + t.perturbations.map { $0.isEmpty ? "clean" : $0 }.joined(separator: ", ") + ")")
                }
                // It was "no AUC to compare (... or a probability that is NaN)", naming no file or image.
                if let bad = p.values.filter({ $0.probability.isNaN }).map(\.key).min() {
                    let count = p.values.filter { $0.probability.isNaN }.count
                    throw ValidationError("\(t.path): the \(which) has \(count) NaN probabilit\(count == 1 ? "y" : "ies") (first key \(bad)): the weights gave non-finite outputs (a diverged checkpoint?), and NaN cannot be ranked")
                }
            }
            let keys = pa.keys.sorted()
            if let k = keys.first(where: { pb[$0] == nil }) ?? pb.keys.sorted().first(where: { pa[$0] == nil }) {
                let onlyA = pa.keys.filter { pb[$0] == nil }.count, onlyB = pb.keys.filter { pa[$0] == nil }.count
                throw ValidationError("\(files[0]) and \(files[1]) score other images in the \(which): \(onlyA) keys only in A, \(onlyB) only in B (first: \(k))")
            }
            var sequences: [String] = []
            for k in keys {
                let (x, y) = (pa[k]!, pb[k]!)
                guard x.label == y.label else { throw ValidationError("key \(k): label \(x.label) in \(files[0]), \(y.label) in \(files[1])") }
                if let s = x.sequence, let t = y.sequence, s != t {
                    throw ValidationError("key \(k): sequence \(s) in \(files[0]), \(t) in \(files[1])")
                }
                sequences.append(x.sequence ?? y.sequence ?? k)
            }
            if !ta.hasSequences && !tb.hasSequences {
                logLine("radar compare: warning: no sequence column: each image is resampled alone, which makes the intervals too narrow where frames of one face sequence are alike")
            }
            let labels = keys.map { pa[$0]!.label }
            guard let result = PairedSequenceBootstrap.run(a: keys.map { pa[$0]!.probability }, b: keys.map { pb[$0]!.probability }, labels: labels,
                                                           sequences: sequences, replicates: bootstrap, seed: seed) else {
                let fake = labels.filter { $0 == 1 }.count
                throw ValidationError("the \(which): no AUC to compare (\(labels.count - fake) real, \(fake) fake images: both classes are needed)")
            }
            printJSON(["a": files[0], "b": files[1], "perturbation": perturbation, "images": keys.count, "sequences": Set(sequences).count,
                       "bootstrap": result.json])
        }
    }
}
