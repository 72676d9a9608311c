import Foundation

/// Seeded, stateless split and sampling decisions.
public enum SplitPlanner {
    /// A uniform number in [0, 1) from (seed, salt, key): the same key always gets the same value.
    public static func hashFraction(seed: UInt64, salt: String, _ key: String) -> Double {
        Double(RandomStream(seed: seed, stream: RandomStream.id(salt + "\u{1}" + key)).bits(0)) / 4_294_967_296.0
    }

    /// The final split: official test stays test; a train sequence goes to val with probability
    /// `valFraction`, decided per sequence, so no sequence is in two splits.
    public static func split(_ c: Candidate, valFraction: Double, seed: UInt64) -> Split {
        if c.officialSplit == .test { return .test }
        return hashFraction(seed: seed, salt: "val", c.sequence) < valFraction ? .val : .train
    }
}

/// Options of `radar prepare`.
public struct PrepareOptions: Sendable {
    public var output: String
    public var valFraction = 0.05
    public var seed: UInt64 = 0
    /// Total images to keep, sampled per class across the whole source.
    public var maxImages: Int?
    /// Share of real images under `maxImages` (default: the source's own ratio).
    public var realFraction: Double?
    public var shardSize = 1000
    /// Store every image as PNG (JPEGs decoded and re-encoded losslessly: the same pixels our
    /// decoder gives), so readers that want one image type per dataset (Hugging Face `datasets`)
    /// see one. Off: the original bytes are kept.
    public var pngOnly = false
    /// Replace a finished dataset already in `output` (refused otherwise, unless it is the same
    /// synthetic set, which is kept as it is).
    public var overwrite = false

    public init(output: String) { self.output = output }

    var parameters: [String: String] {
        var p = ["val_fraction": String(valFraction), "seed": String(seed), "shard_size": String(shardSize)]
        if let maxImages { p["max_images"] = String(maxImages) }
        if let realFraction { p["real_fraction"] = String(realFraction) }
        if pngOnly { p["image_format"] = "png" }
        return p
    }
}

/// Turns a `SampleSource` into a dataset directory: WebDataset tar shards (`<key>.png|jpg` with the
/// original bytes, `<key>.json`), and `manifest.json`. Two streaming passes over the source
/// (count, then select and write), so memory does not grow with the number of images. A shard
/// is written under a temporary name and renamed only when complete; a journal of finished
/// shards lets an interrupted run resume.
public final class DatasetPreparer {
    public let options: PrepareOptions
    public var log: (String) -> Void = { _ in }
    /// Whether the last `run` kept the dataset already in the output folder (nothing written).
    public private(set) var keptExisting = false
    public var progress: ((Int, Int) -> Void)?

    static let journalName = "prepare-journal.jsonl"
    /// Images validated together on all cores.
    static let validationBatch = 64
    /// The lock a preparer holds on its output folder (flock; removed when it ends).
    static let lockName = ".prepare.lock"

    /// Sample records with sorted keys: the same source gives byte-identical shards (and manifest).
    static let recordEncoder: JSONEncoder = {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return e
    }()

    struct Pending {
        var candidate: Candidate
        let split: Split
        let ordinal: Int
        var bytes: Data
        /// For a source that `readsAnywhere`: `bytes` are read in the batch, on every core.
        var read: (() throws -> Data)? = nil
    }

    public init(options: PrepareOptions) { self.options = options }

    struct JournalHeader: Codable, Equatable { var source: [String: String]; var parameters: [String: String] }
    struct JournalShard: Codable {
        var shard: DatasetManifest.ShardEntry
        /// Selected candidates of this split consumed through this shard.
        var consumed: Int
        var skipped: [DatasetManifest.Skipped]
    }

    final class OpenShard {
        let entryName: String
        let split: Split
        let writer: TarWriter
        let tmpPath: String
        var samples = 0
        var skipped: [DatasetManifest.Skipped] = []
        init(name: String, split: Split, writer: TarWriter, tmpPath: String) {
            entryName = name; self.split = split; self.writer = writer; self.tmpPath = tmpPath
        }
    }

    /// A preparation that failed after finishing shards: the cause, and that they are kept.
    public struct Stopped: Error, CustomStringConvertible {
        public let description: String
    }

