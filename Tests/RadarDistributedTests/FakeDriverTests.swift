import Foundation
@testable import RadarCUDA
import RadarCore
import XCTest

/// DriverAPI, the code that drives a real GPU, run in CI: `libRadarFakeCUDA.so` (Tests/FakeCUDA)
/// stands in for libcuda.so.1, libcublas.so.13 and libcufft.so.12 behind `RADAR_CUDA_LIBS`, with
/// the real libraries' argument checks and error codes and the emulator's kernels behind them;
/// NVRTC is the real one (CUBINs for sm_90). The emulated device tests replace the driver at the
/// Swift level and never run this code; these do, unchanged: contexts (the communication thread's
/// too), streams, events, page-locked memory, copies, module loading, launches, cuBLAS, cuFFT.
final class FakeDriverTests: XCTestCase {
    static let products = MPITrainingTests.products
    static let library = products.appendingPathComponent("libRadarFakeCUDA.so").path

    /// A folder where the fake answers to the CUDA libraries' names.
    static let folder: String = {
        let dir = NSTemporaryDirectory() + "radar-fake-cuda-\(getpid())"
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        for name in ["libcuda.so.1", "libcublas.so.13", "libcublasLt.so.13", "libcufft.so.12"] {
            try? FileManager.default.removeItem(atPath: dir + "/" + name)
            try? FileManager.default.createSymbolicLink(atPath: dir + "/" + name, withDestinationPath: library)
        }
        return dir
    }()

    /// The fake driver, never the emulator (whatever the pass exports), one kernel cache for the class.
    static var environment: [String: String] {
        ["RADAR_CUDA_LIBS": folder, "RADAR_KERNEL_CACHE": NSTemporaryDirectory() + "radar-fake-kernels-\(getpid())", "RADAR_CUDA_DRIVER": "",
         "RADAR_DEVICE": "", "RADAR_PRECISION": ""]
    }

    func radar(_ args: [String], environment extra: [String: String] = [:]) throws -> (status: Int32, output: String) {
        XCTAssertTrue(FileManager.default.fileExists(atPath: FakeDriverTests.library), "swift build makes \(FakeDriverTests.library)")
        let r = try Process.runStatus([FakeDriverTests.products.appendingPathComponent("radar").path] + args,
                                               environment: FakeDriverTests.environment.merging(extra) { $1 })
        return (r.0, r.1)
    }

    func testDriverAPIPassesTheDeviceCheckOnTheFakeDriver() throws {
        let r = try radar(["check-device", "--device", "cuda"])
        XCTAssertEqual(r.status, 0, r.output)
        let report = try lastJSON(r.output)
        XCTAssertEqual(report["passed"] as? Bool, true, r.output)
        XCTAssertEqual(report["kernels_passed"] as? Int, report["kernels_total"] as? Int)
        XCTAssertGreaterThanOrEqual(report["kernels_total"] as? Int ?? 0, 60)
        let golden = try XCTUnwrap(report["golden"] as? [[String: Any]])
        XCTAssertEqual(golden.count, 4)
        XCTAssertTrue(golden.allSatisfy { $0["passed"] as? Bool == true }, "\(golden)")
        let probe = try XCTUnwrap(report["probe"] as? [String: Any])
        XCTAssertTrue((probe["device"] as? String ?? "").contains("RADAR fake CUDA device 0, sm_90"), "\(probe)")
        let libraries = try XCTUnwrap(probe["libraries"] as? [String: String])
        XCTAssertEqual(libraries["cuda_driver"], FakeDriverTests.folder + "/libcuda.so.1")
        XCTAssertEqual(libraries["cublas"], FakeDriverTests.folder + "/libcublas.so.13")
        XCTAssertEqual(libraries["cufft"], FakeDriverTests.folder + "/libcufft.so.12")
        XCTAssertEqual(libraries["cublasLt"], FakeDriverTests.folder + "/libcublasLt.so.13")
        XCTAssertEqual(probe["gemm_epilogues"] as? Bool, true, "on by default, through the fake's cuBLASLt")
        XCTAssertEqual(probe["attention_kernels"] as? String, "fast", "the fast build by default")
        XCTAssertEqual(probe["pci_bus_id"] as? String, "0000:3B:00.0", "cuDeviceGetPCIBusId: \(probe)")
        XCTAssertNotNil(CPUPlacement.parseList(probe["allowed_cpus"] as? String ?? ""), "the CPUs this process may use: \(probe)")
        XCTAssertTrue((libraries["cuda_nvrtc"] ?? "").contains("libnvrtc.so."), "the real NVRTC: \(libraries)")
    }

