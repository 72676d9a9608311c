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
    public var accumulationSteps = 2
    public var patience = 10
    public var seed: UInt64 = 42
    public var threads = 1
    /// This node runs more compute threads than it has cores (ranks x `threads`): the CPU
    /// backend's worker pools then sleep between tasks at once instead of spinning.
    public var threadsShareCores = false
    public var loaderThreads = 1
    public var augment = true
    /// Cap on optimizer steps per epoch (0: all); for smoke runs.
    public var maxStepsPerEpoch = 0
    /// The backend the model runs on (`Devices`).
    public var device = Devices.defaultName
    /// A GPU run keeps only the CPUs next to its GPU (`CPUPlacement`; `--no-cpu-placement`).
    public var placeNearGPU = true
    /// auto, fp32, tf32 or bf16 (`Devices`); nil: RADAR_PRECISION, else auto.
    public var precision: String?
    /// A timm ViT safetensors file for the encoder (`TrainOptions.resolvePretrained` turns a Hub
    /// reference into one).
    public var pretrained: String?
    /// What resolving the options did (the pretrained weights' normalisation adopted), logged
    /// when the run starts.
    public var setupNotes: [String] = []
    /// Weights to start from: a RADAR checkpoint, model file or PyTorch state dict (`ModelWeights`;
    /// a state dict is read with this run's config). A resumed run takes its checkpoint's instead.
    public var initFrom: String?
    /// Write `last` every this many optimizer steps (0: only at the end of each epoch).
    public var checkpointEvery = 0
    /// A checkpoint to continue from ("auto": output/experiment/last.safetensors.lz4 if present).
    public var resume: String?
    /// Allow resuming a checkpoint written with another world size (docs/checkpoints.md).
    public var allowWorldSizeChange = false
    /// Allow resuming a checkpoint written for another dataset manifest or seed.
    public var allowDataChange = false
    /// Replace the run files of a previous run in the experiment folder (otherwise refused
    /// unless resuming).
    public var overwrite = false
    /// Stop (after writing `last`) once this many optimizer steps have been taken in total.
    public var stopAfterSteps = 0
    /// Unreadable training samples a rank may skip per epoch (-1: 0.1% of the train split, at
    /// least 10); each is logged and recorded in metrics.jsonl.
    public var maxBadSamples = -1
    /// After the test split's clean pass, one pass per degradation (`--test-perturb`): metrics.json's
    /// `test_perturbations`.
    public var testPerturbations: [Perturbation] = []
    /// An exponential moving average of the weights with this decay (timm's `--model-ema-decay`):
    /// validation, the best checkpoint and the test use it; nil: none (the reference's recipe).
    public var modelEmaDecay: Double?
    /// Data-parallel position of this process; a single process is (0, 1).
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
         "learning_rate": learningRate, "weight_decay": weightDecay, "accumulation_steps": accumulationSteps, "device": device,
         "patience": patience, "seed": seed, "threads": threads, "loader_threads": loaderThreads, "augment": augment,
         "max_steps_per_epoch": maxStepsPerEpoch, "pretrained": pretrained ?? NSNull(), "init_from": initFrom ?? NSNull(), "world_size": worldSize,
         "checkpoint_every": checkpointEvery, "test_perturbations": testPerturbations.map(\.description),
         "model_ema_decay": modelEmaDecay ?? NSNull(),
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
    /// In a checkpoint written mid-epoch: that epoch's loss sum and micro-batches so far, so a
    /// resumed run's train_loss equals an uninterrupted run's.
    public var partialEpochLoss: Double?
    public var partialEpochBatches: Int?
    /// The test ROC curve (for the plot), not serialised with the history.
    public var testCurve: (fpr: [Double], tpr: [Double], thresholds: [Float])?

    public init() {}

    enum CodingKeys: String, CodingKey {
        case trainLoss, valAUC, valAccuracy, valMetrics, bestValAUC, bestEpoch, testMetrics, skippedSteps, partialEpochLoss, partialEpochBatches
    }
}

/// The training loop of one replica: epochs over the train split through the streaming loader,
/// validation every epoch, early stopping on validation AUC, test metrics with the best weights.
/// Rank 0 writes config.json, metrics.json (the reference's schema plus our metrics) and
/// metrics.jsonl under output/experiment. With several replicas, `parallel` (set before `run`)
/// is how they agree; a single process needs nothing.
public final class TrainingRun {
    public let options: TrainOptions
    public let set: ShardSet
    public let model: RADARModel
    public let ctx: ExecutionContext
    public let trainer: Trainer
    public var log: (String) -> Void = { _ in }
    /// Progress display: (epoch, micro-batches done, micro-batches per epoch, last known loss).
    public var onBatch: ((Int, Int, Int, Double) -> Void)?
    /// The replicas this run trains with (a single process by default).
    public var parallel: any DataParallel {
        get { ctx.parallel }
        set { ctx.parallel = newValue }
    }
    /// The weights' moving average (`TrainOptions.modelEmaDecay`).
    public let ema: ModelEMA?
    /// Only rank 0 writes files.
    var writes: Bool { options.rank == 0 }
    /// The input batch on the device, allocated once: loader batches are uploaded into it.
    private let inputImages: DeviceTensor
    private let inputLabels: DeviceTensor
    /// What `CPUPlacement` did for a GPU run, for the rank's start line (nil: nothing to do).
    public private(set) var cpuPlacement: String?
    /// What setting up did (weights loaded), logged when the run starts.
    private var notes: [String] = []
    /// `splitTruth`'s answers.
    private var truthCache: [Split: (labels: [Int], sequences: [String])] = [:]

