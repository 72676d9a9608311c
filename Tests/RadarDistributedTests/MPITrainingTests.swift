import Foundation
import RadarCore
import XCTest

/// Real multi-process runs under `mpirun` (with --oversubscribe, and --allow-run-as-root as root).
final class MPITrainingTests: XCTestCase {
    static let products = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    static var dataset: String = {
        let dir = NSTemporaryDirectory() + "radar-mpi-data-\(getpid())"
        var o = PrepareOptions(output: dir)
        o.valFraction = 0.2
        o.shardSize = 100
        _ = try! DatasetPreparer(options: o).run(SyntheticSource(size: 32, count: 240, seed: 4, difficulty: 0.2, framesPerSequence: 4))
        return dir
    }()

    func tmp(_ name: String) -> String { NSTemporaryDirectory() + "radar-mpi-\(name)-\(UUID().uuidString.prefix(6))" }

    /// mpirun with the given per-app argument lists (MPMD when several).
    func mpirun(_ apps: [(ranks: Int, program: String, args: [String])], timeout: TimeInterval = 240,
                env extra: [String: String] = [:], appEnv: [[String: String]] = []) throws -> (status: Int32, out: String, err: String) {
        var argv = ["mpirun", "--oversubscribe"]
        if geteuid() == 0 { argv.append("--allow-run-as-root") }
        for (i, app) in apps.enumerated() {
            if i > 0 { argv.append(":") }
            argv += ["-n", String(app.ranks)]
            // This app context's own environment (-x there applies to its ranks only).
            for (k, v) in (i < appEnv.count ? appEnv[i] : [:]).sorted(by: { $0.key < $1.key }) { argv += ["-x", "\(k)=\(v)"] }
            argv += [MPITrainingTests.products.appendingPathComponent(app.program).path] + app.args
        }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = argv
        var env = ProcessInfo.processInfo.environment
        env["OPENBLAS_NUM_THREADS"] = "1"
        env.merge(extra) { $1 }
        p.environment = env
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let o = PipeReader(out), e = PipeReader(err)
        let deadline = DispatchTime.now() + timeout
        if !o.wait(until: deadline) || !e.wait(until: deadline) { p.terminate(); XCTFail("mpirun timed out: \(argv)") }
        p.waitUntilExit()
        return (p.terminationStatus, o.text, e.text)
    }

    func workerArgs(_ out: String, _ extra: [String] = []) -> [String] {
        ["--data", MPITrainingTests.dataset, "--output", out, "--experiment", "e", "--config", "tiny", "--batch-size", "4",
         "--num-epochs", "1", "--max-steps-per-epoch", "3", "--accumulation-steps", "1", "--threads", "1", "--timeout", "20"] + extra
    }

    func hashes(_ out: String) -> [String] {
        out.split(separator: "\n").filter { $0.hasPrefix("rank ") && $0.contains("fnv1a") }.map { String($0.split(separator: " ")[4]) }
    }

    func assertReplicasAgree(ranks: Int, extra: [String] = [], out: String? = nil, file: StaticString = #filePath, line: UInt = #line) throws -> String {
        let r = try mpirun([(ranks, "radar-worker", workerArgs(out ?? tmp("agree"), extra))])
        XCTAssertEqual(r.status, 0, "mpirun -n \(ranks) failed:\n\(r.err)", file: file, line: line)
        let h = hashes(r.out)
        XCTAssertEqual(h.count, ranks, "every rank reports its parameter hash:\n\(r.out)\n\(r.err)", file: file, line: line)
        XCTAssertEqual(Set(h).count, 1, "ranks disagree: \(h)", file: file, line: line)
        return h.first ?? ""
    }

    func testTwoAndFourRanksStayBitIdenticalAfterEveryStep() throws {
        // --verify-replicas compares every rank's parameter+buffer hash after each optimizer step.
        _ = try assertReplicasAgree(ranks: 2, extra: ["--verify-replicas"])
        _ = try assertReplicasAgree(ranks: 4, extra: ["--verify-replicas"])
    }

    func testOverlappedAndSequentialAllReduceGiveIdenticalParameters() throws {
        // Small buckets so several are reduced while backward runs.
        let (o1, o2) = (tmp("overlap"), tmp("sequential"))
        let overlapped = try assertReplicasAgree(ranks: 2, extra: ["--bucket-mb", "0"], out: o1)
        let sequential = try assertReplicasAgree(ranks: 2, extra: ["--bucket-mb", "0", "--no-overlap"], out: o2)
        XCTAssertEqual(overlapped, sequential)
        // The epoch line carries the communication figures: all of it exposed without overlap.
        func epochLine(_ out: String) throws -> [String: Any] {
            let text = try String(contentsOfFile: out + "/e/metrics.jsonl", encoding: .utf8)
            let line = text.split(separator: "\n").last { $0.contains("\"train_loss\"") && $0.contains("\"val\"") }
            return try JSONSerialization.jsonObject(with: Data((line ?? "{}").utf8)) as? [String: Any] ?? [:]
        }
        let a = try epochLine(o1), b = try epochLine(o2)
        for e in [a, b] {
            XCTAssertGreaterThan(e["allreduce_seconds"] as? Double ?? 0, 0, "\(e)")
            XCTAssertGreaterThan(e["step_seconds"] as? Double ?? 0, e["allreduce_exposed_seconds"] as? Double ?? .infinity, "\(e)")
            let wait = e["data_wait_seconds"] as? Double ?? -1
            XCTAssertTrue(wait >= 0 && wait < e["step_seconds"] as? Double ?? 0, "time blocked on the loader, within the step: \(e)")
            let f = e["overlap_fraction"] as? Double ?? -1
            XCTAssertTrue(f >= 0 && f <= 1, "\(e)")
        }
        XCTAssertEqual(b["overlap_fraction"] as? Double, 0, "nothing hidden without overlap: \(b)")
        // TensorBoard: rank 0's event file alone.
        let events = try FileManager.default.contentsOfDirectory(atPath: o1 + "/e/tensorboard")
        XCTAssertEqual(events.count, 1, "\(events)")
        XCTAssertTrue(events.allSatisfy { $0.hasPrefix("events.out.tfevents.") }, "\(events)")
        XCTAssertGreaterThanOrEqual(b["allreduce_exposed_seconds"] as? Double ?? 0, b["allreduce_seconds"] as? Double ?? .infinity)
    }

