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
    /// Write `last` every this many optimizer steps (0: only at the end of each epoch).
    public var checkpointEvery = 0
    /// A checkpoint to continue from ("auto": output/experiment/last.safetensors.lz4 if present).
    public var resume: String?
    /// Allow resuming a checkpoint written with another world size (see README).
    public var allowWorldSizeChange = false
    /// Stop (after writing `last`) once this many optimizer steps have been taken in total.
    public var stopAfterSteps = 0
    /// Data-parallel position of this process (rank, world size) and the gradient hook that
    /// averages gradients across ranks; a single process is (0, 1, nil).
    public var rank = 0
    public var worldSize = 1

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
         "max_batches_per_epoch": maxBatchesPerEpoch, "pretrained": pretrained ?? NSNull(), "world_size": worldSize,
         "checkpoint_every": checkpointEvery,
         "model": (try? JSONSerialization.jsonObject(with: config.jsonData())) ?? [:]]
    }
}

/// What a run produced.
public struct RunHistory: Sendable, Codable {
    public var trainLoss: [Double] = []
    public var valAUC: [Double] = []
    public var valAccuracy: [Double] = []
    public var valMetrics: [[String: Double]] = []
    public var bestValAUC = -Double.infinity
    public var bestEpoch = -1
    public var testMetrics: [String: Double] = [:]
    public var skippedSteps = 0
    /// The test ROC curve (for the plot), not serialised with the history.
    public var testCurve: (fpr: [Double], tpr: [Double], thresholds: [Float])?

    enum CodingKeys: String, CodingKey {
        case trainLoss, valAUC, valAccuracy, valMetrics, bestValAUC, bestEpoch, testMetrics, skippedSteps
    }
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
    /// Averages gradients across ranks (data-parallel runs); set before `run`.
    public var gradientHook: ((ParameterStore, Bool) -> Bool)? {
        get { trainer.gradientHook }
        set { trainer.gradientHook = newValue }
    }
    /// Only rank 0 writes files.
    var writes: Bool { options.rank == 0 }
    /// Data-parallel runs: every rank's equal-length Float array, in rank order, on every rank.
    public var allGather: (([Float]) throws -> [[Float]])?
    /// Called after every optimizer step (e.g. to check that replicas are still identical).
    public var afterStep: (() throws -> Void)?
    /// Called with each epoch's plan before it starts (e.g. to compare it with the coordinator's).
    public var onEpochStart: ((EpochPlan) throws -> Void)?
    /// Called with each epoch's validation metrics.
    public var onEpochEnd: ((Int, [String: Double]) -> Void)?

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

    /// Micro-batches per rank per epoch (the same for every epoch and rank).
    var batchesPerEpoch: Int { plan(epoch: 0).batchesPerRank }

    public func plan(epoch: Int) -> EpochPlan {
        EpochPlan(set: set, seed: options.seed, epoch: epoch, worldSize: options.worldSize, batchSize: options.batchSize,
                  batchMultiple: options.accumulation,
                  maxBatchesPerRank: options.maxBatchesPerEpoch > 0 ? options.maxBatchesPerEpoch * options.accumulation : 0)
    }

    /// Eval-mode scores of a split. With several ranks each scores refs[rank::size] and the
    /// scores are gathered, so every rank gets the same arrays as one process would.
    public func evaluate(_ split: Split) throws -> (scores: [Float], labels: [Int], sequences: [String]) {
        let c = options.config
        let all = set.refs(split)
        let size = options.worldSize, rank = options.rank
        let mine = stride(from: rank, to: all.count, by: size).map { all[$0] }
        let loader = StreamingLoader(set: set, refs: mine, batchSize: options.batchSize, size: c.imgSize, mean: c.mean,
                                     std: c.std, augment: false, seed: options.seed, epoch: 0, threads: options.loaderThreads,
                                     dropLast: false)
        var myScores: [Float] = [], labels: [Int] = [], seqs: [String] = []
        let probs = UnsafeMutablePointer<Float>.allocate(capacity: options.batchSize)
        defer { probs.deallocate() }
        while let b = try loader.next() {
            try trainer.predict(images: b.images.tensor, into: probs)
            for j in 0..<b.labels.count {
                myScores.append(probs[j]); labels.append(Int(b.labels[j])); seqs.append(b.sequences[j])
            }
        }
        guard size > 1, let gather = allGather else { return (myScores, labels, seqs) }
        let per = (all.count + size - 1) / size
        let padded = myScores + [Float](repeating: .nan, count: per - myScores.count)
        let parts = try gather(padded)
        var scores = [Float](repeating: 0, count: all.count)
        for r in 0..<size { for j in 0..<per where r + size * j < all.count { scores[r + size * j] = parts[r][j] } }
        let infos = try all.map { try set.indices[$0.shard].info($0.index) }
        return (scores, infos.map(\.label), infos.map(\.sequence))
    }

