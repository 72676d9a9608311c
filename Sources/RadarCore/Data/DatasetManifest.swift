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
            let fm = FileManager.default
            var isDir: ObjCBool = false
            guard fm.fileExists(atPath: directory, isDirectory: &isDir) else {
                throw DatasetError(path: directory, reason: "no such dataset directory")
            }
            guard isDir.boolValue else {
                throw DatasetError(path: directory, reason: "a file, not a dataset directory (the --output of radar prepare or radar synth)")
            }
            if fm.fileExists(atPath: (directory as NSString).appendingPathComponent("real")) || fm.fileExists(atPath: (directory as NSString).appendingPathComponent("fake")) {
                throw DatasetError(path: directory, reason: "holds raw real/ and fake/ images, not a prepared dataset: run `radar prepare --source \(directory) --output DIR` first")
            }
            if fm.fileExists(atPath: (directory as NSString).appendingPathComponent(DatasetPreparer.journalName)) {
                throw DatasetError(path: directory, reason: "an unfinished preparation (\(DatasetPreparer.journalName), no manifest yet): run the same `radar prepare` or `radar synth` again to finish it")
            }
            throw DatasetError(path: path, reason: "no manifest (is this a prepared dataset directory? `radar prepare` makes one)")
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
