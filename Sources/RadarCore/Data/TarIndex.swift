import Dispatch
import Foundation

/// Random access into a WebDataset tar shard: the byte range of every member, grouped by key.
/// Found from the shard's index file when it has one (`shard-000000.idx` beside
/// `shard-000000.tar`, in NVIDIA DALI's `wds2idx` format v1.2, which `radar prepare` writes and
/// DALI's `fn.readers.webdataset(index_paths=...)` reads), else by walking the ustar headers (no
/// decompression, no data read, but one small read per member: on WildDeepfake's 2.3M members
/// and a network file system, minutes per rank).
public struct TarIndex: Sendable {
    public struct Sample: Sendable {
        public var key: String
        /// Extension -> (offset, size) of the member's data.
        public var members: [String: (offset: Int, size: Int)]
    }

    public let path: String
    public let samples: [Sample]
    /// The file indexed (device, inode, size, modification time): each read checks it is still
    /// that file, since offsets into a shard prepared again mid-run read other images silently.
    let identity: [Int]

    /// A shard that is gone or not the file the run indexed: the dataset changed under the run.
    /// Never counted as one bad sample (every sample of the shard would follow).
    public struct Unavailable: Error, CustomStringConvertible {
        public let description: String
    }

    static func identity(_ fd: Int32) -> [Int] {
        var st = stat()
        guard fstat(fd, &st) == 0 else { return [] }
        return [Int(st.st_dev), Int(st.st_ino), Int(st.st_size), st.st_mtim.tv_sec, st.st_mtim.tv_nsec]
    }

    /// Indexes the shard by walking its headers.
    public init(path: String) throws {
        self.path = path
        guard let fh = FileHandle(forReadingAtPath: path) else { throw DatasetError(path: path, reason: "cannot open shard: \(unreadableReason(path))") }
        defer { try? fh.close() }
        identity = TarIndex.identity(fh.fileDescriptor)
        var samples: [Sample] = []
        var offset = 0
        var longName: String?
        while true {
            try fh.seek(toOffset: UInt64(offset))
            guard let header = try fh.read(upToCount: 512), header.count == 512 else {
                throw DatasetError(path: path, reason: "truncated tar (header at byte \(offset))")
            }
            if header.allSatisfy({ $0 == 0 }) { break }
            let fields = header.withUnsafeBytes { TarIndex.headerFields($0) }
            guard let size = fields.size else { throw DatasetError(path: path, reason: "bad tar header at byte \(offset)") }
            let type = header[156]
            var name = fields.name
            let dataStart = offset + 512
            offset = dataStart + (size + 511) / 512 * 512
            if type == UInt8(ascii: "x") || type == UInt8(ascii: "L") {
                // pax / GNU long-name record: the path for the next member.
                try fh.seek(toOffset: UInt64(dataStart))
                let rec = String(decoding: try fh.read(upToCount: size) ?? Data(), as: UTF8.self)
                if type == UInt8(ascii: "L") { longName = rec.trimmingCharacters(in: CharacterSet(charactersIn: "\0")) } else if let r = rec.range(of: " path=") {
                    longName = String(rec[r.upperBound...].prefix { $0 != "\n" })
                }
                continue
            }
            if let l = longName { name = l; longName = nil }
            guard type == 0 || type == UInt8(ascii: "0") else { continue }
            guard let dot = name.firstIndex(of: ".") else { continue }
            let key = String(name[..<dot]), ext = String(name[name.index(after: dot)...])
            if samples.last?.key == key {
                samples[samples.count - 1].members[ext] = (dataStart, size)
            } else {
                samples.append(Sample(key: key, members: [ext: (dataStart, size)]))
            }
        }
        self.samples = samples
    }

    init(path: String, samples: [Sample], identity: [Int]) {
        self.path = path
        self.samples = samples
        self.identity = identity
    }

    /// A ustar header's name (prefix/name) and size (nil when the size field is not octal).
    static func headerFields(_ h: UnsafeRawBufferPointer) -> (name: String, size: Int?) {
        func field(_ a: Int, _ n: Int) -> String {
            String(decoding: h[a..<(a + n)].prefix { $0 != 0 }, as: UTF8.self)
        }
        let size = Int(field(124, 12).trimmingCharacters(in: .whitespaces), radix: 8)
        let prefix = field(345, 155), name = field(0, 100)
        return (prefix.isEmpty ? name : prefix + "/" + name, size)
    }

    /// Whether the 512-byte header before a member's data names that member: nil when it does,
    /// else what it holds. A name too long for the header (a pax record carries it) is checked
    /// by size alone.
    static func headerProblem(_ h: UnsafeRawBufferPointer, name: String, size: Int) -> String? {
        let f = headerFields(h)
        let fits = name.utf8.count <= 100
        if f.size == size && (f.name == name || !fits) { return nil }
        return f.size == nil ? "no tar header before it" : "the tar header before it is \(f.name) of \(f.size!) bytes"
    }

