import Foundation
import RadarEngine

/// One cuBLASLt algorithm its heuristic offered for a product: the opaque 64-byte
/// `cublasLtMatmulAlgo_t`, the workspace it asked for, and its place in the heuristic's list.
public struct GemmAlgorithm: Equatable, Sendable {
    public let bytes: [UInt8]
    public let workspaceBytes: Int
    public let index: Int
    public init(bytes: [UInt8], workspaceBytes: Int, index: Int) {
        self.bytes = bytes; self.workspaceBytes = workspaceBytes; self.index = index
    }
    /// The bytes in hex: how a table names the algorithm (stable for one library version and GPU).
    public var hex: String { GemmTable.hex(bytes) }
}

/// cuBLASLt algorithms pinned per product shape, measured on one GPU by
/// `radar bench gemm --write-table FILE` and read through `RADAR_GEMM_TABLE=FILE`: a product whose
/// shape (types, epilogue, transposes, sizes, leading dimensions, strides and the operands'
/// alignment) is in the table runs through cublasLtMatmul with the algorithm named there, every
/// call, so a run with one table is bit-identical to the next. Shapes not in it keep their usual
/// path. An algorithm the heuristic no longer offers (another cuBLAS) falls back to the heuristic's
/// first with a notice on stderr, once per shape.
public struct GemmTable: Equatable, Sendable {
    /// The GPU the table was measured on (its name, as the driver reports it).
    public let gpu: String
    /// Shape key (`key(_:)`) -> the algorithm's 64 bytes.
    public var entries: [String: [UInt8]]

    public init(gpu: String, entries: [String: [UInt8]] = [:]) {
        self.gpu = gpu; self.entries = entries
    }

    /// What identifies a product's shape: its element types and epilogue, transposes, sizes,
    /// leading dimensions, batch strides and the alignment of A, B, C and D (the heuristic's
    /// offers depend on all of them).
    public static func key(_ g: StridedGemm) -> String {
        let types = "\(g.operands)\(g.outputBF16 ? "->bf16" : "")\(g.bias != nil ? "+bias" : "")\(g.d != nil ? "+c" : "")"
        return "\(types) \(g.transA ? "T" : "N")\(g.transB ? "T" : "N") m \(g.m) n \(g.n) k \(g.k) ld \(g.lda),\(g.ldb),\(g.ldc) "
            + "stride \(g.strideA),\(g.strideB),\(g.strideC) batch \(g.batch) align \(GemmTable.alignment(g.a)),\(GemmTable.alignment(g.b)),"
            + "\(GemmTable.alignment(g.c)),\(GemmTable.alignment(g.d ?? g.c))"
    }

    /// The largest power of two (up to 256) that divides the address: what a cuBLASLt plan may
    /// assume of an operand there.
    public static func alignment(_ p: UnsafeRawPointer?) -> Int {
        guard let p else { return 256 }
        let a = UInt(bitPattern: p)
        return a == 0 ? 256 : min(256, Int(a & (~a &+ 1)))
    }

    static func hex(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        out.reserveCapacity(bytes.count * 2)
        for b in bytes { out.append(digits[Int(b >> 4)]); out.append(digits[Int(b & 15)]) }
        return String(decoding: out, as: UTF8.self)
    }

    static func bytes(hex: String) -> [UInt8]? {
        let chars = Array(hex.utf8)
        guard chars.count % 2 == 0 else { return nil }
        func nibble(_ c: UInt8) -> UInt8? {
            switch c {
            case 48...57: return c - 48
            case 97...102: return c - 87
            case 65...70: return c - 55
            default: return nil
            }
        }
        var out = [UInt8]()
        for i in stride(from: 0, to: chars.count, by: 2) {
            guard let hi = nibble(chars[i]), let lo = nibble(chars[i + 1]) else { return nil }
            out.append(hi << 4 | lo)
        }
        return out
    }

    /// A table file that cannot be used: the one-line reason, naming the file and the field.
    public struct Invalid: Error, CustomStringConvertible {
        public let path: String, reason: String
        public init(path: String, reason: String) { self.path = path; self.reason = reason }
        public var description: String { "RADAR_GEMM_TABLE=\(path): \(reason)" }
    }

    /// `{"gpu": NAME, "entries": [{"shape": KEY, "algorithm": HEX}, ...]}`.
    public static func load(path: String) throws -> GemmTable {
        func invalid(_ reason: String) -> Invalid { Invalid(path: path, reason: reason) }
        guard let data = FileManager.default.contents(atPath: path) else { throw invalid("cannot read the file") }
        guard let json = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
            throw invalid("not a JSON object (expected {\"gpu\": ..., \"entries\": [...]} as radar bench gemm --write-table writes)")
        }
        guard let gpu = json["gpu"] as? String, !gpu.isEmpty else { throw invalid("field \"gpu\": expected the GPU's name") }
        guard let list = json["entries"] as? [[String: Any]] else { throw invalid("field \"entries\": expected a list of {shape, algorithm}") }
        var table = GemmTable(gpu: gpu)
        for (i, e) in list.enumerated() {
            guard let shape = e["shape"] as? String, !shape.isEmpty else { throw invalid("entries[\(i)].shape: expected a product's shape") }
            guard let text = e["algorithm"] as? String, let b = bytes(hex: text), b.count == BlasLt.algoBytes else {
                throw invalid("entries[\(i)].algorithm: expected \(BlasLt.algoBytes * 2) hex digits (a cublasLtMatmulAlgo_t)")
            }
            guard table.entries.updateValue(b, forKey: shape) == nil else { throw invalid("entries[\(i)].shape: \(shape) appears twice") }
        }
        return table
    }

    public var json: [String: Any] {
        ["gpu": gpu, "entries": entries.keys.sorted().map { ["shape": $0, "algorithm": GemmTable.hex(entries[$0]!)] }]
    }

    /// The file's bytes (written whole or not at all by `radar bench gemm --write-table`).
    public func data() throws -> Data {
        try JSONSerialization.data(withJSONObject: json, options: [.prettyPrinted, .sortedKeys])
    }

    /// The GPU's name in a driver's description ("cuda:0 (NVIDIA H200, sm_90, ...)" -> "NVIDIA H200").
    public static func gpuName(_ deviceDescription: String) -> String {
        guard let open = deviceDescription.firstIndex(of: "(") else { return deviceDescription }
        let rest = deviceDescription[deviceDescription.index(after: open)...]
        return String(rest.prefix { $0 != "," && $0 != ")" })
    }
}
