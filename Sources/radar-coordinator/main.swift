import ArgumentParser
import Foundation
import RadarCore
import RadarDistributed

/// The coordinator service for multi-pod runs: `radar-coordinator --data DIR --listen HOST:PORT
/// --world-size N --token-file F`, and `radar-coordinator status --address HOST:PORT --token-file F`.
struct RadarCoordinator: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "radar-coordinator",
        abstract: "RADAR's control plane: registration, peer table, epoch plans, heartbeats, abort.",
        subcommands: [Serve.self, Status.self], defaultSubcommand: Serve.self)

    static func token(_ file: String?) throws -> Data {
        try JobToken.required(file: file, missing: "a job token is needed: --token-file or RADAR_JOB_TOKEN (make one with `openssl rand -hex 32`)")
    }

    static func split(_ address: String, allowAnyPort: Bool = false) throws -> (String, Int) {
        guard let a = hostPort(address, allowAnyPort: allowAnyPort) else { throw ValidationError(hostPortExpectation(address, allowAnyPort: allowAnyPort)) }
        return a
    }

    struct Serve: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "serve", abstract: "Run the coordinator (the default).")
        @Option(help: "Prepared dataset directory (for the manifest hash and epoch plans).") var data: String?
        @Option(help: "HOST:PORT to listen on.") var listen = "0.0.0.0:7070"
        @Option(help: "Number of ranks in the job.") var worldSize: Int
        @Option(help: "File holding the job token (default: RADAR_JOB_TOKEN).") var tokenFile: String?
        @Option(help: "Seconds without a heartbeat before a rank is declared lost.") var heartbeatDeadline: Double = 10
        @Option(help: "Seconds to wait for every rank to register.") var rendezvousTimeout: Double = 600

        func validate() throws {
            if !(1...maximumWorldSize).contains(worldSize) { throw ValidationError("--world-size must be from 1 to \(maximumWorldSize), got \(worldSize)") }
            for (flag, v) in [("heartbeat-deadline", heartbeatDeadline), ("rendezvous-timeout", rendezvousTimeout)] where !(v > 0 && v.isFinite) {
                throw ValidationError("--\(flag) must be a positive number of seconds, got \(v)")
            }
            if heartbeatDeadline < CoordinatorClient.minimumHeartbeatDeadline {
                throw ValidationError("--heartbeat-deadline must be at least \(Int(CoordinatorClient.minimumHeartbeatDeadline)) seconds (ranks send a heartbeat every second), got \(heartbeatDeadline)")
            }
            // Here rather than in run: an error in validate shows this command's usage (run's
            // showed the top level's, "radar-coordinator <subcommand>").
            _ = try RadarCoordinator.split(listen, allowAnyPort: true)
        }

        func run() throws {
            keepRunningWithoutReaders()
            do {
                let (host, port) = try RadarCoordinator.split(listen, allowAnyPort: true)
                let server = try CoordinatorServer(host: host, port: port, worldSize: worldSize, token: try RadarCoordinator.token(tokenFile))
                server.attempt = nil  // whichever attempt of a restarted job its first rank is of
                server.heartbeatDeadline = heartbeatDeadline
                server.rendezvousDeadline = rendezvousTimeout
                server.log = logLine
                if let d = data {
                    let set = try ShardSet(directory: d)
                    if let n = set.indexNote { logLine(n) }
                    server.manifestHash = set.manifest.contentHash
                    server.planDigest = { r in
                        EpochPlan(set: set, seed: r.seed, epoch: r.epoch, worldSize: r.worldSize, batchSize: r.batchSize,
                                  accumulationSteps: r.accumulationSteps, maxStepsPerEpoch: r.maxStepsPerEpoch).digest
                    }
                }
                logLine("radar-coordinator: listening on \(hostPortText(host, server.port)) for \(worldSize) ranks")
                while true {
                    Thread.sleep(forTimeInterval: 1)
                    if let ranks = server.status()["ranks"] as? [[String: Any]], ranks.allSatisfy({ $0["finished"] as? Bool == true }) {
                        logLine("radar-coordinator: every rank finished")
                        return
                    }
                    if server.status()["lost_rank"] is Int {
                        Thread.sleep(forTimeInterval: 2)
                        throw ExitCode.failure
                    }
                }
            } catch let e as ExitCode { throw e } catch {
                logLine("radar-coordinator: error: \(errorLine(error))")
                throw ExitCode.failure
            }
        }
    }

    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print a running job's status as JSON.")
        @Option(help: "The coordinator's HOST:PORT.") var address: String
        @Option(help: "File holding the job token (default: RADAR_JOB_TOKEN).") var tokenFile: String?

        func validate() throws { _ = try RadarCoordinator.split(address) }

        func run() throws {
            do {
                let (host, port) = try RadarCoordinator.split(address)
                let s = try CoordinatorClient.status(host: host, port: port, token: try RadarCoordinator.token(tokenFile))
                let d = try JSONSerialization.data(withJSONObject: s, options: [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes])
                print(String(decoding: d, as: UTF8.self))
            } catch {
                logLine("radar-coordinator status: \(errorLine(error))")
                throw ExitCode.failure
            }
        }
    }
}

// Better OpenBLAS kernels than the library chose, when the CPU has them (before MPI starts).
ProgramImage.nameAfterProgram()
BLASKernels.reexecWithBestKernelsIfNeeded()
StandardStreams.openClosed()
_ = ArchiveNames.utf8  // before any thread: setlocale is process-wide
OpenSSLLibrary.prepare()
RadarCoordinator.main()
finishStandardOutput("radar-coordinator")
