import Dispatch
import Foundation
import Synchronization
import CProcess

/// SIGTERM, SIGINT and SIGHUP (what SLURM, Kubernetes, a terminal's Ctrl-C and a closed terminal
/// or dropped SSH session send before killing a job) ask the run to stop: the current optimizer
/// step finishes, every rank agrees to stop after the same step (`DataParallel.agreeToStop`),
/// `last` is written, and the process exits with `Preempted.exitCode` (75, EX_TEMPFAIL: "try
/// again", the signal for a restart with `--resume auto`). A second SIGTERM, SIGINT or SIGHUP
/// while stopping ends the process at once with 128 + the signal number, unless it comes within
/// `repeatGrace` of the first: a Ctrl-C reaches every process of the terminal's group and
/// `radar launch` forwards it too, and a hangup comes from the kernel and again from the shell, so
/// each rank may see one request twice. SIGHUP is left alone where it was ignored at start
/// (`nohup`). SIGUSR1 (SLURM's `--signal=USR1@T` warning, and what a rank gets when `radar launch`
/// dies) asks the same, and never escalates: the kernel may deliver it more than once.
public enum Preemption {
    private static let signalled = Atomic<Int32>(0)
    /// When the first request arrived (`monotonicNow()`, in seconds), for `repeatGrace`.
    nonisolated(unsafe) private static var firstAt = 0.0
    private static let firstLock = NSLock()
    /// A repeat sooner than this after the first request is the same request.
    public static let repeatGrace = 1.0
    nonisolated(unsafe) private static var watch: SignalWatch?

    /// The signal received (SIGTERM, SIGINT, SIGHUP or SIGUSR1), 0 when none.
    public static var signal: Int32 { signalled.load(ordering: .relaxed) }
    public static var requested: Bool { signal != 0 }

    public static var signalName: String { name(signal) }
    static func name(_ s: Int32) -> String { SignalWatch.name(s) }

    /// Starts listening (once per process).
    public static func install() {
        guard watch == nil else { return }
        keepRunningWithoutReaders()
        watch = SignalWatch([SIGTERM, SIGINT, SIGHUP, SIGUSR1]) { s in
            // Handlers run in turn on the signal thread; the lock keeps the first request's
            // time and signal one pair for any other reader.
            let now = monotonicNow().timeIntervalSinceReferenceDate
            let (exchanged, sinceFirst): (Bool, Double) = firstLock.withLock {
                let (exchanged, _) = signalled.compareExchange(expected: 0, desired: s, ordering: .relaxed)
                if exchanged { firstAt = now }
                return (exchanged, now - firstAt)
            }
            if !exchanged {
                guard s != SIGUSR1, sinceFirst >= repeatGrace else { return }
                logLine("received \(name(s)) again: stopping now, without writing `last`")
                exitNow(128 + s)
            }
            logLine("received \(name(s)): stopping after the current optimizer step" + (s == SIGUSR1 ? "" : " (again to stop at once)"))
        }
    }

    /// The run stopped on request after writing `last`.
    public struct Preempted: Error, CustomStringConvertible {
        public let step: Int, signal: String
        public static let exitCode: Int32 = 75
        public var description: String {
            "stopped by \(signal) after optimizer step \(step); `last` is written: resume with --resume auto"
        }
    }
}

/// A job-wide stop ordered from outside the training loop (the coordinator lost a rank, a
/// peer's transport failed): the loop leaves at its next safe point, transports stop waiting,
/// and the process exits with status 1 and one line. Nothing calls `exit` from a helper thread
/// while compute runs (that crashed OpenBLAS at exit); if the loop has not left within the
/// grace period, the process ends with `exitNow`.
public enum JobAbort {
    private static let flag = Atomic<Bool>(false)
    private static let lock = NSLock()
    nonisolated(unsafe) private static var text = ""

    public static var requested: Bool { flag.load(ordering: .acquiring) }
    public static var reason: String { lock.withLock { text } }

    /// Records the first reason; later ones are ignored. Starts the grace-period watchdog.
    public static func request(_ why: String, grace: TimeInterval = 30) {
        let first: Bool = lock.withLock {
            guard text.isEmpty else { return false }
            text = why
            return true
        }
        guard first else { return }
        flag.store(true, ordering: .releasing)
        do {
            try startThread("the stop's grace-period watchdog") {
                Thread.sleep(forTimeInterval: grace)
                logLine("\(why) (the run did not stop within \(Int(grace)) s; exiting)")
                exitNow(1)
            }
        } catch {
            logLine("\(error): the run stops at its next safe point, with no watchdog")
        }
    }

