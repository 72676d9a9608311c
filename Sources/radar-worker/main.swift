import ArgumentParser
import Foundation
import RadarCore
import RadarDistributed

/// One data-parallel training rank: `mpirun -n N radar-worker --data DIR --output DIR --experiment NAME`.
/// Every rank holds a RADAR replica, reads its share of each epoch's shuffled samples, and
/// averages gradients with the ring all-reduce (in buckets, overlapped with backward) so all
/// replicas stay identical. Only rank 0 prints progress and writes outputs.
struct RadarWorker: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "radar-worker",
        abstract: "One data-parallel RADAR training rank (launch with mpirun).")

    @Option(help: "Prepared dataset directory (radar prepare / radar synth).") var data: String
    @Option(help: "Output root.") var output = "outputs"
    @Option(help: "Experiment name (outputs/<experiment>/).") var experiment = "radar"
    @Option(help: "Preset (tiny, mid, full) or a config JSON file.") var config = "full"
    @Option(help: "Images per micro-batch on each rank.") var batchSize = 32
    @Option(help: "Epochs.") var numEpochs = 10
    @Option(help: "Peak learning rate (OneCycle).") var learningRate = 5e-4
    @Option(help: "AdamW weight decay.") var weightDecay = 0.05
    @Option(help: "Micro-batches per optimizer step.") var accumulationSteps = 2
    @Option(help: "Early-stopping patience in epochs.") var patience = 10
    @Option(help: "Seed.") var seed: UInt64 = 42
    @Option(help: "CPU threads per rank (default: cores / ranks on this node).") var threads: Int?
    @Option(help: "Loader threads per rank.") var loaderThreads = 1
    @Flag(help: "Disable training augmentation.") var noAugment = false
    @Option(help: "Cap optimizer steps per epoch (0: all).") var maxStepsPerEpoch = 0
    @Option(help: "A timm vit_small_patch16_224 safetensors file for the encoder.") var pretrained: String?
    @Option(help: "Write last.safetensors.lz4 every N optimizer steps.") var checkpointEvery = 0
    @Option(help: "Continue from a checkpoint: a path, or auto.") var resume: String?
    @Flag(help: "Allow resuming a checkpoint written with another world size.") var allowWorldSizeChange = false
    @Option(help: "Stop after this many optimizer steps in total, writing the last checkpoint.") var stopAfterSteps = 0
    @Flag(help: "SyncBatchNorm: batch statistics all-reduced across ranks (turns overlap off).") var syncBn = false
    @Flag(help: "All-reduce after backward instead of overlapping it.") var noOverlap = false
    @Option(help: "Gradient bucket size in MiB.") var bucketMb = 25
    @Option(help: "Seconds any rank waits for a peer before giving up.") var timeout: Double = 30
    @Option(help: "Transport: mpi (tcp arrives with the coordinator work).") var transport = "mpi"

    func run() throws {
        guard transport == "mpi" else {
            logLine("radar-worker: --transport \(transport) is not available in this build; use mpi")
            throw ExitCode(2)
        }
        let mpi: MPIRuntime
        do { mpi = try MPIRuntime() } catch {
            logLine("radar-worker: \(error)")
            throw ExitCode.failure
        }
        mpi.timeout = timeout
        do {
            try train(mpi)
            mpi.finalize()
        } catch {
            logLine("radar-worker rank \(mpi.rank): error: \(error)")
            mpi.abort(1)
        }
    }

    func train(_ comm: MPIRuntime) throws {
        let env = ProcessInfo.processInfo.environment
        let localRanks = Int(env["OMPI_COMM_WORLD_LOCAL_SIZE"] ?? "") ?? comm.size
        var o = TrainOptions(data: data, output: output, experiment: experiment, config: try RADARConfig.resolve(config))
        o.batchSize = batchSize
        o.epochs = numEpochs
        o.learningRate = learningRate
        o.weightDecay = weightDecay
        o.accumulation = accumulationSteps
        o.patience = patience
        o.seed = seed
        o.threads = threads ?? max(1, ProcessInfo.processInfo.activeProcessorCount / max(localRanks, 1))
        o.loaderThreads = loaderThreads
        o.augment = !noAugment
        o.maxBatchesPerEpoch = maxStepsPerEpoch
        o.pretrained = pretrained
        o.checkpointEvery = checkpointEvery
        o.resume = resume
        o.allowWorldSizeChange = allowWorldSizeChange
        o.stopAfterSteps = stopAfterSteps
        o.rank = comm.rank
        o.worldSize = comm.size
        let run = try TrainingRun(options: o)
        let fingerprint = Fingerprint(config: o.config, layout: run.model.layout, manifestHash: run.set.manifest.contentHash,
                                      worldSize: comm.size, extra: [("batch size", String(batchSize)), ("seed", String(seed)),
                                                                    ("sync-bn", String(syncBn))])
        try fingerprint.verify(comm)
        let sync = GradientSync(communicator: comm, store: run.ctx.params, bucketBytes: bucketMb << 20, overlap: !noOverlap && !syncBn)
        try sync.broadcastInitialState()
        run.trainer.beforeBackward = { last in if last { sync.beginBackward(run.ctx) } }
        run.gradientHook = { _, finite in
            do { return try sync.finish(run.ctx, localFinite: finite) } catch {
                logLine("radar-worker rank \(comm.rank): \(error)")
                comm.abort(1)
            }
        }
        if syncBn {
            run.ctx.statisticsReducer = { p, n in
                do { try comm.allReduce(p, count: n) } catch {
                    logLine("radar-worker rank \(comm.rank): \(error)")
                    comm.abort(1)
                }
            }
        }
        run.allGather = { mine in
            let parts = try mine.withUnsafeBytes { try comm.allGather(Data($0)) }
            return parts.map { d in d.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) } }
        }
        if comm.rank == 0 {
            run.log = logLine
            logLine("radar-worker: \(comm.size) ranks x batch \(batchSize) x \(accumulationSteps) accumulation, \(o.threads) threads per rank, \(sync.buckets.count) gradient buckets, overlap \(sync.overlap), sync-bn \(syncBn)")
            var bar: ProgressReporter?
            var lastEpoch = -1
            run.onBatch = { epoch, done, total, loss in
                if epoch != lastEpoch { bar = ProgressReporter("epoch \(epoch + 1)/\(o.epochs)", total: total, unit: "img"); lastEpoch = epoch }
                bar?.update(done, items: done * o.batchSize * comm.size, detail: String(format: "loss %.4f", loss))
            }
        }
        let h = try run.run()
        // A hash of the parameters and buffers, so launchers and tests can check that replicas agree.
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for v in run.ctx.params.values { hash = (hash ^ UInt64(v.bitPattern)) &* 0x100_0000_01b3 }
        for v in run.ctx.params.buffers { hash = (hash ^ UInt64(v.bitPattern)) &* 0x100_0000_01b3 }
        print("rank \(comm.rank) parameters fnv1a \(String(hash, radix: 16)) steps \(run.trainer.optimizer.step) skipped \(run.trainer.skippedSteps)")
        if comm.rank == 0, let auc = h.testMetrics["auc"] {
            print("results: \(o.experimentDirectory)")
            print(String(format: "test AUC %.4f", auc))
        }
    }
}

RadarWorker.main()
