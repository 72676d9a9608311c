import Foundation

/// Options of a training run (the reference pipeline's flags).
public struct TrainOptions: Sendable {
    public var data: String
    public var output: String
    public var experiment: String
    public var config: RADARConfig
    public var batchSize = 32
    public var epochs = 10
    public var learningRate = 5e-4
    public var weightDecay = 0.05
    public var accumulation = 2
    public var patience = 10
    public var seed: UInt64 = 42
    public var threads = 1
    public var loaderThreads = 1
    public var augment = true
    /// Cap on optimizer-step batches per epoch (0: all); for smoke runs.
    public var maxBatchesPerEpoch = 0
    public var pretrained: String?

    public init(data: String, output: String, experiment: String, config: RADARConfig) {
        self.data = data
        self.output = output
        self.experiment = experiment
        self.config = config
    }

    public var experimentDirectory: String { (output as NSString).appendingPathComponent(experiment) }

    public var jsonObject: [String: Any] {
        ["data": data, "output": output, "experiment": experiment, "batch_size": batchSize, "num_epochs": epochs,
         "learning_rate": learningRate, "weight_decay": weightDecay, "accumulation_steps": accumulation,
         "patience": patience, "seed": seed, "threads": threads, "loader_threads": loaderThreads, "augment": augment,
         "max_batches_per_epoch": maxBatchesPerEpoch, "pretrained": pretrained ?? NSNull(),
         "model": (try? JSONSerialization.jsonObject(with: config.jsonData())) ?? [:]]
    }
}

/// What a run produced.
public struct RunHistory: Sendable {
    public var trainLoss: [Double] = []
    public var valAUC: [Double] = []
    public var valAccuracy: [Double] = []
    public var valMetrics: [[String: Double]] = []
    public var bestValAUC = -Double.infinity
    public var bestEpoch = -1
    public var testMetrics: [String: Double] = [:]
    public var skippedSteps = 0
}

/// The single-process training loop: epochs over the train split through the streaming loader,
/// validation every epoch, early stopping on validation AUC, test metrics with the best weights.
/// Writes config.json, metrics.json (the reference's schema plus our metrics) and metrics.jsonl
/// under output/experiment.
public final class TrainingRun {
    public let options: TrainOptions
    public let set: ShardSet
    public let model: RADARModel
    public let ctx: ExecutionContext
    public let trainer: Trainer
    public var log: (String) -> Void = { _ in }
    public var onBatch: ((Int, Int, Int, Double) -> Void)?

    public init(options: TrainOptions) throws {
        self.options = options
        set = try ShardSet(directory: options.data)
        model = try RADARModel(config: options.config)
        ctx = ExecutionContext(backend: CPUBackend(threads: options.threads), params: ParameterStore(layout: model.layout), seed: options.seed)
        model.initialize(ctx.params, seed: options.seed)
        if let p = options.pretrained { try TimmWeights.load(p, into: ctx.params, config: options.config) }
        trainer = Trainer(model: model, ctx: ctx, lr: Float(options.learningRate), weightDecay: Float(options.weightDecay),
                          accumulation: options.accumulation)
        for split in [Split.train, .val] where set.refs(split).isEmpty {
            throw DatasetError(path: options.data, reason: "the \(split.rawValue) split is empty")
        }
    }

    var batchesPerEpoch: Int {
        let full = set.refs(.train).count / options.batchSize
        let capped = options.maxBatchesPerEpoch > 0 ? min(full, options.maxBatchesPerEpoch * options.accumulation) : full
        return capped / options.accumulation * options.accumulation
    }

    /// Eval-mode scores of a split.
    public func evaluate(_ split: Split) throws -> (scores: [Float], labels: [Int], sequences: [String]) {
        let c = options.config
        let loader = StreamingLoader(set: set, refs: set.refs(split), batchSize: options.batchSize, size: c.imgSize, mean: c.mean,
                                     std: c.std, augment: false, seed: options.seed, epoch: 0, threads: options.loaderThreads,
                                     dropLast: false)
        var scores: [Float] = [], labels: [Int] = [], seqs: [String] = []
        let probs = UnsafeMutablePointer<Float>.allocate(capacity: options.batchSize)
        defer { probs.deallocate() }
        while let b = try loader.next() {
            try trainer.predict(images: b.images.tensor, into: probs)
            for j in 0..<b.labels.count {
                scores.append(probs[j]); labels.append(Int(b.labels[j])); seqs.append(b.sequences[j])
            }
        }
        return (scores, labels, seqs)
    }

