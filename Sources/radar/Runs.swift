import ArgumentParser
import Foundation
import RadarCore

struct Runs: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "The experiments in an output folder at a glance: state (running on this machine, finished, stopped, empty), epochs, optimizer steps, best validation AUC, test AUC / EER / ECE, the fitted temperature T (radar calibrate; - where none was fitted), images/s, last write.")
    @Argument(help: "The output root (radar train / radar-worker --output; default: outputs), or give it as --output; an experiment's own folder shows that one.") var folder: String?
    @Option(help: "The output root, as the positional folder.") var output: String?
    @Flag(help: "One JSON array instead of the table.") var json = false

    func validate() throws {
        if let folder, let output, folder != output {
            throw ValidationError("the output root is given twice, as \(folder) and as --output \(output): give one")
        }
    }

    func run() throws {
        try failing {
            let output = folder ?? self.output ?? "outputs"
            let runs = try RunSummary.scan(output)
            if json {
                print(String(decoding: try jsonData(runs.map(\.json), pretty: true), as: UTF8.self))
                return
            }
            guard !runs.isEmpty else {
                print("no experiments in \(output)")
                return
            }
            let stamp = DateFormatter()
            stamp.dateFormat = "yyyy-MM-dd HH:mm"
            stamp.timeZone = TimeZone(identifier: "UTC")
            func f(_ v: Double?, _ digits: Int = 4) -> String { v.map { $0.isFinite ? String(format: "%.\(digits)f", $0) : "nan" } ?? "-" }
            let header = ["experiment", "state", "epoch", "step", "best val auc", "test auc", "eer", "ece", "T", "img/s", "updated (UTC)"]
            let rows = runs.map { r -> [String] in
                [r.name, r.state.rawValue + (r.holder.map { " (\($0))" } ?? ""),
                 "\(r.epochsDone)/" + (r.epochs.map(String.init) ?? "?"), r.step.map(String.init) ?? "-",
                 r.bestValAUC.map { f($0) + " (\(r.bestEpoch ?? 0))" } ?? "-",
                 f(r.test["auc"]), f(r.test["eer"]), f(r.test["ece"]), f(r.temperature, 3), f(r.imagesPerSecond, 1), r.updated.map(stamp.string) ?? "-"]
            }
            let widths = header.indices.map { c in ([header] + rows).map { $0[c].count }.max()! }
            for row in [header] + rows {
                print(row.enumerated().map { c, s in s.padding(toLength: widths[c], withPad: " ", startingAt: 0) }.joined(separator: "  ")
                      .trimmingCharacters(in: .whitespaces))
            }
        }
    }
}
