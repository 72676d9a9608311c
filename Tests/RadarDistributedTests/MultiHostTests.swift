import Foundation
import XCTest

/// Ranks on simulated hosts: Linux network namespaces joined by a bridge, links shaped by tc
/// (`cluster/netns.sh`), driven by `cluster/multihost.sh`, the script users run for the full
/// version. Needs root, as CI has: without it this test fails (it never skips).
final class MultiHostTests: XCTestCase {
    static let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// `cluster/multihost.sh ARGS` with this build's programs: exit status, the JSON records it
    /// printed, its log.
    func multihost(_ args: [String]) throws -> (Int32, [[String: Any]], String) {
        try script("cluster/multihost.sh", ["--bin", MPITrainingTests.products.path] + args)
    }

    /// A script of the repository run with `args` (OpenBLAS at one thread, `env` added): exit
    /// status, the JSON objects of its stdout, its stderr.
    func script(_ path: String, _ args: [String], env extra: [String: String] = [:]) throws -> (Int32, [[String: Any]], String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/bash")
        p.currentDirectoryURL = MultiHostTests.repo
        p.arguments = [path] + args
        var env = ProcessInfo.processInfo.environment
        env["OPENBLAS_NUM_THREADS"] = "1"
        env.merge(extra) { $1 }
        p.environment = env
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let e = PipeReader(err)
        let o = out.fileHandleForReading.readDataToEndOfFile()
        _ = e.wait()
        p.waitUntilExit()
        let records = String(decoding: o, as: UTF8.self).split(separator: "\n").compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
        return (p.terminationStatus, records, e.text)
    }

    /// Three hosts at 1 Gbit/s, TCP ranks and (`--mpi`) mpirun across them: the ring bounded by
    /// the link, bf16 halving the bytes, a short training run, and a host cut off during
    /// training detected and named within the deadline by either transport.
    func testThreeHostsAt1GbitReduceTrainAndDetectAPartitionedHost() throws {
        XCTAssertEqual(geteuid(), 0, "the multi-host test creates network namespaces: run it as root (CI does)")
        guard geteuid() == 0 else { return }
        let (status, records, log) = try multihost(["--hosts", "3", "--rates", "1gbit", "--sizes", "4", "--data", MPITrainingTests.dataset,
                                                   "--batch-size", "4", "--steps", "3", "--bucket-mb", "0", "--partition", "--timeout", "5", "--mpi"])
        XCTAssertEqual(status, 0, log)
        print(records.map { "\($0)" }.joined(separator: "\n"))
        let reduce = records.filter { $0["bench"] as? String == "allreduce" && $0["transport"] as? String == "tcp" }
        XCTAssertEqual(reduce.count, 2, "fp32 and bf16: \(records)")
        for r in reduce {
            XCTAssertEqual(r["transport"] as? String, "tcp")
            XCTAssertEqual(r["ranks"] as? Int, 3)
            // The shaping holds: a ring's bus bandwidth cannot exceed the link's 0.125 GB/s (fp32
            // on the wire; bf16 moves half the bytes, so up to twice that in fp32 terms).
            let cap = 0.125 * (r["grad_dtype"] as? String == "bf16" ? 2 : 1) * 1.1
            XCTAssertLessThan(r["ring_busbw_gbs"] as? Double ?? .infinity, cap, "\(r)")
        }
        let bytes = Dictionary(uniqueKeysWithValues: reduce.map { ($0["grad_dtype"] as? String ?? "", $0["wire_bytes_per_rank"] as? Int ?? 0) })
        XCTAssertEqual(bytes["bf16"].map { $0 * 2 }, bytes["fp32"], "bf16 halves the bytes on the wire")
        let train = records.first { $0["bench"] as? String == "multihost_train" }
        XCTAssertNotNil(train, "a training run on the hosts: \(records)")
        XCTAssertGreaterThan(train?["allreduce_seconds"] as? Double ?? 0, 0)
        XCTAssertGreaterThan(train?["step_seconds"] as? Double ?? 0, 0)
        let cut = records.first { $0["bench"] as? String == "multihost_partition" && $0["transport"] as? String == "tcp" }
        XCTAssertEqual(cut?["ok"] as? Bool, true, "\(String(describing: cut))\n\(log)")
        XCTAssertEqual(cut?["exit_statuses"] as? [Int], [1, 1, 1], "every rank ends non-zero")
        XCTAssertLessThan(cut?["seconds_to_end"] as? Double ?? .infinity, 15)
        XCTAssertTrue(log.contains("rank 2 lost") || log.contains("waiting for rank 2"), "the lost host's rank is named:\n\(log)")
        // Under mpirun (--mpi): every rank, the cut one included, ends within the deadline and a
        // surviving rank names the lost one (mpirun itself waits for the cut host's daemon, and
        // the script ends it: OpenMPI's runtime has no daemon timeout).
        let mpiCut = records.first { $0["bench"] as? String == "multihost_partition" && $0["transport"] as? String == "mpi" }
        XCTAssertEqual(mpiCut?["ok"] as? Bool, true, "\(String(describing: mpiCut))\n\(log)")
        XCTAssertEqual(mpiCut?["ranks_left_running"] as? Int, 0)
        XCTAssertFalse((mpiCut?["ranks_naming_it"] as? [Int] ?? []).isEmpty, "\(String(describing: mpiCut))")
        XCTAssertLessThan(mpiCut?["seconds_to_end"] as? Double ?? .infinity, 15)
        XCTAssertTrue(log.contains("(tbf)") || log.contains("(netem)"), "the links were shaped:\n\(log)")
    }

