import ArgumentParser
import Foundation
import RadarCLI
import RadarCore

extension Bench {
    /// The products of one training step on a GPU, each timed as the step runs it and with every
    /// cuBLASLt algorithm its heuristic offers for the same operands (the step's own device
    /// buffers, so the same alignment and leading dimensions): where the step's products lose time
    /// to cuBLAS's default choice, and a table that pins the faster algorithms (RADAR_GEMM_TABLE).
    struct Gemm: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "The cuBLAS products of one training step, each timed as the step runs it and with each cuBLASLt algorithm offered for it (CUDA).",
            discussion: """
            --write-table FILE keeps, for every product where an offered algorithm is faster than the step's own path by \
            more than --margin and gives the same bits twice, that algorithm; RADAR_GEMM_TABLE=FILE then runs those \
            products with it (one algorithm per shape: runs stay bit-identical). A table is for the GPU model it was \
            measured on.
            """)
        @Option(help: "Preset (tiny, mid, full) or a config JSON file.") var config = "full"
        @Option(help: "Batch size (default: the preset's).") var batch: Int?
        @Option(help: "Backend: cuda, cuda:N or cuda-emulated (default: RADAR_DEVICE, else cuda).") var device: String?
        @Option(help: ArgumentHelp(stringLiteral: Devices.precisionHelp)) var precision: String?
        @Option(help: "Timed calls of each product per variant (their mean is reported).") var repeats = 20
        @Option(help: "cuBLASLt algorithms asked of the heuristic per product (at most 32).") var candidates = 8
        @Option(help: "Where an algorithm is this fraction faster than the step's path, --write-table pins it.") var margin = 0.03
        @Option(help: "Write the pinned algorithms here (JSON, for RADAR_GEMM_TABLE).") var writeTable: String?
        @Option(help: "Also time one square bf16 product of this size as the GPU's reference rate (0: none; default 8192 on a GPU, none on the emulated device).")
        var square: Int?
        @Option(help: "Threads (host work).") var threads = ProcessInfo.processInfo.activeProcessorCount

        func validate() throws {
            try requireBatch(batch ?? 1, flag: "batch")
            try requireFlag(repeats >= 1, "repeats", "at least 1", repeats)
            try requireFlag((1...32).contains(candidates), "candidates", "1...32", candidates)
            try requireFlag(margin >= 0 && margin < 1, "margin", "in [0, 1)", margin)
            try requireFlag((0...65536).contains(square ?? 0), "square", "in 0...65536", square ?? 0)
            try requireThreads(threads)
        }

        /// One distinct product of the step and how often the step makes it.
        struct Census {
            var order: [String] = []
            var products: [String: (g: StridedGemm, calls: Int)] = [:]
            mutating func add(_ g: StridedGemm) {
                let key = GemmTable.key(g)
                if let old = products[key] { products[key] = (old.g, old.calls + 1) } else { order.append(key); products[key] = (g, 1) }
            }
        }

        func run() throws {
            try failing {
                let (cfg, b, model) = try benchModel(config, batch: batch)
                let name = device ?? ProcessInfo.processInfo.environment["RADAR_DEVICE"].flatMap { $0.isEmpty ? nil : $0 } ?? "cuda"
                let backend = try Devices.backend(name, threads: threads, precision: precision)
                guard let gpu = backend as? CUDABackend else {
                    throw ValidationError("radar bench gemm times cuBLAS products: it needs --device cuda[:N] or cuda-emulated, not \(backend.deviceDescription)")
                }
                let driver = gpu.driver
                // Measured against cuBLAS's own choices: a table already set is not applied here.
                driver.gemmTable = nil
                let ctx = ExecutionContext(backend: backend, layout: model.layout, seed: 1)
                model.initialize(ctx.params, seed: 1)
                let trainer = Trainer(model: model, ctx: ctx, accumulationSteps: 1)
                let synthetic = syntheticBatch(cfg, count: b)
                let images = DeviceTensor(backend, synthetic.images), labels = DeviceTensor(backend, Shape(b), synthetic.labels)
                // Two steps to the steady state (the arena consolidated, every scratch buffer at its
                // size), then the census step: the products' device buffers stay as they are after it.
                _ = try trainer.step(images: images.tensor, labels: labels.tensor)
                ctx.arena.consolidate()
                _ = try trainer.step(images: images.tensor, labels: labels.tensor)
                var census = Census()
                gpu.gemmCensus = { census.add($0) }
                _ = try trainer.step(images: images.tensor, labels: labels.tensor)
                gpu.gemmCensus = nil
                driver.synchronize()

                let isGPU = driver is DriverAPI
                let timer = (driver as? DriverAPI)?.canTimeKernels == true ? "cuda events" : "wall clock"
                func mean(_ body: () -> Void) -> Double {
                    body(); body()  // plans, heuristics, first touches
                    return driver.elapsedMilliseconds { for _ in 0..<repeats { body() } } / Double(repeats)
                }
                let table = GemmTable(gpu: GemmTable.gpuName(driver.deviceDescription))
                var pinned = table
                var shapes: [[String: Any]] = []
                var asStepTotal = 0.0, bestTotal = 0.0
                let progress = ProgressReporter("bench gemm", total: census.order.count, unit: "product")
                for (i, key) in census.order.enumerated() {
                    let (g, calls) = census.products[key]!
                    let flops = 2.0 * Double(g.m) * Double(g.n) * Double(g.k) * Double(g.batch)
                    let asStep = mean { driver.gemm(g) }
                    var offers: [[String: Any]] = []
                    var best: (algorithm: GemmAlgorithm, ms: Double)?
                    for algorithm in driver.gemmAlgorithms(g, limit: candidates) {
                        let ms = mean { driver.gemm(g, algorithm: algorithm) }
                        offers.append(["index": algorithm.index, "ms": ms, "tflops": flops / ms / 1e9, "workspace_bytes": algorithm.workspaceBytes])
                        if best == nil || ms < best!.ms { best = (algorithm, ms) }
                    }
                    var deterministic: Any = NSNull()
                    var pin = false
                    if let best, best.ms < asStep * (1 - margin) {
                        let same = sameBitsTwice(driver, g) { driver.gemm(g, algorithm: best.algorithm) }
                        deterministic = same
                        if same { pinned.entries[key] = best.algorithm.bytes; pin = true }
                    }
                    let chosen = pin ? best!.ms : asStep
                    asStepTotal += asStep * Double(calls)
                    bestTotal += chosen * Double(calls)
                    // The call in cuBLAS's column-major terms (bench/pytorch_gemm.py rebuilds it).
                    let call: [String: Any] = ["trans_a": g.transA, "trans_b": g.transB, "m": g.m, "n": g.n, "k": g.k, "batch": g.batch,
                                               "lda": g.lda, "ldb": g.ldb, "ldc": g.ldc, "operands": "\(g.operands)",
                                               "output": g.outputBF16 ? "bf16" : "fp32", "bias": g.bias != nil, "residual": g.d != nil,
                                               "beta": g.beta, "align": [GemmTable.alignment(g.a), GemmTable.alignment(g.b), GemmTable.alignment(g.c),
                                                                         GemmTable.alignment(g.d ?? g.c)]]
                    shapes.append(["shape": key, "call": call, "calls_per_step": calls, "gflop": flops / 1e9,
                                   "path": g.bias != nil || g.d != nil ? "cublasLt" : "cublasGemmEx",
                                   "as_step_ms": asStep, "as_step_tflops": flops / asStep / 1e9,
                                   "candidates": offers, "best_index": best.map { $0.algorithm.index as Any } ?? NSNull(),
                                   "best_ms": best.map { $0.ms as Any } ?? NSNull(), "pinned": pin, "deterministic": deterministic])
                    progress.update(i + 1, detail: key)
                }
                var squareRecord: Any = NSNull()
                let side = square ?? (isGPU ? 8192 : 0)
                if side > 0 { squareRecord = try squareReference(driver, side: side, repeats: repeats, mean: mean) }
                if let writeTable { try writeFileAtomically(try pinned.data(), to: writeTable) }
                shapes.sort { ($0["as_step_ms"] as! Double) * Double($0["calls_per_step"] as! Int) > ($1["as_step_ms"] as! Double) * Double($1["calls_per_step"] as! Int) }
                printJSON(["bench": "gemm", "config": config, "batch": b, "device": backend.deviceDescription,
                           "precision": Devices.precision(of: backend), "timer": timer, "repeats": repeats, "candidates_asked": candidates,
                           "products_per_step": census.products.values.reduce(0) { $0 + $1.calls }, "distinct_products": census.order.count,
                           "gemm_ms_per_step_as_step": asStepTotal, "gemm_ms_per_step_pinned": bestTotal,
                           "pinned_shapes": pinned.entries.count, "table": writeTable.map { $0 as Any } ?? NSNull(),
                           "gemm_epilogues": gpu.gemmEpiloguesInUse,
                           "square": squareRecord, "shapes": shapes, "machine": machineRecord(threads: threads)])
            }
        }
    }
}

