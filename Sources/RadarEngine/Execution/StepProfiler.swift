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

    public func begin() { startedAt = StepProfiler.now() }

    /// Adds the time since `begin` (or the previous `end`) to `section`.
    public func end(_ section: Section) {
        let t = StepProfiler.now()
        seconds[section.rawValue] += t - startedAt
        startedAt = t
    }

    public func reset() { for i in seconds.indices { seconds[i] = 0 } }
}