    /// One rank reduces nothing: no bandwidth (it was the buffer over a no-op's time, 8,388
    /// GB/s), a note saying how to measure one; two ranks give numbers.
    func testOneRankAllReduceBenchGivesNoBandwidth() throws {
        for ranks in [1, 2] {
            let r = try mpirun([(ranks, "radar", ["bench", "allreduce", "--sizes", "1", "--repeats", "1"])])
            XCTAssertEqual(r.status, 0, r.err)
            let json = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.out.utf8)) as? [String: Any], r.out)
            XCTAssertEqual(json["ranks"] as? Int, ranks)
            for k in ["ring_algbw_gbs", "ring_busbw_gbs", "mpi_algbw_gbs", "busbw_ratio_ring_over_mpi"] {
                if ranks == 1 { XCTAssertTrue(json[k] is NSNull, "\(k): \(json)") } else { XCTAssertGreaterThan(json[k] as? Double ?? 0, 0, "\(k): \(json)") }
            }
            XCTAssertEqual(json["note"] as? String, ranks == 1 ? "one rank: nothing is reduced, so no bandwidth (run it under mpirun -n N, or as N TCP ranks)" : nil)
            // Two TCP connections per pair of ranks on different hosts unless the environment says.
            XCTAssertEqual(json["openmpi_btl_tcp_links"] as? String, "2", "\(json)")
        }
        let chosen = try mpirun([(2, "radar", ["bench", "allreduce", "--sizes", "1", "--repeats", "1"])], env: ["OMPI_MCA_btl_tcp_links": "3"])
        XCTAssertEqual(chosen.status, 0, chosen.err)
        XCTAssertTrue(chosen.out.contains("\"openmpi_btl_tcp_links\":\"3\""), chosen.out)
    }

    func testRingAllReduceMatchesMPIAllreduceOnUnevenLengths() throws {
        for ranks in [2, 3, 4] {
            let r = try mpirun([(ranks, "radar", ["bench", "allreduce", "--verify"])])
            XCTAssertEqual(r.status, 0, r.err)
            let json = try JSONSerialization.jsonObject(with: Data(r.out.utf8)) as! [String: Any]
            XCTAssertEqual(json["bit_identical_across_ranks"] as? Bool, true, "\(ranks) ranks")
            // Sums in another order: float round-off only (relative 1e-6).
            XCTAssertLessThanOrEqual(json["max_rel_diff_vs_mpi_allreduce"] as! Double, 1e-6, "\(ranks) ranks")
            XCTAssertTrue((json["lengths"] as! [Int]).contains(ranks - 1), "a length smaller than the world size")
            // bf16 on the wire: p roundings (p-1 forwarded partial sums, then the result), each at
            // most 2^-8 of the sum of |inputs|; and not exact, so bf16 did travel.
            let b = try mpirun([(ranks, "radar", ["bench", "allreduce", "--verify", "--grad-dtype", "bf16"])])
            XCTAssertEqual(b.status, 0, b.err)
            let bj = try JSONSerialization.jsonObject(with: Data(b.out.utf8)) as! [String: Any]
            XCTAssertEqual(bj["bit_identical_across_ranks"] as? Bool, true, "bf16, \(ranks) ranks")
            let d = bj["max_rel_diff_vs_mpi_allreduce"] as! Double
            XCTAssertLessThanOrEqual(d, Double(ranks) * 0x1p-8, "bf16, \(ranks) ranks")
            XCTAssertGreaterThan(d, 1e-4, "bf16, \(ranks) ranks: the sums were rounded")
        }
    }

    /// Ranks on several hosts (each app context its own `RADAR_HOST_NAME`, as a launcher on
    /// several nodes gives them their node names) reduce in two levels: within each host, then one
    /// ring of hosts per local index. Every rank ends with the same bits, within float round-off
    /// of MPI_Allreduce (bf16 on the wire: within its roundings), training keeps replicas
    /// identical; uneven hosts, or one rank with `RADAR_HIERARCHICAL_ALLREDUCE=0`, keep the ring.
    func testRanksOnSeveralHostsReduceInTwoLevels() throws {
        let hosts = [["RADAR_HOST_NAME": "pod-a"], ["RADAR_HOST_NAME": "pod-b"]]
        for wire in ["fp32", "bf16"] {
            let args = ["bench", "allreduce", "--verify", "--grad-dtype", wire]
            let r = try mpirun([(2, "radar", args), (2, "radar", args)], appEnv: hosts)
            XCTAssertEqual(r.status, 0, r.err)
            let json = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.out.utf8)) as? [String: Any], r.out)
            XCTAssertEqual(json["algorithm"] as? String, "2 levels: 2 hosts x 2 ranks", "\(json)")
            XCTAssertEqual(json["bit_identical_across_ranks"] as? Bool, true, "\(wire): \(json)")
            let d = try XCTUnwrap(json["max_rel_diff_vs_mpi_allreduce"] as? Double)
            if wire == "fp32" { XCTAssertLessThanOrEqual(d, 1e-6) } else {
                XCTAssertLessThanOrEqual(d, 4 * 0x1p-8)
                XCTAssertGreaterThan(d, 1e-4, "the sums were rounded")
            }
        }
        // Three ranks on one host and one on another, or a refusal: one ring.
        let uneven = try mpirun([(3, "radar", ["bench", "allreduce", "--verify"]), (1, "radar", ["bench", "allreduce", "--verify"])], appEnv: hosts)
        XCTAssertEqual(uneven.status, 0, uneven.err)
        XCTAssertTrue(uneven.out.contains("\"algorithm\":\"ring\""), uneven.out)
        var refusing = hosts
        refusing[1]["RADAR_HIERARCHICAL_ALLREDUCE"] = "0"
        let refused = try mpirun([(2, "radar", ["bench", "allreduce", "--verify"]), (2, "radar", ["bench", "allreduce", "--verify"])], appEnv: refusing)
        XCTAssertEqual(refused.status, 0, refused.err)
        XCTAssertTrue(refused.out.contains("\"algorithm\":\"ring\""), refused.out)
        // Training: every rank's parameters identical after every step, rank 0 naming the algorithm.
        let out = tmp("two-levels"), args = workerArgs(out, ["--verify-replicas", "--bucket-mb", "0"])
        let t = try mpirun([(2, "radar-worker", args), (2, "radar-worker", args)], appEnv: hosts)
        XCTAssertEqual(t.status, 0, t.err)
        XCTAssertTrue(t.err.contains("all-reduce in 2 levels: 2 hosts x 2 ranks"), t.err)
        let h = hashes(t.out)
        XCTAssertEqual(h.count, 4, t.out)
        XCTAssertEqual(Set(h).count, 1, "ranks disagree: \(h)")
    }

    /// --grad-dtype bf16: replicas stay bit-identical, the parameters differ from the fp32 run's
    /// (so bf16 travelled) by at most what AdamW's per-step move allows, and a rank with the other
    /// setting is refused by the fingerprint.
    func testBF16GradientsKeepReplicasIdenticalAndCloseToFP32() throws {
        func run(_ extra: [String]) throws -> (hash: String, state: [String: SafeTensor]) {
            let out = tmp("wire")
            let r = try mpirun([(2, "radar-worker", workerArgs(out, ["--verify-replicas", "--bucket-mb", "0", "--stop-after-steps", "3"] + extra))])
            XCTAssertEqual(r.status, 0, r.err)
            let h = hashes(r.out)
            XCTAssertEqual(h.count, 2, r.out + r.err)
            XCTAssertEqual(Set(h).count, 1, "ranks disagree: \(h)")
            if !extra.isEmpty { XCTAssertTrue(r.err.contains("gradients as bf16"), r.err) }
            return (h.first ?? "", try Checkpoint.read(out + "/e/last.safetensors.lz4").tensors)
        }
        let fp32 = try run([]), bf16 = try run(["--grad-dtype", "bf16"])
        XCTAssertNotEqual(fp32.hash, bf16.hash, "bf16 gradients change the result")
        var diffs: [Float] = []
        for (k, t) in fp32.state where !k.hasPrefix("optim.") && t.dtype == .f32 {
            diffs += zip(t.floats, bf16.state[k]!.floats).map { abs($0 - $1) }
        }
        diffs.sort()
        let median = diffs[diffs.count / 2], worst = diffs.last!
        print("grad-dtype bf16 vs fp32 after 3 steps: median |diff| \(median), max \(worst) over \(diffs.count) values")
        // AdamW moves a weight by at most about lr (5e-4) per step whatever the gradient's size.
        XCTAssertLessThan(worst, 2 * 5e-4 * 3)
        XCTAssertLessThan(median, 1e-5)
        let out = tmp("wire-mismatch")
        let r = try mpirun([(1, "radar-worker", workerArgs(out)), (1, "radar-worker", workerArgs(out, ["--grad-dtype", "bf16"]))], timeout: 120)
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.err.contains("ranks disagree on grad-dtype"), r.err)
    }

    /// A GPU rank's gradient path timed in parts: download, ring, upload (on the emulated device).
    func testAllReduceBenchOnADeviceReportsStagingApart() throws {
        let r = try mpirun([(2, "radar", ["bench", "allreduce", "--sizes", "1", "--repeats", "1", "--device", "cuda"])],
                           env: ["RADAR_CUDA_DRIVER": "emulator", "RADAR_EMULATED_DEVICES": "2"])
        XCTAssertEqual(r.status, 0, r.err)
        let json = try JSONSerialization.jsonObject(with: Data(r.out.utf8)) as! [String: Any]
        XCTAssertTrue((json["device"] as? String ?? "").hasPrefix("cuda:0 (emulated device"), "\(json)")
        XCTAssertEqual(json["staging"] as? String, "copy stream, page-locked", "the trainer's path: \(json)")
        for k in ["staging_download_seconds", "staging_upload_seconds", "device_total_seconds", "ring_seconds", "bucketed_seconds"] {
            XCTAssertGreaterThan(json[k] as? Double ?? 0, 0, k)
        }
        XCTAssertEqual(json["buckets"] as? Int, 1, "1 MB: one bucket of the trainer's 10 MiB")
    }

    func testSyncBatchNormRanksEqualOneProcessWithTheWholeBatch() throws {
        try assertSyncBatchNormRanksEqualOneProcess()
    }

    /// dropout 0 and no augmentation: 2 ranks x batch 4 with SyncBatchNorm is the same function as
    /// 1 rank x batch 8 (tolerance: float round-off of sums in another order). `extra`/`env` put
    /// the ranks on a device.
    func assertSyncBatchNormRanksEqualOneProcess(extra: [String] = [], env: [String: String] = [:],
                                                 file: StaticString = #filePath, line: UInt = #line) throws {
        let cfg = tmp("cfg") + ".json"
        try Data(#"{"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 3, "evidence_dim": 16, "fft_size": 16, "dropout": 0, "branch_dropout": 0}"#.utf8)
            .write(to: URL(fileURLWithPath: cfg))
        func run(_ ranks: Int, batch: Int) throws -> [String: SafeTensor] {
            let out = tmp("syncbn")
            var args = workerArgs(out, ["--sync-bn", "--no-augment", "--stop-after-steps", "3"] + extra)
            args[args.firstIndex(of: "--config")! + 1] = cfg
            args[args.firstIndex(of: "--batch-size")! + 1] = String(batch)
            let r = try mpirun([(ranks, "radar-worker", args)], timeout: 600, env: env)
            XCTAssertEqual(r.status, 0, r.err, file: file, line: line)
            XCTAssertTrue(env["RADAR_CUDA_DRIVER"] == nil || r.err.contains("(emulated device"), "ranks on the emulated device:\n\(r.err)",
                          file: file, line: line)
            // Each rank's start line names its kernel choices on a GPU (the emulated device runs
            // fp32 by default: attention by products; the epilogues through its cuBLASLt).
            XCTAssertTrue(env["RADAR_CUDA_DRIVER"] == nil || r.err.contains("fp32; attention by products, biases in cuBLASLt epilogues"),
                          "the start line's kernel settings:\n\(r.err)", file: file, line: line)
            return try Checkpoint.read(out + "/e/last.safetensors.lz4").tensors
        }
        let two = try run(2, batch: 4), one = try run(1, batch: 8)
        // Tensors whose exact gradient is zero (conv bias before train-mode BatchNorm, key biases)
        // and the running means those biases feed: AdamW turns their round-off into moves of up to
        // about lr per step (MODEL.md parity notes), so they get 2 x lr x steps; the rest 2e-4.
        let zeroGradient = ["edge_encoder.0.bias", "edge_encoder.3.bias", "edge_encoder.6.bias", "freq_encoder.0.bias",
                            "freq_encoder.3.bias", "freq_encoder.6.bias", "k_proj.bias", "qkv.bias",
                            "encoder.1.running_mean", "encoder.4.running_mean", "encoder.7.running_mean"]
        var worst: Float = 0, worstName = ""
        for (k, t) in one where !k.hasPrefix("optim.") && t.dtype != .i64 {
            let d = zip(t.floats, two[k]!.floats).map { abs($0 - $1) }.max() ?? 0
            if zeroGradient.contains(where: { k.hasSuffix($0) }) {
                XCTAssertLessThan(d, 2 * 5e-4 * 3, "\(k) (zero-gradient tensor)", file: file, line: line)
            } else if d > worst { worst = d; worstName = k }
        }
        print("sync-bn equivalence\(extra.isEmpty ? "" : " (\(extra.joined(separator: " ")))"): max |2x4 - 1x8| after 3 steps = \(worst) (\(worstName))")
        XCTAssertLessThan(worst, 2e-4, "largest difference in \(worstName)", file: file, line: line)
        XCTAssertGreaterThan(two.count, 50, "tensors compared", file: file, line: line)
    }

    func testConfigMismatchBetweenRanksStopsWithAClearError() throws {
        let out = tmp("mismatch")
        var other = workerArgs(out)
        other[other.firstIndex(of: "--batch-size")! + 1] = "2"
        let r = try mpirun([(1, "radar-worker", workerArgs(out)), (1, "radar-worker", other)], timeout: 120)
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.err.contains("ranks disagree on batch size") && r.err.contains("rank 0=4 vs rank 1=2"), r.err)
        // A different model config on one rank.
        let cfg = tmp("depth1") + ".json"
        try Data(#"{"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 1, "num_heads": 3, "evidence_dim": 16, "fft_size": 16}"#.utf8)
            .write(to: URL(fileURLWithPath: cfg))
        var shallow = workerArgs(out)
        shallow[shallow.firstIndex(of: "--config")! + 1] = cfg
        let r2 = try mpirun([(1, "radar-worker", workerArgs(out)), (1, "radar-worker", shallow)], timeout: 120)
        XCTAssertNotEqual(r2.status, 0)
        XCTAssertTrue(r2.err.contains("ranks disagree on config"), r2.err)
    }

    func testKilledRankStopsTheJobNamingIt() throws {
        let out = tmp("kill")
        try assertKilledRankStopsTheJob(out: out, args: workerArgs(out))
    }

    /// kill -9 of one of two ranks once training runs: mpirun ends the job within the timeout,
    /// naming the rank, and no rank is left running. `args` are radar-worker's (made endless here).
    func assertKilledRankStopsTheJob(out: String, args: [String], env extra: [String: String] = [:],
                                     file: StaticString = #filePath, line: UInt = #line) throws {
        var args = args
        args[args.firstIndex(of: "--num-epochs")! + 1] = "50"
        args[args.firstIndex(of: "--max-steps-per-epoch")! + 1] = "0"
        var argv = ["mpirun", "--oversubscribe"]
        if geteuid() == 0 { argv.append("--allow-run-as-root") }
        argv += ["-n", "2", MPITrainingTests.products.appendingPathComponent("radar-worker").path] + args
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = argv
        var env = ProcessInfo.processInfo.environment
        env["OPENBLAS_NUM_THREADS"] = "1"
        env.merge(extra) { $1 }
        p.environment = env
        let err = Pipe()
        p.standardError = err
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        // Wait until training runs (a metrics.jsonl line), then kill -9 one rank.
        let pids = try Process.workersOnceTraining(out, launcher: p.processIdentifier)
        XCTAssertEqual(pids.count, 2, "two ranks running", file: file, line: line)
        let t0 = Date()
        if let victim = pids.last { kill(victim, SIGKILL) }
        p.waitUntilExit()
        let elapsed = Date().timeIntervalSince(t0)
        let text = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        XCTAssertNotEqual(p.terminationStatus, 0, file: file, line: line)
        XCTAssertLessThan(elapsed, 30, "the job ends within the timeout", file: file, line: line)
        // Whoever notices first names it: mpirun (signal 9), a peer's transport (waiting for rank
        // N), or the coordinator, whose lost connection can end the job before mpirun reports
        // (seen under load: "rank 1 lost (its connection closed)", then rank 0's MPI_Abort).
        XCTAssertTrue(text.contains("rank") && (text.contains("signal 9") || text.contains("Killed") || text.contains("waiting for rank")
                                                || text.range(of: #"rank [0-9]+ lost"#, options: .regularExpression) != nil), text,
                      file: file, line: line)
        usleep(500_000)
        let left = try String(decoding: Process.runCapturing(["pgrep", "-f", "radar-worker.*\(out)"]), as: UTF8.self)
        XCTAssertTrue(left.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty, "no rank left running: \(left)", file: file, line: line)
    }

    func testResumingWithAnotherWorldSizeNeedsTheFlagAndMapsThePosition() throws {
        let out = tmp("ws")
        func args(_ extra: [String]) -> [String] {
            var a = workerArgs(out, extra)
            a[a.firstIndex(of: "--max-steps-per-epoch")! + 1] = "0"  // whole epochs: the mapped position stays inside epoch 0
            return a
        }
        XCTAssertEqual(try mpirun([(2, "radar-worker", args(["--stop-after-steps", "2"]))]).status, 0)
        let refused = try mpirun([(1, "radar-worker", args(["--resume", "auto", "--stop-after-steps", "4"]))])
        XCTAssertNotEqual(refused.status, 0)
        XCTAssertTrue(refused.err.contains("world size 2") && refused.err.contains("allow-world-size-change"), refused.err)
        let mapped = try mpirun([(1, "radar-worker", args(["--resume", "auto", "--allow-world-size-change", "--stop-after-steps", "4"]))])
        XCTAssertEqual(mapped.status, 0, mapped.err)
        let st = try Checkpoint.read(out + "/e/last.safetensors.lz4").state
        XCTAssertEqual(st.worldSize, 1)
        XCTAssertEqual(st.optimizerStep, 4)
        // 2 steps x 2 ranks x batch 4 = 16 global samples = 4 single-rank batches consumed, then 2 more.
        XCTAssertEqual(st.dataPosition, 6)
    }

    /// Each rank reads the checkpoint from its own file system: a rank that cannot see rank 0's
    /// (here its own --output, as a host without the shared folder) would start afresh while
    /// rank 0 resumed. The ranks compare their starting states and stop at once, naming each
    /// rank's, where they waited on mismatched collectives until a timeout; the checkpoint is
    /// left as it was.
    func testRanksThatWouldStartFromDifferentStatesStopNamingEach() throws {
        let seen = tmp("seen"), unseen = tmp("unseen")
        let args = ["--num-epochs", "2", "--max-steps-per-epoch", "2"]
        let first = try mpirun([(2, "radar-worker", workerArgs(seen) + args)])
        XCTAssertEqual(first.status, 0, first.err)
        let checkpoint = seen + "/e/last.safetensors.lz4"
        let before = try Data(contentsOf: URL(fileURLWithPath: checkpoint))
        let t0 = Date()
        let r = try mpirun([(1, "radar-worker", workerArgs(seen) + args + ["--resume", "auto"]),
                            (1, "radar-worker", workerArgs(unseen) + args + ["--resume", "auto"])])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertLessThan(Date().timeIntervalSince(t0), 15, "stopped at the start, not at the 20 s timeout")
        XCTAssertTrue(r.err.contains("the ranks would start from different states"), r.err)
        XCTAssertTrue(r.err.contains("rank 0: resumed at optimizer step 4") && r.err.contains("rank 1: started afresh"), r.err)
        // Rank 1 says where it looked, unless the coordinator's word that rank 0 failed (on the
        // same mismatch) reaches it first: then it stops naming rank 0's failure (seen in a dry run).
        XCTAssertTrue(r.err.contains("found no checkpoint at \(unseen)/e/last.safetensors.lz4")
                      || r.err.contains("rank 1: stopping: rank 0 lost: rank 0 failed: "), r.err)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: checkpoint)), before, "the checkpoint is untouched")
        XCTAssertFalse(FileManager.default.fileExists(atPath: unseen + "/e"), "only rank 0 writes: rank 1 left no folder under its own --output")
        // Both seeing it: the same state, and the run goes on.
        let both = try mpirun([(2, "radar-worker", workerArgs(seen) + args + ["--resume", "auto"])])
        XCTAssertEqual(both.status, 0, both.err)
    }

    func testTwoRankResumeIsBitIdentical() throws {
        try assertTwoRankResumeIsBitIdentical { out in workerArgs(out) }
    }

    /// Two ranks, 2 epochs of 3 steps: 4 optimizer steps straight, and 2 then `--resume auto` to
    /// 4, end with the same bits in every checkpoint tensor. `args(out)` is the rank's command line.
    func assertTwoRankResumeIsBitIdentical(env: [String: String] = [:], file: StaticString = #filePath, line: UInt = #line,
                                           _ args: (String) -> [String]) throws {
        let straight = tmp("r-straight"), split = tmp("r-split")
        func run(_ out: String, _ stop: Int, resume: Bool) throws {
            var a = args(out) + ["--stop-after-steps", String(stop)]
            a[a.firstIndex(of: "--num-epochs")! + 1] = "2"
            if resume { a += ["--resume", "auto"] }
            let r = try mpirun([(2, "radar-worker", a)], timeout: 600, env: env)
            XCTAssertEqual(r.status, 0, r.err, file: file, line: line)
        }
        try run(straight, 4, resume: false)
        try run(split, 2, resume: false)
        try run(split, 4, resume: true)
        let a = try Checkpoint.read(straight + "/e/last.safetensors.lz4"), b = try Checkpoint.read(split + "/e/last.safetensors.lz4")
        XCTAssertEqual(a.state.optimizerStep, 4, file: file, line: line)
        XCTAssertEqual(b.state.optimizerStep, 4, file: file, line: line)
        XCTAssertEqual(a.state.worldSize, 2, file: file, line: line)
        for (k, t) in a.tensors {
            XCTAssertEqual(t.floats.map(\.bitPattern), b.tensors[k]!.floats.map(\.bitPattern), "\(k): 2+2 vs 4 steps on 2 ranks",
                           file: file, line: line)
        }
    }
}

