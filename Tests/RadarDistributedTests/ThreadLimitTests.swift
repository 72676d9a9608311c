import Foundation
import RadarCore
import XCTest

/// A limit on threads (RLIMIT_NPROC, which `ulimit -u` sets; a container's pids limit works the
/// same way). Foundation's `Thread.start()` says nothing when the system refuses a thread, so
/// `radar evaluate --threads 60` under such a limit hung for ever waiting for a loader that never
/// ran, and `--threads 50000` trapped in the compute pool. Now the pool runs with half of the
/// threads it could start, the loader with those it could start, and a thread that is needed and
/// cannot be started is a one-line error.
final class ThreadLimitTests: XCTestCase {
    let radar = MPITrainingTests.products.appendingPathComponent("radar").path

    /// A new folder anyone may write, for commands run as nobody; nil (a failure) where the test
    /// does not run as root.
    func folderForNobody(_ name: String) throws -> String? {
        XCTAssertEqual(geteuid(), 0, "a limit on threads binds only a user that is not root: the test runs commands as nobody (CI runs as root)")
        guard geteuid() == 0 else { return nil }
        let root = NSTemporaryDirectory() + "radar-\(name)-\(UUID().uuidString.prefix(6))"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        XCTAssertEqual(chmod(root, 0o777), 0)
        return root
    }

    func testALimitOnThreadsSlowsTheWorkOrIsSaidAndNeverHangs() throws {
        guard let root = try folderForNobody("thread-limit") else { return }
        defer { try? FileManager.default.removeItem(atPath: root) }
        func must(_ args: [String]) throws {
            let (rc, text) = try Process.runStatus(args)
            XCTAssertEqual(rc, 0, text)
        }
        try must([radar, "synth", "--output", root + "/data", "--count", "200", "--size", "32"])
        try must([radar, "train", "--data", root + "/data", "--config", "tiny", "--num-epochs", "1", "--max-steps-per-epoch", "1",
                  "--threads", "1", "--output", root + "/o", "--experiment", "e"])
        XCTAssertEqual(chmod(root + "/o", 0o777), 0)
        let checkpoint = root + "/o/e/best.safetensors.lz4"
        let evaluate = ["evaluate", "--checkpoint", checkpoint, "--data", root + "/data", "--split", "test"]
        let (rc, reference) = try Process.runStatus([radar] + evaluate + ["--threads", "1"])
        XCTAssertEqual(rc, 0, reference)
        let auc = try XCTUnwrap((try JSONSerialization.jsonObject(with: Data(reference.utf8)) as? [String: Any])?["auc"] as? Double)
        /// `radar ARGS` as nobody with at most `limit` threads, ended after 120 s if it hangs.
        func limited(_ limit: Int, _ args: [String]) throws -> (Int32, String) {
            try Process.runStatus(["timeout", "120", "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "prlimit", "--nproc=\(limit)", radar] + args,
                                  environment: ["OPENBLAS_NUM_THREADS": "1"])
        }
        // 60 compute threads under a limit of 20: half of those started run, the same metrics.
        let (slowRC, slow) = try limited(20, evaluate + ["--threads", "60"])
        XCTAssertEqual(slowRC, 0, slow)
        XCTAssertTrue(slow.contains(" of 60 compute threads could be started (Resource temporarily unavailable: the limit on threads is reached (ulimit -u, or a container's pids limit)): running with "), slow)
        let json = try XCTUnwrap(slow.split(separator: "\n").first { $0.hasPrefix("{") })
        XCTAssertEqual((try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])?["auc"] as? Double, auc)
        // Room for one more thread: shards opened, one compute thread, one loader; the same
        // metrics (libdispatch's threads, lingering after opening the shards, left no room for
        // the loader: "cannot start a thread").
        let (twoRC, two) = try limited(2, evaluate + ["--threads", "60"])
        XCTAssertEqual(twoRC, 0, two)
        // The parallel loop that opened the shards left its helper parked: ended when the compute
        // pool was refused a thread, it gave the pool its room (it ran with one fewer).
        XCTAssertTrue(two.contains("only 2 of 60 compute threads could be started"), two)
        let twoJSON = try XCTUnwrap(two.split(separator: "\n").first { $0.hasPrefix("{") }, two)
        XCTAssertEqual((try JSONSerialization.jsonObject(with: Data(twoJSON.utf8)) as? [String: Any])?["auc"] as? Double, auc)
        // No thread but the main one: no loader thread can start: said, status 1 (124 was the
        // hang: libdispatch's concurrentPerform, opening the shards, asked for a thread for ever).
        let (lowRC, low) = try limited(1, evaluate + ["--threads", "60"])
        XCTAssertEqual(lowRC, 1, low)
        XCTAssertTrue(low.contains("radar: error: cannot start a thread for loader worker 1 of 1: Resource temporarily unavailable: the limit on threads is reached (ulimit -u, or a container's pids limit)"), low)
        // Training with 8 + 8 threads under a limit of 14 finishes with what could be started.
        let (trainRC, trained) = try limited(14, ["train", "--data", root + "/data", "--config", "tiny", "--num-epochs", "1", "--max-steps-per-epoch", "2",
                                                  "--threads", "8", "--loader-threads", "8", "--output", root + "/o", "--experiment", "limited"])
        XCTAssertEqual(trainRC, 0, trained)
        XCTAssertTrue(trained.contains("threads could be started (Resource temporarily unavailable"), trained)
        XCTAssertTrue(trained.contains("test AUC"), trained)
        // Ranks are processes: one that cannot be started says which limit refused it.
        let (launchRC, launched) = try limited(4, ["launch", "-n", "4", "--", "radar-worker", "--data", root + "/data", "--config", "tiny",
                                                   "--num-epochs", "1", "--max-steps-per-epoch", "1", "--threads", "1", "--output", root + "/o", "--experiment", "launched"])
        XCTAssertEqual(launchRC, 1, launched)
        XCTAssertTrue(launched.contains("Resource temporarily unavailable: the limit on processes is reached (ulimit -u, or a container's pids limit; each rank is a process"), launched)
        // Far more threads than CPUs: refused before any work (50,000 trapped, 20,000 took minutes a step).
        let (manyRC, many) = try Process.runStatus([radar] + evaluate + ["--threads", "50000"])
        XCTAssertEqual(manyRC, 64, many)
        XCTAssertTrue(many.contains("--threads must be from 1 to \(max(64, 4 * ProcessInfo.processInfo.activeProcessorCount)) (four per CPU"), many)
    }

