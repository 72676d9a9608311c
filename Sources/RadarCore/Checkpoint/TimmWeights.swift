import Foundation

/// Loads a timm `vit_small_patch16_224` safetensors file (timm's names, no prefix) into RADAR's
/// encoder (`encoder.` + name). When the patch grid differs, `pos_embed` is resampled over the grid
/// (the cls position kept) exactly as timm's `resample_abs_pos_embed` does: bicubic with
/// antialias (PyTorch's separable, weight-normalised kernel with a = -0.5).
public enum TimmWeights {
    public struct LoadError: Error, CustomStringConvertible {
        public let path: String
        public let problems: [String]
        public var description: String { "\(path): not a usable timm ViT file for this config: " + problems.joined(separator: "; ") }
    }

    /// Classification-head tensors of timm's ImageNet checkpoints, which RADAR (num_classes=0) drops.
    public static let ignoredNames: Set<String> = ["head.weight", "head.bias"]

    /// Loads every encoder tensor; returns the names it resampled.
    @discardableResult
    public static func load(_ path: String, into store: ParameterStore, config: RADARConfig) throws -> [String] {
        let tensors = try SafeTensors.read(path).tensors
        let layout = store.layout
        var missing: [String] = [], unknown: [String] = [], shapes: [String] = [], resampled: [String] = []
        var plan: [(Tensor, [Float])] = []
        let encoderSlots = layout.parameters.filter { $0.name.hasPrefix("encoder.") }
        let wanted = Set(encoderSlots.map { String($0.name.dropFirst("encoder.".count)) })
        for name in tensors.keys.sorted() where !wanted.contains(name) && !ignoredNames.contains(name) { unknown.append(name) }
        for slot in encoderSlots {
            let name = String(slot.name.dropFirst("encoder.".count))
            guard let t = tensors[name] else { missing.append(name); continue }
            if t.shape == slot.shape.dims {
                plan.append((store.value(slot), t.floats))
            } else if name == "pos_embed", t.shape.count == 3, t.shape[0] == 1, t.shape[2] == config.embedDim,
                      let oldGrid = squareGrid(t.shape[1] - 1) {
                plan.append((store.value(slot), resamplePositionEmbedding(t.floats, dim: config.embedDim, from: oldGrid, to: config.gridSize)))
                resampled.append(name)
            } else {
                shapes.append("\(name) is \(t.shape), expected \(slot.shape.dims)")
            }
        }
        if !missing.isEmpty || !unknown.isEmpty || !shapes.isEmpty {
            var p = StateDict.Mismatch(source: path, missing: missing, unknown: unknown, shapes: shapes).parts
            if unknown.count > tensors.count / 2 && tensors.keys.contains(where: { $0.hasPrefix("encoder.") }) {
                p.append("this looks like a whole RADAR model: use --init-from for that")
            }
            throw LoadError(path: path, problems: p)
        }
        for (t, v) in plan { store.backend.upload(v, into: t) }
        return resampled
    }

    static func squareGrid(_ n: Int) -> Int? {
        let g = Int(Double(n).squareRoot().rounded())
        return g > 0 && g * g == n ? g : nil
    }

    /// pos_embed (1, 1 + old^2, D) -> (1, 1 + new^2, D).
    public static func resamplePositionEmbedding(_ pos: [Float], dim: Int, from old: Int, to new: Int) -> [Float] {
        var out = [Float](repeating: 0, count: (1 + new * new) * dim)
        for j in 0..<dim { out[j] = pos[j] }  // cls position kept
        let wy = antialiasedBicubicWeights(input: old, output: new), wx = wy
        // Separable: along x for every source row, then along y.
        var tmp = [Double](repeating: 0, count: old * new * dim)
        for r in 0..<old { for ox in 0..<new {
            let (start, w) = wx[ox]
            for c in 0..<dim {
                var s = 0.0
                for (k, wk) in w.enumerated() { s += wk * Double(pos[(1 + r * old + start + k) * dim + c]) }
                tmp[(r * new + ox) * dim + c] = s
            }
        } }
        for oy in 0..<new { for ox in 0..<new {
            let (start, w) = wy[oy]
            for c in 0..<dim {
                var s = 0.0
                for (k, wk) in w.enumerated() { s += wk * tmp[((start + k) * new + ox) * dim + c] }
                out[(1 + oy * new + ox) * dim + c] = Float(s)
            }
        } }
        return out
    }

    /// PyTorch's antialiased bicubic weights (align_corners false): for each output index, the first
    /// input index and the normalised weights of its window.
    static func antialiasedBicubicWeights(input: Int, output: Int) -> [(Int, [Double])] {
        let scale = Double(input) / Double(output)
        let support = scale >= 1 ? 2 * scale : 2
        let invScale = scale >= 1 ? 1 / scale : 1
        func cubic(_ x: Double) -> Double {
            let a = -0.5, t = abs(x)
            if t < 1 { return ((a + 2) * t - (a + 3)) * t * t + 1 }
            if t < 2 { return (((t - 5) * t + 8) * t - 4) * a }
            return 0
        }
        return (0..<output).map { i in
            let center = scale * (Double(i) + 0.5)
            let xmin = max(Int(center - support + 0.5), 0)
            let xsize = min(Int(center + support + 0.5), input) - xmin
            var w = (0..<xsize).map { cubic((Double($0 + xmin) - center + 0.5) * invScale) }
            let total = w.reduce(0, +)
            if total != 0 { w = w.map { $0 / total } }
            return (xmin, w)
        }
    }
}
