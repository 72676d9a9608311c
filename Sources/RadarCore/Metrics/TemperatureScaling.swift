import Foundation

/// Temperature scaling (Guo et al., 2017): the one number T that makes a trained detector's
/// probabilities honest on held-out data, p = sigmoid(logit / T). T > 1 softens an overconfident
/// model, T < 1 sharpens a timid one; the sign of every logit stays, so the ranking (AUC, EER,
/// AP) and the decisions at 0.5 (accuracy) do not change, only what the probabilities claim
/// (ECE, Brier, log loss).
///
/// T is fitted by maximum likelihood on a split the model did not train on (validation), as
/// β = 1/T minimising the mean log loss mean(softplus(β z) - y β z): a logistic regression on
/// the logit with no intercept, which scikit-learn's `LogisticRegression(fit_intercept=False)`
/// solves too (the fixture's reference). The loss is convex in β, so a safeguarded Newton
/// iteration on its derivative in Double, inside a bracket, finds the one minimum.
public enum TemperatureScaling {
    /// T is kept in 1/100...100 (β in 0.01...100): on a split the logits separate perfectly the
    /// likelihood grows without end as T falls, and the bound is said (`atBound`).
    public static let range = 0.01...100.0

    public struct Fit: Sendable, Equatable {
        public let temperature: Double
        /// Mean log loss (natural log) at T = 1 and at the fitted T.
        public let logLossBefore: Double, logLossAfter: Double
        /// The optimum lies beyond `range`: T is the bound it stopped at.
        public let atBound: Bool
        public let images: Int
    }

    public struct FitError: Error, CustomStringConvertible {
        public let description: String
    }

    /// The maximum-likelihood temperature of `logits` (the model's final logits) for `labels`
    /// (1 = fake). Throws when a logit is not finite, a class is missing, or the logits rank the
    /// classes the wrong way round on the whole (no positive T lowers the loss below T = ∞).
    public static func fit(logits: [Float], labels: [Int]) throws -> Fit {
        precondition(logits.count == labels.count, "\(logits.count) logits for \(labels.count) labels")
        if let i = logits.firstIndex(where: { !$0.isFinite }) {
            throw FitError(description: "logit \(i + 1) of \(logits.count) is \(logits[i]): a temperature needs finite logits")
        }
        let fake = labels.filter { $0 == 1 }.count
        guard fake > 0 && fake < labels.count else {
            throw FitError(description: "one class only (\(labels.count - fake) real, \(fake) fake images): a temperature needs both")
        }
        let z = logits.map(Double.init), y = labels.map(Double.init)
        // β = 0 is p = 0.5 everywhere; a derivative there of 0 or more means the loss only falls
        // towards β ≤ 0, a model that says fake where the images are real.
        let atZero = slope(0, z, y)
        if atZero == 0 { throw FitError(description: "the logits do not tell the classes apart (their slope at T = infinity is 0): no temperature fits") }
        if atZero > 0 {
            throw FitError(description: "the logits are higher on the real images than on the fake ones on the whole: no positive temperature fits")
        }
        let lowBeta = 1 / range.upperBound, highBeta = 1 / range.lowerBound
        var beta: Double
        var atBound = false
        if slope(lowBeta, z, y) >= 0 {
            beta = lowBeta; atBound = true  // wants T above the range
        } else if slope(highBeta, z, y) <= 0 {
            beta = highBeta; atBound = true  // separable: wants T below it
        } else {
            // slope(lo) < 0 < slope(hi): Newton from the middle of the bracket, a bisection
            // wherever Newton would leave it; the bracket shrinks every step.
            var lo = lowBeta, hi = highBeta
            beta = 1
            for _ in 0..<200 {
                let (g, h) = slopeAndCurvature(beta, z, y)
                if g < 0 { lo = beta } else { hi = beta }
                var next = h > 0 ? beta - g / h : .nan
                if !(next > lo && next < hi) { next = (lo + hi) / 2 }
                if abs(next - beta) <= 1e-14 * beta || hi - lo <= 1e-14 * hi { beta = next; break }
                beta = next
            }
        }
        return Fit(temperature: 1 / beta, logLossBefore: logLoss(z, y, beta: 1), logLossAfter: logLoss(z, y, beta: beta),
                   atBound: atBound, images: logits.count)
    }

