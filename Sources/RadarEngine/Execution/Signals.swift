import Dispatch
import Foundation

/// Signals handled as ordinary events: each signal's default action is turned off and `handler`
/// runs on a global queue when it arrives, outside any signal handler, so it may log, lock and
/// exit. Keep the value while handling; `cancel()` (or letting it go) restores the default
/// action. The one way the trainer, `radar launch`, `radar serve` and `radar prepare`/`synth`
/// listen. SIGHUP is watched only where the process did not start with it ignored: `nohup`
/// ignores it so that a closed terminal leaves the command running, and so it stays.
public final class SignalWatch: @unchecked Sendable {
    private var sources: [DispatchSourceSignal] = []
    private let signals: [Int32]

    /// Whether SIGHUP was ignored when the process started (`nohup`), read before any watch
    /// changes it.
    public static let hangupIgnoredAtStart: Bool = {
        var current = sigaction()
        guard sigaction(SIGHUP, nil, &current) == 0 else { return false }
        // SIG_IGN is the handler value 1 (glibc, musl); function pointers are not Equatable.
        return unsafeBitCast(current.__sigaction_handler.sa_handler, to: Int.self) == 1
    }()

    public init(_ signals: [Int32], handler: @escaping @Sendable (Int32) -> Void) {
        let signals = signals.filter { $0 != SIGHUP || !SignalWatch.hangupIgnoredAtStart }
        self.signals = signals
        for s in signals {
            signal(s, SIG_IGN)
            let src = DispatchSource.makeSignalSource(signal: s, queue: .global())
            src.setEventHandler { handler(s) }
            src.resume()
            sources.append(src)
        }
    }

    public func cancel() {
        guard !sources.isEmpty else { return }
        sources.forEach { $0.cancel() }
        sources = []
        for s in signals { signal(s, SIG_DFL) }
    }

    deinit { cancel() }

    /// "SIGINT", "SIGTERM", "SIGUSR1", or "signal N".
    public static func name(_ s: Int32) -> String {
        [SIGINT: "SIGINT", SIGTERM: "SIGTERM", SIGUSR1: "SIGUSR1", SIGHUP: "SIGHUP"][s] ?? "signal \(s)"
    }
}
