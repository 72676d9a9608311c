import Foundation

/// One sample of a prepared dataset: shard number (in the manifest's list) and position in it.
public struct SampleRef: Hashable, Sendable, Codable {
    public var shard: Int
    public var index: Int
    public init(shard: Int, index: Int) { self.shard = shard; self.index = index }
}

/// A prepared dataset directory opened for reading: the manifest and a member index per shard.
public final class ShardSet: @unchecked Sendable {
    public let directory: String
    public let manifest: DatasetManifest
    public let indices: [TarIndex]
    /// Shards opened without their index file, and why (nil when every shard had a good one).
    public let indexNote: String?

    /// `indexFiles` false walks every shard whatever index files there are (`radar bench data`
    /// times both ways).
    public init(directory: String, indexFiles: Bool = true) throws {
        self.directory = directory
        manifest = try DatasetManifest.load(directory: directory)
        // Each shard's size against the manifest first (a stat): a truncated shard was "truncated
        // tar (header at byte N)", which named neither the cause nor the remedy.
        for s in manifest.shards {
            let path = (directory as NSString).appendingPathComponent(s.name)
            var st = stat()
            guard stat(path, &st) == 0 else {
                throw DatasetError(path: path, reason: "listed in the manifest, but cannot be read: \(unreadableReason(path)) (prepare the dataset again, with --overwrite)")
            }
            guard Int(st.st_size) == s.bytes else {
                throw DatasetError(path: path, reason: "\(st.st_size) bytes, the manifest says \(s.bytes): the shard is truncated or was changed after prepare (radar prepare --check-only checks them all; prepare again with --overwrite)")
            }
        }
        // Each shard's index file (written by prepare), else a walk of its headers; all shards at once.
        let paths = manifest.shards.map { (directory as NSString).appendingPathComponent($0.name) }
        let opened = try TarIndex.open(paths: paths, indexFiles: indexFiles)
        indices = opened.map(\.index)
        let unusable = opened.compactMap { if case .walkedAround(let why) = $0.source { why } else { nil } }
        let missing = indexFiles ? opened.filter { $0.source == .noIndexFile }.count : 0
        if !unusable.isEmpty {
            indexNote = "\(directory): \(unusable.count) shard index file\(unusable.count == 1 ? "" : "s") disagreed with \(unusable.count == 1 ? "its shard" : "their shards") "
                + "and \(unusable.count == 1 ? "was" : "were") not used (\(unusable[0])); `radar prepare --check-only --output \(directory)` writes them again"
        } else if missing > 0 {
            indexNote = "\(directory): \(missing) of \(paths.count) shards have no index file (prepared by an earlier radar?) and were walked, which is slow "
                + "on a large dataset; `radar prepare --check-only --output \(directory)` writes them"
        } else {
            indexNote = nil
        }
        for (i, s) in manifest.shards.enumerated() where indices[i].count != s.samples {
            throw DatasetError(path: (directory as NSString).appendingPathComponent(s.name),
                               reason: "\(indices[i].count) samples, manifest says \(s.samples) (run prepare --check-only)")
        }
    }

    /// Every sample of a split, in shard order.
    public func refs(_ split: Split) -> [SampleRef] {
        var out: [SampleRef] = []
        for (i, s) in manifest.shards.enumerated() where s.split == split {
            for j in 0..<indices[i].count { out.append(SampleRef(shard: i, index: j)) }
        }
        return out
    }

    /// A permutation of `refs` that depends only on (seed, epoch) and the samples' keys.
    public func shuffled(_ refs: [SampleRef], seed: UInt64, epoch: Int) -> [SampleRef] {
        let r = RandomStream(seed: seed, stream: RandomStream.id("epoch-shuffle", UInt64(epoch)))
        return refs.map { ref -> (UInt64, SampleRef) in
            let h = FNV1a.hash(key(ref))
            let b = r.philox.block(UInt32(truncatingIfNeeded: h), UInt32(truncatingIfNeeded: h >> 32),
                                   UInt32(truncatingIfNeeded: r.stream), UInt32(truncatingIfNeeded: r.stream >> 32))
            return (UInt64(b.0) << 32 | UInt64(b.1), ref)
        }.sorted { $0.0 < $1.0 }.map(\.1)
    }