    /// Two hosts of two ranks each (a pod's GPUs), as TCP ranks and under mpirun across the
    /// namespaces (`netns.sh mpirun`: OpenMPI starts each host's ranks there through `netns.sh
    /// rsh`, under the host's own name): both reduce in two levels, found from the ranks' host
    /// names (`MPI_Get_processor_name` under mpirun), and no ring beats the shaped link; a short
    /// training run trains both ways.
    func testHostsOfTwoRanksReduceInTwoLevelsAndTrainOverTCPAndUnderMPI() throws {
        XCTAssertEqual(geteuid(), 0, "the multi-host test creates network namespaces: run it as root (CI does)")
        guard geteuid() == 0 else { return }
        let (status, all, log) = try multihost(["--hosts", "2", "--ranks-per-host", "2", "--rates", "1gbit", "--sizes", "4", "--mpi",
                                                "--data", MPITrainingTests.dataset, "--batch-size", "4", "--steps", "3", "--bucket-mb", "0"])
        XCTAssertEqual(status, 0, log)
        let records = all.filter { $0["bench"] as? String == "allreduce" }
        let kinds = records.map { "\($0["transport"] ?? "?") \($0["grad_dtype"] ?? "?")" }.sorted()
        XCTAssertEqual(kinds, ["mpi bf16", "mpi fp32", "tcp bf16", "tcp fp32"], "\(records)\n\(log)")
        for r in records {
            XCTAssertEqual(r["algorithm"] as? String, "2 levels: 2 hosts x 2 ranks", "\(r)")
            XCTAssertEqual(r["ranks"] as? Int, 4)
            // Two levels send each host's link 2 (H-1)/H = 1 buffer, where the bus bandwidth
            // counts 2 (N-1)/N = 1.5: at most 1.5 x the link's 0.125 GB/s (twice that for bf16).
            let cap = 0.125 * 1.5 * (r["grad_dtype"] as? String == "bf16" ? 2 : 1) * 1.1
            XCTAssertLessThan(r["ring_busbw_gbs"] as? Double ?? .infinity, cap, "\(r)")
        }
        XCTAssertTrue(records.contains { $0["transport"] as? String == "mpi" && ($0["mpi_allreduce_seconds"] as? Double ?? 0) > 0 },
                      "MPI_Allreduce timed beside the ring: \(records)")
        // A short training run both ways; under mpirun the ranks of the second host reach rank
        // 0's coordinator at its address (at 127.0.0.1 they found their own machine and the
        // rendezvous ended with "ranks 2, 3 never registered").
        let train = all.filter { $0["bench"] as? String == "multihost_train" }
        XCTAssertEqual(train.compactMap { $0["transport"] as? String }.sorted(), ["mpi", "tcp"], "\(all)\n\(log)")
        for t in train { XCTAssertGreaterThan(t["allreduce_seconds"] as? Double ?? 0, 0, "\(t)") }
    }
    /// `cluster/scaling.sh` on this build: mpirun on this machine, TCP ranks on it (`radar
    /// launch`, as on a GPU pod without MPI), TCP ranks one per simulated host, and mpirun across
    /// the simulated hosts (`--transport mpi`): a row per rank count, efficiency 1 at one rank,
    /// the all-reduce timed where there are two.
    func testTheScalingTableRunsOnOneMachineAndAcrossSimulatedHosts() throws {
        XCTAssertEqual(geteuid(), 0, "the simulated hosts need root (CI has it)")
        guard geteuid() == 0 else { return }
        for (options, expectedLink) in [([String](), "mpirun on one machine"),
                                        (["--transport", "tcp"], "TCP ranks on one machine (radar launch)"),
                                        (["--link", "1gbit"], "1gbit links, one host a rank, TCP ranks"),
                                        (["--link", "1gbit", "--transport", "mpi"], "1gbit links, one host a rank, mpirun across them")] {
            let (status, rows, log) = try script("cluster/scaling.sh", [MPITrainingTests.dataset, "1", "2", "--", "--batch-size", "4", "--steps", "3", "--json"] + options,
                                                 env: ["RADAR_BIN": MPITrainingTests.products.path])
            XCTAssertEqual(status, 0, "\(options): \(log)")
            XCTAssertEqual(rows.compactMap { $0["ranks"] as? Int }, [1, 2], "\(options): \(rows)")
            XCTAssertEqual(rows.first?["scaling_efficiency"] as? Double, 1.0, "\(options)")
            XCTAssertGreaterThan(rows.last?["allreduce_seconds"] as? Double ?? 0, 0, "\(options): \(rows)")
            XCTAssertTrue(rows.allSatisfy { $0["link"] as? String == expectedLink }, "\(options): \(rows)")
        }
    }
}