final class TCPTransportTests: XCTestCase {
    let bin = MPITrainingTests.products

    func testThreeTCPRanksMatchThreeMPIRanks() throws {
        let common = ["--data", MPITrainingTests.dataset, "--experiment", "e", "--config", "tiny", "--batch-size", "4", "--num-epochs", "1",
                      "--max-steps-per-epoch", "3", "--accumulation-steps", "1", "--threads", "1"]
        let tcp = String(decoding: try Process.runCapturing([bin.appendingPathComponent("radar").path, "launch", "-n", "3", "--",
                                                             "radar-worker", "--output", NSTemporaryDirectory() + "tcp-\(getpid())"] + common), as: UTF8.self)
        var argv = ["mpirun", "--oversubscribe"]
        if geteuid() == 0 { argv.append("--allow-run-as-root") }
        argv += ["-n", "3", bin.appendingPathComponent("radar-worker").path, "--output", NSTemporaryDirectory() + "mpi-\(getpid())"] + common
        let mpi = String(decoding: try Process.runCapturing(argv), as: UTF8.self)
        func hashes(_ s: String) -> Set<String> {
            Set(s.split(separator: "\n").filter { $0.contains("fnv1a") }.map { String($0.split(separator: " ")[4]) })
        }
        XCTAssertEqual(hashes(tcp).count, 1, tcp)
        XCTAssertEqual(hashes(tcp), hashes(mpi), "TCP and MPI ranks end with the same parameters:\n\(tcp)\n\(mpi)")
        XCTAssertEqual(tcp.split(separator: "\n").filter { $0.contains("fnv1a") }.count, 3)
    }

    /// `radar launch -n RANKS` of a long tiny job into `out` (stderr piped, stdout discarded).
    func startLaunch(ranks: Int, out: String) throws -> (Process, Pipe) {
        let p = Process()
        p.executableURL = bin.appendingPathComponent("radar")
        p.arguments = ["launch", "-n", String(ranks), "--", "radar-worker", "--data", MPITrainingTests.dataset, "--output", out, "--experiment", "e",
                       "--config", "tiny", "--batch-size", "4", "--num-epochs", "50", "--threads", "1", "--timeout", "20"]
        let err = Pipe()
        p.standardError = err
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        return (p, err)
    }

    /// kill -9 of one rank at a random point of training: the others stop within the timeout,
    /// orderly (exit status 1 and one line each, never a signal or an OpenBLAS crash at exit),
    /// and the launcher names the killed rank and its signal. RADAR_ABORT_ITERATIONS repeats it.
    func testKilledTCPRankStopsTheOthersNamingIt() throws {
        let iterations = Int(ProcessInfo.processInfo.environment["RADAR_ABORT_ITERATIONS"] ?? "") ?? 1
        var crashes = 0
        for i in 0..<iterations {
            let out = NSTemporaryDirectory() + "tcp-kill-\(UUID().uuidString.prefix(6))"
            let (p, err) = try startLaunch(ranks: 3, out: out)
            let pids = try Process.workersOnceTraining(out, launcher: p.processIdentifier)
            usleep(UInt32.random(in: 0...1_500_000))  // somewhere in a step, validation or a checkpoint write
            // Kill rank 1 or 2 (rank 0 hosts the coordinator).
            let victimRank = 1 + i % 2
            let victim = pids.first { pid in
                ((try? String(contentsOfFile: "/proc/\(pid)/environ", encoding: .utf8)) ?? "").split(separator: "\0").contains("RANK=\(victimRank)")
            }
            XCTAssertNotNil(victim, "rank \(victimRank) running among \(pids)")
            let t0 = Date()
            if let v = victim { kill(v, SIGKILL) }
            let text = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            p.waitUntilExit()
            XCTAssertNotEqual(p.terminationStatus, 0)
            XCTAssertLessThan(Date().timeIntervalSince(t0), 30)
            XCTAssertTrue(text.contains("rank \(victimRank) lost") || text.contains("waiting for rank \(victimRank)")
                          || text.contains("connection to rank \(victimRank) lost"), text)
            XCTAssertTrue(text.contains("radar launch: rank \(victimRank) was killed by signal 9 (SIGKILL)"), text)
            let survivors = (0..<3).filter { $0 != victimRank }
            for r in survivors {
                XCTAssertTrue(text.contains("radar launch: rank \(r) exited with status 1"), "rank \(r) exits orderly:\n\(text)")
            }
            let crashed = text.contains("Bad memory") || text.contains("SIGSEGV") || text.contains("Fatal error") || text.contains("Stack dump")
            if crashed { crashes += 1 }
            XCTAssertFalse(crashed, text)
            let left = String(decoding: try Process.runCapturing(["pgrep", "-f", "radar-worker.*\(out)"]), as: UTF8.self)
            XCTAssertTrue(left.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty, "no rank left running: \(left)")
        }
        print("aborts: \(iterations) kills, \(crashes) survivor crashes")
    }

    /// SIGINT to `radar launch` (Ctrl-C) reaches every rank: they stop after the same step,
    /// write `last` and exit 75, and nothing is left running within 10 s. A SIGKILLed launcher
    /// takes its ranks with it (they get SIGUSR1 from the kernel).
    func testInterruptingTheLauncherStopsEveryRank() throws {
        for (signal, expect) in [(SIGINT, Int32(75)), (SIGKILL, Int32(-1))] {
            let out = NSTemporaryDirectory() + "tcp-int-\(UUID().uuidString.prefix(6))"
            let (p, err) = try startLaunch(ranks: 2, out: out)
            let pids = try Process.workersOnceTraining(out, launcher: p.processIdentifier)
            XCTAssertEqual(pids.count, 2)
            let t0 = Date()
            kill(p.processIdentifier, signal)
            p.waitUntilExit()
            var left = ""
            repeat {
                usleep(200_000)
                left = String(decoding: try Process.runCapturing(["pgrep", "-f", "radar-worker.*\(out)"]), as: UTF8.self)
                    .trimmingCharacters(in: .whitespacesAndNewlines)
            } while !left.isEmpty && Date().timeIntervalSince(t0) < 10
            XCTAssertEqual(left, "", "no rank left 10 s after signal \(signal)")
            let text = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            if expect >= 0 {
                XCTAssertEqual(p.terminationStatus, expect, text)
                XCTAssertTrue(text.contains("rank 0 exited with status 75") && text.contains("rank 1 exited with status 75"), text)
            }
            // Either way `last` is a loadable checkpoint (SIGUSR1 from the kernel takes the preemption path).
            XCTAssertNoThrow(try Checkpoint.read(out + "/e/last.safetensors.lz4"), "signal \(signal):\n\(text)")
        }
    }
}

