import Foundation

/// Moves parameters, buffers and counters between a `ParameterStore` and PyTorch-named tensors
/// (safetensors). Loading checks every name and shape and reports all problems at once.
public enum StateDict {
    /// Every name that does not fit, reported at once. Long lists are folded (block numbers become
    /// `*`, with a count), so a state dict of another model gives a few lines' worth, not 4 KB.
    public struct Mismatch: Error, CustomStringConvertible {
        public let source: String
        public let missing: [String]
        public let unknown: [String]
        public let shapes: [String]
        public var description: String { "\(source): state dict does not fit the model: " + parts.joined(separator: "; ") }

        /// `missing N: ...`, `unexpected N: ...`, `misshaped N: ...`, each folded (also TimmWeights').
        public var parts: [String] {
            var parts: [String] = []
            if !missing.isEmpty { parts.append("missing \(missing.count): " + Mismatch.fold(missing, limit: 6)) }
            if !unknown.isEmpty { parts.append("unexpected \(unknown.count): " + Mismatch.fold(unknown, limit: 6)) }
            if !shapes.isEmpty { parts.append("misshaped \(shapes.count): " + Mismatch.fold(shapes, limit: 4)) }
            return parts
        }

        /// Names with their numeric components as `*` (`encoder.blocks.*.attn.qkv.weight (x12)`),
        /// in first-seen order, at most `limit` of them.
        static func fold(_ names: [String], limit: Int = 10) -> String {
            var order: [String] = [], count: [String: Int] = [:]
            for n in names {
                let f = n.split(separator: ".", omittingEmptySubsequences: false)
                    .map { $0.allSatisfy(\.isNumber) && !$0.isEmpty ? "*" : String($0) }.joined(separator: ".")
                if count[f] == nil { order.append(f) }
                count[f, default: 0] += 1
            }
            let shown = order.prefix(limit).map { count[$0]! > 1 ? "\($0) (x\(count[$0]!))" : $0 }
            return shown.joined(separator: ", ") + (order.count > limit ? ", and \(order.count - limit) more" : "")
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

    /// The prefixes wrappers add to every key: DistributedDataParallel (`module.`) and
    /// torch.compile (`_orig_mod.`). Removed when every key carries one.
    static let wrapperPrefixes = ["module.", "_orig_mod."]

    /// `tensors` without a wrapper prefix that every key shares (and without `optim.*` entries).
    public static func unwrapped(_ tensors: [String: SafeTensor]) -> [String: SafeTensor] {
        var t = tensors.filter { !$0.key.hasPrefix("optim.") }
        var changed = true
        while changed {
            changed = false
            for p in wrapperPrefixes where !t.isEmpty && t.keys.allSatisfy({ $0.hasPrefix(p) }) {
                t = Dictionary(uniqueKeysWithValues: t.map { (String($0.key.dropFirst(p.count)), $0.value) })
                changed = true
            }
        }
        return t
    }

    /// `48x3x8x8` (`scalar` for no dimensions).
    static func dims(_ d: [Int]) -> String { d.isEmpty ? "scalar" : d.map(String.init).joined(separator: "x") }

    /// Checks names, shapes and dtypes against `layout` without touching any device memory;
    /// with `strict`, extra names are errors too. Float dtypes (F32, F16, BF16, F64) all load.
    public static func verify(_ tensors: [String: SafeTensor], layout: ParameterLayout, source: String, strict: Bool = true) throws {
        var missing: [String] = [], shapes: [String] = []
        var known = Set<String>()
        for s in layout.parameters + layout.bufferSlots {
            known.insert(s.name)
            guard let t = tensors[s.name] else { missing.append(s.name); continue }
            if t.shape != s.shape.dims || t.dtype == .i64 || t.dtype == .u8 {
                shapes.append("\(s.name) \(t.dtype.rawValue) \(dims(t.shape)) (model F32 \(dims(s.shape.dims)))")
            }
        }
        for n in layout.counterNames {
            known.insert(n)
            guard let t = tensors[n] else { missing.append(n); continue }
            if !((t.dtype == .i64 && t.ints.count == 1) || (t.dtype != .i64 && t.floats.count == 1)) {
                shapes.append("\(n) \(t.dtype.rawValue) \(dims(t.shape)) (model a scalar I64)")
            }
        }
        let unknown = strict ? tensors.keys.filter { !known.contains($0) }.sorted() : []
        if !missing.isEmpty || !unknown.isEmpty || !shapes.isEmpty {
            throw Mismatch(source: source, missing: missing, unknown: unknown, shapes: shapes)
        }
    }

    /// Loads every tensor of the layout from `tensors` (checked first: nothing is written unless
    /// everything fits).
    public static func load(_ tensors: [String: SafeTensor], into store: ParameterStore, source: String, strict: Bool = true) throws {
        let layout = store.layout
        try verify(tensors, layout: layout, source: source, strict: strict)
        for s in layout.parameters { store.backend.upload(tensors[s.name]!.floats, into: store.value(s)) }
        for s in layout.bufferSlots { store.backend.upload(tensors[s.name]!.floats, into: store.buffer(s)) }
        for (i, n) in layout.counterNames.enumerated() {
            let t = tensors[n]!
            store.counters[i] = t.dtype == .i64 ? t.ints[0] : Int64(t.floats[0])
        }
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
