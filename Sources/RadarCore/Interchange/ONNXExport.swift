import Foundation
import RadarEngine

/// RADAR's eval-mode forward (MODEL.md §1-5: BatchNorm on its running statistics, no dropout) as
/// an ONNX model, opset 17, for ONNX Runtime, TensorRT and the rest of that ecosystem. The
/// initializers are the state dict's tensors under their PyTorch names (a Linear's weight stays
/// (out, in), used through Gemm's transB); the batch dimension is symbolic. The fixed transforms
/// are graph operators too: grayscale and Sobel as convolutions with constant kernels, the bilinear
/// resize as Resize (half_pixel, F.interpolate's align_corners=False), the 2-D FFT with its
/// fftshift as products with constant DFT matrices (no DFT node, which several runtimes lack), the
/// high-pass mask as a constant. Outputs: `logit`, `prob`, the
/// heads (`reasoning_logit`, `external_logit`, `gating_alpha`, `badm_logit`, `aadm_logit`, the
/// evidence, `iteration_logits`, `attention_history`) and, with a temperature, `calibrated_prob`
/// = sigmoid(logit / T).
public enum ONNXExport {
    public static let opset = 17

    public struct Output: Sendable { public let name: String, shape: [String] }

    /// The graph outputs, in order, with their shapes (`batch` symbolic).
    public static func outputs(_ c: RADARConfig, temperature: Double?) -> [Output] {
        let e = "\(c.evidenceDim)", t = "\(c.reasoningIterations)"
        var o = [Output(name: "logit", shape: ["batch", "1"]), Output(name: "prob", shape: ["batch", "1"])]
        if temperature != nil { o.append(Output(name: "calibrated_prob", shape: ["batch", "1"])) }
        o += [Output(name: "reasoning_logit", shape: ["batch", "1"]), Output(name: "external_logit", shape: ["batch", "1"]),
              Output(name: "gating_alpha", shape: ["batch", "1"]), Output(name: "badm_logit", shape: ["batch", "1"]),
              Output(name: "aadm_logit", shape: ["batch", "1"]), Output(name: "badm_evidence", shape: ["batch", e]),
              Output(name: "aadm_evidence", shape: ["batch", e]), Output(name: "iteration_logits", shape: ["batch", t]),
              Output(name: "attention_history", shape: ["batch", t, "2"])]
        return o
    }

    /// Writes the model for `store`'s weights (written aside and renamed into place).
    public static func write(_ store: ParameterStore, config: RADARConfig, temperature: Double?, source: String, to path: String) throws {
        try writeFileAtomically(try encode(StateDict.export(store), config: config, temperature: temperature, source: source), to: path)
    }

