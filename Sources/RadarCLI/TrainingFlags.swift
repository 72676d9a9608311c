import ArgumentParser
import Foundation
import RadarCore
import RadarDistributed

/// A file a command will write at its end: its folder exists and is writable, and it is not a
/// folder itself (said before any work).
public func requireWritableFile(_ path: String, flag: String, expected: String = "a file name") throws {
    let dir = containingFolder(path)
    var isDir: ObjCBool = false
    guard FileManager.default.fileExists(atPath: dir, isDirectory: &isDir), isDir.boolValue else {
        throw ValidationError("\(flag) \(path): the folder \(dir) does not exist")
    }
    guard access(dir, W_OK) == 0 else { throw ValidationError("\(flag) \(path): the folder \(dir) is not writable") }
    guard !FileManager.default.fileExists(atPath: path, isDirectory: &isDir) || !isDir.boolValue else {
        throw ValidationError("\(flag) \(path): a folder, expected \(expected)")
    }
}

/// A folder a command will write into, checked before any work: it is a writable folder, or it
/// does not exist yet and the nearest folder above it that does is writable (`radar train
/// --output` said "cannot create the folder: Permission denied" after the model was built).
public func requireWritableFolder(_ path: String, flag: String) throws {
    var isDir: ObjCBool = false
    var existing = path
    while !FileManager.default.fileExists(atPath: existing, isDirectory: &isDir) {
        let up = containingFolder(existing)
        if up == existing { return }
        existing = up
    }
    let shown = existing == path ? "" : " (the folder \(existing), where it would be made)"
    guard isDir.boolValue else {
        throw ValidationError("\(flag) \(path): \(existing == path ? "a file, not a folder" : "\(existing) is a file, not a folder")")
    }
    guard access(existing, W_OK | X_OK) == 0 else {
        throw ValidationError("\(flag) \(path): not writable\(shown): \(String(cString: strerror(errno)))")
    }
}

/// A file a command will read (a checkpoint, weights) checked before any work: missing,
/// unreadable or not a regular file is said with the flag's name (`radar train --resume` said
/// "No such file or directory" a second later, once the model was built, and without the flag).
public func requireReadableFile(_ path: String, flag: String) throws {
    if let why = fileReadProblem(path) { throw ValidationError("\(flag) \(path): \(why)") }
}

/// A flag's value checked before any work (in a command's `validate`): a one-line error naming
/// the flag and what it allows, and exit status 64.
public func requireFlag(_ ok: Bool, _ flag: String, _ allowed: String, _ got: Any) throws {
    if !ok { throw ValidationError("--\(flag) must be \(allowed), got \(got)") }
}

/// The most threads `--threads` (or `--loader-threads`) takes: four per CPU this process may use,
/// and at least 64. Far more once stopped a step for minutes (20,000 threads woken for every
/// parallel region on 2 CPUs) or trapped when the kernel refused to start them.
public var maximumThreads: Int { max(64, 4 * ProcessInfo.processInfo.activeProcessorCount) }

/// The largest `--batch-size` any command takes: 65,536 images of 224 x 224 are 39 GB of input
/// alone, past any device; far above it, tensor sizes overflowed Int and trapped.
public let maximumBatchSize = 65536

/// `--flag` (a batch size) is from 1 to `maximumBatchSize`.
public func requireBatch(_ size: Int, flag: String = "batch-size") throws {
    try requireFlag((1...maximumBatchSize).contains(size), flag, "in 1...\(maximumBatchSize)", size)
}

/// `--accumulation-steps` is from 1 to 65,536.
public func requireAccumulation(_ steps: Int) throws {
    try requireFlag((1...65536).contains(steps), "accumulation-steps", "in 1...65536", steps)
}

/// `--flag`'s thread count is from 1 to `maximumThreads`.
public func requireThreads(_ threads: Int, flag: String = "threads") throws {
    let cpus = ProcessInfo.processInfo.activeProcessorCount
    try requireFlag(threads >= 1 && threads <= maximumThreads, flag,
                    "from 1 to \(maximumThreads) (four per CPU of the \(cpus) this process may use, at least 64: more threads than CPUs only slow the work)", threads)
}

