import Foundation

/// `radar prepare --check-only`: a dataset directory's manifest against its shards.
public enum DatasetChecker {
    /// Throws on the first inconsistency, naming the file; returns the manifest when all is well.
    /// Each shard's index file is compared with a walk of the shard, and written (again) where
    /// it is missing or disagrees; `log` says which (a folder that cannot be written is said, not
    /// an error). Shards are checked on every core; `progress` hears (bytes hashed, bytes in all
    /// shards), one call at a time (WildDeepfake's shards are tens of GB: minutes of reading).
    @discardableResult
    public static func check(directory: String, log: (String) -> Void = { _ in },
                             progress: @escaping @Sendable (Int, Int) -> Void = { _, _ in }) throws -> DatasetManifest {
        let m = try DatasetManifest.load(directory: directory)
        let totalBytes = m.shards.reduce(0) { $0 + $1.bytes }
        let lock = NSLock()
        nonisolated(unsafe) var hashed = 0
        // Per shard: nil when good, else the error; and whether its index file was written.
        let outcomes = UnsafeMutableBufferPointer<(error: Error?, wrote: Bool, unwritable: String?)>.allocate(capacity: m.shards.count)
        outcomes.initialize(repeating: (nil, false, nil))
        defer { outcomes.deinitialize(); outcomes.deallocate() }
        concurrentPerform(iterations: m.shards.count) { i in
            let s = m.shards[i]
            let path = (directory as NSString).appendingPathComponent(s.name)
            do {
                guard FileManager.default.fileExists(atPath: path) else {
                    throw DatasetError(path: path, reason: "listed in the manifest but missing")
                }
                let (size, sha) = try DatasetPreparer.hashFile(path) { n in
                    lock.withLock {
                        hashed += n
                        progress(hashed, totalBytes)
                    }
                }
                guard size == s.bytes else {
                    throw DatasetError(path: path, reason: "size \(size) bytes, manifest says \(s.bytes)")
                }
                guard sha == s.sha256 else {
                    throw DatasetError(path: path, reason: "SHA-256 differs from the manifest")
                }
                let index = try TarIndex(path: path)
                guard index.count == s.samples else {
                    throw DatasetError(path: path, reason: "\(index.count) samples, manifest says \(s.samples)")
                }
                let idx = TarIndex.indexPath(forShard: path)
                let good = (try? TarIndex.load(shard: path, indexFile: idx)).map { $0.sameMembers(as: index) } ?? false
                if !good {
                    do {
                        try writeFileAtomically(index.indexFileData(), to: idx)
                        outcomes[i].wrote = true
                    } catch {
                        outcomes[i].unwritable = "\(error)"
                    }
                }
            } catch {
                outcomes[i].error = error
            }
        }
        if let first = outcomes.lazy.compactMap(\.error).first { throw first }
        let written = m.shards.indices.filter { outcomes[$0].wrote }.map { TarIndex.indexPath(forShard: m.shards[$0].name) }
        let unwritable = outcomes.lazy.compactMap(\.unwritable).first
        if !written.isEmpty {
            log("\(directory): wrote the index file of \(written.count) shard\(written.count == 1 ? "" : "s") (\(written.prefix(3).joined(separator: ", "))\(written.count > 3 ? ", ..." : ""))")
        }
        if let unwritable { log("warning: a missing or stale shard index file could not be written (\(unwritable)): opening the dataset walks those shards") }
        var perSplit = [Split: Int]()
        for s in m.shards { perSplit[s.split, default: 0] += s.samples }
        for split in Split.allCases {
            let counted = m.counts[split.rawValue]?.total ?? 0
            guard counted == perSplit[split] ?? 0 else {
                throw DatasetError(path: directory, reason: "manifest counts \(counted) \(split.rawValue) samples, its shards hold \(perSplit[split] ?? 0)")
            }
        }
        return m
    }

    public static func summary(_ m: DatasetManifest) -> String {
        var lines = ["source: " + m.source.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")]
        for split in Split.allCases {
            let c = m.counts[split.rawValue] ?? .init()
            lines.append("\(split.rawValue): \(c.total) images (real \(c.real) in \(c.realSequences) sequences, fake \(c.fake) in \(c.fakeSequences) sequences)")
        }
        lines.append("shards: \(m.shards.count), skipped: \(m.skipped.count)")
        return lines.joined(separator: "\n")
    }
}
