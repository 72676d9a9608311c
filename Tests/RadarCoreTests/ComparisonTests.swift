import Foundation
import XCTest
@testable import RadarCore

/// `radar compare`: two detectors' scores on the same images, a paired bootstrap over sequences.
final class ComparisonTests: XCTestCase {
    /// Every replicate's differences, the intervals and pROC's z-statistic p-value, as numpy
    /// computes them from the same drawn sequences (both detectors scored on each draw).
    func testPairedBootstrapMatchesNumpyOnTheSameDraws() throws {
        let data = try Data(contentsOf: fixturesDirectory.appendingPathComponent("metrics.json"))
        let c = ((try JSONSerialization.jsonObject(with: data) as! [String: Any])["cases"] as! [[String: Any]])[0]
        let a = (c["scores"] as! [Double]).map(Float.init), labels = c["labels"] as! [Int], seqs = c["sequences"] as! [String]
        // B: A pulled towards the truth, a better detector on some images.
        let b = a.indices.map { i in i % 3 == 0 ? 0.6 * a[i] + 0.4 * Float(labels[i]) : a[i] }
        let result = try XCTUnwrap(PairedSequenceBootstrap.run(a: a, b: b, labels: labels, sequences: seqs, replicates: 400, seed: 11))
        let draws = SequenceBootstrap.draws(sequenceCount: Set(seqs).count, replicates: 400, seed: 11)
        let input = temporaryDirectory("paired") + "/in.json"
        try JSONSerialization.data(withJSONObject: ["a": a.map(Double.init), "b": b.map(Double.init), "labels": labels, "sequences": seqs, "draws": draws])
            .write(to: URL(fileURLWithPath: input))
        let script = """
        import json, math, sys
        import numpy as np
        d = json.load(open(sys.argv[1]))
        a, b, y = np.array(d['a'], dtype=np.float32), np.array(d['b'], dtype=np.float32), np.array(d['labels'])
        names = sorted(set(d['sequences']))
        members = [[i for i, q in enumerate(d['sequences']) if q == n] for n in names]
        def auc(s, yy):
            s = s.astype(np.float64); pos, neg = s[yy == 1], s[yy == 0]
            return float(np.mean((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])))
        def acc(s, yy): return float(np.mean((s >= 0.5).astype(int) == yy))
        out = {}
        for name, f in (('auc', auc), ('accuracy', acc)):
            diffs = []
            for draw in d['draws']:
                idx = [i for q in draw for i in members[q]]
                yy = y[idx]
                if yy.min() == yy.max(): continue
                diffs.append(f(b[idx], yy) - f(a[idx], yy))
            obs = f(b, y) - f(a, y)
            sd = float(np.std(diffs, ddof=1))
            out[name] = {'n': len(diffs), 'difference': obs, 'low': float(np.percentile(diffs, 2.5)), 'high': float(np.percentile(diffs, 97.5)),
                         'p': math.erfc(abs(obs / sd) / math.sqrt(2))}
        print(json.dumps(out))
        """
        let (rc, out) = try shell([interopPython, "-c", script, input])
        XCTAssertEqual(rc, 0, out)
        let ref = try JSONSerialization.jsonObject(with: Data(out.split(separator: "\n").last!.utf8)) as! [String: [String: Double]]
        for k in ["auc", "accuracy"] {
            let mine = try XCTUnwrap(result.metrics[k]), r = ref[k]!
            XCTAssertEqual(Double(400 - result.skipped), r["n"]!, k)
            XCTAssertEqual(mine.difference, r["difference"]!, accuracy: 1e-12, k)
            XCTAssertEqual(mine.low, r["low"]!, accuracy: 1e-12, k); XCTAssertEqual(mine.high, r["high"]!, accuracy: 1e-12, k)
            XCTAssertEqual(mine.pValue, r["p"]!, accuracy: 1e-9, k)
        }
        let auc = result.metrics["auc"]!
        XCTAssertGreaterThan(auc.difference, 0, "B is the better detector")
        XCTAssertEqual(auc.b - auc.a, auc.difference)
        // A detector against itself: no difference, p = 1; nothing to compare with one class.
        let same = try XCTUnwrap(PairedSequenceBootstrap.run(a: a, b: a, labels: labels, sequences: seqs, replicates: 50, seed: 1))
        XCTAssertEqual(same.metrics["auc"], PairedSequenceBootstrap.Difference(a: auc.a, b: auc.a, difference: 0, low: 0, high: 0, pValue: 1))
        XCTAssertNil(PairedSequenceBootstrap.run(a: [0.2, 0.7], b: [0.3, 0.6], labels: [1, 1], sequences: ["s", "t"], replicates: 10, seed: 0))
    }

