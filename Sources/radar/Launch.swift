import ArgumentParser
import Foundation
import RadarCore
import RadarDistributed
import RadarCLI

/// `radar launch -n N -- radar-worker ...`: N local TCP ranks where mpirun is missing; with
/// `--nnodes M --node-rank R --master HOST:PORT` on each of M machines, one job of M x N ranks (as
/// torchrun's static rendezvous does, for pods without MPI or PyTorch).
struct Launch: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Start N local ranks of a program with the TCP transport (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), on one machine or, with --nnodes, on each of several.")
    @Option(name: .short, help: "Number of ranks (on this machine).") var n: Int
    @Option(help: "Machines in the job, each running radar launch with the same -n (ranks node-rank x n ... node-rank x n + n - 1 here).") var nnodes = 1
    @Option(help: "This machine's place among --nnodes (0: the one whose first rank runs the coordinator).") var nodeRank = 0
    @Option(help: "HOST:PORT of node 0, where its first rank runs the coordinator (needed with --nnodes above 1; an IPv6 host in brackets). Default: 127.0.0.1 and a free port.")
    var master: String?
    @Option(help: "With --master: the file holding the job token every node shares (default: RADAR_JOB_TOKEN; without --master the launcher makes its own).") var tokenFile: String?
    @Option(help: "Seconds to wait for the other ranks after one fails, before stopping them.") var grace: Double = 10
    @Option(help: "Seconds the other ranks may take to finish after one finished cleanly (ranks end together; one that does not is stuck).")
    var finishGrace: Double = 60
    @Argument(parsing: .captureForPassthrough, help: "The program and its arguments (after --).") var command: [String]

    @Option(help: "Restart the whole job from `last` (adding --resume auto) up to N times after a rank fails, as torchrun's elastic agent does. Not after a stop by signal (status 75).")
    var maxRestarts = 0

    /// The flags and the program, checked before anything starts (here rather than in `run`, an
    /// error shows `radar launch`'s usage, not the top level's).
    func validate() throws {
        let (_, cmd) = try program()
        try checkJobFlags(isWorker: Launch.isWorker(cmd[0]), args: Array(cmd.dropFirst()))
    }

    static func isWorker(_ program: String) -> Bool { (program as NSString).lastPathComponent == "radar-worker" }

    /// The program to start, resolved, and the command line after `--`.
    private func program() throws -> (exe: String, command: [String]) {
        var cmd = command
        if cmd.first == "--" { cmd.removeFirst() }
        guard n > 0 else { throw ValidationError("-n must be at least 1, got \(n)") }
        // -n 100000 by mistake started processes for minutes (a fork bomb with radar-worker).
        guard n <= maximumThreads else {
            throw ValidationError("-n must be at most \(maximumThreads) here (four ranks per CPU of the \(ProcessInfo.processInfo.activeProcessorCount) this process may use, at least 64), got \(n)")
        }
        guard let program = cmd.first else { throw ValidationError("usage: radar launch -n N -- PROGRAM ARGS...") }
        try requireFlag(maxRestarts >= 0, "max-restarts", "0 or more", maxRestarts)
        try requireFlag(grace >= 0 && grace.isFinite, "grace", "a finite number of seconds, 0 or more", grace)
        try requireFlag(finishGrace >= 0 && finishGrace.isFinite, "finish-grace", "a finite number of seconds, 0 or more", finishGrace)
        try requireFlag(nnodes >= 1 && nnodes <= maximumWorldSize / n, "nnodes", "from 1 to \(maximumWorldSize / n) (at most \(maximumWorldSize) ranks in all)", nnodes)
        try requireFlag((0..<nnodes).contains(nodeRank), "node-rank", "in 0...\(nnodes - 1) (--nnodes \(nnodes))", nodeRank)
        let exe = try Launch.resolve(program: program, launcher: CommandLine.arguments[0],
                                     path: ProcessInfo.processInfo.environment["PATH"])
        return (exe, cmd)
    }

    func run() throws { try failing { try launch() } }

    private func launch() throws {
        let (exe, cmd) = try program()
        let program = cmd[0]
        var args = Array(cmd.dropFirst())
        let isWorker = Launch.isWorker(program)
        let job = try jobAddress()
        if isWorker && Launch.value(of: "--transport", in: args) == nil { args += ["--transport", "tcp"] }
        // The folder is named once, here: a restart continues in it rather than in a new timestamp.
        if isWorker && Launch.value(of: "--experiment", in: args) == nil {
            let output = Launch.value(of: "--output", in: args) ?? "outputs"
            let resume = Launch.value(of: "--resume", in: args)
            let name = ExperimentFolder.defaultName(output: output, resume: resume)
            logLine("radar launch: experiment \(name)")
            args += ["--experiment", name]
        }
        // SIGTERM/SIGINT/SIGHUP to the launcher go to every rank (each stops after the same
        // optimizer step; a rank that also got the terminal's own signal takes the two as one).
        let running = RunningRanks()
        let forwarders = SignalWatch([SIGTERM, SIGINT, SIGHUP]) { running.signal($0) }
        defer { forwarders.cancel() }
        var attempt = 0
        while true {
            let failed = try runOnce(exe: exe, args: args, attempt: attempt, running: running, job: job)
            if failed == 0 { return }
            let stoppedBySignal = failed == Preemption.Preempted.exitCode || running.signalled
            guard attempt < maxRestarts, !stoppedBySignal else { throw ExitCode(failed) }
            attempt += 1
            logLine("radar launch: restarting the job from `last` (restart \(attempt) of \(maxRestarts))")
            if isWorker && Launch.value(of: "--resume", in: args) == nil { args += ["--resume", "auto"] }
        }
    }

    /// The ranks of the current attempt, for signal forwarding.
    final class RunningRanks: @unchecked Sendable {
        private let lock = NSLock()
        private var procs: [Process] = []
        private(set) var signalled = false
        func set(_ p: [Process]) { lock.lock(); procs = p; lock.unlock() }
        func signal(_ s: Int32) {
            lock.lock(); signalled = true; let ps = procs; lock.unlock()
            for p in ps where p.isRunning { kill(p.processIdentifier, s) }
        }
    }

    /// Where the job meets and its token: node 0's HOST:PORT and the shared token with --master or
    /// several nodes (each then needed: a node cannot pick them alone), else nil (this machine, a
    /// free port and a fresh token each attempt).
    /// The token is read once, in `run` (a `--token-file <(...)` pipe can be read only once).
    func jobAddress() throws -> (host: String, port: Int, token: String?)? {
        guard let master, let (host, port) = hostPort(master) else { return nil }
        let token: String?
        do { token = try JobToken.read(file: tokenFile).map { String(decoding: $0, as: UTF8.self) } } catch { throw ValidationError("\(error)") }
        if nnodes > 1 && token == nil {
            throw ValidationError("--nnodes \(nnodes): every node needs the same job token: RADAR_JOB_TOKEN or --token-file (make one with `openssl rand -hex 32`)")
        }
        return (host, port, token)
    }

    /// What several machines need on the command line: node 0's address and one experiment
    /// folder.
    func checkJobFlags(isWorker: Bool, args: [String]) throws {
        if let master, hostPort(master) == nil { throw ValidationError("--master \(hostPortExpectation(master))") }
        guard nnodes > 1 else { return }
        if master == nil { throw ValidationError("--nnodes \(nnodes) needs --master HOST:PORT: node 0's address, where its first rank runs the coordinator") }
        if isWorker && Launch.value(of: "--experiment", in: args) == nil {
            throw ValidationError("--nnodes \(nnodes): give radar-worker --experiment NAME, the same on every node (each node would name its own folder)")
        }
    }

    /// One run of the job: N ranks, waited for; returns the first failure's exit code (0: success).
    func runOnce(exe: String, args: [String], attempt: Int, running: RunningRanks, job: (host: String, port: Int, token: String?)?) throws -> Int32 {
        let port = try job?.port ?? TCPRendezvous.freePort()
        let token = job?.token ?? HMACSHA256.randomHex()
        var procs: [Process] = []
        for r in 0..<n {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: exe)
            p.arguments = args
            var env = ProcessInfo.processInfo.environment
            env["RANK"] = String(nodeRank * n + r); env["WORLD_SIZE"] = String(nnodes * n)
            env["LOCAL_RANK"] = String(r); env["LOCAL_WORLD_SIZE"] = String(n)
            env["MASTER_ADDR"] = job?.host ?? "127.0.0.1"; env["MASTER_PORT"] = String(port); env["RADAR_JOB_TOKEN"] = token
            env["RADAR_LAUNCH_ATTEMPT"] = String(attempt)
            // A rank whose launcher dies gets SIGUSR1 (see `ParentWatch`): no orphans keep training.
            env["RADAR_LAUNCHER_PID"] = String(getpid())
            if env["OPENBLAS_NUM_THREADS"] == nil { env["OPENBLAS_NUM_THREADS"] = "1" }
            p.environment = env
            do { try p.run() } catch {
                // Ranks already started would wait for this one at the rendezvous: stop them.
                for q in procs where q.isRunning { kill(q.processIdentifier, SIGTERM) }
                procs.forEach { $0.waitUntilExit() }
                let limit = posixCode(error) == EAGAIN
                    ? ": the limit on processes is reached (ulimit -u, or a container's pids limit; each rank is a process, each of its threads counts)" : ""
                throw ValidationError("radar launch: cannot start rank \(nodeRank * n + r) (\(exe)): \(errorLine(error))\(limit)")
            }
            procs.append(p)
        }
        running.set(procs)
        defer { running.set([]) }
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
                logLine("radar launch: rank \(nodeRank * n + r) \(text)")
                if failed == 0 { failed = code; failedAt = monotonicNow() }
            }
        }
        var terminated = false
        var firstSuccess: Date?
        while procs.contains(where: { $0.isRunning }) {
            report()
            // The ranks of a job finish together: one still running long after another finished
            // cleanly is stuck (frozen, or waiting on a peer that is gone).
            if firstSuccess == nil, procs.contains(where: { !$0.isRunning && $0.terminationStatus == 0 }) { firstSuccess = monotonicNow() }
            if failed == 0, let t = firstSuccess, monotonicNow().timeIntervalSince(t) > finishGrace {
                let stuck = procs.indices.filter { procs[$0].isRunning }.map { nodeRank * n + $0 }
                logLine("radar launch: \(describeRanks(stuck)) did not finish within \(Int(finishGrace)) s of the others; stopping \(stuck.count > 1 ? "them" : "it")")
                failed = 1
                failedAt = monotonicNow().addingTimeInterval(-grace)
            }
            if let t = failedAt, monotonicNow().timeIntervalSince(t) > grace {
                // SIGTERM first (a rank still waiting for the rendezvous ends at once), SIGKILL 5 s later.
                let late = monotonicNow().timeIntervalSince(t) > grace + 5
                if !terminated || late {
                    for p in procs where p.isRunning { kill(p.processIdentifier, late ? SIGKILL : SIGTERM) }
                    terminated = true
                }
            }
            usleep(50_000)
        }
        report()
        return failed
    }

    /// The program to run: a name with a slash as given, else the file of that name next to this
    /// executable, else the first in PATH. Each must be an executable file.
    static func resolve(program: String, launcher: String, path: String?) throws -> String {
        func isProgram(_ p: String) -> Bool {
            var isDir: ObjCBool = false
            return FileManager.default.fileExists(atPath: p, isDirectory: &isDir) && !isDir.boolValue && FileManager.default.isExecutableFile(atPath: p)
        }
        if program.contains("/") {
            guard FileManager.default.fileExists(atPath: program) else { throw ValidationError("\(program): no such file") }
            guard isProgram(program) else { throw ValidationError("\(program): not an executable file") }
            return program
        }
        let here = URL(fileURLWithPath: launcher).deletingLastPathComponent().path
        let dirs = [here] + (path ?? "").split(separator: ":").map(String.init).filter { !$0.isEmpty }
        if let found = dirs.map({ ($0 as NSString).appendingPathComponent(program) }).first(where: isProgram) { return found }
        throw ValidationError("\(program): not found next to radar (\(here)) or in PATH")
    }

    /// The value a program's option takes in `args` (`--name V` or `--name=V`; the last one, as
    /// ArgumentParser reads it), or nil when absent. Everything after a `--` is an argument.
    static func value(of name: String, in args: [String]) -> String? {
        var found: String?
        var i = 0
        while i < args.count, args[i] != "--" {
            if args[i] == name, i + 1 < args.count { found = args[i + 1]; i += 2; continue }
            if args[i].hasPrefix(name + "=") { found = String(args[i].dropFirst(name.count + 1)) }
            i += 1
        }
        return found
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
