import Foundation
import RadarCore
import XCTest

/// Fault injection with real processes: a rank kills (SIGKILL) or freezes (SIGSTOP) itself at a
/// phase of a 2-rank job (`RADAR_FAULT_INJECT`), over MPI (mpirun) and TCP (`radar launch`).
/// Every case must end within its deadline, with no process left, no survivor crashing (they
/// exit with a status and one line), and `last`, when written, loadable. CI runs a short table;
/// RADAR_FAULT_MATRIX=full runs every phase x action x transport (RADAR_FAULT_REPEATS times,
/// victim alternating between rank 0, which hosts the coordinator, and rank 1).
final class FaultInjectionTests: XCTestCase {
    struct Case { let transport: String, phase: String, action: String, victim: Int }

    static let short: [Case] = [
        Case(transport: "tcp", phase: "step", action: "stop", victim: 1),
        Case(transport: "tcp", phase: "checkpoint", action: "kill", victim: 0),
        Case(transport: "tcp", phase: "init", action: "stop", victim: 1),
        Case(transport: "mpi", phase: "step", action: "stop", victim: 1),
        Case(transport: "mpi", phase: "init", action: "stop", victim: 1),
        Case(transport: "mpi", phase: "finalize", action: "stop", victim: 1),
    ]

    static var cases: [Case] {
        let env = ProcessInfo.processInfo.environment
        guard env["RADAR_FAULT_MATRIX"] == "full" else { return short }
        let repeats = Int(env["RADAR_FAULT_REPEATS"] ?? "") ?? 1
        var all: [Case] = []
        for r in 0..<repeats {
            for t in ["tcp", "mpi"] { for p in ["init", "load", "step", "validation", "checkpoint", "finalize"] { for a in ["kill", "stop"] {
                // Only rank 0 writes checkpoints.
                all.append(Case(transport: t, phase: p, action: a, victim: p == "checkpoint" ? 0 : (r + all.count) % 2))
            } } }
        }
        return all
    }

    // Short deadlines so a case ends in seconds: rendezvous 15 s, waits 10 s, heartbeats 3 s.
    static let deadline: TimeInterval = 15 + 10 + 10 + 10 + 10

    func run(_ c: Case) throws -> (ok: Bool, seconds: Double, summary: String) {
        let out = NSTemporaryDirectory() + "radar-fault-\(UUID().uuidString.prefix(6))"
        let bin = MPITrainingTests.products
        let args = ["--data", MPITrainingTests.dataset, "--output", out, "--experiment", "e", "--config", "tiny", "--batch-size", "4",
                    "--num-epochs", "2", "--max-steps-per-epoch", "4", "--accumulation-steps", "1", "--threads", "1", "--timeout", "10",
                    "--heartbeat-deadline", "3", "--rendezvous-timeout", "15"]
        let p = Process()
        if c.transport == "mpi" {
            var argv = ["mpirun", "--oversubscribe"]
            if geteuid() == 0 { argv.append("--allow-run-as-root") }
            p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            p.arguments = argv + ["-x", "RADAR_FAULT_INJECT", "-n", "2", bin.appendingPathComponent("radar-worker").path] + args
        } else {
            p.executableURL = bin.appendingPathComponent("radar")
            p.arguments = ["launch", "-n", "2", "--finish-grace", "10", "--", "radar-worker"] + args
        }
        var env = ProcessInfo.processInfo.environment
        env["OPENBLAS_NUM_THREADS"] = "1"
        env["RADAR_FAULT_INJECT"] = "\(c.phase):\(c.victim):\(c.action)"
        p.environment = env
        let err = Pipe()
        p.standardError = err
        p.standardOutput = err
        let reader = PipeReader(err)
        let t0 = Date()
        try p.run()
        var hung = false
        while p.isRunning {
            if Date().timeIntervalSince(t0) > FaultInjectionTests.deadline + 30 {
                hung = true
                // Everything of this case, the launcher included (it forwards SIGTERM rather than dying).
                for pid in String(decoding: try Process.runCapturing(["pgrep", "-f", out]), as: UTF8.self).split(separator: "\n").compactMap({ Int32($0) }) {
                    kill(pid, SIGKILL)
                }
                kill(p.processIdentifier, SIGKILL)
                break
            }
            usleep(100_000)
        }
        p.waitUntilExit()
        let seconds = Date().timeIntervalSince(t0)
        // Whatever is left of the job (a frozen rank the launcher did not stop would be here).
        let left = String(decoding: try Process.runCapturing(["pgrep", "-f", "radar-worker.*\(out)"]), as: UTF8.self)
            .split(separator: "\n").compactMap { Int32($0) }
        for pid in left { kill(pid, SIGKILL) }
        _ = reader.wait(until: .now() + 10)
        let log = reader.text
        var problems: [String] = []
        if hung { problems.append("hung past \(Int(FaultInjectionTests.deadline + 30)) s") }
        if seconds > FaultInjectionTests.deadline { problems.append("took \(Int(seconds)) s") }
        if !left.isEmpty { problems.append("\(left.count) rank(s) left running") }
        if p.terminationStatus == 0 && !log.contains("fault injection") { problems.append("the fault never fired") }
        for crash in ["Bad memory", "SIGSEGV", "signal 11", "Segmentation", "Fatal error", "Stack dump", "signal 6 ", "SIGABRT"] where log.contains(crash) {
            problems.append("a survivor crashed (\(crash))")
        }
        let survivor = 1 - c.victim
        // A survivor must stop on its own, except before the rendezvous completes: a rank that
        // died before registering looks like a late one (pods start minutes apart), and only the
        // launcher, which started them all, knows better and stops the rest after its grace period.
        if c.transport == "tcp" && c.phase != "init" && log.contains("radar launch: rank \(survivor) was killed") {
            problems.append("rank \(survivor) had to be killed by the launcher")
        }
        if FileManager.default.fileExists(atPath: out + "/e/last.safetensors.lz4") {
            do { _ = try Checkpoint.read(out + "/e/last.safetensors.lz4") } catch { problems.append("last is not loadable: \(error)") }
        }
        let summary = "\(c.transport) \(c.phase) \(c.action) rank \(c.victim): \(String(format: "%.1f", seconds)) s, status \(p.terminationStatus)"
            + (problems.isEmpty ? "" : " PROBLEMS: " + problems.joined(separator: "; ") + "\n" + log)
        return (problems.isEmpty, seconds, summary)
    }