/// The training flags `radar train` and `radar-worker` share (the reference pipeline's, plus
/// checkpointing), and the options they make.
public struct TrainingFlags: ParsableArguments {
    @Option(help: "Prepared dataset directory (radar prepare / radar synth).") public var data: String
    @Option(help: "Output root.") public var output = "outputs"
    @Option(help: "Experiment name (outputs/<experiment>/). Default: radar_YYYYMMDD_HHMMSS; with --resume auto, the newest experiment in --output that has a last checkpoint.")
    public var experiment: String?
    @Flag(help: "Replace the files of a previous run in the experiment folder (a fresh run into a folder that holds one is refused otherwise).")
    public var overwrite = false
    @Option(help: "Preset (tiny, mid, full) or a config JSON file.") public var config = "full"
    @Option(help: "Images per micro-batch (per rank).") public var batchSize = 32
    @Option(name: [.customLong("num-epochs"), .customLong("epochs")], help: "Epochs (--epochs, as radar demo spells it, too).") public var numEpochs = 10
    @Option(help: "Peak learning rate (OneCycle).") public var learningRate = 5e-4
    @Option(help: "AdamW weight decay.") public var weightDecay = 0.05
    @Option(help: "Micro-batches per optimizer step.") public var accumulationSteps = 2
    @Option(help: "Early-stopping patience in epochs (validation AUC).") public var patience = 10
    @Option(help: "Seed.") public var seed: UInt64 = 42
    @Option(help: "Compute threads (default: cores / ranks on this node).") public var threads: Int?
    @Option(help: "Backend: cpu; cuda or cuda:N (one GPU; RADAR_CUDA_DRIVER=emulator runs it on the emulated device); cpu-fenced (tensor memory fenced off from the host) or cuda-emulated, both for tests. Default: RADAR_DEVICE, else cpu.")
    public var device: String?
    @Option(help: ArgumentHelp(stringLiteral: Devices.precisionHelp))
    public var precision: String?
    @Flag(help: "Let several local ranks share a GPU (by default each rank needs a GPU of its own).") public var allowGpuSharing = false
    @Flag(help: "Leave this process on every CPU it was given (by default a GPU run keeps those next to its GPU, where sysfs names them).")
    public var noCpuPlacement = false
    @Option(help: "Loader threads (decode + augment). Default: on a GPU, this rank's share of the cores less one (at most 16); on the CPU, 1.")
    public var loaderThreads: Int?
    @Flag(help: "Disable training augmentation.") public var noAugment = false
    @Option(help: "Cap optimizer steps per epoch (0: all), for smoke runs.") public var maxStepsPerEpoch = 0
    @Option(help: "The encoder's starting weights: a timm ViT safetensors file (with a timm config.json beside it, its normalisation is used), or from the Hugging Face Hub (cached as huggingface_hub caches it; HF_HUB_OFFLINE, HF_ENDPOINT, HF_TOKEN honoured): timm (the reference's vit_small_patch16_224, i.e. hf-hub:timm/vit_small_patch16_224.augreg_in21k_ft_in1k) or hf-hub:ORG/NAME[@REVISION].") public var pretrained: String?
    @Option(help: "Start from these weights: a RADAR checkpoint, a model.safetensors (or hf-hub:ORG/NAME[@REVISION]: the repository's), or a PyTorch state dict (safetensors, optionally LZ4-framed) for this run's --config. Fresh optimizer and schedule.")
    public var initFrom: String?
    @Option(help: "Write last.safetensors.lz4 every N optimizer steps (always at the end of each epoch).") public var checkpointEvery = 0
    @Option(help: "Continue from a checkpoint: a path (a run's folder: its last checkpoint), or auto (the experiment's last checkpoint, if any).") public var resume: String?
    @Flag(help: "Allow resuming a checkpoint written with another world size (the data position is mapped).")
    public var allowWorldSizeChange = false
    @Flag(help: "Allow resuming a checkpoint written for another dataset (manifest) or --seed.")
    public var allowDataChange = false
    @Option(help: "Stop after this many optimizer steps in total, writing the last checkpoint (0: run to the end).")
    public var stopAfterSteps = 0
    @Option(help: "Unreadable training samples each rank may skip per epoch (logged, in metrics.jsonl) before the run stops listing them (default: 0.1% of the train split, at least 10).")
    public var maxBadSamples: Int?
    @Option(name: .customLong("test-perturb"), help: "After the test metrics, one more test pass per degradation (repeatable; as radar evaluate --perturb): jpeg:Q, blur:3|5, noise:SIGMA, scale:F. In metrics.json's test_perturbations.")
    public var testPerturb: [String] = []
    @Option(help: "Keep an exponential moving average of the weights with this decay (as timm's --model-ema-decay, e.g. 0.9998), updated after every optimizer step: validation, the best checkpoint and the test use it. Off by default (the reference's recipe has none).")
    public var modelEmaDecay: Double?

    public init() {}

