import CProcess
import Foundation
import RadarEngine

/// Signals handled as ordinary events: `handler` runs on the process's signal thread when one
/// arrives, outside any signal handler, so it may log, lock and exit. Keep the value while
/// handling; `cancel()` (or letting it go) restores the default action. The one way the trainer,
/// `radar launch`, `radar serve` and `radar prepare`/`synth` listen. SIGHUP is watched only where
/// the process did not start with it ignored: `nohup` ignores it so that a closed terminal leaves
/// the command running, and so it stays.
///
/// The signal handler only writes the signal's number to a pipe; one thread, started with the
/// first watch, reads it and runs the handlers in turn. (libdispatch's signal sources needed a
/// thread of libdispatch's when the signal came: under a limit on threads, with the room taken
/// by the work, there was none, and `radar synth` under `prlimit --nproc=3` went on after
/// SIGINT as if it had not come.) Where even that one thread cannot start (no room but the main
/// thread's), nothing is caught: the signals keep the actions the process started with (the
/// default one ends it at once).
public final class SignalWatch: @unchecked Sendable {
    private let signals: [Int32]
    private var id: Int?

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
        id = SignalThread.shared?.add(signals, handler)
    }

    public func cancel() {
        guard let id else { return }
        self.id = nil
        SignalThread.shared?.remove(id)
    }

    deinit { cancel() }

    /// "SIGINT", "SIGTERM", "SIGUSR1", or "signal N".
    public static func name(_ s: Int32) -> String {
        [SIGINT: "SIGINT", SIGTERM: "SIGTERM", SIGUSR1: "SIGUSR1", SIGHUP: "SIGHUP"][s] ?? "signal \(s)"
    }
}

/// The pipe the signal handler writes to and the thread that reads it, one per process, made
/// with the first watch; nil where the pipe or the thread could not be made.
private final class SignalThread: @unchecked Sendable {
    static let shared: SignalThread? = SignalThread()

    private let lock = NSLock()
    private var watches: [(id: Int, signals: [Int32], handler: @Sendable (Int32) -> Void)] = []
    private var nextID = 0
    private let writeEnd: Int32

    private init?() {
        var ends: [Int32] = [-1, -1]
        guard pipe(&ends) == 0 else { return nil }
        for end in ends { _ = fcntl(end, F_SETFD, FD_CLOEXEC) }
        // The handler must never block: a full pipe (a storm of signals unread) drops the byte.
        _ = fcntl(ends[1], F_SETFL, fcntl(ends[1], F_GETFL) | O_NONBLOCK)
        let readEnd = ends[0]
        writeEnd = ends[1]
        do {
            try startThread("the signal watch") { self.run(readEnd) }
        } catch {
            close(ends[0]); close(ends[1])
            return nil
        }
    }

    func add(_ signals: [Int32], _ handler: @escaping @Sendable (Int32) -> Void) -> Int {
        lock.lock(); defer { lock.unlock() }
        let id = nextID
        nextID += 1
        watches.append((id, signals, handler))
        for s in signals { _ = radar_signal_to_pipe(s, writeEnd) }
        return id
    }

    func remove(_ id: Int) {
        lock.lock(); defer { lock.unlock() }
        guard let i = watches.firstIndex(where: { $0.id == id }) else { return }
        let gone = watches.remove(at: i).signals
        for s in gone where !watches.contains(where: { $0.signals.contains(s) }) { _ = radar_signal_default(s) }
    }

    private func run(_ readEnd: Int32) {
        var byte: UInt8 = 0
        while true {
            let n = read(readEnd, &byte, 1)
            if n < 0 && errno == EINTR { continue }
            guard n == 1 else { return }
            let s = Int32(byte)
            let handlers = lock.withLock { watches.filter { $0.signals.contains(s) }.map(\.handler) }
            for handler in handlers { handler(s) }
        }
    }
}