/// Whether `run` writes the same bytes twice into the first 4 MiB of g's D from the same C there
/// (restored before the second run). An algorithm that reduces in a varying order (atomics)
/// differs all over D, so a sample shows it without moving the largest Ds (77 MB) back and forth.
private func sameBitsTwice(_ driver: any CUDADriver, _ g: StridedGemm, _ run: () -> Void) -> Bool {
    let span = g.ldc * (g.n - 1) + g.m + g.strideC * (g.batch - 1)
    let bytes = min(span * (g.outputBF16 ? 2 : 4), 4 << 20)
    let original = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
    let first = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
    let second = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
    defer { original.deallocate(); first.deallocate(); second.deallocate() }
    let c = UnsafeMutableRawPointer(g.c), d = UnsafeRawPointer(g.d ?? g.c)
    driver.download(c, to: original, bytes: bytes)
    run()
    driver.download(d, to: first, bytes: bytes)
    driver.upload(original, to: c, bytes: bytes)
    run()
    driver.download(d, to: second, bytes: bytes)
    driver.upload(original, to: c, bytes: bytes)
    driver.synchronize()
    return memcmp(first, second, bytes) == 0
}

/// One side x side x side bf16 product (fp32 accumulation, bf16 out) on pseudo-random operands:
/// the rate cuBLAS reaches on this GPU at a size that fills it.
private func squareReference(_ driver: any CUDADriver, side: Int, repeats: Int, mean: (() -> Void) -> Double) throws -> [String: Any] {
    let count = side * side, bytes = count * 2
    var host = [UInt16](repeating: 0, count: count)
    var state: UInt32 = 12345
    for i in 0..<count {
        state = state &* 1664525 &+ 1013904223
        host[i] = BFloat16.bits(Float(Int32(state >> 8) - (1 << 23)) / Float(1 << 23))
    }
    let a = try driver.allocate(bytes: bytes), b = try driver.allocate(bytes: bytes), c = try driver.allocate(bytes: bytes)
    defer { driver.free(a); driver.free(b); driver.free(c) }
    host.withUnsafeBytes { driver.upload($0.baseAddress!, to: a, bytes: bytes); driver.upload($0.baseAddress!, to: b, bytes: bytes) }
    let g = StridedGemm(transA: false, transB: false, m: side, n: side, k: side, alpha: 1, a: a, lda: side, b: b, ldb: side, beta: 0,
                        c: c.assumingMemoryBound(to: Float.self), ldc: side, operands: .bf16, outputBF16: true)
    let ms = mean { driver.gemm(g) }
    return ["size": side, "ms": ms, "tflops": 2 * Double(side) * Double(side) * Double(side) / ms / 1e9]
}
