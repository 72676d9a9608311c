import Foundation
@testable import RadarCore
import XCTest

/// Each shard's index file (`shard-N.idx`, NVIDIA DALI's wds2idx format v1.2): written by
/// prepare, checked against the shard when the dataset opens, used instead of walking 2 headers per
/// sample; a missing, foreign or damaged one is walked around and said; `--check-only` writes it.
final class ShardIndexTests: XCTestCase {
    /// A reference-folder source with a name too long for a ustar header (libarchive writes a pax
    /// record for it), PNGs and JPEGs, in shards of 8.
    func prepared(_ name: String) throws -> (out: String, manifest: DatasetManifest) {
        let root = temporaryDirectory(name + "-src")
        let faces = SyntheticFaces(size: 16, seed: 2)
        for (dir, label) in [("real", 0), ("fake", 1)] {
            try FileManager.default.createDirectory(atPath: "\(root)/\(dir)", withIntermediateDirectories: true)
            for i in 0..<10 {
                let long = i == 3 ? String(repeating: "long", count: 30) : ""
                let d = i % 2 == 0 ? try ImageCodec.encodePNG(faces.rgbImage(i, label: label))
                    : try ImageCodec.encodeJPEG(faces.rgbImage(i, label: label), quality: 90)
                try d.write(to: URL(fileURLWithPath: "\(root)/\(dir)/img\(i)\(long).\(i % 2 == 0 ? "png" : "jpg")"))
            }
        }
        var o = PrepareOptions(output: temporaryDirectory(name))
        o.shardSize = 8
        let m = try DatasetPreparer(options: o).run(try ReferenceFolders(root: root, testFraction: 0.25, seed: 1))
        return (o.output, m)
    }

    /// The index files are what DALI's wds2idx writes for the shards, as Python's tarfile reads
    /// them (data offset, size and name of every regular member, grouped by key in shard order).
    func testIndexFilesAreDALIsFormatForTheShardsAsPythonsTarfileReadsThem() throws {
        let (out, m) = try prepared("idx-python")
        XCTAssertGreaterThan(m.shards.count, 2)
        let script = """
        import sys, tarfile
        for shard in sys.argv[1:]:
            groups = []
            with tarfile.open(shard) as t:
                for member in t:
                    if not member.isreg(): continue
                    key, ext = member.name.split('.', 1)
                    if not groups or groups[-1][0] != key: groups.append((key, []))
                    groups[-1][1].append(f'{ext} {member.offset_data} {member.size} {member.name}')
            text = f'v1.2 {len(groups)}\\n' + ''.join(' '.join(parts) + '\\n' for _, parts in groups)
            mine = open(shard[:-4] + '.idx').read()
            if mine != text:
                sys.exit(f'{shard}: ours\\n{mine}\\nexpected\\n{text}')
            print(shard, len(groups), 'samples agree')
        """
        let shards = m.shards.map { "\(out)/\($0.name)" }
        let (rc, text) = try shell([interopPython, "-c", script] + shards)
        XCTAssertEqual(rc, 0, "python (RADAR_PYTHON=\(interopPython)): \(text)")
        XCTAssertEqual(text.split(separator: "\n").filter { $0.hasSuffix("samples agree") }.count, m.shards.count, text)
        // NVIDIA DALI's own reader (CPU only, no GPU needed) reads every sample through our index
        // files: the image and record bytes are the shards' own, in order.
        let dali = """
        import sys, tarfile
        from nvidia.dali import pipeline_def, fn
        tars = sys.argv[1:]
        expected = []
        for shard in tars:
            with tarfile.open(shard) as t:
                members = {}
                for m in t:
                    if m.isreg(): members.setdefault(m.name.split('.', 1)[0], {})[m.name.split('.', 1)[1]] = t.extractfile(m).read()
                for key, parts in members.items():
                    expected.append((parts.get('png', parts.get('jpg')), parts['json']))
        @pipeline_def(batch_size=4, num_threads=1, device_id=None)
        def pipe():
            images, records = fn.readers.webdataset(paths=tars, index_paths=[t[:-4] + '.idx' for t in tars], ext=['png;jpg', 'json'],
                                         missing_component_behavior='error', random_shuffle=False, name='r')
            return images, records
        p = pipe()
        p.build()
        n = p.epoch_size('r')
        assert n == len(expected), (n, len(expected))
        got = []
        while len(got) < n:
            images, records = p.run()
            got += [(bytes(images.at(i)), bytes(records.at(i))) for i in range(len(records))]
        bad = [i for i in range(n) if got[i] != expected[i]]
        assert not bad, f'samples {bad[:5]} differ'
        print('dali read', n, 'samples through the index files, every byte the shards hold')
        """
        let (drc, dtext) = try shell([interopPython, "-c", dali] + shards)
        XCTAssertEqual(drc, 0, "DALI (RADAR_PYTHON=\(interopPython), needs nvidia-dali-cuda120): \(dtext)")
        XCTAssertTrue(dtext.contains("dali read \(m.shards.reduce(0) { $0 + $1.samples }) samples"), dtext)
        let idx = try String(contentsOfFile: TarIndex.indexPath(forShard: shards[0]), encoding: .utf8)
        XCTAssertTrue(try shards.map { try String(contentsOfFile: TarIndex.indexPath(forShard: $0), encoding: .utf8) }.joined()
                        .contains(String(repeating: "long", count: 30)), "the pax-named member is listed:\n\(idx)")
    }

