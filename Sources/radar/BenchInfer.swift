import ArgumentParser
import Foundation
import RadarCLI
import RadarCore

extension Bench {
    struct Infer: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "infer",
            abstract: "Eval-mode forward of RADAR on a synthetic batch (what predict, evaluate and serve run), p(fake) read back each time.",
            discussion: "bench/onnx_compare.py runs this beside ONNX Runtime on the same model (--export-onnx), batch and threads.")
        @Option(help: "Preset (tiny, mid, full) or a config JSON file.") var config = "mid"
        @Option(help: "Batch size (default: the preset's).") var batch: Int?
        @Option(help: "Threads.") var threads = ProcessInfo.processInfo.activeProcessorCount
        @Option(help: "Timed forwards (the median is reported).") var repeats = 5
        @Option(help: "Backend: cpu, cuda, cuda:N (RADAR_CUDA_DRIVER=emulator: the emulated device), cuda-emulated or cpu-fenced (default: RADAR_DEVICE, else cpu).") var device: String?
        @Option(help: ArgumentHelp(stringLiteral: Devices.precisionHelp)) var precision: String?
        @Option(help: "Also write the benchmarked model (its seeded initial weights) as ONNX to this file.") var exportOnnx: String?
        @Option(help: "Also write the benchmarked batch (`images`, normalised) as safetensors to this file.") var exportBatch: String?

        func validate() throws {
            try requireBatch(batch ?? 1, flag: "batch")
            try requireThreads(threads)
            try requireFlag(repeats >= 1, "repeats", "at least 1", repeats)
        }

        func run() throws {
            try failing {
                if let exportOnnx { try requireWritableFile(exportOnnx, flag: "--export-onnx", expected: "a file name (FILE.onnx)") }
                if let exportBatch { try requireWritableFile(exportBatch, flag: "--export-batch", expected: "a file name (FILE.safetensors)") }
                let cfg = try RADARConfig.resolve(config)
                let b = batch ?? RADARConfig.presetBatch(config) ?? 8
                let model = try RADARModel(config: cfg)
                DeviceMemoryContext.current = "--batch \(b)"
                let backend = try Devices.backend(device ?? Devices.defaultName, threads: threads, precision: precision)
                let ctx = ExecutionContext(backend: backend, layout: model.layout, seed: 1)
                model.initialize(ctx.params, seed: 1)
                if let exportOnnx { try ONNXExport.write(ctx.params, config: cfg, temperature: nil, source: "radar bench infer --config \(config)", to: exportOnnx) }
                let trainer = Trainer(model: model, ctx: ctx)
                let hostImages = syntheticBatch(cfg, count: b).images
                let images = DeviceTensor(backend, hostImages)
                if let exportBatch {
                    let batchTensor = SafeTensor(shape: hostImages.shape.dims, floats: Array(hostImages.storage.prefix(hostImages.count)))
                    try writeFileAtomically(SafeTensors.encode(["images": batchTensor]), to: exportBatch)
                }
                var probs = [Float](repeating: 0, count: b)
                func forward() throws { try probs.withUnsafeMutableBufferPointer { try trainer.predict(images: images.tensor, into: $0.baseAddress!) } }
                try forward()
                ctx.arena.consolidate()
                let seconds = try medianSeconds(repeats: repeats) { try forward() }
                printJSON(["bench": "infer", "config": config, "batch": b, "parameters": model.layout.parameterElements,
                           "ms_per_batch": seconds * 1000, "images_per_s": Double(b) / seconds,
                           "arena_mib": Double(ctx.arena.capacity * 4) / 1_048_576, "peak_rss_mib": peakRSSMiB(),
                           "device": backend.deviceDescription, "precision": Devices.precision(of: backend),
                           "peak_device_mib": (backend as? CUDABackend).map { Double($0.peakDeviceBytes) / 1_048_576 } ?? NSNull(),
                           "mean_probability": Double(probs.reduce(0, +)) / Double(b),
                           "machine": machineRecord(threads: threads)])
            }
        }
    }
}