    /// Every value checked before any work (ArgumentParser calls this after parsing): a bad one is
    /// a one-line error naming the flag and what it allows, and exit status 64.
    public func validate() throws {
        let need = requireFlag
        // Upper bounds far past any machine's memory or time (sizes and step counts multiplied
        // from these overflowed, and trapped, at 2^63 - 1).
        try requireBatch(batchSize)
        try need((1...1_000_000).contains(numEpochs), "num-epochs", "in 1...1000000", String(numEpochs))
        try requireAccumulation(accumulationSteps)
        try need(learningRate.isFinite && learningRate > 0, "learning-rate", "a finite number above 0", String(learningRate))
        try need(weightDecay.isFinite && weightDecay >= 0, "weight-decay", "a finite number of at least 0", String(weightDecay))
        try need(patience >= 1, "patience", "at least 1", String(patience))
        try requireThreads(threads ?? 1)
        try requireThreads(loaderThreads ?? 1, flag: "loader-threads")
        try need(maxStepsPerEpoch >= 0, "max-steps-per-epoch", "0 (all) or more", String(maxStepsPerEpoch))
        try need(checkpointEvery >= 0, "checkpoint-every", "0 (epoch ends only) or more", String(checkpointEvery))
        try need(stopAfterSteps >= 0, "stop-after-steps", "0 (run to the end) or more", String(stopAfterSteps))
        try need((maxBadSamples ?? 0) >= 0, "max-bad-samples", "0 or more", String(maxBadSamples ?? 0))
        if let d = modelEmaDecay { try need(d > 0 && d < 1, "model-ema-decay", "above 0 and below 1", String(d)) }
        for p in testPerturb {
            do { _ = try Perturbation(parsing: p, flag: "--test-perturb") } catch { throw ValidationError("\(error)") }
        }
        // The experiment is one folder inside --output: no separators, no "." or "..".
        if let e = experiment {
            try need(!e.isEmpty && !e.contains("/") && e != "." && e != "..", "experiment", "a folder name inside --output (no '/', not '.' or '..')", "\"\(e)\"")
        }
        if let p = pretrained {
            do { _ = try HubModel.reference(p) } catch { throw ValidationError("--pretrained \(error)") }
        }
        if initFrom != nil && pretrained != nil {
            throw ValidationError("--init-from sets every weight, the encoder's too: drop --pretrained")
        }
        if overwrite && resume != nil { throw ValidationError("--overwrite starts afresh and --resume continues: choose one") }
        // Both ran, --resume silently winning over the weights --init-from named.
        if initFrom != nil && resume != nil {
            throw ValidationError("--init-from starts from weights with a fresh optimizer and schedule, --resume continues a run with its own: choose one")
        }
        // The files a run reads, checked before the model is built: a run's folder stands for
        // its last (--resume) or best (--init-from) checkpoint.
        for (flag, given, resolve) in [("--resume", resume.flatMap { $0 == "auto" ? nil : $0 }, Checkpoint.resumeFile),
                                       ("--init-from", initFrom.flatMap { $0.hasPrefix("hf-hub:") ? nil : $0 }, ModelWeights.file)] {
            guard let given else { continue }
            let file: String
            do { file = try resolve(given) } catch { throw ValidationError("\(flag) \(error)") }
            try requireReadableFile(file, flag: flag)
        }
        if let d = device { try need(Devices.isValid(d), "device", "one of " + Devices.names.joined(separator: ", "), d) }
        if let p = precision { try need(Devices.isValidPrecision(p), "precision", "auto, fp32, tf32 or bf16", p) }
    }

    /// The experiment folder name: --experiment, else `ExperimentFolder.defaultName` (with several
    /// ranks, rank 0's choice is the one every rank uses: see radar-worker).
    public func experimentName() -> String {
        experiment ?? ExperimentFolder.defaultName(output: output, resume: resume)
    }