final class DemoPipelineTests: XCTestCase {
    /// The README demo's steps on the smallest config: synth -> 2 MPI ranks -> evaluate -> export.
    /// Also checks that test metrics gathered over 2 ranks equal a single-process evaluation.
    func testDemoPipelineEndToEnd() throws {
        let bin = MPITrainingTests.products
        let root = NSTemporaryDirectory() + "radar-demo-\(UUID().uuidString.prefix(6))"
        func run(_ args: [String]) throws -> String {
            let d = try Process.runCapturing(args)
            return String(decoding: d, as: UTF8.self)
        }
        _ = try run([bin.appendingPathComponent("radar").path, "synth", "--output", root + "/data", "--count", "240", "--size", "32"])
        // The data benchmark on the set: opening it, and every sample read in a shuffled order.
        let bench = try run([bin.appendingPathComponent("radar").path, "bench", "data", "--data", root + "/data", "--images", "4", "--prepare-images", "0"])
        let records = bench.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        XCTAssertEqual(records.first { $0["bench"] as? String == "dataset_open" }?["samples"] as? Int, 240, bench)
        let reads = records.first { $0["bench"] as? String == "shard_reads" }
        XCTAssertEqual(reads?["samples"] as? Int, 240, bench)
        XCTAssertGreaterThan(reads?["samples_per_s"] as? Double ?? 0, 0, bench)
        var argv = ["mpirun", "--oversubscribe"]
        if geteuid() == 0 { argv.append("--allow-run-as-root") }
        argv += ["-n", "2", bin.appendingPathComponent("radar-worker").path, "--data", root + "/data", "--output", root + "/outputs",
                 "--experiment", "demo", "--config", "tiny", "--batch-size", "8", "--num-epochs", "2", "--max-steps-per-epoch", "4",
                 "--accumulation-steps", "1", "--threads", "1", "--test-perturb", "jpeg:40"]
        let trained = try run(argv)
        XCTAssertTrue(trained.contains("test AUC"), trained)
        // radar runs: the 2-rank run, finished, its test AUC as metrics.json has it.
        let table = try run([bin.appendingPathComponent("radar").path, "runs", "--output", root + "/outputs"]).split(separator: "\n")
        XCTAssertEqual(table.count, 2, "\(table)")
        XCTAssertTrue(table[0].hasPrefix("experiment  state     epoch  step") && table[1].hasPrefix("demo        finished  2/2    8 "), "\(table)")
        // The folder as an argument too (radar runs outputs/), the same table.
        XCTAssertEqual(try run([bin.appendingPathComponent("radar").path, "runs", root + "/outputs"]).split(separator: "\n"), table)
        let listed = try JSONSerialization.jsonObject(with: Data(try run([bin.appendingPathComponent("radar").path, "runs", "--output", root + "/outputs", "--json"]).utf8)) as! [[String: Any]]
        XCTAssertEqual(listed.first?["world_size"] as? Int, 2)
        let eval = try run([bin.appendingPathComponent("radar").path, "evaluate", "--checkpoint", root + "/outputs/demo/best.safetensors.lz4",
                            "--data", root + "/data", "--split", "test", "--threads", "1"])
        let single = try JSONSerialization.jsonObject(with: Data(eval.utf8)) as! [String: Any]
        let metrics = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: root + "/outputs/demo/metrics.json"))) as! [String: Any]
        let gathered = metrics["test_metrics"] as! [String: Any]
        for k in ["auc", "accuracy", "eer", "average_precision", "sequence_auc"] {
            XCTAssertEqual(gathered[k] as? Double, single[k] as? Double, "\(k): 2 ranks gathered vs one process")
        }
        XCTAssertEqual(gathered["log_loss"] as! Double, single["log_loss"] as! Double, accuracy: 1e-6, "from the logits, 2 ranks at batch 8 vs one process at 32")
        XCTAssertTrue(((metrics["history"] as! [String: Any])["val_metrics"] as! [[String: Double]]).allSatisfy { ($0["log_loss"] ?? .nan) > 0 }, "every epoch's validation log loss")
        XCTAssertEqual((listed[0]["test_metrics"] as? [String: Double])?["auc"], gathered["auc"] as? Double)
        // Each head's metrics, the gate, the attention per class.
        let heads = single["heads"] as! [String: [String: Any]]
        XCTAssertEqual(Set(heads.keys), ["boundary", "frequency", "reasoning", "external"], eval)
        for (name, m) in heads { XCTAssertTrue((0...1).contains(m["auc"] as! Double), "\(name): \(eval)") }
        XCTAssertTrue((0...1).contains(single["gate"] as! Double), eval)
        for (_, a) in single["attention"] as! [String: [String: Double]] { XCTAssertEqual(a["boundary"]! + a["frequency"]!, 1, accuracy: 1e-6, eval) }
        // --perturb: the clean metrics as before, then one pass per degradation, in order.
        let perturbedText = try run([bin.appendingPathComponent("radar").path, "evaluate", "--checkpoint", root + "/outputs/demo/best.safetensors.lz4",
                                     "--data", root + "/data", "--split", "test", "--threads", "1", "--perturb", "jpeg:40", "--perturb", "scale:0.5",
                                     "--predictions", root + "/predictions.csv", "--bootstrap", "50"])
        let perturbed = try JSONSerialization.jsonObject(with: Data(perturbedText.utf8)) as! [String: Any]
        XCTAssertEqual(perturbed["auc"] as? Double, single["auc"] as? Double, perturbedText)
        let passes = perturbed["perturbations"] as! [[String: Any]]
        // The training run's --test-perturb jpeg:40, gathered over its 2 ranks: the same pass.
        let trainedPass = (metrics["test_perturbations"] as! [[String: Any]])[0]
        XCTAssertEqual(trainedPass["perturbation"] as? String, "jpeg:40")
        XCTAssertEqual(trainedPass["auc"] as? Double, passes[0]["auc"] as? Double, "jpeg:40 over 2 ranks vs one process")
        XCTAssertEqual(passes.map { $0["perturbation"] as? String }, ["jpeg:40", "scale:0.5"], perturbedText)
        // --bootstrap: intervals for every pass, over the split's sequences.
        for p in [perturbed] + passes {
            let b = try XCTUnwrap(p["bootstrap"] as? [String: Any], perturbedText)
            XCTAssertEqual(b["replicates"] as? Int, 50); XCTAssertEqual(b["resampled"] as? String, "sequences")
            for k in ["auc", "accuracy", "eer"] {
                let ci = try XCTUnwrap(b[k] as? [Double], "\(k): \(b)")
                XCTAssertTrue(ci.count == 2 && 0 <= ci[0] && ci[0] <= ci[1] && ci[1] <= 1, "\(k): \(ci)")
            }
        }
        XCTAssertNil(single["bootstrap"], "only when asked")
        for p in passes {
            XCTAssertEqual(p["images"] as? Int, single["images"] as? Int)
            XCTAssertTrue((0...1).contains(p["auc"] as! Double), perturbedText)
            XCTAssertEqual((p["heads"] as? [String: Any])?.count, 4, perturbedText)
            XCTAssertNotEqual((p["attention"] as! [String: [String: Double]])["real"]!["frequency"],
                              (single["attention"] as! [String: [String: Double]])["real"]!["frequency"], "other images, other attention")
        }
        // --predictions: each image's scores per pass, as CSV; Python's csv module reads them and
        // numpy's pairwise count gives each pass's AUC back.
        let aucCheck = """
        import csv, json, sys
        import numpy as np
        rows = list(csv.DictReader(open(sys.argv[1], newline="")))
        out = {}
        for p in dict.fromkeys(r["perturbation"] for r in rows):
            g = [r for r in rows if r["perturbation"] == p]
            s = np.array([float(r["probability"]) for r in g]); y = np.array([int(r["label"]) for r in g])
            pos, neg = s[y == 1], s[y == 0]
            auc = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg))
            assert all(0 <= float(r["attention_boundary"]) + float(r["attention_frequency"]) - 1 + 1e-6 <= 2e-6 for r in g)
            out[p] = [len(g), float(auc), len(set(r["key"] for r in g))]
        print(json.dumps(out))
        """
        let (crc, cout) = try Process.runStatus([ProcessInfo.processInfo.environment["RADAR_PYTHON"] ?? "python3", "-c", aucCheck, root + "/predictions.csv"])
        XCTAssertEqual(crc, 0, cout)
        let fromCSV = try JSONSerialization.jsonObject(with: Data(cout.utf8)) as! [String: [Double]]
        let n = Double(single["images"] as! Int)
        XCTAssertEqual(Array(fromCSV.keys).sorted(), ["", "jpeg:40", "scale:0.5"], cout)
        XCTAssertEqual(fromCSV[""], [n, single["auc"] as! Double, n], "the clean pass: every image once, the same AUC")
        for p in passes { XCTAssertEqual(fromCSV[p["perturbation"] as! String], [n, p["auc"] as! Double, n], "\(p["perturbation"]!)") }
        let (prc2, pout2) = try Process.runStatus([bin.appendingPathComponent("radar").path, "evaluate", "--checkpoint", root + "/outputs/demo",
                                                   "--data", root + "/data", "--predictions", root + "/no-such-folder/p.csv"])
        XCTAssertEqual(prc2, 1)
        XCTAssertEqual(pout2, "radar: error: --predictions \(root)/no-such-folder/p.csv: the folder \(root)/no-such-folder does not exist\n")
        let (prc3, pout3) = try Process.runStatus([bin.appendingPathComponent("radar").path, "evaluate", "--checkpoint", root + "/outputs/demo",
                                                   "--data", root + "/data", "--predictions", root + "/data"])
        XCTAssertEqual(prc3, 1)
        XCTAssertEqual(pout3, "radar: error: --predictions \(root)/data: a folder, expected a file name (FILE.csv)\n")
        let (brc, bout) = try Process.runStatus([bin.appendingPathComponent("radar").path, "evaluate", "--checkpoint", root + "/outputs/demo",
                                                 "--data", root + "/data", "--perturb", "jpeg:0"])
        XCTAssertNotEqual(brc, 0)
        XCTAssertTrue(bout.contains("--perturb jpeg:0: JPEG quality must be an integer in 1...100"), bout)
        // Calibration: the run fitted a temperature on the validation split with its test weights
        // (calibration.json, metrics.json's calibration with the test split's figures before and
        // after); radar calibrate finds the same in one process; evaluate --temperature with the
        // run's file gives the run's calibrated test ECE and Brier score, the ranking unchanged.
        let calibration = try XCTUnwrap(metrics["calibration"] as? [String: Any], "metrics.json: \(metrics.keys.sorted())")
        XCTAssertEqual(calibration["fitted_on"] as? String, "val")
        let runT = calibration["temperature"] as! Double
        XCTAssertEqual(listed.first?["temperature"] as? Double, runT, "radar runs --json")
        XCTAssertTrue(table[0].contains("  T  ") && table[1].contains(String(format: "  %.3f  ", runT)), "radar runs: \(table)")
        let saved = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: root + "/outputs/demo/calibration.json"))) as! [String: Any]
        XCTAssertEqual(saved["temperature"] as? Double, runT)
        XCTAssertNil(saved["test"], "calibration.json: what the fit used only")
        let fitted = try JSONSerialization.jsonObject(with: Data(try run([bin.appendingPathComponent("radar").path, "calibrate", "--checkpoint", root + "/outputs/demo",
                                                                           "--data", root + "/data", "--threads", "1", "--output", root + "/calibration.json"]).utf8)) as! [String: Any]
        // The same temperature up to the logits' own rounding: one process scores at batch 32, the
        // ranks at 8, so an image's logit may differ in its last bits (OpenBLAS's tiles follow the
        // rows), and a fit on this barely trained model (validation AUC near 0.5, small logits)
        // magnifies that: 1.0e-6 apart with OpenBLAS's Zen kernels (AMD EPYC, AVX2), where one
        // process alone fits 0.5057375, 0.5057369 and 0.5057373 at batch 32, 8 and 1. 10x inside this.
        XCTAssertEqual(fitted["temperature"] as! Double, runT, accuracy: 1e-5 * runT, "one process vs 2 ranks gathered")
        XCTAssertLessThanOrEqual(fitted["log_loss_after"] as! Double, fitted["log_loss_before"] as! Double)
        XCTAssertEqual(try TemperatureScaling.resolve(root + "/calibration.json"), fitted["temperature"] as! Double, accuracy: 1e-15)
        let scaledText = try run([bin.appendingPathComponent("radar").path, "evaluate", "--checkpoint", root + "/outputs/demo/best.safetensors.lz4",
                                  "--data", root + "/data", "--split", "test", "--threads", "1",
                                  "--temperature", root + "/outputs/demo/calibration.json", "--predictions", root + "/scaled.csv"])
        let scaled = try JSONSerialization.jsonObject(with: Data(scaledText.utf8)) as! [String: Any]
        XCTAssertEqual(scaled["temperature"] as? Double, runT)
        let runTest = calibration["test"] as! [String: Double]
        XCTAssertEqual(runTest["ece"]!, single["ece"] as! Double, accuracy: 1e-6, "2 ranks at batch 8 vs one process at 32")
        XCTAssertEqual(scaled["ece"] as! Double, runTest["ece_calibrated"]!, accuracy: 1e-6, scaledText)
        XCTAssertEqual(scaled["brier"] as! Double, runTest["brier_calibrated"]!, accuracy: 1e-6, scaledText)
        XCTAssertEqual(scaled["log_loss"] as! Double, runTest["log_loss_calibrated"]!, accuracy: 1e-6, scaledText)
        XCTAssertEqual(runTest["log_loss"]!, gathered["log_loss"] as! Double)
        // --tta flip on the split: every image once, the views merged (another log loss).
        let ttaEval = try JSONSerialization.jsonObject(with: Data(try run([bin.appendingPathComponent("radar").path, "evaluate", "--checkpoint", root + "/outputs/demo",
                                                                           "--data", root + "/data", "--split", "test", "--threads", "1", "--tta", "flip",
                                                                           "--predictions", root + "/tta.csv"]).utf8)) as! [String: Any]
        XCTAssertEqual(ttaEval["tta"] as? String, "flip")
        XCTAssertEqual(ttaEval["images"] as? Int, single["images"] as? Int)
        XCTAssertNotEqual(ttaEval["log_loss"] as? Double, single["log_loss"] as? Double)
        // radar compare: the clean model (A) against its flip TTA (B) from their CSVs, each
        // metric as evaluate gave it; a temperature changes no AUC (difference 0, p-value 1).
        let compared = try JSONSerialization.jsonObject(with: Data(try run([bin.appendingPathComponent("radar").path, "compare", root + "/predictions.csv",
                                                                             root + "/tta.csv", "--bootstrap", "200"]).utf8)) as! [String: Any]
        XCTAssertEqual(compared["images"] as? Int, single["images"] as? Int)
        let cmp = compared["bootstrap"] as! [String: Any]
        for (k, d) in ["auc": cmp["auc"], "eer": cmp["eer"], "accuracy": cmp["accuracy"]] {
            let d = d as! [String: Any]
            XCTAssertEqual(d["a"] as? Double, single[k] as? Double, k); XCTAssertEqual(d["b"] as? Double, ttaEval[k] as? Double, k)
            let ci = d["interval"] as! [Double], p = d["p_value"] as! Double
            XCTAssertTrue(ci[0] <= ci[1] && (0...1).contains(p), "\(k): \(d)")
        }
        let sameOrder = (try JSONSerialization.jsonObject(with: Data(try run([bin.appendingPathComponent("radar").path, "compare", root + "/predictions.csv",
                                                                               root + "/scaled.csv", "--bootstrap", "50"]).utf8)) as! [String: Any])["bootstrap"] as! [String: Any]
        XCTAssertEqual((sameOrder["auc"] as! [String: Any])["p_value"] as? Double, 1)
        XCTAssertEqual((sameOrder["auc"] as! [String: Any])["difference"] as? Double, 0)
        let (mrc, mout) = try Process.runStatus([bin.appendingPathComponent("radar").path, "compare", root + "/predictions.csv", root + "/tta.csv",
                                                 "--perturbation", "jpeg:40"])
        XCTAssertEqual(mrc, 1)
        XCTAssertEqual(mout, "radar: error: \(root)/tta.csv: no pass jpeg:40 (its passes: clean)\n")
        // A diverged checkpoint's NaN (as evaluate writes it) is named with its file and key; a
        // header alone says so (it was "no clean pass (its passes: )").
        try "key,label,probability\nb,1,0.9\na,0,nan\nc,0,nan\n".write(toFile: root + "/nan.csv", atomically: true, encoding: .utf8)
        try "key,label,probability\n".write(toFile: root + "/header.csv", atomically: true, encoding: .utf8)
        for (file, said) in [("nan.csv", "nan.csv: the clean pass has 2 NaN probabilities (first key a): the weights gave non-finite outputs (a diverged checkpoint?), and NaN cannot be ranked"),
                             ("header.csv", "header.csv: no predictions (a header line alone)")] {
            let (rc, out) = try Process.runStatus([bin.appendingPathComponent("radar").path, "compare", root + "/" + file, root + "/" + file])
            XCTAssertEqual(rc, 1, out)
            XCTAssertEqual(out, "radar: error: \(root)/\(said)\n")
        }
        XCTAssertEqual(scaled["accuracy"] as? Double, single["accuracy"] as? Double)
        XCTAssertEqual(scaled["auc"] as! Double, single["auc"] as! Double, accuracy: 1e-3, "the same order (float32 may round close ones together)")
        // The CSV's logit column is what the scaled probability came from.
        let logitCheck = """
        import csv, json, math, sys
        rows = list(csv.DictReader(open(sys.argv[1], newline="")))
        t = float(sys.argv[2])
        print(json.dumps(max(abs(float(r["probability"]) - 1 / (1 + math.exp(-float(r["logit"]) / t))) for r in rows)))
        """
        let (crc2, cout2) = try Process.runStatus([ProcessInfo.processInfo.environment["RADAR_PYTHON"] ?? "python3", "-c", logitCheck, root + "/scaled.csv", "\(runT)"])
        XCTAssertEqual(crc2, 0, cout2)
        XCTAssertLessThan(Double(cout2.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 1, 1e-7, cout2)
        // The same, gathered over the 2 ranks at the end of training (metrics.json's test_heads).
        let gatheredHeads = metrics["test_heads"] as! [String: Any]
        for (name, m) in gatheredHeads["heads"] as! [String: [String: Any]] {
            XCTAssertEqual(m["auc"] as? Double, heads[name]?["auc"] as? Double, "\(name) AUC: 2 ranks gathered vs one process")
        }
        XCTAssertEqual(gatheredHeads["gate"] as? Double, single["gate"] as? Double)
        let (ga, sa) = (gatheredHeads["attention"] as! [String: [String: Double]], single["attention"] as! [String: [String: Double]])
        for c in ["real", "fake"] { XCTAssertEqual(ga[c]!["frequency"]!, sa[c]!["frequency"]!, accuracy: 1e-6, c) }
        // radar predict on two files and a directory of them.
        let imgs = root + "/imgs"
        try FileManager.default.createDirectory(atPath: imgs, withIntermediateDirectories: true)
        let faces = SyntheticFaces(size: 32, seed: 3)
        for i in 0..<3 { try ImageCodec.encodePNG(faces.rgbImage(i, label: i % 2)).write(to: URL(fileURLWithPath: imgs + "/f\(i).png")) }
        let predicted = try run([bin.appendingPathComponent("radar").path, "predict", "--checkpoint", root + "/outputs/demo/best.safetensors.lz4",
                                 "--threads", "1", imgs + "/f0.png", imgs])
        let lines = predicted.split(separator: "\n")
        XCTAssertEqual(lines.count, 4, predicted)
        for l in lines {
            let f = l.split(separator: "\t")
            XCTAssertEqual(f.count, 3, String(l))
            let p = Double(f[1]) ?? -1
            XCTAssertTrue(p >= 0 && p <= 1 && (f[2] == "fake") == (p >= 0.5), String(l))
        }
        // The same probabilities as JSON.
        let asJSON = try run([bin.appendingPathComponent("radar").path, "predict", "--checkpoint", root + "/outputs/demo/best.safetensors.lz4",
                              "--threads", "1", "--json", imgs + "/f0.png", imgs])
        let doc = try JSONSerialization.jsonObject(with: Data(asJSON.utf8)) as! [String: Any]
        let preds = doc["predictions"] as! [[String: Any]]
        XCTAssertEqual(preds.count, 4, asJSON)
        for (p, l) in zip(preds, lines) {
            let f = l.split(separator: "\t")
            XCTAssertEqual(p["path"] as? String, String(f[0]))
            XCTAssertEqual(p["probability_fake"] as! Double, Double(f[1])!, accuracy: 5e-7)
            XCTAssertEqual(p["label"] as? String, String(f[2]))
        }
        // --explain: the same probabilities, with what each head said, consistent with the gated
        // fusion (final logit = gate * reasoning logit + (1 - gate) * external logit), the last
        // iteration the reasoning head, the attention over the two evidence tokens summing to 1.
        let explainedJSON = try run([bin.appendingPathComponent("radar").path, "predict", "--checkpoint", root + "/outputs/demo/best.safetensors.lz4",
                                     "--threads", "1", "--json", "--explain", imgs + "/f0.png", imgs])
        let explained = (try JSONSerialization.jsonObject(with: Data(explainedJSON.utf8)) as! [String: Any])["predictions"] as! [[String: Any]]
        XCTAssertEqual(explained.count, 4, explainedJSON)
        func logit(_ p: Double) -> Double { log(p / (1 - p)) }
        for (p, q) in zip(explained, preds) {
            let prob = p["probability_fake"] as! Double
            XCTAssertEqual(prob, q["probability_fake"] as! Double, "the same forward")
            let e = p["explanation"] as! [String: Any]
            let g = e["gate"] as! Double, r = e["reasoning_probability"] as! Double, x = e["external_probability"] as! Double
            XCTAssertEqual(1 / (1 + exp(-(g * logit(r) + (1 - g) * logit(x)))), prob, accuracy: 1e-5, explainedJSON)
            let its = e["iteration_probabilities"] as! [Double], att = e["attention"] as! [[String: Double]]
            XCTAssertEqual(its.count, 3); XCTAssertEqual(att.count, 3)
            XCTAssertEqual(its.last, r)
            for a in att { XCTAssertEqual(a["boundary"]! + a["frequency"]!, 1, accuracy: 1e-6) }
            for k in ["boundary_probability", "frequency_probability"] { XCTAssertTrue((0...1).contains(e[k] as! Double), k) }
        }
        // --temperature T: sigmoid(logit / T) of the same forward's final logit (--explain's), bit
        // for bit, where the logit is the model's probability's.
        let hotJSON = try run([bin.appendingPathComponent("radar").path, "predict", "--checkpoint", root + "/outputs/demo/best.safetensors.lz4",
                               "--threads", "1", "--json", "--temperature", "2.5", imgs + "/f0.png", imgs])
        let hot = try JSONSerialization.jsonObject(with: Data(hotJSON.utf8)) as! [String: Any]
        XCTAssertEqual(hot["temperature"] as? Double, 2.5, hotJSON)
        for (p, q) in zip(hot["predictions"] as! [[String: Any]], explained) {
            let z = Float((q["explanation"] as! [String: Any])["logit"] as! Double), prob = q["probability_fake"] as! Double
            XCTAssertEqual(1 / (1 + exp(-Double(z))), prob, accuracy: 1e-6, "the logit is the probability's")
            XCTAssertEqual(Float(p["probability_fake"] as! Double), Float(1 / (1 + exp(-Double(z) / 2.5))), hotJSON)
            XCTAssertEqual(p["label"] as? String, q["label"] as? String, "the same decision")
        }
        // --tta flip: the final logit is the mean of the image's and of its mirror image's (the
        // mirror made here in pixel space, written as a PNG and predicted on its own).
        let mirrors = root + "/mirrors"
        try FileManager.default.createDirectory(atPath: mirrors, withIntermediateDirectories: true)
        for i in 0..<3 {
            var m = try ImageCodec.decode(try Data(contentsOf: URL(fileURLWithPath: imgs + "/f\(i).png")), item: "f\(i)")
            let src = m.pixels
            for y in 0..<m.height { for x in 0..<m.width { for ch in 0..<3 { m.pixels[(y * m.width + x) * 3 + ch] = src[(y * m.width + m.width - 1 - x) * 3 + ch] } } }
            try ImageCodec.encodePNG(m).write(to: URL(fileURLWithPath: mirrors + "/f\(i).png"))
        }
        func predictions(_ extra: [String], _ files: [String]) throws -> [[String: Any]] {
            let text = try run([bin.appendingPathComponent("radar").path, "predict", "--checkpoint", root + "/outputs/demo", "--threads", "1", "--json"] + extra + files)
            return (try JSONSerialization.jsonObject(with: Data(text.utf8)) as! [String: Any])["predictions"] as! [[String: Any]]
        }
        let originals = (0..<3).map { imgs + "/f\($0).png" }
        let plainLogits = try predictions(["--explain"], originals).map { ($0["explanation"] as! [String: Any])["logit"] as! Double }
        let mirrorLogits = try predictions(["--explain"], (0..<3).map { mirrors + "/f\($0).png" }).map { ($0["explanation"] as! [String: Any])["logit"] as! Double }
        let flipped = try predictions(["--tta", "flip", "--explain"], originals)
        for i in 0..<3 {
            let e = flipped[i]["explanation"] as! [String: Any]
            XCTAssertEqual(e["logit"] as! Double, (plainLogits[i] + mirrorLogits[i]) / 2, accuracy: 1e-5, "image \(i)")
            XCTAssertEqual(flipped[i]["probability_fake"] as! Double, 1 / (1 + exp(-(e["logit"] as! Double))), accuracy: 1e-6)
            XCTAssertNotEqual(plainLogits[i], mirrorLogits[i], "the mirror is another input")
        }
        // radar export-onnx: the run's weights and temperature as an ONNX model. ONNX Runtime, fed the
        // PNGs as a user would (decoded by Pillow, normalised with the metadata's mean and std), gives
        // radar predict's probabilities, and the calibrated ones of --temperature calibration.json.
        let radarTool = bin.appendingPathComponent("radar").path, onnxFile = root + "/demo.onnx"
        let runCalibration = root + "/outputs/demo/calibration.json"
        XCTAssertEqual(try run([radarTool, "export-onnx", "--checkpoint", root + "/outputs/demo", "--output", onnxFile, "--temperature", runCalibration]), onnxFile + "\n")
        let onnxCheck = """
        import sys, json, numpy as np, onnxruntime as ort
        from PIL import Image
        s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
        meta = s.get_modelmeta().custom_metadata_map
        mean = np.array(meta["normalization_mean"].split(","), np.float32)
        std = np.array(meta["normalization_std"].split(","), np.float32)
        x = np.stack([((np.asarray(Image.open(p).convert("RGB"), np.float32) / 255 - mean) / std).transpose(2, 0, 1) for p in sys.argv[2:]])
        prob, calibrated = s.run(["prob", "calibrated_prob"], {"image": x})
        print(json.dumps({"prob": prob[:, 0].tolist(), "calibrated": calibrated[:, 0].tolist()}))
        """
        let (xrc, xout) = try Process.runStatus([ProcessInfo.processInfo.environment["RADAR_PYTHON"] ?? "python3", "-c", onnxCheck, onnxFile] + originals)
        XCTAssertEqual(xrc, 0, xout)
        let runtime = try JSONSerialization.jsonObject(with: Data((xout.split(separator: "\n").last ?? "").utf8)) as? [String: [Double]] ?? [:]
        let ours = try predictions([], originals).map { $0["probability_fake"] as! Double }
        let oursCalibrated = try predictions(["--temperature", runCalibration], originals).map { $0["probability_fake"] as! Double }
        XCTAssertEqual(runtime["prob"]?.count, 3, xout)
        for i in 0..<3 {
            XCTAssertEqual(runtime["prob"]?[i] ?? -1, ours[i], accuracy: 2e-5, "image \(i): \(xout)")
            XCTAssertEqual(runtime["calibrated"]?[i] ?? -1, oursCalibrated[i], accuracy: 2e-5, "image \(i): \(xout)")
        }
        // An existing file is kept unless --overwrite; weights that cannot be read leave no file.
        let (wrc, wout) = try Process.runStatus([radarTool, "export-onnx", "--checkpoint", root + "/outputs/demo", "--output", onnxFile])
        XCTAssertNotEqual(wrc, 0)
        XCTAssertEqual(wout, "radar: error: --output \(onnxFile): the file exists (--overwrite replaces it)\n")
        let (mrc2, mout2) = try Process.runStatus([radarTool, "export-onnx", "--checkpoint", root + "/no-such.safetensors", "--output", root + "/none.onnx"])
        XCTAssertNotEqual(mrc2, 0)
        XCTAssertTrue(mout2.hasPrefix("radar: error: ") && mout2.contains("no-such.safetensors") && mout2.split(separator: "\n").count == 1, mout2)
        XCTAssertFalse(FileManager.default.fileExists(atPath: root + "/none.onnx"))
        // A bare file name is in the working folder (env -C runs the command there).
        let (hrc, hout) = try Process.runStatus(["-C", root, radarTool, "export-onnx", "--checkpoint", "outputs/demo", "--output", "here.onnx"])
        XCTAssertEqual(hrc, 0, hout)
        XCTAssertLessThan(try Data(contentsOf: URL(fileURLWithPath: root + "/here.onnx")).count, try Data(contentsOf: URL(fileURLWithPath: onnxFile)).count,
                          "the same graph without calibrated_prob")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: root).filter { $0.contains(".tmp") || $0.hasPrefix(".") }, [], "nothing left aside")
        let explainedText = try run([bin.appendingPathComponent("radar").path, "predict", "--checkpoint", root + "/outputs/demo/best.safetensors.lz4",
                                     "--threads", "1", "--explain", imgs + "/f0.png", imgs]).split(separator: "\n")
        XCTAssertEqual(explainedText.count, 4)
        for (t, l) in zip(explainedText, lines) {
            let f = t.split(separator: "\t")
            XCTAssertEqual(f.prefix(3).joined(separator: "\t"), String(l), "the plain columns first")
            XCTAssertEqual(f.dropFirst(3).map { $0.split(separator: "=")[0] }, ["boundary", "frequency", "reasoning", "external", "gate", "iterations", "attention"], String(t))
        }
        // --occlusion: each patch's drop is what predict gives for the image with that patch
        // covered by the mean colour (built here, written as a PNG, predicted on its own).
        let maps = root + "/maps"
        let occludedJSON = try run([bin.appendingPathComponent("radar").path, "predict", "--checkpoint", root + "/outputs/demo", "--threads", "1",
                                    "--json", "--occlusion", "--occlusion-maps", maps, imgs + "/f1.png"])
        let occluded = ((try JSONSerialization.jsonObject(with: Data(occludedJSON.utf8)) as! [String: Any])["predictions"] as! [[String: Any]])[0]
        let o = occluded["occlusion"] as! [String: Any]
        XCTAssertEqual(o["grid"] as? Int, 4, "32 px in 8 px patches"); XCTAssertEqual(o["cell"] as? Int, 8)
        let fill = RADARConfig.preset("tiny")!.mean.map { Int(($0 * 255).rounded()) }
        XCTAssertEqual(o["fill"] as? [Int], fill)
        let drop = o["drop"] as! [[Double]]
        let face = try ImageCodec.decode(try Data(contentsOf: URL(fileURLWithPath: imgs + "/f1.png")), item: "f1")
        XCTAssertEqual([face.width, face.height], [32, 32])
        var covered = face
        for y in 8..<16 { for x in 16..<24 { for ch in 0..<3 { covered.pixels[(y * 32 + x) * 3 + ch] = UInt8(fill[ch]) } } }
        try ImageCodec.encodePNG(covered).write(to: URL(fileURLWithPath: root + "/covered.png"))
        let coveredJSON = try run([bin.appendingPathComponent("radar").path, "predict", "--checkpoint", root + "/outputs/demo", "--threads", "1",
                                   "--json", root + "/covered.png"])
        let pCovered = (((try JSONSerialization.jsonObject(with: Data(coveredJSON.utf8)) as! [String: Any])["predictions"] as! [[String: Any]])[0]["probability_fake"] as! Double)
        XCTAssertEqual(drop[1][2], (occluded["probability_fake"] as! Double) - pCovered, accuracy: 1e-6, "row 1, column 2")
        let overlay = try ImageCodec.decode(try Data(contentsOf: URL(fileURLWithPath: o["map"] as! String)), item: "map")
        XCTAssertEqual([overlay.width, overlay.height], [32, 32])
        XCTAssertEqual(o["map"] as? String, maps + "/000000_f1.png")
        XCTAssertNotEqual(overlay, face, "the map is laid over the image")
        let (orc, oout) = try Process.runStatus([bin.appendingPathComponent("radar").path, "predict", "--checkpoint", root + "/outputs/demo",
                                                 "--occlusion-maps", maps, imgs + "/f1.png"])
        XCTAssertNotEqual(orc, 0)
        XCTAssertTrue(oout.contains("--occlusion-maps needs --occlusion"), oout)
        // --rollout: a weight per patch from the same forward (the probability unchanged), and
        // its map laid over the image; in text, the patch with the most weight.
        let rolled = ((try JSONSerialization.jsonObject(with: Data(try run([bin.appendingPathComponent("radar").path, "predict", "--checkpoint", root + "/outputs/demo",
                                                                           "--threads", "1", "--json", "--rollout", "--rollout-maps", root + "/rollout", imgs + "/f1.png"]).utf8))
                      as! [String: Any])["predictions"] as! [[String: Any]])[0]
        XCTAssertEqual(rolled["probability_fake"] as? Double, occluded["probability_fake"] as? Double)
        let r = rolled["rollout"] as! [String: Any]
        XCTAssertEqual(r["grid"] as? Int, 4); XCTAssertEqual(r["cell"] as? Int, 8)
        let weights = (r["weight"] as! [[Double]]).flatMap { $0 }
        XCTAssertEqual(weights.count, 16)
        XCTAssertTrue(weights.allSatisfy { $0 > 0 } && weights.reduce(0, +) < 1, "\(weights)")
        XCTAssertEqual(r["map"] as? String, root + "/rollout/000000_f1.png")
        XCTAssertNotEqual(try ImageCodec.decode(try Data(contentsOf: URL(fileURLWithPath: root + "/rollout/000000_f1.png")), item: "map"), face)
        let rolledText = try run([bin.appendingPathComponent("radar").path, "predict", "--checkpoint", root + "/outputs/demo", "--threads", "1",
                                  "--rollout", imgs + "/f1.png"])
        let top = weights.indices.max { weights[$0] < weights[$1] }!
        XCTAssertTrue(rolledText.contains("\trollout_top=\(top / 4),\(top % 4):" + String(format: "%.6f", weights[top])), rolledText)
        let (rrc, rout) = try Process.runStatus([bin.appendingPathComponent("radar").path, "predict", "--checkpoint", root + "/outputs/demo",
                                                 "--rollout-maps", maps, imgs + "/f1.png"])
        XCTAssertNotEqual(rrc, 0)
        XCTAssertTrue(rout.contains("--rollout-maps needs --rollout"), rout)
        // Progress on stderr where stdout does not show it (--json; a pipe): a plain line per
        // batch at a tiny RADAR_PROGRESS_SECONDS, stdout still one JSON document.
        let pp = Process()
        pp.executableURL = bin.appendingPathComponent("radar")
        pp.arguments = ["predict", "--checkpoint", root + "/outputs/demo/best.safetensors.lz4", "--threads", "1", "--batch-size", "1", "--json",
                       imgs + "/f0.png", imgs]
        pp.environment = ProcessInfo.processInfo.environment.merging(["RADAR_PROGRESS_SECONDS": "0.000001"]) { $1 }
        let (ppOut, ppErr) = (Pipe(), Pipe())
        (pp.standardOutput, pp.standardError) = (ppOut, ppErr)
        try pp.run()
        let (po, pe) = (PipeReader(ppOut), PipeReader(ppErr))
        XCTAssertTrue(po.wait(until: .now() + 120) && pe.wait(until: .now() + 120), "predict did not finish")
        pp.waitUntilExit()
        XCTAssertEqual(pp.terminationStatus, 0, pe.text)
        XCTAssertEqual(((try JSONSerialization.jsonObject(with: Data(po.text.utf8)) as? [String: Any])?["predictions"] as? [Any])?.count, 4, po.text)
        let progress = pe.text.split(separator: "\n").filter { $0.hasPrefix("predict: ") }
        XCTAssertEqual(progress.map { $0.split(separator: " ")[1] }, ["0/4", "1/4", "2/4", "3/4"], pe.text)
        // Batches: one image per forward pass gives what one pass over all four gives (eval mode,
        // no image depends on another; the products' shapes differ, so to the last printed
        // digit), and an unreadable file among them (first in the folder's batch) keeps the
        // others' results and their order.
        try Data("not an image".utf8).write(to: URL(fileURLWithPath: imgs + "/e.png"))
        for extra in [["--batch-size", "1"], ["--batch-size", "3"], []] {
            let again = try run([bin.appendingPathComponent("radar").path, "predict", "--checkpoint", root + "/outputs/demo/best.safetensors.lz4",
                                 "--threads", "1"] + extra + [imgs + "/f0.png", imgs]).split(separator: "\n")
            XCTAssertEqual(again.count, 4, "\(extra): \(again)")
            for (a, l) in zip(again, lines) {
                let (fa, fl) = (a.split(separator: "\t"), l.split(separator: "\t"))
                XCTAssertEqual(fa[0], fl[0], "\(extra)")
                XCTAssertEqual(Double(fa[1])!, Double(fl[1])!, accuracy: 2e-6, "\(extra): \(a) vs \(l)")
            }
        }
        // A file over --max-image-mb is listed as unreadable without being read (a 3 GiB file
        // named .png was read whole), as is a FIFO; the others are predicted.
        let large = root + "/large"
        try FileManager.default.createDirectory(atPath: large, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: imgs + "/f0.png", toPath: large + "/a.png")
        try Data(count: 2 << 20).write(to: URL(fileURLWithPath: large + "/b.png"))
        XCTAssertEqual(mkfifo(large + "/c.png", 0o600), 0)  // read, it blocked for ever
        for f in ["d.gif", "e.GIF", "f.bmp"] { try Data("x".utf8).write(to: URL(fileURLWithPath: large + "/" + f)) }  // said, not passed over
        let (lrc, lout) = try Process.runStatus([bin.appendingPathComponent("radar").path, "predict", "--checkpoint",
                                                 root + "/outputs/demo", "--threads", "1", "--max-image-mb", "1", large])
        XCTAssertEqual(lrc, 0, lout)
        XCTAssertTrue(lout.contains("radar predict: \(large)/b.png: file of 2097152 bytes exceeds the 1 MiB limit (--max-image-mb)"), lout)
        XCTAssertTrue(lout.contains("\(large)/a.png\t"), lout)
        XCTAssertTrue(lout.contains("radar predict: \(large)/c.png: a FIFO, not a regular file"), lout)
        XCTAssertTrue(lout.contains("radar predict: \(large): left out 1 BMP, 2 GIF images (only PNG, JPEG and WebP are read)"), lout)
        // A folder without images is an error, not an empty success.
        let none = root + "/no-images"
        try FileManager.default.createDirectory(atPath: none, withIntermediateDirectories: true)
        let (erc, eout) = try Process.runStatus([bin.appendingPathComponent("radar").path, "predict", "--checkpoint",
                                                 root + "/outputs/demo/best.safetensors.lz4", none])
        XCTAssertEqual(erc, 1, eout)
        XCTAssertEqual(eout, "radar: error: no images to predict: \(none) holds no .png, .jpg, .jpeg or .webp file\n")
        let (drc, dout) = try Process.runStatus([bin.appendingPathComponent("radar").path, "predict", "--checkpoint", root + "/outputs/demo", root + "/data"])
        XCTAssertEqual(drc, 1, dout)
        XCTAssertTrue(dout.hasSuffix("(\(root)/data is a prepared dataset: radar evaluate --checkpoint W --data \(root)/data --split S --predictions FILE.csv scores its images)\n"), dout)
        // A folder's images at any depth (a folder per video), hidden ones left out; subfolders
        // were not searched.
        let nested = root + "/nested"
        for d in ["/video1", "/video2/clip", "/.cache"] { try FileManager.default.createDirectory(atPath: nested + d, withIntermediateDirectories: true) }
        let png = try ImageCodec.encodePNG(faces.rgbImage(0, label: 0))
        for f in ["/video2/clip/b.PNG", "/video1/a.png", "/.cache/c.png", "/video1/.d.png", "/top.jpg.txt"] { try png.write(to: URL(fileURLWithPath: nested + f)) }
        // A folder and a file whose names are not UTF-8 (Latin-1, from an old archive): read by
        // their bytes and shown with \xE9 (it was "No such file or directory"); a link back up
        // the tree is not walked.
        let latinFolder = Array((nested + "/vid").utf8CString.dropLast()) + [CChar(bitPattern: 0xE9)] + Array("o3".utf8CString.dropLast())
        XCTAssertEqual(mkdir(latinFolder + [0], 0o755), 0)
        let latinFile = latinFolder + Array("/f".utf8CString.dropLast()) + [CChar(bitPattern: 0xE9)] + Array(".png".utf8CString)
        let fd = open(latinFile, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        _ = png.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
        XCTAssertEqual(symlink("..", nested + "/video1/up"), 0)
        let deep = try run([bin.appendingPathComponent("radar").path, "predict", "--checkpoint", root + "/outputs/demo", "--threads", "1", nested])
        XCTAssertEqual(deep.split(separator: "\n").map { String($0.split(separator: "\t")[0]) },
                       [nested + "/vid\\xE9o3/f\\xE9.png", nested + "/video1/a.png", nested + "/video2/clip/b.PNG"], deep)
        XCTAssertEqual(Set(deep.split(separator: "\n").map { $0.split(separator: "\t")[1] }).count, 1, "the same image three times: \(deep)")
        // The same folder and file named on the command line, their bytes given as they are (the
        // shell passes them; Swift's arguments turned the byte into U+FFFD, "no such file").
        let (argRC, argText) = try Process.runStatus(["bash", "-c", "'\(bin.appendingPathComponent("radar").path)' predict --checkpoint '\(root)/outputs/demo' --threads 1 \"$(printf '\(nested)/vid\\xe9o3')\" \"$(printf '\(nested)/vid\\xe9o3/f\\xe9.png')\""])
        XCTAssertEqual(argRC, 0, argText)
        XCTAssertEqual(argText.split(separator: "\n").map { String($0.split(separator: "\t")[0]) },
                       [nested + "/vid\\xE9o3/f\\xE9.png", nested + "/vid\\xE9o3/f\\xE9.png"], argText)
        XCTAssertEqual(unlink(latinFile), 0)
        // Names with a tab or a newline (legal on Linux) keep the table one row per image, three
        // columns: written \t and \n, as names that are not UTF-8 are written \xNN. An empty file
        // is said to be empty.
        let odd = root + "/odd-names"
        try FileManager.default.createDirectory(atPath: odd, withIntermediateDirectories: true)
        for name in ["tab\tname.png", "new\nline.png"] { try png.write(to: URL(fileURLWithPath: odd + "/" + name)) }
        XCTAssertTrue(FileManager.default.createFile(atPath: odd + "/empty.png", contents: Data()))
        let (oddRC, oddText) = try Process.runStatus([bin.appendingPathComponent("radar").path, "predict", "--checkpoint", root + "/outputs/demo", "--threads", "1", odd])
        XCTAssertEqual(oddRC, 0, oddText)
        let oddRows = oddText.split(separator: "\n").filter { !$0.hasPrefix("radar predict: ") }
        XCTAssertEqual(oddRows.map { $0.split(separator: "\t", omittingEmptySubsequences: false).count }, [3, 3], oddText)
        XCTAssertEqual(oddRows.map { String($0.split(separator: "\t")[0]) }, [odd + "/new\\nline.png", odd + "/tab\\tname.png"], oddText)
        XCTAssertTrue(oddText.contains("radar predict: \(odd)/empty.png: empty (0 bytes), not an image"), oddText)
        try FileManager.default.removeItem(atPath: odd)
        XCTAssertEqual(rmdir(latinFolder + [0]), 0)
        // An image on stdin (-: curl -s URL | radar predict ... -) and through a pipe given by name
        // (<(...)) is read to its end and scored as the file is (they were "a FIFO, not a regular
        // file"); a FIFO inside a folder is still left unread, never waited on.
        let fromStdin = Process()
        fromStdin.executableURL = bin.appendingPathComponent("radar")
        fromStdin.arguments = ["predict", "--checkpoint", root + "/outputs/demo", "--threads", "1", "-", nested + "/video1/a.png"]
        let stdinPipe = Pipe(), stdoutPipe = Pipe()
        (fromStdin.standardInput, fromStdin.standardOutput) = (stdinPipe, stdoutPipe)
        try fromStdin.run()
        stdinPipe.fileHandleForWriting.write(png)
        try stdinPipe.fileHandleForWriting.close()
        let piped = String(decoding: stdoutPipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        fromStdin.waitUntilExit()
        XCTAssertEqual(fromStdin.terminationStatus, 0, piped)
        let pipedRows = piped.split(separator: "\n").map { $0.split(separator: "\t") }
        XCTAssertEqual(pipedRows.map { String($0[0]) }, ["-", nested + "/video1/a.png"], piped)
        XCTAssertEqual(pipedRows.first?.dropFirst(), pipedRows.last?.dropFirst(), "the same image from stdin and from its file")
        // Standard input closed, a terminal (it waited for bytes that never came), or - twice:
        // each said before any work.
        let predictStdin = "'\(bin.appendingPathComponent("radar").path)' predict --checkpoint '\(root)/outputs/demo' --threads 1"
        for (shell, said) in [("\(predictStdin) - <&-", "radar: error: -: standard input is closed: give the image on it"),
                              ("\(predictStdin) - - < '\(nested)/video1/a.png'", "radar: error: - is given twice: standard input holds one image"),
                              // script(1) (util-linux, in every Debian) gives it a terminal.
                              ("script -qec \"\(predictStdin) -\" /dev/null < /dev/null", "radar: error: -: standard input is a terminal: give the image on it")] {
            let (rc, text) = try Process.runStatus(["sh", "-c", shell])
            XCTAssertNotEqual(rc, 0, shell)
            XCTAssertTrue(text.contains(said), "\(shell): \(text)")
        }
        XCTAssertEqual(mkfifo(nested + "/video1/waiting.png", 0o600), 0)
        let (fifoRC, fifoText) = try Process.runStatus([bin.appendingPathComponent("radar").path, "predict", "--checkpoint", root + "/outputs/demo", "--threads", "1", nested])
        XCTAssertEqual(fifoRC, 0, fifoText)
        XCTAssertTrue(fifoText.contains("radar predict: \(nested)/video1/waiting.png: a FIFO, not a regular file"), fifoText)
        XCTAssertEqual(unlink(nested + "/video1/waiting.png"), 0)
        // A folder inside that cannot be listed (as nobody, without permission) is said and passed
        // over, the rest scored; the folder given itself is an error.
        XCTAssertEqual(geteuid(), 0, "running as nobody needs root (CI has it)")
        if geteuid() == 0 {
            let locked = nested + "/video3"
            try FileManager.default.createDirectory(atPath: locked, withIntermediateDirectories: true)
            try png.write(to: URL(fileURLWithPath: locked + "/c.png"))
            XCTAssertEqual(chmod(locked, 0), 0)
            let asNobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", bin.appendingPathComponent("radar").path, "predict",
                            "--checkpoint", root + "/outputs/demo", "--threads", "1"]
            let (lrc, ltext) = try Process.runStatus(asNobody + [nested])
            XCTAssertEqual(lrc, 0, ltext)
            XCTAssertTrue(ltext.contains("radar predict: \(locked): cannot list the folder (Permission denied): its images are left out"), ltext)
            XCTAssertTrue(ltext.contains(nested + "/video1/a.png\t") && !ltext.contains("c.png"), ltext)
            let (frc, ftext) = try Process.runStatus(asNobody + [locked])
            XCTAssertEqual(frc, 1, ftext)
            XCTAssertTrue(ftext.contains("radar: error: \(locked): Permission denied"), ftext)
            XCTAssertEqual(chmod(locked, 0o755), 0)
            try FileManager.default.removeItem(atPath: locked)
        }
        // --by-folder: then one verdict per folder (a video's frames), the mean of its images'.
        try FileManager.default.copyItem(atPath: imgs + "/f1.png", toPath: nested + "/video1/b.png")
        let perFolder = try run([bin.appendingPathComponent("radar").path, "predict", "--checkpoint", root + "/outputs/demo", "--threads", "1",
                                 "--by-folder", nested]).split(separator: "\n").map { $0.split(separator: "\t").map(String.init) }
        XCTAssertEqual(perFolder.map { $0[0] }, [nested + "/video1/a.png", nested + "/video1/b.png", nested + "/video2/clip/b.PNG",
                                                 nested + "/video1/", nested + "/video2/clip/"], "\(perFolder)")
        XCTAssertEqual(Double(perFolder[3][1])!, (Double(perFolder[0][1])! + Double(perFolder[1][1])!) / 2, accuracy: 1.5e-6)
        XCTAssertEqual(perFolder[3][3], "2 images")
        XCTAssertEqual(perFolder[4][1], perFolder[2][1])
        XCTAssertEqual(perFolder[4].suffix(2), [(Double(perFolder[4][1])! >= 0.5 ? "fake" : "real"), "1 image"])
        // The model-only file and a plain PyTorch state dict (no metadata: --config names the
        // model) evaluate to the same metrics as the best checkpoint.
        let radar = bin.appendingPathComponent("radar").path
        let stripped = root + "/state_dict.safetensors"
        let (prc, pout) = try Process.runStatus([ProcessInfo.processInfo.environment["RADAR_PYTHON"] ?? "python3", "-c",
            "import sys; from safetensors.numpy import load_file, save_file; save_file(load_file(sys.argv[1]), sys.argv[2])",
            root + "/outputs/demo/model.safetensors", stripped])
        XCTAssertEqual(prc, 0, pout)
        // A batch far larger than the split is the split's size (it asked for a terabyte of input).
        for (weights, extra) in [(root + "/outputs/demo/model.safetensors", [String]()), (stripped, ["--config", "tiny"]),
                                 (root + "/outputs/demo/model.safetensors", ["--batch-size", "100000000"])] {
            let e = try run([radar, "evaluate", "--checkpoint", weights, "--data", root + "/data", "--split", "test", "--threads", "1"] + extra)
            let m = try JSONSerialization.jsonObject(with: Data(e.utf8)) as! [String: Any]
            for k in ["auc", "accuracy", "eer"] { XCTAssertEqual(m[k] as? Double, single[k] as? Double, "\(k) from \(weights)") }
        }
        let (nrc, nout) = try Process.runStatus([radar, "evaluate", "--checkpoint", stripped, "--data", root + "/data", "--threads", "1"])
        XCTAssertNotEqual(nrc, 0)
        XCTAssertTrue(nout.contains("pass --config") && nout.split(separator: "\n").count == 1, nout)
        // Weights that give NaN: no label (they were printed as "-nan ... real"), one warning.
        let nanWeights = root + "/nan.safetensors"
        let (qrc, qout) = try Process.runStatus([ProcessInfo.processInfo.environment["RADAR_PYTHON"] ?? "python3", "-c",
            "import sys, numpy as np; from safetensors.numpy import load_file, save_file; t = load_file(sys.argv[1]); "
            + "t = {k: (np.full_like(v, np.nan) if 'classifier' in k or k.endswith('head.weight') else v) for k, v in t.items()}; save_file(t, sys.argv[2])",
            stripped, nanWeights])
        XCTAssertEqual(qrc, 0, qout)
        let (urc, uout) = try Process.runStatus([radar, "predict", "--checkpoint", nanWeights, "--config", "tiny", "--threads", "1", imgs + "/f0.png"])
        XCTAssertEqual(urc, 0, uout)
        XCTAssertTrue(uout.contains("\(imgs)/f0.png\tnan\tundefined\n"), uout)
        XCTAssertTrue(uout.contains("radar predict: warning: \(imgs)/f0.png: the probability is nan"), uout)
        // A second fresh run into the same folder is refused; nothing of the first is touched.
        let before = try Data(contentsOf: URL(fileURLWithPath: root + "/outputs/demo/best.safetensors.lz4"))
        let (src, sout) = try Process.runStatus([radar, "train", "--data", root + "/data", "--output", root + "/outputs", "--experiment", "demo",
                                                 "--config", "tiny", "--batch-size", "8", "--num-epochs", "1", "--threads", "1"])
        XCTAssertNotEqual(src, 0)
        XCTAssertTrue(sout.contains("holds another run"), sout)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: root + "/outputs/demo/best.safetensors.lz4")), before)
        let zip = try run([bin.appendingPathComponent("radar").path, "export", "--results-dir", root + "/outputs/demo",
                           "--output-dir", root + "/exports", "--create-download-script"]).trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertTrue(FileManager.default.fileExists(atPath: zip), zip)
        XCTAssertTrue(FileManager.default.fileExists(atPath: root + "/exports/download_demo.sh"))
        let (zrc, zout) = try Process.runStatus([ProcessInfo.processInfo.environment["RADAR_PYTHON"] ?? "python3", "-c",
                                                 "import sys, zipfile; print('\\n'.join(zipfile.ZipFile(sys.argv[1]).namelist()))", zip])
        XCTAssertEqual(zrc, 0, zout)
        XCTAssertTrue(zout.contains("demo/calibration.json\n"), zout)
        // The Hub folder carries the run's calibration: the file, and T in the model card with its use.
        _ = try run([bin.appendingPathComponent("radar").path, "export", "--results-dir", root + "/outputs/demo", "--hub-folder", root + "/hub", "--onnx"])
        XCTAssertEqual(FileManager.default.contents(atPath: root + "/hub/calibration.json"), FileManager.default.contents(atPath: root + "/outputs/demo/calibration.json"))
        let card = try String(contentsOfFile: root + "/hub/README.md", encoding: .utf8)
        let t = String(format: "%.6g", runT)
        XCTAssertTrue(card.contains("## Calibration") && card.contains("T = \(t) ") && card.contains("--temperature \(t) face.png"), card)
        XCTAssertTrue(card.contains(String(format: "| ECE | %.4f | %.4f |", runTest["ece"]!, runTest["ece_calibrated"]!)), card)
        // --onnx: export-onnx's model with the run's temperature (the files differ in the source named in their metadata).
        XCTAssertTrue(card.contains("`calibrated_prob` the same at T = \(t)"), card)
        let hubONNX = try Data(contentsOf: URL(fileURLWithPath: root + "/hub/model.onnx")), ownONNX = try Data(contentsOf: URL(fileURLWithPath: onnxFile))
        XCTAssertLessThan(abs(hubONNX.count - ownONNX.count), 200, "\(hubONNX.count) vs \(ownONNX.count) bytes")
        let (onnxFlagRC, onnxFlagOut) = try Process.runStatus([bin.appendingPathComponent("radar").path, "export", "--results-dir", root + "/outputs/demo", "--onnx"])
        XCTAssertEqual(onnxFlagRC, 64, onnxFlagOut)
        // A bare folder name is made in the working folder (env -C runs the command there).
        let (bareRC, bareOut) = try Process.runStatus(["-C", root, bin.appendingPathComponent("radar").path, "export", "--results-dir", "outputs/demo", "--hub-folder", "hub-here"])
        XCTAssertEqual(bareRC, 0, bareOut)
        XCTAssertTrue(FileManager.default.fileExists(atPath: root + "/hub-here/model.safetensors"), bareOut)
        XCTAssertTrue(onnxFlagOut.contains("--onnx goes with --hub-folder"), onnxFlagOut)
    }
}

