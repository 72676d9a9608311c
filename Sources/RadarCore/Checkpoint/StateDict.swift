import Foundation

/// Moves parameters, buffers and counters between a `ParameterStore` and PyTorch-named tensors
/// (safetensors). Loading checks every name and shape and reports all problems at once.
public enum StateDict {
    public struct Mismatch: Error, CustomStringConvertible {
        public let source: String
        public let missing: [String]
        public let unknown: [String]
        public let shapes: [String]
        public var description: String {
            var parts: [String] = []
            if !missing.isEmpty { parts.append("missing \(missing.count): " + missing.prefix(12).joined(separator: ", ") + (missing.count > 12 ? ", ..." : "")) }
            if !unknown.isEmpty { parts.append("unknown \(unknown.count): " + unknown.prefix(12).joined(separator: ", ") + (unknown.count > 12 ? ", ..." : "")) }
            if !shapes.isEmpty { parts.append("shape mismatches: " + shapes.prefix(12).joined(separator: "; ")) }
            return "\(source): state dict does not fit the model: " + parts.joined(separator: "; ")
        }
    }

    /// Every parameter, buffer and counter by name (counters as I64).
    public static func export(_ store: ParameterStore, prefix: String = "") -> [String: SafeTensor] {
        var out: [String: SafeTensor] = [:]
        let values = store.downloadValues(), buffers = store.downloadBuffers()
        for s in store.layout.parameters { out[prefix + s.name] = SafeTensor(shape: s.shape.dims, floats: Array(values[s.offset..<(s.offset + s.count)])) }
        for s in store.layout.bufferSlots { out[prefix + s.name] = SafeTensor(shape: s.shape.dims, floats: Array(buffers[s.offset..<(s.offset + s.count)])) }
        for (i, n) in store.layout.counterNames.enumerated() { out[prefix + n] = SafeTensor(shape: [], ints: [store.counters[i]]) }
        return out
    }

    /// Loads every tensor of the layout from `tensors`; with `strict`, extra names are errors.
    public static func load(_ tensors: [String: SafeTensor], into store: ParameterStore, source: String, strict: Bool = true) throws {
        let layout = store.layout
        var missing: [String] = [], shapes: [String] = []
        var known = Set<String>()
        func check(_ name: String, _ shape: Shape) -> SafeTensor? {
            known.insert(name)
            guard let t = tensors[name] else { missing.append(name); return nil }
            if t.shape != shape.dims || t.dtype == .i64 {
                shapes.append("\(name) is \(t.dtype.rawValue)\(t.shape), expected F32\(shape.dims)")
                return nil
            }
            return t
        }
        var plan: [(Tensor, [Float])] = []
        for s in layout.parameters { if let t = check(s.name, s.shape) { plan.append((store.value(s), t.floats)) } }
        for s in layout.bufferSlots { if let t = check(s.name, s.shape) { plan.append((store.buffer(s), t.floats)) } }
        var counters: [(Int, Int64)] = []
        for (i, n) in layout.counterNames.enumerated() {
            known.insert(n)
            guard let t = tensors[n] else { missing.append(n); continue }
            if t.dtype == .i64 && t.ints.count == 1 { counters.append((i, t.ints[0])) } else if t.floats.count == 1 {
                counters.append((i, Int64(t.floats[0])))
            } else { shapes.append("\(n) is \(t.dtype.rawValue)\(t.shape), expected a scalar I64") }
        }
        let unknown = strict ? tensors.keys.filter { !known.contains($0) }.sorted() : []
        if !missing.isEmpty || !unknown.isEmpty || !shapes.isEmpty {
            throw Mismatch(source: source, missing: missing, unknown: unknown, shapes: shapes)
        }
        for (t, v) in plan { store.backend.upload(v, into: t) }
        for (i, v) in counters { store.counters[i] = v }
    }
}

/// The model alone as a plain safetensors file, the form PyTorch users load:
/// `model.load_state_dict(safetensors.torch.load_file("model.safetensors"), strict=True)` into
/// the reference RADAR works as is (parameters and buffers by PyTorch name, `num_batches_tracked`
/// as I64, no optimizer state). The config travels in the metadata.
public enum ModelFile {
    public static func encode(_ tensors: [String: SafeTensor], configJSON: String) -> Data {
        SafeTensors.encode(tensors.filter { !$0.key.hasPrefix("optim.") }, metadata: ["format": "pt", "radar_config": configJSON])
    }

    public static func write(_ store: ParameterStore, config: RADARConfig, to path: String) throws {
        try writeFileAtomically(encode(StateDict.export(store), configJSON: String(decoding: config.jsonData(), as: UTF8.self)), to: path)
    }
}
