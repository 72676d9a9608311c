import Foundation
import RadarCore
import XCTest

/// The progress bar as the terminal receives it (no tmux needed).
final class TerminalTests: XCTestCase {
    func testProgressLineClearsWhatALongerLineLeftAndNeverWraps() {
        let p = ProgressReporter("epoch 1/3", total: 200, unit: "img", interactive: false)
        let long = p.render(done: 50, elapsed: 5, detail: "loss 0.6931 lr 1.0e-04 a very long detail that goes on", columns: 200)
        XCTAssertTrue(long.hasPrefix("\r") && long.hasSuffix("\u{1B}[K"), "carriage return, text, clear to end of line")
        XCTAssertTrue(long.contains("50/200 10.0 img/s ETA 0:15"), long)
        let short = p.render(done: 51, elapsed: 5.1, columns: 200)
        XCTAssertTrue(short.hasSuffix("\u{1B}[K"), "a shorter redraw erases the rest of the longer one")
        let narrow = p.render(done: 50, elapsed: 5, detail: "loss 0.6931", columns: 40)
        XCTAssertEqual(narrow.dropFirst().dropLast(3).count, 39, "cut to the terminal's width minus one: \(narrow)")
    }
}

/// JSON records and reports with non-finite numbers: `radar bench allreduce` on one rank crashed
/// on an infinite bandwidth, and a metrics.jsonl line with a NaN was silently dropped.
final class JSONOutputTests: XCTestCase {
    func testNonFiniteNumbersBecomeNull() throws {
        let object: [String: Any] = ["a": Double.nan, "b": [1.5, Double.infinity], "c": ["d": Float.nan, "e": -Double.infinity],
                                     "f": [["g": Double.nan]], "h": "x/y", "i": 3, "j": true]
        XCTAssertEqual(String(decoding: try jsonData(object), as: UTF8.self),
                       #"{"a":null,"b":[1.5,null],"c":{"d":null,"e":null},"f":[{"g":null}],"h":"x/y","i":3,"j":true}"#)
        XCTAssertThrowsError(try JSONSerialization.data(withJSONObject: object), "JSONSerialization alone refuses them")
    }
}

/// Without a terminal: a plain line every logInterval seconds, never a bar.
final class PlainProgressTests: XCTestCase {
    /// RADAR_PROGRESS_SECONDS: seconds from 0 (none); anything else the default 60, with a notice.
    func testTheProgressIntervalIsSecondsOrTheDefault() {
        let saved = ProcessInfo.processInfo.environment["RADAR_PROGRESS_SECONDS"]
        defer { if let saved { setenv("RADAR_PROGRESS_SECONDS", saved, 1) } else { unsetenv("RADAR_PROGRESS_SECONDS") } }
        for (text, seconds) in [("5", 5.0), (" 2.5 ", 2.5), ("0", 0), ("", 60), ("abc", 60), ("-5", 60), ("inf", 60), ("nan", 60)] {
            setenv("RADAR_PROGRESS_SECONDS", text, 1)
            XCTAssertEqual(ProgressReporter.defaultLogInterval, seconds, "RADAR_PROGRESS_SECONDS=\(text)")
        }
    }