    /// The run's options; `localRanks` processes share this node's cores; `experimentName`: the
    /// agreed folder name when --experiment is not given.
    public func options(rank: Int = 0, worldSize: Int = 1, localRanks: Int = 1, localRank: Int = 0, experimentName agreed: String? = nil) throws -> TrainOptions {
        var o = TrainOptions(data: data, output: output, experiment: agreed ?? experimentName(), config: try RADARConfig.resolve(config))
        o.batchSize = batchSize
        o.epochs = numEpochs
        o.learningRate = learningRate
        o.weightDecay = weightDecay
        o.accumulationSteps = accumulationSteps
        o.device = device ?? Devices.defaultName
        o.precision = precision
        guard Devices.isValid(o.device) else { throw ValidationError(Devices.UnknownDevice(name: o.device).description) }
        o.device = try RankPlacement.device(o.device, localRank: localRank, localSize: localRanks, allowSharing: allowGpuSharing,
                                            gpuCount: CUDADrivers.deviceCount)
        o.placeNearGPU = !noCpuPlacement
        o.patience = patience
        o.seed = seed
        o.threads = threads ?? max(1, ProcessInfo.processInfo.activeProcessorCount / max(localRanks, 1))
        // More compute threads on this node than cores (--threads above cores / ranks): a thread
        // spinning between tasks would take a core another rank's thread needs, so they sleep.
        o.threadsShareCores = Devices.threadsShareCores(threads: o.threads, localRanks: localRanks,
                                                        cores: ProcessInfo.processInfo.activeProcessorCount)
        o.loaderThreads = loaderThreads ?? Devices.defaultLoaderThreads(device: o.device, localRanks: localRanks)
        o.augment = !noAugment
        o.maxStepsPerEpoch = maxStepsPerEpoch
        o.pretrained = pretrained
        try o.resolvePretrained(log: logLine)
        o.initFrom = initFrom
        o.overwrite = overwrite
        o.allowDataChange = allowDataChange
        o.checkpointEvery = checkpointEvery
        o.modelEmaDecay = modelEmaDecay
        o.resume = resume
        o.allowWorldSizeChange = allowWorldSizeChange
        o.stopAfterSteps = stopAfterSteps
        o.maxBadSamples = maxBadSamples ?? -1
        o.testPerturbations = try testPerturb.map { try Perturbation(parsing: $0, flag: "--test-perturb") }
        o.rank = rank
        o.worldSize = worldSize
        return o
    }
}

/// Progress bar for a training run on rank 0 (epoch, step, loss, images/s, ETA).
/// `report` gets (epoch, batch, loss, images/s since the epoch started).
public func attachProgress(_ run: TrainingRun, imagesPerBatch: Int, showBar: Bool = true, report: ((Int, Int, Double, Double) -> Void)? = nil) {
    var bar: ProgressReporter?
    var lastEpoch = -1, epochStart = monotonicNow(), firstBatch = 0
    let epochs = run.options.epochs
    run.onBatch = { epoch, done, total, loss in
        if epoch != lastEpoch {
            if showBar { bar = ProgressReporter("epoch \(epoch + 1)/\(epochs)", total: total, unit: "img") }
            lastEpoch = epoch
            epochStart = monotonicNow()
            firstBatch = done - 1
        }
        let elapsed = max(monotonicNow().timeIntervalSince(epochStart), 1e-9)
        // The whole run's ETA at this epoch's pace (validation not included; early stopping may end sooner).
        let batchesLeft = Double(total - done + (epochs - epoch - 1) * total)
        let runETA = Double(done - firstBatch) > 0 ? batchesLeft * elapsed / Double(done - firstBatch) : 0
        bar?.update(done, items: done * imagesPerBatch, detail: String(format: "loss %.4f  run ETA %@", loss, ProgressReporter.clock(runETA)))
        let rate = Double((done - firstBatch) * imagesPerBatch) / elapsed
        report?(epoch, done, loss, rate)
    }
}

/// How a rank finds its job (radar-worker, radar bench allreduce): for the tcp transport its rank,
/// the world size and the coordinator (flags, else the launcher's environment, see
/// `LaunchEnvironment`); the job token from a file or RADAR_JOB_TOKEN.
public struct RankFlags: ParsableArguments {
    @Option(help: "TCP: this rank (default: RANK).") public var rank: Int?
    @Option(help: "TCP: number of ranks (default: WORLD_SIZE).") public var worldSize: Int?
    @Option(help: "Coordinator HOST:PORT (default: in-process on rank 0; for tcp at MASTER_ADDR:MASTER_PORT).") public var coordinator: String?
    @Option(help: "File holding the job token (default: RADAR_JOB_TOKEN).") public var tokenFile: String?

    public init() {}

    /// A malformed --coordinator is a usage error before any rank starts (under mpirun it was
    /// each rank's MPI_Abort, with its banner).
    public func validate() throws {
        if let c = coordinator, hostPort(c) == nil { throw ValidationError("--coordinator \(hostPortExpectation(c))") }
    }

    /// The token, if one is given.
    public func token() throws -> Data? { try JobToken.read(file: tokenFile) }

    /// The token the tcp transport cannot do without.
    public func requiredToken() throws -> Data {
        try JobToken.required(file: tokenFile, missing: "the tcp transport needs a job token: --token-file FILE or RADAR_JOB_TOKEN (make one with `openssl rand -hex 32`)")
    }

    /// Rank, world size and coordinator address for the tcp transport.
    public func launch() throws -> LaunchEnvironment {
        try LaunchEnvironment.resolve(rank: rank, worldSize: worldSize, coordinator: coordinator, env: ProcessInfo.processInfo.environment)
    }
}

/// `--grad-dtype fp32|bf16` (radar-worker, radar bench allreduce).
extension WireFormat: ExpressibleByArgument {}