    public func run(_ source: SampleSource) throws -> DatasetManifest {
        let out = options.output
        guard options.shardSize > 0, (0..<1).contains(options.valFraction) else {
            throw DatasetError(path: out, reason: "shard size must be > 0 and val fraction in [0, 1)")
        }
        let fm = FileManager.default
        let existed = fm.fileExists(atPath: out)
        keptExisting = false
        try makeDirectory(out)
        // One preparer per folder: a second one removed the first's unfinished shards and both
        // appended to the journal. Taken before anything in the folder is read or removed.
        let lock = try FolderLock(directory: out, name: DatasetPreparer.lockName) {
            "another radar prepare or synth is writing this folder\($0): wait for it to finish"
        }
        DatasetPreparer.shardFiles.withLock { _ = DatasetPreparer.writing.insert(out) }
        defer { DatasetPreparer.shardFiles.withLock { _ = DatasetPreparer.writing.remove(out) }; unlink(lock.path); lock.release() }
        if existed, let kept = try existingDataset(source) { keptExisting = true; return kept }
        do {
            return try write(source, into: out)
        } catch {
            // A folder this run made and that holds no finished shard (a bad source found in the
            // first pass, say) is removed: nothing in it could be resumed.
            let names = (try? fm.contentsOfDirectory(atPath: out)) ?? []
            if !existed && !names.contains(where: DatasetPreparer.isFinishedShard) { try? fm.removeItem(atPath: out) }
            // Shards left unfinished are redone by a resumed run: removed now, they do not hold
            // space (a full disk left two behind, the disk still full).
            for n in names where DatasetPreparer.isUnfinished(n) { try? fm.removeItem(atPath: (out as NSString).appendingPathComponent(n)) }
            let finished = names.filter(DatasetPreparer.isFinishedShard).count
            guard finished > 0, fm.fileExists(atPath: (out as NSString).appendingPathComponent(DatasetPreparer.journalName)) else { throw error }
            throw Stopped(description: "\(error) (\(finished) finished shard\(finished == 1 ? "" : "s") in \(out) kept: the same command resumes once that is fixed)")
        }
    }

    /// What the output folder holds before anything is written. Nil to go on: an empty folder,
    /// an interrupted preparation (resumed), or a finished dataset that `overwrite` replaces (its
    /// files removed; downloads kept). The finished dataset itself when it is the same synthetic
    /// set (a pure function of its parameters), verified. Refused: a folder holding other files,
    /// and a finished dataset without `overwrite` (a training run may be reading it).
    func existingDataset(_ source: SampleSource) throws -> DatasetManifest? {
        let out = options.output, fm = FileManager.default
        var isDir: ObjCBool = false
        guard fm.fileExists(atPath: out, isDirectory: &isDir), isDir.boolValue else { return nil }  // createDirectory says what is wrong
        let names = try fm.contentsOfDirectory(atPath: out)
        let ours = { (n: String) in
            n == DatasetManifest.fileName || n == DatasetPreparer.journalName || n == "downloads" || n == DatasetPreparer.lockName
                || DatasetPreparer.isFinishedShard(n) || DatasetPreparer.isShardIndex(n) || DatasetPreparer.isUnfinished(n)
        }
        let foreign = names.filter { !ours($0) }.sorted()
        guard foreign.isEmpty else {
            throw DatasetError(path: out, reason: "holds files that are not a dataset's (\(foreign.prefix(3).joined(separator: ", "))\(foreign.count > 3 ? ", ..." : "")): prepare into a new or empty folder")
        }
        guard names.contains(DatasetManifest.fileName), !names.contains(DatasetPreparer.journalName) else { return nil }
        let previous = try? DatasetManifest.load(directory: out)
        if let m = previous, source.description["kind"] == "synthetic", m.source == source.description, m.parameters == options.parameters {
            let checked = try DatasetChecker.check(directory: out)
            log("prepare: \(out) already holds this synthetic set (same parameters; its shards verified): kept")
            return checked
        }
        guard options.overwrite else {
            let what = previous.map { m in "\(m.counts.values.reduce(0) { $0 + $1.total }) images from \(m.source["kind"] ?? "?")" } ?? "manifest.json"
            throw DatasetError(path: out, reason: "holds a prepared dataset (\(what)): pass --overwrite to replace it, or choose another --output")
        }
        for n in names where n != "downloads" && n != DatasetPreparer.lockName { try fm.removeItem(atPath: (out as NSString).appendingPathComponent(n)) }
        log("prepare: --overwrite: removed the dataset that was in \(out)")
        return nil
    }