    public func key(_ ref: SampleRef) -> String { indices[ref.shard].key(ref.index) }
}

/// Reads, decodes, augments and batches samples on worker threads into a bounded queue. Batch
/// `b` always holds `refs[b*B ..< (b+1)*B]` in that order and each image's augmentation depends
/// only on (seed, epoch, key), so the output is identical for any thread count. Memory is bounded
/// by `depth` batches.
public final class StreamingLoader: @unchecked Sendable {
    public struct Batch {
        public let index: Int
        /// (n, 3, size, size), normalised.
        public let images: HostTensor
        public let labels: [Float]
        public let keys: [String]
        public let sequences: [String]
    }

    public let set: ShardSet
    public let refs: [SampleRef]
    public let batchSize: Int
    public let size: Int
    public let mean: [Double], std: [Double]
    public let augment: Bool
    /// How images reach the model's size: the reference's INTER_LINEAR for evaluation (the
    /// default); training passes `.bilinearOrArea`.
    public let resizeMode: ImageResize.Mode
    /// A degradation of every image after the resize (`radar evaluate --perturb`), or nil.
    public let perturbation: Perturbation?
    public let seed: UInt64
    public let epoch: Int
    public let batchCount: Int

    /// How many unreadable samples (corrupt image, bad record) may be skipped before the loader
    /// fails listing them (0: the first one fails). A skipped sample's slot is filled with a copy
    /// of a good sample of the same batch, so every batch keeps its size (every rank the same
    /// number of micro-batches).
    public var maxBadSamples = 0
    /// Called (on a loader thread) for each skipped sample: key and reason.
    public var onBadSample: ((String, String) -> Void)?
    private var bad: [(key: String, reason: String)] = []
    /// The samples skipped so far, in the order they were found.
    public var badSamples: [(key: String, reason: String)] { cond.lock(); defer { cond.unlock() }; return bad }

    public struct TooManyBadSamples: Error, CustomStringConvertible {
        public let samples: [(key: String, reason: String)], limit: Int
        public var description: String {
            "\(samples.count) unreadable samples, more than --max-bad-samples \(limit): " + samples.prefix(20).map { "\($0.key) (\($0.reason))" }.joined(separator: "; ")
                + (samples.count > 20 ? "; ..." : "")
        }
    }

    private let cond = NSCondition()
    private var nextToBuild = 0
    private var nextToTake = 0
    private var ready: [Int: Result<Batch, Error>] = [:]
    private var stopped = false
    private let depth: Int
    /// Why fewer workers than asked for run (the system refused a thread).
    private var startFailure: Error?
    private var running = 0

    public init(set: ShardSet, refs: [SampleRef], batchSize: Int, size: Int, mean: [Double], std: [Double], augment: Bool,
                seed: UInt64, epoch: Int, threads: Int, depth: Int = 4, dropLast: Bool, resize: ImageResize.Mode = .openCVLinear,
                perturbation: Perturbation? = nil) {
        self.set = set
        self.resizeMode = resize
        self.perturbation = perturbation
        self.refs = refs
        self.batchSize = batchSize
        self.size = size
        self.mean = mean
        self.std = std
        self.augment = augment
        self.seed = seed
        self.epoch = epoch
        self.depth = max(1, depth)
        batchCount = dropLast ? refs.count / batchSize : (refs.count + batchSize - 1) / batchSize
        // No batches, no workers. Each worker holds the loader until it returns (with an unowned
        // reference, one first scheduled while the loader was already being released touched a
        // deinitialising object), so an owner that leaves before the last batch calls `stop`.
        let workerCount = batchCount == 0 ? 0 : max(1, threads)
        running = workerCount
        for k in 0..<workerCount {
            do {
                try startThread("loader worker \(k + 1) of \(workerCount)", stackSize: 1 << 22) { self.work() }
            } catch {
                // The system's limit on threads: the workers started build every batch (slower);
                // with none, `next` throws this.
                cond.lock()
                running -= workerCount - k
                startFailure = error
                cond.unlock()
                if k > 0 {
                    printNotice("only \(k) of \(workerCount) loader threads could be started (\((error as? ThreadStartError)?.reason ?? "\(error)")): loading with \(k)")
                }
                break
            }
        }
    }

