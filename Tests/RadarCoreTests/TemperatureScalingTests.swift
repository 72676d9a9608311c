import Foundation
import XCTest
@testable import RadarCore

/// Temperature scaling (`radar calibrate`, `--temperature`, a run's calibration.json) against
/// scikit-learn's unregularised logistic regression on the logit with no intercept
/// (`tools/golden/temperature_fixture.py`).
final class TemperatureScalingTests: XCTestCase {
    func fixtureCases() throws -> [[String: Any]] {
        let data = try Data(contentsOf: fixturesDirectory.appendingPathComponent("temperature.json"))
        return (try JSONSerialization.jsonObject(with: data) as! [String: Any])["cases"] as! [[String: Any]]
    }

    /// An overconfident model (T > 1), a timid one (T < 1), a nearly calibrated one and a small
    /// noisy one: the temperature to 1e-6 of scikit-learn's (its L-BFGS stops at tol 1e-12 on the
    /// gradient; ours is Newton's to 1e-14), the log losses to 1e-9.
    func testTemperatureMatchesScikitLearnsLogisticRegression() throws {
        let cases = try fixtureCases()
        XCTAssertEqual(cases.count, 4)
        var seen: [Double] = []
        for (i, c) in cases.enumerated() {
            let logits = (c["logits"] as! [Double]).map(Float.init), labels = c["labels"] as! [Int]
            let fit = try TemperatureScaling.fit(logits: logits, labels: labels)
            let expected = c["temperature"] as! Double
            XCTAssertEqual(fit.temperature, expected, accuracy: 1e-6 * expected, "case \(i)")
            XCTAssertEqual(fit.logLossBefore, c["log_loss_before"] as! Double, accuracy: 1e-9, "case \(i)")
            XCTAssertEqual(fit.logLossAfter, c["log_loss_after"] as! Double, accuracy: 1e-9, "case \(i)")
            XCTAssertLessThanOrEqual(fit.logLossAfter, fit.logLossBefore, "case \(i): the fit cannot be worse than T = 1")
            // The metrics' log_loss (validation, test, radar evaluate) is the same function.
            let probs = logits.map { Float(1 / (1 + exp(-Double($0)))) }, seqs = labels.indices.map { "s\($0)" }
            XCTAssertEqual(BinaryMetrics.all(scores: probs, labels: labels, sequences: seqs, logits: logits)["log_loss"]!, c["log_loss_before"] as! Double, accuracy: 1e-9)
            XCTAssertEqual(BinaryMetrics.all(scores: probs, labels: labels, sequences: seqs, logits: logits, temperature: expected)["log_loss"]!,
                           c["log_loss_after"] as! Double, accuracy: 1e-9)
            XCTAssertNil(BinaryMetrics.all(scores: probs, labels: labels, sequences: seqs)["log_loss"], "only from logits")
            XCTAssertFalse(fit.atBound)
            XCTAssertEqual(fit.images, logits.count)
            // The optimum: the loss is higher a little either side.
            for f in [0.999, 1.001] {
                XCTAssertGreaterThan(TemperatureScaling.logLoss(logits: logits, labels: labels, temperature: fit.temperature * f), fit.logLossAfter, "case \(i) x\(f)")
            }
            seen.append(fit.temperature)
        }
        XCTAssertTrue(seen[0] > 2 && seen[1] < 0.5 && abs(seen[2] - 1) < 0.1, "the cases span over- and under-confidence: \(seen)")
    }

    /// Dividing the logits by T > 0 keeps their order and their signs: AUC, EER, AP and accuracy
    /// are those of the model's probabilities; calibration (ECE, Brier) improves on a
    /// miscalibrated model. The sequence AUC ranks means of probabilities, which a nonlinear map
    /// reorders: it moves (here by about 0.01). At T = 1 the model's own probability is kept, bit
    /// for bit.
    func testTemperatureKeepsTheRankingAndTheDecisions() throws {
        for c in try fixtureCases().prefix(2) {
            let logits = (c["logits"] as! [Double]).map(Float.init), labels = c["labels"] as! [Int]
            let seqs = labels.indices.map { "s\($0 / 3)" }
            let fit = try TemperatureScaling.fit(logits: logits, labels: labels)
            let model = logits.map { Float(1 / (1 + exp(-Double($0)))) }
            let scaled = zip(logits, model).map { TemperatureScaling.probability(logit: $0, modelProbability: $1, temperature: fit.temperature) }
            let before = BinaryMetrics.all(scores: model, labels: labels, sequences: seqs)
            let after = BinaryMetrics.all(scores: scaled, labels: labels, sequences: seqs)
            for k in ["auc", "accuracy", "eer", "average_precision"] {
                XCTAssertEqual(after[k]!, before[k]!, accuracy: 1e-12, k)
            }
            XCTAssertNotEqual(after["sequence_auc"]!, before["sequence_auc"]!, "means of probabilities: not invariant")
            XCTAssertLessThan(after["ece"]!, before["ece"]! * 0.7, "T \(fit.temperature): ece \(before["ece"]!) -> \(after["ece"]!)")
            XCTAssertLessThan(after["brier"]!, before["brier"]!)
            let odd: Float = 0.123456789
            XCTAssertEqual(TemperatureScaling.probability(logit: 3, modelProbability: odd, temperature: 1).bitPattern, odd.bitPattern)
            XCTAssertEqual(TemperatureScaling.probability(logit: 3, modelProbability: odd, temperature: 2), Float(1 / (1 + exp(-1.5))))
        }
    }

