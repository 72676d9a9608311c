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
public final class WorkerPool: @unchecked Sendable {
    public let threadCount: Int
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let wake = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private let finished = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var generation = 0
    private var activeWorkers = 0
    private var shuttingDown = false
    private let job = UnsafeMutablePointer<radar_task>.allocate(capacity: 1)
    private var taskCount = 0
    private let nextTask = Atomic<Int>(0)
    private var workerThreads: [pthread_t] = []

    public init(threads: Int) {
        threadCount = max(1, threads)
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(wake, nil)
        pthread_cond_init(finished, nil)
        for _ in 1..<threadCount {
            var t = pthread_t()
            let ctx = Unmanaged.passUnretained(self).toOpaque()
            let rc = pthread_create(&t, nil, { arg in
                Unmanaged<WorkerPool>.fromOpaque(arg!).takeUnretainedValue().workerLoop()
                return nil
            }, ctx)
            precondition(rc == 0, "pthread_create failed with \(rc)")
            workerThreads.append(t)
        }
    }

    deinit {
        pthread_mutex_lock(mutex)
        shuttingDown = true
        generation += 1
        pthread_cond_broadcast(wake)
        pthread_mutex_unlock(mutex)
        for t in workerThreads { pthread_join(t, nil) }
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
        pthread_mutex_lock(mutex)
        radarTaskCapture(job, body)
        taskCount = tasks
        nextTask.store(0, ordering: .relaxed)
        activeWorkers = threadCount - 1
        generation += 1
        pthread_cond_broadcast(wake)
        pthread_mutex_unlock(mutex)

        drain(body)

        pthread_mutex_lock(mutex)
        while activeWorkers > 0 { pthread_cond_wait(finished, mutex) }
        pthread_mutex_unlock(mutex)
    }

    /// Splits 0..<count into chunks of `grain` (the last may be shorter) and runs them as tasks.
    @inlinable public func parallelFor(_ count: Int, grain: Int, _ body: (Range<Int>) -> Void) {
        let g = max(1, grain)
        let chunks = (count + g - 1) / g
        run(tasks: chunks) { c in body((c * g)..<min(count, (c + 1) * g)) }
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
        var seen = 0
        while true {
            pthread_mutex_lock(mutex)
            while generation == seen { pthread_cond_wait(wake, mutex) }
            seen = generation
            let stop = shuttingDown
            pthread_mutex_unlock(mutex)
            if stop { return }
            runCurrentJob()
            pthread_mutex_lock(mutex)
            activeWorkers -= 1
            if activeWorkers == 0 { pthread_cond_signal(finished) }
            pthread_mutex_unlock(mutex)
        }
    }
}

/// Records a borrowed closure's function and context (implemented in CTaskClosure).
@_silgen_name("radar_task_capture")
private func radarTaskCapture(_ slot: UnsafeMutablePointer<radar_task>, _ body: (Int) -> Void)
