import ArgumentParser
import Foundation
import RadarCLI
import RadarCore

struct ExportONNX: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export-onnx",
        abstract: "Write a checkpoint's eval-mode model as ONNX (opset 17) for ONNX Runtime, TensorRT and other runtimes.",
        discussion: """
        One input, `image` (batch, 3, H, W): RGB in [0, 1] normalised with the mean and std written in the model's \
        metadata (normalization_mean, normalization_std; the run's config). Outputs: logit, prob (p(fake)), with \
        --temperature also calibrated_prob = sigmoid(logit / T), and each head: reasoning_logit, external_logit, \
        gating_alpha, badm_logit, aadm_logit, badm_evidence, aadm_evidence, iteration_logits, attention_history. The \
        batch dimension is symbolic. Initializers keep the state dict's PyTorch names. The fixed transforms (grayscale, \
        Sobel, bilinear resize, 2-D FFT with fftshift, high-pass) are graph operators, so the file is the whole model.
        """)
    @Option(help: "Weights: a checkpoint (.safetensors.lz4), model.safetensors, a run's folder (its best checkpoint), hf-hub:ORG/NAME[@REVISION], or a PyTorch state dict with --config.") var checkpoint: String
    @Option(help: "Preset (tiny, mid, full) or config JSON file, for a state dict without RADAR metadata.") var config: String?
    @Option(help: "The ONNX file to write (written aside, then renamed into place).") var output: String
    @Option(help: ArgumentHelp(stringLiteral: SplitScoring.temperatureHelp + " Adds the calibrated_prob output.")) var temperature: String?
    @Flag(help: "Replace an existing file.") var overwrite = false

    func validate() throws {
        if let temperature { do { _ = try TemperatureScaling.resolve(temperature) } catch { throw ValidationError("\(error)") } }
    }

    func run() throws {
        try failing {
            try requireWritableFile(output, flag: "--output", expected: "a file name (FILE.onnx)")
            if !overwrite && FileManager.default.fileExists(atPath: output) {
                throw ValidationError("--output \(output): the file exists (--overwrite replaces it)")
            }
            let temperature = try self.temperature.map { try TemperatureScaling.resolve($0) }
            let (model, ctx, _) = try loadCheckpointModel(checkpoint, config: config, threads: 1, device: "cpu", precision: nil)
            try ONNXExport.write(ctx.params, config: model.config, temperature: temperature, source: checkpoint, to: output)
            let bytes = (try? FileManager.default.attributesOfItem(atPath: output)[.size] as? Int) ?? 0
            logLine("radar export-onnx: \(output): opset \(ONNXExport.opset), \(model.config.imgSize) px input, \(String(format: "%.1f", Double(bytes) / 1_048_576)) MiB" + (temperature.map { ", temperature \($0)" } ?? ""))
            print(output)
        }
    }
}