    public init(options: TrainOptions) throws {
        self.options = options
        set = try ShardSet(directory: options.data)
        if let n = set.indexNote { notes.append(n) }
        notes += options.setupNotes
        model = try RADARModel(config: options.config)
        DeviceMemoryContext.current = "--batch-size \(options.batchSize) per rank"
        let backend = try Devices.backend(options.device, threads: options.threads, precision: options.precision,
                                          threadsShareCores: options.threadsShareCores)
        ctx = ExecutionContext(backend: backend, layout: model.layout, seed: options.seed)
        model.initialize(ctx.params, seed: options.seed)
        if options.placeNearGPU, let bus = ctx.backend.devicePCIBusId {
            cpuPlacement = CPUPlacement.placeNear(busId: bus, gpu: options.device)
        }
        if let p = options.pretrained {
            let resampled = try TimmWeights.load(p, into: ctx.params, config: options.config)
            let encoder = model.layout.parameters.filter { $0.name.hasPrefix("encoder.") }.count
            notes.append("loaded \(encoder) encoder tensors from \(p)" + (resampled.isEmpty ? "" : " (resampled to the \(options.config.gridSize)x\(options.config.gridSize) patch grid: \(resampled.joined(separator: ", ")))"))
        }
        if let p = options.initFrom {
            let w = try ModelWeights.read(p, config: nil, fallback: options.config)
            do { try w.load(into: ctx.params, source: p) } catch where w.model.config != options.config {
                // The file says what model it holds: name the config fields first (the tensors'
                // shapes were all the error gave).
                throw Checkpoint.CheckpointError(path: p, reason: "it holds another model: its config differs from this run's in "
                    + ModelWeights.configDifferences(w.model.config, options.config, "file", "run").joined(separator: "; ")
                    + ": pass --config with the file's (its run folder's config.json)")
            }
            var note = "initialised every weight from \(w.describe(p))"
            if w.model.config != options.config {
                note += "; its config differs from this run's in " + ModelWeights.configDifferences(w.model.config, options.config, "file", "run").joined(separator: "; ")
            }
            notes.append(note)
        }
        trainer = Trainer(model: model, ctx: ctx, lr: Float(options.learningRate), weightDecay: Float(options.weightDecay),
                          accumulationSteps: options.accumulationSteps)
        let params = ctx.params
        ema = options.modelEmaDecay.map { ModelEMA(decay: Float($0), like: params) }
        if let d = options.modelEmaDecay {
            notes.append("moving average of the weights, decay \(d): validation, the best checkpoint and the test use it")
        }
        let c = options.config
        inputImages = DeviceTensor(ctx.backend, Shape(options.batchSize, 3, c.imgSize, c.imgSize))
        inputLabels = DeviceTensor(ctx.backend, Shape(options.batchSize))
        for split in [Split.train, .val] where set.refs(split).isEmpty {
            // Validation is drawn by whole sequences, each by a seeded hash: a small set can draw
            // none at a fraction above 0 (the remedy then is not "above 0").
            let fraction = set.manifest.parameters["val_fraction"].flatMap(Double.init) ?? 0
            let sequences = set.manifest.counts[Split.train.rawValue].map { $0.realSequences + $0.fakeSequences } ?? 0
            let remedy = fraction > 0
                ? ": --val-fraction \(fraction) drew none of the \(sequences) training sequences (each goes whole to one split, by a seeded hash): prepare it with a larger --val-fraction, more sequences or another --seed"
                : ": prepare it with --val-fraction above 0"
            throw DatasetError(path: options.data, reason: "the \(split.rawValue) split is empty" + (split == .val
                ? " (validation chooses the best epoch and stops early)" + remedy : ""))
        }
        // Here, before the experiment folder is made: a run that cannot take one step leaves nothing.
        guard batchesPerEpoch > 0 else {
            let (b, a, w) = (options.batchSize, options.accumulationSteps, options.worldSize)
            throw DatasetError(path: options.data, reason: "\(set.refs(.train).count) training images are fewer than one global batch "
                + "(--batch-size \(b) x --accumulation-steps \(a) x \(w) rank\(w == 1 ? "" : "s") = \(b * a * w))")
        }
    }

    /// Micro-batches per rank per epoch (the same for every epoch and rank).
    var batchesPerEpoch: Int { plan(epoch: 0).batchesPerRank }

    public func plan(epoch: Int) -> EpochPlan {
        EpochPlan(set: set, seed: options.seed, epoch: epoch, worldSize: options.worldSize, batchSize: options.batchSize,
                  accumulationSteps: options.accumulationSteps, maxStepsPerEpoch: options.maxStepsPerEpoch)
    }

    /// Uploads a loader batch into the preallocated input tensors; returns views of its size.
    func upload(_ b: StreamingLoader.Batch) -> (images: Tensor, labels: Tensor) {
        let n = b.labels.count, per = inputImages.shape.count / inputImages.shape[0]
        let images = inputImages.tensor.slice(from: 0, Shape(n, 3, options.config.imgSize, options.config.imgSize))
        let labels = inputLabels.tensor.slice(from: 0, Shape(n))
        ctx.backend.upload(UnsafeBufferPointer(rebasing: b.images.storage[0..<(n * per)]), into: images)
        ctx.backend.upload(b.labels, into: labels)
        return (images, labels)
    }

    /// Eval-mode scores of a split, and each head's (`HeadMetrics`). With several ranks each
    /// scores refs[rank::size] and the scores are gathered, so every rank gets the same arrays as
    /// one process would.
    public func evaluate(_ split: Split, perturbation: Perturbation? = nil) throws -> (scores: [Float], logits: [Float], labels: [Int], sequences: [String], heads: HeadMetrics) {
        let c = options.config
        let all = set.refs(split)
        let size = options.worldSize, rank = options.rank
        let mine = stride(from: rank, to: all.count, by: size).map { all[$0] }
        var myScores: [Float] = [], myLogits: [Float] = [], labels: [Int] = [], seqs: [String] = []
        var heads = HeadMetrics(useBadm: c.useBadm, useAadm: c.useAadm)
        // Per image what the heads need after a gather: probability, boundary, frequency,
        // reasoning, external, the last iteration's attention (2), the gate; and the final logit
        // (temperature scaling).
        let width = 9
        var rows: [Float] = []
        let scoring = SplitScoring(set: set, trainer: trainer, batchSize: options.batchSize, loaderThreads: options.loaderThreads,
                                   seed: options.seed, input: inputImages.tensor)
        for r in try scoring.run(mine, perturbation: perturbation, beforeBatch: JobAbort.check) {
            let e = r.explanation
            myScores.append(e.probability); myLogits.append(e.logit); labels.append(r.label); seqs.append(r.sequence)
            heads.append(e)
            let last = e.attention.last ?? [.nan, .nan]
            rows += [e.probability, e.boundary ?? .nan, e.frequency ?? .nan, e.reasoning, e.external, last[0], last[1], e.gate, e.logit]
        }
        guard size > 1 else { return (myScores, myLogits, labels, seqs, heads) }
        let per = (all.count + size - 1) / size
        let parts = try parallel.gather(rows + [Float](repeating: .nan, count: (per - myScores.count) * width))
        var scores = [Float](repeating: 0, count: all.count), logits = [Float](repeating: 0, count: all.count)
        var gathered = [ArraySlice<Float>](repeating: [], count: all.count)
        for r in 0..<size {
            for j in 0..<per where r + size * j < all.count {
                gathered[r + size * j] = parts[r][(j * width)..<((j + 1) * width)]
                scores[r + size * j] = parts[r][j * width]
                logits[r + size * j] = parts[r][j * width + 8]
            }
        }
        heads = HeadMetrics(useBadm: c.useBadm, useAadm: c.useAadm)
        for v in gathered {
            let v = Array(v)
            heads.append(Explanation(probability: v[0], logit: v[8], boundary: c.useBadm ? v[1] : nil, frequency: c.useAadm ? v[2] : nil,
                                     reasoning: v[3], external: v[4], gate: v[7], iterations: [v[3]], attention: [[v[5], v[6]]]))
        }
        let truth = try splitTruth(split, all)
        return (scores, logits, truth.labels, truth.sequences, heads)
    }

