#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Wall time per part of a training step, for `radar bench step --profile`. Off unless a context
/// has one; recording allocates nothing.
public final class StepProfiler: @unchecked Sendable {
    public enum Section: Int, CaseIterable, Sendable {
        case encoderForward, boundaryForward, frequencyForward, reasoningForward, loss
        case reasoningBackward, boundaryBackward, frequencyBackward, encoderBackward, optimizer

        public var name: String {
            ["encoder.forward", "badm.forward", "aadm.forward", "reasoning+fusion.forward", "loss",
             "reasoning+fusion.backward", "badm.backward", "aadm.backward", "encoder.backward", "clip+adamw"][rawValue]
        }
    }

    public private(set) var seconds = [Double](repeating: 0, count: Section.allCases.count)
    private var startedAt: Double = 0

    public init() {}

    static func now() -> Double {
        var t = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t)
        return Double(t.tv_sec) + Double(t.tv_nsec) * 1e-9
    }

    /// Called before every reading of the clock: on an asynchronous device (the CUDA backend) a
    /// wait for the queued work, so each section is charged with the work it queued, not with
    /// what the next host wait happens to drain. `radar bench step --profile` sets it for its own
    /// profiling pass; the timed pass runs without a profiler and keeps one host wait per step.
    public var synchronize: (() -> Void)?

    public func begin() {
        synchronize?()
        startedAt = StepProfiler.now()
    }

    /// Adds the time since `begin` (or the previous `end`) to `section`.
    public func end(_ section: Section) {
        synchronize?()
        let t = StepProfiler.now()
        seconds[section.rawValue] += t - startedAt
        startedAt = t
    }

    public func reset() { for i in seconds.indices { seconds[i] = 0 } }
}
