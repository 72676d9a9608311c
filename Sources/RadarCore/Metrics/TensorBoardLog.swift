import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// TensorBoard event files for a run (`tensorboard --logdir outputs`): the scalars of
/// metrics.jsonl as `Event` protocol buffers in TFRecord framing, the format
/// `torch.utils.tensorboard.SummaryWriter` writes (`add_scalar`: a `Summary.Value` with
/// `simple_value`). Rank 0 only, like metrics.jsonl.
///
/// A file is `events.out.tfevents.<seconds>.<host>.<pid>.0`, created at the first scalar (a run
/// that never steps leaves none). Readers take a folder's files in name order, so a resumed run's
/// file gets a larger seconds field than every file already there, even within the same second.
/// On resume, records the interrupted run wrote after its checkpoint are removed from the old
/// files (each rewritten atomically, so every reader sees each step once, as in metrics.jsonl),
/// and the new file starts with `SessionLog.START` at the first step to come, TensorBoard's own
/// signal to drop what a crashed run logged beyond it.
public final class TensorBoardLog {
    public let directory: String
    /// The optimizer step the run resumed from (records after it are dropped), nil when fresh.
    let resumedAtStep: Int?
    /// The run's hyperparameters, for TensorBoard's HParams dashboard (in the folder's first file).
    let hparams: [(String, HParam)]
    private var fd: Int32 = -1
    public private(set) var path: String?

    /// A hyperparameter's value as the HParams plugin holds it (a `google.protobuf.Value`).
    public enum HParam: Equatable { case number(Double), string(String), bool(Bool) }

    /// `resumedAtStep`: the checkpoint's optimizer step; records of later steps are dropped now.
    /// `hparams`: written at step 0 when the folder has no event file yet (a run resumed in its
    /// own folder has them in its first file).
    public init(directory: String, resumedAtStep: Int?, hparams: [(String, HParam)] = []) throws {
        self.directory = directory
        self.resumedAtStep = resumedAtStep
        self.hparams = hparams
        if let step = resumedAtStep { try TensorBoardLog.dropRecords(after: step, in: directory) }
    }

    /// A run's config.json object as hyperparameters: numbers, strings and booleans by name, a
    /// nested object's as `name.field` (`model.embed_dim`); nulls and lists are left out.
    public static func hparams(fromJSON data: Data) -> [(String, HParam)] {
        indirect enum Node: Decodable {
            case value(HParam), object([String: Node]), other
            init(from decoder: Decoder) throws {
                let c = try decoder.singleValueContainer()
                if let b = try? c.decode(Bool.self) { self = .value(.bool(b)) }
                else if let d = try? c.decode(Double.self) { self = .value(.number(d)) }
                else if let s = try? c.decode(String.self) { self = .value(.string(s)) }
                else if let o = try? c.decode([String: Node].self) { self = .object(o) }
                else { self = .other }
            }
        }
        func flatten(_ o: [String: Node], _ prefix: String) -> [(String, HParam)] {
            o.keys.sorted().flatMap { k -> [(String, HParam)] in
                switch o[k]! {
                case .value(let v): return [(prefix + k, v)]
                case .object(let inner): return flatten(inner, prefix + k + ".")
                case .other: return []
                }
            }
        }
        guard let top = try? JSONDecoder().decode([String: Node].self, from: data) else { return [] }
        return flatten(top, "")
    }

    deinit { if fd >= 0 { close(fd) } }