    /// The labels and sequences of a split's samples in `refs` order, read once per run on every
    /// core (each validation read every record again, one after another: 58k reads per rank and
    /// epoch on WildDeepfake's validation split).
    func splitTruth(_ split: Split, _ refs: [SampleRef]) throws -> (labels: [Int], sequences: [String]) {
        if let known = truthCache[split] { return known }
        let records = UnsafeMutableBufferPointer<Result<SampleInfo, Error>?>.allocate(capacity: refs.count)
        records.initialize(repeating: nil)
        defer { records.deinitialize(); records.deallocate() }
        let set = self.set
        concurrentPerform(iterations: (refs.count + 255) / 256) { chunk in
            for i in (chunk * 256)..<min(refs.count, (chunk + 1) * 256) {
                records[i] = Result { try set.indices[refs[i].shard].info(refs[i].index) }
            }
        }
        let infos = try records.map { try $0!.get() }
        let truth = (infos.map(\.label), infos.map(\.sequence))
        truthCache[split] = truth
        return truth
    }

    var lastPath: String { (options.experimentDirectory as NSString).appendingPathComponent("last.safetensors.lz4") }
    var bestPath: String { (options.experimentDirectory as NSString).appendingPathComponent("best.safetensors.lz4") }

    func checkpointState(epoch: Int, dataPosition: Int, history: RunHistory, sinceBest: Int) -> Checkpoint.State {
        var st = Checkpoint.State()
        st.optimizerStep = trainer.optimizer.step
        st.epoch = epoch
        st.dataPosition = dataPosition
        st.microStep = ctx.step
        st.seed = options.seed
        st.bestValAUC = history.bestValAUC
        st.sinceBest = sinceBest
        st.worldSize = options.worldSize
        st.batchSize = options.batchSize
        st.accumulationSteps = options.accumulationSteps
        st.schedulerMaxLR = trainer.schedule?.maxLR ?? 0
        st.schedulerTotalSteps = trainer.schedule?.totalSteps ?? 0
        st.skippedSteps = trainer.skippedSteps
        st.configJSON = String(decoding: options.config.jsonData(), as: UTF8.self)
        st.dataManifest = set.manifest.contentHash
        st.dataDirectory = options.data
        let e = JSONEncoder()
        e.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        st.historyJSON = String(decoding: (try? e.encode(history)) ?? Data("{}".utf8), as: UTF8.self)
        return st
    }

    func save(_ path: String, _ st: Checkpoint.State) throws {
        guard writes else { return }
        try Checkpoint.write(path, store: ctx.params, optimizer: trainer.optimizer, state: st, ema: ema?.store)
    }

    /// The OneCycle schedule of this run: its total is every optimizer step of every epoch.
    func makeSchedule() -> OneCycleLR {
        OneCycleLR(maxLR: options.learningRate, totalSteps: batchesPerEpoch / options.accumulationSteps * options.epochs)
    }

    /// The trainer's skipped optimizer steps when this epoch began; whether a skip was said.
    var skippedBeforeEpoch = 0, warnedSkip = false

    /// The checkpoint `resumeState` read, once it has.
    private(set) var resumedPath: String?

    /// Loads `options.resume`; returns the state to continue from, or nil for a fresh start.
    func resumeState() throws -> Checkpoint.State? {
        guard let r = options.resume else { return nil }
        if r == "auto" && !FileManager.default.fileExists(atPath: lastPath) { return nil }
        // A run's folder stands for its last checkpoint (it was "a folder, not a file").
        let path = r == "auto" ? lastPath : try Checkpoint.resumeFile(r)
        let (tensors, st) = try Checkpoint.read(path)
        resumedPath = path
        try checkResumable(st, path: path)
        try Checkpoint.restore(tensors, state: st, into: ctx.params, optimizer: trainer.optimizer, path: path)
        if let ema, try !Checkpoint.restoreEMA(tensors, into: ema.store, path: path) {
            ema.copy(from: ctx.params)
            log("\(path) holds no moving average of the weights: --model-ema-decay starts it from the resumed weights")
        }
        ctx.step = st.microStep
        log("resumed from \(path): epoch \(st.epoch + 1), optimizer step \(st.optimizerStep), data position \(st.dataPosition)")
        return st
    }

    /// Refuses a checkpoint of another model, world size (unless allowed) or learning-rate schedule.
    func checkResumable(_ st: Checkpoint.State, path: String) throws {
        let saved = try RADARConfig.decode(Data(st.configJSON.utf8), source: "\(path): metadata config")
        if saved != options.config {
            let diff = ModelWeights.configDifferences(saved, options.config, "checkpoint", "now")
            throw Checkpoint.CheckpointError(path: path, reason: "config differs from the run's: " + diff.joined(separator: "; "))
        }
        // The data and the seed decide which samples an epoch deals and in what order: continuing on
        // others would mix two runs silently.
        if !options.allowDataChange {
            if !st.dataManifest.isEmpty && st.dataManifest != set.manifest.contentHash {
                throw Checkpoint.CheckpointError(path: path, reason: "written for the dataset \(st.dataDirectory.isEmpty ? "" : st.dataDirectory + " ")(manifest \(st.dataManifest)), this run's --data \(options.data) has manifest \(set.manifest.contentHash): pass --allow-data-change to continue on other data, or start a new --experiment")
            }
            if st.seed != options.seed {
                throw Checkpoint.CheckpointError(path: path, reason: "written with --seed \(st.seed), this run has --seed \(options.seed): resume with the same seed (or pass --allow-data-change)")
            }
        }
        if st.batchSize > 0 && (st.batchSize != options.batchSize || st.accumulationSteps != options.accumulationSteps) {
            throw Checkpoint.CheckpointError(path: path, reason: "written with --batch-size \(st.batchSize) --accumulation-steps \(st.accumulationSteps), this run has --batch-size \(options.batchSize) --accumulation-steps \(options.accumulationSteps): resume with the same values (the data position and the schedule depend on them)")
        }
        if st.epoch > options.epochs {
            throw Checkpoint.CheckpointError(path: path, reason: "already trained \(st.epoch) epochs, more than this run's --num-epochs \(options.epochs)")
        }
        // The position in this run's micro-batches (mapped when the world size changes).
        let mapped = Double(st.dataPosition) * Double(st.worldSize) / Double(options.worldSize)
        if mapped > Double(batchesPerEpoch) {
            throw Checkpoint.CheckpointError(path: path, reason: "data position \(st.dataPosition) is past the end of an epoch (\(batchesPerEpoch) micro-batches per rank): is this checkpoint from another dataset?")
        }
        if st.worldSize != options.worldSize && !options.allowWorldSizeChange {
            throw Checkpoint.CheckpointError(path: path, reason: "written with world size \(st.worldSize), this run has \(options.worldSize) (pass --allow-world-size-change to map the data position)")
        }
        // The schedule is a function of (learning rate, steps per epoch, epochs): resuming under
        // another one would silently bend the learning-rate curve. World-size changes alter the
        // steps per epoch by design and are let through with the flag above.
        let schedule = makeSchedule()
        if st.schedulerTotalSteps > 0 && st.worldSize == options.worldSize
            && (st.schedulerMaxLR != schedule.maxLR || st.schedulerTotalSteps != schedule.totalSteps) {
            throw Checkpoint.CheckpointError(path: path, reason: "its OneCycle schedule (max_lr \(st.schedulerMaxLR), total_steps \(st.schedulerTotalSteps)) differs from this run's (max_lr \(schedule.maxLR), total_steps \(schedule.totalSteps)): resume with the same --learning-rate, --num-epochs, --batch-size, --accumulation-steps and --max-steps-per-epoch")
        }
    }