    /// Held while a shard file is made, or finished (closed, indexed, renamed, journaled), and
    /// while `writing` is read or changed: `discardUnfinishedShards` takes it for good, so no
    /// writer renames, reads or makes a file it removed (which was an error line racing the
    /// stop's own).
    private static let shardFiles = NSLock()
    /// The output folders that preparations in this process are writing (their folder locks held).
    nonisolated(unsafe) private static var writing = Set<String>()

    /// For a stop by signal, on the way out: removes the unfinished shards (and index
    /// temporaries) from every folder a preparation in this process is writing, and says how many
    /// finished shards each holds (without this, a shard's worth of `.partial` bytes stayed until
    /// the command was run again). After it the preparations make and finish no shard: the
    /// process is to end. A writer still adding images to a removed shard writes to nothing.
    public static func discardUnfinishedShards() -> [(folder: String, finished: Int, removed: Int)] {
        shardFiles.lock()  // never released
        return writing.sorted().map { out in
            let names = (try? FileManager.default.contentsOfDirectory(atPath: out)) ?? []
            let removed = names.filter { isUnfinished($0) && unlink((out as NSString).appendingPathComponent($0)) == 0 }
            return (out, names.filter(isFinishedShard).count, removed.filter { $0.hasSuffix(".partial") }.count)
        }
    }

    /// `shard-NNNNNN.tar`: a shard written whole (one being written is `.shard-N.tar.partial`).
    static func isFinishedShard(_ name: String) -> Bool { name.hasPrefix("shard-") && name.hasSuffix(".tar") }
    /// `shard-NNNNNN.idx`: a shard's index file (DALI's format).
    static func isShardIndex(_ name: String) -> Bool { name.hasPrefix("shard-") && name.hasSuffix(".idx") }
    /// A shard being written (`.shard-N.tar.partial`) or its index file's temporary
    /// (`.shard-N.idx.tmp-PID`): left by an interrupted run, redone by the next.
    static func isUnfinished(_ name: String) -> Bool {
        name.hasPrefix(".shard-") && (name.hasSuffix(".partial") || name.contains(".idx.tmp-"))
    }

    func write(_ source: SampleSource, into out: String) throws -> DatasetManifest {
        let (classTotal, preSkipped) = try countCandidates(source)
        let quota = quotas(classTotal)
        let shards = try ShardOutput(preparer: self, source: source)
        var selection = Selection(classTotal: classTotal, quota: quota, seed: options.seed)
        try source.scan { item in
            guard case .image(let c, let read) = item, let split = selection.take(c, valFraction: options.valFraction) else { return }
            progress?(selection.processed, quota[0] + quota[1])
            let ordinal = selection.ordinal(in: split)
            if ordinal < (shards.resumeFrom[split] ?? 0) { return }  // belongs to a finished shard
            try shards.add(source.readsAnywhere ? Pending(candidate: c, split: split, ordinal: ordinal, bytes: Data(), read: read)
                                                : Pending(candidate: c, split: split, ordinal: ordinal, bytes: try read()))
        }
        try shards.finishAll(consumed: selection.consumed)
        // Counts are read back from the finished shards, so the manifest is right whether this
        // run or an interrupted earlier one wrote them.
        let manifest = try buildManifest(source: source, done: shards.done, preSkipped: preSkipped)
        try writeFileAtomically(manifest.jsonData(), to: (out as NSString).appendingPathComponent(DatasetManifest.fileName))
        try? FileManager.default.removeItem(atPath: shards.journalPath)
        return manifest
    }

    /// Pass 1: usable candidates per class, and the skips that need no image bytes.
    func countCandidates(_ source: SampleSource) throws -> (classTotal: [Int], preSkipped: [DatasetManifest.Skipped]) {
        var classTotal = [0, 0]
        var preSkipped: [DatasetManifest.Skipped] = []
        try source.scan { item in
            switch item {
            case .image(let c, _): classTotal[c.label] += 1
            case .skipped(let key, let reason): preSkipped.append(.init(key: key, reason: reason))
            }
        }
        for (label, name) in [(0, "real"), (1, "fake")] where classTotal[label] == 0 {
            if let synthetic = source as? SyntheticSource {
                // A sequence is one class, drawn: a few images may all fall on one side.
                let sequences = (synthetic.count + synthetic.framesPerSequence - 1) / synthetic.framesPerSequence
                throw DatasetError(path: "radar synth", reason: "no \(name) images: the \(synthetic.count) images (\(sequences) sequence\(sequences == 1 ? "" : "s") of up to \(synthetic.framesPerSequence) frames, each sequence one class drawn at random) are all \(label == 0 ? "fake" : "real"): raise --count or change --seed")
            }
            let hint = preSkipped.first.map { " (\(preSkipped.count) entries skipped, e.g. \($0.key): \($0.reason))" } ?? ""
            throw DatasetError(path: source.description["root"] ?? "source", reason: "no \(name) images: class \(name) is empty" + hint)
        }
        return (classTotal, preSkipped)
    }

