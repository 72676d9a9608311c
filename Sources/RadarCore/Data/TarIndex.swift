import Dispatch
import Foundation

/// Random access into a WebDataset tar shard: the byte range of every member, grouped by key.
/// Found from the shard's index file when it has one (`shard-000000.idx` beside
/// `shard-000000.tar`, in NVIDIA DALI's `wds2idx` format v1.2, which `radar prepare` writes and
/// DALI's `fn.readers.webdataset(index_paths=...)` reads), else by walking the ustar headers (no
/// decompression, no data read, but one small read per member: on WildDeepfake's 2.3M members
/// and a network file system, minutes per rank).
public struct TarIndex: Sendable {
    /// One member: its extension (`png`, `json`), and its data's offset and size in the shard.
    public struct Member: Sendable, Equatable {
        public var ext: String
        public var offset: Int
        public var size: Int
    }

    public let path: String
    // Flat storage: the keys' bytes end to end and one array of members (extensions of up to 15
    // bytes are stored inline). A String key and a Dictionary per sample took twice the memory
    // (`radar evaluate` on 60,000 samples peaked 15.4 MB above a 400-sample set, now 7.2 MB),
    // on every rank, for WildDeepfake's 1.16M samples.
    let keyBytes: [UInt8]
    /// Sample i's key is keyBytes[keyEnds[i - 1] ..< keyEnds[i]] (from 0 for the first).
    let keyEnds: [Int32]
    /// Sample i's members are memberList[memberEnds[i - 1] ..< memberEnds[i]].
    let memberEnds: [Int32]
    let memberList: [Member]

    public var count: Int { keyEnds.count }
    public var memberCount: Int { memberList.count }

    public func key(_ i: Int) -> String {
        let start = i == 0 ? 0 : Int(keyEnds[i - 1])
        return keyBytes.withUnsafeBufferPointer { String(decoding: UnsafeBufferPointer(rebasing: $0[start..<Int(keyEnds[i])]), as: UTF8.self) }
    }

    public func members(_ i: Int) -> ArraySlice<Member> {
        memberList[(i == 0 ? 0 : Int(memberEnds[i - 1]))..<Int(memberEnds[i])]
    }

    public func member(_ i: Int, ext: String) -> Member? { members(i).first { $0.ext == ext } }

    /// Builds the flat storage a member at a time, in shard order: a member whose key is the
    /// previous one's joins its sample (the same extension again replaces it, as the tar's
    /// later member wins when extracted).
    struct Builder {
        var keyBytes: [UInt8] = [], keyEnds: [Int32] = [], memberEnds: [Int32] = [], memberList: [Member] = []
        var lastKey = ""

        mutating func add(key: String, ext: String, offset: Int, size: Int) {
            if keyEnds.isEmpty || key != lastKey {
                keyBytes.append(contentsOf: key.utf8)
                keyEnds.append(Int32(keyBytes.count))
                memberEnds.append(Int32(memberList.count))
                lastKey = key
            }
            let first = keyEnds.count == 1 ? 0 : Int(memberEnds[memberEnds.count - 2])
            if let same = memberList[first...].firstIndex(where: { $0.ext == ext }) {
                memberList[same] = Member(ext: ext, offset: offset, size: size)
            } else {
                memberList.append(Member(ext: ext, offset: offset, size: size))
                memberEnds[memberEnds.count - 1] = Int32(memberList.count)
            }
        }
    }

