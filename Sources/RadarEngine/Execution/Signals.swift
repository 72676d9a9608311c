import Dispatch
import Foundation

/// Signals handled as ordinary events: each signal's default action is turned off and `handler`
/// runs on a global queue when it arrives, outside any signal handler, so it may log, lock and
/// exit. Keep the value while handling; `cancel()` (or letting it go) restores the default
/// action. The one way the trainer, `radar launch` and `radar prepare`/`synth` listen.
public final class SignalWatch: @unchecked Sendable {
    private var sources: [DispatchSourceSignal] = []
    private let signals: [Int32]

    public init(_ signals: [Int32], handler: @escaping @Sendable (Int32) -> Void) {
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