    /// The event files in `directory`, in name order (the order readers take them).
    public static func eventFiles(in directory: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [])
            .filter { $0.hasPrefix("events.out.tfevents.") && !$0.hasPrefix(".") }.sorted()
            .map { (directory as NSString).appendingPathComponent($0) }
    }

    /// Appends one event per step holding `values` (tag, value) as float scalars. Throws the
    /// system's reason when the file cannot be created or written.
    public func scalars(step: Int, _ values: [(String, Double)], wallTime: Double = Date().timeIntervalSince1970) throws {
        guard !values.isEmpty else { return }
        if fd < 0 { try create(wallTime: wallTime) }
        var summary = ProtoWriter()
        for (tag, value) in values {
            var v = ProtoWriter()
            v.string(1, tag)
            v.float(2, Float(value))
            summary.message(1, v.bytes)
        }
        var event = ProtoWriter()
        event.double(1, wallTime)
        event.varint(2, UInt64(bitPattern: Int64(step)))
        event.message(5, summary.bytes)
        try append(event.bytes)
    }

    private func create(wallTime: Double) throws {
        do { try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true) } catch {
            throw DatasetError(path: directory, reason: "cannot create the folder: \(systemReason(error))")
        }
        // Seconds after every existing file's, so name order is creation order.
        let existing = TensorBoardLog.eventFiles(in: directory)
        let taken = existing.compactMap { name -> Int? in
            let parts = (name as NSString).lastPathComponent.split(separator: ".")
            return parts.count > 3 ? Int(parts[3]) : nil
        }
        let seconds = max(Int(wallTime), (taken.max() ?? -1) + 1)
        // The folder's first file carries the hyperparameters (also for a run resumed from
        // another folder's checkpoint); later ones are the same run's.
        let first = existing.isEmpty
        var host = [CChar](repeating: 0, count: 256)
        gethostname(&host, host.count - 1)
        let hostName = String(cString: host).replacingOccurrences(of: "/", with: "_")
        let name = String(format: "events.out.tfevents.%010d.%@.%d.0", seconds, hostName, getpid())
        let p = (directory as NSString).appendingPathComponent(name)
        let f = open(p, O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0o644)
        guard f >= 0 else { throw DatasetError(path: p, reason: "cannot create: \(String(cString: strerror(errno)))") }
        (fd, path) = (f, p)
        var version = ProtoWriter()
        version.double(1, wallTime)
        version.string(3, "brain.Event:2")
        try append(version.bytes)
        if first && !hparams.isEmpty { try append(hparamsEvent(wallTime: wallTime)) }
        if let step = resumedAtStep {
            var start = ProtoWriter()
            start.double(1, wallTime)
            start.varint(2, UInt64(step + 1))
            var log = ProtoWriter()
            log.varint(1, 1)  // SessionLog.START
            start.message(7, log.bytes)
            try append(start.bytes)
        }
    }

    /// The HParams plugin's session start, as `torch.utils.tensorboard`'s `add_hparams` writes it:
    /// a summary value tagged `_hparams_/session_start_info` whose metadata carries plugin
    /// `hparams` and, as content, `HParamsPluginData { version 0, session_start_info { hparams } }`.
    func hparamsEvent(wallTime: Double) -> [UInt8] {
        var start = ProtoWriter()
        for (name, value) in hparams {
            var v = ProtoWriter()  // google.protobuf.Value
            switch value {
            case .number(let d): v.double(2, d)
            case .string(let s): v.string(3, s)
            case .bool(let b): v.varint(4, b ? 1 : 0)
            }
            var entry = ProtoWriter()  // map<string, Value> entry
            entry.string(1, name)
            entry.message(2, v.bytes)
            start.message(1, entry.bytes)
        }
        start.double(5, wallTime)  // start_time_secs
        return TensorBoardLog.hparamsPluginEvent(tag: "_hparams_/session_start_info", field: 3, start.bytes, step: 0, wallTime: wallTime)
    }

    /// The HParams plugin's session end (`add_hparams` writes it with status SUCCESS): written at
    /// the end of a run that finished, so the dashboard tells finished runs from those that
    /// stopped (no end: status unknown) and shows when each ended. Only by the log that carries
    /// the hyperparameters (the writing rank's).
    public func sessionEnded(step: Int, wallTime: Double = Date().timeIntervalSince1970) throws {
        guard !hparams.isEmpty else { return }
        if fd < 0 { try create(wallTime: wallTime) }
        var end = ProtoWriter()  // SessionEndInfo
        end.varint(1, 1)  // status: STATUS_SUCCESS
        end.double(2, wallTime)  // end_time_secs
        try append(TensorBoardLog.hparamsPluginEvent(tag: "_hparams_/session_end_info", field: 4, end.bytes, step: step, wallTime: wallTime))
    }

    /// An event whose one summary value is tagged `tag` and carries, as its metadata's plugin
    /// `hparams` content, `HParamsPluginData { version 0, <field>: message }` (no value itself).
    static func hparamsPluginEvent(tag: String, field: Int, _ message: [UInt8], step: Int, wallTime: Double) -> [UInt8] {
        var pluginData = ProtoWriter()
        pluginData.varint(1, 0)
        pluginData.message(field, message)
        var plugin = ProtoWriter()
        plugin.string(1, "hparams")
        plugin.message(2, pluginData.bytes)
        var metadata = ProtoWriter()
        metadata.message(1, plugin.bytes)
        var value = ProtoWriter()
        value.string(1, tag)
        value.message(9, metadata.bytes)
        var summary = ProtoWriter()
        summary.message(1, value.bytes)
        var event = ProtoWriter()
        event.double(1, wallTime)
        event.varint(2, UInt64(bitPattern: Int64(step)))
        event.message(5, summary.bytes)
        return event.bytes
    }

    /// One TFRecord: length, its masked CRC-32C, the bytes, their masked CRC-32C; one write(2),
    /// so a reader following the file never sees half a record's header.
    private func append(_ payload: [UInt8]) throws {
        let record = TensorBoardLog.record(payload)
        if let failure = record.withUnsafeBytes({ writeAll(fd, $0) }) {
            throw DatasetError(path: path ?? directory, reason: "write failed: \(String(cString: strerror(failure)))")
        }
    }

    static func record(_ payload: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(payload.count + 16)
        var length = UInt64(payload.count).littleEndian
        withUnsafeBytes(of: &length) { out.append(contentsOf: $0) }
        var lengthCRC = CRC32C.masked(out).littleEndian
        withUnsafeBytes(of: &lengthCRC) { out.append(contentsOf: $0) }
        out.append(contentsOf: payload)
        var dataCRC = CRC32C.masked(payload).littleEndian
        withUnsafeBytes(of: &dataCRC) { out.append(contentsOf: $0) }
        return out
    }

    /// The records of an event file: (payload, step) for each whole record with valid checksums,
    /// stopping at the first that is cut short or damaged (a run killed mid-write).
    static func records(_ bytes: [UInt8]) -> [(payload: ArraySlice<UInt8>, step: Int64)] {
        var out: [(ArraySlice<UInt8>, Int64)] = []
        var at = 0
        func u32(_ i: Int) -> UInt32 { (0..<4).reduce(UInt32(0)) { $0 | UInt32(bytes[i + $1]) << (8 * UInt32($1)) } }
        while bytes.count - at >= 16 {
            let length = (0..<8).reduce(UInt64(0)) { $0 | UInt64(bytes[at + $1]) << (8 * UInt64($1)) }
            guard CRC32C.masked(bytes[at..<at + 8]) == u32(at + 8), length <= UInt64(bytes.count - at - 16) else { break }
            let start = at + 12, end = start + Int(length)
            let payload = bytes[start..<end]
            guard CRC32C.masked(payload) == u32(end) else { break }
            out.append((payload, ProtoReader.int64Field(2, in: payload) ?? 0))
            at = end + 4
        }
        return out
    }

    /// Rewrites each event file in `directory` without the records of steps after `step` (and
    /// without a damaged tail); files with nothing to drop are left alone.
    static func dropRecords(after step: Int, in directory: String) throws {
        for file in eventFiles(in: directory) {
            guard let data = FileManager.default.contents(atPath: file) else { continue }
            let bytes = [UInt8](data)
            let all = records(bytes)
            let kept = all.filter { $0.step <= Int64(step) }
            let keptBytes = kept.flatMap { record(Array($0.payload)) }
            if keptBytes.count != bytes.count { try writeFileAtomically(Data(keptBytes), to: file) }
        }
    }
}

