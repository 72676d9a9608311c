import Foundation
import RadarCore
import XCTest

/// `mpirun -n 2 radar-worker --device cuda` on the emulated device (RADAR_CUDA_DRIVER=emulator):
/// each rank opens the GPU of its local rank, replicas stay bit-identical (`--verify-replicas`
/// hashes them after every step), and the result is the CPU path's within what 3 AdamW steps
/// allow; more local ranks than GPUs is a one-line error naming both counts.
extension MPITrainingTests {
    func cudaArgs(_ out: String, device: String) -> [String] {
        ["--data", MPITrainingTests.dataset, "--output", out, "--experiment", "e", "--config", "tiny", "--batch-size", "4",
         "--num-epochs", "1", "--max-steps-per-epoch", "3", "--accumulation-steps", "1", "--threads", "1", "--timeout", "120",
         "--device", device, "--precision", "fp32", "--verify-replicas"]
    }

    func testTwoRanksOnTwoEmulatedGPUsStayIdenticalAndMatchTheCPU() throws {
        let gpu = tmp("cuda2"), cpu = tmp("cpu2")
        let env = ["RADAR_CUDA_DRIVER": "emulator", "RADAR_EMULATED_DEVICES": "2"]
        let r = try mpirun([(2, "radar-worker", cudaArgs(gpu, device: "cuda"))], timeout: 600, env: env)
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertEqual(Set(hashes(r.out)).count, 1, "replicas agree:\n\(r.out)")
        XCTAssertEqual(hashes(r.out).count, 2)
        for rank in 0..<2 {
            XCTAssertTrue(r.err.contains("radar-worker rank \(rank) (host ") && r.err.contains("local rank \(rank) of 2): cuda:\(rank) (emulated device"),
                          "rank \(rank) logs its GPU:\n\(r.err)")
        }
        let c = try mpirun([(2, "radar-worker", cudaArgs(cpu, device: "cpu"))], timeout: 300)
        XCTAssertEqual(c.status, 0, c.err)
        let a = try Checkpoint.read(gpu + "/e/last.safetensors.lz4"), b = try Checkpoint.read(cpu + "/e/last.safetensors.lz4")
        XCTAssertEqual(a.state.optimizerStep, 3)
        XCTAssertEqual(b.state.optimizerStep, 3)
        // Round-off in near-zero gradients can flip an Adam update (at most about lr = 5e-4 per
        // step after warm-up scaling); everything else agrees to float precision.
        var diffs: [Float] = []
        for (k, t) in b.tensors where t.dtype == .f32 {
            let g = try XCTUnwrap(a.tensors[k], k).floats
            for (x, y) in zip(g, t.floats) { diffs.append(abs(x - y)) }
        }
        diffs.sort()
        XCTAssertGreaterThan(diffs.count, 10_000)
        XCTAssertLessThan(diffs[diffs.count / 2], 1e-6, "median parameter difference")
        XCTAssertLessThan(diffs.last!, 3 * 5e-4 * 1.5, "largest parameter difference")
    }

    /// Buckets through the copy stream (one per parameter here, so backward marks many of them
    /// while it runs; the emulator stops on a copy before its mark or an upload never waited for):
    /// overlapped and sequential give the same bits, and so do the ranks with bf16 on the wire.
    func testEmulatedGPUBucketsThroughTheCopyStreamOverlapAndBF16() throws {
        let env = ["RADAR_CUDA_DRIVER": "emulator", "RADAR_EMULATED_DEVICES": "2"]
        func run(_ extra: [String]) throws -> String {
            let r = try mpirun([(2, "radar-worker", cudaArgs(tmp("stage"), device: "cuda") + ["--bucket-mb", "0", "--stop-after-steps", "2"] + extra)],
                               timeout: 600, env: env)
            XCTAssertEqual(r.status, 0, r.err)
            XCTAssertTrue(r.err.contains("via two copy streams (down, up) and page-locked host memory"), r.err)
            let h = hashes(r.out)
            XCTAssertEqual(h.count, 2, r.out)
            XCTAssertEqual(Set(h).count, 1, "replicas agree: \(h)")
            return h.first ?? ""
        }
        let overlapped = try run([]), sequential = try run(["--no-overlap"]), bf16 = try run(["--grad-dtype", "bf16"])
        XCTAssertEqual(overlapped, sequential)
        XCTAssertNotEqual(overlapped, bf16)
    }

    /// Four ranks on four emulated GPUs stay identical; two ranks resumed after 2 of 4 steps end
    /// with the bits of an uninterrupted run (device state, optimizer moments, the data position).
    func testFourEmulatedGPUsAgreeAndTwoRankDeviceResumeIsBitIdentical() throws {
        let four = try mpirun([(4, "radar-worker", cudaArgs(tmp("cuda4"), device: "cuda") + ["--stop-after-steps", "2"])], timeout: 600,
                              env: ["RADAR_CUDA_DRIVER": "emulator", "RADAR_EMULATED_DEVICES": "4"])
        XCTAssertEqual(four.status, 0, four.err)
        XCTAssertEqual(hashes(four.out).count, 4, four.out)
        XCTAssertEqual(Set(hashes(four.out)).count, 1, "replicas agree: \(hashes(four.out))")
        try assertTwoRankResumeIsBitIdentical(env: ["RADAR_CUDA_DRIVER": "emulator", "RADAR_EMULATED_DEVICES": "2"]) { out in
            cudaArgs(out, device: "cuda")
        }
    }

    /// SyncBatchNorm with the statistics on emulated GPUs: 2 ranks x batch 4 equal 1 rank x batch 8.
    func testSyncBatchNormOnEmulatedGPUsEqualsOneProcess() throws {
        try assertSyncBatchNormRanksEqualOneProcess(extra: ["--device", "cuda", "--precision", "fp32", "--timeout", "120"],
                                                    env: ["RADAR_CUDA_DRIVER": "emulator", "RADAR_EMULATED_DEVICES": "2"])
    }

    /// kill -9 of a rank training on an emulated GPU ends the job within the timeout, naming it.
    func testKilledRankOnAnEmulatedGPUStopsTheJobNamingIt() throws {
        let out = tmp("cudakill")
        try assertKilledRankStopsTheJob(out: out, args: workerArgs(out, ["--device", "cuda", "--precision", "fp32"]),
                                        env: ["RADAR_CUDA_DRIVER": "emulator", "RADAR_EMULATED_DEVICES": "2"])
    }

    func testMoreLocalRanksThanGPUsIsAnErrorNamingBoth() throws {
        let r = try mpirun([(2, "radar-worker", cudaArgs(tmp("cuda1"), device: "cuda"))], timeout: 120,
                           env: ["RADAR_CUDA_DRIVER": "emulator", "RADAR_EMULATED_DEVICES": "1"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.err.contains("2 ranks on this host but 1 GPU visible"), r.err)
        XCTAssertTrue(r.err.contains("--allow-gpu-sharing"), r.err)
    }
}