    /// Where a run continues: history, early-stopping counter, epoch and micro-batch.
    struct Position {
        var history = RunHistory()
        var sinceBest = 0
        var epoch = 0
        var batch = 0
    }

    func startingPosition(_ resumed: Checkpoint.State?) -> Position {
        var p = Position()
        guard let st = resumed else { return p }
        let d = JSONDecoder()
        d.nonConformingFloatDecodingStrategy = .convertFromString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        p.history = (try? d.decode(RunHistory.self, from: Data(st.historyJSON.utf8))) ?? RunHistory()
        p.sinceBest = st.sinceBest
        (p.epoch, p.batch) = (st.epoch, st.dataPosition)
        if st.worldSize != options.worldSize {
            // The data position is a count of global samples: map it to this world size's batches.
            p.batch = st.dataPosition * st.worldSize / options.worldSize / options.accumulationSteps * options.accumulationSteps
        }
        return p
    }

    /// The best weights so far (host copies: the named point where they leave the device).
    struct BestWeights {
        var values: [Float]
        var buffers: [Float]
    }

    /// The best weights a resumed run goes on with: this folder's best checkpoint, or, resumed
    /// from another run's checkpoint into a new folder, that run's best beside it (copied here by
    /// the writing rank, so the folder is complete; the test split used the last weights, and
    /// export found no best, when the run did not improve on it).
    func loadBestWeights(resumedFrom checkpoint: String?) -> BestWeights? {
        var path = bestPath
        if !FileManager.default.fileExists(atPath: path), let c = checkpoint {
            let other = (parentPath(c) as NSString).appendingPathComponent("best.safetensors.lz4")
            guard FileManager.default.fileExists(atPath: other) else { return nil }
            path = other
            if writes, let d = FileManager.default.contents(atPath: other), (try? writeFileAtomically(d, to: bestPath)) != nil {
                log("best checkpoint so far: \(other) (copied into \(options.experimentDirectory))")
            }
        }
        guard let (t, _) = try? Checkpoint.read(path) else { return nil }
        let tmp = ParameterStore(layout: model.layout, backend: ctx.backend)
        guard (try? StateDict.load(t.filter { !$0.key.hasPrefix("optim.") }, into: tmp, source: path)) != nil else { return nil }
        return BestWeights(values: tmp.downloadValues(), buffers: tmp.downloadBuffers())
    }

    /// Every replica must start from the same state: each rank reads the checkpoint it resumes
    /// from (and the best weights beside it) from its own file system, so a rank on a host that
    /// cannot see rank 0's files (`--resume auto` finding nothing there, or another copy) would
    /// start elsewhere and the job would diverge or wait on mismatched collectives until a
    /// timeout. The ranks gather (resumed, optimizer step, epoch, data position, parameter hash,
    /// best weights' hash) and stop, each naming every rank's state, where any differs.
    func agreeOnStartingState(_ resumed: Checkpoint.State?, best: BestWeights?) throws {
        guard parallel.worldSize > 1 else { return }
        let params = ctx.params.contentHash()
        var b = FNV1a()
        if let best { for v in best.values { b.mix(v.bitPattern) }; for v in best.buffers { b.mix(v.bitPattern) } }
        let bestHash = best == nil ? 0 : b.value
        let words: [UInt32] = [resumed == nil ? 0 : 1, UInt32(truncatingIfNeeded: resumed?.optimizerStep ?? 0),
                               UInt32(truncatingIfNeeded: resumed?.epoch ?? 0), UInt32(truncatingIfNeeded: resumed?.dataPosition ?? 0),
                               UInt32(truncatingIfNeeded: params), UInt32(truncatingIfNeeded: params >> 32),
                               UInt32(truncatingIfNeeded: bestHash), UInt32(truncatingIfNeeded: bestHash >> 32)]
        // Bit patterns travel as floats (`gather` copies bytes), compared as bits.
        let all = try parallel.gather(words.map { Float(bitPattern: $0) }).map { $0.map(\.bitPattern) }
        guard Set(all).count > 1 else { return }
        func state(_ w: [UInt32]) -> String {
            let hash = String(UInt64(w[5]) << 32 | UInt64(w[4]), radix: 16)
            let bestText = w[6] == 0 && w[7] == 0 ? "no best weights" : "best weights fnv1a \(String(UInt64(w[7]) << 32 | UInt64(w[6]), radix: 16))"
            return (w[0] == 0 ? "started afresh" : "resumed at optimizer step \(w[1]), epoch \(w[2] + 1), data position \(w[3])")
                + ", parameters fnv1a \(hash), \(bestText)"
        }
        let states = all.enumerated().map { "rank \($0.offset): \(state($0.element))" }.joined(separator: "; ")
        let mine = resumedPath.map { "read \($0)" } ?? "found no checkpoint" + (options.resume == "auto" ? " at \(lastPath)" : "")
        throw Checkpoint.CheckpointError(path: resumedPath ?? lastPath, reason: "the ranks would start from different states (this rank \(mine)): \(states); every rank must read the same checkpoint and best weights: a --output every host sees (a shared file system), or the experiment folder copied to each host")
    }

    /// metrics.jsonl, appended line by line (rank 0 only).
    final class StepLog {
        let handle: FileHandle?
        let path: String
        /// A write failed (said once).
        var failed = false
        /// The same scalars as TensorBoard event files, in the run's `tensorboard/` folder.
        let tensorBoard: TensorBoardLog?
        var tensorBoardFailed = false
        /// `resumedFrom`: the checkpoint's (optimizer step, epoch); lines the interrupted run
        /// wrote after it are dropped, so the log has each step once, as an uninterrupted run's.
        /// Where the two warnings go (the run's log).
        let say: (String) -> Void
        init(path: String, fresh: Bool, writes: Bool, resumedFrom: (step: Int, epoch: Int)? = nil, hparams: [(String, TensorBoardLog.HParam)] = [],
             say: @escaping (String) -> Void = logLine) throws {
            self.path = path
            self.say = say
            if writes && (fresh || !FileManager.default.fileExists(atPath: path)) { _ = FileManager.default.createFile(atPath: path, contents: nil) }
            if writes, !fresh, let r = resumedFrom, let text = try? String(contentsOfFile: path, encoding: .utf8) {
                let kept = text.split(separator: "\n").filter { line in
                    guard let o = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else { return false }
                    if o["train_loss"] != nil || o["bad_sample"] != nil { return (o["epoch"] as? Int ?? Int.max) < r.epoch }
                    return (o["step"] as? Int ?? Int.max) <= r.step
                }
                let body = kept.map { $0 + "\n" }.joined()
                if body.utf8.count != text.utf8.count { try writeFileAtomically(Data(body.utf8), to: path) }
            }
            handle = writes ? FileHandle(forWritingAtPath: path) : nil
            _ = try? handle?.seekToEnd()
            // Like the lines, not the run's state: an event file that cannot be trimmed on resume
            // (a full disk) is said, and the run goes on without TensorBoard.
            do {
                tensorBoard = writes ? try TensorBoardLog(directory: (parentPath(path) as NSString).appendingPathComponent("tensorboard"),
                                                          resumedAtStep: fresh ? nil : resumedFrom?.step, hparams: hparams) : nil
            } catch {
                say("warning: \(error); no TensorBoard scalars for this run")
                tensorBoard = nil
            }
        }
        deinit { try? handle?.close() }
        /// Appends one line. The log is a record, not the run's state, so a failed write (a full
        /// disk) does not stop training; it is said once, and the checkpoint write that follows
        /// stops the run if the disk stays full.
        func record(_ obj: [String: Any]) {
            guard let handle, let d = try? jsonData(obj) else { return }
            do { try handle.write(contentsOf: d + Data("\n".utf8)) } catch {
                if !failed { say("warning: \(path): write failed: \(systemReason(error)); its lines from here on are lost") }
                failed = true
            }
        }
        /// Scalars at an optimizer step for TensorBoard (tags like `train/loss`); as with the
        /// lines, a failed write is said once and does not stop the run.
        func scalars(step: Int, _ values: [(String, Double)]) {
            tensorBoardWrite { try $0.scalars(step: step, values) }
        }

