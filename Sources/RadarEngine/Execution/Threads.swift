import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

private let printedNotices = Mutex<Set<String>>([])

/// `<program>: notice: <text>` on standard error, once per process for each text (a command
/// may build several backends, loaders and pools).
public func printNotice(_ text: String) {
    guard printedNotices.withLock({ $0.insert(text).inserted }) else { return }
    let program = (CommandLine.arguments.first.map { ($0 as NSString).lastPathComponent }) ?? "radar"
    writeStandardError("\(program): notice: \(text)\n")
}

/// The system would not start a thread: its limit on threads (`ulimit -u`, a container's pids
/// limit, `threads-max`) is reached, or memory for the stack is not there.
public struct ThreadStartError: Error, CustomStringConvertible {
    public let what: String, code: Int32
    public init(what: String, code: Int32) { self.what = what; self.code = code }
    public var description: String { "cannot start a thread for \(what): " + reason }
    /// Why, without what for.
    public var reason: String {
        String(cString: strerror(code)) + (code == EAGAIN ? ": the limit on threads is reached (ulimit -u, or a container's pids limit)" : "")
    }
}

private final class ThreadBody: @unchecked Sendable {
    let run: () -> Void
    init(_ run: @escaping () -> Void) { self.run = run }
}

/// Runs `body` on a new detached thread, or throws `ThreadStartError` when the system refuses
/// one. Foundation's `Thread.start()` and `Thread.detachNewThread` say nothing then: the thread
/// never runs, and whoever waits for it (a data loader's consumer, a ring's reducer, a client
/// on a connection) waits for ever; measured with `prlimit --nproc`, `radar evaluate` hung.
/// `stackSize`: bytes (0: the system's default, `ulimit -s`).
public func startThread(_ what: @autoclosure () -> String, stackSize: Int = 0, _ body: @escaping () -> Void) throws {
    var attributes = pthread_attr_t()
    pthread_attr_init(&attributes)
    defer { pthread_attr_destroy(&attributes) }
    pthread_attr_setdetachstate(&attributes, Int32(PTHREAD_CREATE_DETACHED))
    if stackSize > 0 { pthread_attr_setstacksize(&attributes, stackSize) }
    let box = Unmanaged.passRetained(ThreadBody(body))
    var thread = pthread_t()
    let rc = pthread_create(&thread, &attributes, { arg in
        let body = Unmanaged<ThreadBody>.fromOpaque(arg!).takeRetainedValue()
        body.run()
        return nil
    }, box.toOpaque())
    guard rc == 0 else {
        box.release()
        throw ThreadStartError(what: what(), code: rc)
    }
}
