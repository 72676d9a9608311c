import Foundation

/// SVG plots of a run (open in any browser): loss curves, validation AUC and accuracy per epoch,
/// and the test ROC curve.
public enum RunPlots {
    public struct Series {
        public var name: String
        public var color: String
        public var points: [(Double, Double)]
    }

    /// A line chart with axes, ticks and a legend.
    public static func lineChart(title: String, xLabel: String, yLabel: String, series: [Series], yRange: (Double, Double)? = nil,
                                 diagonal: Bool = false, legendAtBottom: Bool = false, integerX: Bool = false) -> String {
        let w = 640.0, h = 400.0, l = 64.0, r = 20.0, t = 40.0, b = 52.0
        let all = series.flatMap(\.points).filter { $0.0.isFinite && $0.1.isFinite }
        var x0 = all.map(\.0).min() ?? 0, x1 = all.map(\.0).max() ?? 1
        var y0 = yRange?.0 ?? (all.map(\.1).min() ?? 0), y1 = yRange?.1 ?? (all.map(\.1).max() ?? 1)
        // One point (a one-epoch run) sits in the middle of its axis, not on its edge.
        if x1 <= x0 { (x0, x1) = integerX ? (x0 - 1, x0 + 1) : (x0 - 0.5, x0 + 0.5) }
        if y1 <= y0 { y0 -= 0.5; y1 += 0.5 }
        // Round ticks (1, 2, 2.5 or 5 times a power of ten); a free axis widens to whole ticks.
        let xt = niceTicks(x0, x1, integer: integerX), yt = niceTicks(y0, y1, integer: false)
        if !integerX { (x0, x1) = (xt.first!, xt.last!) }
        if yRange == nil { (y0, y1) = (yt.first!, yt.last!) }
        func px(_ x: Double) -> Double { l + (x - x0) / (x1 - x0) * (w - l - r) }
        func py(_ y: Double) -> Double { h - b - (y - y0) / (y1 - y0) * (h - t - b) }
        var svg = """
        <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(w))" height="\(Int(h))" viewBox="0 0 \(Int(w)) \(Int(h))" font-family="sans-serif" font-size="12">
        <rect width="100%" height="100%" fill="white"/>
        <text x="\(w / 2)" y="22" text-anchor="middle" font-size="15">\(escape(title))</text>
        <line x1="\(l)" y1="\(h - b)" x2="\(w - r)" y2="\(h - b)" stroke="black"/>
        <line x1="\(l)" y1="\(t)" x2="\(l)" y2="\(h - b)" stroke="black"/>
        <text x="\((l + w - r) / 2)" y="\(h - 14)" text-anchor="middle">\(escape(xLabel))</text>
        <text x="16" y="\((t + h - b) / 2)" text-anchor="middle" transform="rotate(-90 16 \((t + h - b) / 2))">\(escape(yLabel))</text>

        """
        let xStep = xt.count > 1 ? xt[1] - xt[0] : 1, yStep = yt.count > 1 ? yt[1] - yt[0] : 1
        for xv in xt where xv >= x0 - 1e-9 && xv <= x1 + 1e-9 {
            svg += "<text x=\"\(px(xv))\" y=\"\(h - b + 16)\" text-anchor=\"middle\">\(tickLabel(xv, step: xStep))</text>\n"
        }
        for yv in yt where yv >= y0 - 1e-9 && yv <= y1 + 1e-9 {
            svg += "<text x=\"\(l - 6)\" y=\"\(py(yv) + 4)\" text-anchor=\"end\">\(tickLabel(yv, step: yStep))</text>\n"
            svg += "<line x1=\"\(l)\" y1=\"\(py(yv))\" x2=\"\(w - r)\" y2=\"\(py(yv))\" stroke=\"#ddd\"/>\n"
        }
        if diagonal {
            svg += "<line x1=\"\(px(0))\" y1=\"\(py(0))\" x2=\"\(px(1))\" y2=\"\(py(1))\" stroke=\"#999\" stroke-dasharray=\"4 4\"/>\n"
        }
        for (k, s) in series.enumerated() {
            let pts = s.points.filter { $0.0.isFinite && $0.1.isFinite }.map { "\(px($0.0)),\(py($0.1))" }.joined(separator: " ")
            svg += "<polyline fill=\"none\" stroke=\"\(s.color)\" stroke-width=\"2\" points=\"\(pts)\"/>\n"
            if s.points.count < 40 {
                for p in s.points where p.0.isFinite && p.1.isFinite { svg += "<circle cx=\"\(px(p.0))\" cy=\"\(py(p.1))\" r=\"3\" fill=\"\(s.color)\"/>\n" }
            }
            // A few points carry their values (a one-epoch run's plot is readable, not a lone dot).
            if s.points.count <= 3 {
                for p in s.points where p.0.isFinite && p.1.isFinite {
                    svg += "<text x=\"\(px(p.0) + 6)\" y=\"\(py(p.1) - 6)\" fill=\"\(s.color)\">\(String(format: "%.4f", p.1))</text>\n"
                }
            }
            let ly = legendAtBottom ? h - b - 12 - Double(series.count - k) * 18 : t + 6 + Double(k) * 18
            svg += "<rect x=\"\(w - r - 190)\" y=\"\(ly)\" width=\"12\" height=\"12\" fill=\"\(s.color)\"/>"
            svg += "<text x=\"\(w - r - 172)\" y=\"\(ly + 10)\">\(escape(s.name))</text>\n"
        }
        return svg + "</svg>\n"
    }