        /// The HParams session's end (the run finished).
        func sessionEnded(step: Int) {
            tensorBoardWrite { try $0.sessionEnded(step: step) }
        }

        private func tensorBoardWrite(_ body: (TensorBoardLog) throws -> Void) {
            guard let tensorBoard, !tensorBoardFailed else { return }
            do { try body(tensorBoard) } catch {
                say("warning: \(error); TensorBoard's scalars from here on are lost")
                tensorBoardFailed = true
            }
        }
    }

    /// How one epoch's training ended.
    /// `speed`: images_per_s, step_seconds (training time per optimizer step) and, in a
    /// data-parallel job, the communication figures (`DataParallel.communicationStatistics`).
    enum EpochEnd { case finished(lossSum: Double, microBatches: Int, speed: [String: Double]), stopped }

    /// Trains one epoch from micro-batch `start`; `.stopped` when `stopAfterSteps` was reached
    /// (after writing `last`).
    func trainEpoch(_ epoch: Int, from start: Int, _ position: Position, _ steps: StepLog) throws -> EpochEnd {
        let c = options.config
        let epochPlan = plan(epoch: epoch)
        try parallel.confirmEpochPlan(epoch: epoch, digest: epochPlan.digest)
        // This rank's share of the epoch: every rank gets the same number of micro-batches.
        let mine = epochPlan.samples(rank: options.rank)
        let loader = StreamingLoader(set: set, refs: Array(mine.dropFirst(start * options.batchSize)), batchSize: options.batchSize,
                                     size: c.imgSize, mean: c.mean, std: c.std, augment: options.augment, seed: options.seed,
                                     epoch: epoch, threads: options.loaderThreads, dropLast: true, resize: .bilinearOrArea)
        loader.maxBadSamples = options.maxBadSamples >= 0 ? options.maxBadSamples : max(10, set.refs(.train).count / 1000)
        let rank = options.rank, log = self.log
        loader.onBadSample = { key, reason in log("rank \(rank): skipped unreadable sample \(key): \(reason)") }
        defer {
            loader.stop()  // an epoch left early (a stop, an error) leaves no worker waiting
            for b in loader.badSamples { steps.record(["epoch": epoch, "rank": rank, "bad_sample": b.key, "reason": b.reason]) }
        }
        // A run resumed mid-epoch continues that epoch's loss sum.
        let resumedHere = start > 0 && start == position.batch && epoch == position.epoch
        var lossSum = resumedHere ? position.history.partialEpochLoss ?? 0 : 0
        var n = resumedHere ? position.history.partialEpochBatches ?? 0 : 0
        var lastLoss = Double.nan, local = 0, optimizerSteps = 0
        skippedBeforeEpoch = trainer.skippedSteps
        var batchIndex = start
        let t0 = monotonicNow()  // durations on the monotonic clock (a wall-clock step gave a wrong images/s)
        // Time blocked on the loader: a step that waits for images is input-bound, and more
        // compute (a GPU, more ranks) will not make it faster.
        var dataWait = 0.0
        while true {
            let w0 = DispatchTime.now().uptimeNanoseconds
            guard let b = try loader.next() else { break }
            FaultInjection.point("batch")
            dataWait += Double(DispatchTime.now().uptimeNanoseconds - w0) / 1e9
            let input = upload(b)
            let result = try trainer.step(images: input.images, labels: input.labels)
            n += 1
            local += 1
            batchIndex += 1
            if let r = result {
                lossSum += r.totalSum
                lastLoss = r.terms.total
            }
            onBatch?(epoch, batchIndex, epochPlan.batchesPerRank, lastLoss)
            try JobAbort.check()
            guard let r = result else { continue }
            optimizerSteps += 1
            if !r.skipped { ema?.update(from: ctx.params) }
            if r.skipped && !warnedSkip {
                // Said once; the epoch lines count the rest (a diverged run printed NaN losses
                // and nothing else).
                warnedSkip = true
                log("warning: optimizer step \(trainer.optimizer.step + 1) was skipped: its loss or gradients are not finite; "
                    + "if this goes on, the learning rate (--learning-rate \(String(format: "%g", options.learningRate))) may be too high")
            }
            FaultInjection.point("step")
            var entry: [String: Any] = ["epoch": epoch, "step": trainer.optimizer.step, "lr": r.lr, "grad_norm": r.gradNorm,
                                        "skipped": r.skipped]
            for (k, v) in r.terms.named { entry["loss_\(k)"] = v }
            steps.record(entry)
            steps.scalars(step: trainer.optimizer.step, [("train/loss", r.terms.total), ("train/lr", r.lr), ("train/grad_norm", r.gradNorm)]
                          + r.terms.named.filter { $0.0 != "total" }.map { ("train/loss_\($0.0)", $0.1) })
            var partial = position.history
            (partial.partialEpochLoss, partial.partialEpochBatches) = (lossSum, n)
            let state = { self.checkpointState(epoch: epoch, dataPosition: batchIndex, history: partial, sinceBest: position.sinceBest) }
            if try parallel.agreeToStop(Preemption.requested) {
                try save(lastPath, state())
                throw Preemption.Preempted(step: trainer.optimizer.step, signal: Preemption.requested ? Preemption.signalName : "a signal to another rank")
            }
            if options.stopAfterSteps > 0 && trainer.optimizer.step >= options.stopAfterSteps {
                try save(lastPath, state())
                log("stopped after \(trainer.optimizer.step) optimizer steps; resume with --resume auto")
                return .stopped
            }
            if options.checkpointEvery > 0 && trainer.optimizer.step % options.checkpointEvery == 0 { try save(lastPath, state()) }
        }
        let elapsed = max(monotonicNow().timeIntervalSince(t0), 1e-9)
        var speed = parallel.communicationStatistics()
        speed["images_per_s"] = Double(local * options.batchSize * options.worldSize) / elapsed
        if optimizerSteps > 0 {
            speed["step_seconds"] = elapsed / Double(optimizerSteps)
            // The most any rank waited: one slow loader holds every rank at the all-reduce (one
            // tiny gather an epoch; every rank ends the loop after the same optimizer step).
            let waits = try parallel.gather([Float(dataWait / Double(optimizerSteps))]).map { Double($0.first ?? 0) }
            if let most = waits.indices.max(by: { waits[$0] < waits[$1] }) {
                speed["data_wait_seconds"] = waits[most]
                if waits.count > 1 { speed["data_wait_rank"] = Double(most) }
            }
        }
        return .finished(lossSum: lossSum, microBatches: n, speed: speed)
    }

