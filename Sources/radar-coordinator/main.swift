import ArgumentParser
import Foundation

/// The control-plane service for multi-pod runs (registration, epoch plans, heartbeats). Not
/// built yet: single-node `mpirun -n N radar-worker` needs no coordinator. Says so clearly
/// instead of pretending to serve.
struct RadarCoordinator: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "radar-coordinator",
        abstract: "RADAR's coordinator service for multi-pod runs (not available in this build).")

    @Option(help: "Address to listen on, HOST:PORT.") var listen: String?

    func run() throws {
        FileHandle.standardError.write(Data(
            "radar-coordinator: the coordinator service is not part of this build yet; single-node runs use `mpirun -n N radar-worker` without one\n".utf8))
        throw ExitCode(2)
    }
}

RadarCoordinator.main()