    /// The walk on tars written by Python in GNU and pax formats (long names in 'L' and 'x'
    /// records, a folder entry, a file without an extension, a base-256-free size of 0) gives
    /// the members Python's tarfile lists.
    func testTheWalkListsWhatPythonsTarfileListsInGNUAndPaxTars() throws {
        let dir = temporaryDirectory("walk-formats")
        let script = """
        import io, sys, tarfile
        def add(t, name, data):
            info = tarfile.TarInfo(name); info.size = len(data); t.addfile(info, io.BytesIO(data))
        for fmt, label in ((tarfile.GNU_FORMAT, 'gnu'), (tarfile.PAX_FORMAT, 'pax'), (tarfile.USTAR_FORMAT, 'ustar')):
            path = f'{sys.argv[1]}/{label}.tar'
            long = 'k' + 'x' * (150 if fmt != tarfile.USTAR_FORMAT else 60)
            with tarfile.open(path, 'w', format=fmt) as t:
                d = tarfile.TarInfo('folder'); d.type = tarfile.DIRTYPE; t.addfile(d)
                add(t, 'a.png', b'p' * 700); add(t, 'a.json', b'{}')
                add(t, 'README', b'no extension')
                add(t, long + '.jpg', b'j' * 1025); add(t, long + '.json', b'')
                add(t, 'b.seg.png', b'q' * 3)
            groups = []
            with tarfile.open(path) as t:
                for m in t:
                    if not m.isreg() or '.' not in m.name: continue
                    key, ext = m.name.split('.', 1)
                    if not groups or groups[-1][0] != key: groups.append((key, []))
                    groups[-1][1].append(f'{ext} {m.offset_data} {m.size} {m.name}')
            open(path[:-4] + '.expected', 'w').write(f'v1.2 {len(groups)}\\n' + ''.join(' '.join(p) + '\\n' for _, p in groups))
        """
        let (rc, text) = try shell([interopPython, "-c", script, dir])
        XCTAssertEqual(rc, 0, "python (RADAR_PYTHON=\(interopPython)): \(text)")
        for format in ["gnu", "pax", "ustar"] {
            let walked = try TarIndex(path: "\(dir)/\(format).tar")
            XCTAssertEqual(String(decoding: walked.indexFileData(), as: UTF8.self), try String(contentsOfFile: "\(dir)/\(format).expected", encoding: .utf8), format)
            XCTAssertEqual(walked.count, 3, format)
            XCTAssertEqual((0..<walked.count).map(walked.key), ["a", walked.key(1), "b"], format)
            XCTAssertEqual(walked.member(2, ext: "seg.png")?.size, 3, format)
            XCTAssertEqual(try walked.read(1, ext: "jpg"), Data(repeating: UInt8(ascii: "j"), count: 1025), format)
            XCTAssertEqual(try walked.read(0, ext: "json"), Data("{}".utf8), format)
        }
    }

