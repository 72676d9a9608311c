import Foundation

/// One image a source offers, before selection. `officialSplit` is train or test.
public struct Candidate: Sendable {
    public var key: String
    public var label: Int
    public var officialSplit: Split
    public var sequence: String
    public var frame: Int?
    /// "png" or "jpg": the member's file extension, kept on the shard member.
    public var ext: String
}

/// What a source reports while scanning.
public enum SourceItem {
    /// An image; `read` returns its bytes and is valid only during the callback.
    /// (A source whose `readsAnywhere` is true keeps it valid after the callback, on any thread.)
    case image(Candidate, read: () throws -> Data)
    /// Something that is not a usable sample, with its key and reason.
    case skipped(key: String, reason: String)
}

/// A deterministic, streaming enumeration of candidate images.
public protocol SampleSource {
    /// Recorded in the manifest.
    var description: [String: String] { get }
    /// Calls `visit` for every item, always in the same order.
    func scan(_ visit: (SourceItem) throws -> Void) throws
    /// Whether its items' `read` stays valid after the callback and may run on any thread (files,
    /// generated images; not an archive's stream): the preparer then reads a batch of them on
    /// every core, where a synthetic image is drawn and PNG-encoded.
    var readsAnywhere: Bool { get }
}

extension SampleSource {
    public var readsAnywhere: Bool { false }
}

/// Label from whole path components only: exactly one of "fake" / "real" must appear.
func labelFromComponents(_ components: [Substring]) -> Int? {
    let fake = components.contains("fake"), real = components.contains("real")
    if fake == real { return nil }
    return fake ? 1 : 0
}

func imageExtension(_ name: String) -> String? {
    switch (name as NSString).pathExtension.lowercased() {
    case "png": return "png"
    case "jpg", "jpeg": return "jpg"
    case "webp": return "webp"  // stored in the shards as PNG (DatasetPreparer)
    default: return nil
    }
}

/// Why a file without a PNG, JPEG or WebP extension is skipped: an image format we do not read is named.
func notAnImageReason(_ name: String, shown: String) -> String {
    if let kind = ImageCodec.otherImageExtensions[(name as NSString).pathExtension.lowercased()] {
        return "a \(kind) image, not a PNG, JPEG or WebP (the formats read) (\(shown))"
    }
    return "not an image (\(shown))"
}

/// WildDeepfake as published on Hugging Face: `deepfake_in_the_wild/{fake,real}_{train,test}/N.tar.gz`
/// under `root`, each member a face crop whose path carries label, sequence and frame
/// (`./1/fake/131/1057.png`: archive 1, label fake, sequence 131, frame 1057).
public struct WildDeepfakeArchives: SampleSource {
    public let root: String
    /// Archive paths relative to `root`, sorted.
    public let archives: [String]
    /// Members larger than this (a face crop is ~100 KB) are skipped and counted without being
    /// read, so a crafted member cannot make `prepare` allocate its declared size.
    public var maxMemberBytes = 64 << 20

