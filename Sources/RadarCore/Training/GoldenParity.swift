import Foundation

/// RADAR against the PyTorch reference (tools/golden/radar_reference.py) on one fixture case
/// (`<case>/config.json`, `weights.safetensors` or `weights_from`, `batch.safetensors`,
/// `expected.safetensors` with its metadata, and `eval.safetensors`: the eval-mode forward of the
/// same weights and batch, with the per-image values `radar predict --explain` reports), through
/// the same code as `radar dump-step`. Used by the tests and by `radar check-device` on a GPU.
/// A case whose metadata names `micro_batch` (tiny_recipe) is the training loop over a sequence of
/// micro-batches instead (`ParityDump.Recipe`): per-micro-batch losses, each optimizer step's
/// learning rate, beta1 and gradient norm, and the weights and buffers after the steps.
///
/// Tolerances (per tensor, relative to the reference tensor's largest magnitude; for the
/// convergence delta, a difference of probabilities, the largest of those probabilities): outputs, losses,
/// learning rates and beta1 1e-5; gradients and gradient norms 1e-4; parameters after AdamW steps
/// 1e-5 absolute. The tensors whose
/// exact gradient is zero (conv bias before train-mode BatchNorm, attention key biases) get the
/// absolute bound the fixture derived from a float64 run of the reference: 4 d, d the float32
/// reference's own distance from float64. A result within 4 d of float64 can be 5 d from the float32
/// reference we compare with, so the bound applied is 5/4 of the stored one (measured: the CPU
/// backend is within the stored bound; the CUDA kernels' other summation orders reach 1.11x of it
/// on tiny_dual's fc1 weight after 3 AdamW steps, 2.60e-5 against 2.35e-5). `slack` multiplies
/// every bound (a GPU's fused multiply-adds round differently from the CPU's).
public enum GoldenParity {
    public struct Report: Sendable {
        public let name: String
        /// One line per tensor ("OK" or "NOT OK", max abs and relative difference, the bound).
        public let lines: [String]
        public let failures: [String]
        public var passed: Bool { failures.isEmpty }
    }

