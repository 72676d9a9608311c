import Foundation
import RadarCore
import XCTest

/// RADAR against the PyTorch reference on the four fixture cases (Fixtures/parity/<case>/, written
/// by tools/golden/parity_fixtures.py), on the test device; tolerances in `GoldenParity`.
final class GoldenParityTests: XCTestCase {
    let root = fixturesDirectory.appendingPathComponent("parity")

    @discardableResult
    func runCase(_ name: String) throws -> GoldenParity.Report {
        let report = try GoldenParity.run(root.appendingPathComponent(name), device: testDeviceName, precision: nil)
        for f in report.failures { XCTFail(f) }
        XCTAssertGreaterThan(report.lines.count, 10, "\(name): tensors compared")
        print("golden parity \(name): \(report.lines.count) tensors\n  " + report.lines.joined(separator: "\n  "))
        return report
    }

    func testTinyDualConfigMatchesPyTorchThroughThreeAdamWSteps() throws { try runCase("tiny_dual") }

    func testSmallDualConfigMatchesPyTorchGradients() throws { try runCase("small_dual") }

    func testBoundaryOnlyAblationMatchesPyTorch() throws { try runCase("tiny_badm_only") }

    /// The training loop itself (tools/golden/recipe_fixture.py): 24 micro-batches of 4, two per
    /// optimizer step, OneCycleLR over the 12 steps with beta1 cycling, clipping, AdamW, BatchNorm's
    /// running statistics over every micro-batch: each micro-batch's loss, each step's learning
    /// rate, beta1 and gradient norm, and every weight and buffer at the end.
    func testTrainingRecipeMatchesPyTorchOverTwelveOneCycleSteps() throws {
        let report = try runCase("tiny_recipe")
        for key in ["loss.micro0", "loss.micro23", "lr.step0", "lr.step11", "beta1.step0", "beta1.step11", "grad_norm.step0",
                    "grad_norm.step11", "param.encoder.blocks.1.mlp.fc2.weight", "buffer.aadm.freq_encoder.7.running_var"] {
            XCTAssertTrue(report.lines.contains { $0.contains(" \(key) ") }, "\(key) compared")
        }
        XCTAssertEqual(report.lines.filter { $0.contains(" loss.micro") }.count, 24, "every micro-batch's loss compared")
    }
}