    /// Thrown at a safe point once a stop was requested.
    public struct Aborted: Error, CustomStringConvertible {
        public let reason: String
        public var description: String { reason }
    }

    /// Throws `Aborted` when a stop was requested.
    public static func check() throws {
        if requested { throw Aborted(reason: reason) }
    }
}

/// A rank started by `radar launch` (RADAR_LAUNCHER_PID) gets SIGUSR1 when the launcher dies, so
/// killing the launcher (even with SIGKILL) leaves no rank training on; SIGUSR1 takes the
/// preemption path (finish the step, write `last`, exit 75). (Linux may deliver it once per
/// launcher thread, hence not SIGTERM, whose second delivery means "stop at once".)
public enum ParentWatch {
    public static func install(environment: [String: String] = ProcessInfo.processInfo.environment) {
        guard let s = environment["RADAR_LAUNCHER_PID"], let pid = Int32(s) else { return }
        _ = radar_set_parent_death_signal(SIGUSR1)
        if getppid() != pid {  // the launcher died before the watch was set
            logLine("the launcher (pid \(pid)) is gone; stopping")
            exitNow(1)
        }
    }
}

/// Which attempt of a restarted job this process belongs to: `radar launch --max-restarts`'s
/// RADAR_LAUNCH_ATTEMPT, torchrun's TORCHELASTIC_RESTART_COUNT, else 0.
public enum JobAttempt {
    public static var current: Int {
        let env = ProcessInfo.processInfo.environment
        return Int(env["RADAR_LAUNCH_ATTEMPT"] ?? env["TORCHELASTIC_RESTART_COUNT"] ?? "") ?? 0
    }
}

/// Failure points for the fault-injection suite: `RADAR_FAULT_INJECT=PHASE:RANK:ACTION[:ATTEMPT]` makes
/// that rank kill (`kill`, SIGKILL) or freeze (`stop`, SIGSTOP) itself when it reaches PHASE:
/// `init` (before MPI or the rendezvous), `load` (dataset and model ready), `step` (after its
/// second optimizer step), `validation`, `checkpoint` (a checkpoint's bytes written, before the
/// rename), `finalize` (training done, before MPI_Finalize), or (`slow`) sleep 0.25 s each time
/// it reaches one, e.g. `batch` (a batch taken from the loader: a straggler's slow loader).
/// Unset, every point is one branch.
public enum FaultInjection {
    nonisolated(unsafe) public static var rank: Int = {
        let env = ProcessInfo.processInfo.environment
        return Int(env["OMPI_COMM_WORLD_RANK"] ?? env["RANK"] ?? env["PMI_RANK"] ?? "") ?? -1
    }()
    static let plan: (phase: String, rank: Int, action: String)? = {
        let env = ProcessInfo.processInfo.environment
        guard let s = env["RADAR_FAULT_INJECT"] else { return nil }
        let p = s.split(separator: ":").map(String.init)
        guard p.count == 3 || p.count == 4, let r = Int(p[1]), ["kill", "stop", "slow"].contains(p[2]) else {
            logLine("RADAR_FAULT_INJECT: expected PHASE:RANK:kill|stop|slow[:ATTEMPT], got \(s); ignored")
            return nil
        }
        // An optional fourth field limits the fault to one attempt of `radar launch --max-restarts`.
        if p.count == 4 && Int(p[3]) != JobAttempt.current { return nil }
        return (p[0], r, p[2])
    }()
    nonisolated(unsafe) static var steps = 0

    public static func point(_ phase: String) {
        guard let p = plan, p.phase == phase, p.rank == rank else { return }
        if p.action == "slow" { usleep(250_000); return }
        if phase == "step" {
            steps += 1
            if steps != 2 { return }
        }
        logLine("fault injection: rank \(rank) \(p.action == "kill" ? "killed" : "frozen") at \(phase)")
        fflush(stderr)
        raise(p.action == "kill" ? SIGKILL : SIGSTOP)
    }
}

/// Runs a call that has no deadline of its own (MPI_Init, MPI_Finalize) under one: if it has not
/// returned after `seconds`, the process prints `message` and ends with status 1.
public enum Watchdog {
    public static func run<T>(seconds: TimeInterval, _ message: String, _ body: () -> T) -> T {
        let done = DispatchSemaphore(value: 0)
        do {
            try startThread("a watchdog") {
                if done.wait(timeout: .now() + seconds) == .timedOut {
                    logLine(message)
                    exitNow(1)
                }
            }
        } catch {
            logLine("\(error): the call runs without its watchdog")
        }
        let r = body()
        done.signal()
        return r
    }
}
