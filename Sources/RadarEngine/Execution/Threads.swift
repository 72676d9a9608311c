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
/// Refused for the limit on threads, it first ends the parallel loops' parked helpers (see
/// `concurrentPerform`) and asks again. `stackSize`: bytes (0: the system's default, `ulimit -s`).
public func startThread(_ what: @autoclosure () -> String, stackSize: Int = 0, _ body: @escaping () -> Void) throws {
    let rc = retryingAfterParkedThreads { createThread(stackSize: stackSize, body) }
    guard rc == 0 else { throw ThreadStartError(what: what(), code: rc) }
}

/// `create()` (a `pthread_create`: 0 or its error number), asked again where the limit on
/// threads refused it and the parallel loops had helpers parked (`concurrentPerform`): those are
/// ended first, and their room comes back as they leave (within a few milliseconds).
public func retryingAfterParkedThreads(_ create: () -> Int32) -> Int32 {
    var rc = create()
    if rc == EAGAIN, LoopHelpers.shared.retireIdle() > 0 {
        for _ in 0..<200 where rc == EAGAIN {
            usleep(1000)
            rc = create()
        }
    }
    return rc
}

/// `pthread_create` of a detached thread running `body`: 0, or the error code.
private func createThread(stackSize: Int = 0, _ body: @escaping () -> Void) -> Int32 {
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
    if rc != 0 { box.release() }
    return rc
}

/// The shared state of one `concurrentPerform`: the next iteration to take, and the helpers
/// that have finished.
fileprivate final class Iterations: @unchecked Sendable {
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

/// One helper thread of the parallel loops: parked on `wake` between loops.
fileprivate final class LoopHelper: @unchecked Sendable {
    let wake = DispatchSemaphore(value: 0)
    /// Set before `wake` is signalled (happens-before through the semaphore); nil then: leave.
    var job: Iterations?
}

/// The parallel loops' helper threads, kept between loops (a thread costs about 50 us to start:
/// a loop of 32 image decodes on 32 cores spent as long starting its helpers as decoding) and
/// ended after `idleSeconds` without a loop, or at once when a thread the program needs cannot
/// start (`startThread`): under a limit on threads, parked helpers took the loader's room.
final class LoopHelpers: @unchecked Sendable {
    static let shared = LoopHelpers()
    static let idleSeconds = 5.0
    private let lock = NSLock()
    private var idle: [LoopHelper] = []
    /// Helper threads started, ever (the tests' count of reuse).
    private var started = 0
    var threadsStarted: Int { lock.lock(); defer { lock.unlock() }; return started }

    /// Up to `count` helpers working on `job`, parked ones first, then new ones; fewer where
    /// the system refuses a thread. Returns how many.
    fileprivate func take(_ count: Int, for job: Iterations) -> Int {
        lock.lock()
        var taken: [LoopHelper] = []
        while taken.count < count, let h = idle.popLast() { taken.append(h) }
        lock.unlock()
        for h in taken { h.job = job; h.wake.signal() }
        var n = taken.count
        while n < count {
            let h = LoopHelper()
            h.job = job
            guard createThread({ [self] in serve(h) }) == 0 else { break }
            lock.lock(); started += 1; lock.unlock()
            n += 1
        }
        return n
    }

    private func serve(_ h: LoopHelper) {
        while let job = h.job {
            h.job = nil
            job.work()
            lock.lock(); idle.append(h); lock.unlock()
            job.finished.signal()
            if h.wake.wait(timeout: .now() + LoopHelpers.idleSeconds) == .timedOut {
                lock.lock()
                if let i = idle.firstIndex(where: { $0 === h }) {
                    idle.remove(at: i)
                    lock.unlock()
                    return
                }
                lock.unlock()
                h.wake.wait()  // taken (or retired) meanwhile: its word is coming
            }
        }
    }

    /// Ends every parked helper; returns how many.
    func retireIdle() -> Int {
        lock.lock()
        let gone = idle
        idle = []
        lock.unlock()
        for h in gone { h.job = nil; h.wake.signal() }
        return gone.count
    }
}

/// Helper threads the parallel loops have started since the process began (they are reused).
public var parallelLoopThreadsStarted: Int { LoopHelpers.shared.threadsStarted }

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
        let working = LoopHelpers.shared.take(helpers, for: shared)
        shared.work()
        // The body escapes into the helpers only until they have all finished.
        for _ in 0..<working { shared.finished.wait() }
        shared.body = nil
    }
}
