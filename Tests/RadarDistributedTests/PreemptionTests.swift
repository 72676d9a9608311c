import Foundation
import RadarCore
import XCTest

/// SIGTERM (what SLURM and Kubernetes send before a kill): the current optimizer step finishes,
/// `last` is written, every rank stops after the same step, exit status 75; `--resume auto` goes on.
extension MPITrainingTests {
    func start(_ argv: [String]) throws -> (Process, Pipe) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = argv
        var env = ProcessInfo.processInfo.environment
        env["OPENBLAS_NUM_THREADS"] = "1"
        p.environment = env
        let err = Pipe()
        p.standardError = err
        p.standardOutput = Pipe()
        try p.run()
        return (p, err)
    }

    /// Waits until `path` has at least `lines` lines (the run's steps.jsonl).
    func waitForSteps(_ path: String, lines: Int, timeout: TimeInterval = 120) {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let s = try? String(contentsOfFile: path, encoding: .utf8), s.split(separator: "\n").count >= lines { return }
            usleep(50_000)
        }
        XCTFail("\(path): fewer than \(lines) steps after \(timeout) s")
    }

    /// The run's per-step log.
    func stepsFile(_ out: String) -> String { out + "/e/metrics.jsonl" }

    func assertStoppedCleanly(_ out: String, _ err: String, file: StaticString = #filePath, line: UInt = #line) throws {
        XCTAssertTrue(err.contains("stopping after the current optimizer step"), err, file: file, line: line)
        let m = try XCTUnwrap(err.range(of: #"after optimizer step (\d+)"#, options: .regularExpression), err, file: file, line: line)
        let step = Int(err[m].split(separator: " ").last!)!
        let last = try Checkpoint.read(out + "/e/last.safetensors.lz4")
        XCTAssertEqual(last.state.optimizerStep, step, "last is the step the run stopped after", file: file, line: line)
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: out + "/e").filter { $0.contains(".tmp") }
        XCTAssertEqual(leftovers, [], file: file, line: line)
    }

    /// `radar train` on the tiny config for many epochs, started through env(1) with `envOptions`
    /// (its signal dispositions), once three steps are logged.
    func startTinyRun(_ out: String, envOptions: [String] = []) throws -> (Process, Pipe) {
        let radar = MPITrainingTests.products.appendingPathComponent("radar").path
        let run = try start(envOptions + [radar, "train", "--data", MPITrainingTests.dataset, "--output", out, "--experiment", "e", "--config", "tiny",
                                          "--batch-size", "4", "--num-epochs", "200", "--patience", "200", "--accumulation-steps", "1", "--threads", "1"])
        waitForSteps(stepsFile(out), lines: 3)
        return run
    }

    /// Sends `signal` (twice, `repeatAfter` seconds apart, when given) and asserts the run stopped
    /// after a step with `last` written and status 75; its stderr.
    @discardableResult
    func stopAndCheck(_ run: (Process, Pipe), _ out: String, _ signal: Int32, repeatAfter: TimeInterval? = nil) throws -> String {
        let (p, err) = run
        kill(p.processIdentifier, signal)
        if let repeatAfter {
            usleep(UInt32(repeatAfter * 1e6))
            kill(p.processIdentifier, signal)
        }
        let e = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 75, e)
        try assertStoppedCleanly(out, e)
        XCTAssertTrue(e.contains("radar: stopped by \(SignalWatch.name(signal)) after optimizer step"), e)
        return e
    }

    func testSIGTERMFinishesTheStepWritesLastAndExits75() throws {
        let out = tmp("sigterm")
        try stopAndCheck(try startTinyRun(out), out, SIGTERM)
    }

    /// SIGHUP (a closed terminal, a dropped SSH session) stops a run as SIGTERM does, except under
    /// `nohup` (SIGHUP ignored at start: it stays ignored); a repeat within a second of the first
    /// request is the same request (Ctrl-C reaches every process of the terminal's group and
    /// `radar launch` forwards it too), not "again: stop at once" without `last`.
    func testSIGHUPStopsTheRunUnlessIgnoredAndAQuickRepeatIsTheSameRequest() throws {
        // As the child of a shell that was not started under nohup.
        let out = tmp("sighup")
        try stopAndCheck(try startTinyRun(out, envOptions: ["--default-signal=HUP"]), out, SIGHUP)

        // Under nohup: the hangup changes nothing; then SIGTERM twice, 20 ms apart (the first has
        // been handled by then, and the step and `last` take longer).
        let out2 = tmp("nohup")
        let run = try startTinyRun(out2, envOptions: ["--ignore-signal=HUP"])
        kill(run.0.processIdentifier, SIGHUP)
        let stepsBefore = (try String(contentsOfFile: stepsFile(out2), encoding: .utf8)).split(separator: "\n").count
        waitForSteps(stepsFile(out2), lines: stepsBefore + 3)
        XCTAssertTrue(run.0.isRunning, "a run under nohup ended on SIGHUP")
        let e2 = try stopAndCheck(run, out2, SIGTERM, repeatAfter: 0.02)
        XCTAssertFalse(e2.contains("SIGHUP") || e2.contains("SIGTERM again"), e2)
    }

    func testSIGTERMToOneMPIRankStopsBothAfterTheSameStep() throws {
        let out = tmp("sigterm-mpi")
        var argv = ["mpirun", "--oversubscribe"]
        if geteuid() == 0 { argv.append("--allow-run-as-root") }
        argv += ["-n", "2", MPITrainingTests.products.appendingPathComponent("radar-worker").path, "--data", MPITrainingTests.dataset,
                 "--output", out, "--experiment", "e", "--config", "tiny", "--batch-size", "4", "--num-epochs", "200", "--patience", "200",
                 "--accumulation-steps", "1", "--threads", "1", "--timeout", "60"]
        let (p, err) = try start(argv)
        waitForSteps(stepsFile(out), lines: 3)
        // Rank 1 only: the ranks must agree to stop together.
        let pids = String(decoding: try Process.runCapturing(["pgrep", "-f", "radar-worker --data .* --output \(out)"]), as: UTF8.self)
            .split(separator: "\n").compactMap { Int32($0) }.filter { $0 != p.processIdentifier }.sorted()
        XCTAssertEqual(pids.count, 2, "the two ranks")
        kill(pids.last!, SIGTERM)
        let e = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        XCTAssertNotEqual(p.terminationStatus, 0, e)
        try assertStoppedCleanly(out, e)
        XCTAssertEqual(e.components(separatedBy: "after optimizer step").count - 1, 2, "both ranks stop:\n\(e)")
        XCTAssertTrue(e.contains("stopped by a signal to another rank") && e.contains("stopped by SIGTERM"), e)
    }
}
