import Foundation

/// The three splits. The official test split stays test; validation is drawn from train by
/// whole sequences.
public enum Split: String, Codable, CaseIterable, Sendable { case train, val, test }

/// What every sample's `<key>.json` holds.
public struct SampleInfo: Codable, Equatable, Sendable {
    public var label: Int
    public var split: Split
    public var sequence: String
    public var frame: Int?
    public var source: String
}

/// `manifest.json` of a dataset directory.
public struct DatasetManifest: Codable, Equatable, Sendable {
    public static let currentVersion = 1

    public struct ShardEntry: Codable, Equatable, Sendable {
        public var name: String
        public var split: Split
        public var samples: Int
        public var bytes: Int
        public var sha256: String
    }

    public struct Counts: Codable, Equatable, Sendable {
        public var real = 0, fake = 0, realSequences = 0, fakeSequences = 0
        public init() {}
        enum CodingKeys: String, CodingKey {
            case real, fake, realSequences = "real_sequences", fakeSequences = "fake_sequences"
        }
        public var total: Int { real + fake }
    }

    public struct Skipped: Codable, Equatable, Sendable {
        public var key: String
        public var reason: String
    }

    public var formatVersion = DatasetManifest.currentVersion
    public var source: [String: String]
    public var counts: [String: Counts]
    public var shards: [ShardEntry]
    public var skipped: [Skipped]
    public var parameters: [String: String]

    enum CodingKeys: String, CodingKey {
        case formatVersion = "format_version", source, counts, shards, skipped, parameters
    }

    public static let fileName = "manifest.json"

    public static func load(directory: String) throws -> DatasetManifest {
        let path = (directory as NSString).appendingPathComponent(fileName)
        guard let data = FileManager.default.contents(atPath: path) else {
            throw DatasetError(path: path, reason: "no manifest (is this a prepared dataset directory?)")
        }
        do {
            let m = try JSONDecoder().decode(DatasetManifest.self, from: data)
            guard m.formatVersion == currentVersion else {
                throw DatasetError(path: path, reason: "format_version \(m.formatVersion), expected \(currentVersion)")
            }
            return m
        } catch let e as DatasetError { throw e } catch {
            throw DatasetError(path: path, reason: "not a valid manifest: \(error)")
        }
    }

    public func jsonData() -> Data {
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys]
        return try! e.encode(self)
    }

    /// A short stable hash of the manifest (for the distributed fingerprint).
    public var contentHash: String { String(SHA256Digest.hex(jsonData()).prefix(16)) }

    public func samples(in split: Split) -> Int { shards.filter { $0.split == split }.reduce(0) { $0 + $1.samples } }
}

public struct DatasetError: Error, CustomStringConvertible {
    public let path: String
    public let reason: String
    public init(path: String, reason: String) { self.path = path; self.reason = reason }
    public var description: String { "\(path): \(reason)" }
}

/// Writes `data` to `path` atomically: a temporary file in the same directory, fsync, rename,
/// then fsync of the directory. A crash leaves either the old file or the new one.
public func writeFileAtomically(_ data: Data, to path: String) throws {
    let (dir, tmp) = temporarySibling(of: path)
    let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    guard fd >= 0 else { throw DatasetError(path: path, reason: "cannot create \(tmp): \(String(cString: strerror(errno)))") }
    var ok = data.withUnsafeBytes { raw -> Bool in
        var off = 0
        while off < raw.count {
            let n = write(fd, raw.baseAddress! + off, raw.count - off)
            if n <= 0 { return false }
            off += n
        }
        return true
    }
    ok = ok && fsync(fd) == 0
    close(fd)
    guard ok, rename(tmp, path) == 0 else {
        unlink(tmp)
        throw DatasetError(path: path, reason: "write failed: \(String(cString: strerror(errno)))")
    }
    fsyncDirectory(dir)
}

/// The directory of `path` ("." when it has none) and a hidden temporary name beside it, for a
/// write that ends in rename(2) (same filesystem, so the rename is atomic).
public func temporarySibling(of path: String) -> (dir: String, tmp: String) {
    let d = (path as NSString).deletingLastPathComponent
    let dir = d.isEmpty ? "." : d
    return (dir, dir + "/." + (path as NSString).lastPathComponent + ".tmp-\(getpid())")
}

public func fsyncDirectory(_ dir: String) {
    let dfd = open(dir, O_RDONLY)
    if dfd >= 0 { fsync(dfd); close(dfd) }
}