    init(path: String, _ b: Builder, identity: [Int]) {
        self.path = path
        keyBytes = b.keyBytes
        keyEnds = b.keyEnds
        memberEnds = b.memberEnds
        memberList = b.memberList
        self.identity = identity
    }

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
        return identity(st)
    }

    static func identity(_ st: stat) -> [Int] {
        [Int(st.st_dev), Int(st.st_ino), Int(st.st_size), st.st_mtim.tv_sec, st.st_mtim.tv_nsec]
    }

    /// Indexes the shard by walking its headers.
    public init(path: String) throws {
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw DatasetError(path: path, reason: "cannot open shard: \(unreadableReason(path))") }
        defer { close(fd) }
        let identity = TarIndex.identity(fd)
        var builder = Builder()
        var offset = 0
        var longName: String?
        var header = [UInt8](repeating: 0, count: 512)
        while true {
            let fields: (name: String, size: Int?, type: UInt8)? = header.withUnsafeMutableBytes { h in
                guard pread(fd, h.baseAddress, 512, off_t(offset)) == 512 else { return nil }
                if h.allSatisfy({ $0 == 0 }) { return ("", 0, 0xFF) }
                let f = TarIndex.headerFields(UnsafeRawBufferPointer(h))
                return (f.name, f.size, h[156])
            }
            guard let fields else { throw DatasetError(path: path, reason: "truncated tar (header at byte \(offset))") }
            if fields.type == 0xFF { break }  // the end-of-archive block
            guard let size = fields.size else { throw DatasetError(path: path, reason: "bad tar header at byte \(offset)") }
            let type = fields.type
            var name = fields.name
            let dataStart = offset + 512
            offset = dataStart + (size + 511) / 512 * 512
            if type == UInt8(ascii: "x") || type == UInt8(ascii: "L") {
                // pax / GNU long-name record: the path for the next member.
                var record = [UInt8](repeating: 0, count: size)
                let got = record.withUnsafeMutableBytes { pread(fd, $0.baseAddress, size, off_t(dataStart)) }
                let rec = String(decoding: record.prefix(max(0, got)), as: UTF8.self)
                if type == UInt8(ascii: "L") { longName = rec.trimmingCharacters(in: CharacterSet(charactersIn: "\0")) } else if let r = rec.range(of: " path=") {
                    longName = String(rec[r.upperBound...].prefix { $0 != "\n" })
                }
                continue
            }
            if let l = longName { name = l; longName = nil }
            guard type == 0 || type == UInt8(ascii: "0") else { continue }
            guard let dot = name.firstIndex(of: ".") else { continue }
            builder.add(key: String(name[..<dot]), ext: String(name[name.index(after: dot)...]), offset: dataStart, size: size)
        }
        self.init(path: path, builder, identity: identity)
    }

    /// A ustar header's name (prefix/name) and size (nil when the size field is not octal).
    static func headerFields(_ h: UnsafeRawBufferPointer) -> (name: String, size: Int?) {
        func field(_ a: Int, _ n: Int) -> String {
            String(decoding: h[a..<(a + n)].prefix { $0 != 0 }, as: UTF8.self)
        }
        // Octal digits, after spaces or NULs and ended by one (as tar writers pad the field).
        var size: Int? = nil
        var i = 124
        while i < 136 && (h[i] == 32 || h[i] == 0) { i += 1 }
        while i < 136 && h[i] >= 48 && h[i] <= 55 {
            size = (size ?? 0) * 8 + Int(h[i] - 48)
            i += 1
        }
        if i < 136 && h[i] != 32 && h[i] != 0 { size = nil }  // a digit 8 or 9, or GNU's base-256 form
        let prefix = field(345, 155), name = field(0, 100)
        return (prefix.isEmpty ? name : prefix + "/" + name, size)
    }

    /// Whether the 512-byte header before a member's data names that member: nil when it does,
    /// else what it holds. A name a pax record carries (too long for the header, or beyond ASCII,
    /// which a writer may spell otherwise there) is checked by size alone.
    static func headerProblem(_ h: UnsafeRawBufferPointer, name: String, size: Int) -> String? {
        let f = headerFields(h)
        let fits = name.utf8.count <= 100 && name.utf8.allSatisfy { $0 < 0x80 }
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
        var text = "v1.2 \(count)\n"
        for i in 0..<count {
            let key = self.key(i)
            text += members(i).sorted { $0.offset < $1.offset }.map { "\($0.ext) \($0.offset) \($0.size) \(key).\($0.ext)" }.joined(separator: " ") + "\n"
        }
        return Data(text.utf8)
    }

    /// Whether two indexes list the same members at the same places.
    public func sameMembers(as other: TarIndex) -> Bool {
        keyBytes == other.keyBytes && keyEnds == other.keyEnds && memberEnds == other.memberEnds
            && (0..<count).allSatisfy { i in members(i).allSatisfy { m in other.member(i, ext: m.ext) == m } }
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
        // Parsed from the bytes (Data.split and a String per word took most of the time).
        let bytes = [UInt8](data)
        var names: [[(name: String, offset: Int, size: Int)]] = []
        let builder: Builder = try bytes.withUnsafeBufferPointer { b in
            func text(_ r: Range<Int>) -> String { String(decoding: UnsafeBufferPointer(rebasing: b[r]), as: UTF8.self) }
            func number(_ r: Range<Int>) -> Int? {
                guard !r.isEmpty, r.count <= 18 else { return nil }
                var v = 0
                for i in r {
                    guard b[i] >= 48 && b[i] <= 57 else { return nil }
                    v = v * 10 + Int(b[i] - 48)
                }
                return v
            }
            var lines: [Range<Int>] = []
            var start = 0
            for i in 0..<b.count where b[i] == 10 {
                lines.append(start..<i)
                start = i + 1
            }
            if start < b.count { lines.append(start..<b.count) }
            var words: [Range<Int>] = []
            func split(_ line: Range<Int>) {
                words.removeAll(keepingCapacity: true)
                var w = line.lowerBound
                for i in line where b[i] == 32 {
                    if i > w { words.append(w..<i) }
                    w = i + 1
                }
                if w < line.upperBound { words.append(w..<line.upperBound) }
            }
            guard let head = lines.first else { throw IndexFileProblem(description: "empty") }
            split(head)
            guard words.count == 2, let count = number(words[1]) else {
                throw IndexFileProblem(description: "line 1 is not `v1.2 <samples>`")
            }
            let version = text(words[0])
            guard version == "v1.2" else {
                throw IndexFileProblem(description: "format \(version), expected v1.2 (earlier versions hold no file names)")
            }
            guard count == lines.count - 1 else {
                throw IndexFileProblem(description: "says \(count) samples, holds \(lines.count - 1) lines")
            }
            var builder = Builder()
            builder.keyEnds.reserveCapacity(count)
            builder.memberEnds.reserveCapacity(count)
            for (i, line) in lines.dropFirst().enumerated() {
                split(line)
                guard !words.isEmpty, words.count % 4 == 0 else {
                    throw IndexFileProblem(description: "line \(i + 2): expected `<ext> <offset> <size> <file name>` per member")
                }
                var sampleKey = ""
                var listed: [(String, Int, Int)] = []
                for m in stride(from: 0, to: words.count, by: 4) {
                    let nameRange = words[m + 3], extRange = words[m]
                    guard let offset = number(words[m + 1]), let size = number(words[m + 2]),
                          offset >= 512, offset % 512 == 0, offset + size <= shardBytes else {
                        throw IndexFileProblem(description: "line \(i + 2): member \(text(nameRange)) is not inside the \(shardBytes)-byte shard at a 512-byte boundary")
                    }
                    // The key is the name up to its first dot; the rest must be the extension.
                    guard let dot = nameRange.first(where: { b[$0] == 46 }),
                          nameRange.upperBound - dot - 1 == extRange.count,
                          zip(dot + 1..<nameRange.upperBound, extRange).allSatisfy({ b[$0] == b[$1] }) else {
                        throw IndexFileProblem(description: "line \(i + 2): member \(text(nameRange)) does not end in .\(text(extRange))")
                    }
                    let key = text(nameRange.lowerBound..<dot)
                    guard sampleKey.isEmpty || sampleKey == key else {
                        throw IndexFileProblem(description: "line \(i + 2): members of two samples (\(sampleKey), \(key))")
                    }
                    guard m > 0 || builder.keyEnds.isEmpty || key != builder.lastKey else {
                        throw IndexFileProblem(description: "line \(i + 2): sample \(key) again (the line before holds it)")
                    }
                    sampleKey = key
                    builder.add(key: key, ext: text(extRange), offset: offset, size: size)
                    if i == 0 || i == count - 1 { listed.append((text(nameRange), offset, size)) }
                }
                if i == 0 || i == count - 1 { names.append(listed) }
            }
            return builder
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
        return TarIndex(path: shard, builder, identity: identity)
    }

    /// How a shard was indexed: from its index file, by walking it for want of one, or by
    /// walking it because the one there disagreed (why).
    public enum Source: Sendable, Equatable { case indexFile, noIndexFile, walkedAround(String) }

    /// The shard's index: from its index file when that agrees with the shard, else by walking.
    public static func open(path: String) throws -> (index: TarIndex, source: Source) {
        let idx = indexPath(forShard: path)
        guard access(idx, F_OK) == 0 else { return (try TarIndex(path: path), .noIndexFile) }
        do {
            return (try load(shard: path, indexFile: idx), .indexFile)
        } catch let p as IndexFileProblem {
            return (try TarIndex(path: path), .walkedAround("\(idx): \(p.description)"))
        }
    }

    /// Opens many shards at once (a network file system answers many small reads in parallel
    /// far sooner than one after another); the first failure in shard order is thrown.
    public static func open(paths: [String], indexFiles: Bool = true) throws -> [(index: TarIndex, source: Source)] {
        let results = UnsafeMutableBufferPointer<Result<(index: TarIndex, source: Source), Error>?>.allocate(capacity: paths.count)
        results.initialize(repeating: nil)
        defer { results.deinitialize(); results.deallocate() }
        concurrentPerform(iterations: paths.count) { i in
            results[i] = Result { indexFiles ? try TarIndex.open(path: paths[i]) : (try TarIndex(path: paths[i]), .noIndexFile) }
        }
        return try results.map { try $0!.get() }
    }

    // MARK: Reading

    /// The bytes of one member, after checking the shard is the file indexed and the header
    /// before the member names it (a stale index file, or a shard changed under the run, stops
    /// the run rather than feed it other images).
    public func read(_ sample: Int, ext: String) throws -> Data {
        return try read(sample, exts: [ext])[0]
    }

    /// The bytes of several members of one sample (in the order asked), checked as `read(_:ext:)`
    /// checks one. A sample's members lie together in a shard (its header, the record, the next
    /// header, the image), so they come in one read of the shard file kept open by
    /// `OpenShards.shared`: a stat of the path (a shard replaced or changed since it was indexed
    /// stops the run) and one `pread` per sample, where opening the shard for each member had
    /// cost an open, an fstat, two reads and a close each (10 calls a sample, 4 of them
    /// metadata operations, which a network file system's server answers).
    public func read(_ sample: Int, exts: [String]) throws -> [Data] {
        let wanted = try exts.map { ext -> Member in
            guard let m = member(sample, ext: ext) else {
                throw DatasetError(path: path, reason: "sample \(key(sample)) has no .\(ext) member")
            }
            return m
        }
        guard !wanted.isEmpty else { return [] }
        let file = try OpenShards.shared.file(path, identity: identity)
        // One span from the first header to the last member's end when the members are
        // adjacent (as every writer of WebDataset shards puts them), else one span each.
        let lo = wanted.map { $0.offset - 512 }.min()!, hi = wanted.map { $0.offset + $0.size }.max()!
        let gaps = hi - lo - wanted.reduce(0) { $0 + $1.size + 512 }
        let spans: [[Int]] = gaps <= 1024 * wanted.count ? [Array(wanted.indices)] : wanted.indices.map { [$0] }
        var out = [Data](repeating: Data(), count: wanted.count)
        for span in spans {
            let start = span.map { wanted[$0].offset - 512 }.min()!, end = span.map { wanted[$0].offset + wanted[$0].size }.max()!
            let buffer = SpanBuffer(byteCount: end - start)
            let got = TarIndex.readFully(file.fd, into: buffer.base, count: end - start, at: start)
            for i in span {
                let m = wanted[i], name = "\(key(sample)).\(m.ext)"
                let problem = got < m.offset - start ? "its header cannot be read"
                    : TarIndex.headerProblem(UnsafeRawBufferPointer(start: buffer.base + (m.offset - 512 - start), count: 512), name: name, size: m.size)
                if let problem {
                    throw Unavailable(description: "\(path): member \(name) at byte \(m.offset): \(problem): the shard and its index disagree "
                                      + "(remove \((TarIndex.indexPath(forShard: path) as NSString).lastPathComponent) and run radar prepare --check-only)")
                }
                guard got >= m.offset + m.size - start else {
                    throw DatasetError(path: path, reason: "truncated member \(name)")
                }
                out[i] = buffer.data(at: m.offset - start, count: m.size)
            }
        }
        return out
    }

    /// Reads `count` bytes at `offset` (fewer only at the end of the file or on an error).
    static func readFully(_ fd: Int32, into base: UnsafeMutableRawPointer, count: Int, at offset: Int) -> Int {
        var done = 0
        while done < count {
            let n = pread(fd, base + done, count - done, off_t(offset + done))
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            done += n
        }
        return done
    }

    /// The sample's record and image bytes (png or jpg), in one read.
    public func sample(_ i: Int) throws -> (info: SampleInfo, image: Data) {
        let d = try read(i, exts: ["json", member(i, ext: "png") != nil ? "png" : "jpg"])
        return (try decodeInfo(i, d[0]), d[1])
    }

    /// The image member's bytes (png or jpg).
    public func image(_ sample: Int) throws -> Data {
        return try read(sample, ext: member(sample, ext: "png") != nil ? "png" : "jpg")
    }

    /// The sample's record, checked: a decoding problem names the member and the field, and the
    /// label must be 0 (real) or 1 (fake).
    public func info(_ sample: Int) throws -> SampleInfo {
        return try decodeInfo(sample, try read(sample, ext: "json"))
    }

    func decodeInfo(_ sample: Int, _ json: Data) throws -> SampleInfo {
        let member = "\(path): \(key(sample)).json"
        let info: SampleInfo
        do {
            info = try JSONDecoder().decode(SampleInfo.self, from: json)
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

/// One read's bytes, shared by the `Data` values of the members in it (no copy; freed with the
/// last of them).
final class SpanBuffer: @unchecked Sendable {
    let base: UnsafeMutableRawPointer
    init(byteCount: Int) { base = .allocate(byteCount: max(byteCount, 1), alignment: 64) }
    deinit { base.deallocate() }

    func data(at offset: Int, count: Int) -> Data {
        guard count > 0 else { return Data() }
        return Data(bytesNoCopy: base + offset, count: count, deallocator: .custom { _, _ in withExtendedLifetime(self) {} })
    }
}

/// The shard files a process reads, kept open (at most `capacity`, the least recently used
/// closed first; a reader holds its file until its read is done). Every use stats the path
/// first: a shard gone, or not the file indexed (replaced by a second prepare, or changed in
/// place: device, inode, size and modification time), stops the run as the per-read open did.
public final class OpenShards: @unchecked Sendable {
    public static let shared = OpenShards(capacity: OpenShards.defaultCapacity())

    /// A quarter of the soft limit on open files, between 2 and 256 (at least 8, beside a run's
    /// own dozen descriptors, stopped a run of a 40-shard dataset under `ulimit -n 16`).
    static func defaultCapacity() -> Int {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 64 }
        let soft = Int(clamping: limit.rlim_cur)  // RLIM_INFINITY clamps to Int.max
        return min(256, max(2, soft / 4))
    }

    public final class File: @unchecked Sendable {
        public let fd: Int32
        let identity: [Int]
        init(fd: Int32, identity: [Int]) { self.fd = fd; self.identity = identity }
        deinit { close(fd) }
    }

    public let capacity: Int
    private let lock = NSLock()
    private var files: [String: (file: File, used: UInt64)] = [:]
    private var clock: UInt64 = 0
    /// Files opened so far (a test's and a benchmark's count).
    public private(set) var opened = 0

    init(capacity: Int) { self.capacity = capacity }

    public var count: Int { lock.withLock { files.count } }

    /// The open file of the shard at `path`, which must still be the file with `identity`.
    func file(_ path: String, identity: [Int]) throws -> File {
        var st = stat()
        guard stat(path, &st) == 0 else {
            let reason = String(cString: strerror(errno))
            forget(path)
            throw TarIndex.Unavailable(description: "\(path): the shard cannot be opened any more (\(reason)): the dataset changed during the run")
        }
        guard TarIndex.identity(st) == identity else {
            forget(path)
            throw TarIndex.Unavailable(description: "\(path): the shard was replaced or changed since the run opened the dataset (prepared again?): "
                                       + "its images are not the ones indexed; restart the run (--resume auto) on the finished dataset")
        }
        if let f: File = lock.withLock({
            clock += 1
            guard let e = files[path], e.file.identity == identity else { return nil }
            files[path] = (e.file, clock)
            return e.file
        }) { return f }
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            let code = errno
            // Not the dataset's doing (it said "the dataset changed during the run").
            if OpenFileLimit.reached(code) { throw TarIndex.Unavailable(description: "\(path): cannot open the shard: \(OpenFileLimit.reason(code))") }
            throw TarIndex.Unavailable(description: "\(path): the shard cannot be opened any more (\(unreadableReason(path))): the dataset changed during the run")
        }
        let f = File(fd: fd, identity: TarIndex.identity(fd))
        guard f.identity == identity else {
            throw TarIndex.Unavailable(description: "\(path): the shard was replaced or changed since the run opened the dataset (prepared again?): "
                                       + "its images are not the ones indexed; restart the run (--resume auto) on the finished dataset")
        }
        lock.withLock {
            opened += 1
            clock += 1
            if files[path] == nil, files.count >= capacity, let oldest = files.min(by: { $0.value.used < $1.value.used })?.key {
                files[oldest] = nil
            }
            files[path] = (f, clock)
        }
        return f
    }

    func forget(_ path: String) { lock.withLock { files[path] = nil } }
}
