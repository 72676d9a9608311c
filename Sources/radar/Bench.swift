import ArgumentParser
import CAllocationCounter
import COpenBLAS
import Foundation
import RadarCLI
import RadarCore

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure speed and memory; prints one JSON object per result.",
        subcommands: [Kernels.self, Step.self, Gemm.self, Infer.self, DataPipeline.self, AllReduce.self, Crypto.self, ServeLoad.self])
}

/// The synthetic faces (seed 2) `radar bench step` and `radar bench infer` time, normalised
/// for `cfg`, with their labels.
func syntheticBatch(_ cfg: RADARConfig, count b: Int) -> (images: HostTensor, labels: [Float]) {
    let synth = SyntheticFaces(size: cfg.imgSize, seed: 2)
    let images = HostTensor.checked(Shape(b, 3, cfg.imgSize, cfg.imgSize))
    for i in 0..<b { synth.normalized(i, mean: cfg.mean, std: cfg.std, into: images.pointer + i * 3 * cfg.imgSize * cfg.imgSize) }
    return (images, (0..<b).map { Float(synth.label($0)) })
}

/// What `radar bench step` and `radar bench gemm` train: `config`'s model with dropout 0.1, and
/// the batch size (`batch`, else the preset's, else 8), named in any out-of-memory error.
func benchModel(_ config: String, batch: Int?) throws -> (cfg: RADARConfig, batch: Int, model: RADARModel) {
    var cfg = try RADARConfig.resolve(config)
    cfg.dropout = 0.1
    let b = batch ?? RADARConfig.presetBatch(config) ?? 8
    DeviceMemoryContext.current = "--batch \(b)"
    return (cfg, b, try RADARModel(config: cfg))
}