    /// Mean log loss of sigmoid(logit / temperature) (natural log), stable for any logit.
    public static func logLoss(logits: [Float], labels: [Int], temperature: Double = 1) -> Double {
        logLoss(logits.map(Double.init), labels.map(Double.init), beta: 1 / temperature)
    }

    /// sigmoid(logit / temperature) as a Float score; at T = 1 the model's own probability is
    /// kept (`probability`), so an unscaled run gives the same bits as before.
    public static func probability(logit: Float, modelProbability: Float, temperature: Double) -> Float {
        temperature == 1 ? modelProbability : Float(1 / (1 + Foundation.exp(-Double(logit) / temperature)))
    }

    static func softplus(_ x: Double) -> Double { x > 0 ? x + Foundation.log1p(Foundation.exp(-x)) : Foundation.log1p(Foundation.exp(x)) }
    static func sigmoid(_ x: Double) -> Double { x >= 0 ? 1 / (1 + Foundation.exp(-x)) : Foundation.exp(x) / (1 + Foundation.exp(x)) }

    static func logLoss(_ z: [Double], _ y: [Double], beta: Double) -> Double {
        var s = 0.0
        for i in z.indices { s += softplus(beta * z[i]) - y[i] * beta * z[i] }
        return s / Double(z.count)
    }

    /// d/dβ of the mean log loss: mean(z (sigmoid(β z) - y)).
    static func slope(_ beta: Double, _ z: [Double], _ y: [Double]) -> Double { slopeAndCurvature(beta, z, y).0 }

    static func slopeAndCurvature(_ beta: Double, _ z: [Double], _ y: [Double]) -> (Double, Double) {
        var g = 0.0, h = 0.0
        for i in z.indices {
            let p = sigmoid(beta * z[i])
            g += z[i] * (p - y[i])
            h += z[i] * z[i] * p * (1 - p)
        }
        return (g / Double(z.count), h / Double(z.count))
    }
}

extension TemperatureScaling {
    /// `--temperature`'s value: a number (above 0), or a JSON file with a `temperature` number
    /// (`radar calibrate --output`'s, a run's `calibration.json`).
    public static func resolve(_ text: String, flag: String = "--temperature") throws -> Double {
        if let t = Double(text) {
            guard t.isFinite && t > 0 else { throw FitError(description: "\(flag) \(text): expected a number above 0 or a calibration JSON file") }
            return t
        }
        guard let data = try? readInputFile(text, limit: 16 << 20) else {
            throw FitError(description: "\(flag) \(text): neither a number nor a readable file (expected a number above 0 or a calibration JSON file)")
        }
        guard let obj = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw FitError(description: "\(text): not a JSON object (expected radar calibrate's output, with a temperature)")
        }
        guard let n = obj["temperature"] as? NSNumber, String(cString: n.objCType) != "c", n.doubleValue.isFinite, n.doubleValue > 0 else {
            throw FitError(description: "\(text): field temperature: expected a number above 0, found \(obj["temperature"].map(describeJSON) ?? "none")")
        }
        return n.doubleValue
    }
}

/// A JSON value as it was written: `true`, not the 1 that Foundation's NSNumber prints.
private func describeJSON(_ v: Any) -> String {
    if let n = v as? NSNumber, String(cString: n.objCType) == "c" { return n.boolValue ? "true" : "false" }
    if let s = v as? String { return "\"\(s)\"" }
    return "\(v)"
}

extension TemperatureScaling.Fit {
    /// `radar calibrate`'s document and a run's `calibration.json` (what `--temperature FILE` reads).
    public var json: [String: Any] {
        ["temperature": temperature, "log_loss_before": logLossBefore, "log_loss_after": logLossAfter, "at_bound": atBound, "images": images]
    }
}