    /// The command a lent GPU's session runs, `scripts/gpu-check.sh`, through DriverAPI on the fake
    /// (tiny config): every step ends, nothing is skipped, and the report says what a GPU's would.
    func testTheGPUCheckScriptPassesOnTheFakeDriver() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let report = NSTemporaryDirectory() + "radar-gpu-check-\(getpid()).json"
        defer { try? FileManager.default.removeItem(atPath: report) }
        let r = try Process.runStatus(["bash", root.appendingPathComponent("scripts/gpu-check.sh").path], environment: FakeDriverTests.environment.merging([
            "GPU_CHECK_RADAR": FakeDriverTests.products.appendingPathComponent("radar").path, "GPU_CHECK_DEVICE": "cuda",
            "GPU_CHECK_CONFIG": "tiny", "GPU_CHECK_BATCH": "2", "GPU_CHECK_REPEATS": "1", "GPU_CHECK_DEADLINE": "1800",
            "GPU_CHECK_GEMM_SQUARE": "64", "GPU_CHECK_REPORT": report]) { $1 })
        XCTAssertEqual(r.0, 0, String(r.1.suffix(3000)))
        let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: report))) as? [String: Any])
        XCTAssertEqual(json["passed"] as? Bool, true, String(r.1.suffix(3000)))
        XCTAssertEqual(json["complete"] as? Bool, true, String(r.1.suffix(3000)))
        XCTAssertEqual((json["skipped"] as? [String])?.count, 0)
        XCTAssertEqual((json["epilogue_fallbacks"] as? [String])?.count, 0, "the fake's cuBLASLt has every epilogue")
        let check = try XCTUnwrap(json["check"] as? [String: Any])
        XCTAssertEqual(check["kernels_passed"] as? Int, check["kernels_total"] as? Int)
        XCTAssertEqual((check["golden"] as? [Any])?.count, 4)
        // The summary on standard error: the report's verdicts and figures, one table.
        let summary = String(r.1[(r.1.range(of: "gpu-check summary:")?.lowerBound ?? r.1.endIndex)...])
        XCTAssertTrue(summary.hasPrefix("gpu-check summary: passed True, complete True"), String(r.1.suffix(3000)))
        let total = check["kernels_total"] as? Int ?? -1
        for line in ["RADAR fake CUDA device 0, sm_90", "kernels \(total)/\(total), golden 4", "two ranks on the GPU: identical; run to run: identical",
                     "layernorm_staged_check: passed (\(total)/\(total) kernels)", "epilogue fallbacks: none",
                     "kernel times bf16 fused fast/staged/True"] {
            XCTAssertTrue(summary.contains(line), "\(line): \(summary)")
        }
        XCTAssertEqual(summary.split(separator: "\n").filter { $0.hasPrefix("  radar ") || $0.hasPrefix("  variant ") }.count, 4 + 7, summary)
        XCTAssertEqual(summary.split(separator: "\n").filter { $0.hasPrefix("  kernel times ") }.count, 6, summary)
        let steps = try XCTUnwrap(json["radar_bench_step"] as? [[String: Any]])
        XCTAssertEqual(steps.compactMap { $0["precision"] as? String }, ["fp32", "tf32", "bf16", "bf16"])
        XCTAssertTrue(steps.allSatisfy { ($0["device"] as? String ?? "").contains("RADAR fake CUDA device 0, sm_90") }, "\(steps)")
        XCTAssertEqual(steps.compactMap { $0["bf16_activations"] as? Bool }, [false, false, true, true], "bf16 keeps bf16 activations")
        // bf16 with the fused attention kernels (the default), then again with the products path:
        // 42 more cuBLAS products per step in the tiny config (21 per block: 3 heads x (2 forward +
        // 1 recomputed + 4 backward)).
        XCTAssertEqual(steps.compactMap { $0["attention"] as? String }, ["products", "products", "fused", "products"])
        XCTAssertEqual(steps[3]["cublas_products_per_step"] as? Int, (steps[2]["cublas_products_per_step"] as? Int ?? 0) + 42, "\(steps)")
        // The defaults in steps 1-4: the attention kernels' fast build, the products' epilogues
        // through the fake's cuBLASLt.
        let probe = try XCTUnwrap(check["probe"] as? [String: Any])
        XCTAssertEqual(probe["attention_kernels"] as? String, "fast", "\(probe)")
        XCTAssertEqual(probe["gemm_epilogues"] as? Bool, true, "\(probe)")
        XCTAssertTrue(steps.allSatisfy { $0["gemm_epilogues"] as? Bool == true }, "\(steps)")
        // With time to spare, first the attention kernels' plain build (the kernel check and golden
        // cases, and the bf16 step), then the staged LayerNorm backward (likewise), then bf16 again with fp32 activations, then keeping what
        // backward recomputes, then the bias fills instead of the epilogues and the attention
        // kernels' ldmatrix build (each the kernel check and golden cases, and the step).
        let variants = try XCTUnwrap(json["radar_bench_step_variants"] as? [[String: Any]])
        XCTAssertEqual(variants.compactMap { $0["bf16_activations"] as? Bool }, [true, true, false, true, true, true, true], "\(variants)")
        XCTAssertEqual(variants.compactMap { $0["recompute_in_backward"] as? Bool }, [true, true, true, false, true, true, true], "\(variants)")
        XCTAssertEqual(variants.compactMap { $0["gemm_epilogues"] as? Bool }, [true, true, true, true, false, true, true], "\(variants)")
        XCTAssertEqual(variants.compactMap { $0["attention_kernels"] as? String }, ["plain", "fast", "fast", "fast", "fast", "ldmatrix", "fast"], "\(variants)")
        XCTAssertEqual(variants.compactMap { $0["layernorm_backward"] as? String }, ["chunk", "staged", "chunk", "chunk", "chunk", "chunk", "chunk"], "\(variants)")
        // Step 7c: every product of the bf16 step timed as the step runs it (3 made-up microseconds
        // on the fake's event clock) and with the fake cuBLASLt's three offers (3, 2 and 1): the
        // third pinned for every product, and the bf16 step with that table runs every product with it.
        let gemm = try XCTUnwrap(json["gemm_bench"] as? [String: Any])
        XCTAssertEqual(gemm["exit"] as? Int, 0, "\(gemm)")
        let bench = try XCTUnwrap(gemm["radar"] as? [String: Any], "\(gemm)")
        XCTAssertEqual(bench["timer"] as? String, "cuda events")
        let shapes = try XCTUnwrap(bench["shapes"] as? [[String: Any]])
        XCTAssertEqual(shapes.count, bench["distinct_products"] as? Int)
        XCTAssertGreaterThan(shapes.count, 10)
        for shape in shapes {
            XCTAssertEqual((shape["candidates"] as? [[String: Any]])?.count, 3, "\(shape)")
            XCTAssertEqual(shape["best_index"] as? Int, 2, "\(shape)")
            XCTAssertEqual(shape["best_ms"] as? Double ?? 0, 0.001, accuracy: 1e-4, "\(shape)")
            XCTAssertEqual(shape["pinned"] as? Bool, true, "\(shape)")
            XCTAssertEqual(shape["deterministic"] as? Bool, true, "\(shape)")
        }
        XCTAssertEqual(bench["pinned_shapes"] as? Int, shapes.count)
        XCTAssertEqual((bench["square"] as? [String: Any])?["size"] as? Int, 64)
        XCTAssertLessThan(bench["gemm_ms_per_step_pinned"] as? Double ?? .infinity, (bench["gemm_ms_per_step_as_step"] as? Double ?? 0) / 2)
        XCTAssertEqual(variants.last?["gemm_table_entries"] as? Int, shapes.count, "\(variants)")
        XCTAssertEqual(variants.last?["pinned_products_per_step"] as? Int, variants.last?["cublas_products_per_step"] as? Int, "\(variants)")
        XCTAssertEqual(variants.last?["pinned_products_per_step"] as? Int, bench["products_per_step"] as? Int, "\(variants)")
        let fillsCheck = try XCTUnwrap(json["gemm_fills_check"] as? [String: Any])
        XCTAssertEqual(fillsCheck["passed"] as? Bool, true, "\(fillsCheck)")
        XCTAssertEqual((fillsCheck["probe"] as? [String: Any])?["gemm_epilogues"] as? Bool, false, "\(fillsCheck)")
        XCTAssertEqual(fillsCheck["kernels_passed"] as? Int, fillsCheck["kernels_total"] as? Int)
        let ldmatrixCheck = try XCTUnwrap(json["attention_ldmatrix_check"] as? [String: Any])
        XCTAssertEqual(ldmatrixCheck["passed"] as? Bool, true, "\(ldmatrixCheck)")
        XCTAssertEqual((ldmatrixCheck["probe"] as? [String: Any])?["attention_kernels"] as? String, "ldmatrix", "\(ldmatrixCheck)")
        XCTAssertEqual(ldmatrixCheck["kernels_passed"] as? Int, ldmatrixCheck["kernels_total"] as? Int)
        let stagedCheck = try XCTUnwrap(json["layernorm_staged_check"] as? [String: Any])
        XCTAssertEqual(stagedCheck["passed"] as? Bool, true, "\(stagedCheck)")
        XCTAssertEqual((stagedCheck["probe"] as? [String: Any])?["layernorm_backward"] as? String, "staged", "\(stagedCheck)")
        XCTAssertEqual(stagedCheck["kernels_passed"] as? Int, stagedCheck["kernels_total"] as? Int)
        let plainCheck = try XCTUnwrap(json["attention_plain_check"] as? [String: Any])
        XCTAssertEqual(plainCheck["passed"] as? Bool, true, "\(plainCheck)")
        XCTAssertEqual((plainCheck["probe"] as? [String: Any])?["attention_kernels"] as? String, "plain", "\(plainCheck)")
        XCTAssertEqual(plainCheck["kernels_passed"] as? Int, plainCheck["kernels_total"] as? Int)
        XCTAssertTrue(variants.allSatisfy { $0["precision"] as? String == "bf16" && $0["batch"] as? Int == 2 }, "\(variants)")
        // With time to spare, where a step's time goes: every kernel, product and FFT between two
        // events (the fake counts 1 microsecond per operation between them).
        let timed = try XCTUnwrap(json["radar_kernel_times"] as? [[String: Any]])
        XCTAssertEqual(timed.compactMap { $0["precision"] as? String }, ["bf16", "bf16", "bf16", "bf16", "bf16", "fp32"], "\(timed)")
        XCTAssertEqual(timed.compactMap { $0["attention"] as? String }, ["fused", "fused", "fused", "fused", "products", "products"], "\(timed)")
        XCTAssertEqual(timed.compactMap { $0["attention_kernels"] as? String }, ["fast", "fast", "plain", "ldmatrix", "fast", "fast"], "\(timed)")
        XCTAssertEqual(timed.compactMap { $0["layernorm_backward"] as? String }, ["chunk", "staged", "chunk", "chunk", "chunk", "chunk"], "\(timed)")
        let fastKernels = (timed.first?["kernel_ms"] as? [String: Any])?["by_kernel"] as? [[String: Any]] ?? []
        XCTAssertTrue(fastKernels.contains { $0["name"] as? String == "radar_attention_backward_key_value_hd16_fast" }, "\(fastKernels)")
        let plainKernels = (timed[2]["kernel_ms"] as? [String: Any])?["by_kernel"] as? [[String: Any]] ?? []
        XCTAssertTrue(plainKernels.contains { $0["name"] as? String == "radar_attention_forward_hd16" }, "\(plainKernels)")
        let ldmatrixKernels = (timed[3]["kernel_ms"] as? [String: Any])?["by_kernel"] as? [[String: Any]] ?? []
        XCTAssertTrue(ldmatrixKernels.contains { $0["name"] as? String == "radar_attention_backward_key_value_hd16_ldsm" }, "\(ldmatrixKernels)")
        for t in timed {
            let times = try XCTUnwrap(t["kernel_ms"] as? [String: Any], "\(t)")
            let slowest = try XCTUnwrap(times["slowest"] as? [[String: Any]], "\(times)")
            let total = try XCTUnwrap(times["total_ms_per_step"] as? Double)
            XCTAssertGreaterThan(times["gemm_ms_per_step"] as? Double ?? 0, 0, "\(times)")
            XCTAssertGreaterThan(times["fft_ms_per_step"] as? Double ?? 0, 0, "\(times)")
            XCTAssertLessThan(times["gemm_ms_per_step"] as? Double ?? .infinity, total)
            // Launches are named with their integer arguments (sizes); by_kernel sums a kernel's sizes.
            // (The fake charges a product 3 microseconds and a launch 1: some kernel's sizes still
            // make the 80 slowest.)
            XCTAssertTrue(slowest.contains {
                let name = $0["name"] as? String ?? ""
                return name.hasPrefix("radar_") && name.contains(" (") && name.last == ")" && name.contains { $0.isNumber }
            }, "\(slowest)")
            let byKernel = try XCTUnwrap(times["by_kernel"] as? [[String: Any]], "\(times)")
            XCTAssertTrue(byKernel.contains { $0["name"] as? String == "radar_layernorm_forward" && ($0["calls_per_step"] as? Double ?? 0) >= 1 },
                          "\(byKernel)")
            XCTAssertEqual(byKernel.reduce(0) { $0 + ($1["ms_per_step"] as? Double ?? 0) }, total, accuracy: total * 1e-9)
            let listed = slowest.compactMap { $0["ms_per_step"] as? Double }
            XCTAssertEqual(listed, listed.sorted(by: >), "slowest first")
            XCTAssertLessThanOrEqual(listed.reduce(0, +), total * (1 + 1e-9))
        }
        // Step 6c: the same training twice in each precision gives the same parameters.
        let runs = try XCTUnwrap(json["run_to_run"] as? [String: Any])
        XCTAssertEqual(runs["passed"] as? Bool, true, "\(runs)")
        let bf16Runs = try XCTUnwrap(runs["bf16"] as? [String]), fp32Runs = try XCTUnwrap(runs["fp32"] as? [String])
        XCTAssertEqual(bf16Runs.count, 2, "\(runs)")
        XCTAssertEqual(Set(bf16Runs).count, 1, "\(runs)")
        XCTAssertEqual(fp32Runs.count, 2, "\(runs)")
        XCTAssertEqual(Set(fp32Runs).count, 1, "\(runs)")
        XCTAssertNotEqual(bf16Runs, fp32Runs, "two precisions, two results: \(runs)")
        let dp = try XCTUnwrap(json["data_parallel"] as? [String: Any])
        XCTAssertEqual(dp["replicas_identical"] as? Bool, true)
        XCTAssertEqual(dp["copy_stream"] as? Bool, true)
        let allreduce = try XCTUnwrap(json["allreduce"] as? [[String: Any]])
        XCTAssertEqual(allreduce.count, 2, "8 and 88 MB")
        XCTAssertTrue(allreduce.allSatisfy { $0["staging"] as? String == "copy stream, page-locked" && ($0["device"] as? String ?? "").contains("fake") },
                      "\(allreduce)")
        // And as the trainer's 10 MiB buckets, each download queued before the first ring.
        XCTAssertEqual(allreduce.compactMap { $0["buckets"] as? Int }, [1, 9], "\(allreduce)")
        XCTAssertTrue(allreduce.allSatisfy { ($0["bucketed_seconds"] as? Double ?? 0) > 0 }, "\(allreduce)")
    }

    /// `radar bench infer` on the driver API: the eval forward timed, and the model (its weights
    /// read back from the device) and batch written for bench/onnx_compare.py, where ONNX Runtime
    /// gives the same mean p(fake).
    func testInferenceBenchWritesTheModelAndBatchONNXRuntimeAgreesWith() throws {
        let dir = NSTemporaryDirectory() + "radar-infer-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let r = try radar(["bench", "infer", "--device", "cuda", "--precision", "fp32", "--config", "tiny", "--batch", "3", "--repeats", "1",
                           "--export-onnx", dir + "/m.onnx", "--export-batch", dir + "/b.safetensors"])
        XCTAssertEqual(r.status, 0, r.output)
        let j = try lastJSON(r.output)
        XCTAssertEqual(j["bench"] as? String, "infer")
        XCTAssertEqual(j["precision"] as? String, "fp32", r.output)
        XCTAssertTrue((j["device"] as? String ?? "").contains("RADAR fake CUDA device"), r.output)
        XCTAssertGreaterThan(j["images_per_s"] as? Double ?? 0, 0, r.output)
        XCTAssertGreaterThan(j["peak_device_mib"] as? Double ?? 0, 0, r.output)
        let check = """
        import sys, onnxruntime as ort
        from safetensors.numpy import load_file
        s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
        print(float(s.run(["prob"], {"image": load_file(sys.argv[2])["images"]})[0].mean()))
        """
        let (rc, out) = try Process.runStatus([ProcessInfo.processInfo.environment["RADAR_PYTHON"] ?? "python3", "-c", check, dir + "/m.onnx", dir + "/b.safetensors"])
        XCTAssertEqual(rc, 0, out)
        let runtime = Double(out.split(separator: "\n").last.map(String.init) ?? "") ?? -1
        XCTAssertEqual(runtime, j["mean_probability"] as? Double ?? -2, accuracy: 1e-5, out)
    }

    /// The training step in each precision (bf16 operands through cublasGemmStridedBatchedEx,
    /// TF32 compute), one host synchronisation per optimizer step.
    func testDriverAPITrainsInEveryPrecisionOnTheFakeDriver() throws {
        for precision in ["fp32", "tf32", "bf16"] {
            let profile = precision == "fp32" ? ["--profile"] : []
            let r = try radar(["bench", "step", "--device", "cuda", "--precision", precision, "--config", "tiny", "--batch", "4", "--repeats", "1"] + profile)
            XCTAssertEqual(r.status, 0, r.output)
            let step = try lastJSON(r.output)
            XCTAssertEqual(step["precision"] as? String, precision, r.output)
            XCTAssertTrue((step["device"] as? String ?? "").contains("RADAR fake CUDA device"), r.output)
            XCTAssertEqual(step["host_syncs_per_optimizer_step"] as? Int, 1, r.output)
            XCTAssertGreaterThan(step["images_per_s"] as? Double ?? 0, 0)
            // cuBLAS's 32 MiB workspace and cuFFT's work area (one 16x16 spectrum per plane) count.
            let workspace = try XCTUnwrap(step["library_workspace_mib"] as? Double, r.output)
            XCTAssertGreaterThan(workspace, 32, r.output)
            XCTAssertGreaterThan(step["peak_device_mib"] as? Double ?? 0, workspace, r.output)
            // The steady state's peak (after the warm-up step, as PyTorch's benchmark measures) is at
            // most the whole run's; the products' FLOPs are counted.
            XCTAssertGreaterThanOrEqual(step["peak_device_mib_with_warm_up"] as? Double ?? 0, step["peak_device_mib"] as? Double ?? 1, r.output)
            XCTAssertGreaterThan(step["gemm_gflop_per_step"] as? Double ?? 0, 0, r.output)
            // The host code of a CUDA step allocates nothing, in this debug build too (launch
            // arguments inline, no iterator coroutines); the fake libraries' own allocations are
            // left out by their busy flag.
            XCTAssertEqual(step["heap_allocations_per_step"] as? Double, 0, r.output)
            // The host's time a step, split: waiting in its synchronisation (little here: the fake
            // runs each kernel as it is launched) and the rest, queueing the step.
            let wait = try XCTUnwrap(step["host_wait_ms_per_step"] as? Double, r.output)
            let queue = try XCTUnwrap(step["host_queue_ms_per_step"] as? Double, r.output)
            XCTAssertGreaterThanOrEqual(wait, 0, r.output)
            XCTAssertGreaterThan(queue, wait, r.output)
            if !profile.isEmpty {
                // The profile waits for the device at every section's end (10 sections), so
                // asynchronous work is charged to the section that queued it.
                XCTAssertGreaterThanOrEqual(step["profile_host_syncs_per_step"] as? Int ?? 0, 11, r.output)
                XCTAssertEqual((step["profile_ms"] as? [String: Double])?.count, 10, r.output)
            }
        }
    }

    /// Where cuBLASLt's heuristic offers no algorithm with a bias epilogue (the fake told to answer
    /// CUBLAS_STATUS_NOT_SUPPORTED, as a real one may for some shapes on some GPUs), the bias is
    /// filled before a plain product instead: the step runs, says so once per shape, queues the
    /// same products and allocates nothing per step.
    func testAProductWithoutAnEpilogueAlgorithmIsFilledOnTheFakeDriver() throws {
        let args = ["bench", "step", "--device", "cuda", "--precision", "bf16", "--config", "tiny", "--batch", "4", "--repeats", "2"]
        let normal = try radar(args), refused = try radar(args, environment: ["RADAR_FAKE_LT_NO_BIAS": "1"])
        XCTAssertEqual(normal.status, 0, normal.output)
        XCTAssertEqual(refused.status, 0, refused.output)
        XCTAssertFalse(normal.output.contains("offers no algorithm"), normal.output)
        let said = refused.output.split(separator: "\n").filter { $0.contains("cuBLASLt offers no algorithm with a bias epilogue for") }
        XCTAssertGreaterThan(said.count, 0, refused.output)
        XCTAssertEqual(Set(said).count, said.count, "each shape said once: \(said)")
        let a = try lastJSON(normal.output), b = try lastJSON(refused.output)
        XCTAssertEqual(b["cublas_products_per_step"] as? Int, a["cublas_products_per_step"] as? Int, refused.output)
        XCTAssertGreaterThan(b["kernel_launches_per_step"] as? Int ?? 0, a["kernel_launches_per_step"] as? Int ?? 0, "the fills: \(refused.output)")
        XCTAssertEqual(b["heap_allocations_per_step"] as? Double, 0, refused.output)
    }

    /// gpu-check's step 6 on the fake: two ranks share the GPU, gradient buckets go through the
    /// copy stream (a second thread that must make the context current) and page-locked memory,
    /// replicas stay identical, and the bits are those of a run whose copies all happen at their
    /// calls (RADAR_FAKE_CUDA_DEFER=0): no host read of page-locked memory comes before the
    /// synchronisation that CUDA requires for it.
    func testTwoRanksShareTheFakeGPUThroughTheCopyStream() throws {
        let deferred = try twoRanksSharingTheFakeGPU([:])
        let eager = try twoRanksSharingTheFakeGPU(["RADAR_FAKE_CUDA_DEFER": "0"])
        XCTAssertEqual(deferred, eager, "deferred copies change nothing")
    }

    /// The replicas' parameter hash after 3 steps of 2 ranks on the one fake GPU.
    func twoRanksSharingTheFakeGPU(_ environment: [String: String]) throws -> String? {
        let out = NSTemporaryDirectory() + "radar-fake-dp-\(UUID().uuidString.prefix(6))"
        let r = try radar(["launch", "-n", "2", "--", "radar-worker", "--device", "cuda", "--allow-gpu-sharing", "--data", MPITrainingTests.dataset,
                           "--output", out, "--experiment", "dp", "--config", "tiny", "--batch-size", "4", "--num-epochs", "1",
                           "--max-steps-per-epoch", "3", "--accumulation-steps", "1", "--bucket-mb", "0", "--verify-replicas",
                           "--threads", "1", "--timeout", "120"], environment: environment)
        XCTAssertEqual(r.status, 0, r.output)
        XCTAssertTrue(r.output.contains("via two copy streams (down, up) and page-locked host memory"), r.output)
        XCTAssertTrue(r.output.contains("RADAR fake CUDA device 0, sm_90") && r.output.contains("), bf16"),
                      "auto precision is bf16 on compute capability 9.0:\n\(r.output)")
        let hashes = r.output.split(separator: "\n").filter { $0.contains("parameters fnv1a") }.map { $0.split(separator: " ")[4] }
        XCTAssertEqual(hashes.count, 2, r.output)
        XCTAssertEqual(Set(hashes).count, 1, "replicas agree: \(hashes)")
        return hashes.first.map(String.init)
    }

    func testDriverAPIErrorsAreOneLineOnTheFakeDriver() throws {
        let missing = try radar(["bench", "step", "--device", "cuda:1", "--config", "tiny", "--batch", "4", "--repeats", "1"])
        XCTAssertNotEqual(missing.status, 0)
        XCTAssertTrue(missing.output.contains("device cuda:1: this machine has 1 CUDA device (cuda:0)"), missing.output)
        // --kernel-times without CUDA events, and a misspelt RADAR_ATTENTION: refused before any
        // step runs (no record printed), in one line.
        let cpuTimes = try radar(["bench", "step", "--device", "cpu", "--kernel-times", "--config", "tiny", "--batch", "4", "--repeats", "1"])
        XCTAssertNotEqual(cpuTimes.status, 0)
        XCTAssertTrue(cpuTimes.output.contains("--kernel-times needs a GPU (--device cuda[:N])"), cpuTimes.output)
        XCTAssertFalse(cpuTimes.output.contains("\"bench\""), cpuTimes.output)
        let attention = try radar(["bench", "step", "--device", "cuda", "--config", "tiny", "--batch", "4", "--repeats", "1"],
                                  environment: ["RADAR_ATTENTION": "flash"])
        XCTAssertNotEqual(attention.status, 0)
        XCTAssertTrue(attention.output.contains("RADAR_ATTENTION=flash: expected products or fused"), attention.output)
        let full = try radar(["bench", "step", "--device", "cuda", "--config", "full", "--batch", "64", "--repeats", "1"],
                             environment: ["RADAR_FAKE_CUDA_MEMORY": "300000000"])
        XCTAssertNotEqual(full.status, 0)
        XCTAssertTrue(full.output.contains("out of device memory on cuda:0 (RADAR fake CUDA device 0") && full.output.contains("--batch 64"),
                      full.output)
        XCTAssertFalse(full.output.contains("Fatal error"), full.output)
        // cuFFT's work area is ours: one that does not fit is named, with the batch being sized.
        let fft = try radar(["bench", "step", "--device", "cuda", "--config", "tiny", "--batch", "2", "--repeats", "1"],
                            environment: ["RADAR_FAKE_CUFFT_WORK_BYTES": "1000000000000"])
        XCTAssertEqual(fft.status, 1, fft.output)
        XCTAssertTrue(fft.output.contains("out of device memory on cuda:0 (RADAR fake CUDA device 0")
                      && fft.output.contains("(1000000000000 bytes) requested for the cuFFT work area (16x16 R2C, batch 2)")
                      && fft.output.contains("while sizing --batch 2: lower it"), fft.output)
    }

    /// A device fault (the fake's RADAR_FAKE_CUDA_FAULT: an illegal address, sticky as on a GPU)
    /// in the middle of training: one line naming the device, the call and CUDA's words, exit
    /// status 1, no crash report; the last checkpoint whole and no temporary left, so the run
    /// resumes from it.
    func testADeviceFaultStopsTrainingWithOneLineAndTheRunResumes() throws {
        let out = NSTemporaryDirectory() + "radar-fake-fault-\(UUID().uuidString.prefix(6))"
        defer { try? FileManager.default.removeItem(atPath: out) }
        let args = ["train", "--device", "cuda", "--data", MPITrainingTests.dataset, "--output", out, "--experiment", "e", "--config", "tiny",
                    "--batch-size", "8", "--num-epochs", "2", "--max-steps-per-epoch", "2", "--accumulation-steps", "1", "--threads", "1"]
        // One spectrum per batch: epoch 1 is 2 training batches and 8 validation batches (60
        // images), so the 12th cufftExecR2C is the second step of epoch 2.
        let r = try radar(args, environment: ["RADAR_FAKE_CUDA_FAULT": "cufftExecR2C:12"])
        XCTAssertEqual(r.status, 1, r.output)
        let last = r.output.split(separator: "\n").last.map(String.init) ?? ""
        XCTAssertTrue(last.hasPrefix("radar: error: cuFFT error on cuda:0 in cufftExecR2C(") && last.hasSuffix("CUFFT_EXEC_FAILED (6)"), r.output)
        XCTAssertTrue(r.output.contains("epoch 1/2") && !r.output.contains("epoch 2/2"), r.output)
        for crash in ["Fatal error", "Program crashed", "Backtrace", "Stack dump"] { XCTAssertFalse(r.output.contains(crash), r.output) }
        let files = try FileManager.default.contentsOfDirectory(atPath: out + "/e")
        XCTAssertTrue(files.contains("last.safetensors.lz4"), "\(files)")
        XCTAssertEqual(files.filter { $0.contains(".tmp") }, [], "no temporary left")
        let resumed = try radar(args + ["--resume", "auto"])
        XCTAssertEqual(resumed.status, 0, resumed.output)
        XCTAssertTrue(resumed.output.contains("epoch 2/2") && !resumed.output.contains("epoch 1/2"), resumed.output)
    }

    /// A fault in each library and kind of call: a kernel launch, a cuBLAS product, a download,
    /// a stream synchronisation. Each one line and exit status 1.
    func testDeviceFaultsInEveryCallAreOneLine() throws {
        let cases = [("cuLaunchKernel:1", "CUDA error on cuda:0 in cuLaunchKernel(radar_", "an illegal memory access was encountered (700)"),
                     ("cublasGemmStridedBatchedEx:3", "cuBLAS error on cuda:0 in cublasGemmStridedBatchedEx(m ", "the GPU program failed to execute (13)"),
                     ("cuMemcpyDtoHAsync_v2:1", "CUDA error on cuda:0 in cuMemcpyDtoHAsync(", "an illegal memory access was encountered (700)"),
                     ("cuStreamSynchronize:2", "CUDA error on cuda:0 in cuStreamSynchronize", "an illegal memory access was encountered (700)")]
        for (fault, call, words) in cases {
            let r = try radar(["bench", "step", "--device", "cuda", "--config", "tiny", "--batch", "2", "--repeats", "1"],
                              environment: ["RADAR_FAKE_CUDA_FAULT": fault])
            XCTAssertEqual(r.status, 1, "\(fault): \(r.output)")
            let errors = r.output.split(separator: "\n").filter { $0.contains("error") }
            XCTAssertEqual(errors.count, 1, "\(fault): \(r.output)")
            XCTAssertTrue(errors.first.map { $0.hasPrefix("radar: error: \(call)") && $0.hasSuffix(words) } ?? false, "\(fault): \(r.output)")
            XCTAssertFalse(r.output.contains("Fatal error"), r.output)
        }
    }

    /// One rank of two faults: it stops with its line, the other sees it go and stops too, naming
    /// it, within the timeout; no rank hangs. A cuBLAS product on the training thread, then the
    /// communication thread's wait for a bucket's download (cuEventSynchronize; the fault sticks,
    /// as an illegal address does, so the training thread's next call fails too: still one line).
    func testADeviceFaultOnOneRankEndsTheJob() throws {
        for (fault, line) in [("cublasGemmStridedBatchedEx:200", "error: cuBLAS error on cuda:0 in cublasGemmStridedBatchedEx("),
                              ("cuEventSynchronize:5", "error: CUDA error on cuda:0 in cuEventSynchronize (download ")] {
            let out = NSTemporaryDirectory() + "radar-fake-fault-dp-\(UUID().uuidString.prefix(6))"
            defer { try? FileManager.default.removeItem(atPath: out) }
            let start = Date()
            let r = try radar(["launch", "-n", "2", "--", "radar-worker", "--device", "cuda", "--allow-gpu-sharing", "--data", MPITrainingTests.dataset,
                               "--output", out, "--experiment", "dp", "--config", "tiny", "--batch-size", "4", "--num-epochs", "1",
                               "--max-steps-per-epoch", "4", "--accumulation-steps", "1", "--threads", "1", "--timeout", "20"],
                              environment: ["RADAR_FAKE_CUDA_FAULT": fault, "RADAR_FAKE_CUDA_FAULT_RANK": "1"])
            XCTAssertNotEqual(r.status, 0, "\(fault): \(r.output)")
            XCTAssertLessThan(Date().timeIntervalSince(start), 150, "\(fault): ends within the timeout, not the test's patience")
            XCTAssertTrue(r.output.contains(line), "\(fault): \(r.output)")
            XCTAssertEqual(r.output.split(separator: "\n").filter { $0.contains("error: CUDA error on") || $0.contains("error: cuBLAS error on") }.count,
                           1, "\(fault): one line from the faulting rank: \(r.output)")
            XCTAssertTrue(r.output.contains("rank 0: stopping: rank 1 lost"), "\(fault): the survivor names the rank that went: \(r.output)")
            XCTAssertFalse(r.output.contains("Fatal error"), "\(fault): \(r.output)")
        }
    }

    /// The fake's checks are what make the runs above mean something: it refuses what a real
    /// driver, cuBLAS and cuFFT refuse, with their codes.
    func testTheFakeDriverRefusesWhatTheRealLibrariesRefuse() throws {
        let h = try XCTUnwrap(dlopen(FakeDriverTests.library, RTLD_NOW | RTLD_LOCAL), String(cString: dlerror()))
        func f<T>(_ name: String, _ type: T.Type) throws -> T { try CUDALibraries.symbol(h, name, as: type) }
        let alloc = try f("cuMemAlloc_v2", DriverAPI.FnMemAlloc.self)
        let setCurrent = try f("cuCtxSetCurrent", DriverAPI.FnCtxSetCurrent.self)
        var d: UInt64 = 0
        XCTAssertEqual(alloc(&d, 64), 3, "before cuInit: CUDA_ERROR_NOT_INITIALIZED")
        XCTAssertEqual(try f("cuInit", DriverAPI.FnInit.self)(0), 0)
        var context: OpaquePointer?
        XCTAssertEqual(try f("cuDevicePrimaryCtxRetain", DriverAPI.FnPrimaryCtxRetain.self)(&context, 0), 0)
        XCTAssertEqual(alloc(&d, 64), 201, "no current context: CUDA_ERROR_INVALID_CONTEXT")
        XCTAssertEqual(setCurrent(context), 0)
        XCTAssertEqual(alloc(&d, 64), 0)
        // Another thread has no current context until it makes one current.
        final class Status: @unchecked Sendable { var value: Int32 = -1 }
        let other = Status()
        let done = DispatchSemaphore(value: 0)
        Thread { var q: UInt64 = 0; other.value = alloc(&q, 64); done.signal() }.start()
        done.wait()
        XCTAssertEqual(other.value, 201)

        // Copies stay inside one allocation, in the direction named.
        let htod = try f("cuMemcpyHtoDAsync_v2", DriverAPI.FnHtoDAsync.self), dtoh = try f("cuMemcpyDtoHAsync_v2", DriverAPI.FnDtoHAsync.self)
        var host = [UInt8](repeating: 7, count: 128)
        XCTAssertEqual(htod(d, &host, 64, nil), 0)
        XCTAssertEqual(htod(d, &host, 65, nil), 1, "past the allocation")
        XCTAssertEqual(htod(d, UnsafeRawPointer(bitPattern: UInt(d))!, 8, nil), 1, "device memory as the host source")
        XCTAssertEqual(dtoh(&host, d + 60, 8, nil), 1)
        XCTAssertEqual(dtoh(&host, d, 64, nil), 0)
        XCTAssertEqual(host[0], 7)

        // Modules: a CUBIN for this architecture only; kernels by the names it contains.
        let load = try f("cuModuleLoadData", DriverAPI.FnModuleLoadData.self), get = try f("cuModuleGetFunction", DriverAPI.FnModuleGetFunction.self)
        let family = try XCTUnwrap(KernelSources.all.first { $0.name == "elementwise" })
        let nvrtc = try NVRTC()
        let sm90 = try nvrtc.compileCUBIN(family.source, name: family.name, architecture: "sm_90", options: KernelSources.options(include: nil))
        let sm80 = try nvrtc.compileCUBIN(family.source, name: family.name, architecture: "sm_80", options: KernelSources.options(include: nil))
        var module: OpaquePointer?
        XCTAssertEqual(Array("// PTX text\n.version 8.0\n".utf8CString).withUnsafeBytes { load(&module, $0.baseAddress!) }, 200, "PTX: CUDA_ERROR_INVALID_IMAGE")
        XCTAssertEqual(sm80.withUnsafeBytes { load(&module, $0.baseAddress!) }, 209, "sm_80 on 9.0: CUDA_ERROR_NO_BINARY_FOR_GPU")
        XCTAssertEqual(sm90.withUnsafeBytes { load(&module, $0.baseAddress!) }, 0)
        var function: OpaquePointer?
        XCTAssertEqual(get(&function, module, "radar_adamw"), 500, "a kernel of another family: CUDA_ERROR_NOT_FOUND")
        XCTAssertEqual(get(&function, module, "radar_fill"), 0)
        let launch = try f("cuLaunchKernel", DriverAPI.FnLaunchKernel.self)
        let args = KernelArgs(.raw(UnsafeMutableRawPointer(bitPattern: UInt(d))), .i64(16), .f32(1))
        let status = args.withArgumentArray { argv in
            launch(function, 1, 1, 1, 2048, 1, 1, 0, nil, argv, nil)
        }
        XCTAssertEqual(status, 1, "2048 threads per block: CUDA_ERROR_INVALID_VALUE")

        // cuBLAS: the leading dimension rule and host scalars.
        var blas: OpaquePointer?
        XCTAssertEqual(try f("cublasCreate_v2", DriverAPI.FnBlasCreate.self)(&blas), 0)
        let gemm = try f("cublasGemmStridedBatchedEx", DriverAPI.FnBlasGemmEx.self)
        var a: UInt64 = 0, c: UInt64 = 0
        XCTAssertEqual(alloc(&a, 4 * 16), 0)
        XCTAssertEqual(alloc(&c, 4 * 16), 0)
        let pa = UnsafeRawPointer(bitPattern: UInt(a)), pc = UnsafeMutableRawPointer(bitPattern: UInt(c))
        var one: Float = 1, zero: Float = 0
        func product(lda: Int32, alpha: UnsafeRawPointer) -> Int32 {
            gemm(blas, 0, 0, 4, 4, 4, alpha, pa, 0, lda, 0, pa, 0, 4, 0, &zero, pc, 0, 4, 0, 1, 68, -1)
        }
        XCTAssertEqual(product(lda: 4, alpha: &one), 0)
        XCTAssertEqual(product(lda: 3, alpha: &one), 7, "lda < m: CUBLAS_STATUS_INVALID_VALUE")
        XCTAssertEqual(product(lda: 4, alpha: pa!), 7, "alpha in device memory with the host pointer mode")

        // cuFFT: only the plan DriverAPI makes (2-D R2C, basic layout), and its work area: with
        // auto-allocation off, device memory of the size the plan reported, set before it runs.
        var plan: Int32 = 0
        var dims: [Int32] = [8, 8]
        var need = 0
        let create = try f("cufftCreate", DriverAPI.FnFFTCreate.self), make = try f("cufftMakePlanMany", DriverAPI.FnFFTMakePlanMany.self)
        let setWork = try f("cufftSetWorkArea", DriverAPI.FnFFTSetWorkArea.self), exec = try f("cufftExecR2C", DriverAPI.FnFFTExecR2C.self)
        XCTAssertEqual(create(&plan), 0)
        XCTAssertEqual(make(plan, 2, &dims, nil, 1, 0, nil, 1, 0, 0x29, 1, &need), 3, "C2C: CUFFT_INVALID_TYPE")
        XCTAssertEqual(try f("cufftSetAutoAllocation", DriverAPI.FnFFTSetAutoAllocation.self)(plan, 0), 0)
        XCTAssertEqual(make(plan, 2, &dims, nil, 1, 0, nil, 1, 0, 0x2a, 1, &need), 0)
        XCTAssertEqual(need, 8 * 5 * 8, "one complex spectrum")
        var input: UInt64 = 0, output: UInt64 = 0, work: UInt64 = 0
        XCTAssertEqual(alloc(&input, 8 * 8 * 4), 0)
        XCTAssertEqual(alloc(&output, 8 * 5 * 8), 0)
        XCTAssertEqual(alloc(&work, need), 0)
        let pi = UnsafeMutableRawPointer(bitPattern: UInt(input)), po = UnsafeMutableRawPointer(bitPattern: UInt(output))
        XCTAssertEqual(exec(plan, pi, po), 4, "no work area set: CUFFT_INVALID_VALUE")
        XCTAssertEqual(setWork(plan, UnsafeMutableRawPointer(bitPattern: UInt(a))), 4, "a work area smaller than the plan needs")
        XCTAssertEqual(setWork(plan, UnsafeMutableRawPointer(bitPattern: UInt(work))), 0)
        XCTAssertEqual(exec(plan, pi, po), 0)
        XCTAssertEqual(try f("cuMemFree_v2", DriverAPI.FnMemFree.self)(work), 0)
        XCTAssertEqual(exec(plan, pi, po), 4, "its work area freed")
        XCTAssertEqual(setCurrent(nil), 0)
    }
}

extension MPITrainingTests {
    /// `mpirun -n 2 radar-worker --device cuda` through DriverAPI on two fake GPUs: each rank opens
    /// the device of its local rank (rank 1 retains device 1's primary context), replicas agree.
    func testTwoRanksOnTwoFakeGPUsThroughDriverAPI() throws {
        var env = FakeDriverTests.environment
        env["RADAR_FAKE_CUDA_DEVICES"] = "2"
        let r = try mpirun([(2, "radar-worker", cudaArgs(tmp("fake2"), device: "cuda"))], timeout: 600, env: env)
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertEqual(hashes(r.out).count, 2, r.out)
        XCTAssertEqual(Set(hashes(r.out)).count, 1, "replicas agree: \(hashes(r.out))")
        for rank in 0..<2 {
            XCTAssertTrue(r.err.contains("local rank \(rank) of 2): cuda:\(rank) (RADAR fake CUDA device \(rank), sm_90"), "rank \(rank):\n\(r.err)")
        }
    }
}