    /// What no temperature fits is said; logits that separate the split perfectly stop at the
    /// range's bound, said.
    func testTemperatureRefusesWhatItCannotFitAndStopsAtItsBound() throws {
        func message(_ logits: [Float], _ labels: [Int]) -> String {
            do { _ = try TemperatureScaling.fit(logits: logits, labels: labels); return "fitted" } catch { return "\(error)" }
        }
        XCTAssertEqual(message([1, 2, 3], [1, 1, 1]), "one class only (0 real, 3 fake images): a temperature needs both")
        XCTAssertEqual(message([1, .nan, 3], [0, 1, 1]), "logit 2 of 3 is nan: a temperature needs finite logits")
        XCTAssertEqual(message([2, 1, -1, -2], [0, 0, 1, 1]), "the logits are higher on the real images than on the fake ones on the whole: no positive temperature fits")
        XCTAssertEqual(message([0, 0, 0, 0], [0, 1, 0, 1]), "the logits do not tell the classes apart (their slope at T = infinity is 0): no temperature fits")
        let separable = try TemperatureScaling.fit(logits: [-1, -0.5, 0.5, 1], labels: [0, 0, 1, 1])
        XCTAssertTrue(separable.atBound)
        XCTAssertEqual(separable.temperature, TemperatureScaling.range.lowerBound, accuracy: 1e-15)
        // Logits that carry almost nothing want T above the range: its upper bound.
        let weak = try TemperatureScaling.fit(logits: [-50, 50, -49, 49, 2, -2], labels: [1, 0, 0, 1, 1, 0])
        XCTAssertTrue(weak.atBound)
        XCTAssertEqual(weak.temperature, TemperatureScaling.range.upperBound, accuracy: 1e-9)
    }

    /// `--temperature`: a number above 0, or a JSON file with one (radar calibrate's output, a
    /// run's calibration.json); anything else a one-line error naming the value, file or field.
    func testTemperatureFlagTakesANumberOrACalibrationFile() throws {
        XCTAssertEqual(try TemperatureScaling.resolve("1.5"), 1.5)
        let dir = temporaryDirectory("temperature")
        let good = dir + "/calibration.json", notObject = dir + "/list.json", boolean = dir + "/bool.json"
        let fit = try TemperatureScaling.fit(logits: [-2, -1, 0.5, 1, 2, -0.2], labels: [0, 0, 1, 1, 1, 1])
        try JSONSerialization.data(withJSONObject: fit.json).write(to: URL(fileURLWithPath: good))
        XCTAssertEqual(try TemperatureScaling.resolve(good), fit.temperature, accuracy: 1e-15)  // Foundation writes 16 digits
        try Data("[1]".utf8).write(to: URL(fileURLWithPath: notObject))
        try Data(#"{"temperature": true}"#.utf8).write(to: URL(fileURLWithPath: boolean))
        func message(_ text: String) -> String {
            do { return "\(try TemperatureScaling.resolve(text))" } catch { return "\(error)" }
        }
        XCTAssertEqual(message("0"), "--temperature 0: expected a number above 0 or a calibration JSON file")
        XCTAssertEqual(message("-1"), "--temperature -1: expected a number above 0 or a calibration JSON file")
        XCTAssertEqual(message("inf"), "--temperature inf: expected a number above 0 or a calibration JSON file")
        XCTAssertEqual(message(dir + "/none.json"), "--temperature \(dir)/none.json: neither a number nor a readable file (expected a number above 0 or a calibration JSON file)")
        XCTAssertEqual(message(notObject), "\(notObject): not a JSON object (expected radar calibrate's output, with a temperature)")
        XCTAssertEqual(message(boolean), "\(boolean): field temperature: expected a number above 0, found true")
    }
}