    deinit { stop() }

    /// Stops the workers and waits for them to return; an owner that stops taking batches before
    /// the last calls it (workers waiting for room in the queue hold the loader until then).
    public func stop() {
        cond.lock()
        stopped = true
        cond.broadcast()
        while running > 0 { cond.wait() }
        cond.unlock()
    }

    /// The next batch in order, or nil after the last. Rethrows a worker's error (naming the shard
    /// and sample).
    public func next() throws -> Batch? {
        cond.lock()
        defer { cond.unlock() }
        guard nextToTake < batchCount else { return nil }
        while ready[nextToTake] == nil {
            if running == 0, let startFailure { throw startFailure }  // no worker could be started
            cond.wait()
        }
        let r = ready.removeValue(forKey: nextToTake)!
        nextToTake += 1
        cond.broadcast()
        return try r.get()
    }

    private func work() {
        while true {
            cond.lock()
            while !stopped && nextToBuild < batchCount && nextToBuild >= nextToTake + depth { cond.wait() }
            if stopped || nextToBuild >= batchCount {
                running -= 1
                cond.broadcast()
                cond.unlock()
                return
            }
            let b = nextToBuild
            nextToBuild += 1
            cond.unlock()
            let result = Result { try build(b) }
            cond.lock()
            ready[b] = result
            cond.broadcast()
            cond.unlock()
        }
    }

    /// Decode (+ resize) (+ perturb) (+ augment) + normalise one sample into `dst` (3, size, size).
    public func loadSample(_ ref: SampleRef, into dst: UnsafeMutablePointer<Float>) throws -> SampleInfo {
        let index = set.indices[ref.shard]
        let key = index.key(ref.index)
        let (info, bytes) = try index.sample(ref.index)
        var img = try ImageCodec.decode(bytes, item: "\(index.path):\(key)")
        img = ImageResize.resize(img, width: size, height: size, mode: resizeMode)
        if let perturbation { img = try perturbation.apply(img, key: key) }
        if augment { img = try Augmenter.apply(AugmentationPlan.draw(seed: seed, epoch: epoch, key: key), to: img) }
        Augmenter.normalize(img, mean: mean, std: std, into: dst)
        return info
    }

    func build(_ b: Int) throws -> Batch {
        let lo = b * batchSize, hi = min(refs.count, lo + batchSize)
        let images = HostTensor(Shape(hi - lo, 3, size, size))
        var labels: [Float] = [], keys: [String] = [], seqs: [String] = []
        var badSlots: [Int] = [], firstGood: Int?
        let plane = 3 * size * size
        for (j, ref) in refs[lo..<hi].enumerated() {
            do {
                let info = try loadSample(ref, into: images.pointer + j * plane)
                labels.append(Float(info.label))
                keys.append(set.key(ref))
                seqs.append(info.sequence)
                if firstGood == nil { firstGood = j }
            } catch let e as TarIndex.Unavailable {
                throw e
            } catch {
                guard maxBadSamples > 0 else { throw error }
                let key = set.key(ref)
                cond.lock()
                bad.append((key, "\(error)"))
                let all = bad
                cond.unlock()
                if all.count > maxBadSamples { throw TooManyBadSamples(samples: all, limit: maxBadSamples) }
                onBadSample?(key, "\(error)")
                badSlots.append(j)
                labels.append(0); keys.append(key); seqs.append("")
            }
        }
        if !badSlots.isEmpty {
            guard let g = firstGood else {
                throw TooManyBadSamples(samples: Array(badSamples.suffix(hi - lo)), limit: maxBadSamples)
            }
            for j in badSlots {
                (images.pointer + j * plane).update(from: images.pointer + g * plane, count: plane)
                labels[j] = labels[g]; keys[j] = keys[g]; seqs[j] = seqs[g]
            }
        }
        return Batch(index: b, images: images, labels: labels, keys: keys, sequences: seqs)
    }
}