    func testEveryInjectedFaultEndsTheJobCleanlyWithinItsDeadline() throws {
        var failures = 0, slowest = 0.0
        let all = FaultInjectionTests.cases
        for c in all {
            let r = try run(c)
            print("fault: " + r.summary.split(separator: "\n").first!)
            XCTAssertTrue(r.ok, r.summary)
            if !r.ok { failures += 1 }
            slowest = max(slowest, r.seconds)
        }
        print("fault injection: \(all.count) cases, \(failures) failures (hangs, crashes, orphans), slowest \(String(format: "%.1f", slowest)) s")
    }

    /// `radar launch --max-restarts 1`: rank 1 is killed after its second step of the first
    /// attempt; the launcher restarts the job from `last` and it ends with the parameters of a
    /// run that was never interrupted.
    func testLauncherRestartsAFailedJobAndEndsAsIfUninterrupted() throws {
        let bin = MPITrainingTests.products
        func launch(_ out: String, _ extra: [String], fault: String?) throws -> (Int32, String) {
            var env: [String: String] = ["OPENBLAS_NUM_THREADS": "1"]
            if let f = fault { env["RADAR_FAULT_INJECT"] = f }
            return try Process.runStatus([bin.appendingPathComponent("radar").path, "launch", "-n", "2"] + extra + ["--", "radar-worker",
                "--data", MPITrainingTests.dataset, "--output", out, "--experiment", "e", "--config", "tiny", "--batch-size", "4",
                "--num-epochs", "2", "--max-steps-per-epoch", "4", "--accumulation-steps", "1", "--threads", "1", "--timeout", "10",
                "--checkpoint-every", "1"], environment: env)
        }
        func hashes(_ text: String) -> Set<String> {
            Set(text.split(separator: "\n").filter { $0.hasPrefix("rank ") && $0.contains("fnv1a") }.map { String($0.split(separator: " ")[4]) })
        }
        let straight = NSTemporaryDirectory() + "radar-restart-a-\(UUID().uuidString.prefix(6))"
        let (rc0, text0) = try launch(straight, [], fault: nil)
        XCTAssertEqual(rc0, 0, text0)
        let restarted = NSTemporaryDirectory() + "radar-restart-b-\(UUID().uuidString.prefix(6))"
        let (rc1, text1) = try launch(restarted, ["--max-restarts", "1"], fault: "step:1:kill:0")
        XCTAssertEqual(rc1, 0, text1)
        XCTAssertTrue(text1.contains("fault injection: rank 1 killed at step"), text1)
        XCTAssertTrue(text1.contains("radar launch: restarting the job from `last` (restart 1 of 1)"), text1)
        XCTAssertEqual(hashes(text0).count, 1, text0)
        XCTAssertEqual(hashes(text1), hashes(text0), "the restarted job ends with the uninterrupted job's parameters")
        // Without restarts the same fault fails the job.
        let (rc2, text2) = try launch(NSTemporaryDirectory() + "radar-restart-c-\(UUID().uuidString.prefix(6))", [], fault: "step:1:kill")
        XCTAssertNotEqual(rc2, 0, text2)
    }