    /// Keys hold no white space (words of an index file line are split on it), no dot, no slash.
    func testKeysHoldNoWhiteSpaceDotOrSlash() {
        XCTAssertEqual(sanitizeKey("a b\tc\nd.e/f\u{00A0}g\r\nh é"), "a_b_c_d_e_f_g_h_é")
    }

    /// Opening uses the index files and gives the walk's members; a missing one is walked and said,
    /// a foreign or damaged one is walked and named; `--check-only` writes them again.
    func testTheDatasetOpensFromIndexFilesAndWalksAroundBadOnes() throws {
        let (out, m) = try prepared("idx-open")
        let walked = try ShardSet(directory: out, indexFiles: false)
        func assertSameAsWalked(_ set: ShardSet, _ why: String) {
            XCTAssertEqual(set.indices.count, walked.indices.count)
            for (a, b) in zip(set.indices, walked.indices) { XCTAssertTrue(a.sameMembers(as: b), "\(why): \(a.path)") }
        }
        let indexed = try ShardSet(directory: out)
        XCTAssertNil(indexed.indexNote)
        assertSameAsWalked(indexed, "from index files")
        let idx = m.shards.map { TarIndex.indexPath(forShard: "\(out)/\($0.name)") }

        try FileManager.default.removeItem(atPath: idx[1])
        let missing = try ShardSet(directory: out)
        XCTAssertEqual(missing.indexNote, "\(out): 1 of \(m.shards.count) shards have no index file (prepared by an earlier radar?) and were walked, "
                       + "which is slow on a large dataset; `radar prepare --check-only --output \(out)` writes them")
        assertSameAsWalked(missing, "one walked")

        // Another shard's index (the shards written again by another tool, say): its first
        // member's header names another file.
        try FileManager.default.copyItem(atPath: idx[2], toPath: idx[1])
        let foreign = try ShardSet(directory: out)
        let note = try XCTUnwrap(foreign.indexNote)
        XCTAssertTrue(note.hasPrefix("\(out): 1 shard index file disagreed with its shard and was not used (\(idx[1]): "), note)
        XCTAssertTrue(note.contains("the index is not this shard's"), note)
        assertSameAsWalked(foreign, "foreign index")

        for (text, reason) in [("hello\n", "line 1 is not `v1.2 <samples>`"),
                               ("v1.1 1\npng 512 10\n", "format v1.1, expected v1.2 (earlier versions hold no file names)"),
                               ("v1.2 2\npng 512 10 a.png\n", "says 2 samples, holds 1 lines"),
                               ("v1.2 1\npng 100 10 a.png\n", "line 2: member a.png is not inside the \(m.shards[1].bytes)-byte shard at a 512-byte boundary"),
                               ("v1.2 1\npng 512 10\n", "line 2: expected `<ext> <offset> <size> <file name>` per member")] {
            try Data(text.utf8).write(to: URL(fileURLWithPath: idx[1]))
            let set = try ShardSet(directory: out)
            XCTAssertTrue(set.indexNote?.contains("(\(idx[1]): \(reason));") == true, "\(set.indexNote ?? "nil")")
            assertSameAsWalked(set, reason)
        }

        var said: [String] = []
        // Shards checked on every core, the bytes hashed reported one call at a time, to the last.
        final class Heard: @unchecked Sendable { var calls: [(Int, Int)] = [] }
        let heard = Heard()
        try DatasetChecker.check(directory: out, log: { said.append($0) }, progress: { heard.calls.append(($0, $1)) })
        XCTAssertEqual(said, ["\(out): wrote the index file of 1 shard (\((idx[1] as NSString).lastPathComponent))"])
        let totalBytes = m.shards.reduce(0) { $0 + $1.bytes }
        XCTAssertEqual(heard.calls.last?.0, totalBytes)
        XCTAssertTrue(heard.calls.allSatisfy { $0.1 == totalBytes }, "\(heard.calls)")
        XCTAssertEqual(heard.calls.map(\.0), heard.calls.map(\.0).sorted(), "never backwards")
        XCTAssertNil(try ShardSet(directory: out).indexNote)
        said = []
        try DatasetChecker.check(directory: out) { said.append($0) }
        XCTAssertEqual(said, [], "nothing to write")
        // An index file's temporary left by a killed prepare is the dataset's, not a stranger's.
        try Data().write(to: URL(fileURLWithPath: "\(out)/.shard-000001.idx.tmp-99"))
        XCTAssertTrue(DatasetPreparer.isUnfinished(".shard-000001.idx.tmp-99"))
    }

