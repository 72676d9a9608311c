import ArgumentParser
import Foundation
import RadarCore
import RadarDistributed

/// `radar launch -n N -- radar-worker ...`: N local TCP ranks where mpirun is missing.
struct Launch: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Start N local ranks of a program with the TCP transport (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).")
    @Option(name: .short, help: "Number of ranks.") var n: Int
    @Option(help: "Seconds to wait for the other ranks after one fails, before killing them.") var grace: Double = 10
    @Argument(parsing: .captureForPassthrough, help: "The program and its arguments (after --).") var command: [String]

    func run() throws {
        var cmd = command
        if cmd.first == "--" { cmd.removeFirst() }
        guard n > 0, let program = cmd.first else { throw ValidationError("usage: radar launch -n N -- PROGRAM ARGS...") }
        // A program named without a path is looked up next to this executable first.
        let here = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent(program).path
        let exe = program.contains("/") ? program : (FileManager.default.isExecutableFile(atPath: here) ? here : program)
        var args = Array(cmd.dropFirst())
        if (program as NSString).lastPathComponent == "radar-worker" && !args.contains("--transport") { args += ["--transport", "tcp"] }
        let port = try TCPRendezvous.freePort()
        let token = HMACSHA256.randomHex()
        var procs: [Process] = []
        for r in 0..<n {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: exe.hasPrefix("/") ? exe : "/usr/bin/env")
            p.arguments = exe.hasPrefix("/") ? args : [exe] + args
            var env = ProcessInfo.processInfo.environment
            env["RANK"] = String(r); env["WORLD_SIZE"] = String(n); env["LOCAL_RANK"] = String(r); env["LOCAL_WORLD_SIZE"] = String(n)
            env["MASTER_ADDR"] = "127.0.0.1"; env["MASTER_PORT"] = String(port); env["RADAR_JOB_TOKEN"] = token
            // A rank whose launcher dies gets SIGTERM (see `ParentWatch`): no orphans keep training.
            env["RADAR_LAUNCHER_PID"] = String(getpid())
            if env["OPENBLAS_NUM_THREADS"] == nil { env["OPENBLAS_NUM_THREADS"] = "1" }
            p.environment = env
            try p.run()
            procs.append(p)
        }
        // SIGTERM/SIGINT to the launcher go to every rank (each stops after the same optimizer step).
        var forwarders: [DispatchSourceSignal] = []
        for s in [SIGTERM, SIGINT] {
            signal(s, SIG_IGN)
            let src = DispatchSource.makeSignalSource(signal: s, queue: .global())
            src.setEventHandler { for p in procs where p.isRunning { kill(p.processIdentifier, s) } }
            src.resume()
            forwarders.append(src)
        }
        defer { forwarders.forEach { $0.cancel() } }
        // Wait for every rank (the launcher never exits before them); if one fails, give the others
        // `grace` seconds to stop on their own, then kill them. Each failure is reported once.
        var failed: Int32 = 0
        var failedAt: Date?
        var reported = Set<Int>()
        func report() {
            for (r, p) in procs.enumerated() where !p.isRunning && !reported.contains(r) {
                reported.insert(r)
                let (code, text) = Launch.describe(p)
                guard code != 0 else { continue }
                logLine("radar launch: rank \(r) \(text)")
                if failed == 0 { failed = code; failedAt = Date() }
            }
        }
        while procs.contains(where: { $0.isRunning }) {
            report()
            if let t = failedAt, Date().timeIntervalSince(t) > grace {
                for p in procs where p.isRunning { kill(p.processIdentifier, SIGKILL) }
            }
            usleep(50_000)
        }
        report()
        if failed != 0 { throw ExitCode(failed) }
    }

    /// The launcher's exit code for a finished rank (128 + N for a signal, as shells do) and how it ended.
    static func describe(_ p: Process) -> (Int32, String) {
        if p.terminationReason == .uncaughtSignal {
            let s = p.terminationStatus
            let name = [SIGKILL: "SIGKILL", SIGTERM: "SIGTERM", SIGINT: "SIGINT", SIGSEGV: "SIGSEGV", SIGABRT: "SIGABRT", SIGBUS: "SIGBUS"][s] ?? "signal \(s)"
            return (128 + s, "was killed by signal \(s) (\(name))")
        }
        return (p.terminationStatus, "exited with status \(p.terminationStatus)")
    }
}