    /// Images to keep per class: all, or `maxImages` split by `realFraction` (default: the source's ratio).
    func quotas(_ classTotal: [Int]) -> [Int] {
        guard let maxImages = options.maxImages else { return classTotal }
        let total = classTotal[0] + classTotal[1]
        let realShare = options.realFraction ?? Double(classTotal[0]) / Double(total)
        let realQuota = Int((Double(maxImages) * realShare).rounded())
        let quota = [min(realQuota, classTotal[0]), min(maxImages - realQuota, classTotal[1])]
        log("prepare: keeping \(quota[0]) real of \(classTotal[0]) and \(quota[1]) fake of \(classTotal[1]), sampled across the source")
        return quota
    }

    /// Pass 2's choice of images: Algorithm S per class (exact quotas, uniform over the whole
    /// source), and each selected image's position within its split.
    struct Selection {
        let classTotal: [Int], quota: [Int], seed: UInt64
        var seen = [0, 0], taken = [0, 0]
        var consumed = [Split: Int]()
        var processed = 0

        init(classTotal: [Int], quota: [Int], seed: UInt64) {
            self.classTotal = classTotal
            self.quota = quota
            self.seed = seed
        }

        /// The split of `c` when it is selected, nil when it is not.
        mutating func take(_ c: Candidate, valFraction: Double) -> Split? {
            let l = c.label
            let need = quota[l] - taken[l], left = classTotal[l] - seen[l]
            let u = Double(RandomStream(seed: seed, stream: RandomStream.id("quota", UInt64(l))).bits(UInt64(seen[l]))) / 4_294_967_296.0
            seen[l] += 1
            guard Double(left) * u < Double(need) else { return nil }
            taken[l] += 1
            processed += 1
            return SplitPlanner.split(c, valFraction: valFraction, seed: seed)
        }

        /// The next ordinal of `split` (counting from 0).
        mutating func ordinal(in split: Split) -> Int {
            let o = consumed[split] ?? 0
            consumed[split] = o + 1
            return o
        }
    }

    /// The shards being written, the journal of finished ones, and the images waiting to be
    /// validated. Selected images wait in small batches; each batch is decoded (validated) on
    /// every core, then written in source order, so the shards do not depend on the thread count.
    final class ShardOutput {
        let out: String
        let options: PrepareOptions
        let sourceKind: String
        let journalPath: String
        private(set) var done: [JournalShard]
        /// Per split, the selected images a resumed run skips (finished shards hold them).
        let resumeFrom: [Split: Int]
        private var nextIndex: Int
        private var open = [Split: OpenShard]()
        private var pending: [Pending] = []
        private let preparer: DatasetPreparer

        /// Loads the journal of an interrupted run (or starts one) and removes partial shards.
        init(preparer: DatasetPreparer, source: SampleSource) throws {
            self.preparer = preparer
            options = preparer.options
            out = options.output
            sourceKind = source.description["kind"] ?? ""
            let header = JournalHeader(source: source.description, parameters: options.parameters)
            journalPath = (out as NSString).appendingPathComponent(DatasetPreparer.journalName)
            done = try preparer.loadJournal(journalPath, header: header)
            for f in (try? FileManager.default.contentsOfDirectory(atPath: out)) ?? [] where f.hasSuffix(".partial") || DatasetPreparer.isUnfinished(f) {
                try? FileManager.default.removeItem(atPath: (out as NSString).appendingPathComponent(f))
            }
            var from = [Split: Int]()
            for j in done { from[j.shard.split] = max(from[j.shard.split] ?? 0, j.consumed) }
            resumeFrom = from
            nextIndex = (done.compactMap { Int($0.shard.name.dropFirst(6).prefix(6)) }.max() ?? -1) + 1
            if !done.isEmpty { preparer.log("prepare: resuming, \(done.count) finished shards kept") }
            if done.isEmpty { try preparer.appendJournal(journalPath, header) }
        }