    var lastPath: String { (options.experimentDirectory as NSString).appendingPathComponent("last.safetensors.lz4") }
    var bestPath: String { (options.experimentDirectory as NSString).appendingPathComponent("best.safetensors.lz4") }

    func checkpointState(epoch: Int, batchInEpoch: Int, history: RunHistory, sinceBest: Int) -> Checkpoint.State {
        var st = Checkpoint.State()
        st.optimizerStep = trainer.optimizer.step
        st.epoch = epoch
        st.batchInEpoch = batchInEpoch
        st.microStep = ctx.step
        st.seed = options.seed
        st.bestValAUC = history.bestValAUC
        st.sinceBest = sinceBest
        st.worldSize = options.worldSize
        st.schedulerMaxLR = trainer.schedule?.maxLR ?? 0
        st.schedulerTotalSteps = trainer.schedule?.totalSteps ?? 0
        st.skippedSteps = trainer.skippedSteps
        st.configJSON = String(decoding: options.config.jsonData(), as: UTF8.self)
        let e = JSONEncoder()
        e.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        st.historyJSON = String(decoding: (try? e.encode(history)) ?? Data("{}".utf8), as: UTF8.self)
        return st
    }

    func save(_ path: String, _ st: Checkpoint.State) throws {
        guard writes else { return }
        try Checkpoint.write(path, store: ctx.params, optimizer: trainer.optimizer, state: st)
    }

    /// Loads `options.resume`; returns the state to continue from, or nil for a fresh start.
    func resumeState() throws -> Checkpoint.State? {
        guard let r = options.resume else { return nil }
        let path = r == "auto" ? lastPath : r
        if r == "auto" && !FileManager.default.fileExists(atPath: path) { return nil }
        let (tensors, st) = try Checkpoint.read(path)
        let saved = try JSONDecoder().decode(RADARConfig.self, from: Data(st.configJSON.utf8))
        if saved != options.config {
            let a = (try? JSONSerialization.jsonObject(with: saved.jsonData()) as? [String: Any]) ?? [:]
            let b = (try? JSONSerialization.jsonObject(with: options.config.jsonData()) as? [String: Any]) ?? [:]
            let diff = a.keys.sorted().filter { "\(a[$0]!)" != "\(b[$0] ?? "nil")" }.map { "\($0): checkpoint \(a[$0]!), now \(b[$0] ?? "nil")" }
            throw Checkpoint.CheckpointError(path: path, reason: "config differs from the run's: " + diff.joined(separator: "; "))
        }
        if st.worldSize != options.worldSize && !options.allowWorldSizeChange {
            throw Checkpoint.CheckpointError(path: path, reason: "written with world size \(st.worldSize), this run has \(options.worldSize) (pass --allow-world-size-change to map the data position)")
        }
        try Checkpoint.restore(tensors, state: st, into: ctx.params, optimizer: trainer.optimizer, path: path)
        ctx.step = st.microStep
        log("resumed from \(path): epoch \(st.epoch + 1), optimizer step \(st.optimizerStep), data position \(st.batchInEpoch)")
        return st
    }

