import ArgumentParser
import Foundation
import RadarCore

/// Loads weights (a RADAR checkpoint, a model file or a PyTorch state dict with `--config`) into a
/// fresh model.
func loadCheckpointModel(_ path: String, config: String?, threads: Int, device: String?, precision: String?) throws -> (RADARModel, ExecutionContext, Trainer) {
    let weights = try ModelWeights.read(path, config: try config.map(RADARConfig.resolve))
    let ctx = ExecutionContext(backend: try Devices.backend(device ?? Devices.defaultName, threads: threads, precision: precision), layout: weights.model.layout)
    try weights.load(into: ctx.params, source: path)
    return (weights.model, ctx, Trainer(model: weights.model, ctx: ctx))
}

struct Evaluate: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Metrics of a checkpoint on a split of a prepared dataset (JSON on stdout).")
    @Option(help: "Weights: a checkpoint (.safetensors.lz4), model.safetensors, or a PyTorch state dict (safetensors, optionally LZ4-framed) with --config.") var checkpoint: String
    @Option(help: "Preset (tiny, mid, full) or config JSON file, for a state dict without RADAR metadata.") var config: String?
    @Option(help: "Prepared dataset directory.") var data: String
    @Option(help: "Split: train, val or test.") var split = "test"
    @Option(help: "Images per batch.") var batchSize = 32
    @Option(help: "Threads.") var threads = ProcessInfo.processInfo.activeProcessorCount
    @Option(help: "Backend: cpu, cuda, cuda:N (RADAR_CUDA_DRIVER=emulator: the emulated device), cuda-emulated or cpu-fenced (default: RADAR_DEVICE, else cpu).") var device: String?
    @Option(help: ArgumentHelp(stringLiteral: Devices.precisionHelp)) var precision: String?

    func run() throws {
        try failing {
            guard let sp = Split(rawValue: split) else { throw ValidationError("--split must be train, val or test") }
            let (model, ctx, trainer) = try loadCheckpointModel(checkpoint, config: config, threads: threads, device: device, precision: precision)
            let set = try ShardSet(directory: data)
            let c = model.config
            let loader = StreamingLoader(set: set, refs: set.refs(sp), batchSize: batchSize, size: c.imgSize, mean: c.mean, std: c.std,
                                         augment: false, seed: 0, epoch: 0,
                                         threads: Devices.defaultLoaderThreads(device: device ?? Devices.defaultName, localRanks: 1), dropLast: false)
            var scores: [Float] = [], labels: [Int] = [], seqs: [String] = []
            let probs = UnsafeMutablePointer<Float>.allocate(capacity: batchSize)
            defer { probs.deallocate() }
            let bar = ProgressReporter("evaluate", total: loader.batchCount, unit: "batch")
            let input = DeviceTensor(ctx.backend, Shape(batchSize, 3, c.imgSize, c.imgSize))
            while let b = try loader.next() {
                let view = input.tensor.slice(from: 0, Shape(b.labels.count, 3, c.imgSize, c.imgSize))
                ctx.backend.upload(UnsafeBufferPointer(rebasing: b.images.buffer[0..<view.count]), into: view)
                try trainer.predict(images: view, into: probs)
                for j in 0..<b.labels.count { scores.append(probs[j]); labels.append(Int(b.labels[j])); seqs.append(b.sequences[j]) }
                bar.update(b.index + 1)
            }
            guard !scores.isEmpty else { throw ValidationError("\(data): the \(split) split is empty") }
            var out: [String: Any] = ["checkpoint": checkpoint, "split": split, "images": scores.count]
            for (k, v) in BinaryMetrics.all(scores: scores, labels: labels, sequences: seqs) { out[k] = v.isFinite ? v : NSNull() }
            printJSON(out)
        }
    }
}

struct Predict: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Probability of 'fake' and the label for images (PNG/JPEG files or directories).")
    @Option(help: "Weights: a checkpoint (.safetensors.lz4), model.safetensors, or a PyTorch state dict (safetensors, optionally LZ4-framed) with --config.") var checkpoint: String
    @Option(help: "Preset (tiny, mid, full) or config JSON file, for a state dict without RADAR metadata.") var config: String?
    @Flag(help: "One JSON document on stdout (predictions and unreadable files) instead of tab-separated lines.") var json = false
    @Option(help: "Threads.") var threads = ProcessInfo.processInfo.activeProcessorCount
    @Option(help: "Backend: cpu, cuda, cuda:N (RADAR_CUDA_DRIVER=emulator: the emulated device), cuda-emulated or cpu-fenced (default: RADAR_DEVICE, else cpu).") var device: String?
    @Option(help: ArgumentHelp(stringLiteral: Devices.precisionHelp)) var precision: String?
    @Argument(help: "Images or directories of images.") var paths: [String]

    func run() throws {
        try failing {
            let (model, ctx, trainer) = try loadCheckpointModel(checkpoint, config: config, threads: threads, device: device, precision: precision)
            var files: [String] = []
            for p in paths {
                var isDir: ObjCBool = false
                guard FileManager.default.fileExists(atPath: p, isDirectory: &isDir) else { throw ValidationError("\(p): no such file or directory") }
                if isDir.boolValue {
                    for f in try FileManager.default.contentsOfDirectory(atPath: p).sorted()
                    where ["png", "jpg", "jpeg"].contains((f as NSString).pathExtension.lowercased()) {
                        files.append((p as NSString).appendingPathComponent(f))
                    }
                } else { files.append(p) }
            }
            let c = model.config
            let x = HostTensor(Shape(1, 3, c.imgSize, c.imgSize))
            let input = DeviceTensor(ctx.backend, x.shape)
            var prob: Float = 0
            var predictions: [[String: Any]] = [], failures: [[String: Any]] = [], predicted = 0
            for f in files {
                do {
                    guard let d = FileManager.default.contents(atPath: f) else { throw ValidationError("\(f): cannot read") }
                    // The reference's evaluation transform: OpenCV INTER_LINEAR resize, then normalise.
                    let img = ImageResize.resize(try ImageCodec.decode(d, item: f), width: c.imgSize, height: c.imgSize, mode: .openCVLinear)
                    Augmenter.normalize(img, mean: c.mean, std: c.std, into: x.pointer)
                    ctx.backend.upload(x.buffer, into: input.tensor)
                    try trainer.predict(images: input.tensor, into: &prob)
                    let label = prob >= 0.5 ? "fake" : "real"
                    predicted += 1
                    if json {
                        predictions.append(["path": f, "probability_fake": Double(prob), "label": label])
                    } else {
                        print(String(format: "%@\t%.6f\t%@", f, prob, label))
                    }
                } catch {
                    logLine("radar predict: \(error)")
                    failures.append(["path": f, "error": "\(error)"])
                }
            }
            if json { printJSON(["checkpoint": checkpoint, "images": predictions.count, "predictions": predictions, "unreadable": failures]) }
            // Some images unreadable: listed, the others predicted, status 0; none readable: status 1.
            if !failures.isEmpty && predicted == 0 { throw ExitCode.failure }
        }
    }
}

struct Export: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Zip a run (best checkpoint, config, metrics, plots, README) for download.")
    @Option(help: "The run directory (outputs/<experiment>).") var resultsDir: String
    @Option(help: "Where the zip goes.") var outputDir = "exports"
    @Flag(help: "Also write a script that copies the zip from a pod with rsync (or scp).") var createDownloadScript = false

    func run() throws {
        try failing {
            let zip = try RunExport.export(results: resultsDir, to: outputDir, downloadScript: createDownloadScript)
            print(zip)
        }
    }
}
