import Foundation
import RadarEngine
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import CTaskClosure
import Synchronization

/// A fixed set of threads that run numbered tasks. `run(tasks:)` hands out task indices
/// dynamically, so any thread may run any task: kernels therefore split work by problem shape
/// only, never by thread count, and results are bit-identical for every thread count.
///
/// Dispatching a job allocates nothing (the job closure is borrowed, not copied to the heap),
/// which keeps the training step allocation-free.
///
/// Waiting spins briefly before it sleeps: a worker that finished a job watches for the next one
/// for `spinMicroseconds` (and the caller, for its workers to finish, as long) before blocking on
/// a condition variable. An eval forward of one image runs hundreds of short parallel regions,
/// and a futex wake-up per region (and a context switch on each side) had been 11% of its
/// samples at two threads. A sleeping worker is woken only when one is asleep.
public final class WorkerPool: @unchecked Sendable {
    /// The threads asked for, or fewer where the system refused to start more (said on stderr).
    public private(set) var threadCount: Int
    /// How long a waiting thread spins before it sleeps: RADAR_POOL_SPIN_US if set, else the
    /// value given, else 50; 0 sleeps at once, as before (the trainer gives 0 where the node runs
    /// more compute threads than cores: `TrainOptions.threadsShareCores`).
    public let spinMicroseconds: Int
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let wake = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private let finished = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    /// Bumped (release) once a job is set up; workers read it (acquire) to find the next job.
    private let generation = Atomic<Int>(0)
    /// Workers yet to finish the current job.
    private let activeWorkers = Atomic<Int>(0)
    /// Under `mutex`: workers blocked on `wake`, and whether the caller is blocked on `finished`.
    private var sleepers = 0
    private var callerWaiting = false
    private let shuttingDown = Atomic<Bool>(false)
    private let job = UnsafeMutablePointer<radar_task>.allocate(capacity: 1)
    private var taskCount = 0
    private let nextTask = Atomic<Int>(0)
    private var workerThreads: [pthread_t] = []
    /// The generation workers start from (set before they are started, constant while they run).
    private var startGeneration = 0

    public init(threads: Int, spinMicroseconds: Int? = nil) {
        threadCount = max(1, threads)
        self.spinMicroseconds = max(0, getenv("RADAR_POOL_SPIN_US").flatMap { Int(String(cString: $0)) } ?? spinMicroseconds ?? 50)
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(wake, nil)
        pthread_cond_init(finished, nil)
        let asked = threadCount
        if let refused = startWorkers(asked - 1) {
            // Refused (RLIMIT_NPROC, a container's pids limit): results do not depend on the
            // thread count, only the speed does. Half of those started are kept, so the loader's
            // threads and the rest of the program still find room under the same limit.
            let started = workerThreads.count + 1, keep = max(1, started / 2)
            stopWorkers()
            shuttingDown.store(false, ordering: .releasing)
            startGeneration = generation.load(ordering: .acquiring)
            _ = startWorkers(keep - 1)
            threadCount = workerThreads.count + 1
            printNotice("only \(started) of \(asked) compute threads could be started (" + ThreadStartError(what: "compute", code: refused).reason
                        + "): running with \(threadCount), leaving the others' room to the rest of the program")
        }
    }

    /// Starts `n` workers; the error number of the first the system refused, if one was.
    private func startWorkers(_ n: Int) -> Int32? {
        for _ in 0..<max(n, 0) {
            var t = pthread_t()
            let ctx = Unmanaged.passUnretained(self).toOpaque()
            let rc = retryingAfterParkedThreads {
                pthread_create(&t, nil, { arg in
                    Unmanaged<WorkerPool>.fromOpaque(arg!).takeUnretainedValue().workerLoop()
                    return nil
                }, ctx)
            }
            guard rc == 0 else { return rc }
            workerThreads.append(t)
        }
        return nil
    }

    /// Ends every worker and waits for them.
    private func stopWorkers() {
        shuttingDown.store(true, ordering: .releasing)
        generation.wrappingAdd(1, ordering: .releasing)
        pthread_mutex_lock(mutex)
        pthread_cond_broadcast(wake)
        pthread_mutex_unlock(mutex)
        for t in workerThreads { pthread_join(t, nil) }
        workerThreads = []
    }