    public func run() throws -> RunHistory {
        let dir = options.experimentDirectory
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try writeFileAtomically(try JSONSerialization.data(withJSONObject: options.jsonObject, options: [.prettyPrinted, .sortedKeys]),
                                to: (dir as NSString).appendingPathComponent("config.json"))
        let jsonl = (dir as NSString).appendingPathComponent("metrics.jsonl")
        FileManager.default.createFile(atPath: jsonl, contents: nil)
        let jsonlHandle = FileHandle(forWritingAtPath: jsonl)
        defer { try? jsonlHandle?.close() }
        func record(_ obj: [String: Any]) {
            if let d = try? JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys]) {
                try? jsonlHandle?.write(contentsOf: d + Data("\n".utf8))
            }
        }
        let steps = batchesPerEpoch
        guard steps > 0 else { throw DatasetError(path: options.data, reason: "fewer training images than one batch x accumulation") }
        trainer.schedule = OneCycleLR(maxLR: options.learningRate, totalSteps: steps / options.accumulation * options.epochs)
        var history = RunHistory()
        var bestState: [Float]? = nil, bestBuffers: [Float]? = nil
        var sinceBest = 0
        let c = options.config
        for epoch in 0..<options.epochs {
            let refs = set.shuffled(set.refs(.train), seed: options.seed, epoch: epoch)
            let loader = StreamingLoader(set: set, refs: Array(refs.prefix(steps * options.batchSize)), batchSize: options.batchSize,
                                         size: c.imgSize, mean: c.mean, std: c.std, augment: options.augment, seed: options.seed,
                                         epoch: epoch, threads: options.loaderThreads, dropLast: true)
            var lossSum = 0.0, n = 0
            let t0 = Date()
            while let b = try loader.next() {
                let labels = HostTensor(Shape(b.labels.count), b.labels)
                let r = try trainer.step(images: b.images.tensor, labels: labels.tensor)
                lossSum += r.terms.total
                n += 1
                onBatch?(epoch, n, steps, r.terms.total)
                if r.stepped {
                    var entry: [String: Any] = ["epoch": epoch, "step": trainer.optimizer.step, "lr": r.lr, "grad_norm": r.gradNorm,
                                                "skipped": r.skipped]
                    for (k, v) in r.terms.named { entry["loss_\(k)"] = v }
                    record(entry)
                }
            }
            let imagesPerSecond = Double(n * options.batchSize) / Date().timeIntervalSince(t0)
            let val = try evaluate(.val)
            let m = BinaryMetrics.all(scores: val.scores, labels: val.labels, sequences: val.sequences)
            history.trainLoss.append(lossSum / Double(max(n, 1)))
            history.valAUC.append(m["auc"]!)
            history.valAccuracy.append(m["accuracy"]!)
            history.valMetrics.append(m)
            record(["epoch": epoch, "train_loss": history.trainLoss.last!, "val": m, "images_per_s": imagesPerSecond])
            log(String(format: "epoch %d/%d  train_loss %.4f  val_auc %.4f  val_acc %.4f  val_eer %.4f  %.1f img/s", epoch + 1,
                       options.epochs, history.trainLoss.last!, m["auc"]!, m["accuracy"]!, m["eer"]!, imagesPerSecond))
            if m["auc"]! > history.bestValAUC {
                history.bestValAUC = m["auc"]!
                history.bestEpoch = epoch
                bestState = Array(ctx.params.values)
                bestBuffers = Array(ctx.params.buffers)
                sinceBest = 0
            } else {
                sinceBest += 1
                if sinceBest >= options.patience {
                    log("early stopping: validation AUC has not improved for \(options.patience) epochs")
                    break
                }
            }
        }
        history.skippedSteps = trainer.skippedSteps
        if let bestState, let bestBuffers {
            _ = ctx.params.values.update(fromContentsOf: bestState)
            _ = ctx.params.buffers.update(fromContentsOf: bestBuffers)
        }
        if !set.refs(.test).isEmpty {
            let test = try evaluate(.test)
            history.testMetrics = BinaryMetrics.all(scores: test.scores, labels: test.labels, sequences: test.sequences)
            log(String(format: "test (best epoch %d): auc %.4f  accuracy %.4f  eer %.4f  ap %.4f  sequence_auc %.4f", history.bestEpoch + 1,
                       history.testMetrics["auc"]!, history.testMetrics["accuracy"]!, history.testMetrics["eer"]!,
                       history.testMetrics["average_precision"]!, history.testMetrics["sequence_auc"]!))
        }
        try writeMetrics(history)
        return history
    }

    /// metrics.json in the reference's schema (history.train_loss, history.val_auc,
    /// history.val_acc, best_val_auc, test_metrics.auc, test_metrics.accuracy, timestamp) plus ours.
    func writeMetrics(_ h: RunHistory) throws {
        func clean(_ v: Double) -> Any { v.isFinite ? v : NSNull() }
        let obj: [String: Any] = [
            "history": ["train_loss": h.trainLoss.map(clean), "val_auc": h.valAUC.map(clean), "val_acc": h.valAccuracy.map(clean),
                        "val_metrics": h.valMetrics.map { $0.mapValues(clean) }],
            "best_val_auc": clean(h.bestValAUC), "best_epoch": h.bestEpoch + 1,
            "test_metrics": h.testMetrics.mapValues(clean),
            "skipped_steps": h.skippedSteps,
            "timestamp": ISO8601DateFormatter().string(from: Date()),
        ]
        try writeFileAtomically(try JSONSerialization.data(withJSONObject: obj, options: [.prettyPrinted, .sortedKeys]),
                                to: (options.experimentDirectory as NSString).appendingPathComponent("metrics.json"))
    }
}
