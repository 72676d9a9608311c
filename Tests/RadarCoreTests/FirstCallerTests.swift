import Foundation
import Synchronization
import RadarCore
import XCTest

/// `DeviceFailure.stop` prints one line however many threads meet the fault: the first to claim
/// the gate prints and exits, the others wait. The gate itself, under contention.
final class FirstCallerTests: XCTestCase {
    func testOnlyOneOfManyConcurrentCallersClaims() {
        for _ in 0..<200 {
            let gate = FirstCaller()
            let winners = Mutex(0)
            DispatchQueue.concurrentPerform(iterations: 8) { _ in
                if gate.claim() { winners.withLock { $0 += 1 } }
            }
            XCTAssertEqual(winners.withLock { $0 }, 1)
            XCTAssertFalse(gate.claim(), "a later caller does not claim again")
        }
    }
}