    /// An index whose middle entries point at other members (first and last right, so it passes
    /// the check at open) stops the run at the first such read, naming the member: never other
    /// images under these labels, never counted as bad samples.
    func testAReadWhoseHeaderNamesAnotherMemberStopsTheRun() throws {
        let (out, m) = try prepared("idx-swap")
        let path = TarIndex.indexPath(forShard: "\(out)/\(m.shards[0].name)")
        var lines = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n").map(String.init)
        XCTAssertGreaterThan(lines.count, 4)
        // Sample 2's members at sample 3's offsets, under sample 2's names.
        let two = lines[2].split(separator: " "), three = lines[3].split(separator: " ")
        var swapped = two
        for m in stride(from: 0, to: min(two.count, three.count), by: 4) { (swapped[m + 1], swapped[m + 2]) = (three[m + 1], three[m + 2]) }
        lines[2] = swapped.joined(separator: " ")
        try Data((lines.joined(separator: "\n") + "\n").utf8).write(to: URL(fileURLWithPath: path))
        let set = try ShardSet(directory: out)
        XCTAssertNil(set.indexNote, "first and last members agree")
        let index = set.indices[0]
        XCTAssertNoThrow(try index.image(0))
        XCTAssertThrowsError(try index.image(1)) { e in
            XCTAssertTrue(e is TarIndex.Unavailable, "\(e)")
            XCTAssertTrue("\(e)".hasPrefix("\(index.path): member \(index.key(1))."), "\(e)")
            XCTAssertTrue("\(e)".contains(": the tar header before it is \(index.key(2).prefix(40))"), "\(e)")
            XCTAssertTrue("\(e)".hasSuffix("the shard and its index disagree (remove \(m.shards[0].name.dropLast(4)).idx and run radar prepare --check-only)"), "\(e)")
        }
    }

    /// A sample's record and image come in one read of a shard kept open: every sample read
    /// twice opens each shard once, and gives what reading each member alone gives.
    func testASamplesMembersComeInOneReadOfAShardKeptOpen() throws {
        let (out, _) = try prepared("one-read")
        let set = try ShardSet(directory: out)
        let opened = OpenShards.shared.opened
        for _ in 0..<2 {
            for index in set.indices {
                for i in 0..<index.count {
                    let (info, image) = try index.sample(i)
                    XCTAssertEqual(info, try index.info(i))
                    XCTAssertEqual(image, try index.image(i))
                    XCTAssertEqual(try index.read(i, exts: ["json"]), [try index.read(i, ext: "json")])
                }
            }
        }
        XCTAssertEqual(OpenShards.shared.opened - opened, set.indices.count)
        XCTAssertEqual(try set.indices[0].read(0, exts: []), [])
        XCTAssertThrowsError(try set.indices[0].read(0, exts: ["json", "txt"])) {
            XCTAssertEqual("\($0)", "\(set.indices[0].path): sample \(set.indices[0].key(0)) has no .txt member")
        }
    }