    /// The wall clock stepped forward an hour in the middle of a 2-rank TCP job (NTP, chrony's
    /// makestep, a VM resumed; here an LD_PRELOAD shim over clock_gettime, gettimeofday and time
    /// in every process): the job goes on and ends as usual. Its timeouts and heartbeats were
    /// measured on the wall clock, so the step ended it at once: "rank 0 lost (no heartbeat for
    /// 10 s)"; they are measured on the monotonic clock now.
    func testAWallClockStepDoesNotEndTheJob() throws {
        let folder = NSTemporaryDirectory() + "radar-clock-step-\(UUID().uuidString.prefix(6))"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let source = folder + "/clock_step.c", shim = folder + "/clock_step.so"
        try Self.clockStepShim.write(toFile: source, atomically: true, encoding: .utf8)
        let (crc, ctext) = try Process.runStatus(["clang", "-shared", "-fPIC", "-O1", "-o", shim, source, "-ldl"])
        XCTAssertEqual(crc, 0, ctext)
        let bin = MPITrainingTests.products
        let (rc, text) = try Process.runStatus([bin.appendingPathComponent("radar").path, "launch", "-n", "2", "--", "radar-worker",
            "--data", MPITrainingTests.dataset, "--output", folder + "/out", "--experiment", "e", "--config", "tiny", "--batch-size", "4",
            "--num-epochs", "6", "--accumulation-steps", "1", "--threads", "1", "--timeout", "10"],
            // Half a second in, six epochs: more of each process's life after its step is due.
            environment: ["OPENBLAS_NUM_THREADS": "1", "LD_PRELOAD": shim, "RADAR_TEST_CLOCK_STEP_AFTER": "0.5", "RADAR_TEST_CLOCK_STEP_BY": "3600"])
        // The step happened while the job ran, in two of the three processes at least: a process
        // steps at its first wall-clock reading past the time set, and in two dry runs one of them
        // (the launcher or rank 1, which read the wall clock seldom) had made its last reading
        // before that; three of three said it in every run by hand.
        XCTAssertGreaterThanOrEqual(text.components(separatedBy: "clock-step shim: the wall clock stepped +3600 s").count - 1, 2, text)
        XCTAssertEqual(rc, 0, text)
        XCTAssertFalse(text.contains(" lost"), text)
        XCTAssertTrue(text.contains("test AUC"), text)
    }

    /// Adds `RADAR_TEST_CLOCK_STEP_BY` seconds to the wall clock once the process has lived
    /// `RADAR_TEST_CLOCK_STEP_AFTER` seconds (measured on CLOCK_MONOTONIC, which it leaves alone),
    /// and says so once on stderr.
    static let clockStepShim = """
    #define _GNU_SOURCE
    #include <dlfcn.h>
    #include <stdlib.h>
    #include <string.h>
    #include <sys/time.h>
    #include <time.h>
    #include <unistd.h>
    static int (*real_clock_gettime)(clockid_t, struct timespec *);
    static struct timespec born;
    static double after = 1e300, by = 0;
    static int said;
    static void setup(void) {
        if (real_clock_gettime) return;
        real_clock_gettime = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
        real_clock_gettime(CLOCK_MONOTONIC, &born);
        const char *a = getenv("RADAR_TEST_CLOCK_STEP_AFTER"), *b = getenv("RADAR_TEST_CLOCK_STEP_BY");
        if (a && b) { after = atof(a); by = atof(b); }
    }
    static long offset(void) {
        struct timespec now;
        real_clock_gettime(CLOCK_MONOTONIC, &now);
        double lived = (double)(now.tv_sec - born.tv_sec) + (now.tv_nsec - born.tv_nsec) * 1e-9;
        if (lived < after) return 0;
        if (!__atomic_exchange_n(&said, 1, __ATOMIC_SEQ_CST)) {
            const char *m = "clock-step shim: the wall clock stepped +3600 s\\n";
            if (write(2, m, strlen(m)) < 0) {}
        }
        return (long)by;
    }
    int clock_gettime(clockid_t id, struct timespec *ts) {
        setup();
        int r = real_clock_gettime(id, ts);
        if (r == 0 && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE)) ts->tv_sec += offset();
        return r;
    }
    int gettimeofday(struct timeval *tv, void *tz) {
        (void)tz;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        tv->tv_sec = ts.tv_sec;
        tv->tv_usec = ts.tv_nsec / 1000;
        return 0;
    }
    time_t time(time_t *t) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        if (t) *t = ts.tv_sec;
        return ts.tv_sec;
    }
    """
}
