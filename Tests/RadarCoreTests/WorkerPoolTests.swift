import Foundation
import RadarCore
import RadarCPU
import RadarEngine
import Synchronization
import XCTest

/// The pool's hand-off: every task of every job runs exactly once and `run` returns only after
/// all have, whether its threads spin between jobs or sleep at once, across back-to-back tiny jobs
/// (where spinning hands them over), jobs after long pauses (where the threads have gone to
/// sleep and must be woken), and a pool torn down while its threads sleep or spin.
final class WorkerPoolTests: XCTestCase {
    func exercise(_ pool: WorkerPool, file: StaticString = #filePath, line: UInt = #line) {
        let counts = UnsafeMutableBufferPointer<Int>.allocate(capacity: 1024)
        defer { counts.deallocate() }
        for round in 0..<600 {
            let tasks = [2, 3, 7, 64, 1, 1024][round % 6]
            counts.initialize(repeating: 0)
            let ran = Atomic<Int>(0)
            pool.run(tasks: tasks) { i in
                counts[i] += 1  // each index by one thread only: a plain write
                ran.wrappingAdd(1, ordering: .relaxed)
            }
            // Everything written in the job is visible once run returns.
            if ran.load(ordering: .relaxed) != tasks || counts[0..<tasks].contains(where: { $0 != 1 }) {
                XCTFail("round \(round): \(ran.load(ordering: .relaxed)) of \(tasks) tasks, counts \(Array(counts[0..<min(tasks, 16)]))", file: file, line: line)
                return
            }
            // Now and then a pause longer than any spin, so the workers fall asleep.
            if round % 100 == 99 { usleep(3000) }
        }
    }

    func testEveryTaskRunsOnceWhetherThreadsSpinOrSleep() {
        // More threads than this machine's cores too: spinning threads then compete with working ones.
        for (spin, threads) in [(0, 2), (5, 2), (50, 2), (2000, 2), (0, 3), (50, 3), (50, 8)] {
            let pool = WorkerPool(threads: threads, spinMicroseconds: spin)
            XCTAssertEqual(pool.spinMicroseconds, spin)
            exercise(pool)
        }
    }

    func testPoolsEndWhileTheirThreadsSpinOrSleep() {
        for spin in [0, 50, 100_000] {
            for pause in [0, 2000] {
                let pool = WorkerPool(threads: 4, spinMicroseconds: spin)
                pool.run(tasks: 16) { _ in }
                if pause > 0 { usleep(UInt32(pause)) }
                // deinit joins every thread: a hang here fails the test by timeout.
            }
        }
        setenv("RADAR_POOL_SPIN_US", "7", 1)
        defer { unsetenv("RADAR_POOL_SPIN_US") }
        XCTAssertEqual(WorkerPool(threads: 2).spinMicroseconds, 7)
        XCTAssertEqual(WorkerPool(threads: 2, spinMicroseconds: 0).spinMicroseconds, 7, "the variable overrides what the code chose")
    }

    /// Where a node runs more compute threads than cores (ranks x --threads), the trainer's CPU
    /// pools sleep at once: spinning took cores the other ranks' threads needed (2 ranks of 2
    /// threads on 2 cores ran 20% slower spinning).
    func testOversubscribedNodesGetPoolsThatSleepAtOnce() throws {
        XCTAssertFalse(Devices.threadsShareCores(threads: 2, localRanks: 1, cores: 2))
        XCTAssertFalse(Devices.threadsShareCores(threads: 1, localRanks: 2, cores: 2))
        XCTAssertTrue(Devices.threadsShareCores(threads: 2, localRanks: 2, cores: 2))
        XCTAssertTrue(Devices.threadsShareCores(threads: 3, localRanks: 1, cores: 2))
        guard getenv("RADAR_POOL_SPIN_US") == nil else { return }
        for (shared, spin) in [(false, 50), (true, 0)] {
            let backend = try XCTUnwrap(try Devices.backend("cpu", threads: 2, threadsShareCores: shared) as? CPUBackend)
            XCTAssertEqual(backend.pool.spinMicroseconds, spin, "shared \(shared)")
        }
    }

    /// RadarEngine's `concurrentPerform` (used where `DispatchQueue.concurrentPerform` hung
    /// under a limit on threads): each iteration exactly once, none after it returns, for counts
    /// below, at and far above the CPUs, and bodies that take their time.
    func testConcurrentPerformRunsEachIterationOnceBeforeReturning() {
        for n in [0, 1, 2, 3, 17, 1000, 20_000] {
            let counts = UnsafeMutableBufferPointer<Int>.allocate(capacity: max(n, 1))
            counts.initialize(repeating: 0)
            let ran = Atomic<Int>(0)
            RadarEngine.concurrentPerform(iterations: n) { i in
                if n < 20 { usleep(2000) }  // the caller cannot finish them all before helpers start
                counts[i] += 1
                ran.add(1, ordering: .relaxed)
            }
            XCTAssertEqual(ran.load(ordering: .relaxed), n, "iterations run for \(n)")
            XCTAssertTrue(counts.prefix(n).allSatisfy { $0 == 1 }, "an iteration ran twice or never for \(n)")
            counts.deallocate()
        }
        // The body does not outlive the call (withoutActuallyEscaping traps if a helper kept it),
        // and the helpers are reused: 200 loops start no more threads than one loop's helpers
        // (a thread cost about 50 us to start, a loop of small work as much again).
        let before = parallelLoopThreadsStarted
        let t0 = Date()
        for _ in 0..<200 { RadarEngine.concurrentPerform(iterations: 4) { _ in } }
        print(String(format: "concurrentPerform of 4 empty iterations: %.1f us per loop", Date().timeIntervalSince(t0) / 200 * 1e6))
        XCTAssertLessThanOrEqual(parallelLoopThreadsStarted - before, ProcessInfo.processInfo.activeProcessorCount - 1)
        // Loops inside loops (a helper's body running one of its own) finish too.
        let inner = Atomic<Int>(0)
        RadarEngine.concurrentPerform(iterations: 8) { _ in
            RadarEngine.concurrentPerform(iterations: 8) { _ in inner.add(1, ordering: .relaxed) }
        }
        XCTAssertEqual(inner.load(ordering: .relaxed), 64)
    }
}
