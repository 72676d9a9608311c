import Foundation

/// Errors reading or writing a safetensors file; each names the file and what was wrong.
public struct SafeTensorsError: Error, CustomStringConvertible {
    public let path: String
    public let reason: String
    public var description: String { "\(path): \(reason)" }
}

/// One tensor of a safetensors file. Float tensors are decoded to Float32 (F64/F16/BF16 are
/// converted); I64 tensors keep their integers.
public struct SafeTensor: Sendable {
    public enum DType: String, Sendable { case f32 = "F32", f64 = "F64", i64 = "I64", f16 = "F16", bf16 = "BF16", u8 = "U8" }
    public let dtype: DType
    public let shape: [Int]
    public let floats: [Float]
    public let ints: [Int64]

    public init(shape: [Int], floats: [Float]) {
        dtype = .f32
        self.shape = shape
        self.floats = floats
        ints = []
    }

    public init(shape: [Int], ints: [Int64]) {
        dtype = .i64
        self.shape = shape
        floats = []
        self.ints = ints
    }

    init(dtype: DType, shape: [Int], floats: [Float], ints: [Int64]) {
        self.dtype = dtype
        self.shape = shape
        self.floats = floats
        self.ints = ints
    }
}

/// The safetensors format: an 8-byte little-endian header length, a JSON header mapping names
/// to {dtype, shape, data_offsets} (plus optional `__metadata__` of string pairs), then the
/// little-endian tensor bytes. One reader and one writer for the whole project.
#if !_endian(little)
#error("SafeTensors copies little-endian tensor bytes as they are")
#endif
public enum SafeTensors {
    /// The largest JSON header accepted (the reference allows 100 MB; a checkpoint's is ~100 KB).
    public static let maxHeaderBytes = 16 << 20

    /// JSON numbers as Ints, or nil when one is fractional, out of Int's range or not a number.
    static func integers(_ values: [Any]) -> [Int]? {
        var out: [Int] = []
        out.reserveCapacity(values.count)
        for v in values {
            guard let i = v as? Int else { return nil }
            out.append(i)
        }
        return out
    }