    /// Ticks at multiples of a round step (1, 2, 2.5 or 5 x 10^k; whole numbers for `integer`)
    /// covering [lo, hi] with about 5 intervals: the first at or below lo, the last at or above hi.
    public static func niceTicks(_ lo: Double, _ hi: Double, integer: Bool) -> [Double] {
        let raw = max(hi - lo, 1e-12) / 5
        let magnitude = pow(10, (log10(raw)).rounded(.down))
        var step = [1, 2, 2.5, 5, 10].map { $0 * magnitude }.first { $0 >= raw * (1 - 1e-9) } ?? 10 * magnitude
        if integer { step = max(1, step.rounded(.up)) }
        let first = (lo / step).rounded(.down), last = (hi / step).rounded(.up)
        return stride(from: first, through: last, by: 1).map { $0 * step }
    }

    /// A tick value with as many decimals as its step needs (0.2 -> "0.4", 25 -> "150", 0.25 -> "0.75").
    public static func tickLabel(_ v: Double, step: Double) -> String {
        var decimals = 0
        while decimals < 6 && abs(step * pow(10, Double(decimals)) - (step * pow(10, Double(decimals))).rounded()) > 1e-6 { decimals += 1 }
        let text = String(format: "%.\(decimals)f", abs(v) < step * 1e-9 ? 0 : v)
        return text
    }
    static func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
    }

    /// loss.svg (per optimizer step from metrics.jsonl, and per epoch), val.svg, heads.svg (each
    /// head's validation AUC, from metrics.jsonl's `val_heads`, where it has them), and roc.svg when
    /// the run has test scores.
    public static func write(history h: RunHistory, steps jsonl: String, to dir: String) throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        var stepLoss: [(Double, Double)] = []
        var lastStepOfEpoch: [Int: Int] = [:]
        var headAUC: [String: [Int: Double]] = [:]  // head -> epoch -> validation AUC
        if let text = try? String(contentsOfFile: jsonl, encoding: .utf8) {
            for line in text.split(separator: "\n") {
                guard let o = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else { continue }
                if let e = o["epoch"] as? Int, let r = o["val_heads"] as? [String: Any] {
                    for (tag, v) in HeadMetrics.scalars(r, prefix: "") where tag.hasSuffix("_auc") {
                        headAUC[String(tag.dropFirst().dropLast(4)), default: [:]][e] = v
                    }
                }
                guard let step = o["step"] as? Int, let loss = o["loss_total"] as? Double else { continue }
                stepLoss.append((Double(step), loss))
                if let e = o["epoch"] as? Int { lastStepOfEpoch[e] = max(lastStepOfEpoch[e] ?? 0, step) }
            }
        }
        // Epoch means sit at the step that ended their epoch; a moving average tames the per-step noise.
        let epochs = h.trainLoss.enumerated().map { (Double(lastStepOfEpoch[$0.offset] ?? ($0.offset + 1)), $0.element) }
        var lossSeries = [Series(name: "train loss (epoch mean)", color: "#d62728", points: epochs)]
        if !stepLoss.isEmpty {
            let window = max(1, stepLoss.count / 40)
            var smooth: [(Double, Double)] = []
            var acc = 0.0
            for (i, p) in stepLoss.enumerated() {
                acc += p.1
                if i >= window { acc -= stepLoss[i - window].1 }
                if i >= window - 1 { smooth.append((p.0, acc / Double(window))) }
            }
            lossSeries.insert(Series(name: "train loss (step)", color: "#aec7e8", points: stepLoss), at: 0)
            // Under 80 steps there is nothing to smooth (a window of 1 would repeat the step curve).
            if window > 1 { lossSeries.insert(Series(name: "moving average (\(window) steps)", color: "#1f77b4", points: smooth), at: 1) }
        }
        try writeFileAtomically(Data(lineChart(title: "Training loss", xLabel: stepLoss.isEmpty ? "epoch" : "optimizer step",
                                               yLabel: "loss", series: lossSeries).utf8), to: dir + "/loss.svg")
        let val = [Series(name: "val AUC", color: "#2ca02c", points: h.valAUC.enumerated().map { (Double($0.offset + 1), $0.element) }),
                   Series(name: "val accuracy", color: "#ff7f0e", points: h.valAccuracy.enumerated().map { (Double($0.offset + 1), $0.element) })]
        try writeFileAtomically(Data(lineChart(title: "Validation", xLabel: "epoch", yLabel: "AUC / accuracy", series: val,
                                               yRange: (0, 1), legendAtBottom: true, integerX: true).utf8), to: dir + "/val.svg")
        // Each head's validation AUC beside the model's: what the fusion adds over its inputs.
        if !headAUC.isEmpty {
            var heads = [Series(name: "model", color: "#2ca02c", points: h.valAUC.enumerated().map { (Double($0.offset + 1), $0.element) })]
            for (name, color) in [("boundary", "#1f77b4"), ("frequency", "#ff7f0e"), ("reasoning", "#9467bd"), ("external", "#8c564b")] {
                guard let byEpoch = headAUC[name] else { continue }
                heads.append(Series(name: name, color: color, points: byEpoch.keys.sorted().map { (Double($0 + 1), byEpoch[$0]!) }))
            }
            try writeFileAtomically(Data(lineChart(title: "Validation AUC of each head", xLabel: "epoch", yLabel: "AUC", series: heads,
                                                   yRange: (0, 1), legendAtBottom: true, integerX: true).utf8), to: dir + "/heads.svg")
        }
        if let c = h.testCurve {
            let auc = h.testMetrics["auc"] ?? .nan
            try writeFileAtomically(Data(lineChart(title: String(format: "Test ROC (AUC %.4f)", auc), xLabel: "false positive rate",
                                                   yLabel: "true positive rate",
                                                   series: [Series(name: "RADAR", color: "#9467bd", points: Array(zip(c.fpr, c.tpr)))],
                                                   yRange: (0, 1), diagonal: true, legendAtBottom: true).utf8), to: dir + "/roc.svg")
        }
    }
}