    public init(root: String, archives: [String]? = nil) throws {
        self.root = root
        if let archives {
            self.archives = archives.sorted()
        } else {
            // What the source is instead, where it is not a folder of archives: missing or a file
            // (said before a walk), a prepared dataset (below, when the walk found nothing).
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: root, isDirectory: &isDir) else {
                throw DatasetError(path: root, reason: "no such directory (expected hf, a folder of WildDeepfake's archives, or one with real/ and fake/)")
            }
            guard isDir.boolValue else {
                throw DatasetError(path: root, reason: "a file, not a directory (expected hf, a folder of WildDeepfake's archives, or one with real/ and fake/)")
            }
            self.archives = try WildDeepfakeArchives.findArchives(root)
        }
        guard !self.archives.isEmpty else {
            if FileManager.default.fileExists(atPath: (root as NSString).appendingPathComponent(DatasetManifest.fileName)) {
                throw DatasetError(path: root, reason: "a prepared dataset already (\(DatasetManifest.fileName)): train on it with --data \(root)")
            }
            throw DatasetError(path: root, reason: "no WildDeepfake archives (*/{fake,real}_{train,test}/*.tar.gz) found, nor real/ and fake/ folders")
        }
    }

    static func findArchives(_ root: String) throws -> [String] {
        guard let e = FileManager.default.enumerator(atPath: root) else {
            throw DatasetError(path: root, reason: "cannot list directory")
        }
        var found: [String] = []
        while let p = e.nextObject() as? String {
            if p.hasSuffix(".tar.gz") || p.hasSuffix(".tgz") || p.hasSuffix(".tar"), archiveSplit(p) != nil { found.append(p) }
        }
        return found.sorted()
    }

    /// The official split from the archive's directory (`fake_train`, `real_test`, ...).
    static func archiveSplit(_ relative: String) -> Split? {
        for c in relative.split(separator: "/") {
            if c.hasSuffix("_train") { return .train }
            if c.hasSuffix("_test") { return .test }
        }
        return nil
    }

    public var description: [String: String] { ["kind": "wilddeepfake-archives", "root": root, "archives": String(archives.count)] }

    public func scan(_ visit: (SourceItem) throws -> Void) throws {
        for rel in archives {
            let split = WildDeepfakeArchives.archiveSplit(rel) ?? .train
            let dirKey = rel.replacingOccurrences(of: ".tar.gz", with: "").replacingOccurrences(of: ".tgz", with: "")
                .replacingOccurrences(of: ".tar", with: "").split(separator: "/").suffix(2).joined(separator: "_")
            let reader = try ArchiveReader(path: (root as NSString).appendingPathComponent(rel))
            while let m = try reader.next() {
                guard m.isFile else { continue }
                let clean = m.name.hasPrefix("./") ? String(m.name.dropFirst(2)) : m.name
                let stem = (clean as NSString).deletingPathExtension
                let key = sanitizeKey(dirKey + "_" + stem)
                guard let ext = imageExtension(clean) else {
                    try reader.skipData()
                    try visit(.skipped(key: key, reason: notAnImageReason(clean, shown: clean)))
                    continue
                }
                if m.isSparse || m.size > maxMemberBytes {
                    try reader.skipData()
                    try visit(.skipped(key: key, reason: m.isSparse ? "sparse archive member (\(clean))"
                                                              : "member of \(m.size) bytes exceeds the \(maxMemberBytes >> 20) MiB limit (\(clean))"))
                    continue
                }
                let comps = stem.split(separator: "/")
                guard let label = labelFromComponents(comps), let li = comps.firstIndex(where: { $0 == "fake" || $0 == "real" }) else {
                    try reader.skipData()
                    try visit(.skipped(key: key, reason: "no label component (fake/real) in \(clean)"))
                    continue
                }
                // <archive>/<label>/<sequence>/<frame>: the sequence is unique within its archive.
                let seqPart = li + 1 < comps.count - 1 ? String(comps[li + 1]) : "0"
                let archivePart = li > 0 ? String(comps[li - 1]) : "0"
                let sequence = "\(dirKey)/\(archivePart)/\(comps[li])/\(seqPart)"
                let frame = Int(comps.last ?? "")
                let c = Candidate(key: key, label: label, officialSplit: split, sequence: sequence, frame: frame, ext: ext)
                var consumed = false
                try visit(.image(c, read: {
                    consumed = true
                    return try reader.readData(expected: m.size)
                }))
                if !consumed { try reader.skipData() }
            }
        }
    }
}

/// WebDataset keys may not contain dots; slashes become underscores to keep keys flat, and so
/// does any white space (a tab or line break in a file name split its line of the index file,
/// whose words are separated by white space).
func sanitizeKey(_ s: String) -> String {
    String(s.map { $0 == "." || $0 == "/" || $0.isWhitespace ? "_" : $0 })
}

/// The reference pipeline's layout: `DIR/real/*.{png,jpg}` and `DIR/fake/*.{png,jpg}`. There are
/// no sequence ids (every image is its own sequence) and no official split: `testFraction` of
/// the images (by a seeded hash) become the test split.
public struct ReferenceFolders: SampleSource {
    public let root: String
    public let testFraction: Double
    public let seed: UInt64
    /// Files larger than this are skipped and counted without being read.
    public var maxFileBytes = 64 << 20