    public static func read(_ path: String) throws -> (tensors: [String: SafeTensor], metadata: [String: String]) {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw SafeTensorsError(path: path, reason: unreadableReason(path))
        }
        return try decode(data, path: path)
    }

    /// What a file that is not safetensors is, where its first bytes say (for the error line).
    static func foreignFormat(_ data: Data) -> String? {
        if LZ4Frame.isLegacyFrame(data) || LZ4Frame.isFrame(data) { return "the file is LZ4-compressed" }
        let convert = "convert it in Python with safetensors.torch.save_file(torch.load(PATH), \"sd.safetensors\")"
        if data.starts(with: [0x50, 0x4B, 0x03, 0x04]) { return "it is a zip archive, as torch.save writes: \(convert)" }
        if data.starts(with: [0x80]), let p = data.dropFirst().first, (2...5).contains(p) { return "it is a Python pickle (torch.save's legacy format): \(convert)" }
        // Files that sit beside checkpoints: a run's config.json or metrics.json, an image.
        if let first = data.first(where: { ![0x20, 0x09, 0x0A, 0x0D].contains($0) }), first == UInt8(ascii: "{") || first == UInt8(ascii: "[") {
            return "it is JSON text (a run's config.json or metrics.json?), not a safetensors file"
        }
        if data.starts(with: [0x89, 0x50, 0x4E, 0x47]) || data.starts(with: [0xFF, 0xD8, 0xFF]) { return "it is an image, not a safetensors file" }
        return nil
    }

    public static func decode(_ data: Data, path: String = "<memory>") throws
        -> (tensors: [String: SafeTensor], metadata: [String: String])
    {
        func fail(_ r: String) -> SafeTensorsError { SafeTensorsError(path: path, reason: r) }
        guard data.count >= 8 else { throw fail("file of \(data.count) bytes is shorter than the 8-byte header length") }
        let headerLength = data.prefix(8).withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
        guard headerLength <= UInt64(data.count - 8) else {
            throw fail("header length \(headerLength) exceeds the file size \(data.count) (\(foreignFormat(data) ?? "not a safetensors file"))")
        }
        guard headerLength <= UInt64(SafeTensors.maxHeaderBytes) else {
            throw fail("header of \(headerLength) bytes exceeds the limit of \(SafeTensors.maxHeaderBytes)")
        }
        let headerEnd = 8 + Int(headerLength)
        let json: Any
        do { json = try JSONSerialization.jsonObject(with: data.subdata(in: 8..<headerEnd)) } catch {
            throw fail("header is not valid JSON")
        }
        guard let header = json as? [String: Any] else { throw fail("header is not a JSON object") }
        let body = data.count - headerEnd
        var tensors: [String: SafeTensor] = [:]
        var metadata: [String: String] = [:]
        // Every tensor's byte range, checked together below: in bounds, no overlaps, no gaps.
        var ranges: [(start: Int, end: Int, name: String)] = []
        for (name, entry) in header {
            if name == "__metadata__" {
                guard let m = entry as? [String: Any] else { throw fail("__metadata__ is not an object") }
                for (k, v) in m {
                    guard let s = v as? String else { throw fail("__metadata__.\(k) is not a string") }
                    metadata[k] = s
                }
                continue
            }
            guard let e = entry as? [String: Any], let dt = e["dtype"] as? String,
                  let shapeAny = e["shape"] as? [Any], let offsAny = e["data_offsets"] as? [Any], offsAny.count == 2
            else { throw fail("tensor \(name): expected {dtype, shape, data_offsets}") }
            guard let dtype = SafeTensor.DType(rawValue: dt) else { throw fail("tensor \(name): unsupported dtype \(dt)") }
            guard let shape = SafeTensors.integers(shapeAny), let offs = SafeTensors.integers(offsAny) else {
                throw fail("tensor \(name): shape and data_offsets must be integers that fit in 64 bits")
            }
            let width: Int = switch dtype { case .f32: 4; case .f64, .i64: 8; case .f16, .bf16: 2; case .u8: 1 }
            // Overflow-checked: a shape like [2^32, 2^32] is refused, not multiplied.
            var count = 1
            for d in shape {
                guard d >= 0 else { throw fail("tensor \(name): negative dimension in shape \(shape)") }
                let (c, o) = count.multipliedReportingOverflow(by: d)
                guard !o, c <= body else { throw fail("tensor \(name): shape \(shape) holds more elements than the file's \(body) data bytes") }
                count = c
            }
            guard offs[0] >= 0, offs[0] <= offs[1], offs[1] <= body, offs[1] - offs[0] == count * width
            else { throw fail("tensor \(name): data_offsets \(offs) do not fit shape \(shape) of \(dt) in \(body) data bytes") }
            ranges.append((offs[0], offs[1], name))
            let start = headerEnd + offs[0]
            let t: SafeTensor = data.withUnsafeBytes { raw in
                let p = raw.baseAddress! + start
                switch dtype {
                case .f32:
                    // Little-endian hosts (x86-64, arm64): one copy.
                    return SafeTensor(shape: shape, floats: [Float](unsafeUninitializedCapacity: count) { b, n in
                        if count > 0 { memcpy(b.baseAddress!, p, count * 4) }
                        n = count
                    })
                case .f64:
                    return SafeTensor(dtype: .f64, shape: shape, floats: (0..<count).map {
                        Float(Double(bitPattern: UInt64(littleEndian: p.loadUnaligned(fromByteOffset: 8 * $0, as: UInt64.self)))) },
                        ints: [])
                case .i64:
                    return SafeTensor(shape: shape, ints: [Int64](unsafeUninitializedCapacity: count) { b, n in
                        if count > 0 { memcpy(b.baseAddress!, p, count * 8) }
                        n = count
                    })
                case .f16:
                    return SafeTensor(dtype: .f16, shape: shape, floats: (0..<count).map {
                        halfToFloat(UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 2 * $0, as: UInt16.self))) }, ints: [])
                case .u8:
                    return SafeTensor(dtype: .u8, shape: shape, floats: (0..<count).map { Float(p.load(fromByteOffset: $0, as: UInt8.self)) }, ints: [])
                case .bf16:
                    return SafeTensor(dtype: .bf16, shape: shape, floats: (0..<count).map {
                        BFloat16.float(UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 2 * $0, as: UInt16.self))) },
                        ints: [])
                }
            }
            tensors[name] = t
        }
        // As the reference reader: the tensors tile the data section exactly.
        ranges.sort { ($0.start, $0.end, $0.name) < ($1.start, $1.end, $1.name) }
        var at = 0
        for r in ranges where r.end > r.start || r.start != at {
            guard r.start == at else {
                throw fail(r.start < at ? "tensor \(r.name): data_offsets [\(r.start), \(r.end)] overlap another tensor's bytes"
                                        : "tensor \(r.name): bytes \(at)..<\(r.start) of the data section belong to no tensor")
            }
            at = r.end
        }
        guard at == body else { throw fail("the data section has \(body) bytes, the tensors cover \(at)") }
        return (tensors, metadata)
    }

    /// Encodes F32 and I64 tensors in name order (deterministic bytes).
    public static func encode(_ tensors: [String: SafeTensor], metadata: [String: String] = [:]) -> Data {
        var entries: [String: Any] = [:]
        var offset = 0
        let names = tensors.keys.sorted()
        for n in names {
            let t = tensors[n]!
            let bytes = t.dtype == .i64 ? t.ints.count * 8 : t.floats.count * 4
            entries[n] = ["dtype": t.dtype == .i64 ? "I64" : "F32", "shape": t.shape, "data_offsets": [offset, offset + bytes]]
            offset += bytes
        }
        if !metadata.isEmpty { entries["__metadata__"] = metadata }
        var header = try! JSONSerialization.data(withJSONObject: entries, options: [.sortedKeys])
        // Pad the header with spaces so the data starts 8-byte aligned, as the reference writer does.
        while (8 + header.count) % 8 != 0 { header.append(0x20) }
        var out = Data(capacity: 8 + header.count + offset)
        withUnsafeBytes(of: UInt64(header.count).littleEndian) { out.append(contentsOf: $0) }
        out.append(header)
        for n in names {
            let t = tensors[n]!
            if t.dtype == .i64 {
                t.ints.withUnsafeBufferPointer { b in out.append(contentsOf: UnsafeRawBufferPointer(b)) }
            } else {
                t.floats.withUnsafeBufferPointer { b in out.append(contentsOf: UnsafeRawBufferPointer(b)) }
            }
        }
        return out
    }

    static func halfToFloat(_ h: UInt16) -> Float {
        let sign = UInt32(h >> 15) << 31
        let exp = Int((h >> 10) & 0x1f), frac = UInt32(h & 0x3ff)
        if exp == 0 { return (sign != 0 ? -1 : 1) * Float(frac) * 0x1p-24 }
        if exp == 31 { return Float(bitPattern: sign | 0x7f80_0000 | (frac << 13)) }
        return Float(bitPattern: sign | UInt32(exp + 112) << 23 | (frac << 13))
    }
}