    /// A stop by signal under a limit on threads. The handlers ran on a libdispatch thread that
    /// had to be started when the signal came: with the room taken by the work there was none,
    /// and `radar synth` under `--nproc=3` went on after SIGINT as if it had not come (the
    /// watch had turned the signals' own actions off). Now the signal thread starts with the
    /// watch; where it cannot (no room but the main thread's), the default action ends the
    /// process.
    func testASignalStopsTheWorkUnderALimitOnThreads() throws {
        guard let root = try folderForNobody("signal-limit") else { return }
        defer { try? FileManager.default.removeItem(atPath: root) }
        /// `radar synth` (far more images than it makes before the signal) as nobody with at most
        /// `limit` threads, sent `signal` once its first shard is written: its status, how it
        /// ended, and what it said.
        func stopped(_ limit: Int, by signal: Int32) throws -> (Int32, Process.TerminationReason, String) {
            let output = root + "/data-\(limit)"
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            p.arguments = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "prlimit", "--nproc=\(limit)",
                           radar, "synth", "--output", output, "--count", "500000"]
            p.environment = ProcessInfo.processInfo.environment.merging(["OPENBLAS_NUM_THREADS": "1"]) { $1 }
            let out = Pipe()
            p.standardOutput = out
            p.standardError = out
            try p.run()
            let started = Date()
            while p.isRunning, !FileManager.default.fileExists(atPath: output + "/shard-000000.tar"), Date().timeIntervalSince(started) < 60 {
                usleep(50_000)
            }
            XCTAssertTrue(p.isRunning, "still making images when signalled")
            kill(p.processIdentifier, signal)
            let signalled = Date()
            while p.isRunning, Date().timeIntervalSince(signalled) < 30 { usleep(50_000) }
            let hung = p.isRunning
            if hung { kill(p.processIdentifier, SIGKILL) }
            let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            p.waitUntilExit()
            XCTAssertFalse(hung, "still running 30 s after \(SignalWatch.name(signal)) under --nproc=\(limit): \(text)")
            return (p.terminationStatus, p.terminationReason, text)
        }
        // The main thread, the signal thread and one more: the stop as without a limit.
        let (rc, how, said) = try stopped(3, by: SIGINT)
        XCTAssertEqual(how, .exit, said)
        XCTAssertEqual(rc, 128 + SIGINT, said)
        XCTAssertTrue(said.contains("radar synth: stopped by SIGINT: "), said)
        XCTAssertTrue(said.contains(" kept") && said.contains("the same command again resumes"), said)
        // No thread but the main one: nothing caught, SIGTERM's default action ends it.
        let (lowRC, lowHow, lowSaid) = try stopped(1, by: SIGTERM)
        XCTAssertEqual(lowHow, .uncaughtSignal, lowSaid)
        XCTAssertEqual(lowRC, SIGTERM, lowSaid)
    }

    /// A low limit on open files (`ulimit -n`, which binds root too). The shard files kept open
    /// were at least 8, so with a run's own dozen (standard streams, lock, metrics, event file,
    /// the signal pipe) `ulimit -n 16` stopped a run of a 40-shard dataset; now a quarter of
    /// the limit. Where even that is too much, the error names the limit, not "the dataset
    /// changed during the run".
    func testALowLimitOnOpenFilesTrainsOrNamesTheLimit() throws {
        let root = NSTemporaryDirectory() + "radar-file-limit-\(UUID().uuidString.prefix(6))"
        defer { try? FileManager.default.removeItem(atPath: root) }
        let (synthRC, synthSaid) = try Process.runStatus([radar, "synth", "--output", root + "/data", "--count", "400", "--shard-size", "10"])
        XCTAssertEqual(synthRC, 0, synthSaid)
        func train(_ limit: Int) throws -> (Int32, String) {
            try Process.runStatus(["prlimit", "--nofile=\(limit)", radar, "train", "--data", root + "/data", "--config", "tiny", "--num-epochs", "1",
                                   "--max-steps-per-epoch", "3", "--threads", "1", "--output", root + "/o", "--experiment", "files-\(limit)"],
                                  environment: ["OPENBLAS_NUM_THREADS": "1"])
        }
        let (rc, said) = try train(16)
        XCTAssertEqual(rc, 0, said)
        XCTAssertTrue(said.contains("test AUC"), said)
        let (lowRC, low) = try train(8)
        XCTAssertEqual(lowRC, 1, low)
        XCTAssertTrue(low.contains("Too many open files: the limit on open files is reached (ulimit -n 8)"), low)
        XCTAssertFalse(low.contains("the dataset changed"), low)
    }
}
