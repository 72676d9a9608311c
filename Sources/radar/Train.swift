import ArgumentParser
import Foundation
import RadarCore

/// `radar train`: the training loop in one process (no MPI) on a prepared dataset directory.
struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Train RADAR on a prepared dataset directory in one process; writes outputs/<experiment>/.")

    @Option(help: "Prepared dataset directory (radar prepare / radar synth).") var data: String
    @Option(help: "Output root.") var output = "outputs"
    @Option(help: "Experiment name (outputs/<experiment>/).") var experiment = "radar"
    @Option(help: "Preset (tiny, mid, full) or a config JSON file.") var config = "full"
    @Option(help: "Images per micro-batch.") var batchSize = 32
    @Option(help: "Epochs.") var numEpochs = 10
    @Option(help: "Peak learning rate (OneCycle).") var learningRate = 5e-4
    @Option(help: "AdamW weight decay.") var weightDecay = 0.05
    @Option(help: "Micro-batches per optimizer step.") var accumulationSteps = 2
    @Option(help: "Early-stopping patience in epochs (validation AUC).") var patience = 10
    @Option(help: "Seed.") var seed: UInt64 = 42
    @Option(help: "Compute threads.") var threads = ProcessInfo.processInfo.activeProcessorCount
    @Option(help: "Loader threads (decode + augment).") var loaderThreads = 1
    @Flag(help: "Disable training augmentation.") var noAugment = false
    @Option(help: "Cap optimizer steps per epoch (0: all), for smoke runs.") var maxStepsPerEpoch = 0
    @Option(help: "A timm vit_small_patch16_224 safetensors file for the encoder.") var pretrained: String?
    @Option(help: "Write last.safetensors.lz4 every N optimizer steps (always at the end of each epoch).") var checkpointEvery = 0
    @Option(help: "Continue from a checkpoint: a path, or auto (the experiment's last checkpoint, if any).") var resume: String?
    @Flag(help: "Allow resuming a checkpoint written with another world size (the data position is mapped).")
    var allowWorldSizeChange = false
    @Option(help: "Stop after this many optimizer steps in total, writing the last checkpoint (0: run to the end).")
    var stopAfterSteps = 0

    func run() throws {
        try failing {
            var o = TrainOptions(data: data, output: output, experiment: experiment, config: try RADARConfig.resolve(config))
            o.batchSize = batchSize
            o.epochs = numEpochs
            o.learningRate = learningRate
            o.weightDecay = weightDecay
            o.accumulation = accumulationSteps
            o.patience = patience
            o.seed = seed
            o.threads = threads
            o.loaderThreads = loaderThreads
            o.augment = !noAugment
            o.maxBatchesPerEpoch = maxStepsPerEpoch
            o.pretrained = pretrained
            o.checkpointEvery = checkpointEvery
            o.resume = resume
            o.allowWorldSizeChange = allowWorldSizeChange
            o.stopAfterSteps = stopAfterSteps
            let run = try TrainingRun(options: o)
            run.log = logLine
            var bar: ProgressReporter?
            var lastEpoch = -1
            run.onBatch = { epoch, done, total, loss in
                if epoch != lastEpoch { bar = ProgressReporter("epoch \(epoch + 1)/\(o.epochs)", total: total, unit: "img"); lastEpoch = epoch }
                bar?.update(done, items: done * o.batchSize, detail: String(format: "loss %.4f", loss))
            }
            logLine("radar train: \(run.model.layout.parameterCount) parameters, \(run.set.refs(.train).count) train / \(run.set.refs(.val).count) val / \(run.set.refs(.test).count) test images, batch \(batchSize) x \(accumulationSteps), \(threads) threads")
            let h = try run.run()
            print("results: \(o.experimentDirectory)")
            if let auc = h.testMetrics["auc"] { print(String(format: "test AUC %.4f", auc)) }
        }
    }
}