    /// Members of one sample far apart (a large pax record between them) are read one span each.
    func testMembersFarApartAreReadOneSpanEach() throws {
        let dir = temporaryDirectory("far-apart")
        let script = """
        import io, sys, tarfile
        with tarfile.open(sys.argv[1] + '/far.tar', 'w', format=tarfile.PAX_FORMAT) as t:
            for name, data, pax in (('k.json', b'{"label": 1, "split": "train", "sequence": "s", "source": "x"}', {}), ('k.png', b'p' * 900, {'comment': 'c' * 5000}), ('m.json', b'{}', {})):
                info = tarfile.TarInfo(name); info.size = len(data); info.pax_headers = pax; t.addfile(info, io.BytesIO(data))
        """
        let (rc, text) = try shell([interopPython, "-c", script, dir])
        XCTAssertEqual(rc, 0, "python (RADAR_PYTHON=\(interopPython)): \(text)")
        let index = try TarIndex(path: "\(dir)/far.tar")
        let json = try XCTUnwrap(index.member(0, ext: "json")), png = try XCTUnwrap(index.member(0, ext: "png"))
        XCTAssertGreaterThan(png.offset - 512 - (json.offset + json.size), 4096, "the pax record lies between them")
        let both = try index.read(0, exts: ["png", "json"])
        XCTAssertEqual(both, [Data(repeating: UInt8(ascii: "p"), count: 900), Data(#"{"label": 1, "split": "train", "sequence": "s", "source": "x"}"#.utf8)])
        XCTAssertEqual(try index.sample(0).info.label, 1)
    }

    /// Shards kept open: at most `capacity` (the least recently used closed first), a file a
    /// reader holds still reads after it was closed out of the table, and a shard changed in
    /// place (the same inode) or removed after it was opened stops the run.
    func testOpenShardsKeepsAtMostItsCapacityAndNoticesChanges() throws {
        let (out, _) = try prepared("open-shards")
        let set = try ShardSet(directory: out)
        XCTAssertGreaterThanOrEqual(set.indices.count, 3)
        let files = OpenShards(capacity: 2)
        let first = try files.file(set.indices[0].path, identity: set.indices[0].identity)
        _ = try files.file(set.indices[1].path, identity: set.indices[1].identity)
        _ = try files.file(set.indices[0].path, identity: set.indices[0].identity)
        _ = try files.file(set.indices[2].path, identity: set.indices[2].identity)
        XCTAssertEqual(files.count, 2)
        XCTAssertEqual(files.opened, 3)
        XCTAssertTrue(try files.file(set.indices[0].path, identity: set.indices[0].identity) === first, "the most recently used stays")
        _ = try files.file(set.indices[1].path, identity: set.indices[1].identity)
        XCTAssertEqual(files.opened, 4, "shard 1 had been closed, the least recently used")
        var byte: UInt8 = 0
        XCTAssertEqual(pread(first.fd, &byte, 1, 0), 1)

        let index = set.indices[0]
        XCTAssertNoThrow(try index.sample(0))
        let handle = try XCTUnwrap(FileHandle(forWritingAtPath: index.path))
        try handle.seekToEnd()
        try handle.write(contentsOf: Data(count: 512))
        try handle.close()
        XCTAssertThrowsError(try index.sample(0)) {
            XCTAssertTrue($0 is TarIndex.Unavailable && "\($0)".hasPrefix("\(index.path): the shard was replaced or changed since the run opened the dataset"), "\($0)")
        }
        try FileManager.default.removeItem(atPath: set.indices[1].path)
        XCTAssertThrowsError(try set.indices[1].sample(0)) {
            XCTAssertEqual("\($0)", "\(set.indices[1].path): the shard cannot be opened any more (No such file or directory): the dataset changed during the run")
        }
    }
}
