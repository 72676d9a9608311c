import Foundation
import RadarCore
import XCTest

/// The progress bar as the terminal receives it (no tmux needed).
final class TerminalTests: XCTestCase {
    func testProgressLineClearsWhatALongerLineLeftAndNeverWraps() {
        let p = ProgressReporter("epoch 1/3", total: 200, unit: "img", interactive: false)
        let long = p.render(done: 50, elapsed: 5, detail: "loss 0.6931 lr 1.0e-04 a very long detail that goes on", columns: 200)
        XCTAssertTrue(long.hasPrefix("\r") && long.hasSuffix("\u{1B}[K"), "carriage return, text, clear to end of line")
        XCTAssertTrue(long.contains("50/200 10.0 img/s ETA 0:15"), long)
        let short = p.render(done: 51, elapsed: 5.1, columns: 200)
        XCTAssertTrue(short.hasSuffix("\u{1B}[K"), "a shorter redraw erases the rest of the longer one")
        let narrow = p.render(done: 50, elapsed: 5, detail: "loss 0.6931", columns: 40)
        XCTAssertEqual(narrow.dropFirst().dropLast(3).count, 39, "cut to the terminal's width minus one: \(narrow)")
    }
}