    /// Said after an epoch's speed when a rank spent over a fifth of its training time waiting
    /// for the loader: where more loader threads would pay.
    public static func inputBoundNote(_ speed: [String: Double], loaderThreads: Int) -> String {
        guard let wait = speed["data_wait_seconds"], let step = speed["step_seconds"], step > 0, wait / step > 0.2 else { return "" }
        let who = speed["data_wait_rank"].map { " on rank \(Int($0))" } ?? ""
        return "  (\(Int((100 * wait / step).rounded()))% of it waiting for images\(who): input-bound at --loader-threads \(loaderThreads))"
    }

    /// Validation after an epoch: records the metrics, keeps the best weights, writes `best` and
    /// `last`; returns true when early stopping ends the run.
    func validate(_ epoch: Int, lossSum: Double, microBatches n: Int, speed: [String: Double], _ p: inout Position,
                  best: inout BestWeights?, _ steps: StepLog) throws -> Bool {
        FaultInjection.point("validation")
        (p.history.partialEpochLoss, p.history.partialEpochBatches) = (nil, nil)
        // With a moving average, it is what is validated, kept as the best and tested; the
        // training weights come back before `last` is written.
        let training = ema.map { e -> (values: [Float], buffers: [Float]) in
            defer { e.load(into: ctx.params) }
            return (ctx.params.downloadValues(), ctx.params.downloadBuffers())
        }
        var restored = false
        func restoreTraining() {
            guard let training, !restored else { return }
            ctx.params.uploadValues(training.values)
            ctx.params.uploadBuffers(training.buffers)
            restored = true
        }
        defer { restoreTraining() }
        let val = try evaluate(.val)
        let m = BinaryMetrics.all(scores: val.scores, labels: val.labels, sequences: val.sequences, logits: val.logits)
        let heads = val.heads.report(labels: val.labels, sequences: val.sequences)
        p.history.trainLoss.append(lossSum / Double(max(n, 1)))
        p.history.valAUC.append(m["auc"]!)
        p.history.valAccuracy.append(m["accuracy"]!)
        p.history.valMetrics.append(m)
        let imagesPerSecond = speed["images_per_s"] ?? 0
        steps.record(["epoch": epoch, "train_loss": p.history.trainLoss.last!, "val": m, "val_heads": heads].merging(speed) { a, _ in a })
        let skipped = trainer.skippedSteps - skippedBeforeEpoch
        steps.scalars(step: trainer.optimizer.step, [("epoch/number", Double(epoch + 1)), ("epoch/train_loss", p.history.trainLoss.last!),
                                                     ("epoch/skipped_steps", Double(skipped))]
                      + m.sorted { $0.key < $1.key }.map { ("val/\($0.key)", $0.value) }
                      + HeadMetrics.scalars(heads, prefix: "val_heads")
                      + speed.filter { $0.key != "data_wait_rank" }.sorted { $0.key < $1.key }.map { ("perf/\($0.key)", $0.value) })
        parallel.epochFinished(epoch: epoch, step: trainer.optimizer.step,
                               metrics: m.merging(["train_loss": p.history.trainLoss.last!, "images_per_s": imagesPerSecond]) { a, _ in a })
        log("epoch \(epoch + 1)/\(options.epochs)  train_loss \(fixed(p.history.trainLoss.last!))  val_auc \(fixed(m["auc"]!))  "
            + "val_acc \(fixed(m["accuracy"]!))  val_eer \(fixed(m["eer"]!))  \(fixed(imagesPerSecond, 1)) img/s"
            + TrainingRun.inputBoundNote(speed, loaderThreads: options.loaderThreads)
            + (skipped > 0 ? "  (\(skipped) optimizer step\(skipped == 1 ? "" : "s") skipped: not finite)" : ""))
        var stop = false
        if !m["auc"]!.isFinite && !p.history.valAUC.dropLast().contains(where: { !$0.isFinite }) {
            log(undefinedAUCWarning(.val, scores: val.scores, labels: val.labels))
        }
        if m["auc"]! > p.history.bestValAUC {
            p.history.bestValAUC = m["auc"]!
            p.history.bestEpoch = epoch
            best = BestWeights(values: ctx.params.downloadValues(), buffers: ctx.params.downloadBuffers())
            p.sinceBest = 0
            try save(bestPath, checkpointState(epoch: epoch + 1, dataPosition: 0, history: p.history, sinceBest: p.sinceBest))
        } else {
            p.sinceBest += 1
            stop = p.sinceBest >= options.patience
        }
        restoreTraining()
        try save(lastPath, checkpointState(epoch: epoch + 1, dataPosition: 0, history: p.history, sinceBest: p.sinceBest))
        if stop { log("early stopping: validation AUC has not improved for \(options.patience) epochs") }
        return stop
    }

    /// A warning when `split` holds images of one class only (AUC is undefined there), else nil.
    func oneClassWarning(_ split: Split) -> String? {
        guard let c = set.manifest.counts[split.rawValue], c.total > 0, c.real == 0 || c.fake == 0 else { return nil }
        let consequence = split == .val ? "no best checkpoint can be chosen (early stopping counts every epoch as no improvement; test metrics use the last weights)"
            : "test AUC, EER, AP and sequence AUC are undefined (null in metrics.json)"
        return "warning: the \(split.rawValue) split has \(c.real) real and \(c.fake) fake images, so its AUC is undefined: \(consequence)"
    }

    /// Why `split`'s AUC came out undefined: one class in the split, NaN scores (a model whose
    /// outputs are not finite), or neither that we can name.
    func undefinedAUCWarning(_ split: Split, scores: [Float], labels: [Int]) -> String {
        if let w = oneClassWarning(split) { return w }
        return "warning: \(split.rawValue) AUC is undefined" + (BinaryMetrics.undefinedAUCReason(scores: scores, labels: labels).map { ": " + $0 } ?? "")
    }