    public init(root: String, testFraction: Double, seed: UInt64) throws {
        self.root = root
        self.testFraction = testFraction
        self.seed = seed
        for c in ["real", "fake"] {
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: (root as NSString).appendingPathComponent(c), isDirectory: &isDir), isDir.boolValue else {
                throw DatasetError(path: root, reason: "expected subdirectories real/ and fake/ (missing \(c)/)")
            }
        }
    }

    public var readsAnywhere: Bool { true }

    public var description: [String: String] {
        ["kind": "reference-folders", "root": root, "test_fraction": String(testFraction),
         "note": "no sequence ids: every image is its own sequence"]
    }

    public func scan(_ visit: (SourceItem) throws -> Void) throws {
        for (label, dir) in [(0, "real"), (1, "fake")] {
            let path = (root as NSString).appendingPathComponent(dir)
            // Hidden files (.DS_Store, macOS's ._x.png companions, editors' temporaries) are left
            // out, as the reference's glob leaves them out.
            // Names as the file system holds them: one that is not UTF-8 is opened by its bytes.
            let entries: [FolderEntry]
            do { entries = try folderEntries(path) } catch { throw DatasetError(path: path, reason: "cannot list the folder: \(error)") }
            for entry in entries.filter({ !$0.name.hasPrefix(".") }).sorted(by: { $0.name < $1.name }) {
                let f = entry.name
                let key = sanitizeKey("\(dir)_" + (f as NSString).deletingPathExtension)
                let full = (path as NSString).appendingPathComponent(f), bytes = entry.path
                // One stat per file: it names subfolders, FIFOs, devices and oversized files.
                var st = stat()
                let statError = stat(bytes, &st) == 0 ? 0 : errno
                if statError == 0 && st.st_mode & S_IFMT == S_IFDIR {
                    try visit(.skipped(key: key, reason: "a subdirectory (\(dir)/\(f)/): the reference layout is flat, images directly in \(dir)/"))
                    continue
                }
                guard let ext = imageExtension(f) else {
                    try visit(.skipped(key: key, reason: notAnImageReason(f, shown: "\(dir)/\(f)")))
                    continue
                }
                let test = SplitPlanner.hashFraction(seed: seed, salt: "reference-test", key) < testFraction
                let c = Candidate(key: key, label: label, officialSplit: test ? .test : .train, sequence: key, frame: nil, ext: ext)
                // A file that cannot be opened (a dangling link, no read permission) is skipped and
                // recorded here, in both passes, like a corrupt image; it stopped the whole prepare.
                let readError = statError != 0 ? statError : access(bytes, R_OK) == 0 ? 0 : errno
                guard readError == 0 else {
                    try visit(.skipped(key: key, reason: "cannot read \(dir)/\(f): \(String(cString: strerror(readError)))"))
                    continue
                }
                if let problem = imageFileProblem(st, limit: maxFileBytes) {
                    try visit(.skipped(key: key, reason: "\(problem) (\(dir)/\(f))"))
                    continue
                }
                try visit(.image(c, read: { [maxFileBytes] in
                    do { return try readInputFile(bytes: bytes, limit: maxFileBytes) } catch { throw DatasetError(path: full, reason: "\(error)") }
                }))
            }
        }
    }
}

/// The procedural deepfake set (`SyntheticFaces`) as a source: `count` PNG images in sequences of
/// `framesPerSequence` (frames of a sequence share a seed range), the last tenth of the
/// sequences being the official test split.
public struct SyntheticSource: SampleSource {
    public let faces: SyntheticFaces
    public let count: Int
    public let framesPerSequence: Int

    public init(size: Int, count: Int, seed: UInt64, difficulty: Double, framesPerSequence: Int = 8) {
        faces = SyntheticFaces(size: size, seed: seed, difficulty: difficulty)
        self.count = count
        self.framesPerSequence = max(1, framesPerSequence)
    }

    public var readsAnywhere: Bool { true }

    public var description: [String: String] {
        ["kind": "synthetic", "count": String(count), "size": String(faces.size), "seed": String(faces.seed),
         "difficulty": String(faces.difficulty), "frames_per_sequence": String(framesPerSequence)]
    }

    /// The official test split, as sequence numbers: the last tenth of the sequences (at least one;
    /// none when there is a single sequence). Where those are all one class while the set has both,
    /// the latest sequence of the other class joins them, so a small set's test AUC is defined;
    /// unless that would leave training without the class. A set whose last tenth already holds
    /// both classes keeps the plain split.
    public func testSequences() -> Set<Int> {
        let sequences = (count + framesPerSequence - 1) / framesPerSequence
        guard sequences > 1 else { return [] }
        let firstTest = sequences - max(1, sequences / 10)
        var test = Set(firstTest..<sequences)
        let testLabels = Set(test.map(sequenceLabel))
        guard testLabels.count == 1, let only = testLabels.first else { return test }
        let others = (0..<firstTest).filter { sequenceLabel($0) != only }
        if others.count >= 2, let latest = others.last { test.insert(latest) }
        return test
    }

    /// A sequence is one label: its frames all follow the label of its first image.
    func sequenceLabel(_ seq: Int) -> Int { faces.label(seq * framesPerSequence) }

    public func scan(_ visit: (SourceItem) throws -> Void) throws {
        let test = testSequences()
        for i in 0..<count {
            let seq = i / framesPerSequence
            let label = sequenceLabel(seq)
            let c = Candidate(key: String(format: "synth_%07d", i), label: label, officialSplit: test.contains(seq) ? .test : .train,
                              sequence: "synth/\(seq)", frame: i % framesPerSequence, ext: "png")
            try visit(.image(c, read: { try ImageCodec.encodePNG(faces.rgbImage(i, label: label)) }))
        }
    }
}