    public func run() throws -> RunHistory {
        let dir = options.experimentDirectory
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let resumed = try resumeState()
        if writes {
            try writeFileAtomically(try JSONSerialization.data(withJSONObject: options.jsonObject, options: [.prettyPrinted, .sortedKeys]),
                                    to: (dir as NSString).appendingPathComponent("config.json"))
        }
        let jsonl = (dir as NSString).appendingPathComponent("metrics.jsonl")
        if writes && (resumed == nil || !FileManager.default.fileExists(atPath: jsonl)) { FileManager.default.createFile(atPath: jsonl, contents: nil) }
        let jsonlHandle = writes ? FileHandle(forWritingAtPath: jsonl) : nil
        _ = try? jsonlHandle?.seekToEnd()
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
        var sinceBest = 0
        var firstEpoch = 0, firstBatch = 0
        if let st = resumed {
            let d = JSONDecoder()
            d.nonConformingFloatDecodingStrategy = .convertFromString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
            history = (try? d.decode(RunHistory.self, from: Data(st.historyJSON.utf8))) ?? RunHistory()
            sinceBest = st.sinceBest
            (firstEpoch, firstBatch) = (st.epoch, st.batchInEpoch)
            if st.worldSize != options.worldSize {
                // The data position is a count of global samples: map it to this world size's batches.
                firstBatch = st.batchInEpoch * st.worldSize / options.worldSize / options.accumulation * options.accumulation
            }
        }
        var bestState: [Float]? = nil, bestBuffers: [Float]? = nil
        if resumed != nil, FileManager.default.fileExists(atPath: bestPath), let (t, _) = try? Checkpoint.read(bestPath) {
            let tmp = ParameterStore(layout: model.layout)
            if (try? StateDict.load(t.filter { !$0.key.hasPrefix("optim.") }, into: tmp, source: bestPath)) != nil {
                bestState = Array(tmp.values)
                bestBuffers = Array(tmp.buffers)
            }
        }
        let c = options.config
        for epoch in firstEpoch..<options.epochs {
            // This rank's share of the epoch: every rank gets the same number of micro-batches.
            let epochPlan = plan(epoch: epoch)
            try onEpochStart?(epochPlan)
            let mine = epochPlan.samples(rank: options.rank)
            let start = epoch == firstEpoch ? firstBatch : 0
            let loader = StreamingLoader(set: set, refs: Array(mine.dropFirst(start * options.batchSize)), batchSize: options.batchSize,
                                         size: c.imgSize, mean: c.mean, std: c.std, augment: options.augment, seed: options.seed,
                                         epoch: epoch, threads: options.loaderThreads, dropLast: true)
            var lossSum = 0.0, n = 0
            var batchIndex = start
            let t0 = Date()
            while let b = try loader.next() {
                let labels = HostTensor(Shape(b.labels.count), b.labels)
                let r = try trainer.step(images: b.images.tensor, labels: labels.tensor)
                lossSum += r.terms.total
                n += 1
                batchIndex += 1
                onBatch?(epoch, batchIndex, steps, r.terms.total)
                guard r.stepped else { continue }
                try afterStep?()
                var entry: [String: Any] = ["epoch": epoch, "step": trainer.optimizer.step, "lr": r.lr, "grad_norm": r.gradNorm,
                                            "skipped": r.skipped]
                for (k, v) in r.terms.named { entry["loss_\(k)"] = v }
                record(entry)
                if options.stopAfterSteps > 0 && trainer.optimizer.step >= options.stopAfterSteps {
                    try save(lastPath, checkpointState(epoch: epoch, batchInEpoch: batchIndex, history: history, sinceBest: sinceBest))
                    log("stopped after \(trainer.optimizer.step) optimizer steps; resume with --resume auto")
                    history.skippedSteps = trainer.skippedSteps
                    return history
                }
                if options.checkpointEvery > 0 && trainer.optimizer.step % options.checkpointEvery == 0 {
                    try save(lastPath, checkpointState(epoch: epoch, batchInEpoch: batchIndex, history: history, sinceBest: sinceBest))
                }
            }
            let imagesPerSecond = Double(n * options.batchSize * options.worldSize) / Date().timeIntervalSince(t0)
            let val = try evaluate(.val)
            let m = BinaryMetrics.all(scores: val.scores, labels: val.labels, sequences: val.sequences)
            history.trainLoss.append(lossSum / Double(max(n, 1)))
            history.valAUC.append(m["auc"]!)
            history.valAccuracy.append(m["accuracy"]!)
            history.valMetrics.append(m)
            record(["epoch": epoch, "train_loss": history.trainLoss.last!, "val": m, "images_per_s": imagesPerSecond])
            onEpochEnd?(epoch, m.merging(["train_loss": history.trainLoss.last!, "images_per_s": imagesPerSecond]) { a, _ in a })
            log(String(format: "epoch %d/%d  train_loss %.4f  val_auc %.4f  val_acc %.4f  val_eer %.4f  %.1f img/s", epoch + 1,
                       options.epochs, history.trainLoss.last!, m["auc"]!, m["accuracy"]!, m["eer"]!, imagesPerSecond))
            var stop = false
            if m["auc"]! > history.bestValAUC {
                history.bestValAUC = m["auc"]!
                history.bestEpoch = epoch
                bestState = Array(ctx.params.values)
                bestBuffers = Array(ctx.params.buffers)
                sinceBest = 0
                try save(bestPath, checkpointState(epoch: epoch + 1, batchInEpoch: 0, history: history, sinceBest: sinceBest))
            } else {
                sinceBest += 1
                stop = sinceBest >= options.patience
            }
            try save(lastPath, checkpointState(epoch: epoch + 1, batchInEpoch: 0, history: history, sinceBest: sinceBest))
            if stop {
                log("early stopping: validation AUC has not improved for \(options.patience) epochs")
                break
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
            history.testCurve = BinaryMetrics.rocCurve(scores: test.scores, labels: test.labels)
            log(String(format: "test (best epoch %d): auc %.4f  accuracy %.4f  eer %.4f  ap %.4f  sequence_auc %.4f", history.bestEpoch + 1,
                       history.testMetrics["auc"]!, history.testMetrics["accuracy"]!, history.testMetrics["eer"]!,
                       history.testMetrics["average_precision"]!, history.testMetrics["sequence_auc"]!))
        }
        if writes {
            try writeMetrics(history)
            try RunPlots.write(history: history, steps: jsonl, to: (dir as NSString).appendingPathComponent("plots"))
        }
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
