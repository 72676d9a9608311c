import ArgumentParser
import Foundation
import RadarCLI
import RadarCore

/// The main job until the data and distributed pipeline land: trains a RADAR on an in-memory
/// synthetic deepfake set and reports validation AUC.
struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Train a small RADAR on procedurally generated deepfakes and report validation AUC.")

    @Option(help: "Preset (tiny, mid, full) or a config JSON file.") var config = "tiny"
    @Option(help: "Training images (generated).") var trainImages = 1024
    @Option(help: "Validation images (generated, a different seed range).") var valImages = 256
    @Option(help: "Images per batch.") var batchSize = 16
    @Option(name: [.customLong("epochs"), .customLong("num-epochs")], help: "Epochs (--num-epochs, as radar train spells it, too).") var epochs = 6
    @Option(help: "Peak learning rate of OneCycle.") var learningRate: Double = 1e-3
    @Option(help: "Artifact strength knob of the generator, 0 (obvious) to 1 (faint).") var difficulty = 0.3
    @Option(help: "Threads for the CPU backend.") var threads = ProcessInfo.processInfo.activeProcessorCount
    @Option(help: "Seed for data, initialisation and dropout.") var seed: UInt64 = 1
    @Option(help: "A timm vit_small_patch16_224 safetensors file for the encoder (pos_embed resampled when the grid differs).")
    var pretrained: String?

    /// Each flag said by name (one sentence covered five, so `--train-images 0` read as a batch
    /// size problem); a NaN or negative learning rate and a difficulty of 2 ran.
    func validate() throws {
        try requireThreads(threads)
        // (Generated in memory: far above a million, sizes overflowed Int and trapped.)
        try requireFlag((1...1_000_000).contains(trainImages), "train-images", "in 1...1000000", trainImages)
        try requireFlag((2...1_000_000).contains(valImages), "val-images", "in 2...1000000 (an AUC needs both classes)", valImages)
        try requireBatch(batchSize)
        try requireFlag(batchSize <= trainImages, "batch-size", "at most --train-images (\(trainImages))", batchSize)
        try requireFlag((1...1_000_000).contains(epochs), "epochs", "in 1...1000000", epochs)
        try requireFlag(learningRate.isFinite && learningRate > 0, "learning-rate", "a finite number above 0", learningRate)
        try requireFlag(difficulty >= 0 && difficulty <= 1, "difficulty", "in [0, 1]", difficulty)
    }

    func run() throws {
        try failing {
            let cfg = try RADARConfig.resolve(config)
            let model = try RADARModel(config: cfg)
            let ctx = ExecutionContext(backend: CPUBackend(threads: threads), layout: model.layout, seed: seed)
            let be = ctx.backend
            model.initialize(ctx.params, seed: seed)
            if let pretrained {
                let resampled = try TimmWeights.load(pretrained, into: ctx.params, config: cfg)
                logLine("radar demo: encoder weights from \(pretrained)" + (resampled.isEmpty ? "" : " (resampled: \(resampled.joined(separator: ", ")))"))
            }
            let trainer = Trainer(model: model, ctx: ctx, lr: Float(learningRate))
            let stepsPerEpoch = trainImages / batchSize
            trainer.schedule = OneCycleLR(maxLR: learningRate, totalSteps: stepsPerEpoch * epochs)
            let synth = SyntheticFaces(size: cfg.imgSize, seed: seed, difficulty: difficulty)
            let per = 3 * cfg.imgSize * cfg.imgSize
            logLine("radar demo: \(model.layout.parameterElements) parameters, \(trainImages) train / \(valImages) val synthetic images at \(cfg.imgSize)px, batch \(batchSize), \(epochs) epochs, \(threads) threads")
            // The whole synthetic set fits in memory at demo sizes.
            let train = HostTensor.checked(Shape(trainImages, 3, cfg.imgSize, cfg.imgSize))
            var trainLabels = [Float](repeating: 0, count: trainImages)
            for i in 0..<trainImages {
                synth.normalized(i, mean: cfg.mean, std: cfg.std, into: train.pointer + i * per)
                trainLabels[i] = Float(synth.label(i))
            }
            let hostImages = HostTensor(Shape(batchSize, 3, cfg.imgSize, cfg.imgSize)), hostLabels = HostTensor(Shape(batchSize))
            let images = DeviceTensor(be, hostImages.shape), labels = DeviceTensor(be, hostLabels.shape)
            let probs = UnsafeMutablePointer<Float>.allocate(capacity: batchSize)
            defer { probs.deallocate() }
            var finalAUC = 0.0
            for epoch in 0..<epochs {
                let shuffle = RandomStream(seed: seed, stream: RandomStream.id("demo-shuffle", UInt64(epoch)))
                let order = (0..<trainImages).map { (shuffle.bits(UInt64($0)), $0) }.sorted { $0 < $1 }.map(\.1)
                let progress = ProgressReporter("epoch \(epoch + 1)/\(epochs)", total: stepsPerEpoch, unit: "img")
                let t0 = Date()
                var lossSum = 0.0
                for s in 0..<stepsPerEpoch {
                    for j in 0..<batchSize {
                        let src = order[s * batchSize + j]
                        (hostImages.pointer + j * per).update(from: train.pointer + src * per, count: per)
                        hostLabels.storage[j] = trainLabels[src]
                    }
                    be.upload(hostImages.buffer, into: images.tensor)
                    be.upload(hostLabels.buffer, into: labels.tensor)
                    let r = try trainer.step(images: images.tensor, labels: labels.tensor)!
                    lossSum += r.totalSum
                    progress.update(s + 1, items: (s + 1) * batchSize, detail: String(format: "loss %.4f", r.terms.total))
                }
                // Validation on fresh images (indices past the training range).
                var scores: [Float] = [], truth: [Int] = []
                var v = 0
                while v < valImages {
                    let n = min(batchSize, valImages - v)
                    let batch = HostTensor(Shape(n, 3, cfg.imgSize, cfg.imgSize))
                    for j in 0..<n { synth.normalized(trainImages + v + j, mean: cfg.mean, std: cfg.std, into: batch.pointer + j * per) }
                    let input = DeviceTensor(be, batch)
                    try withExtendedLifetime(input) { try trainer.predict(images: input.tensor, into: probs) }
                    for j in 0..<n { scores.append(probs[j]); truth.append(synth.label(trainImages + v + j)) }
                    v += n
                }
                finalAUC = BinaryMetrics.rocAUC(scores: scores, labels: truth) ?? .nan
                let acc = BinaryMetrics.accuracy(scores: scores, labels: truth)
                let rate = Double(stepsPerEpoch * batchSize) / Date().timeIntervalSince(t0)
                logLine("epoch \(epoch + 1)/\(epochs)  train_loss \(fixed(lossSum / Double(stepsPerEpoch)))  val_auc \(fixed(finalAUC))  "
                        + "val_acc \(fixed(acc))  \(fixed(rate, 1)) img/s")
            }
            print("validation AUC \(fixed(finalAUC))")
            let valFake = (0..<valImages).filter { synth.label(trainImages + $0) == 1 }.count
            if valFake == 0 || valFake == valImages {
                logLine("validation AUC undefined: the \(valImages) validation images are all \(valFake == 0 ? "real" : "fake") (raise --val-images)")
            }
        }
    }
}
