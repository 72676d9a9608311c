import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Now on the system's monotonic clock (CLOCK_MONOTONIC), as a `Date` so that deadlines keep
/// their arithmetic (`addingTimeInterval`, `timeIntervalSince`, comparisons). Every timeout,
/// heartbeat and deadline is measured on it: the wall clock (`Date()`) is stepped by NTP,
/// chrony's makestep at boot, a VM's resume or an administrator, and a step forward of more than
/// the heartbeat deadline declared every rank lost, a step back stretched each timeout by as
/// much (PyTorch's NCCL watchdog uses the steady clock for the same reason). Such a value means
/// nothing as a date: compare it only with other `monotonicNow()` values, never show it, never
/// pass it to an API that waits until a wall-clock date (`NSCondition.wait(until:)`).
@inline(__always) public func monotonicNow() -> Date {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Date(timeIntervalSinceReferenceDate: Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9)
}

extension Date {
    /// Seconds from now to this `monotonicNow()` deadline (negative once it has passed).
    @inline(__always) public var monotonicSecondsLeft: TimeInterval { timeIntervalSince(monotonicNow()) }
}

extension NSCondition {
    /// `wait(until:)` for a `monotonicNow()` deadline: the time left, measured on the monotonic
    /// clock, turned into a wall-clock date at the call (the lock must be held; false once the
    /// deadline has passed).
    public func wait(untilMonotonic deadline: Date) -> Bool {
        wait(until: Date().addingTimeInterval(deadline.monotonicSecondsLeft))
    }
}

/// Yes at most once per `interval` seconds: a notice that a loop meets again and again (a flood
/// of connections, a limit reached) said once a while, not once per turn.
public final class NoticeThrottle: @unchecked Sendable {
    private let lock = NSLock()
    private var last: Date?
    public let interval: TimeInterval

    public init(every interval: TimeInterval) { self.interval = interval }

    /// Whether to say it now (then not again for `interval` seconds).
    public func due() -> Bool {
        lock.withLock {
            let now = monotonicNow()
            guard last.map({ now.timeIntervalSince($0) >= interval }) ?? true else { return false }
            last = now
            return true
        }
    }
}
