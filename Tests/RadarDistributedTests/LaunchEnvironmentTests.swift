import Foundation
import RadarCore
@testable import RadarDistributed
import XCTest

/// torchrun and srun, through their documented environment contracts (real torchrun needs a
/// PyTorch install; CI has none): the resolution as a pure function, then real 2-rank jobs.
final class LaunchEnvironmentTests: XCTestCase {
    func testTheLaunchersEnvironmentsResolve() throws {
        let torch = try LaunchEnvironment.resolve(rank: nil, worldSize: nil, coordinator: nil, env: [
            "RANK": "1", "WORLD_SIZE": "4", "MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "none"])
        XCTAssertEqual(torch, LaunchEnvironment(rank: 1, worldSize: 4, host: "10.0.0.5", port: 29501, launcher: "torchrun"),
                       "torchrun's store holds MASTER_PORT: the coordinator takes the next port")
        let srun = try LaunchEnvironment.resolve(rank: nil, worldSize: nil, coordinator: nil, env: [
            "SLURM_PROCID": "3", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_LAUNCH_NODE_IPADDR": "10.1.2.3", "SLURM_JOB_ID": "123456"])
        XCTAssertEqual(srun, LaunchEnvironment(rank: 3, worldSize: 8, host: "10.1.2.3", port: 20000 + 123456 % 20000, launcher: "srun"))
        let plain = try LaunchEnvironment.resolve(rank: 0, worldSize: 2, coordinator: "h:7070", env: ["RANK": "5"])
        XCTAssertEqual(plain, LaunchEnvironment(rank: 0, worldSize: 2, host: "h", port: 7070, launcher: "env"))
        let override = try LaunchEnvironment.resolve(rank: nil, worldSize: nil, coordinator: nil, env: [
            "RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "a", "MASTER_PORT": "1000", "TORCHELASTIC_RUN_ID": "x", "RADAR_COORDINATOR_PORT": "4000"])
        XCTAssertEqual(override.port, 4000)
        // What was found is named (the message was the same for a missing, a non-numeric and an
        // out-of-range rank).
        for (rank, size, env, got) in [(nil, nil, ["SLURM_PROCID": "2", "SLURM_NTASKS": "2"], "got SLURM_PROCID=2 and SLURM_NTASKS=2"),
                                       (nil, nil, ["RANK": "x", "WORLD_SIZE": "2"], "got RANK=x (not a whole number) and WORLD_SIZE=2"),
                                       (nil, nil, ["WORLD_SIZE": "2"], "got no --rank, RANK or SLURM_PROCID and WORLD_SIZE=2"),
                                       (3, nil, ["WORLD_SIZE": "0"], "got --rank 3 and WORLD_SIZE=0")] as [(Int?, Int?, [String: String], String)] {
            XCTAssertThrowsError(try LaunchEnvironment.resolve(rank: rank, worldSize: size, coordinator: nil, env: env)) {
                XCTAssertTrue("\($0)".contains("0 <= rank < world size; " + got), "\($0)")
            }
        }
        // A mistyped world size (a coordinator scanned a hundred million ranks as it waited).
        XCTAssertThrowsError(try LaunchEnvironment.resolve(rank: nil, worldSize: nil, coordinator: nil, env: ["RANK": "0", "WORLD_SIZE": "100000000"])) {
            XCTAssertEqual("\($0)", "a world size of at most 65536 ranks is expected, got WORLD_SIZE=100000000")
        }
        XCTAssertThrowsError(try LaunchEnvironment.resolve(rank: 0, worldSize: 2, coordinator: nil, env: ["MASTER_ADDR": "", "MASTER_PORT": "1"])) {
            XCTAssertEqual("\($0)", "MASTER_ADDR is empty: expected the coordinator's host name or address")
        }
        XCTAssertThrowsError(try LaunchEnvironment.resolve(rank: 0, worldSize: 2, coordinator: nil, env: ["MASTER_ADDR": "h", "MASTER_PORT": "29500x"])) {
            XCTAssertEqual("\($0)", "MASTER_PORT=29500x: expected a port number")
        }
        XCTAssertThrowsError(try LaunchEnvironment.resolve(rank: nil, worldSize: nil, coordinator: nil, env: ["RANK": "0", "WORLD_SIZE": "2"])) {
            XCTAssertTrue("\($0)".contains("MASTER_ADDR"), "\($0)")
        }
        // Ports out of range are named with where they came from (MASTER_PORT 70000 said "is needed").
        XCTAssertThrowsError(try LaunchEnvironment.resolve(rank: 0, worldSize: 1, coordinator: "h:70000", env: [:])) {
            XCTAssertEqual("\($0)", "--coordinator h:70000: expected HOST:PORT with a port in 1...65535 (an IPv6 address in brackets: [fd00::1]:29500)")
        }
        XCTAssertThrowsError(try LaunchEnvironment.resolve(rank: nil, worldSize: nil, coordinator: nil, env: [
            "RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "a", "MASTER_PORT": "65535", "TORCHELASTIC_RUN_ID": "x"])) {
            XCTAssertEqual("\($0)", "the coordinator's port 65536 (from MASTER_PORT + 1) is not in 1...65535")
        }
        XCTAssertThrowsError(try LaunchEnvironment.resolve(rank: nil, worldSize: nil, coordinator: nil, env: [
            "RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "a", "MASTER_PORT": "70000"])) {
            XCTAssertEqual("\($0)", "the coordinator's port 70000 (from MASTER_PORT) is not in 1...65535")
        }
        XCTAssertEqual(hostPort("10.0.0.1:7070")?.host, "10.0.0.1")
        XCTAssertEqual(hostPort("h:0", allowAnyPort: true)?.port, 0)
        for bad in ["h:0", ":7070", "h", "h:", "h:-1", "h:65536", "h:7x"] { XCTAssertNil(hostPort(bad), bad) }
        // IPv6: in brackets, returned without them; without brackets the last colon is ambiguous.
        XCTAssertEqual(hostPort("[fd00::1]:29500")?.host, "fd00::1")
        XCTAssertEqual(hostPort("[::1]:29500")?.port, 29500)
        for bad in ["fd00::1:29500", "[fd00::1:29500", "fd00::1]:29500", "[]:29500"] { XCTAssertNil(hostPort(bad), bad) }
        XCTAssertEqual(hostPortText("fd00::1", 29500), "[fd00::1]:29500")
        XCTAssertEqual(hostPortText("10.0.0.1", 29500), "10.0.0.1:29500")
        let six = try LaunchEnvironment.resolve(rank: 0, worldSize: 2, coordinator: "[fd00::1]:29500", env: [:])
        XCTAssertEqual(six.host, "fd00::1")
        // Addresses as the sockets take them: IPv4, IPv6 bare or in brackets, names.
        XCTAssertEqual(try Sockets.address("127.0.0.1", 80).family, AF_INET)
        XCTAssertEqual(try Sockets.address("localhost", 80).family, AF_INET, "IPv4 where a name has both")
        for v6 in ["::1", "[::1]", "fd00::1"] {
            let a = try Sockets.address(v6, 4242)
            XCTAssertEqual(a.family, AF_INET6, v6)
            XCTAssertEqual(a.port, 4242, v6)
            XCTAssertEqual(a.host, bareHost(v6), v6)
        }
        XCTAssertThrowsError(try Sockets.address("no-such-host.invalid", 80))
        // Subnets in both families: an IPv6 candidate on this machine's /64 first.
        let mine = [Sockets.Interface.v4("10.88.0.2", 0x0A58_0002, 0xFFFF_FF00),
                    Sockets.Interface(text: "fd00:1::2", address: Sockets.numeric("fd00:1::2")!, netmask: Array(repeating: 0xFF, count: 8) + Array(repeating: 0, count: 8))]
        XCTAssertEqual(Sockets.reachableFirst(["fd00:9::5", "192.168.1.9", "fd00:1::7", "10.88.0.1", "fd00:1::2"], mine: mine),
                       ["fd00:1::7", "10.88.0.1", "fd00:9::5", "192.168.1.9"], "this machine's own fd00:1::2 left out")
    }

    /// `radar launch --nnodes 2 --node-rank 0|1 --master HOST:PORT -n 2` on two "machines" (two
    /// launchers here) is one job of 4 ranks, numbered across the nodes, with the parameters of
    /// `radar launch -n 4` on one.
    func testTwoNodesOfRadarLaunchAreOneJob() throws {
        let radar = MPITrainingTests.products.appendingPathComponent("radar").path
        func job(_ out: String) -> [String] {
            ["--", "radar-worker", "--data", MPITrainingTests.dataset, "--output", out, "--experiment", "e", "--config", "tiny",
             "--batch-size", "4", "--num-epochs", "1", "--max-steps-per-epoch", "3", "--threads", "1", "--timeout", "30"]
        }
        let out = NSTemporaryDirectory() + "radar-nodes-\(UUID().uuidString.prefix(6))"
        let text = try twoNodes(["-n", "2"] + job(out), "two nodes").joined()
        let lines = text.split(separator: "\n").filter { $0.contains("fnv1a") }
        XCTAssertEqual(Set(lines.map { $0.split(separator: " ")[1] }), ["0", "1", "2", "3"], "ranks numbered across the nodes: \(text)")
        let one = String(decoding: try Process.runCapturing([radar, "launch", "-n", "4"] + job(out + "-one")), as: UTF8.self)
        XCTAssertEqual(parameterHashes([text]).count, 1, text)
        XCTAssertEqual(parameterHashes([text]), parameterHashes([one]), "two nodes of 2 ranks = one of 4:\n\(text)\n\(one)")
    }

    /// `--max-restarts` on each of two nodes: node 1's rank is killed in the first attempt, both
    /// launchers restart (node 0's rank was told to stop), the second attempt meets at the same
    /// port, and both ranks end with the same parameters.
    func testTwoNodesOfRadarLaunchRestartTogether() throws {
        let out = NSTemporaryDirectory() + "radar-restart-\(UUID().uuidString.prefix(6))"
        let texts = try twoNodes(["-n", "1", "--max-restarts", "1", "--", "radar-worker", "--data", MPITrainingTests.dataset, "--output", out,
                                  "--experiment", "e", "--config", "tiny", "--batch-size", "4", "--num-epochs", "1", "--max-steps-per-epoch", "4",
                                  "--threads", "1", "--timeout", "20"], "two nodes restarting", env: ["RADAR_FAULT_INJECT": "step:1:kill:0"])
        XCTAssertTrue(texts[1].contains("rank 1 was killed by signal 9"), texts[1])
        for t in texts { XCTAssertTrue(t.contains("radar launch: restarting the job from `last` (restart 1 of 1)"), t) }
        XCTAssertEqual(parameterHashes(texts).count, 1, "both ranks end with the same parameters: \(texts)")
        XCTAssertEqual(texts.joined().split(separator: "\n").filter { $0.contains("fnv1a") }.count, 2, texts.joined())
    }

    /// Two `radar launch --nnodes 2` on this machine (node 1 started first), with a shared token
    /// file and a free master port, each given `args`: their outputs (node 0's first), each
    /// checked to end with status 0.
    func twoNodes(_ args: [String], _ label: String, env extra: [String: String] = [:]) throws -> [String] {
        let radar = MPITrainingTests.products.appendingPathComponent("radar").path
        let tokenFile = NSTemporaryDirectory() + "radar-nodes-token-\(getpid())-\(UUID().uuidString.prefix(6))"
        try HMACSHA256.randomHex().write(toFile: tokenFile, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: tokenFile) }
        let port = try TCPRendezvous.freePort()
        var env = ProcessInfo.processInfo.environment
        env["OPENBLAS_NUM_THREADS"] = "1"
        env["RADAR_JOB_TOKEN"] = nil
        env.merge(extra) { $1 }
        let nodes = try [1, 0].map { node in
            try startCaptured(radar, ["launch", "--nnodes", "2", "--node-rank", String(node), "--master", "127.0.0.1:\(port)", "--token-file", tokenFile]
                              + args, environment: env)
        }
        return collect(nodes, label).reversed()
    }

    /// Ranks that meet over IPv6 only: rank 0's coordinator at MASTER_ADDR ::1 (bare, as torchrun
    /// passes it, and in brackets), so every rank's data listener binds ::1 and the whole mesh,
    /// shared memory off, runs over IPv6. They end with the parameters of the same job over
    /// 127.0.0.1. In a network namespace of its own with IPv6 on its loopback (root, as CI),
    /// so the test does not depend on the machine's own IPv6 settings.
    func testRanksMeetAndTrainOverIPv6() throws {
        XCTAssertEqual(geteuid(), 0, "a network namespace needs root (CI has it)")
        guard geteuid() == 0 else { return }
        let ns = try LoopbackNamespace()
        let token = HMACSHA256.randomHex(bytes: 16)
        var hashes: [String: Set<String>] = [:]
        for master in ["127.0.0.1", "::1", "[::1]"] {
            let texts = try twoTCPRanks("MASTER_ADDR \(master)", prefix: ns.prefix) { r in
                ["RANK": String(r), "WORLD_SIZE": "2", "MASTER_ADDR": master, "MASTER_PORT": "29533", "RADAR_JOB_TOKEN": token, "RADAR_SHM_DISABLE": "1"]
            }
            hashes[master] = parameterHashes(texts)
            XCTAssertEqual(hashes[master]?.count, 1, "MASTER_ADDR \(master): both ranks end with the same parameters: \(texts)")
        }
        XCTAssertEqual(hashes["::1"], hashes["127.0.0.1"], "IPv6 and IPv4 give the same job")
        XCTAssertEqual(hashes["[::1]"], hashes["127.0.0.1"])
    }

    /// A straggler's slow loader holds both ranks at the all-reduce: the epoch's data wait is
    /// the most any rank waited (rank 1's, in rank 0's metrics) and the log says input-bound.
    func testTheSlowestRanksDataWaitIsTheRunsDataWait() throws {
        let token = HMACSHA256.randomHex(bytes: 16), port = try TCPRendezvous.freePort()
        let out = NSTemporaryDirectory() + "radar-straggler-\(UUID().uuidString.prefix(6))"
        let texts = try twoTCPRanks("a slow loader on rank 1", out: out) { r in
            ["RANK": String(r), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": String(port), "RADAR_JOB_TOKEN": token,
             "RADAR_FAULT_INJECT": "batch:1:slow"]
        }
        let metrics = try String(contentsOfFile: out + "/e/metrics.jsonl", encoding: .utf8)
        let epoch = metrics.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
            .first { $0["data_wait_seconds"] != nil }
        let wait = epoch?["data_wait_seconds"] as? Double ?? 0
        XCTAssertGreaterThanOrEqual(wait, 0.24, "rank 1 slept 0.25 s on every batch: \(metrics)")
        XCTAssertLessThan(wait, epoch?["step_seconds"] as? Double ?? 0, "within the step: \(metrics)")
        XCTAssertEqual(epoch?["data_wait_rank"] as? Double, 1, "the straggler named: \(metrics)")
        XCTAssertTrue(texts[0].contains("waiting for images on rank 1: input-bound"), texts[0])
    }

    /// Two ranks started the way torchrun (MASTER_PORT held by its store) and srun (SLURM_*
    /// only) start them train and agree.
    func testTorchrunAndSrunStyleRanksTrain() throws {
        let token = HMACSHA256.randomHex(bytes: 16)
        // torchrun's store: something already listens on MASTER_PORT, and rank 0's coordinator
        // takes the next port. Both from below the kernel's ephemeral range, as `radar launch`
        // draws its port: a store on an automatic port had its next port in that range, where
        // another test's connection could take it first.
        var store: Int32 = -1, masterPort = 0
        for _ in 0..<50 where store < 0 {
            let p = try TCPRendezvous.freePort()
            guard let (fd, _) = try? Sockets.listen(host: "127.0.0.1", port: p) else { continue }
            if let (next, _) = try? Sockets.listen(host: "0.0.0.0", port: p + 1) { close(next); (store, masterPort) = (fd, p) } else { close(fd) }
        }
        XCTAssertGreaterThanOrEqual(store, 0, "a free pair of ports for the store and the coordinator")
        defer { close(store) }
        let slurmJob = Int.random(in: 1000...9000)
        for (name, envFor) in [
            ("torchrun", { (r: Int) -> [String: String] in
                ["RANK": String(r), "WORLD_SIZE": "2", "LOCAL_RANK": String(r), "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": String(masterPort), "TORCHELASTIC_RUN_ID": "test", "RADAR_JOB_TOKEN": token] }),
            ("srun", { (r: Int) -> [String: String] in
                ["SLURM_PROCID": String(r), "SLURM_NTASKS": "2", "SLURM_LOCALID": String(r), "SLURM_NTASKS_PER_NODE": "2",
                 "SLURM_LAUNCH_NODE_IPADDR": "127.0.0.1", "SLURM_JOB_ID": String(slurmJob), "RADAR_JOB_TOKEN": token] }),
        ] {
            let texts = try twoTCPRanks(name, env: envFor)
            let hashes = parameterHashes(texts)
            XCTAssertEqual(hashes.count, 1, "\(name): both ranks end with the same parameters: \(texts)")
            XCTAssertTrue(texts[0].contains("(\(name))"), "rank 0 says which launcher it recognised: \(texts[0])")
        }
    }
    /// Two `radar-worker --transport tcp` ranks of a short tiny job (each with `env(rank)` over
    /// a clean launch environment, started through `prefix` if any): their outputs, each rank
    /// checked to end with status 0.
    func twoTCPRanks(_ label: String, prefix: [String] = [], out: String = NSTemporaryDirectory() + "radar-ranks-\(UUID().uuidString)",
                     env extra: (Int) -> [String: String]) throws -> [String] {
        let worker = MPITrainingTests.products.appendingPathComponent("radar-worker").path
        let args = (prefix.isEmpty ? [] : Array(prefix.dropFirst()) + [worker])
            + ["--transport", "tcp", "--data", MPITrainingTests.dataset, "--output", out, "--experiment", "e", "--config", "tiny",
               "--batch-size", "4", "--num-epochs", "1", "--max-steps-per-epoch", "3", "--threads", "1", "--timeout", "20"]
        let ranks = try (0..<2).map { r in
            var env = ProcessInfo.processInfo.environment
            for k in ["RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "TORCHELASTIC_RUN_ID"] { env[k] = nil }
            env["OPENBLAS_NUM_THREADS"] = "1"
            env.merge(extra(r)) { $1 }
            return try startCaptured(prefix.first ?? worker, args, environment: env)
        }
        return collect(ranks, label)
    }

    /// A process started with stdout and stderr into one pipe.
    func startCaptured(_ executable: String, _ arguments: [String], environment: [String: String]) throws -> (Process, Pipe) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: executable)
        p.arguments = arguments
        p.environment = environment
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = pipe
        try p.run()
        return (p, pipe)
    }

    /// Each process's output once it ended, each checked to end with status 0.
    func collect(_ procs: [(Process, Pipe)], _ label: String) -> [String] {
        procs.map { p, pipe in
            let text = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            p.waitUntilExit()
            XCTAssertEqual(p.terminationStatus, 0, "\(label): \(text)")
            return text
        }
    }

    /// The parameter hashes the ranks printed.
    func parameterHashes(_ texts: [String]) -> Set<String> {
        Set(texts.joined().split(separator: "\n").filter { $0.contains("fnv1a") }.map { String($0.split(separator: " ")[4]) })
    }
}
