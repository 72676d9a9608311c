import ArgumentParser
import Foundation
import RadarCLI
import RadarCore

struct Calibrate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Fit the temperature that calibrates a checkpoint's probabilities on a split (validation by default): JSON on stdout.",
        discussion: """
        Temperature scaling (Guo et al., 2017): p = sigmoid(logit / T), with T the maximum-likelihood fit on the split's \
        final logits. The ranking (AUC, EER) and the decisions at 0.5 (accuracy) stay as they are; ECE, Brier score and \
        log loss are given before and after. Pass the output file to radar predict or radar evaluate as --temperature FILE \
        (radar train writes one for its test weights, calibration.json in the run's folder).
        """)
    @Option(help: "Weights: a checkpoint (.safetensors.lz4), model.safetensors, a run's folder (its best checkpoint), hf-hub:ORG/NAME[@REVISION], or a PyTorch state dict with --config.") var checkpoint: String
    @Option(help: "Preset (tiny, mid, full) or config JSON file, for a state dict without RADAR metadata.") var config: String?
    @Option(help: "Prepared dataset directory.") var data: String
    @Option(help: "Split to fit on: val (never test, whose figures it would flatter), or train.") var split = "val"
    @Option(help: "Also write the JSON to this file (what --temperature FILE reads).") var output: String?
    @Option(help: "Images per batch.") var batchSize = 32
    @Option(help: "Threads.") var threads = ProcessInfo.processInfo.activeProcessorCount
    @Option(help: "Backend: cpu, cuda, cuda:N, cuda-emulated or cpu-fenced (default: RADAR_DEVICE, else cpu).") var device: String?
    @Option(help: ArgumentHelp(stringLiteral: Devices.precisionHelp)) var precision: String?
    @Option(help: ArgumentHelp(stringLiteral: SplitScoring.ttaHelp + " Fit with the --tta that predict and evaluate will use.")) var tta: String?

    func validate() throws {
        try SplitScoring.validate(tta: tta)
        try requireFlag(batchSize >= 1, "batch-size", "at least 1", batchSize)  // no upper bound: at most the images scored are batched
        try requireThreads(threads)
        try requireFlag(Split(rawValue: split) != nil, "split", "train, val or test", split)
    }

    func run() throws {
        try failing {
            if let output { try requireWritableFile(output, flag: "--output", expected: "a file name (FILE.json)") }
            let set = try ShardSet(directory: data)
            if let n = set.indexNote { logLine(n) }
            let (_, _, trainer) = try loadCheckpointModel(checkpoint, config: config, threads: threads, device: device, precision: precision)
            let sp = Split(rawValue: split)!
            if sp == .test { logLine("radar calibrate: warning: fitting on the test split: its calibration figures will look better than they are") }
            let rows = try SplitScoring(set: set, trainer: trainer, batchSize: batchSize, device: device, tta: tta).run(set.refs(sp), progress: "calibrate")
            guard !rows.isEmpty else { throw ValidationError("\(data): the \(split) split is empty") }
            let logits = rows.map(\.explanation.logit), labels = rows.map(\.label), probs = rows.map(\.explanation.probability)
            let sequences = rows.map(\.sequence)
            let fit: TemperatureScaling.Fit
            do { fit = try TemperatureScaling.fit(logits: logits, labels: labels) } catch {
                throw ValidationError("\(data): the \(split) split: \(error)")
            }
            if fit.atBound { logLine("radar calibrate: warning: the best fit lies beyond \(TemperatureScaling.range): \(fit.temperature) is its bound") }
            let scaled = zip(logits, probs).map { TemperatureScaling.probability(logit: $0, modelProbability: $1, temperature: fit.temperature) }
            let before = BinaryMetrics.all(scores: probs, labels: labels, sequences: sequences, logits: logits)
            let after = BinaryMetrics.all(scores: scaled, labels: labels, sequences: sequences, logits: logits, temperature: fit.temperature)
            var doc = fit.json
            doc["fitted_on"] = split
            doc["checkpoint"] = checkpoint
            if let tta { doc["tta"] = tta }
            doc["ece_before"] = before["ece"]!
            doc["ece_after"] = after["ece"]!
            doc["brier_before"] = before["brier"]!
            doc["brier_after"] = after["brier"]!
            if let output { try writeFileAtomically(try jsonData(doc, pretty: true), to: output) }
            printJSON(doc)
        }
    }
}
