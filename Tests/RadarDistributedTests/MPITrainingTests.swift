import Foundation
import XCTest

/// Real multi-process runs: `mpirun -n N radar-worker` must leave every rank with bit-identical
/// parameters (compared by hash) after data-parallel steps with MPI_Allreduce.
final class MPITrainingTests: XCTestCase {
    /// The directory holding the built executables (next to the test bundle).
    var productsDirectory: URL {
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    }

    func mpirun(ranks: Int, _ args: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        var argv = ["mpirun", "--oversubscribe"]
        if geteuid() == 0 { argv.append("--allow-run-as-root") }
        argv += ["-n", String(ranks), productsDirectory.appendingPathComponent("radar-worker").path] + args
        p.arguments = argv
        var env = ProcessInfo.processInfo.environment
        env["OPENBLAS_NUM_THREADS"] = "1"
        p.environment = env
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile(), e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
    }

    func assertReplicasAgree(ranks: Int, file: StaticString = #filePath, line: UInt = #line) throws {
        let r = try mpirun(ranks: ranks, ["--config", "tiny", "--steps", "3", "--batch-size", "4", "--threads", "1"])
        XCTAssertEqual(r.status, 0, "mpirun -n \(ranks) failed:\n\(r.stderr)", file: file, line: line)
        let hashes = r.stdout.split(separator: "\n").filter { $0.hasPrefix("rank ") }
            .map { $0.split(separator: " ")[4] }
        XCTAssertEqual(hashes.count, ranks, "every rank reports its parameter hash:\n\(r.stdout)\n\(r.stderr)", file: file, line: line)
        XCTAssertEqual(Set(hashes).count, 1, "ranks disagree: \(hashes)", file: file, line: line)
    }

    func testTwoRanksEndWithIdenticalParameters() throws { try assertReplicasAgree(ranks: 2) }

    func testFourRanksEndWithIdenticalParameters() throws { try assertReplicasAgree(ranks: 4) }
}