        func add(_ p: Pending) throws {
            pending.append(p)
            if pending.count == DatasetPreparer.validationBatch { try flush() }
        }

        /// Reads (where the source allows) and validates the waiting images on every core, then
        /// writes them in order.
        func flush() throws {
            guard !pending.isEmpty else { return }
            let n = pending.count
            let errors = UnsafeMutableBufferPointer<String?>.allocate(capacity: n)
            errors.initialize(repeating: nil)
            let converted = UnsafeMutableBufferPointer<Data?>.allocate(capacity: n)
            converted.initialize(repeating: nil)
            // A failed read stops the prepare, as it does when read in the scan; a failed decode
            // is the image's skip reason.
            let readFailures = UnsafeMutableBufferPointer<Error?>.allocate(capacity: n)
            readFailures.initialize(repeating: nil)
            defer {
                errors.deinitialize(); errors.deallocate(); converted.deinitialize(); converted.deallocate()
                readFailures.deinitialize(); readFailures.deallocate()
            }
            let batch = pending, pngOnly = options.pngOnly
            concurrentPerform(iterations: n) { i in
                var bytes = batch[i].bytes
                if let read = batch[i].read {
                    do { bytes = try read() } catch { readFailures[i] = error; return }
                    converted[i] = bytes
                }
                do {
                    let img = try ImageCodec.decode(bytes, item: batch[i].candidate.key)
                    // WebP is always stored as PNG (the pixels decoded, losslessly): shard readers,
                    // DALI and Hugging Face datasets then meet PNG and JPEG only.
                    if (pngOnly || batch[i].candidate.ext == "webp") && batch[i].candidate.ext != "png" { converted[i] = try ImageCodec.encodePNG(img) }
                } catch { errors[i] = "\(error)" }
            }
            if let failure = readFailures.lazy.compactMap({ $0 }).first { throw failure }
            for (i, p) in batch.enumerated() {
                var p = p
                if let bytes = converted[i] { p.bytes = bytes }
                if (pngOnly || p.candidate.ext == "webp") && p.candidate.ext != "png" && errors[i] == nil { p.candidate.ext = "png" }
                try write(p, error: errors[i])
            }
            pending.removeAll(keepingCapacity: true)
        }

        /// One image (or its skip reason) into its split's open shard; a full shard is finished.
        func write(_ p: Pending, error: String?) throws {
            var shard: OpenShard
            if let s = open[p.split] { shard = s } else {
                DatasetPreparer.shardFiles.lock()
                defer { DatasetPreparer.shardFiles.unlock() }
                let name = String(format: "shard-%06d.tar", nextIndex)
                nextIndex += 1
                let tmp = (out as NSString).appendingPathComponent("." + name + ".partial")
                shard = OpenShard(name: name, split: p.split, writer: try TarWriter(path: tmp), tmpPath: tmp)
                open[p.split] = shard
            }
            if let error {
                shard.skipped.append(.init(key: p.candidate.key, reason: error))
                return
            }
            let c = p.candidate
            let info = SampleInfo(label: c.label, split: p.split, sequence: c.sequence, frame: c.frame, source: sourceKind)
            try shard.writer.add(name: "\(c.key).\(c.ext)", data: p.bytes)
            try shard.writer.add(name: "\(c.key).json", data: try DatasetPreparer.recordEncoder.encode(info))
            shard.samples += 1
            if shard.samples == options.shardSize {
                try finish(shard, consumedThrough: p.ordinal + 1)
                open[p.split] = nil
            }
        }

        /// Closes, fsyncs, hashes and renames a shard, then journals it.
        func finish(_ s: OpenShard, consumedThrough: Int) throws {
            DatasetPreparer.shardFiles.lock()
            defer { DatasetPreparer.shardFiles.unlock() }
            try s.writer.close()
            let fd = Glibc.open(s.tmpPath, O_RDONLY)
            if fd >= 0 { fsync(fd); Glibc.close(fd) }
            let (bytes, sha) = try DatasetPreparer.hashFile(s.tmpPath)
            let final = (out as NSString).appendingPathComponent(s.entryName)
            // The index file first: a finished shard always has one (a crash between the two
            // leaves an index the resumed run writes again with its shard).
            try writeFileAtomically(try TarIndex(path: s.tmpPath).indexFileData(), to: TarIndex.indexPath(forShard: final))
            guard rename(s.tmpPath, final) == 0 else { throw DatasetError(path: final, reason: "rename failed") }
            fsyncDirectory(out)
            let entry = DatasetManifest.ShardEntry(name: s.entryName, split: s.split, samples: s.samples, bytes: bytes, sha256: sha)
            let j = JournalShard(shard: entry, consumed: consumedThrough, skipped: s.skipped)
            try preparer.appendJournal(journalPath, j)
            done.append(j)
        }