    public static func run(_ dir: URL, device: String, precision: String? = "fp32", slack: Float = 1) throws -> Report {
        let name = dir.lastPathComponent
        let root = dir.deletingLastPathComponent()
        let config = try RADARConfig.load(dir.appendingPathComponent("config.json").path)
        var weightsDir = dir
        if let from = try? String(contentsOf: dir.appendingPathComponent("weights_from"), encoding: .utf8) {
            weightsDir = root.appendingPathComponent(from.trimmingCharacters(in: .whitespacesAndNewlines))
        }
        let weightsPath = weightsDir.appendingPathComponent("weights.safetensors").path
        let batchPath = dir.appendingPathComponent("batch.safetensors").path
        var (expected, meta) = try SafeTensors.read(dir.appendingPathComponent("expected.safetensors").path)
        let steps = Int(meta["steps"] ?? "0") ?? 0
        // The eval-mode reference (tools/golden/eval_fixture.py), where the case has one.
        let evalPath = dir.appendingPathComponent("eval.safetensors").path
        let hasEval = FileManager.default.fileExists(atPath: evalPath)
        if hasEval {
            for (k, v) in try SafeTensors.read(evalPath).tensors {
                // A disabled branch's head: the reference reports sigmoid(0), we report none.
                if k == "explain.boundary_probability" && !config.useBadm || k == "explain.frequency_probability" && !config.useAadm { continue }
                expected["eval.\(k)"] = v
            }
        }
        // A training-recipe case (tools/golden/recipe_fixture.py): micro-batches, accumulation, schedule.
        var recipe: ParityDump.Recipe?
        if let micro = meta["micro_batch"].flatMap({ Int($0) }) {
            recipe = ParityDump.Recipe(microBatch: micro, accumulationSteps: Int(meta["accumulation_steps"] ?? "1") ?? 1,
                                       oneCycle: meta["schedule"] == "onecycle")
        }
        let ours = try ParityDump.run(config: config, weights: try SafeTensors.read(weightsPath).tensors, weightsSource: weightsPath,
                                      batch: try SafeTensors.read(batchPath).tensors, batchSource: batchPath, steps: steps,
                                      lr: Double(meta["lr"] ?? "0.001")!, weightDecay: Double(meta["weight_decay"] ?? "0.05")!,
                                      device: device, precision: precision, evalForward: hasEval, recipe: recipe)
        let d = config.embedDim
        var lines: [String] = [], failures: [String] = []
        for key in expected.keys.sorted() {
            let ref = expected[key]!
            guard let mine = ours[key] else { failures.append("\(name): we produce no \(key)"); continue }
            guard mine.shape == ref.shape else { failures.append("\(name): \(key) shape \(mine.shape), expected \(ref.shape)"); continue }
            if ref.dtype == .i64 {
                if mine.ints != ref.ints { failures.append("\(name): \(key) differs") }
                continue
            }
            let a = mine.floats, b = ref.floats
            var scale = max(b.map { abs($0) }.max() ?? 0, 1e-12)
            // The convergence delta is a mean |p_t - p_(t-1)| of the last two iterations'
            // probabilities: its round-off is theirs (up to 1), not its own small size (0.0016 on
            // tiny_dual, where a float32 step of the probabilities is 1.8e-5 of it).
            if key.hasSuffix("convergence_delta"), let logits = expected[String(key.dropLast("convergence_delta".count)) + "iteration_logits"] {
                scale = max(scale, logits.floats.map { 1 / (1 + Foundation.exp(-$0)) }.max() ?? 0)
            }
            var maxAbs: Float = 0
            for i in 0..<b.count { maxAbs = max(maxAbs, abs(a[i] - b[i])) }
            // eval.out.* and eval.explain.*: outputs' tolerance.
            let kind = key.hasPrefix("eval.") ? "eval" : key.split(separator: ".")[0]
            let tensor = String(key.dropFirst(kind.count + 1))
            var allowed: Float
            switch kind {
            case "grad", "grad_norm": allowed = 1e-4 * scale  // a gradient norm is as close as the gradients
            case "param": allowed = 1e-5
            default: allowed = 1e-5 * scale
            }
            allowed *= slack
            var ok = maxAbs <= allowed
            if let boundText = meta["bound.\(kind).\(tensor)"], let bound = Float(boundText).map({ $0 * 1.25 * slack }) {
                if tensor.hasSuffix("attn.qkv.bias") {
                    // Key rows [D, 2D) carry only round-off; query and value rows are ordinary.
                    var keyDiff: Float = 0, otherDiff: Float = 0
                    for i in 0..<b.count {
                        let diff = abs(a[i] - b[i])
                        if i >= d && i < 2 * d { keyDiff = max(keyDiff, diff) } else { otherDiff = max(otherDiff, diff) }
                    }
                    let other = b.enumerated().filter { $0.offset < d || $0.offset >= 2 * d }.map { abs($0.element) }.max() ?? 0
                    let otherAllowed = (kind == "param" ? 1e-5 : 1e-4 * max(other, 1e-12)) * slack
                    ok = keyDiff <= bound && otherDiff <= otherAllowed
                    allowed = bound
                } else {
                    allowed = bound
                    ok = maxAbs <= bound
                }
            }
            lines.append(String(format: "%@ %@ max_abs %.3e max_rel %.3e (allowed %.1e)", ok ? "OK    " : "NOT OK", key, maxAbs, maxAbs / scale, allowed))
            if !ok { failures.append("\(name): \(key): max abs diff \(maxAbs) > \(allowed) (reference scale \(scale))") }
        }
        // A disabled branch has no head to explain (the reference's sigmoid(0) is not a probability).
        for key in ours.keys.sorted() where key.hasPrefix("eval.explain.") && expected[key] == nil && hasEval {
            failures.append("\(name): we report \(key), which the reference has not (a disabled branch?)")
        }
        // Parameters the reference left without a gradient must have exactly zero gradient here.
        if expected.keys.contains(where: { $0.hasPrefix("grad.") }) {
            for key in ours.keys.sorted() where key.hasPrefix("grad.") && expected[key] == nil {
                if !ours[key]!.floats.allSatisfy({ $0 == 0 }) { failures.append("\(name): \(key) should be zero (unused parameter)") }
            }
        }
        return Report(name: name, lines: lines, failures: failures)
    }
}
