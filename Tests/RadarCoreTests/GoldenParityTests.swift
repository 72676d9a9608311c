import Foundation
import RadarCore
import XCTest

/// RADAR against the PyTorch reference on the three fixture cases (Fixtures/parity/<case>/, written
/// by tools/golden/parity_fixtures.py), on the test device; tolerances in `GoldenParity`.
final class GoldenParityTests: XCTestCase {
    let root = fixturesDirectory.appendingPathComponent("parity")

    func runCase(_ name: String) throws {
        let report = try GoldenParity.run(root.appendingPathComponent(name), device: testDeviceName, precision: nil)
        for f in report.failures { XCTFail(f) }
        XCTAssertGreaterThan(report.lines.count, 10, "\(name): tensors compared")
        print("golden parity \(name): \(report.lines.count) tensors\n  " + report.lines.joined(separator: "\n  "))
    }

    func testTinyDualConfigMatchesPyTorchThroughThreeAdamWSteps() throws { try runCase("tiny_dual") }

    func testSmallDualConfigMatchesPyTorchGradients() throws { try runCase("small_dual") }

    func testBoundaryOnlyAblationMatchesPyTorch() throws { try runCase("tiny_badm_only") }
}
