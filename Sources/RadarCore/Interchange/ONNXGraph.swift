import Foundation

/// The protobuf wire format, as much as an ONNX model needs: varints, 32-bit floats and
/// length-delimited fields (strings, bytes, nested messages). Repeated scalars are written one tag
/// per element (proto2's unpacked form, which ONNX's own proto2 schema declares and every parser
/// reads).
struct ProtobufWriter {
    private(set) var bytes: [UInt8] = []

    mutating func varint(_ v: UInt64) {
        var v = v
        while v >= 0x80 {
            bytes.append(UInt8(v & 0x7f) | 0x80)
            v >>= 7
        }
        bytes.append(UInt8(v))
    }

    mutating func tag(_ field: Int, wire: Int) { varint(UInt64(field << 3 | wire)) }

    /// int32/int64/enum/bool fields (negative values as ten-byte two's complement, as protobuf does).
    mutating func int(_ field: Int, _ v: Int64) {
        tag(field, wire: 0)
        varint(UInt64(bitPattern: v))
    }

    mutating func float(_ field: Int, _ v: Float) {
        tag(field, wire: 5)
        let b = v.bitPattern
        bytes.append(contentsOf: [UInt8(b & 0xff), UInt8(b >> 8 & 0xff), UInt8(b >> 16 & 0xff), UInt8(b >> 24)])
    }

    mutating func bytes<C: Collection>(_ field: Int, _ b: C) where C.Element == UInt8 {
        tag(field, wire: 2)
        varint(UInt64(b.count))
        bytes.append(contentsOf: b)
    }

    mutating func string(_ field: Int, _ s: String) { bytes(field, Array(s.utf8)) }

    mutating func message(_ field: Int, _ build: (inout ProtobufWriter) -> Void) {
        var inner = ProtobufWriter()
        build(&inner)
        bytes(field, inner.bytes)
    }
}

/// An ONNX graph under construction (onnx.proto's ModelProto, GraphProto, NodeProto,
/// AttributeProto, TensorProto, ValueInfoProto; field numbers from onnx/onnx.proto, IR version 8).
/// Every node output gets a unique name; initializers are added once by name.
final class ONNXGraph {
    enum Attribute {
        case int(String, Int), float(String, Float), ints(String, [Int]), string(String, String)
    }

    enum ElementType: Int { case float = 1, int64 = 7 }

    struct Initializer { let name: String, dims: [Int], type: ElementType, raw: [UInt8] }
    struct Node { let op: String, inputs: [String], outputs: [String], name: String, attributes: [Attribute] }
    /// A graph input or output: its element type and dims (a string dim is symbolic, e.g. "batch").
    struct Value { let name: String, type: ElementType, dims: [Dim], doc: String }
    enum Dim { case fixed(Int), symbolic(String) }

    private(set) var nodes: [Node] = []
    private(set) var initializers: [Initializer] = []
    private var initializerNames: Set<String> = []
    private var counts: [String: Int] = [:]
    var inputs: [Value] = []
    var outputs: [Value] = []

    /// One node; returns its output names (`outputs` of them), named after the op unless given.
    @discardableResult
    func op(_ type: String, _ inputs: [String], _ attributes: [Attribute] = [], outputs: Int = 1, named: [String]? = nil) -> [String] {
        let n = counts[type, default: 0]
        counts[type] = n + 1
        let base = "\(type.lowercased())_\(n)"
        let outs = named ?? (outputs == 1 ? [base] : (0..<outputs).map { "\(base)_\($0)" })
        nodes.append(Node(op: type, inputs: inputs, outputs: outs, name: "\(type)_\(n)", attributes: attributes))
        return outs
    }

    /// One node with one output.
    @discardableResult
    func op1(_ type: String, _ inputs: [String], _ attributes: [Attribute] = [], named: String? = nil) -> String {
        op(type, inputs, attributes, named: named.map { [$0] })[0]
    }

