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
public enum SafeTensors {
    public static func read(_ path: String) throws -> (tensors: [String: SafeTensor], metadata: [String: String]) {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw SafeTensorsError(path: path, reason: "cannot read file")
        }
        return try decode(data, path: path)
    }

    public static func decode(_ data: Data, path: String = "<memory>") throws
        -> (tensors: [String: SafeTensor], metadata: [String: String])
    {
        func fail(_ r: String) -> SafeTensorsError { SafeTensorsError(path: path, reason: r) }
        guard data.count >= 8 else { throw fail("file of \(data.count) bytes is shorter than the 8-byte header length") }
        let headerLength = data.prefix(8).withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
        guard headerLength <= UInt64(data.count - 8), headerLength < 100_000_000 else {
            throw fail("header length \(headerLength) exceeds the file size \(data.count)")
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
                  let shape = e["shape"] as? [Int], let offs = e["data_offsets"] as? [Int], offs.count == 2
            else { throw fail("tensor \(name): expected {dtype, shape, data_offsets}") }
            guard let dtype = SafeTensor.DType(rawValue: dt) else { throw fail("tensor \(name): unsupported dtype \(dt)") }
            let count = shape.reduce(1, *)
            let width: Int = switch dtype { case .f32: 4; case .f64, .i64: 8; case .f16, .bf16: 2; case .u8: 1 }
            guard shape.allSatisfy({ $0 >= 0 }), offs[0] >= 0, offs[0] <= offs[1], offs[1] <= body,
                  offs[1] - offs[0] == count * width
            else { throw fail("tensor \(name): data_offsets \(offs) do not fit shape \(shape) of \(dt) in \(body) data bytes") }
            let start = headerEnd + offs[0]
            let t: SafeTensor = data.withUnsafeBytes { raw in
                let p = raw.baseAddress! + start
                switch dtype {
                case .f32:
                    return SafeTensor(shape: shape, floats: (0..<count).map {
                        Float(bitPattern: UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 4 * $0, as: UInt32.self))) })
                case .f64:
                    return SafeTensor(dtype: .f64, shape: shape, floats: (0..<count).map {
                        Float(Double(bitPattern: UInt64(littleEndian: p.loadUnaligned(fromByteOffset: 8 * $0, as: UInt64.self)))) },
                        ints: [])
                case .i64:
                    return SafeTensor(shape: shape, ints: (0..<count).map {
                        Int64(littleEndian: p.loadUnaligned(fromByteOffset: 8 * $0, as: Int64.self)) })
                case .f16:
                    return SafeTensor(dtype: .f16, shape: shape, floats: (0..<count).map {
                        halfToFloat(UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 2 * $0, as: UInt16.self))) }, ints: [])
                case .u8:
                    return SafeTensor(dtype: .u8, shape: shape, floats: (0..<count).map { Float(p.load(fromByteOffset: $0, as: UInt8.self)) }, ints: [])
                case .bf16:
                    return SafeTensor(dtype: .bf16, shape: shape, floats: (0..<count).map {
                        Float(bitPattern: UInt32(UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 2 * $0, as: UInt16.self))) << 16) },
                        ints: [])
                }
            }
            tensors[name] = t
        }
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