    deinit {
        stopWorkers()
        pthread_mutex_destroy(mutex)
        pthread_cond_destroy(wake)
        pthread_cond_destroy(finished)
        mutex.deallocate()
        job.deallocate()
        wake.deallocate()
        finished.deallocate()
    }

    /// Runs `body(i)` for every i in 0..<tasks, on the calling thread and the pool's threads, and
    /// returns when all have finished. Not re-entrant: a task must not call `run` again.
    public func run(tasks: Int, _ body: (Int) -> Void) {
        if tasks <= 0 { return }
        if threadCount == 1 || tasks == 1 {
            for i in 0..<tasks { body(i) }
            return
        }
        // Every worker finished the last job before the last run returned, so none reads these now.
        radarTaskCapture(job, body)
        taskCount = tasks
        nextTask.store(0, ordering: .relaxed)
        activeWorkers.store(threadCount - 1, ordering: .relaxed)
        generation.wrappingAdd(1, ordering: .releasing)  // publishes the job
        // A worker blocks only after counting itself a sleeper and seeing the old generation,
        // both under the mutex: it is either seen here and woken, or sees the new generation.
        pthread_mutex_lock(mutex)
        if sleepers > 0 { pthread_cond_broadcast(wake) }
        pthread_mutex_unlock(mutex)

        drain(body)

        if !spin(until: { activeWorkers.load(ordering: .acquiring) == 0 }) {
            pthread_mutex_lock(mutex)
            callerWaiting = true
            while activeWorkers.load(ordering: .acquiring) > 0 { pthread_cond_wait(finished, mutex) }
            callerWaiting = false
            pthread_mutex_unlock(mutex)
        }
    }

    /// Splits 0..<count into chunks of `grain` (the last may be shorter) and runs them as tasks.
    @inlinable public func parallelFor(_ count: Int, grain: Int, _ body: (Range<Int>) -> Void) {
        let g = max(1, grain)
        let chunks = (count + g - 1) / g
        run(tasks: chunks) { c in body((c * g)..<min(count, (c + 1) * g)) }
    }

    /// Spins (with the CPU's pause hint) until `done` or `spinMicroseconds` have passed; true when done.
    private func spin(until done: () -> Bool) -> Bool {
        if done() { return true }
        guard spinMicroseconds > 0 else { return false }
        var start = timespec(), now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &start)
        let limit = spinMicroseconds * 1000
        while true {
            for _ in 0..<64 {
                radar_cpu_relax()
                if done() { return true }
            }
            clock_gettime(CLOCK_MONOTONIC, &now)
            if (now.tv_sec - start.tv_sec) * 1_000_000_000 + (now.tv_nsec - start.tv_nsec) > limit { return done() }
        }
    }

    private func drain(_ body: (Int) -> Void) {
        while true {
            let i = nextTask.wrappingAdd(1, ordering: .relaxed).oldValue
            if i >= taskCount { return }
            body(i)
        }
    }

    private func runCurrentJob() {
        while true {
            let i = nextTask.wrappingAdd(1, ordering: .relaxed).oldValue
            if i >= taskCount { return }
            radar_task_invoke(job, i)
        }
    }

    private func workerLoop() {
        var seen = startGeneration
        while true {
            if !spin(until: { generation.load(ordering: .acquiring) != seen }) {
                pthread_mutex_lock(mutex)
                sleepers += 1
                while generation.load(ordering: .acquiring) == seen { pthread_cond_wait(wake, mutex) }
                sleepers -= 1
                pthread_mutex_unlock(mutex)
            }
            seen = generation.load(ordering: .acquiring)
            if shuttingDown.load(ordering: .acquiring) { return }
            runCurrentJob()
            if activeWorkers.wrappingSubtract(1, ordering: .acquiringAndReleasing).newValue == 0 {
                pthread_mutex_lock(mutex)
                if callerWaiting { pthread_cond_signal(finished) }
                pthread_mutex_unlock(mutex)
            }
        }
    }
}

/// Records a borrowed closure's function and context (implemented in CTaskClosure).
@_silgen_name("radar_task_capture")
private func radarTaskCapture(_ slot: UnsafeMutablePointer<radar_task>, _ body: (Int) -> Void)