    // MARK: Index files

    /// The index file beside a shard, as DALI's wds2idx names it: `a/shard-000000.tar` →
    /// `a/shard-000000.idx`.
    public static func indexPath(forShard path: String) -> String {
        (path.hasSuffix(".tar") ? String(path.dropLast(4)) : path) + ".idx"
    }

    /// The index file's bytes: `v1.2 <samples>`, then one line per sample of
    /// `<ext> <offset> <size> <file name>` per member (offsets of the data, in the shard's order).
    public func indexFileData() -> Data {
        var text = "v1.2 \(samples.count)\n"
        for s in samples {
            let members = s.members.sorted { $0.value.offset < $1.value.offset }
            text += members.map { "\($0.key) \($0.value.offset) \($0.value.size) \(s.key).\($0.key)" }.joined(separator: " ") + "\n"
        }
        return Data(text.utf8)
    }

    /// Whether two indexes list the same members at the same places.
    public func sameMembers(as other: TarIndex) -> Bool {
        samples.count == other.samples.count && zip(samples, other.samples).allSatisfy { a, b in
            a.key == b.key && a.members.count == b.members.count
                && a.members.allSatisfy { e, m in b.members[e].map { $0.offset == m.offset && $0.size == m.size } ?? false }
        }
    }

    struct IndexFileProblem: Error, CustomStringConvertible { let description: String }

