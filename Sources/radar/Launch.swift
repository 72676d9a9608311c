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
        // Wait; if any rank fails, give the others `grace` seconds to stop on their own, then kill them.
        var failed: Int32 = 0
        var failedAt: Date?
        while procs.contains(where: { $0.isRunning }) {
            for (r, p) in procs.enumerated() where !p.isRunning && p.terminationStatus != 0 && failed == 0 {
                failed = p.terminationStatus
                failedAt = Date()
                logLine("radar launch: rank \(r) exited with status \(p.terminationStatus)")
            }
            if let t = failedAt, Date().timeIntervalSince(t) > grace {
                for p in procs where p.isRunning { kill(p.processIdentifier, SIGKILL) }
            }
            usleep(50_000)
        }
        for (r, p) in procs.enumerated() where p.terminationStatus != 0 && failed == 0 {
            failed = p.terminationStatus
            logLine("radar launch: rank \(r) exited with status \(p.terminationStatus)")
        }
        if failed != 0 { throw ExitCode(failed) }
    }
}
