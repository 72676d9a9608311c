import Foundation
import RadarCore
import XCTest

/// CRC-32 (PNG's chunk checksum), for tests that damage or edit PNG chunks.
func crc32<C: Collection>(_ bytes: C) -> UInt32 where C.Element == UInt8 {
    var c: UInt32 = 0xFFFF_FFFF
    for b in bytes {
        c ^= UInt32(b)
        for _ in 0..<8 { c = (c & 1) != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
    }
    return ~c
}

func temporaryDirectory(_ name: String) -> String {
    let p = NSTemporaryDirectory() + "radar-test-\(name)-\(UUID().uuidString.prefix(8))"
    try? FileManager.default.createDirectory(atPath: p, withIntermediateDirectories: true)
    return p
}

/// Every (key, info, image bytes) of a prepared dataset.
func readDataset(_ dir: String) throws -> [String: (SampleInfo, Data)] {
    let set = try ShardSet(directory: dir)
    var out: [String: (SampleInfo, Data)] = [:]
    for (s, index) in set.indices.enumerated() {
        for i in 0..<index.count {
            let info = try index.info(i)
            XCTAssertEqual(info.split, set.manifest.shards[s].split, "sample in a shard of another split")
            out[index.key(i)] = (info, try index.image(i))
        }
    }
    return out
}

/// WildDeepfake's Hugging Face layout: deepfake_in_the_wild/{fake,real}_{train,test}/N.tar.gz.
func makeWildDeepfakeArchives(_ root: String, sequencesPerArchive: Int = 6, frames: Int = 4, extras: Bool = true) throws -> [String: Data] {
    let faces = SyntheticFaces(size: 16, seed: 7)
    var members: [String: Data] = [:]
    var n = 0
    for (dir, archive) in [("fake_train", 1), ("real_train", 2), ("fake_test", 3), ("real_test", 4)] {
        let label = dir.hasPrefix("fake") ? "fake" : "real"
        let path = "\(root)/deepfake_in_the_wild/\(dir)"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        let w = try TarWriter(path: "\(path)/\(archive).tar.gz", format: .tarGzip)
        for s in 0..<sequencesPerArchive { for f in 0..<frames {
            let name = "./\(archive)/\(label)/\(100 + s)/\(1000 + f).png"
            let data = try ImageCodec.encodePNG(faces.rgbImage(n, label: label == "fake" ? 1 : 0))
            n += 1
            try w.add(name: name, data: data)
            members["\(dir)/\(name)"] = data
        } }
        if extras && archive == 1 {
            try w.add(name: "./1/unlabeled/5/1.png", data: try ImageCodec.encodePNG(faces.rgbImage(999, label: 0)))
            try w.add(name: "./1/fake/100/notes.txt", data: Data("not an image".utf8))
            var corrupt = try ImageCodec.encodePNG(faces.rgbImage(998, label: 1))
            corrupt.replaceSubrange(40..<60, with: Data(repeating: 0x5A, count: 20))
            try w.add(name: "./1/fake/107/1.png", data: corrupt)
            try w.add(name: "./1/fake/108/1.jpg", data: Data([0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10]))
        }
        try w.close()
    }
    return members
}

final class DataPipelineTests: XCTestCase {
    /// Decompression bombs: a PNG and a JPEG whose headers declare 20000 x 20000 pixels are
    /// refused from the header, before any pixel buffer is allocated.
    func testImagesDeclaringTooManyPixelsAreRefusedFromTheHeader() throws {
        let small = RGBImage(width: 2, height: 2, pixels: [UInt8](repeating: 128, count: 12))
        var png = try ImageCodec.encodePNG(small)
        // IHDR data starts at byte 16 (8 signature + 4 length + 4 type); its CRC covers type + data.
        for (offset, v) in [(16, UInt32(20000)), (20, UInt32(20000))] {
            withUnsafeBytes(of: v.bigEndian) { for i in 0..<4 { png[offset + i] = $0[i] } }
        }
        let crc = crc32(Array(png[12..<29]))
        withUnsafeBytes(of: crc.bigEndian) { for i in 0..<4 { png[29 + i] = $0[i] } }
        XCTAssertThrowsError(try ImageCodec.decodePNG(png, item: "bomb.png")) {
            XCTAssertTrue("\($0)".contains("bomb.png") && "\($0)".contains("20000x20000 pixels exceeds the limit"), "\($0)")
        }
        var jpeg = try ImageCodec.encodeJPEG(small, quality: 90)
        let sof = try XCTUnwrap((0..<(jpeg.count - 9)).first { jpeg[$0] == 0xFF && (jpeg[$0 + 1] == 0xC0 || jpeg[$0 + 1] == 0xC2) })
        withUnsafeBytes(of: UInt16(20000).bigEndian) { jpeg[sof + 5] = $0[0]; jpeg[sof + 6] = $0[1]; jpeg[sof + 7] = $0[0]; jpeg[sof + 8] = $0[1] }
        XCTAssertThrowsError(try ImageCodec.decodeJPEG(jpeg, item: "bomb.jpg")) {
            XCTAssertTrue("\($0)".contains("20000x20000 pixels exceeds the limit"), "\($0)")
        }
    }

    func testSyntheticSetPreparesIntoConsistentShards() throws {
        let out = temporaryDirectory("synth")
        var opts = PrepareOptions(output: out)
        (opts.valFraction, opts.seed, opts.shardSize) = (0.2, 3, 64)
        let source = SyntheticSource(size: 16, count: 300, seed: 4, difficulty: 0.3, framesPerSequence: 6)
        let m = try DatasetPreparer(options: opts).run(source)
        try DatasetChecker.check(directory: out)
        XCTAssertEqual(m.shards.reduce(0) { $0 + $1.samples }, 300)
        XCTAssertTrue(m.shards.allSatisfy { $0.samples <= 64 })
        let samples = try readDataset(out)
        XCTAssertEqual(samples.count, 300)
        // Bytes untouched, labels right, whole sequences per split.
        var seqSplit: [String: Split] = [:]
        try source.scan { item in
            guard case .image(let c, let read) = item else { return }
            let (info, bytes) = samples[c.key]!
            XCTAssertEqual(bytes, try read(), "\(c.key): PNG bytes must be the source's")
            XCTAssertEqual(info.label, c.label)
            if let s = seqSplit[c.sequence] { XCTAssertEqual(s, info.split, "sequence \(c.sequence) in two splits") }
            seqSplit[c.sequence] = info.split
        }
        for split in Split.allCases { XCTAssertGreaterThan(m.counts[split.rawValue]?.total ?? 0, 0, "\(split) is empty") }
        XCTAssertEqual(m.counts["val"]!.realSequences + m.counts["val"]!.fakeSequences, Set(seqSplit.filter { $0.value == .val }.keys).count)
    }

    /// A small synthetic set's test split holds both classes: `radar synth --count 200` made a test
    /// split of two real sequences, so every run on it ended with "test AUC undefined". The last
    /// tenth of the sequences is still the test split; where it is one class, the latest sequence of
    /// the other class joins it. A set whose last tenth has both classes keeps the plain split, and
    /// no class is taken out of training.
    func testSyntheticTestSplitHoldsBothClassesWherePossible() throws {
        var changed = 0
        for count in stride(from: 16, through: 400, by: 8) {
            for seed: UInt64 in 1...3 {
                let source = SyntheticSource(size: 8, count: count, seed: seed, difficulty: 0.3, framesPerSequence: 8)
                let sequences = (count + 7) / 8
                let plain = Set((sequences - max(1, sequences / 10))..<sequences)
                let test = source.testSequences()
                let label = { (seq: Int) in source.faces.label(seq * 8) }
                let testClasses = Set(test.map(label)), trainClasses = Set((0..<sequences).filter { !test.contains($0) }.map(label))
                let allClasses = Set((0..<sequences).map(label))
                let plainTrainClasses = Set((0..<sequences).filter { !plain.contains($0) }.map(label))
                XCTAssertTrue(plain.isSubset(of: test), "count \(count) seed \(seed): the last tenth is the test split")
                XCTAssertEqual(trainClasses, plainTrainClasses, "count \(count) seed \(seed): training keeps every class it had")
                if Set(plain.map(label)).count == 2 || allClasses.count == 1 {
                    XCTAssertEqual(test, plain, "count \(count) seed \(seed): a two-class last tenth is kept as it is")
                } else if test != plain {
                    changed += 1
                    XCTAssertEqual(testClasses.count, 2, "count \(count) seed \(seed)")
                    XCTAssertEqual(test.count, plain.count + 1)
                    // The sequence that joined is the latest of its class before the last tenth.
                    let joined = test.subtracting(plain).first!
                    XCTAssertFalse(((joined + 1)..<plain.min()!).contains { label($0) == label(joined) })
                }
            }
        }
        XCTAssertGreaterThan(changed, 10, "the one-class case is common at these sizes")
        // Through the preparer and the scan: what `radar synth --count 200` now writes.
        let out = temporaryDirectory("synth-small")
        let m = try DatasetPreparer(options: PrepareOptions(output: out)).run(SyntheticSource(size: 8, count: 200, seed: 1, difficulty: 0.3))
        XCTAssertGreaterThan(m.counts["test"]!.realSequences, 0)
        XCTAssertGreaterThan(m.counts["test"]!.fakeSequences, 0)
        XCTAssertEqual(SyntheticSource(size: 8, count: 1, seed: 1, difficulty: 0.3).testSequences(), [], "one sequence: no test split")
    }

    /// A finished dataset is never replaced without --overwrite: `synth` and `prepare` silently
    /// wrote over one (a training run may be reading it, and its checkpoints name its hash).
    func testAFinishedDatasetIsKeptUnlessOverwriteIsGiven() throws {
        let out = temporaryDirectory("again")
        var opts = PrepareOptions(output: out)
        opts.shardSize = 20
        let first = try DatasetPreparer(options: opts).run(SyntheticSource(size: 16, count: 60, seed: 4, difficulty: 0.3, framesPerSequence: 6))
        let shardBytes = { try (FileManager.default.contentsOfDirectory(atPath: out).filter { $0.hasPrefix("shard-") }.sorted()
                                  .map { FileManager.default.contents(atPath: out + "/" + $0)! }) }
        let before = try shardBytes()
        // The same synthetic set again: kept, verified, nothing written.
        let preparer = DatasetPreparer(options: opts)
        let again = try preparer.run(SyntheticSource(size: 16, count: 60, seed: 4, difficulty: 0.3, framesPerSequence: 6))
        XCTAssertEqual(again, first)
        XCTAssertTrue(preparer.keptExisting)
        // Anything else: refused, the dataset untouched (frames per sequence is a parameter too).
        for other in [SyntheticSource(size: 16, count: 40, seed: 4, difficulty: 0.3, framesPerSequence: 6),
                      SyntheticSource(size: 16, count: 60, seed: 4, difficulty: 0.3, framesPerSequence: 3)] {
            XCTAssertThrowsError(try DatasetPreparer(options: opts).run(other)) {
                XCTAssertEqual("\($0)", "\(out): holds a prepared dataset (60 images from synthetic): pass --overwrite to replace it, or choose another --output")
            }
        }
        XCTAssertEqual(try shardBytes(), before)
        XCTAssertEqual(try DatasetChecker.check(directory: out), first)
        // --overwrite replaces it, leaving none of the old shards (it had 3 here, the new set 2).
        opts.overwrite = true
        let replaced = try DatasetPreparer(options: opts).run(SyntheticSource(size: 16, count: 40, seed: 4, difficulty: 0.3, framesPerSequence: 6))
        XCTAssertEqual(replaced.shards.reduce(0) { $0 + $1.samples }, 40)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: out).filter { $0.hasPrefix("shard-") }.sorted(),
                       replaced.shards.flatMap { [$0.name, String($0.name.dropLast(4)) + ".idx"] }.sorted(), "each shard and its index file, no old one")
        // A folder holding other files is refused, with or without --overwrite.
        let mixed = temporaryDirectory("mixed")
        XCTAssertTrue(FileManager.default.createFile(atPath: mixed + "/notes.txt", contents: Data("x".utf8)))
        XCTAssertThrowsError(try DatasetPreparer(options: PrepareOptions(output: mixed)).run(SyntheticSource(size: 16, count: 40, seed: 4, difficulty: 0.3, framesPerSequence: 6))) {
            XCTAssertEqual("\($0)", "\(mixed): holds files that are not a dataset's (notes.txt): prepare into a new or empty folder")
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: mixed), ["notes.txt"])
    }

    func testWildDeepfakeArchivesGiveLabelsSplitsAndCountedSkips() throws {
        let root = temporaryDirectory("hf"), out = temporaryDirectory("hf-out")
        let members = try makeWildDeepfakeArchives(root)
        var opts = PrepareOptions(output: out)
        (opts.valFraction, opts.shardSize) = (0.3, 10)
        let m = try DatasetPreparer(options: opts).run(try WildDeepfakeArchives(root: root))
        try DatasetChecker.check(directory: out)
        let samples = try readDataset(out)
        XCTAssertEqual(samples.count, 4 * 6 * 4)
        let reasons = Dictionary(grouping: m.skipped, by: { $0.key }).mapValues { $0[0].reason }
        XCTAssertTrue(reasons["fake_train_1_1_unlabeled_5_1"]?.contains("no label") ?? false, "\(m.skipped)")
        XCTAssertTrue(reasons["fake_train_1_1_fake_100_notes"]?.contains("not an image") ?? false, "\(m.skipped)")
        XCTAssertTrue(reasons["fake_train_1_1_fake_107_1"]?.contains("corrupt PNG") ?? false, "\(m.skipped)")
        XCTAssertTrue(reasons["fake_train_1_1_fake_108_1"]?.contains("JPEG") ?? false, "\(m.skipped)")
        XCTAssertEqual(m.skipped.count, 4)
        for (key, (info, bytes)) in samples {
            XCTAssertEqual(info.label, key.contains("_fake_") ? 1 : 0, key)
            XCTAssertEqual(info.split == .test, key.contains("_test_"), "official test split kept: \(key)")
            let member = members.first { sanitize($0.key) == key }
            XCTAssertEqual(member?.value, bytes, "\(key): bytes identical to the archive member")
        }
        XCTAssertEqual(m.counts["test"]!.total, 48)
        XCTAssertEqual(m.counts["test"]!.fakeSequences, 6)
        var seqSplit: [String: Split] = [:]
        for (_, (info, _)) in samples {
            if let s = seqSplit[info.sequence] { XCTAssertEqual(s, info.split, "sequence \(info.sequence) in two splits") }
            seqSplit[info.sequence] = info.split
        }
        XCTAssertGreaterThan(m.counts["val"]?.total ?? 0, 0)
    }

    /// "fake_train/./1/fake/100/1000.png" -> "fake_train_1_1_fake_100_1000", the source's key.
    func sanitize(_ memberPath: String) -> String {
        let parts = memberPath.components(separatedBy: "/./")
        let stem = (parts[1] as NSString).deletingPathExtension
        return (parts[0] + "_" + archiveNumber(parts[0]) + "_" + stem).replacingOccurrences(of: "/", with: "_")
    }

    func archiveNumber(_ dir: String) -> String { ["fake_train": "1", "real_train": "2", "fake_test": "3", "real_test": "4"][dir]! }

    func testTruncatedArchiveStopsWithItsName() throws {
        let root = temporaryDirectory("trunc")
        _ = try makeWildDeepfakeArchives(root, extras: false)
        let path = "\(root)/deepfake_in_the_wild/real_train/2.tar.gz"
        let data = FileManager.default.contents(atPath: path)!
        try data.prefix(data.count / 2).write(to: URL(fileURLWithPath: path))
        // The output folder, made by this run and holding no finished shard, is removed (an
        // empty folder was left behind); one that existed before stays.
        let fresh = temporaryDirectory("trunc-out") + "/new"
        let existing = temporaryDirectory("trunc-out")
        for out in [fresh, existing] {
            XCTAssertThrowsError(try DatasetPreparer(options: PrepareOptions(output: out)).run(try WildDeepfakeArchives(root: root))) { e in
                XCTAssertTrue("\(e)".contains("real_train/2.tar.gz"), "\(e)")
            }
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: fresh))
        XCTAssertTrue(FileManager.default.fileExists(atPath: existing))
    }

    /// Names beyond ASCII: a real/ fake/ folder's `é1.png` stopped prepare ("Can't translate
    /// pathname": the process was in the C locale), and an export's `ü` read as `├╝` in Python's
    /// zipfile (no UTF-8 flag). Both read back as written, by us and by Python.
    func testNamesBeyondASCIIArePreparedAndExported() throws {
        let root = temporaryDirectory("utf8-src"), out = temporaryDirectory("utf8-out") + "/d"
        let faces = SyntheticFaces(size: 16, seed: 2)
        for (dir, stem) in [("real", "é"), ("fake", "日本")] {
            try FileManager.default.createDirectory(atPath: "\(root)/\(dir)", withIntermediateDirectories: true)
            for i in 0..<8 { try ImageCodec.encodePNG(faces.rgbImage(i, label: dir == "fake" ? 1 : 0)).write(to: URL(fileURLWithPath: "\(root)/\(dir)/\(stem)\(i).png")) }
        }
        _ = try DatasetPreparer(options: PrepareOptions(output: out)).run(try ReferenceFolders(root: root, testFraction: 0.25, seed: 1))
        let keys = Set(try readDataset(out).keys)
        XCTAssertEqual(keys.count, 16)
        XCTAssertTrue(keys.contains("real_é3") && keys.contains("fake_日本7"), "\(keys.sorted())")
        let (rc, names) = try shell([interopPython, "-c", "import sys, glob, tarfile; print(sorted(n for f in glob.glob(sys.argv[1] + '/shard-*.tar') for n in tarfile.open(f).getnames() if n.endswith('.png')))", out])
        XCTAssertEqual(rc, 0, names)
        XCTAssertTrue(names.contains("'real_é3.png'") && names.contains("'fake_日本7.png'"), names)
        let zip = temporaryDirectory("utf8-zip") + "/x.zip"
        let w = try TarWriter(path: zip, format: .zip)
        try w.add(name: "my run ü/a.txt", data: Data("a".utf8))
        try w.close()
        let (zrc, znames) = try shell([interopPython, "-c", "import sys, zipfile; print([(i.filename, i.flag_bits & 0x800) for i in zipfile.ZipFile(sys.argv[1]).infolist()])", zip])
        XCTAssertEqual(zrc, 0, znames)
        XCTAssertEqual(znames.trimmingCharacters(in: .whitespacesAndNewlines), "[('my run ü/a.txt', 2048)]")
    }

    /// A missing folder, a file, a raw real/ fake/ folder and a folder without a manifest each get their
    /// own message; an unknown --config name lists the presets.
    func testDatasetAndConfigErrorsSayWhatIsWrong() throws {
        let missing = temporaryDirectory("nothing-here") + "/absent"
        XCTAssertThrowsError(try ShardSet(directory: missing)) { XCTAssertEqual("\($0)", "\(missing): no such dataset directory") }
        let file = temporaryDirectory("a-file") + "/manifest.json"
        try Data("{}".utf8).write(to: URL(fileURLWithPath: file))
        XCTAssertThrowsError(try ShardSet(directory: file)) {
            XCTAssertEqual("\($0)", "\(file): a file, not a dataset directory (the --output of radar prepare or radar synth)")
        }
        let raw = temporaryDirectory("raw")
        try FileManager.default.createDirectory(atPath: raw + "/real", withIntermediateDirectories: true)
        XCTAssertThrowsError(try ShardSet(directory: raw)) { XCTAssertTrue("\($0)".contains("run `radar prepare --source \(raw)"), "\($0)") }
        let empty = temporaryDirectory("empty")
        XCTAssertThrowsError(try ShardSet(directory: empty)) { XCTAssertTrue("\($0)".contains("manifest.json: no manifest"), "\($0)") }
        XCTAssertThrowsError(try RADARConfig.resolve("smal")) { XCTAssertTrue("\($0)".contains("not a preset (tiny, mid, full)"), "\($0)") }
        // prepare's --source: what it is instead of a folder of archives.
        let expected = "(expected hf, a folder of WildDeepfake's archives, or one with real/ and fake/)"
        XCTAssertThrowsError(try WildDeepfakeArchives(root: missing)) { XCTAssertEqual("\($0)", "\(missing): no such directory \(expected)") }
        XCTAssertThrowsError(try WildDeepfakeArchives(root: file)) { XCTAssertEqual("\($0)", "\(file): a file, not a directory \(expected)") }
        let prepared = temporaryDirectory("prepared")
        _ = try DatasetPreparer(options: PrepareOptions(output: prepared)).run(SyntheticSource(size: 16, count: 16, seed: 1, difficulty: 0.2, framesPerSequence: 4))
        XCTAssertThrowsError(try WildDeepfakeArchives(root: prepared)) {
            XCTAssertEqual("\($0)", "\(prepared): a prepared dataset already (manifest.json): train on it with --data \(prepared)")
        }
        XCTAssertThrowsError(try WildDeepfakeArchives(root: empty)) {
            XCTAssertEqual("\($0)", "\(empty): no WildDeepfake archives (*/{fake,real}_{train,test}/*.tar.gz) found, nor real/ and fake/ folders")
        }
    }

    func testReferenceFoldersAndEmptyClass() throws {
        let root = temporaryDirectory("ref")
        let faces = SyntheticFaces(size: 16, seed: 9)
        for (dir, label) in [("real", 0), ("fake", 1)] {
            try FileManager.default.createDirectory(atPath: "\(root)/\(dir)", withIntermediateDirectories: true)
            for i in 0..<20 {
                let d = i % 2 == 0 ? try ImageCodec.encodePNG(faces.rgbImage(i, label: label))
                    : try ImageCodec.encodeJPEG(faces.rgbImage(i, label: label), quality: 90)
                try d.write(to: URL(fileURLWithPath: "\(root)/\(dir)/img\(i).\(i % 2 == 0 ? "png" : "jpg")"))
            }
        }
        try Data("x".utf8).write(to: URL(fileURLWithPath: "\(root)/fake/readme.txt"))
        // A lossless 4x3 WebP (Pillow wrote it; its pixels are 0, 7, ..., 245): stored as a PNG of them.
        let webp = "5249464634000000574542505650384c270000002f038000005f20164cce11e46f1bc354dca162fe13db81208044219658669965964923fa1f98ee00"
        try Data(stride(from: 0, to: webp.count, by: 2).map { UInt8(webp.dropFirst($0).prefix(2), radix: 16)! })
            .write(to: URL(fileURLWithPath: "\(root)/real/face.webp"))
        try Data("BM\0\0".utf8).write(to: URL(fileURLWithPath: "\(root)/fake/face.bmp"))  // named as what it is
        // Hidden files (macOS's AppleDouble companion, .DS_Store) are left out, as the reference's
        // glob leaves them out: the companion was taken as a corrupt image and recorded.
        try Data("AppleDouble".utf8).write(to: URL(fileURLWithPath: "\(root)/real/._img0.png"))
        try Data("x".utf8).write(to: URL(fileURLWithPath: "\(root)/fake/.DS_Store"))
        // A dangling link is skipped and recorded (it stopped the whole prepare with "cannot read file").
        try FileManager.default.createSymbolicLink(atPath: "\(root)/real/gone.png", withDestinationPath: "\(root)/nowhere.png")
        // A FIFO named like an image (prepare blocked on it for ever) is skipped and recorded, as
        // a folder named like one is.
        XCTAssertEqual(mkfifo("\(root)/real/pipe.png", 0o600), 0)
        try FileManager.default.createDirectory(atPath: "\(root)/fake/frames.jpg", withIntermediateDirectories: true)
        // A name that is not UTF-8 (Latin-1 "caf\xE9.png", from an old Windows archive): read by its
        // bytes, its key with the byte written \xE9 (it was skipped: "cannot read real/caf\u{FFFD}.png:
        // No such file or directory").
        let latin1 = try ImageCodec.encodePNG(faces.rgbImage(40, label: 0))
        let latin1Path = Array("\(root)/real/caf".utf8CString.dropLast()) + [CChar(bitPattern: 0xE9)] + Array(".png".utf8CString)
        let fd = open(latin1Path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        XCTAssertGreaterThanOrEqual(fd, 0)
        _ = latin1.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
        let out = temporaryDirectory("ref-out")
        let m = try DatasetPreparer(options: PrepareOptions(output: out)).run(try ReferenceFolders(root: root, testFraction: 0.25, seed: 1))
        XCTAssertEqual(m.shards.reduce(0) { $0 + $1.samples }, 42)
        XCTAssertEqual(m.skipped.map(\.reason).sorted(), ["a BMP image, not a PNG, JPEG or WebP (the formats read) (fake/face.bmp)",
                                                          "a FIFO, not a regular file (real/pipe.png)", "a subdirectory (fake/frames.jpg/): the reference layout is flat, images directly in fake/",
                                                          
                                                          "cannot read real/gone.png: No such file or directory", "not an image (fake/readme.txt)"])
        for f in ["real/gone.png", "real/pipe.png", "fake/frames.jpg"] { try FileManager.default.removeItem(atPath: "\(root)/\(f)") }
        let samples = try readDataset(out)
        XCTAssertTrue(samples.allSatisfy { $0.key == $0.value.0.sequence }, "every image is its own sequence")
        XCTAssertEqual(samples["real_img1"]!.1, FileManager.default.contents(atPath: "\(root)/real/img1.jpg"), "JPEG bytes kept")
        XCTAssertEqual(samples["real_caf\\xE9"]?.1, latin1, "\(samples.keys.sorted())")
        XCTAssertEqual(displayName(Array("café 🙂".utf8)), "café 🙂")
        XCTAssertEqual(displayName([0x61, 0xE9, 0x62, 0xC3, 0xA9, 0xF0, 0x9F, 0x99, 0xC3]), "a\\xE9bé\\xF0\\x9F\\x99\\xC3")
        let stored = try XCTUnwrap(samples["real_face"]?.1)
        XCTAssertEqual(ImageCodec.sniff(stored), .png, "a WebP is stored as PNG")
        XCTAssertEqual(try ImageCodec.decode(stored, item: "face").pixels, (0..<36).map { UInt8($0 * 7) })
        // An empty class stops with a clear error.
        try FileManager.default.removeItem(atPath: "\(root)/fake")
        try FileManager.default.createDirectory(atPath: "\(root)/fake", withIntermediateDirectories: true)
        XCTAssertThrowsError(try DatasetPreparer(options: PrepareOptions(output: temporaryDirectory("ref-empty"))).run(
            try ReferenceFolders(root: root, testFraction: 0.25, seed: 1))) { e in
            XCTAssertTrue("\(e)".contains("class fake is empty"), "\(e)")
        }
        // So few synthetic images that every sequence drew one class: said in radar synth's words
        // (it was "source: no fake images: class fake is empty").
        XCTAssertThrowsError(try DatasetPreparer(options: PrepareOptions(output: temporaryDirectory("synth-one-class"))).run(
            SyntheticSource(size: 32, count: 3, seed: 1, difficulty: 0.3))) { e in
            XCTAssertEqual("\(e)", "radar synth: no fake images: the 3 images (1 sequence of up to 8 frames, each sequence one class drawn at random) are all real: raise --count or change --seed")
        }
    }

    /// A source whose items are read in the scan, or (`readsAnywhere`) in the preparer's batches
    /// on every core; it can fail the read of item `failing`.
    struct ReadingSource: SampleSource {
        let inner: SyntheticSource
        let readsAnywhere: Bool
        var failing: String? = nil
        var description: [String: String] { inner.description }
        func scan(_ visit: (SourceItem) throws -> Void) throws {
            try inner.scan { item in
                guard case .image(let c, let read) = item, c.key == failing else { return try visit(item) }
                try visit(.image(c, read: { _ = try read(); throw DatasetError(path: c.key, reason: "vanished") }))
            }
        }
    }

    func testImagesReadOnEveryCoreMakeTheSameDatasetAndAFailedReadStopsIt() throws {
        // Synthetic images are drawn and PNG-encoded in the preparer's batches (radar synth at
        // 224 px was one core's work); the shards are the same bytes as when read in the scan.
        let inner = SyntheticSource(size: 24, count: 150, seed: 4, difficulty: 0.3)
        var shards: [[String: Data]] = []
        for anywhere in [false, true] {
            var o = PrepareOptions(output: temporaryDirectory("reads-\(anywhere)"))
            o.shardSize = 40
            let m = try DatasetPreparer(options: o).run(ReadingSource(inner: inner, readsAnywhere: anywhere))
            XCTAssertEqual(m.shards.reduce(0) { $0 + $1.samples }, 150)
            XCTAssertGreaterThan(m.shards.count, 3)
            var files: [String: Data] = [:]
            for f in try FileManager.default.contentsOfDirectory(atPath: o.output) where f.hasPrefix("shard-") {
                files[f] = FileManager.default.contents(atPath: o.output + "/" + f)
            }
            shards.append(files)
        }
        XCTAssertEqual(shards[0].keys.sorted(), shards[1].keys.sorted())
        XCTAssertEqual(shards[0], shards[1])
        // A read that fails stops the prepare with its error (not recorded as a corrupt image),
        // and no manifest is written.
        var o = PrepareOptions(output: temporaryDirectory("reads-fail"))
        o.shardSize = 40
        XCTAssertThrowsError(try DatasetPreparer(options: o).run(ReadingSource(inner: inner, readsAnywhere: true, failing: "synth_0000100"))) {
            XCTAssertTrue("\($0)".contains("synth_0000100") && "\($0)".contains("vanished"), "\($0)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: o.output + "/" + DatasetManifest.fileName))
    }

    /// A shard cut short after prepare is named at open with the cause and the remedy (it
    /// was "truncated tar (header at byte N)").
    func testDamagedShardsAreNamedWhenTheDatasetOpens() throws {
        var o = PrepareOptions(output: temporaryDirectory("damaged"))
        o.shardSize = 30
        let m = try DatasetPreparer(options: o).run(SyntheticSource(size: 16, count: 90, seed: 5, difficulty: 0.3))
        let first = o.output + "/" + m.shards[0].name
        XCTAssertNoThrow(try ShardSet(directory: o.output))
        let h = try FileHandle(forWritingTo: URL(fileURLWithPath: first))
        try h.truncate(atOffset: 5000)
        try h.close()
        XCTAssertThrowsError(try ShardSet(directory: o.output)) {
            XCTAssertEqual("\($0)", "\(first): 5000 bytes, the manifest says \(m.shards[0].bytes): the shard is truncated or was changed after prepare "
                           + "(radar prepare --check-only checks them all; prepare again with --overwrite)")
        }
    }

    /// A shard replaced after the run indexed it (the dataset prepared again mid-run) stops the
    /// run naming it: its offsets read other images silently, or each sample was skipped as bad.
    func testAShardReplacedDuringTheRunStopsItNotSkipped() throws {
        var o = PrepareOptions(output: temporaryDirectory("replaced"))
        o.shardSize = 30
        _ = try DatasetPreparer(options: o).run(SyntheticSource(size: 16, count: 90, seed: 6, difficulty: 0.3))
        let set = try ShardSet(directory: o.output)
        let refs = set.refs(.train)
        let path = set.indices[refs[0].shard].path
        XCTAssertNoThrow(try set.indices[refs[0].shard].image(refs[0].index))
        // The same bytes, written anew and renamed over it (as a second prepare does).
        try writeFileAtomically(try Data(contentsOf: URL(fileURLWithPath: path)), to: path)
        XCTAssertThrowsError(try set.indices[refs[0].shard].image(refs[0].index)) {
            XCTAssertTrue($0 is TarIndex.Unavailable && "\($0)".hasPrefix("\(path): the shard was replaced or changed since the run opened the dataset"), "\($0)")
        }
        let loader = StreamingLoader(set: set, refs: refs, batchSize: 4, size: 16, mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5],
                                     augment: false, seed: 1, epoch: 0, threads: 1, depth: 1, dropLast: false)
        loader.maxBadSamples = 1000
        XCTAssertThrowsError(try { while try loader.next() != nil {} }()) { XCTAssertTrue($0 is TarIndex.Unavailable, "\($0)") }
        XCTAssertTrue(loader.badSamples.isEmpty)
        try FileManager.default.removeItem(atPath: path)
        XCTAssertThrowsError(try set.indices[refs[0].shard].image(refs[0].index)) {
            XCTAssertEqual("\($0)", "\(path): the shard cannot be opened any more (No such file or directory): the dataset changed during the run")
        }
    }

    /// One preparer per folder: a second one is refused naming the first, and touches nothing (it
    /// removed the first's unfinished shards, and both appended to the journal).
    func testASecondPreparerOfTheSameFolderIsRefused() throws {
        let out = temporaryDirectory("two-preparers")
        let source = SyntheticSource(size: 8, count: 60, seed: 2, difficulty: 0.3)
        let first = try FolderLock(directory: out, name: ".prepare.lock") { "held\($0)" }  // as a running preparer holds it
        let partial = out + "/.shard-000003.tar.partial"
        try Data([1, 2, 3]).write(to: URL(fileURLWithPath: partial))
        XCTAssertThrowsError(try DatasetPreparer(options: PrepareOptions(output: out)).run(source)) {
            XCTAssertEqual("\($0)", "\(out): another radar prepare or synth is writing this folder (pid \(getpid()) on \(ProcessInfo.processInfo.hostName)): wait for it to finish")
        }
        XCTAssertTrue(FileManager.default.fileExists(atPath: partial), "the first preparer's unfinished shard is left alone")
        first.release()
        // Once it is gone, the folder is prepared (its stale shard redone) and no lock file stays.
        _ = try DatasetPreparer(options: PrepareOptions(output: out)).run(source)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: out).filter { $0.hasPrefix(".") }, [])
    }

    func testQuotasArePerClassAndSampledAcrossTheWholeSource() throws {
        let source = SyntheticSource(size: 8, count: 400, seed: 2, difficulty: 0.3, framesPerSequence: 1)
        var real = 0, fake = 0
        try source.scan { if case .image(let c, _) = $0 { if c.label == 1 { fake += 1 } else { real += 1 } } }
        var opts = PrepareOptions(output: temporaryDirectory("quota"))
        opts.maxImages = 60
        opts.realFraction = 0.5
        let m = try DatasetPreparer(options: opts).run(source)
        let total = m.counts.values.reduce(DatasetManifest.Counts()) { var c = $0; c.real += $1.real; c.fake += $1.fake; return c }
        XCTAssertEqual(total.real, 30)
        XCTAssertEqual(total.fake, 30)
        let keys = try readDataset(opts.output).keys.compactMap { Int($0.dropFirst(6)) }
        XCTAssertGreaterThan(keys.max()!, 300, "sampled across the source, not the first images read")
        XCTAssertLessThan(keys.min()!, 100)
        // Without --real-fraction the source's ratio is kept.
        var opts2 = PrepareOptions(output: temporaryDirectory("quota2"))
        opts2.maxImages = 100
        let m2 = try DatasetPreparer(options: opts2).run(source)
        let real2 = m2.counts.values.reduce(0) { $0 + $1.real }
        XCTAssertEqual(real2, Int((100 * Double(real) / 400).rounded()))
    }

    /// Throws after `limit` images on the second scan (the write pass), like a killed prepare.
    struct InterruptedSource: SampleSource {
        let inner: SampleSource
        let limit: Int
        final class Counter: @unchecked Sendable { var scans = 0 }
        let counter = Counter()
        var description: [String: String] { inner.description }
        func scan(_ visit: (SourceItem) throws -> Void) throws {
            counter.scans += 1
            var n = 0
            try inner.scan { item in
                if counter.scans == 2 { n += 1; if n > limit { throw DatasetError(path: "source", reason: "interrupted") } }
                try visit(item)
            }
        }
    }

    func testInterruptedPrepareResumesKeepingFinishedShards() throws {
        let source = SyntheticSource(size: 8, count: 200, seed: 5, difficulty: 0.3, framesPerSequence: 4)
        var opts = PrepareOptions(output: temporaryDirectory("resume"))
        opts.shardSize = 25
        XCTAssertThrowsError(try DatasetPreparer(options: opts).run(InterruptedSource(inner: source, limit: 120))) {
            XCTAssertTrue("\($0)".hasPrefix("source: interrupted (") && "\($0)".hasSuffix(" kept: the same command resumes once that is fixed)"), "\($0)")
        }
        let files = try FileManager.default.contentsOfDirectory(atPath: opts.output)
        let finished = files.filter { $0.hasPrefix("shard-") }
        XCTAssertFalse(finished.isEmpty, "some shards finished before the interruption")
        XCTAssertFalse(files.contains(DatasetManifest.fileName), "no manifest for an unfinished dataset")
        // A failure removes the shards it had not finished; a killed run leaves them, as here.
        XCTAssertFalse(files.contains { $0.hasSuffix(".partial") }, "\(files)")
        try Data(count: 1000).write(to: URL(fileURLWithPath: opts.output + "/.shard-000099.tar.partial"))
        // Trained on meanwhile, it says what it is (it was "no manifest (is this a prepared dataset directory?").
        XCTAssertThrowsError(try ShardSet(directory: opts.output)) {
            XCTAssertEqual("\($0)", "\(opts.output): an unfinished preparation (prepare-journal.jsonl, no manifest yet): run the same `radar prepare` or `radar synth` again to finish it")
        }
        var inodes: [String: Int] = [:]
        for f in finished { inodes[f] = (try FileManager.default.attributesOfItem(atPath: "\(opts.output)/\(f)")[.systemFileNumber] as? Int) }
        let m = try DatasetPreparer(options: opts).run(source)
        for f in finished {
            XCTAssertEqual(try FileManager.default.attributesOfItem(atPath: "\(opts.output)/\(f)")[.systemFileNumber] as? Int, inodes[f], "\(f) kept")
        }
        XCTAssertFalse(try FileManager.default.contentsOfDirectory(atPath: opts.output).contains { $0.hasSuffix(".partial") })
        try DatasetChecker.check(directory: opts.output)
        let freshDir = temporaryDirectory("fresh")
        let fresh = try DatasetPreparer(options: PrepareOptions(output: freshDir).with { $0.shardSize = 25 }).run(source)
        XCTAssertEqual(m.counts, fresh.counts, "resumed and uninterrupted runs hold the same samples")
        let a = try readDataset(opts.output), b = try readDataset(freshDir)
        XCTAssertEqual(Set(a.keys), Set(b.keys))
        for (k, v) in a { XCTAssertEqual(v.1, b[k]?.1, k); XCTAssertEqual(v.0, b[k]?.0, k) }
    }

    func testCheckOnlyFindsTamperedAndMissingShards() throws {
        let out = temporaryDirectory("tamper")
        _ = try DatasetPreparer(options: PrepareOptions(output: out).with { $0.shardSize = 40 }).run(
            SyntheticSource(size: 8, count: 100, seed: 1, difficulty: 0.3))
        let shard = "\(out)/shard-000001.tar"
        var bytes = FileManager.default.contents(atPath: shard)!
        bytes[700] ^= 0xFF
        try bytes.write(to: URL(fileURLWithPath: shard))
        XCTAssertThrowsError(try DatasetChecker.check(directory: out)) { XCTAssertTrue("\($0)".contains("shard-000001.tar") && "\($0)".contains("SHA-256"), "\($0)") }
        try FileManager.default.removeItem(atPath: shard)
        XCTAssertThrowsError(try DatasetChecker.check(directory: out)) { XCTAssertTrue("\($0)".contains("shard-000001.tar") && "\($0)".contains("missing"), "\($0)") }
        XCTAssertThrowsError(try ShardSet(directory: out)) {
            XCTAssertEqual("\($0)", "\(shard): listed in the manifest, but cannot be read: No such file or directory (prepare the dataset again, with --overwrite)")
        }
        XCTAssertThrowsError(try DatasetChecker.check(directory: temporaryDirectory("empty"))) { XCTAssertTrue("\($0)".contains("no manifest"), "\($0)") }
    }

    /// A sample record that is not what prepare writes is an error naming the shard, the member
    /// and the field; labels other than 0 and 1 are refused.
    func testBadSampleRecordsNameTheMemberAndField() throws {
        let dir = NSTemporaryDirectory() + "radar-bad-records-\(UUID().uuidString.prefix(6))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let shard = dir + "/shard-000000.tar"
        let w = try TarWriter(path: shard)
        let records = [#"{"label": 1, "split": "train", "sequence": "s", "source": "x"}"#,
                       #"{"label": 7, "split": "train", "sequence": "s", "source": "x"}"#,
                       #"{"label": "fake", "split": "train", "sequence": "s", "source": "x"}"#,
                       #"{"split": "train", "sequence": "s", "source": "x"}"#,
                       #"not json"#]
        for (i, r) in records.enumerated() { try w.add(name: "k\(i).json", data: Data(r.utf8)) }
        try w.close()
        let index = try TarIndex(path: shard)
        XCTAssertEqual(try index.info(0).label, 1)
        let expected = ["k1.json: label 7: expected 0 (real) or 1 (fake)", "k2.json: field label: expected Int",
                        "k3.json: missing field label", "k4.json: not a JSON sample record"]
        for (i, e) in expected.enumerated() {
            XCTAssertThrowsError(try index.info(i + 1)) { err in
                XCTAssertEqual("\(err)", "\(shard): \(e)")
            }
        }
    }

    func testDecoderHandlesGreyRGBAAndCorruptImages() throws {
        let grey = try ImageCodec.encodePNG(pixels: [0, 128, 255, 7], width: 2, height: 2, channels: 1)
        XCTAssertEqual(try ImageCodec.decode(grey, item: "grey").pixels, [0, 0, 0, 128, 128, 128, 255, 255, 255, 7, 7, 7])
        let rgba = try ImageCodec.encodePNG(pixels: [10, 20, 30, 0, 40, 50, 60, 255], width: 2, height: 1, channels: 4)
        XCTAssertEqual(try ImageCodec.decode(rgba, item: "rgba").pixels, [10, 20, 30, 40, 50, 60], "alpha dropped, colour kept")
        var smooth = [UInt8](repeating: 0, count: 768)
        for i in 0..<768 {
            let x = i / 3 % 16, y = i / 48, c = i % 3
            smooth[i] = UInt8(x * 8 + y * 4 + c * 20)
        }
        let img = RGBImage(width: 16, height: 16, pixels: smooth)
        let jpg = try ImageCodec.encodeJPEG(img, quality: 95)
        let back = try ImageCodec.decode(jpg, item: "jpg")
        XCTAssertEqual(back.width, 16)
        var errorSum = 0
        for i in 0..<img.pixels.count { errorSum += abs(Int(back.pixels[i]) - Int(img.pixels[i])) }
        let meanError = Double(errorSum) / Double(img.pixels.count)
        XCTAssertLessThan(meanError, 3, "JPEG q95 round trip of a smooth 16x16 image")
        XCTAssertThrowsError(try ImageCodec.decode(jpg.prefix(jpg.count / 2), item: "half.jpg")) { XCTAssertTrue("\($0)".hasPrefix("half.jpg: corrupt JPEG"), "\($0)") }
        XCTAssertThrowsError(try ImageCodec.decode(Data("GIF89a".utf8), item: "x.gif")) { XCTAssertTrue("\($0)".contains("not a PNG, JPEG or WebP"), "\($0)") }
        // Area resize of a 2x2 block pattern averages exactly; enlarging is bilinear.
        let checker = RGBImage(width: 4, height: 2, pixels: [0, 0, 0, 100, 100, 100, 0, 0, 0, 100, 100, 100,
                                                             0, 0, 0, 100, 100, 100, 0, 0, 0, 100, 100, 100])
        XCTAssertEqual(ImageResize.resize(checker, width: 2, height: 1).pixels, [50, 50, 50, 50, 50, 50])
    }

    /// The PNG fast path (libdeflate + our unfiltering) gives libpng's pixels. PNGs written by
    /// Python (numpy + zlib, every row filter type in turn, grey / grey+alpha / RGB / RGBA, odd
    /// sizes, IDAT split over chunks) and by libpng (its adaptive filters) decode to the same bytes
    /// both ways; kinds the fast path leaves to libpng (16-bit, palette) and damaged files
    /// still decode or fail exactly as libpng says.
    func testPNGFastPathGivesLibpngsPixels() throws {
        let dir = temporaryDirectory("pngfast")
        let script = """
        import sys, zlib, struct, numpy as np
        def chunk(t, b): return struct.pack('>I', len(b)) + t + b + struct.pack('>I', zlib.crc32(t + b) & 0xffffffff)
        def paeth(a, b, c):
            p = a + b - c; pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
        def png(path, img, colour, depth=8, split=1, extra=b''):
            h, w = img.shape[:2]; bpp = img.shape[2] if img.ndim == 3 else 1
            rows = img.reshape(h, -1).astype(np.int32); out = bytearray(); prev = np.zeros(w * bpp, np.int32)
            for y in range(h):
                f = y % 5; cur = rows[y]; a = np.concatenate([np.zeros(bpp, np.int32), cur[:-bpp]])
                c = np.concatenate([np.zeros(bpp, np.int32), prev[:-bpp]])
                pred = [np.zeros_like(cur), a, prev, (a + prev) // 2, paeth(a, prev, c)][f]
                out += bytes([f]) + ((cur - pred) % 256).astype(np.uint8).tobytes(); prev = cur
            z = zlib.compress(bytes(out), 6); n = (len(z) + split - 1) // split
            body = chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, depth, colour, 0, 0, 0)) + extra
            body += b''.join(chunk(b'IDAT', z[i:i + n]) for i in range(0, len(z), n))
            open(path, 'wb').write(b'\\x89PNG\\r\\n\\x1a\\n' + body + chunk(b'IEND', b''))
        rng = np.random.default_rng(7)
        for colour, ch in ((0, 1), (4, 2), (2, 3), (6, 4)):
            for (h, w) in ((1, 1), (23, 37), (5, 64)):
                y, x = np.mgrid[0:h, 0:w]
                img = np.where(rng.random((h, w, ch)) < 0.5, rng.integers(0, 256, (h, w, ch)), ((x * 7 + y * 3)[..., None] + np.arange(ch) * 40) % 256).astype(np.uint8)
                png(f'{sys.argv[1]}/c{colour}_{h}x{w}.png', img if ch > 1 else img[..., 0], colour, split=3 if h == 23 else 1)
                np.save(f'{sys.argv[1]}/c{colour}_{h}x{w}.npy', img)
        img = rng.integers(0, 256, (9, 11, 3)).astype(np.uint8)
        png(f'{sys.argv[1]}/gamma.png', img, 2, extra=chunk(b'gAMA', struct.pack('>I', 100000)))
        png(f'{sys.argv[1]}/text.png', img, 2, extra=chunk(b'tEXt', b'Comment\\x00made by a test'))
        """
        let (rc, out) = try shell([interopPython, "-c", script, dir])
        XCTAssertEqual(rc, 0, "python (RADAR_PYTHON=\(interopPython)): \(out)")
        var filters = Set<UInt8>(), files = 0
        for f in try FileManager.default.contentsOfDirectory(atPath: dir).sorted() where f.hasSuffix(".png") && f.hasPrefix("c") {
            let data = try Data(contentsOf: URL(fileURLWithPath: "\(dir)/\(f)"))
            guard let fast = PNGFastPath.decode(data, maxPixels: 1 << 24) else { XCTFail("\(f): the fast path declined"); continue }
            XCTAssertEqual(fast.pixels, try ImageCodec.decodePNGWithLibpng(data, item: f).pixels, f)
            filters.formUnion(PNGFastPath.rowFilters(data))
            files += 1
        }
        XCTAssertEqual(files, 12)
        XCTAssertEqual(filters, [0, 1, 2, 3, 4], "every row filter type decoded")
        // libpng's own encoder (adaptive filters), every channel count, sizes up to 224.
        let faces = SyntheticFaces(size: 224, seed: 4)
        for (i, ch) in [1, 3, 4].enumerated() {
            let rgb = faces.rgbImage(i, label: i % 2)
            let n = rgb.width * rgb.height
            let pixels = (0..<(n * ch)).map { k in ch >= 3 ? (k % ch == 3 ? UInt8(k % 251) : rgb.pixels[(k / ch) * 3 + k % ch]) : rgb.pixels[(k / ch) * 3 + (k % ch) % 3] }
            let data = try ImageCodec.encodePNG(pixels: pixels, width: rgb.width, height: rgb.height, channels: ch)
            let fast = try XCTUnwrap(PNGFastPath.decode(data, maxPixels: 1 << 24), "channels \(ch)")
            XCTAssertEqual(fast.pixels, try ImageCodec.decodePNGWithLibpng(data, item: "c").pixels, "libpng-encoded, \(ch) channels")
        }
        // A gAMA chunk and a text chunk are harmless: neither path applies gamma (as Pillow and
        // OpenCV do not), so the file decodes to the pixels stored, both ways.
        let gamma = try Data(contentsOf: URL(fileURLWithPath: dir + "/gamma.png")), text = try Data(contentsOf: URL(fileURLWithPath: dir + "/text.png"))
        let stored = try ImageCodec.decodePNG(text, item: "t").pixels  // the same pixels, without gAMA
        XCTAssertEqual(PNGFastPath.decode(gamma, maxPixels: 1 << 24)?.pixels, stored)
        XCTAssertEqual(try ImageCodec.decodePNGWithLibpng(gamma, item: "g").pixels, stored)
        XCTAssertNotNil(PNGFastPath.decode(text, maxPixels: 1 << 24))
        // Damage: a flipped byte in the image data fails the chunk CRC; libpng words the error.
        var broken = try Data(contentsOf: URL(fileURLWithPath: dir + "/c2_23x37.png"))
        broken[60] ^= 0x55
        XCTAssertNil(PNGFastPath.decode(broken, maxPixels: 1 << 24))
        XCTAssertThrowsError(try ImageCodec.decodePNG(broken, item: "b.png")) { XCTAssertTrue("\($0)".hasPrefix("b.png: corrupt PNG"), "\($0)") }
        // Truncated files never trap, whatever the cut.
        let whole = try Data(contentsOf: URL(fileURLWithPath: dir + "/c6_5x64.png"))
        for cut in stride(from: 0, to: whole.count, by: 7) { _ = PNGFastPath.decode(whole.prefix(cut), maxPixels: 1 << 24) }
    }

    /// `radar prepare --image-format png`: a real/ fake/ folder of PNGs and JPEGs becomes a set of
    /// PNG members only (what Hugging Face `datasets` needs), each holding exactly the pixels the
    /// JPEG decodes to; preparing twice gives identical shards.
    func testPNGOnlyPreparationConvertsJPEGsLosslesslyAndIsReproducible() throws {
        let src = temporaryDirectory("mixed-src")
        let faces = SyntheticFaces(size: 24, seed: 5)
        var jpegPixels: [String: [UInt8]] = [:]
        for (label, dir) in [(0, "real"), (1, "fake")] {
            try FileManager.default.createDirectory(atPath: "\(src)/\(dir)", withIntermediateDirectories: true)
            for i in 0..<12 {
                let img = faces.rgbImage(i, label: label)
                if i % 3 == 0 {
                    try ImageCodec.encodePNG(img).write(to: URL(fileURLWithPath: "\(src)/\(dir)/\(i).png"))
                } else {
                    let jpg = try ImageCodec.encodeJPEG(img, quality: 90)
                    try jpg.write(to: URL(fileURLWithPath: "\(src)/\(dir)/\(i).jpg"))
                    jpegPixels["\(dir)_\(i)"] = try ImageCodec.decode(jpg, item: "j").pixels
                }
            }
        }
        func prepare(_ name: String, png: Bool) throws -> String {
            let out = temporaryDirectory(name)
            var o = PrepareOptions(output: out)
            o.pngOnly = png
            _ = try DatasetPreparer(options: o).run(try ReferenceFolders(root: src, testFraction: 0.2, seed: 1))
            return out
        }
        let a = try prepare("png-a", png: true), b = try prepare("png-b", png: true), kept = try prepare("kept", png: false)
        let set = try ShardSet(directory: a)
        XCTAssertEqual(set.manifest.parameters["image_format"], "png")
        var members = 0, checked = 0
        for index in set.indices {
            for i in 0..<index.count {
                let bytes = try index.image(i)
                XCTAssertTrue(bytes.starts(with: [0x89, 0x50, 0x4E, 0x47]), "every member is a PNG")
                if let expected = jpegPixels[index.key(i)] {
                    XCTAssertEqual(try ImageCodec.decode(bytes, item: "p").pixels, expected, "lossless: the JPEG's decoded pixels")
                    checked += 1
                }
                members += 1
            }
        }
        XCTAssertEqual(members, 24)
        XCTAssertEqual(checked, 16)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: a + "/manifest.json")), try Data(contentsOf: URL(fileURLWithPath: b + "/manifest.json")),
                       "the same source gives byte-identical shards")
        XCTAssertNotEqual(try ShardSet(directory: kept).manifest.contentHash, set.manifest.contentHash, "keep stores the original bytes")
    }

    /// Evaluation and prediction resize as the reference does (A.Resize: cv2.resize INTER_LINEAR),
    /// bit for bit. Fixture: tools/golden/resize_fixture.py (shrink, enlarge, mixed, exact halving,
    /// odd row lengths, a no-op and a single pixel).
    func testEvaluationResizeIsOpenCVInterLinearExactly() throws {
        let t = try SafeTensors.read(fixturesDirectory.appendingPathComponent("resize.safetensors").path).tensors
        func image(_ s: SafeTensor) -> RGBImage { RGBImage(width: s.shape[1], height: s.shape[0], pixels: s.floats.map { UInt8($0) }) }
        var cases = 0, trainingDiffers = 0
        while let input = t["in\(cases)"], let expected = t["out\(cases)"] {
            let src = image(input), ref = image(expected)
            let ours = ImageResize.resize(src, width: ref.width, height: ref.height, mode: .openCVLinear)
            let differing = zip(ours.pixels, ref.pixels).filter { $0 != $1 }.count
            XCTAssertEqual(differing, 0, "case \(cases): \(src.width)x\(src.height) -> \(ref.width)x\(ref.height): \(differing) values differ from OpenCV")
            if ImageResize.resize(src, width: ref.width, height: ref.height, mode: .bilinearOrArea).pixels != ref.pixels { trainingDiffers += 1 }
            cases += 1
        }
        XCTAssertEqual(cases, 13)
        XCTAssertGreaterThan(trainingDiffers, 3, "training's area-averaging resize is a different operation (kept for training)")
    }
}

