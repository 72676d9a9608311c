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

/// The shared state of one `concurrentPerform`: the next iteration to take, and the helpers
/// that have finished.
private final class Iterations: @unchecked Sendable {
    let count: Int
    /// Let go once every helper has finished: a helper thread may hold this object a moment
    /// longer, and the body must not outlive `concurrentPerform`.
    var body: ((Int) -> Void)?
    let next = Atomic<Int>(0)
    let finished = DispatchSemaphore(value: 0)
    init(count: Int, body: @escaping (Int) -> Void) { self.count = count; self.body = body }
    func work() {
        guard let body else { return }
        while true {
            let i = next.add(1, ordering: .relaxed).oldValue
            guard i < count else { return }
            body(i)
        }
    }
}

/// `body(0)` ... `body(iterations - 1)`, on the calling thread and up to one helper thread per
/// further CPU; returns when all have run. `DispatchQueue.concurrentPerform` without its hang:
/// where the system refuses a thread (a limit on threads, `ulimit -u` or a container's pids
/// limit), libdispatch sleeps and asks again for ever (`radar evaluate` under `prlimit
/// --nproc=1` never opened its shards); here the helpers that could be started share the work
/// with the caller, which alone does it all when none could.
public func concurrentPerform(iterations: Int, _ body: (Int) -> Void) {
    guard iterations > 1 else {
        if iterations == 1 { body(0) }
        return
    }
    let helpers = min(iterations, ProcessInfo.processInfo.activeProcessorCount) - 1
    withoutActuallyEscaping(body) { body in
        let shared = Iterations(count: iterations, body: body)
        var started = 0
        for _ in 0..<helpers {
            do { try startThread("a parallel loop") { shared.work(); shared.finished.signal() } } catch { break }
            started += 1
        }
        shared.work()
        // The body escapes into the helpers only until they have all finished.
        for _ in 0..<started { shared.finished.wait() }
        shared.body = nil
    }
}
