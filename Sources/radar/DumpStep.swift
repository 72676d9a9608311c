import ArgumentParser
import Foundation
import RadarCLI
import RadarCore

/// The parity and interop command: one train-mode forward/backward (and optionally K AdamW
/// steps) on given weights and batch, every output, loss term and gradient written by PyTorch
/// name. Format in docs/checkpoints.md ("dump-step format").
struct DumpStep: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dump-step",
        abstract: "Run one forward/backward (and K AdamW steps) and write every tensor to a safetensors file.")

    @Option(help: "Config JSON (or a preset name).") var config: String
    @Option(help: "Parameters and buffers by PyTorch name (safetensors).") var weights: String
    @Option(help: "`images` (B,3,H,W) float32, normalised, and `labels` (B) float32 (safetensors).") var batch: String
    @Option(help: "Output safetensors file.") var output: String
    @Option(help: "AdamW steps at a constant learning rate on the same batch.") var steps = 0
    @Option(help: "Learning rate of --steps and of --micro-batch-size (with --schedule onecycle, the maximum).") var lr: Double = 1e-3
    @Option(help: "AdamW weight decay of --steps and of --micro-batch-size.") var weightDecay: Double = 0.05
    @Option(help: "The training loop over the batch's images taken this many at a time, in order (docs/checkpoints.md, dump-step format): as many optimizer steps as the batch has micro-batches / --accumulation-steps.") var microBatchSize: Int?
    @Option(help: "With --micro-batch-size: micro-batches per optimizer step.") var accumulationSteps = 1
    @Option(help: "With --micro-batch-size: constant (--lr throughout) or onecycle (OneCycleLR to max lr --lr over the steps, MODEL.md section 8).") var schedule = "constant"
    @Option(help: "Threads.") var threads = 1
    @Flag(help: "First an eval-mode forward of the same weights and batch: `eval.out.<name>` and `eval.explain.<name>` (what `radar predict --explain` reports).") var evalForward = false
    @Option(help: "Backend: cpu, cuda, cuda:N (RADAR_CUDA_DRIVER=emulator: the emulated device), cuda-emulated or cpu-fenced (default: RADAR_DEVICE, else cpu).") var device: String?
    @Option(help: ArgumentHelp(stringLiteral: Devices.precisionHelp)) var precision: String?

    func validate() throws {
        try requireThreads(threads)
        try requireFlag(steps >= 0, "steps", "0 or more", steps)
        try requireFlag(["constant", "onecycle"].contains(schedule), "schedule", "constant or onecycle", schedule)
        try requireAccumulation(accumulationSteps)
        if let microBatchSize {
            try requireBatch(microBatchSize, flag: "micro-batch-size")
            guard steps == 0, !evalForward else {
                throw ValidationError("--micro-batch-size runs the training loop over the batch: it takes neither --steps nor --eval-forward")
            }
        } else if accumulationSteps != 1 || schedule != "constant" {
            throw ValidationError("--accumulation-steps and --schedule need --micro-batch-size")
        }
    }

    func run() throws {
        try failing {
            let cfg = try RADARConfig.resolve(config)
            let out = try ParityDump.run(config: cfg, weights: try SafeTensors.read(weights).tensors, weightsSource: weights,
                                         batch: try SafeTensors.read(batch).tensors, batchSource: batch, steps: steps, lr: lr,
                                         weightDecay: weightDecay, threads: threads,
                                         device: device ?? Devices.defaultName, precision: precision, evalForward: evalForward,
                                         recipe: microBatchSize.map {
                                             ParityDump.Recipe(microBatch: $0, accumulationSteps: accumulationSteps, oneCycle: schedule == "onecycle")
                                         })
            let taken = microBatchSize == nil ? steps : out.keys.filter { $0.hasPrefix("lr.step") }.count
            let data = SafeTensors.encode(out, metadata: ["format": "radar-dump-step-1", "steps": String(taken)])
            try writeFileAtomically(data, to: output)
            let loss = out["loss.total"] ?? out["loss.micro0"]
            logLine("wrote \(out.count) tensors to \(output) (\(microBatchSize == nil ? "loss.total" : "loss.micro0") \(loss!.floats[0]))")
        }
    }
}