        /// The last images, then every open shard.
        func finishAll(consumed: [Split: Int]) throws {
            try flush()
            for split in Split.allCases { if let s = open[split] { try finish(s, consumedThrough: consumed[split] ?? 0) } }
        }
    }

    func buildManifest(source: SampleSource, done: [JournalShard], preSkipped: [DatasetManifest.Skipped]) throws -> DatasetManifest {
        var counts = [String: DatasetManifest.Counts]()
        var lastSequence = [String: String]()
        let shards = done.map(\.shard).sorted { $0.name < $1.name }
        for s in shards {
            let reader = try ArchiveReader(path: (options.output as NSString).appendingPathComponent(s.name))
            while let m = try reader.next() {
                guard m.name.hasSuffix(".json") else { try reader.skipData(); continue }
                let info = try JSONDecoder().decode(SampleInfo.self, from: try reader.readData(expected: m.size))
                var c = counts[info.split.rawValue] ?? .init()
                if info.label == 1 { c.fake += 1 } else { c.real += 1 }
                let seqKey = "\(info.split.rawValue)/\(info.label)"
                if lastSequence[seqKey] != info.sequence {
                    lastSequence[seqKey] = info.sequence
                    if info.label == 1 { c.fakeSequences += 1 } else { c.realSequences += 1 }
                }
                counts[info.split.rawValue] = c
            }
        }
        return DatasetManifest(source: source.description, counts: counts, shards: shards,
                               skipped: preSkipped + done.flatMap(\.skipped), parameters: options.parameters)
    }

    /// Size and SHA-256 of a file, read in 1 MiB pieces (memory independent of the shard size).
    /// `read` hears of each piece's size.
    public static func hashFile(_ path: String, read: (Int) -> Void = { _ in }) throws -> (Int, String) {
        guard let h = FileHandle(forReadingAtPath: path) else { throw DatasetError(path: path, reason: "cannot open for hashing: \(unreadableReason(path))") }
        defer { try? h.close() }
        let digest = SHA256Digest()
        var total = 0
        while let chunk = try h.read(upToCount: 1 << 20), !chunk.isEmpty {
            digest.update(chunk)
            total += chunk.count
            read(chunk.count)
        }
        return (total, digest.finalize())
    }

    func loadJournal(_ path: String, header: JournalHeader) throws -> [JournalShard] {
        guard let data = FileManager.default.contents(atPath: path) else { return [] }
        let lines = data.split(separator: UInt8(ascii: "\n"))
        guard let first = lines.first, let h = try? JSONDecoder().decode(JournalHeader.self, from: Data(first)) else { return [] }
        guard h == header else {
            throw DatasetError(path: options.output, reason: "holds an interrupted preparation with a different source or parameters; use an empty directory")
        }
        var shards: [JournalShard] = []
        for line in lines.dropFirst() {
            // A torn last line (crash while appending) is ignored: that shard is redone.
            guard let j = try? JSONDecoder().decode(JournalShard.self, from: Data(line)) else { continue }
            let path = (options.output as NSString).appendingPathComponent(j.shard.name)
            guard let (size, sha) = try? DatasetPreparer.hashFile(path), size == j.shard.bytes, sha == j.shard.sha256 else { continue }
            shards.append(j)
        }
        return shards
    }

    func appendJournal<T: Encodable>(_ path: String, _ value: T) throws {
        var line = try JSONEncoder().encode(value)
        line.append(UInt8(ascii: "\n"))
        if !FileManager.default.fileExists(atPath: path) { _ = FileManager.default.createFile(atPath: path, contents: nil) }
        guard let h = FileHandle(forWritingAtPath: path) else { throw DatasetError(path: path, reason: "cannot append") }
        defer { try? h.close() }
        try h.seekToEnd()
        try h.write(contentsOf: line)
        try h.synchronize()
    }
}
