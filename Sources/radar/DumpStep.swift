import ArgumentParser
import Foundation
import RadarCore

/// The parity and interop command: one train-mode forward/backward (and optionally K AdamW
/// steps) on given weights and batch, every output, loss term and gradient written by PyTorch
/// name. Format in README.md ("dump-step format").
struct DumpStep: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dump-step",
        abstract: "Run one forward/backward (and K AdamW steps) and write every tensor to a safetensors file.")

    @Option(help: "Config JSON (or a preset name).") var config: String
    @Option(help: "Parameters and buffers by PyTorch name (safetensors).") var weights: String
    @Option(help: "`images` (B,3,H,W) float32, normalised, and `labels` (B) float32 (safetensors).") var batch: String
    @Option(help: "Output safetensors file.") var output: String
    @Option(help: "AdamW steps at a constant learning rate on the same batch.") var steps = 0
    @Option(help: "Learning rate for --steps.") var lr: Double = 1e-3
    @Option(help: "Weight decay for --steps.") var weightDecay: Double = 0.05
    @Option(help: "Threads.") var threads = 1

    func run() throws {
        try failing {
            let cfg = try RADARConfig.resolve(config)
            let model = try RADARModel(config: cfg)
            let ctx = ExecutionContext(backend: CPUBackend(threads: threads), params: ParameterStore(layout: model.layout))
            try StateDict.load(try SafeTensors.read(weights).tensors, into: ctx.params, source: weights)
            let b = try SafeTensors.read(batch).tensors
            guard let img = b["images"], img.shape.count == 4, img.dtype != .i64 else {
                throw ValidationError("\(batch): expected a float tensor `images` of shape (B, 3, H, W)")
            }
            guard let lab = b["labels"], lab.shape == [img.shape[0]], lab.dtype != .i64 else {
                throw ValidationError("\(batch): expected a float tensor `labels` of shape (\(img.shape[0]))")
            }
            let images = HostTensor(Shape(img.shape), img.floats), labels = HostTensor(Shape(lab.shape), lab.floats)
            let trainer = Trainer(model: model, ctx: ctx, lr: Float(lr), weightDecay: Float(weightDecay))
            trainer.clipNorm = 1.0
            var out: [String: SafeTensor] = [:]
            let (terms, outputs) = try trainer.accumulateGradients(images: images.tensor, labels: labels.tensor)
            for (name, t) in outputs.named { out["out.\(name)"] = SafeTensor(shape: t.shape.dims, floats: t.toArray()) }
            out["out.convergence_delta"] = SafeTensor(shape: [], floats: [outputs.convergenceDelta])
            for (name, v) in terms.named { out["loss.\(name)"] = SafeTensor(shape: [], floats: [Float(v)]) }
            for s in model.layout.parameters { out["grad.\(s.name)"] = SafeTensor(shape: s.shape.dims, floats: ctx.params.grad(s).toArray()) }
            if steps > 0 {
                out["loss.step0"] = SafeTensor(shape: [], floats: [Float(terms.total)])
                trainer.applyAccumulatedGradients()
                for i in 1..<max(steps, 1) {
                    let r = try trainer.step(images: images.tensor, labels: labels.tensor)
                    out["loss.step\(i)"] = SafeTensor(shape: [], floats: [Float(r.terms.total)])
                }
                for (name, t) in StateDict.export(ctx.params) {
                    let isParam = model.layout.parameter(named: name) != nil
                    out[(isParam ? "param." : "buffer.") + name] = t
                }
            }
            let data = SafeTensors.encode(out, metadata: ["format": "radar-dump-step-1", "steps": String(steps)])
            try data.write(to: URL(fileURLWithPath: output), options: .atomic)
            logLine("wrote \(out.count) tensors to \(output) (loss.total \(terms.total))")
        }
    }
}