    /// The serialised ModelProto. `tensors`: the state dict (every tensor the active path reads).
    public static func encode(_ tensors: [String: SafeTensor], config c: RADARConfig, temperature: Double?, source: String) throws -> Data {
        try c.validate()
        // Every tensor the model has, by name and shape, before anything is built.
        try StateDict.verify(tensors.filter { !$0.key.hasPrefix("optim.") }, layout: try RADARModel(config: c).layout, source: source)
        if let t = temperature, !(t.isFinite && t > 0) {
            throw DatasetError(path: source, reason: "temperature \(t): expected a positive finite number")
        }
        let g = ONNXGraph()
        func param(_ name: String) throws -> String {
            guard let t = tensors[name], t.dtype != .i64 else {
                throw DatasetError(path: source, reason: "no float tensor \(name) for the ONNX graph")
            }
            return g.initializer(name, dims: t.shape, floats: t.floats)
        }
        let b = "batch", d = c.embedDim, n = c.patchCount, tokens = n + 1, heads = c.numHeads, hd = d / heads
        let e = c.evidenceDim, steps = c.reasoningIterations, f = c.fftSize
        g.inputs = [ONNXGraph.Value(name: "image", type: .float, dims: [.symbolic(b), .fixed(3), .fixed(c.imgSize), .fixed(c.imgSize)],
                                    doc: "RGB face crops (B, 3, \(c.imgSize), \(c.imgSize)), scaled to [0, 1] then normalised per channel with mean \(c.mean) and std \(c.std)")]

        // Small helpers over the graph.
        func linear(_ x: String, _ prefix: String, weight: String = "weight", bias: String = "bias") throws -> String {
            g.op1("Gemm", [x, try param("\(prefix).\(weight)"), try param("\(prefix).\(bias)")], [.int("transB", 1)])
        }
        func relu(_ x: String) -> String { g.op1("Relu", [x]) }
        func scalar(_ v: Float) -> String { g.floats([v], dims: []) }
        func shape(_ dims: [Int]) -> String { g.ints(dims.map(Int64.init)) }
        func reshape(_ x: String, _ dims: [Int]) -> String { g.op1("Reshape", [x, shape(dims)]) }
        func transpose(_ x: String, _ perm: [Int]) -> String { g.op1("Transpose", [x], [.ints("perm", perm)]) }
        func layerNorm(_ x: String, _ prefix: String) throws -> String {
            g.op1("LayerNormalization", [x, try param("\(prefix).weight"), try param("\(prefix).bias")],
                  [.int("axis", -1), .float("epsilon", 1e-6)])
        }
        func concat(_ xs: [String], axis: Int) -> String { g.op1("Concat", xs, [.int("axis", axis)]) }
        let batchDim = g.op1("Slice", [g.op1("Shape", ["image"]), g.ints([0]), g.ints([1])])  // [B]
        func zeros(_ width: Int) -> String {
            g.op1("ConstantOfShape", [concat([batchDim, g.ints([Int64(width)])], axis: 0)])  // float 0 by default
        }

        // §1 Encoder: patch embedding, [cls | patches] + pos_embed; the residual stream as (B (N+1), D) rows.
        let patchConv = g.op1("Conv", ["image", try param("encoder.patch_embed.proj.weight"), try param("encoder.patch_embed.proj.bias")],
                              [.ints("kernel_shape", [c.patchSize, c.patchSize]), .ints("strides", [c.patchSize, c.patchSize])])
        let patchTokens = transpose(reshape(patchConv, [0, d, n]), [0, 2, 1])  // (B, N, D)
        let cls0 = g.op1("Expand", [try param("encoder.cls_token"), concat([batchDim, g.ints([1, Int64(d)])], axis: 0)])
        let embedded = g.op1("Add", [concat([cls0, patchTokens], axis: 1), try param("encoder.pos_embed")])
        var h = reshape(embedded, [-1, d])
        let attentionScale = scalar(1 / Float(hd).squareRoot())
        let (i0, i1, i2) = (g.ints([0], dims: []), g.ints([1], dims: []), g.ints([2], dims: []))
        for i in 0..<c.depth {
            let p = "encoder.blocks.\(i)"
            let qkv = transpose(reshape(try linear(try layerNorm(h, "\(p).norm1"), "\(p).attn.qkv"), [-1, tokens, 3, heads, hd]), [2, 0, 3, 1, 4])
            let q = g.op1("Gather", [qkv, i0], [.int("axis", 0)])  // (B, heads, N+1, hd)
            let k = g.op1("Gather", [qkv, i1], [.int("axis", 0)])
            let v = g.op1("Gather", [qkv, i2], [.int("axis", 0)])
            let scores = g.op1("Mul", [g.op1("MatMul", [q, transpose(k, [0, 1, 3, 2])]), attentionScale])
            let weights = g.op1("Softmax", [scores], [.int("axis", -1)])
            let mixed = reshape(transpose(g.op1("MatMul", [weights, v]), [0, 2, 1, 3]), [-1, d])
            h = g.op1("Add", [h, try linear(mixed, "\(p).attn.proj")])
            let hidden = try linear(try layerNorm(h, "\(p).norm2"), "\(p).mlp.fc1")
            // GELU, exact: x/2 (1 + erf(x / sqrt 2)) (opset 17 has no Gelu operator).
            let erf = g.op1("Erf", [g.op1("Mul", [hidden, scalar(Float(0.5.squareRoot()))])])
            let gelu = g.op1("Mul", [g.op1("Mul", [hidden, scalar(0.5)]), g.op1("Add", [erf, scalar(1)])])
            h = g.op1("Add", [h, try linear(gelu, "\(p).mlp.fc2")])
        }
        let encoded = reshape(try layerNorm(h, "encoder.norm"), [-1, tokens, d])
        let cls = g.op1("Gather", [encoded, i0], [.int("axis", 1)])  // (B, D)
        let patches = g.op1("Slice", [encoded, g.ints([1]), g.ints([Int64(tokens)]), g.ints([1])])  // (B, N, D)

        // The grey image both branches read.
        let gray = (c.useBadm || c.useAadm)
            ? g.op1("Conv", ["image", g.floats([0.299, 0.587, 0.114], dims: [1, 3, 1, 1])]) : ""
        func artifactCNN(_ x: String, _ prefix: String) throws -> String {
            var y = x
            for (i, s) in [(7, 4, 3), (5, 2, 2), (3, 2, 1)].enumerated() {
                y = g.op1("Conv", [y, try param("\(prefix).\(3 * i).weight"), try param("\(prefix).\(3 * i).bias")],
                          [.ints("kernel_shape", [s.0, s.0]), .ints("strides", [s.1, s.1]), .ints("pads", [s.2, s.2, s.2, s.2])])
                let bn = "\(prefix).\(3 * i + 1)"
                y = relu(g.op1("BatchNormalization", [y, try param("\(bn).weight"), try param("\(bn).bias"),
                                                       try param("\(bn).running_mean"), try param("\(bn).running_var")],
                               [.float("epsilon", 1e-5)]))
            }
            return g.op1("Flatten", [g.op1("GlobalAveragePool", [y])], [.int("axis", 1)])  // (B, 128)
        }
        func fusion(_ a: String, _ bFeat: String, _ prefix: String) throws -> String {
            try linear(relu(try linear(concat([a, bFeat], axis: 1), "\(prefix).fusion.0")), "\(prefix).fusion.3")
        }
        func perImage(_ op: String, _ x: String) -> String { g.op1(op, [x], [.ints("axes", [1, 2, 3]), .int("keepdims", 1)]) }

        // §2 BADM: Sobel magnitude (cross-correlation, zero padding 1), each image over its max when > 1e-8.
        var eb = zeros(e), lb = zeros(1)
        if c.useBadm {
            let sobel = g.floats([-1, 0, 1, -2, 0, 2, -1, 0, 1, -1, -2, -1, 0, 0, 0, 1, 2, 1], dims: [2, 1, 3, 3])
            let grad = g.op1("Conv", [gray, sobel], [.ints("pads", [1, 1, 1, 1])])  // (B, 2, H, W): gx, gy
            let magnitude = g.op1("Sqrt", [g.op1("ReduceSum", [g.op1("Mul", [grad, grad]), g.ints([1])], [.int("keepdims", 1)])])
            let peak = perImage("ReduceMax", magnitude)
            let edges = g.op1("Where", [g.op1("Greater", [peak, scalar(1e-8)]), g.op1("Div", [magnitude, peak]), magnitude])
            let edgeFeat = try artifactCNN(edges, "badm.edge_encoder")
            let pooled = concat([g.op1("ReduceMean", [patches], [.ints("axes", [1]), .int("keepdims", 0)]),
                                 g.op1("ReduceMax", [patches], [.ints("axes", [1]), .int("keepdims", 0)])], axis: 1)
            let patchFeat = relu(try linear(relu(try linear(pooled, "badm.patch_processor.0")), "badm.patch_processor.3"))
            eb = try fusion(edgeFeat, patchFeat, "badm")
            lb = try linear(eb, "badm.classifier")
        }

        // §3 AADM: resize, |FFT2| shifted over the spatial axes, soft high-pass, log1p, per-image min-max.
        var ea = zeros(e), la = zeros(1)
        if c.useAadm {
            let sizes = concat([g.op1("Slice", [g.op1("Shape", [gray]), g.ints([0]), g.ints([2])]), g.ints([Int64(f), Int64(f)])], axis: 0)
            let resized = g.op1("Resize", [gray, "", "", sizes], [.string("mode", "linear"), .string("coordinate_transformation_mode", "half_pixel")])
            // The 2-D DFT as products with constant matrices (core operators only: no DFT node,
            // which several runtimes lack), fftshift folded into their rows: with W = C - iS the
            // F-point DFT matrix (symmetric) and P the shift, P W X W P^T has real part
            // Cs X Cs^T - Ss X Ss^T and imaginary part -(Cs X Ss^T + Ss X Cs^T), Cs = P C, Ss = P S.
            var cs = [Float](repeating: 0, count: f * f), ss = cs
            for r in 0..<f {
                let j = ((r - f / 2) % f + f) % f  // row r of the shifted spectrum is frequency j
                for k in 0..<f {
                    let angle = 2 * Double.pi * Double((j * k) % f) / Double(f)
                    cs[r * f + k] = Float(cos(angle))
                    ss[r * f + k] = Float(sin(angle))
                }
            }
            func transposed(_ m: [Float]) -> [Float] { (0..<(f * f)).map { m[($0 % f) * f + $0 / f] } }
            let c = g.floats(cs, dims: [f, f]), sn = g.floats(ss, dims: [f, f])
            let ct = g.floats(transposed(cs), dims: [f, f]), st = g.floats(transposed(ss), dims: [f, f])
            let cx = g.op1("MatMul", [c, resized]), sx = g.op1("MatMul", [sn, resized])  // (B, 1, F, F)
            let re = g.op1("Sub", [g.op1("MatMul", [cx, ct]), g.op1("MatMul", [sx, st])])
            let im = g.op1("Add", [g.op1("MatMul", [cx, st]), g.op1("MatMul", [sx, ct])])
            let magnitude = g.op1("Sqrt", [g.op1("Add", [g.op1("Mul", [re, re]), g.op1("Mul", [im, im])])])
            let filter = HighPassFilter(size: f)
            let mask = withExtendedLifetime(filter) { g.floats(Array(filter.mask.storage.prefix(f * f)), dims: [1, 1, f, f]) }
            let logged = g.op1("Log", [g.op1("Add", [g.op1("Mul", [magnitude, mask]), scalar(1)])])
            let lo = perImage("ReduceMin", logged), hi = perImage("ReduceMax", logged)
            let normalised = g.op1("Div", [g.op1("Sub", [logged, lo]), g.op1("Max", [g.op1("Sub", [hi, lo]), scalar(1e-8)])])
            let freqFeat = try artifactCNN(normalised, "aadm.freq_encoder")
            let clsFeat = relu(try linear(cls, "aadm.cls_processor.0"))
            ea = try fusion(freqFeat, clsFeat, "aadm")
            la = try linear(ea, "aadm.classifier")
        }

        // §4 ERM: h0 from the evidence, then `steps` rounds of cross-attention over the evidence
        // tokens and a GRUCell, a logit after each.
        let dual = c.useBadm && c.useAadm
        let evidence = dual ? concat([eb, ea], axis: 1) : (c.useBadm ? eb : ea)  // (B, T E) = the tokens' rows
        let tokenCount = dual ? 2 : 1
        var state = relu(try linear(evidence, "reasoning.init_proj_\(dual ? "dual" : "single").0"))
        let rh = c.reasoningHeads, rhd = e / rh
        let tokenRows = reshape(evidence, [-1, e])  // (B T, E)
        let keys = transpose(reshape(try linear(tokenRows, "reasoning.attention.k_proj"), [-1, tokenCount, rh, rhd]), [0, 2, 3, 1])  // (B, h, hd, T)
        let values = transpose(reshape(try linear(tokenRows, "reasoning.attention.v_proj"), [-1, tokenCount, rh, rhd]), [0, 2, 1, 3])  // (B, h, T, hd)
        let reasoningScale = scalar(1 / Float(rhd).squareRoot())
        let one = scalar(1)
        var logits: [String] = [], history: [String] = []
        for _ in 0..<steps {
            let q = reshape(try linear(state, "reasoning.attention.q_proj"), [-1, rh, 1, rhd])
            let weights = g.op1("Softmax", [g.op1("Mul", [g.op1("MatMul", [q, keys]), reasoningScale])], [.int("axis", -1)])  // (B, h, 1, T)
            let context = try linear(reshape(g.op1("MatMul", [weights, values]), [-1, e]), "reasoning.attention.out_proj")
            let mean = reshape(g.op1("ReduceMean", [weights], [.ints("axes", [1]), .int("keepdims", 0)]), [-1, tokenCount])
            history.append(dual ? mean : concat(c.useBadm ? [mean, zeros(1)] : [zeros(1), mean], axis: 1))
            // GRUCell, PyTorch's gate order r, z, n.
            let gi = g.op("Split", [try linear(context, "reasoning.gru", weight: "weight_ih", bias: "bias_ih")], [.int("axis", 1)], outputs: 3)
            let gh = g.op("Split", [try linear(state, "reasoning.gru", weight: "weight_hh", bias: "bias_hh")], [.int("axis", 1)], outputs: 3)
            let r = g.op1("Sigmoid", [g.op1("Add", [gi[0], gh[0]])])
            let z = g.op1("Sigmoid", [g.op1("Add", [gi[1], gh[1]])])
            let candidate = g.op1("Tanh", [g.op1("Add", [gi[2], g.op1("Mul", [r, gh[2]])])])
            state = g.op1("Add", [g.op1("Mul", [g.op1("Sub", [one, z]), candidate]), g.op1("Mul", [z, state])])
            logits.append(try linear(state, "reasoning.predictor"))
        }
        let reasoning = logits.last!

        // §5 Gated fusion.
        let external = try linear(relu(try linear(evidence, "external_classifier_\(dual ? "dual" : "single").0")),
                                  "external_classifier_\(dual ? "dual" : "single").3")
        let alpha = g.op1("Sigmoid", [try param("_gating_logit")])
        let final = g.op1("Add", [g.op1("Mul", [alpha, reasoning]), g.op1("Mul", [g.op1("Sub", [one, alpha]), external])], named: "logit")
        g.op1("Sigmoid", [final], named: "prob")
        if let t = temperature { g.op1("Sigmoid", [g.op1("Div", [final, scalar(Float(t))])], named: "calibrated_prob") }
        g.op1("Identity", [reasoning], named: "reasoning_logit")
        g.op1("Identity", [external], named: "external_logit")
        g.op1("Expand", [alpha, g.op1("Shape", [final])], named: "gating_alpha")
        g.op1("Identity", [lb], named: "badm_logit")
        g.op1("Identity", [la], named: "aadm_logit")
        g.op1("Identity", [eb], named: "badm_evidence")
        g.op1("Identity", [ea], named: "aadm_evidence")
        g.op1("Identity", [concat(logits, axis: 1)], named: "iteration_logits")
        g.op1("Identity", [reshape(concat(history, axis: 1), [-1, steps, 2])], named: "attention_history")
        g.outputs = outputs(c, temperature: temperature).map { o in
            ONNXGraph.Value(name: o.name, type: .float, dims: o.shape.map { Int($0).map(ONNXGraph.Dim.fixed) ?? .symbolic($0) }, doc: "")
        }

        let configJSON = String(decoding: c.jsonData(), as: UTF8.self)
        var metadata = [("radar_config", configJSON),
                        ("normalization_mean", c.mean.map { "\($0)" }.joined(separator: ",")),
                        ("normalization_std", c.std.map { "\($0)" }.joined(separator: ",")),
                        ("labels", "0 real, 1 fake"),
                        ("source", source)]
        if let t = temperature { metadata.append(("temperature", "\(t)")) }
        let doc = "RADAR deepfake detector (eval mode). Input `image`: (batch, 3, \(c.imgSize), \(c.imgSize)) float32 RGB in [0, 1] normalised with the mean and std in this model's metadata; `prob` is p(fake)."
        return g.model(opset: opset, producer: "radar", version: "1", doc: doc, metadata: metadata, graphName: "radar")
    }
}
