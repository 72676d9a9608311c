import Foundation

/// `radar prepare --check-only`: a dataset directory's manifest against its shards.
public enum DatasetChecker {
    /// Throws on the first inconsistency, naming the file; returns the manifest when all is well.
    @discardableResult
    public static func check(directory: String) throws -> DatasetManifest {
        let m = try DatasetManifest.load(directory: directory)
        for s in m.shards {
            let path = (directory as NSString).appendingPathComponent(s.name)
            guard FileManager.default.fileExists(atPath: path) else {
                throw DatasetError(path: path, reason: "listed in the manifest but missing")
            }
            let (size, sha) = try DatasetPreparer.hashFile(path)
            guard size == s.bytes else {
                throw DatasetError(path: path, reason: "size \(size) bytes, manifest says \(s.bytes)")
            }
            guard sha == s.sha256 else {
                throw DatasetError(path: path, reason: "SHA-256 differs from the manifest")
            }
            let index = try TarIndex(path: path)
            guard index.samples.count == s.samples else {
                throw DatasetError(path: path, reason: "\(index.samples.count) samples, manifest says \(s.samples)")
            }
        }
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

/// Random access into a WebDataset tar shard: the byte range of every member, grouped by key,
/// found by walking the ustar headers (no decompression, no data read).
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
            func field(_ a: Int, _ n: Int) -> String {
                String(decoding: header[a..<(a + n)].prefix { $0 != 0 }, as: UTF8.self)
            }
            let sizeText = field(124, 12).trimmingCharacters(in: .whitespaces)
            guard let size = Int(sizeText, radix: 8) else { throw DatasetError(path: path, reason: "bad tar header at byte \(offset)") }
            let type = header[156]
            let prefix = field(345, 155)
            var name = field(0, 100)
            if !prefix.isEmpty { name = prefix + "/" + name }
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

    /// The bytes of one member.
    public func read(_ sample: Int, ext: String) throws -> Data {
        guard let m = samples[sample].members[ext] else {
            throw DatasetError(path: path, reason: "sample \(samples[sample].key) has no .\(ext) member")
        }
        guard let fh = FileHandle(forReadingAtPath: path) else {
            throw Unavailable(description: "\(path): the shard cannot be opened any more (\(unreadableReason(path))): the dataset changed during the run")
        }
        defer { try? fh.close() }
        guard TarIndex.identity(fh.fileDescriptor) == identity else {
            throw Unavailable(description: "\(path): the shard was replaced or changed since the run opened the dataset (prepared again?): "
                              + "its images are not the ones indexed; restart the run (--resume auto) on the finished dataset")
        }
        try fh.seek(toOffset: UInt64(m.offset))
        guard let d = try fh.read(upToCount: m.size), d.count == m.size else {
            throw DatasetError(path: path, reason: "truncated member \(samples[sample].key).\(ext)")
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