    func testALogFileGetsAPlainLineEveryInterval() {
        let t0 = Date(timeIntervalSince1970: 1_000_000)
        let p = ProgressReporter("epoch 1/3", total: 200, unit: "img", interactive: false, start: t0)
        p.logInterval = 60
        var lines: [String] = []
        p.lineSink = { lines.append($0) }
        for (done, seconds) in [(10, 30.0), (20, 61), (30, 90), (40, 122), (200, 600)] {
            p.update(done, items: done * 8, detail: "loss 0.6931", now: t0.addingTimeInterval(seconds))
        }
        XCTAssertEqual(lines, ["epoch 1/3: 20/200 (10%) 2.6 img/s ETA 9:09 loss 0.6931",
                               "epoch 1/3: 40/200 (20%) 2.6 img/s ETA 8:08 loss 0.6931"], "at 61 s and 122 s; none at the end (the command says that)")
        p.logInterval = 0
        p.update(50, now: t0.addingTimeInterval(1000))
        XCTAssertEqual(lines.count, 2, "0 turns the lines off")
    }
}

/// The run's SVG plots: round tick values, no one-step "moving average", a one-epoch run readable.
final class PlotTests: XCTestCase {
    func testTicksAreRoundNumbers() {
        XCTAssertEqual(RunPlots.niceTicks(0.524, 0.81, integer: false).map { RunPlots.tickLabel($0, step: 0.1) },
                       ["0.5", "0.6", "0.7", "0.8", "0.9"])
        XCTAssertEqual(RunPlots.niceTicks(1, 154, integer: false), [0, 50, 100, 150, 200])
        XCTAssertEqual(RunPlots.niceTicks(0, 1, integer: false).map { RunPlots.tickLabel($0, step: 0.2) }, ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"])
        XCTAssertEqual(RunPlots.niceTicks(1, 3, integer: true), [1, 2, 3])
        XCTAssertEqual(RunPlots.tickLabel(0.75, step: 0.25), "0.75")
        XCTAssertEqual(RunPlots.tickLabel(-2.7755575615628914e-17, step: 0.1), "0.0", "no -0.0 or 2.8e-17 from accumulated steps")
    }

    func labels(_ svg: String) -> [String] {
        svg.components(separatedBy: "text-anchor=\"end\">").dropFirst().map { String($0.prefix { $0 != "<" }) }
    }

    func testOneEpochRunPlotsAreReadable() throws {
        let dir = temporaryDirectory("plots")
        let jsonl = dir + "/metrics.jsonl"
        let lines = (1...6).map { "{\"epoch\":0,\"step\":\($0),\"loss_total\":\(1.0 - Double($0) * 0.07)}" }
        try lines.joined(separator: "\n").write(toFile: jsonl, atomically: true, encoding: .utf8)
        var h = RunHistory()
        (h.trainLoss, h.valAUC, h.valAccuracy) = ([0.8], [0.8123], [0.75])
        try RunPlots.write(history: h, steps: jsonl, to: dir + "/plots")
        let loss = try String(contentsOfFile: dir + "/plots/loss.svg", encoding: .utf8)
        let val = try String(contentsOfFile: dir + "/plots/val.svg", encoding: .utf8)
        XCTAssertFalse(loss.contains("moving average"), "6 steps: nothing to smooth")
        XCTAssertTrue(val.contains(">0.8123<") && val.contains(">0.7500<"), "a lone point carries its value")
        XCTAssertEqual(labels(val), ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"])
        for l in labels(loss) { XCTAssertTrue(l.count <= 4, "round loss ticks, got \(labels(loss))") }
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/plots/heads.svg"), "no val_heads lines: no heads plot")
        // With the epoch line's val_heads: each enabled head's validation AUC beside the model's.
        let epochLine = #"{"epoch":0,"train_loss":0.8,"val_heads":{"gate":0.5,"heads":{"boundary":{"auc":0.7654,"sequence_auc":null},"frequency":null,"#
            + #""reasoning":{"auc":0.8111},"external":{"auc":0.6222}},"attention":{"real":null,"fake":null}}}"#
        try (lines + [epochLine]).joined(separator: "\n").write(toFile: jsonl, atomically: true, encoding: .utf8)
        try RunPlots.write(history: h, steps: jsonl, to: dir + "/plots")
        let heads = try String(contentsOfFile: dir + "/plots/heads.svg", encoding: .utf8)
        for v in [">0.8123<", ">0.7654<", ">0.8111<", ">0.6222<"] { XCTAssertTrue(heads.contains(v), "\(v) in \(heads)") }
        for n in [">model<", ">boundary<", ">reasoning<", ">external<"] { XCTAssertTrue(heads.contains(n), n) }
        XCTAssertFalse(heads.contains(">frequency<"), "a disabled branch has no curve")
    }
}