    /// Test metrics with the best weights (uploaded back), when the set has a test split.
    func test(_ history: inout RunHistory, best: BestWeights?) throws {
        if let best {
            ctx.params.uploadValues(best.values)
            ctx.params.uploadBuffers(best.buffers)
        } else {
            ema?.load(into: ctx.params)  // the last weights: their moving average, where there is one
        }
        let temperature = try fitTemperature(best: best, history)
        guard !set.refs(.test).isEmpty else { return }
        if best == nil { log("warning: no best checkpoint (validation AUC was never defined): test metrics use the last weights") }
        let test = try evaluate(.test)
        history.testMetrics = BinaryMetrics.all(scores: test.scores, labels: test.labels, sequences: test.sequences, logits: test.logits)
        testHeads = test.heads.report(labels: test.labels, sequences: test.sequences)
        history.testCurve = BinaryMetrics.rocCurve(scores: test.scores, labels: test.labels)
        if !(history.testMetrics["auc"] ?? .nan).isFinite { log(undefinedAUCWarning(.test, scores: test.scores, labels: test.labels)) }
        let which = best == nil ? "last weights" : "best epoch \(history.bestEpoch + 1)"
        let t = history.testMetrics
        log("test (\(which)): auc \(fixed(t["auc"]!))  accuracy \(fixed(t["accuracy"]!))  eer \(fixed(t["eer"]!))  "
            + "ap \(fixed(t["average_precision"]!))  sequence_auc \(fixed(t["sequence_auc"]!))  ece \(fixed(t["ece"]!))  brier \(fixed(t["brier"]!))")
        if let temperature { calibration = calibrated(temperature, test: test, metrics: history.testMetrics) }
        // --test-perturb: the same weights on degraded test images, one pass each.
        testPerturbations = try options.testPerturbations.map { p in
            let r = try evaluate(.test, perturbation: p)
            let m = BinaryMetrics.all(scores: r.scores, labels: r.labels, sequences: r.sequences, logits: r.logits)
            log("test \(p): auc \(fixed(m["auc"]!))  accuracy \(fixed(m["accuracy"]!))  eer \(fixed(m["eer"]!))")
            var out: [String: Any] = ["perturbation": p.description]
            for (k, v) in m { out[k] = v }
            for (k, v) in r.heads.report(labels: r.labels, sequences: r.sequences) { out[k] = v }
            return out
        }
        if !(t["auc"] ?? .nan).isFinite {
            // NaN outputs first: they leave AUC undefined whatever the split holds.
            let fake = test.labels.filter { $0 == 1 }.count
            testAUCUndefinedReason = test.scores.contains(where: \.isNaN) || (fake > 0 && fake < test.labels.count)
                ? BinaryMetrics.undefinedAUCReason(scores: test.scores, labels: test.labels) ?? "see the warning above"
                : "the test split has one class (\(test.labels.count - fake) real, \(fake) fake images)"
        }
    }

    /// The temperature of the weights the test split uses (`TemperatureScaling`), fitted on the
    /// validation split's logits (one more validation pass with those weights), or nil, said, when
    /// none fits (one class, NaN logits). Written as `calibration.json`, which `radar predict` and
    /// `radar evaluate` read with `--temperature FILE`.
    func fitTemperature(best: BestWeights?, _ history: RunHistory) throws -> TemperatureScaling.Fit? {
        let val = try evaluate(.val)
        let fit: TemperatureScaling.Fit
        do { fit = try TemperatureScaling.fit(logits: val.logits, labels: val.labels) } catch {
            log("calibration: no temperature fitted on the validation split: \(error)")
            calibration = nil
            // A resumed run's earlier file would name a temperature for other weights.
            if writes { unlink((options.experimentDirectory as NSString).appendingPathComponent("calibration.json")) }
            return nil
        }
        var doc = fit.json
        doc["fitted_on"] = "val"
        doc["weights"] = best == nil ? "last" : "best epoch \(history.bestEpoch + 1)"
        calibration = doc
        log("calibration: temperature \(fixed(fit.temperature)) fitted on the validation split (log loss \(fixed(fit.logLossBefore)) -> \(fixed(fit.logLossAfter)))"
            + (fit.atBound ? "; the best fit lies beyond \(TemperatureScaling.range), so this is its bound" : ""))
        if writes {
            try writeFileAtomically(try jsonData(doc, pretty: true), to: (options.experimentDirectory as NSString).appendingPathComponent("calibration.json"))
        }
        return fit
    }

    /// `calibration` with the test split's ECE, Brier score and log loss at T = 1 and at the fitted
    /// temperature (the ranking metrics and accuracy do not change with it).
    /// `metrics`: the test split's at T = 1, as the run already has them.
    func calibrated(_ fit: TemperatureScaling.Fit, test: (scores: [Float], logits: [Float], labels: [Int], sequences: [String], heads: HeadMetrics),
                    metrics before: [String: Double]) -> [String: Any]? {
        var doc = calibration ?? fit.json
        let scaled = zip(test.logits, test.scores).map { TemperatureScaling.probability(logit: $0, modelProbability: $1, temperature: fit.temperature) }
        let after = BinaryMetrics.all(scores: scaled, labels: test.labels, sequences: test.sequences, logits: test.logits, temperature: fit.temperature)
        var figures: [String: Double] = [:]
        for k in ["ece", "brier", "log_loss"] { (figures[k], figures[k + "_calibrated"]) = (before[k]!, after[k]!) }
        doc["test"] = figures
        log("calibration: test ece \(fixed(before["ece"]!)) -> \(fixed(after["ece"]!))  brier \(fixed(before["brier"]!)) -> \(fixed(after["brier"]!))  "
            + "log loss \(fixed(before["log_loss"]!)) -> \(fixed(after["log_loss"]!)) at temperature \(fixed(fit.temperature))")
        return doc
    }

    /// `fitTemperature`'s document, with the test split's figures once `calibrated` has them:
    /// metrics.json's `calibration`.
    public private(set) var calibration: [String: Any]?

    /// Each head's test metrics, the gate and the attention per class (`HeadMetrics.report`),
    /// once the test split has been evaluated: metrics.json's `test_heads`.
    public private(set) var testHeads: [String: Any]?

    /// TensorBoard's `calibration/temperature` and `calibration/test_ece_calibrated` (and Brier, log loss).
    var calibrationScalars: [(String, Double)] {
        guard let c = calibration, let t = c["temperature"] as? Double else { return [] }
        let test = (c["test"] as? [String: Double] ?? [:]).filter { $0.key.hasSuffix("_calibrated") }.sorted { $0.key < $1.key }
        return [("calibration/temperature", t)] + test.map { ("calibration/test_\($0.key)", $0.value) }
    }

    /// TensorBoard's tag for a degraded test pass's AUC: `test_perturbed/jpeg_50_auc`.
    static func perturbedTag(_ spec: String) -> String {
        "test_perturbed/" + spec.replacingOccurrences(of: ":", with: "_").replacingOccurrences(of: ".", with: "p") + "_auc"
    }

    /// The test split under each `--test-perturb` degradation: metrics, heads, `perturbation`.
    public private(set) var testPerturbations: [[String: Any]] = []

    /// Why the test AUC is undefined, when it is (for the run's last line).
    public private(set) var testAUCUndefinedReason: String?

    /// The run's last line: "test AUC 0.9957", or why it is undefined; nil without a test split.
    public func testAUCLine(_ h: RunHistory) -> String? {
        guard let auc = h.testMetrics["auc"] else { return nil }
        // It said "the test split has one class" for a model whose outputs were NaN as well.
        return auc.isFinite ? String(format: "test AUC %.4f", auc) : "test AUC undefined: \(testAUCUndefinedReason ?? "see the warning above")"
    }