extension PrepareOptions {
    func with(_ f: (inout PrepareOptions) -> Void) -> PrepareOptions { var c = self; f(&c); return c }
}

final class TrainingRunTests: XCTestCase {
    func testARunThatCannotTakeAStepSaysWhyAndLeavesNoFolder() throws {
        let data = temporaryDirectory("run-small-data"), out = temporaryDirectory("run-small-out")
        _ = try DatasetPreparer(options: PrepareOptions(output: data)).run(SyntheticSource(size: 32, count: 80, seed: 2, difficulty: 0.2, framesPerSequence: 4))
        var o = TrainOptions(data: data, output: out, experiment: "too-big", config: RADARConfig.preset("tiny")!)
        o.device = testDeviceName
        (o.batchSize, o.accumulationSteps) = (50, 2)
        XCTAssertThrowsError(try TrainingRun(options: o).run()) { e in
            XCTAssertTrue("\(e)".contains("training images are fewer than one global batch (--batch-size 50 x --accumulation-steps 2 x 1 rank = 100)"), "\(e)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: o.experimentDirectory), "no experiment folder for a run that never started")
        // No validation split: said with the remedy, before the folder is made.
        let noVal = temporaryDirectory("run-noval-data")
        _ = try DatasetPreparer(options: PrepareOptions(output: noVal).with { $0.valFraction = 0 }).run(
            SyntheticSource(size: 32, count: 80, seed: 2, difficulty: 0.2, framesPerSequence: 4))
        var v = o
        (v.data, v.batchSize, v.experiment) = (noVal, 4, "no-val")
        XCTAssertThrowsError(try TrainingRun(options: v).run()) {
            XCTAssertEqual("\($0)", "\(noVal): the val split is empty (validation chooses the best epoch and stops early): prepare it with --val-fraction above 0")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: v.experimentDirectory))
        // A fraction above 0 that drew no sequence of a small set: not "above 0".
        let drewNone = temporaryDirectory("run-drew-none-data")
        _ = try DatasetPreparer(options: PrepareOptions(output: drewNone).with { $0.valFraction = 0.05 }).run(
            SyntheticSource(size: 32, count: 32, seed: 2, difficulty: 0.2, framesPerSequence: 4))
        let counts = try DatasetManifest.load(directory: drewNone).counts
        XCTAssertEqual(counts["val"]?.total ?? 0, 0, "the set the check needs: no validation sequence drawn")
        let sequences = counts["train"].map { $0.realSequences + $0.fakeSequences } ?? -1
        XCTAssertGreaterThan(sequences, 1)
        (v.data, v.experiment) = (drewNone, "drew-none")
        XCTAssertThrowsError(try TrainingRun(options: v).run()) {
            XCTAssertEqual("\($0)", "\(drewNone): the val split is empty (validation chooses the best epoch and stops early): --val-fraction 0.05 drew none of the \(sequences) training sequences (each goes whole to one split, by a seeded hash): prepare it with a larger --val-fraction, more sequences or another --seed")
        }
        // Nor for a checkpoint that cannot be resumed from (it left a folder holding only .lock).
        (o.batchSize, o.experiment, o.resume) = (8, "bad-resume", data + "/manifest.json")
        XCTAssertThrowsError(try TrainingRun(options: o).run()) { e in
            XCTAssertTrue("\(e)".hasPrefix(data + "/manifest.json: ") && "\(e)".contains("it is JSON text (a run's config.json or metrics.json?), not a safetensors file"), "\(e)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: o.experimentDirectory), "no experiment folder after a failed resume")
        // A missing or misnamed file says why, in the system's words (it was "cannot read file").
        o.resume = data + "/no-such.safetensors.lz4"
        XCTAssertThrowsError(try TrainingRun(options: o).run()) { XCTAssertEqual("\($0)", "\(o.resume!): No such file or directory") }
        XCTAssertThrowsError(try SafeTensors.read(data)) { XCTAssertEqual("\($0)", "\(data): a folder, not a file") }
        XCTAssertThrowsError(try SafeTensors.read("/dev/zero")) { XCTAssertEqual("\($0)", "/dev/zero: a device, not a regular file") }
        XCTAssertThrowsError(try RADARConfig.load(data + "/c.json")) { XCTAssertTrue("\($0)".hasSuffix("c.json: invalid RADAR config: No such file or directory"), "\($0)") }
    }

    func testTrainingRunOnShardsWritesTheReferenceOutputs() throws {
        let data = temporaryDirectory("run-data"), out = temporaryDirectory("run-out")
        var prep = PrepareOptions(output: data)
        prep.valFraction = 0.2
        _ = try DatasetPreparer(options: prep).run(SyntheticSource(size: 32, count: 160, seed: 2, difficulty: 0.2, framesPerSequence: 4))
        var o = TrainOptions(data: data, output: out, experiment: "smoke", config: RADARConfig.preset("tiny")!)
        o.device = testDeviceName
        (o.batchSize, o.epochs, o.accumulationSteps, o.maxStepsPerEpoch, o.learningRate) = (8, 2, 2, 3, 1e-3)
        let run = try TrainingRun(options: o)
        let h = try run.run()
        XCTAssertEqual(h.trainLoss.count, 2)
        XCTAssertEqual(run.trainer.optimizer.step, 6, "3 optimizer steps per epoch, 2 micro-batches each")
        let dir = o.experimentDirectory
        let metrics = try JSONSerialization.jsonObject(with: try Data(contentsOf: URL(fileURLWithPath: "\(dir)/metrics.json"))) as! [String: Any]
        let history = metrics["history"] as! [String: Any]
        for k in ["train_loss", "val_auc", "val_acc"] { XCTAssertEqual((history[k] as? [Any])?.count, 2, k) }
        XCTAssertNotNil(metrics["best_val_auc"] as? Double)
        let test = metrics["test_metrics"] as! [String: Any]
        for k in ["auc", "accuracy", "eer", "average_precision", "sequence_auc"] { XCTAssertNotNil(test[k], k) }
        XCTAssertNotNil(metrics["timestamp"] as? String)
        let config = try JSONSerialization.jsonObject(with: try Data(contentsOf: URL(fileURLWithPath: "\(dir)/config.json"))) as! [String: Any]
        XCTAssertEqual(config["batch_size"] as? Int, 8)
        XCTAssertEqual((config["model"] as? [String: Any])?["embed_dim"] as? Int, 48)
        let lines = try String(contentsOfFile: "\(dir)/metrics.jsonl", encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(lines.count, 6 + 2, "one line per optimizer step and one per epoch")
    }

    /// Temporaries a killed writer left are removed at the next start (only those whose process
    /// is gone); a folder that cannot be made is an error with the path and the errno text.
    func testStaleTemporariesAreRemovedAndFolderErrorsArePlain() throws {
        let dir = temporaryDirectory("stale")
        let dead = Process()
        dead.executableURL = URL(fileURLWithPath: "/bin/true")
        try dead.run()
        dead.waitUntilExit()
        let stale = ".last.safetensors.lz4.tmp-\(dead.processIdentifier)", live = ".best.safetensors.lz4.tmp-\(getpid())"
        for n in [stale, live, "last.safetensors.lz4"] { XCTAssertTrue(FileManager.default.createFile(atPath: dir + "/" + n, contents: Data([1]))) }
        XCTAssertEqual(removeStaleTemporaries(in: dir), [stale])
        XCTAssertEqual(Set(try FileManager.default.contentsOfDirectory(atPath: dir)), [live, "last.safetensors.lz4"])
        XCTAssertThrowsError(try makeDirectory(dir + "/last.safetensors.lz4/sub")) { e in
            XCTAssertEqual("\(e)", "\(dir)/last.safetensors.lz4: cannot create the folder: a file of that name exists")
        }
        try makeDirectory(dir + "/a/b/c")
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/a/b/c"))
        // A relative one-character folder (`--output o`): Foundation's deletingLastPathComponent
        // crashed on it (SIGILL), so every rank died making its run folder.
        let cwd = FileManager.default.currentDirectoryPath
        XCTAssertEqual(chdir(dir), 0)
        defer { chdir(cwd) }
        try makeDirectory("o/e")
        try makeDirectory("p")
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/o/e") && FileManager.default.fileExists(atPath: dir + "/p"))
    }

    /// parentPath is NSString's deletingLastPathComponent, without its crash on "o".
    func testParentPathIsDeletingLastPathComponent() {
        for p in ["a/b", "a/b/", "a//b", "/o", "/", "/a/b/c", "ab", "./o", "../x", "a/b//", "x/o", "outputs", "/a/"] {
            XCTAssertEqual(parentPath(p), (p as NSString).deletingLastPathComponent, p)
        }
        XCTAssertEqual(parentPath("o"), "")
        XCTAssertEqual(parentPath("o/"), "")
        XCTAssertEqual(parentPath("a/"), "")
        XCTAssertEqual(parentPath("//"), "/")
        XCTAssertEqual(parentPath("o/e"), "o")
    }

    /// An output path that is not a plain file: a symbolic link has its target replaced and stays
    /// a link; a FIFO (what /dev/stdout is on a pipe) is written into and stays a FIFO (the rename
    /// had put a regular file in place of /dev/stdout); a folder or a link to nothing is refused.
    func testAtomicWritesKeepLinksAndWriteIntoPipes() throws {
        let dir = temporaryDirectory("atomic-targets")
        let target = dir + "/real.csv", link = dir + "/link.csv"
        try Data("old".utf8).write(to: URL(fileURLWithPath: target))
        XCTAssertEqual(symlink("real.csv", link), 0)
        try writeFileAtomically(Data("new".utf8), to: link)
        XCTAssertEqual(try FileManager.default.destinationOfSymbolicLink(atPath: link), "real.csv")
        XCTAssertEqual(FileManager.default.contents(atPath: target), Data("new".utf8))
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir).sorted(), ["link.csv", "real.csv"], "no temporary left")

        let fifo = dir + "/fifo"
        XCTAssertEqual(mkfifo(fifo, 0o600), 0)
        nonisolated(unsafe) var got: Data?
        let done = DispatchSemaphore(value: 0)
        Thread { got = try? readInputFile(fifo, limit: 1 << 20); done.signal() }.start()
        let rows = Data((0..<5000).map { "key\($0),1,0.5\n" }.joined().utf8)  // more than a pipe holds at once
        try writeFileAtomically(rows, to: fifo)
        XCTAssertEqual(done.wait(timeout: .now() + 30), .success, "the reader got its end of file")  // (a regression fails, not hangs)
        XCTAssertEqual(got, rows)
        var st = stat()
        XCTAssertEqual(lstat(fifo, &st), 0)
        XCTAssertEqual(st.st_mode & S_IFMT, S_IFIFO, "still a FIFO, not a file put in its place")

        XCTAssertThrowsError(try writeFileAtomically(Data(), to: dir)) { XCTAssertEqual("\($0)", "\(dir): a folder, expected a file name") }
        XCTAssertEqual(symlink("missing.csv", dir + "/dangling.csv"), 0)
        XCTAssertThrowsError(try writeFileAtomically(Data(), to: dir + "/dangling.csv")) {
            XCTAssertEqual("\($0)", "\(dir)/dangling.csv: a symbolic link to nothing (missing.csv): remove it or give another path")
        }
    }

    /// Kernel-made files read to their end: this process's /proc/self/maps (far beyond the 4 KB
    /// of the kernel's first page, which is all Foundation's String(contentsOfFile:) returns)
    /// has every line C's stdio reads from it; a file that is not there is nil.
    func testKernelFilesAreReadToTheirEnd() throws {
        func linesByStdio() -> Int {
            guard let f = fopen("/proc/self/maps", "r") else { return -1 }
            defer { fclose(f) }
            var n = 0, line: UnsafeMutablePointer<CChar>?, cap = 0
            while getline(&line, &cap, f) > 0 { n += 1 }
            free(line)
            return n
        }
        let before = linesByStdio()
        let text = try XCTUnwrap(readKernelFile("/proc/self/maps"))
        let after = linesByStdio()
        XCTAssertGreaterThan(text.utf8.count, 16_384, "the test process maps enough to need several pages")
        XCTAssertTrue(text.hasSuffix("\n"))
        let lines = text.split(separator: "\n").count
        XCTAssertTrue(lines == before || lines == after, "\(lines) lines, stdio read \(before) and \(after)")
        XCTAssertTrue(text.contains("[stack]"), "the last mappings are there too")
        XCTAssertNil(readKernelFile("/proc/self/no-such-file"))
    }

    /// A training sample that rots in its shard after prepare (its image bytes overwritten) is
    /// skipped, logged and recorded, and the run goes on; with a limit of 0 the run stops naming it.
    func testUnreadableTrainingSampleIsSkippedAndCounted() throws {
        let data = temporaryDirectory("bad-data")
        var prep = PrepareOptions(output: data)
        prep.valFraction = 0.2
        _ = try DatasetPreparer(options: prep).run(SyntheticSource(size: 32, count: 64, seed: 3, difficulty: 0.2, framesPerSequence: 4))
        let set = try ShardSet(directory: data)
        let ref = set.refs(.train)[0]
        let index = set.indices[ref.shard]
        let member = index.member(ref.index, ext: "png") ?? index.member(ref.index, ext: "jpg")!
        let fh = try XCTUnwrap(FileHandle(forWritingAtPath: index.path))
        try fh.seek(toOffset: UInt64(member.offset))
        try fh.write(contentsOf: Data(repeating: 0x5a, count: 16))
        try fh.close()
        func train(_ limit: Int, _ out: String) throws -> (TrainingRun, [String]) {
            var o = TrainOptions(data: data, output: out, experiment: "bad", config: RADARConfig.preset("tiny")!)
            o.device = testDeviceName
            (o.batchSize, o.epochs, o.accumulationSteps, o.learningRate, o.maxBadSamples) = (4, 1, 1, 1e-3, limit)
            let run = try TrainingRun(options: o)
            var logged: [String] = []
            let lock = NSLock()
            run.log = { line in lock.lock(); logged.append(line); lock.unlock() }
            _ = try run.run()
            return (run, logged)
        }
        let out = temporaryDirectory("bad-out")
        let (run, logged) = try train(3, out)
        let key = set.key(ref)
        XCTAssertTrue(logged.contains { $0.contains("skipped unreadable sample \(key)") && $0.contains("not a PNG, JPEG or WebP") }, "\(logged)")
        let records = try String(contentsOfFile: run.options.experimentDirectory + "/metrics.jsonl", encoding: .utf8)
        XCTAssertTrue(records.contains("\"bad_sample\":\"\(key)\""), records)
        XCTAssertThrowsError(try train(0, temporaryDirectory("bad-out0"))) { e in XCTAssertTrue("\(e)".contains(key), "\(e)") }
    }
}