    /// The shard's index from its index file, checked against the shard: every member inside it,
    /// and the headers of the first and last samples' members naming them. Throws
    /// `IndexFileProblem` saying what disagrees.
    static func load(shard: String, indexFile: String) throws -> TarIndex {
        guard let data = FileManager.default.contents(atPath: indexFile) else {
            throw IndexFileProblem(description: "cannot be read (\(unreadableReason(indexFile)))")
        }
        let fd = Glibc.open(shard, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw DatasetError(path: shard, reason: "cannot open shard: \(unreadableReason(shard))") }
        defer { close(fd) }
        let identity = TarIndex.identity(fd)
        let shardBytes = identity.count == 5 ? identity[2] : 0
        var lines = data.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false)
        if lines.last?.isEmpty == true { lines.removeLast() }
        guard let head = lines.first else { throw IndexFileProblem(description: "empty") }
        let headWords = head.split(separator: UInt8(ascii: " "))
        guard headWords.count == 2, let count = Int(String(decoding: headWords[1], as: UTF8.self)) else {
            throw IndexFileProblem(description: "line 1 is not `v1.2 <samples>`")
        }
        let version = String(decoding: headWords[0], as: UTF8.self)
        guard version == "v1.2" else {
            throw IndexFileProblem(description: "format \(version), expected v1.2 (earlier versions hold no file names)")
        }
        guard count == lines.count - 1 else {
            throw IndexFileProblem(description: "says \(count) samples, holds \(lines.count - 1) lines")
        }
        var samples: [Sample] = []
        samples.reserveCapacity(count)
        var names: [[(name: String, offset: Int, size: Int)]] = []
        for (i, line) in lines.dropFirst().enumerated() {
            let words = line.split(separator: UInt8(ascii: " "))
            guard !words.isEmpty, words.count % 4 == 0 else {
                throw IndexFileProblem(description: "line \(i + 2): expected `<ext> <offset> <size> <file name>` per member")
            }
            var sample = Sample(key: "", members: [:])
            var listed: [(String, Int, Int)] = []
            for m in stride(from: 0, to: words.count, by: 4) {
                let ext = String(decoding: words[m], as: UTF8.self), name = String(decoding: words[m + 3], as: UTF8.self)
                guard let offset = Int(String(decoding: words[m + 1], as: UTF8.self)), let size = Int(String(decoding: words[m + 2], as: UTF8.self)),
                      offset >= 512, offset % 512 == 0, size >= 0, offset + size <= shardBytes else {
                    throw IndexFileProblem(description: "line \(i + 2): member \(name) is not inside the \(shardBytes)-byte shard at a 512-byte boundary")
                }
                guard let dot = name.firstIndex(of: "."), String(name[name.index(after: dot)...]) == ext else {
                    throw IndexFileProblem(description: "line \(i + 2): member \(name) does not end in .\(ext)")
                }
                let key = String(name[..<dot])
                guard sample.key.isEmpty || sample.key == key else {
                    throw IndexFileProblem(description: "line \(i + 2): members of two samples (\(sample.key), \(key))")
                }
                sample.key = key
                sample.members[ext] = (offset, size)
                listed.append((name, offset, size))
            }
            samples.append(sample)
            if i == 0 || i == count - 1 { names.append(listed) }
        }
        // The first and last samples' headers: an index file left from another shard (the
        // shards prepared again by another tool, say) names other members there.
        var header = [UInt8](repeating: 0, count: 512)
        for (name, offset, size) in names.joined() {
            let problem: String? = header.withUnsafeMutableBytes { h in
                guard pread(fd, h.baseAddress, 512, off_t(offset - 512)) == 512 else { return "its header cannot be read" }
                return TarIndex.headerProblem(UnsafeRawBufferPointer(h), name: name, size: size)
            }
            if let problem { throw IndexFileProblem(description: "member \(name) at byte \(offset): \(problem): the index is not this shard's") }
        }
        return TarIndex(path: shard, samples: samples, identity: identity)
    }

    /// The shard's index: from its index file when that agrees with the shard, else by walking.
    /// `note` says why an index file there was not used (nil when used or absent).
    public static func open(path: String) throws -> (index: TarIndex, note: String?) {
        let idx = indexPath(forShard: path)
        guard access(idx, F_OK) == 0 else { return (try TarIndex(path: path), nil) }
        do {
            return (try load(shard: path, indexFile: idx), nil)
        } catch let p as IndexFileProblem {
            return (try TarIndex(path: path), "\(idx): \(p.description)")
        }
    }

    /// Opens many shards at once (a network file system answers many small reads in parallel
    /// far sooner than one after another); the first failure in shard order is thrown.
    public static func open(paths: [String], indexFiles: Bool = true) throws -> [(index: TarIndex, note: String?)] {
        let results = UnsafeMutableBufferPointer<Result<(index: TarIndex, note: String?), Error>?>.allocate(capacity: paths.count)
        results.initialize(repeating: nil)
        defer { results.deinitialize(); results.deallocate() }
        DispatchQueue.concurrentPerform(iterations: paths.count) { i in
            results[i] = Result { indexFiles ? try TarIndex.open(path: paths[i]) : (try TarIndex(path: paths[i]), nil) }
        }
        return try results.map { try $0!.get() }
    }

    // MARK: Reading

    /// The bytes of one member, after checking the shard is the file indexed and the header
    /// before the member names it (a stale index file, or a shard changed under the run, stops
    /// the run rather than feed it other images).
    public func read(_ sample: Int, ext: String) throws -> Data {
        guard let m = samples[sample].members[ext] else {
            throw DatasetError(path: path, reason: "sample \(samples[sample].key) has no .\(ext) member")
        }
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw Unavailable(description: "\(path): the shard cannot be opened any more (\(unreadableReason(path))): the dataset changed during the run")
        }
        defer { close(fd) }
        guard TarIndex.identity(fd) == identity else {
            throw Unavailable(description: "\(path): the shard was replaced or changed since the run opened the dataset (prepared again?): "
                              + "its images are not the ones indexed; restart the run (--resume auto) on the finished dataset")
        }
        let name = "\(samples[sample].key).\(ext)"
        var header = [UInt8](repeating: 0, count: 512)
        let problem: String? = header.withUnsafeMutableBytes { h in
            guard pread(fd, h.baseAddress, 512, off_t(m.offset - 512)) == 512 else { return "its header cannot be read" }
            return TarIndex.headerProblem(UnsafeRawBufferPointer(h), name: name, size: m.size)
        }
        if let problem {
            throw Unavailable(description: "\(path): member \(name) at byte \(m.offset): \(problem): the shard and its index disagree "
                              + "(remove \((TarIndex.indexPath(forShard: path) as NSString).lastPathComponent) and run radar prepare --check-only)")
        }
        var d = Data(count: m.size)
        let got = d.withUnsafeMutableBytes { b -> Int in
            var done = 0
            while done < m.size {
                let n = pread(fd, b.baseAddress! + done, m.size - done, off_t(m.offset + done))
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { break }
                done += n
            }
            return done
        }
        guard got == m.size else {
            throw DatasetError(path: path, reason: "truncated member \(name)")
        }
        return d
    }

    /// The image member's bytes (png or jpg).
    public func image(_ sample: Int) throws -> Data {
        let m = samples[sample].members
        return try read(sample, ext: m["png"] != nil ? "png" : "jpg")
    }

    /// The sample's record, checked: a decoding problem names the member and the field, and the
    /// label must be 0 (real) or 1 (fake).
    public func info(_ sample: Int) throws -> SampleInfo {
        let member = "\(path): \(samples[sample].key).json"
        let info: SampleInfo
        do {
            info = try JSONDecoder().decode(SampleInfo.self, from: try read(sample, ext: "json"))
        } catch let e as DecodingError {
            let reason: String
            switch e {
            case .typeMismatch(let type, let c), .valueNotFound(let type, let c):
                reason = "field \(c.codingPath.map(\.stringValue).joined(separator: ".")): expected \(type)"
            case .keyNotFound(let key, _): reason = "missing field \(key.stringValue)"
            default: reason = "not a JSON sample record"
            }
            throw DatasetError(path: member, reason: reason)
        }
        guard info.label == 0 || info.label == 1 else {
            throw DatasetError(path: member, reason: "label \(info.label): expected 0 (real) or 1 (fake)")
        }
        return info
    }
}