    public func run() throws -> RunHistory {
        let dir = options.experimentDirectory
        let existed = FileManager.default.fileExists(atPath: dir)
        // Only rank 0 writes: another rank (its own --output, another host) leaves no empty folder.
        if writes { try makeDirectory(dir) }
        // A folder this run made is removed where the run ends before its first step, by an
        // error or by a device's stop (out of memory sizing the batch ends the process).
        let madeHere = writes && !existed
        let cleanup = madeHere ? DeviceFailure.atStop { ExperimentFolder.removeIfNeverStepped(dir) } : nil
        defer { if let cleanup { DeviceFailure.cancelAtStop(cleanup) } }
        do { return try run(in: dir) } catch {
            if madeHere { ExperimentFolder.removeIfNeverStepped(dir) }
            throw error
        }
    }

    private func run(in dir: String) throws -> RunHistory {
        let lock = writes ? try FolderLock.experiment(dir) : nil
        defer { lock?.release() }
        if writes {
            for name in removeStaleTemporaries(in: dir) { log("removed \(name), left by a run killed while writing") }
        }
        trainer.schedule = makeSchedule()
        for n in notes { log(n) }
        for split in [Split.val, .test] { if let w = oneClassWarning(split) { log(w) } }
        // One folder, one run: a fresh start never writes over another run's files silently (with
        // --resume the folder is the run's own: auto without a last checkpoint starts it afresh).
        if writes && options.resume == nil {
            let removed = try ExperimentFolder.prepareFresh(dir, overwrite: options.overwrite)
            if !removed.isEmpty { log("\(options.overwrite ? "--overwrite: removed" : "replaced") the previous run's \(removed.joined(separator: ", "))\(options.overwrite ? "" : " (it ended before its first step)")") }
        }
        // A checkpoint that cannot be resumed from leaves no folder this run made (only its
        // .lock is in it: `run` removes it).
        let resumed = try resumeState()
        if writes {
            try writeFileAtomically(try JSONSerialization.data(withJSONObject: options.jsonObject, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]),
                                    to: (dir as NSString).appendingPathComponent("config.json"))
        }
        let jsonl = (dir as NSString).appendingPathComponent("metrics.jsonl")
        let steps = try StepLog(path: jsonl, fresh: resumed == nil, writes: writes, resumedFrom: resumed.map { ($0.optimizerStep, $0.epoch) },
                                hparams: writes ? TensorBoardLog.hparams(fromJSON: (try? JSONSerialization.data(withJSONObject: options.jsonObject)) ?? Data()) : [],
                                say: log)
        var position = startingPosition(resumed)
        var best = resumed != nil ? loadBestWeights(resumedFrom: resumedPath) : nil
        try agreeOnStartingState(resumed, best: best)
        // Resumed from another run's checkpoint into this folder: that checkpoint is this
        // folder's last until the run writes its own (a finished run resumed here wrote none,
        // and --resume auto on this folder found nothing).
        if writes, resumed != nil, let from = resumedPath, !FileManager.default.fileExists(atPath: lastPath),
           let d = FileManager.default.contents(atPath: from) {
            try writeFileAtomically(d, to: lastPath)
        }
        for epoch in position.epoch..<options.epochs {
            let start = epoch == position.epoch ? position.batch : 0
            guard case let .finished(lossSum, n, speed) = try trainEpoch(epoch, from: start, position, steps) else {
                position.history.skippedSteps = trainer.skippedSteps
                return position.history
            }
            if try validate(epoch, lossSum: lossSum, microBatches: n, speed: speed, &position, best: &best, steps) { break }
        }
        var history = position.history
        history.skippedSteps = trainer.skippedSteps
        try test(&history, best: best)
        steps.scalars(step: trainer.optimizer.step, history.testMetrics.sorted { $0.key < $1.key }.map { ("test/\($0.key)", $0.value) }
                      + (testHeads.map { HeadMetrics.scalars($0, prefix: "test_heads") } ?? [])
                      + testPerturbations.compactMap { r in (r["auc"] as? Double).map { (Self.perturbedTag(r["perturbation"] as! String), $0) } }
                      + calibrationScalars)
        if writes {
            // The best weights (now in the store) as a model-only file PyTorch loads with strict=True.
            try ModelFile.write(ctx.params, config: options.config, to: (dir as NSString).appendingPathComponent("model.safetensors"))
            try writeMetrics(history)
            try RunPlots.write(history: history, steps: jsonl, to: (dir as NSString).appendingPathComponent("plots"))
        }
        steps.sessionEnded(step: trainer.optimizer.step)  // last: the run has written everything
        return history
    }

    /// metrics.json in the reference's schema (history.train_loss, history.val_auc,
    /// history.val_acc, best_val_auc, test_metrics.auc, test_metrics.accuracy, timestamp) plus ours.
    func writeMetrics(_ h: RunHistory) throws {
        var obj: [String: Any] = [
            "history": ["train_loss": h.trainLoss, "val_auc": h.valAUC, "val_acc": h.valAccuracy, "val_metrics": h.valMetrics],
            "best_val_auc": h.bestValAUC, "best_epoch": h.bestEpoch + 1,
            "test_metrics": h.testMetrics,
            "skipped_steps": h.skippedSteps,
            "timestamp": ISO8601DateFormatter().string(from: Date()),
        ]
        if let testHeads { obj["test_heads"] = testHeads }
        if !testPerturbations.isEmpty { obj["test_perturbations"] = testPerturbations }
        if let calibration { obj["calibration"] = calibration }
        try writeFileAtomically(try jsonData(obj, pretty: true), to: (options.experimentDirectory as NSString).appendingPathComponent("metrics.json"))
    }
}

extension TrainOptions {
    /// `pretrained` as a file: a Hub reference (`timm`, `hf-hub:ORG/NAME[@REVISION]`) becomes its
    /// `model.safetensors` in the Hugging Face cache (downloaded when missing, with its
    /// `config.json`). Where the weights' timm `config.json` (beside the file: a Hub snapshot
    /// holds both) gives a normalisation other than the config's, the run takes the weights'
    /// (MODEL.md: 0.5/0.5 when the pretrained ViT weights say so, as timm's augreg weights do),
    /// and says so in `setupNotes`.
    public mutating func resolvePretrained(environment: [String: String] = ProcessInfo.processInfo.environment,
                                           log: @escaping (String) -> Void = { _ in }) throws {
        guard let spec = pretrained else { return }
        var file = spec
        if let ref = try HubModel.reference(spec) {
            file = try HubModel.file(ref, "model.safetensors", environment: environment, log: log)
            do { _ = try HubModel.file(ref, "config.json", environment: environment, log: log) } catch {
                setupNotes.append("\(ref): no config.json (\(error)): the config's normalisation is kept")
            }
            setupNotes.append("--pretrained \(spec): \(file)")
            pretrained = file
        }
        let configFile = (parentPath(file) as NSString).appendingPathComponent("config.json")
        if let n = HubModel.normalisation(configFile: configFile), n.mean != config.mean || n.std != config.std {
            func text(_ v: [Double]) -> String { v.map { String(format: "%g", $0) }.joined(separator: ",") }
            setupNotes.append("normalisation mean \(text(n.mean)) std \(text(n.std)) from \(configFile) (the pretrained weights'), "
                              + "not the config's mean \(text(config.mean)) std \(text(config.std))")
            config.mean = n.mean
            config.std = n.std
        }
    }
}