    /// A replicate scored as weights on frames sorted once gives what scoring its frames
    /// repeated gives (BinaryMetrics: AUC with ties, accuracy, EER), for draws that leave
    /// sequences out and take others several times.
    func testWeightedReplicateEqualsTheRepeatedFrames() throws {
        var rng = SplitMix64(seed: 3)
        let n = 240, groups = (0..<n).map { $0 / 6 }
        let labels = groups.map { $0 % 3 == 0 ? 1 : 0 }
        // Scores on a coarse grid: many ties, across classes too.
        let scores = labels.map { y in Float(Int.random(in: 0...20, using: &rng) + 6 * y) / 26 }
        let ranking = WeightedRanking(scores: scores, labels: labels, groups: groups)
        for r in 0..<30 {
            let draw = (0..<40).map { _ in Int.random(in: 0..<40, using: &rng) }
            var w = [Double](repeating: 0, count: 40)
            for q in draw { w[q] += 1 }
            var s: [Float] = [], y: [Int] = []
            for q in draw { for i in (q * 6)..<(q * 6 + 6) { s.append(scores[i]); y.append(labels[i]) } }
            guard let auc = BinaryMetrics.rocAUC(scores: s, labels: y) else { XCTAssertNil(ranking.metrics(groupWeights: w)); continue }
            let m = try XCTUnwrap(ranking.metrics(groupWeights: w))
            XCTAssertEqual(m["auc"]!, auc, accuracy: 1e-12, "replicate \(r)")
            XCTAssertEqual(m["accuracy"]!, BinaryMetrics.accuracy(scores: s, labels: y), accuracy: 1e-12, "replicate \(r)")
            XCTAssertEqual(m["eer"]!, BinaryMetrics.equalErrorRate(scores: s, labels: y)!, accuracy: 1e-12, "replicate \(r)")
        }
    }

    /// radar evaluate's CSV read back (RFC 4180: quoted commas, doubled quotes, line breaks,
    /// CRLF), its passes in order; what is wrong with a file said with its record.
    func testPredictionTableReadsEvaluatesCSVAndSaysWhatIsWrong() throws {
        let dir = temporaryDirectory("predtable")
        func table(_ text: String) throws -> PredictionTable {
            let path = dir + "/p.csv"
            try Data(text.utf8).write(to: URL(fileURLWithPath: path))
            return try PredictionTable(path: path)
        }
        func message(_ text: String) -> String {
            do { _ = try table(text); return "read" } catch { return "\(error)".replacingOccurrences(of: dir + "/", with: "") }
        }
        let t = try table("perturbation,key,sequence,label,probability,logit\r\n,\"a,1\",s1,1,0.75,1.0986\r\n,\"say \"\"hi\"\"\nthere\",s1,0,0.25,-1\r\njpeg:40,\"a,1\",s1,1,0.5,0\r\n")
        XCTAssertEqual(t.rows, [.init(perturbation: "", key: "a,1", sequence: "s1", label: 1, probability: 0.75),
                                .init(perturbation: "", key: "say \"hi\"\nthere", sequence: "s1", label: 0, probability: 0.25),
                                .init(perturbation: "jpeg:40", key: "a,1", sequence: "s1", label: 1, probability: 0.5)])
        XCTAssertEqual(t.perturbations, ["", "jpeg:40"])
        XCTAssertEqual(try t.pass("jpeg:40").keys.sorted(), ["a,1"])
        XCTAssertTrue(t.hasSequences)
        let bare = try table("key,probability,label\nx,0.1,0\ny,0.9,1")  // no sequence, no last line break
        XCTAssertEqual(bare.rows.map(\.key), ["x", "y"]); XCTAssertFalse(bare.hasSequences); XCTAssertNil(bare.rows[0].sequence)
        // A byte order mark (Excel's "CSV UTF-8"), spaces after the commas, a label from a float column.
        let excel = try table("\u{FEFF}key, label, probability\r\nx, 1.0, 0.25\r\ny,0,0.5\r\n")
        XCTAssertEqual(excel.rows, [.init(perturbation: "", key: "x", sequence: nil, label: 1, probability: 0.25),
                                    .init(perturbation: "", key: "y", sequence: nil, label: 0, probability: 0.5)])
        XCTAssertEqual(message("key,label,probability\nx,0.5,0.5\n"), "p.csv record 2: label 0.5: expected 0 or 1")
        XCTAssertEqual(message("key,score\nx,1\n"), "p.csv: no label, probability column (radar evaluate --predictions' columns; key, label and probability are needed)")
        XCTAssertEqual(message("key,label,probability\nx,2,0.5\n"), "p.csv record 2: label 2: expected 0 or 1")
        XCTAssertEqual(message("key,label,probability\nx,1,high\n"), "p.csv record 2: probability high: not a number")
        XCTAssertEqual(message("key,label,probability\nx,1\n"), "p.csv record 2: 2 fields, the header has 3")
        // A logit or another score where p(fake) belongs (it was read, and scored at a 0.5 threshold).
        for bad in ["1.5", "-0.25", "inf"] {
            XCTAssertEqual(message("key,label,probability\nx,1,\(bad)\n"), "p.csv record 2: probability \(bad): expected a number in [0, 1] (a logit or another score? give p(fake))")
        }
        XCTAssertTrue(try table("key,label,probability\nx,1,nan\ny,0,0\nz,1,1\n").rows[0].probability.isNaN, "NaN is read (a diverged checkpoint's); compare names it")
        XCTAssertEqual(message("key,label,probability\n\"x,1,0.5\n"), "p.csv record 2: a quoted field is not closed")
        XCTAssertEqual(message("key,label,probability\n\"x\"y,1,0.5\n"), "p.csv record 2: text after a closing quote")
        XCTAssertEqual(message(""), "p.csv: empty, expected a header line")
        XCTAssertThrowsError(try table("key,label,probability\nx,1,0.5\nx,0,0.1\n").pass("")) {
            XCTAssertEqual("\($0)".replacingOccurrences(of: dir + "/", with: ""), "p.csv: key x twice in the clean pass")
        }
    }
}
