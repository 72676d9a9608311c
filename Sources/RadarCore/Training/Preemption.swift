import Dispatch
import Foundation
import Synchronization

/// SIGTERM and SIGINT (what SLURM, Kubernetes and a terminal send before killing a job) ask the
/// run to stop: the current optimizer step finishes, every rank agrees to stop after the same step
/// (`DataParallel.agreeToStop`), `last` is written, and the process exits with `Preempted.exitCode`
/// (75, EX_TEMPFAIL: "try again", the signal for a restart with `--resume auto`). A second signal
/// while stopping ends the process at once with 128 + the signal number.
public enum Preemption {
    private static let signalled = Atomic<Int32>(0)
    nonisolated(unsafe) private static var sources: [DispatchSourceSignal] = []

    /// The signal received (SIGTERM or SIGINT), 0 when none.
    public static var signal: Int32 { signalled.load(ordering: .relaxed) }
    public static var requested: Bool { signal != 0 }

    public static var signalName: String { signal == SIGINT ? "SIGINT" : signal == SIGTERM ? "SIGTERM" : "signal \(signal)" }

    /// Starts listening (once per process).
    public static func install() {
        guard sources.isEmpty else { return }
        for s in [SIGTERM, SIGINT] {
            Foundation.signal(s, SIG_IGN)
            let src = DispatchSource.makeSignalSource(signal: s, queue: .global())
            src.setEventHandler {
                let (exchanged, _) = signalled.compareExchange(expected: 0, desired: s, ordering: .relaxed)
                if !exchanged { exit(128 + s) }  // asked twice: stop now
                logLine("received \(s == SIGINT ? "SIGINT" : "SIGTERM"): stopping after the current optimizer step (again to stop at once)")
            }
            src.resume()
            sources.append(src)
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
