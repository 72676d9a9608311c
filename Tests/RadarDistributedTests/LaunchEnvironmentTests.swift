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
            XCTAssertEqual("\($0)", "--coordinator h:70000: expected HOST:PORT with a port in 1...65535")
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
            let out = NSTemporaryDirectory() + "radar-\(name)-\(UUID().uuidString.prefix(6))"
            var procs: [(Process, Pipe)] = []
            for r in 0..<2 {
                let p = Process()
                p.executableURL = MPITrainingTests.products.appendingPathComponent("radar-worker")
                p.arguments = ["--transport", "tcp", "--data", MPITrainingTests.dataset, "--output", out, "--experiment", "e", "--config", "tiny",
                               "--batch-size", "4", "--num-epochs", "1", "--max-steps-per-epoch", "3", "--threads", "1", "--timeout", "20"]
                var env = ProcessInfo.processInfo.environment
                for k in ["RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "TORCHELASTIC_RUN_ID"] { env[k] = nil }
                env["OPENBLAS_NUM_THREADS"] = "1"
                env.merge(envFor(r)) { $1 }
                p.environment = env
                let pipe = Pipe()
                p.standardOutput = pipe
                p.standardError = pipe
                try p.run()
                procs.append((p, pipe))
            }
            var texts: [String] = []
            for (p, pipe) in procs {
                texts.append(String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self))
                p.waitUntilExit()
                XCTAssertEqual(p.terminationStatus, 0, "\(name): \(texts.last!)")
            }
            let hashes = Set(texts.joined().split(separator: "\n").filter { $0.contains("fnv1a") }.map { String($0.split(separator: " ")[4]) })
            XCTAssertEqual(hashes.count, 1, "\(name): both ranks end with the same parameters: \(texts)")
            XCTAssertTrue(texts[0].contains("(\(name))"), "rank 0 says which launcher it recognised: \(texts[0])")
        }
    }
}
