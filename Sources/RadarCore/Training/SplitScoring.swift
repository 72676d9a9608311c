import Foundation

/// One eval-mode pass over samples of a prepared dataset, in their order: each image's key,
/// sequence, label and explanation (its probability, final logit and what each head said).
/// `radar evaluate` and `radar calibrate` score a split with it; a run's validation and test
/// passes score each rank's share of one.
public struct SplitScoring {
    public struct Row: Sendable {
        public let key: String, sequence: String, label: Int
        public let explanation: Explanation
    }

    public let set: ShardSet, trainer: Trainer
    public let batchSize: Int, loaderThreads: Int, seed: UInt64
    /// (batchSize, 3, size, size) on the device, where the caller keeps one (a run's input
    /// batch); else one is allocated per pass.
    public let input: Tensor?
    /// Each image also mirrored, the two views merged (`TestTimeFlip`).
    public let flip: Bool

    public init(set: ShardSet, trainer: Trainer, batchSize: Int, loaderThreads: Int, seed: UInt64 = 0, input: Tensor? = nil, flip: Bool = false) {
        (self.set, self.trainer, self.batchSize, self.loaderThreads, self.seed, self.input, self.flip) = (set, trainer, batchSize, loaderThreads, seed, input, flip)
    }

    /// `progress`: the label of a progress bar (nil: none); `beforeBatch` runs before each batch
    /// (a run's abort check).
    public func run(_ refs: [SampleRef], perturbation: Perturbation? = nil, progress: String? = nil,
                    beforeBatch: () throws -> Void = {}) throws -> [Row] {
        let c = trainer.model.config, ctx = trainer.ctx
        // No batch larger than the split (--batch-size 100000000 on a 16-image split asked for
        // 1.1 TiB): the batches, and so the scores, are the same.
        let batchSize = input == nil ? max(1, min(self.batchSize, refs.count)) : self.batchSize
        let owned = input == nil ? DeviceTensor(ctx.backend, Shape(batchSize, 3, c.imgSize, c.imgSize)) : nil
        let input = self.input ?? owned!.tensor
        let loader = StreamingLoader(set: set, refs: refs, batchSize: batchSize, size: c.imgSize, mean: c.mean, std: c.std,
                                     augment: false, seed: seed, epoch: 0, threads: loaderThreads, dropLast: false, perturbation: perturbation)
        defer { loader.stop() }  // left early (an abort): no worker left waiting
        let bar = progress.map { ProgressReporter($0, total: loader.batchCount, unit: "batch") }
        var rows: [Row] = []
        rows.reserveCapacity(refs.count)
        while let b = try loader.next() {
            try beforeBatch()
            let view = input.slice(from: 0, Shape(b.labels.count, 3, c.imgSize, c.imgSize))
            let host = UnsafeBufferPointer(rebasing: b.images.buffer[0..<view.count])
            let explained: [Explanation]
            if flip {
                explained = try TestTimeFlip.explain(trainer, images: host, view: view)
            } else {
                ctx.backend.upload(host, into: view)
                explained = try trainer.explain(images: view)
            }
            for (j, e) in explained.enumerated() {
                rows.append(Row(key: b.keys[j], sequence: b.sequences[j], label: Int(b.labels[j]), explanation: e))
            }
            bar?.update(b.index + 1)
        }
        return rows
    }
}