/// CRC-32C (Castagnoli), as TFRecord frames use it, and its masked form.
public enum CRC32C {
    static let table: [UInt32] = (0..<256).map { i -> UInt32 in
        var c = UInt32(i)
        for _ in 0..<8 { c = c & 1 != 0 ? (c >> 1) ^ 0x82F6_3B78 : c >> 1 }
        return c
    }

    public static func checksum<C: Collection>(_ bytes: C) -> UInt32 where C.Element == UInt8 {
        var c: UInt32 = 0xFFFF_FFFF
        for b in bytes { c = table[Int((c ^ UInt32(b)) & 0xFF)] ^ (c >> 8) }
        return c ^ 0xFFFF_FFFF
    }

    /// TFRecord's mask: rotate right by 15 and add a constant.
    public static func masked<C: Collection>(_ bytes: C) -> UInt32 where C.Element == UInt8 {
        let c = checksum(bytes)
        return ((c >> 15) | (c << 17)) &+ 0xA282_EAD8
    }
}

/// Protocol-buffer encoding of the few field kinds an event needs.
struct ProtoWriter {
    var bytes: [UInt8] = []

    mutating func rawVarint(_ v: UInt64) {
        var v = v
        while v >= 0x80 { bytes.append(UInt8(v & 0x7F) | 0x80); v >>= 7 }
        bytes.append(UInt8(v))
    }
    mutating func key(_ field: Int, _ wireType: UInt64) { rawVarint(UInt64(field) << 3 | wireType) }
    mutating func varint(_ field: Int, _ v: UInt64) { key(field, 0); rawVarint(v) }
    mutating func double(_ field: Int, _ v: Double) {
        key(field, 1)
        var bits = v.bitPattern.littleEndian
        withUnsafeBytes(of: &bits) { bytes.append(contentsOf: $0) }
    }
    mutating func float(_ field: Int, _ v: Float) {
        key(field, 5)
        var bits = v.bitPattern.littleEndian
        withUnsafeBytes(of: &bits) { bytes.append(contentsOf: $0) }
    }
    mutating func message(_ field: Int, _ body: [UInt8]) { key(field, 2); rawVarint(UInt64(body.count)); bytes.append(contentsOf: body) }
    mutating func string(_ field: Int, _ s: String) { message(field, Array(s.utf8)) }
}

/// Reads one top-level varint field of an encoded message (nil when absent or malformed).
enum ProtoReader {
    static func int64Field(_ wanted: Int, in m: ArraySlice<UInt8>) -> Int64? {
        var i = m.startIndex
        func varint() -> UInt64? {
            var v: UInt64 = 0, shift: UInt64 = 0
            while i < m.endIndex, shift < 64 {
                let b = m[i]; i += 1
                v |= UInt64(b & 0x7F) << shift
                if b < 0x80 { return v }
                shift += 7
            }
            return nil
        }
        var found: Int64?
        while i < m.endIndex {
            guard let k = varint() else { return nil }
            let field = Int(k >> 3)
            switch k & 7 {
            case 0:
                guard let v = varint() else { return nil }
                if field == wanted { found = Int64(bitPattern: v) }
            case 1: i += 8
            case 5: i += 4
            case 2:
                guard let n = varint(), n <= UInt64(m.endIndex - i) else { return nil }
                i += Int(n)
            default: return nil
            }
        }
        return i == m.endIndex ? found : nil
    }
}