extension Bench {
    struct Kernels: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "GEMM at ViT-S shapes and the BADM convolutions, ours against cblas_sgemm alone.")
        @Option(help: "Threads.") var threads = ProcessInfo.processInfo.activeProcessorCount
        @Option(help: "Timed repeats (the median is reported).") var repeats = 5
        @Option(help: "Our products: fp32, or bf16 (oneDNN where the CPU has AMX-BF16 or AVX512-BF16, else fp32 with a notice). cblas_sgemm is fp32 either way.")
        var precision = "fp32"

        func validate() throws {
            try requireThreads(threads)
            try requireFlag(repeats >= 1, "repeats", "at least 1", repeats)
            try requireFlag(["fp32", "bf16"].contains(precision), "precision", "fp32 or bf16", precision)
        }

        func run() throws {
            var products = CPUProducts.fp32
            switch precision {
            case "fp32": break
            case "bf16":
                let (chosen, notice) = try CPUProducts.bf16()
                if let notice { CPUProducts.notice(notice) }
                products = chosen
            default: throw ValidationError("--precision: expected fp32 or bf16, got '\(precision)'")
            }
            let be = CPUBackend(threads: threads, products: products)
            // GEMM: tokens of 8 ViT-S/16 images (197 each) against the qkv (1152) and fc1 (1536)
            // weights, and fc2's input gradient (k 1536).
            for (n, k) in [(1152, 384), (1536, 384), (384, 1536)] {
                let m = 197 * 8
                let a = HostTensor(Shape(m, k), fill: 0.5), b = HostTensor(Shape(n, k), fill: 0.25), c = HostTensor(Shape(m, n))
                let ours = medianSeconds(repeats: repeats) {
                    be.gemm(transA: false, transB: true, m: m, n: n, k: k, alpha: 1, a: a.pointer, lda: k,
                            b: b.pointer, ldb: k, beta: 0, c: c.pointer, ldc: n)
                }
                openblas_set_num_threads(Int32(threads))
                let blas = medianSeconds(repeats: repeats) {
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(m), Int32(n), Int32(k), 1, a.pointer, Int32(k),
                                b.pointer, Int32(k), 0, c.pointer, Int32(n))
                }
                openblas_set_num_threads(1)
                let flops = 2.0 * Double(m * n * k)
                printJSON(["bench": "gemm", "m": m, "n": n, "k": k, "products": products.description, "seconds": ours, "gflops": flops / ours / 1e9,
                           "cblas_seconds": blas, "cblas_gflops": flops / blas / 1e9, "ratio_to_cblas": blas / ours,
                           "machine": machineRecord(threads: threads)])
            }
            // BADM convolutions at batch 8: 1x224x224 -> 32x56x56 -> 64x28x28 -> 128x14x14.
            let specs = [(1, 32, 224, 7, 4, 3), (32, 64, 56, 5, 2, 2), (64, 128, 28, 3, 2, 1)]
            for (i, s) in specs.enumerated() {
                let layout = ParameterLayout()
                let conv = Conv2d("conv\(i)", s.0, s.1, kernel: s.3, stride: s.4, padding: s.5, layout: layout)
                let ctx = ExecutionContext(backend: be, layout: layout)
                let batch = 8
                let x = DeviceTensor(be, Shape(batch, s.0, s.2, s.2), [Float](repeating: 0.1, count: batch * s.0 * s.2 * s.2))
                var out = Shape(1)
                let ours = try medianSeconds(repeats: repeats) {
                    ctx.beginPass()
                    let (y, saved) = try conv.forward(x.tensor, ctx)
                    out = y.shape
                    conv.backward(y, saved, ctx, inputGradient: i > 0)
                }
                // The same three products per image (forward, weight gradient, input gradient)
                // through cblas_sgemm alone, without im2col/col2im.
                let ckk = s.0 * s.3 * s.3, hw = out[2] * out[3]
                let w = HostTensor(Shape(s.1, ckk), fill: 0.1), col = HostTensor(Shape(ckk, hw), fill: 0.1)
                let y = HostTensor(Shape(s.1, hw)), dw = HostTensor(Shape(s.1, ckk))
                openblas_set_num_threads(Int32(threads))
                let blas = medianSeconds(repeats: repeats) {
                    for _ in 0..<batch {
                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(s.1), Int32(hw), Int32(ckk), 1, w.pointer,
                                    Int32(ckk), col.pointer, Int32(hw), 0, y.pointer, Int32(hw))
                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(s.1), Int32(ckk), Int32(hw), 1, y.pointer,
                                    Int32(hw), col.pointer, Int32(hw), 1, dw.pointer, Int32(ckk))
                        if i > 0 {
                            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Int32(ckk), Int32(hw), Int32(s.1), 1, w.pointer,
                                        Int32(ckk), y.pointer, Int32(hw), 0, col.pointer, Int32(hw))
                        }
                    }
                }
                openblas_set_num_threads(1)
                printJSON(["bench": "conv2d_forward_backward", "layer": "badm.edge_encoder.\(3 * i)", "batch": batch,
                           "input": [s.0, s.2, s.2], "output": [out[1], out[2], out[3]], "kernel": s.3, "stride": s.4, "padding": s.5,
                           "seconds": ours, "cblas_gemms_seconds": blas, "ratio_to_cblas": blas / ours,
                           "machine": machineRecord(threads: threads)])
            }
        }
    }

    struct Step: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Forward + backward + AdamW of RADAR on a synthetic batch.")
        @Option(help: "Preset (tiny, mid, full) or a config JSON file.") var config = "mid"
        @Option(help: "Batch size (default: the preset's).") var batch: Int?
        @Option(help: "Threads.") var threads = ProcessInfo.processInfo.activeProcessorCount
        @Option(help: "Timed steps (the median is reported).") var repeats = 5
        @Flag(help: "Report the time per layer group as well.") var profile = false
        @Flag(help: "On a GPU: time every kernel, cuBLAS product and FFT with CUDA events over --repeats more steps and report them per step, slowest first (kernel_ms).")
        var kernelTimes = false
        @Option(help: "Backend: cpu, cuda, cuda:N (RADAR_CUDA_DRIVER=emulator: the emulated device), cuda-emulated or cpu-fenced (default: RADAR_DEVICE, else cpu).") var device: String?
        @Option(help: ArgumentHelp(stringLiteral: Devices.precisionHelp)) var precision: String?
        @Option(help: "Micro-batches per optimizer step (times are reported per micro-batch).") var accumulationSteps = 1
        @Option(help: "Recompute the attention probabilities and GELU's output and CDF in backward instead of keeping them: true or false (default: the device's choice, true on CUDA, false on the CPU).")
        var recomputeInBackward: Bool?
        @Option(help: "Keep the encoder's activations that only products read in bf16: true or false (default: the device's choice, true on CUDA in bf16 precision, else false).")
        var bf16Activations: Bool?

        func validate() throws {
            try requireBatch(batch ?? 1, flag: "batch")
            try requireThreads(threads)
            try requireFlag(repeats >= 1, "repeats", "at least 1", repeats)
            try requireAccumulation(accumulationSteps)
        }

        func run() throws {
            try failing {
                let (cfg, b, model) = try benchModel(config, batch: batch)
                let backend = try Devices.backend(device ?? Devices.defaultName, threads: threads, precision: precision)
                // --kernel-times needs CUDA events: refused before any step runs.
                var timingAPI: DriverAPI?
                if kernelTimes {
                    guard let api = (backend as? CUDABackend)?.driver as? DriverAPI else {
                        throw ValidationError("--kernel-times needs a GPU (--device cuda[:N]); \(backend.deviceDescription) has no CUDA events")
                    }
                    guard api.canTimeKernels else {
                        throw ValidationError("--kernel-times: the driver of \(api.deviceDescription) has no cuEventElapsedTime_v2 (CUDA 12.8 or later)")
                    }
                    timingAPI = api
                }
                let ctx = ExecutionContext(backend: backend, layout: model.layout, seed: 1)
                if let recomputeInBackward { ctx.recomputeInBackward = recomputeInBackward }
                if let bf16Activations { ctx.bf16Activations = bf16Activations }
                model.initialize(ctx.params, seed: 1)
                let trainer = Trainer(model: model, ctx: ctx, accumulationSteps: accumulationSteps)
                let batch = syntheticBatch(cfg, count: b)
                let images = DeviceTensor(backend, batch.images), labels = DeviceTensor(backend, Shape(b), batch.labels)
                // One optimizer step = accumulationSteps micro-batches; times are per micro-batch.
                func optimizerStep() throws { for _ in 0..<accumulationSteps { _ = try trainer.step(images: images.tensor, labels: labels.tensor) } }
                try optimizerStep()
                ctx.arena.consolidate()
                let cpu = backend as? CPUBackend, gpu = backend as? CUDABackend
                cpu?.gemmFlops.store(0, ordering: .relaxed)
                let gpuFlopsBefore = gpu?.gemmFlops ?? 0
                // The whole run's peak (warm-up included) before the steady state's starts over.
                let runPeak: Any = gpu.map { Double($0.peakDeviceBytes) / 1_048_576 } ?? NSNull()
                gpu?.resetPeakDeviceBytes()
                try optimizerStep()
                let flops = Double(gpu.map { $0.gemmFlops - gpuFlopsBefore } ?? cpu?.gemmFlops.load(ordering: .relaxed) ?? 0) / Double(accumulationSteps)
                let seconds = try medianSeconds(repeats: repeats) { try optimizerStep() } / Double(accumulationSteps)
                // Host synchronisations: per micro-batch that does not end a step, and per optimizer step.
                let syncsBefore = backend.synchronizations, queuedBefore = (backend as? CUDABackend)?.driver.queued
                let pinnedBefore = (backend as? CUDABackend)?.driver.pinnedProducts ?? 0
                _ = try trainer.step(images: images.tensor, labels: labels.tensor)
                let syncsInMicroBatch = accumulationSteps > 1 ? backend.synchronizations - syncsBefore : 0
                for _ in 1..<accumulationSteps { _ = try trainer.step(images: images.tensor, labels: labels.tensor) }
                let syncsPerStep = backend.synchronizations - syncsBefore
                // Kernel launches and cuBLAS products per optimizer step (CUDA): what the host queues.
                let queued = (backend as? CUDABackend)?.driver.queued
                let launchesPerStep: Any = queued.map { $0.launches - queuedBefore!.launches } ?? NSNull()
                let productsPerStep: Any = queued.map { $0.products - queuedBefore!.products } ?? NSNull()
                // Products run with an algorithm a GemmTable pins (RADAR_GEMM_TABLE).
                let table = (backend as? CUDABackend)?.driver.gemmTable
                let pinnedPerStep: Any = table.map { _ in (backend as! CUDABackend).driver.pinnedProducts - pinnedBefore } ?? NSNull()
                // On the test stand-in for the CUDA libraries (Tests/FakeCUDA) its own allocations
                // and its emulated kernels' are left out: the count is the host code's.
                // (The handle only looks it up: the driver's own handle keeps the library loaded.)
                if backend is CUDABackend, let path = CUDALibraries.loaded["cuda_driver"], let h = dlopen(path, RTLD_NOW | RTLD_NOLOAD) {
                    if let flag = dlsym(h, "radar_fake_cuda_busy") { radar_allocation_counter_ignore_while(flag.assumingMemoryBound(to: Int32.self)) }
                    dlclose(h)
                }
                defer { radar_allocation_counter_ignore_while(nil) }
                // The same steps' host time: waiting in the step's synchronisations, and the rest
                // (queueing the step). On a GPU, a wait near zero means the host is the bottleneck.
                let waitBefore = gpu?.hostWaitSeconds ?? 0, wallStart = DispatchTime.now().uptimeNanoseconds
                radar_allocation_counter_start()
                for _ in 0..<repeats { try optimizerStep() }
                let allocations = radar_allocation_counter_stop()
                let micro = Double(repeats * accumulationSteps)  // per micro-batch, as ms_per_step
                let wallMs = Double(DispatchTime.now().uptimeNanoseconds - wallStart) / 1e6 / micro
                let waitMs: Any = gpu.map { ($0.hostWaitSeconds - waitBefore) * 1000 / micro } ?? NSNull()
                let queueMs: Any = (waitMs as? Double).map { wallMs - $0 } ?? NSNull()
                var sections: [String: Double] = [:]
                var profileSyncs: Any = NSNull()
                if profile {
                    let p = StepProfiler()
                    p.synchronize = { backend.synchronize() }
                    let before = backend.synchronizations
                    ctx.profiler = p
                    for _ in 0..<repeats { try optimizerStep() }
                    ctx.profiler = nil
                    profileSyncs = (backend.synchronizations - before) / repeats
                    for s in StepProfiler.Section.allCases { sections[s.name] = p.seconds[s.rawValue] / Double(repeats * accumulationSteps) * 1000 }
                }
                var kernelRecord: Any = NSNull()
                if let api = timingAPI {
                    api.kernelTiming = true
                    api.resetKernelTimes()
                    for _ in 0..<repeats { try optimizerStep() }
                    api.synchronize()
                    let times = api.kernelTimes, steps = Double(repeats)
                    api.kernelTiming = false
                    let sum = { (f: (String) -> Bool) in times.filter { f($0.key) }.values.reduce(0) { $0 + $1.ms } / steps }
                    // By kernel (its calls on every size together; products and FFTs as one each).
                    var byKernel: [String: (ms: Double, count: Int)] = [:]
                    for (name, t) in times {
                        let kernel = name.hasPrefix("gemm ") ? "cublas gemm" : name.hasPrefix("cufft ") ? "cufft" : String(name.prefix { $0 != " " })
                        let old = byKernel[kernel] ?? (0, 0)
                        byKernel[kernel] = (old.ms + t.ms, old.count + t.count)
                    }
                    kernelRecord = ["total_ms_per_step": sum { _ in true }, "gemm_ms_per_step": sum { $0.hasPrefix("gemm ") },
                                    "fft_ms_per_step": sum { $0.hasPrefix("cufft ") },
                                    "by_kernel": byKernel.sorted { $0.value.ms > $1.value.ms }.map {
                                        ["name": $0.key, "ms_per_step": $0.value.ms / steps, "calls_per_step": Double($0.value.count) / steps] as [String: Any]
                                    },
                                    "slowest": times.sorted { $0.value.ms > $1.value.ms }.prefix(80).map {
                                        ["name": $0.key, "ms_per_step": $0.value.ms / steps, "calls_per_step": Double($0.value.count) / steps] as [String: Any]
                                    }] as [String: Any]
                }
                let oneDNNImplementation = CPUProducts.oneDNNDescription.lastImplementation
                printJSON(["bench": "step", "config": config, "batch": b, "parameters": model.layout.parameterElements,
                           "ms_per_step": seconds * 1000, "images_per_s": Double(b) / seconds,
                           "gemm_gflop_per_step": flops / 1e9, "effective_gflops": flops / seconds / 1e9,
                           "arena_mib": Double(ctx.arena.capacity * 4) / 1_048_576, "peak_rss_mib": peakRSSMiB(),
                           "saved_mib_per_image": Double(trainer.savedForBackwardFloats * 4) / 1_048_576 / Double(b),
                           "recompute_in_backward": ctx.recomputeInBackward, "bf16_activations": ctx.bf16Activations,
                           "profile_ms": sections, "heap_allocations_per_step": Double(allocations) / Double(repeats),
                           "accumulation_steps": accumulationSteps, "host_syncs_per_optimizer_step": syncsPerStep,
                           "host_syncs_per_inner_micro_batch": syncsInMicroBatch, "device": backend.deviceDescription, "precision": Devices.precision(of: backend),
                           "attention": backend.fusedAttention(headDim: cfg.embedDim / cfg.numHeads) && ctx.bf16Activations ? "fused" : "products",
                           "gemm_epilogues": (backend as? CUDABackend).map(\.gemmEpiloguesInUse) ?? false,
                           "attention_kernels": (backend as? CUDABackend)?.attentionKernels.rawValue ?? "plain",
                           "layernorm_backward": (backend as? CUDABackend).map { $0.stagedLayerNormBackward ? "staged" : "chunk" } ?? NSNull(),
                           "onednn_implementation": oneDNNImplementation.isEmpty ? NSNull() : oneDNNImplementation as Any,
                           "profile_host_syncs_per_step": profileSyncs, "kernel_ms": kernelRecord,
                           "kernel_launches_per_step": launchesPerStep, "cublas_products_per_step": productsPerStep,
                           "host_wait_ms_per_step": waitMs, "host_queue_ms_per_step": queueMs,
                           "gemm_table_entries": table.map { $0.entries.count as Any } ?? NSNull(), "pinned_products_per_step": pinnedPerStep,
                           "peak_device_mib": (backend as? CUDABackend).map { Double($0.peakDeviceBytes) / 1_048_576 } ?? NSNull(),
                           "peak_device_mib_with_warm_up": runPeak,
                           "library_workspace_mib": (backend as? CUDABackend).map { Double($0.driver.libraryWorkspaceBytes) / 1_048_576 } ?? NSNull(),
                           "machine": machineRecord(threads: threads)])
            }
        }
    }
}