    /// A float initializer under `name` (added once; later calls return the name).
    @discardableResult
    func initializer(_ name: String, dims: [Int], floats: [Float]) -> String {
        precondition(dims.reduce(1, *) == floats.count, "\(name): \(floats.count) values for dims \(dims)")
        if initializerNames.insert(name).inserted {
            var raw = [UInt8](repeating: 0, count: floats.count * 4)
            raw.withUnsafeMutableBytes { dst in floats.withUnsafeBytes { dst.copyMemory(from: $0) } }  // little-endian hosts
            initializers.append(Initializer(name: name, dims: dims, type: .float, raw: raw))
        }
        return name
    }

    /// A constant of int64 values (dims [] for a scalar), named uniquely.
    func ints(_ values: [Int64], dims: [Int]? = nil) -> String {
        let n = counts["const", default: 0]
        counts["const"] = n + 1
        let name = "const_i\(n)"
        var raw = [UInt8](repeating: 0, count: values.count * 8)
        raw.withUnsafeMutableBytes { dst in values.withUnsafeBytes { dst.copyMemory(from: $0) } }
        initializerNames.insert(name)
        initializers.append(Initializer(name: name, dims: dims ?? [values.count], type: .int64, raw: raw))
        return name
    }

    /// A float constant (dims [] for a scalar), named uniquely.
    func floats(_ values: [Float], dims: [Int]? = nil) -> String {
        let n = counts["const", default: 0]
        counts["const"] = n + 1
        return initializer("const_f\(n)", dims: dims ?? [values.count], floats: values)
    }

    /// The serialised ModelProto.
    func model(opset: Int, producer: String, version: String, doc: String, metadata: [(String, String)], graphName: String) -> Data {
        var m = ProtobufWriter()
        m.int(1, 8)  // ir_version 8 (ONNX 1.10+; opset 17 needs IR 8)
        m.string(2, producer)
        m.string(3, version)
        m.string(6, doc)  // doc_string
        m.message(7) { g in
            for n in nodes {
                g.message(1) { w in
                    for i in n.inputs { w.string(1, i) }
                    for o in n.outputs { w.string(2, o) }
                    w.string(3, n.name)
                    w.string(4, n.op)
                    for a in n.attributes { w.message(5) { Self.encode(a, &$0) } }
                }
            }
            g.string(2, graphName)
            for t in initializers {
                g.message(5) { w in
                    for d in t.dims { w.int(1, Int64(d)) }
                    w.int(2, Int64(t.type.rawValue))
                    w.string(8, t.name)
                    w.bytes(9, t.raw)  // raw_data, little-endian
                }
            }
            for v in inputs { g.message(11) { Self.encode(v, &$0) } }
            for v in outputs { g.message(12) { Self.encode(v, &$0) } }
        }
        m.message(8) { o in  // opset_import: the default domain
            o.string(1, "")
            o.int(2, Int64(opset))
        }
        for (k, v) in metadata { m.message(14) { e in e.string(1, k); e.string(2, v) } }
        return Data(m.bytes)
    }

    private static func encode(_ a: Attribute, _ w: inout ProtobufWriter) {
        // AttributeProto: name 1, f 2, i 3, s 4, floats 7, ints 8, type 20 (FLOAT 1, INT 2, STRING 3, INTS 7).
        switch a {
        case let .int(name, v): w.string(1, name); w.int(3, Int64(v)); w.int(20, 2)
        case let .float(name, v): w.string(1, name); w.float(2, v); w.int(20, 1)
        case let .string(name, v): w.string(1, name); w.string(4, v); w.int(20, 3)
        case let .ints(name, vs): w.string(1, name); for v in vs { w.int(8, Int64(v)) }; w.int(20, 7)
        }
    }

    private static func encode(_ v: Value, _ w: inout ProtobufWriter) {
        // ValueInfoProto: name 1, type 2 (TypeProto.tensor_type 1: elem_type 1, shape 2 (dim 1:
        // dim_value 1 | dim_param 2)), doc_string 3.
        w.string(1, v.name)
        w.message(2) { t in
            t.message(1) { tt in
                tt.int(1, Int64(v.type.rawValue))
                tt.message(2) { s in
                    for d in v.dims {
                        s.message(1) { dim in
                            switch d {
                            case let .fixed(n): dim.int(1, Int64(n))
                            case let .symbolic(p): dim.string(2, p)
                            }
                        }
                    }
                }
            }
        }
        if !v.doc.isEmpty { w.string(3, v.doc) }
    }
}