/// The JSON object on the last line of `text` that starts with "{" (what `radar bench` and
/// `radar check-device` print last).
func lastJSON(_ text: String) throws -> [String: Any] {
    let line = try XCTUnwrap(text.split(separator: "\n").last { $0.hasPrefix("{") }, text)
    return try XCTUnwrap(JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], String(line))
}

extension Process {
    /// Waits until a run writing to `out` has logged a step, then returns its worker pids (pgrep
    /// also matches the launcher's own command line, which is left out).
    static func workersOnceTraining(_ out: String, launcher: Int32) throws -> [Int32] {
        let deadline = Date().addingTimeInterval(120)
        while Date() < deadline && ((try? String(contentsOfFile: out + "/e/metrics.jsonl", encoding: .utf8)) ?? "").isEmpty { usleep(100_000) }
        return String(decoding: try runCapturing(["pgrep", "-f", "radar-worker.*\(out)"]), as: UTF8.self)
            .split(separator: "\n").compactMap { Int32($0) }.filter { $0 != launcher }
    }

    /// (status, stdout + stderr) of a short command.
    static func runStatus(_ args: [String], environment: [String: String] = [:]) throws -> (Int32, String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = args
        p.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        try p.run()
        let d = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: d, as: UTF8.self))
    }

    /// stdout of a short command (status ignored).
    static func runCapturing(_ args: [String]) throws -> Data {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = args
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        let d = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return d
    }
}

/// Reads a pipe to its end on another thread, so a child blocked writing one pipe never hangs a
/// test reading the other; `text` is what was read so far.
final class PipeReader: @unchecked Sendable {
    private let lock = NSLock()
    private var data = Data()
    private let done = DispatchGroup()

    init(_ pipe: Pipe) {
        done.enter()
        DispatchQueue.global().async {
            let d = pipe.fileHandleForReading.readDataToEndOfFile()
            self.lock.withLock { self.data = d }
            self.done.leave()
        }
    }

    /// Whether the pipe reached its end before `deadline`.
    func wait(until deadline: DispatchTime = .distantFuture) -> Bool { done.wait(timeout: deadline) == .success }

    var text: String { lock.withLock { String(decoding: data, as: UTF8.self) } }
}
