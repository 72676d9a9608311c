import Foundation
import XCTest
@testable import RadarCore

/// `--tta flip`: the mirrored input is the flipped image's own input, and the two views merge
/// as their mean logit.
final class TestTimeFlipTests: XCTestCase {
    /// Mirroring the normalised (n, 3, size, size) batch gives, bit for bit, what normalising the
    /// image flipped in pixel space (the augmentation's flip, checked against OpenCV) gives; twice
    /// is the identity.
    func testMirroredInputIsTheFlippedImagesInput() throws {
        let faces = SyntheticFaces(size: 24, seed: 9)
        let (mean, std) = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
        let per = 3 * 24 * 24
        let batch = UnsafeMutableBufferPointer<Float>.allocate(capacity: 2 * per), expected = UnsafeMutableBufferPointer<Float>.allocate(capacity: 2 * per)
        let mirrored = UnsafeMutableBufferPointer<Float>.allocate(capacity: 2 * per), back = UnsafeMutableBufferPointer<Float>.allocate(capacity: 2 * per)
        defer { for b in [batch, expected, mirrored, back] { b.deallocate() } }
        for i in 0..<2 {
            let img = faces.rgbImage(i, label: i)
            Augmenter.normalize(img, mean: mean, std: std, into: batch.baseAddress! + i * per)
            Augmenter.normalize(Augmenter.flipHorizontal(img), mean: mean, std: std, into: expected.baseAddress! + i * per)
        }
        TestTimeFlip.mirror(UnsafeBufferPointer(batch), into: mirrored, size: 24)
        XCTAssertEqual(Array(mirrored), Array(expected))
        XCTAssertNotEqual(Array(mirrored), Array(batch), "a face is not symmetric to the bit")
        TestTimeFlip.mirror(UnsafeBufferPointer(mirrored), into: back, size: 24)
        XCTAssertEqual(Array(back), Array(batch))
    }

    /// The merged view: the final logits' mean (the probability its sigmoid), every other output
    /// the mean of the two; a disabled branch stays disabled.
    func testTwoViewsMergeAsTheirMeanLogit() {
        let a = Explanation(probability: 0.880797, logit: 2, boundary: 0.9, frequency: nil, reasoning: 0.8, external: 0.7, gate: 0.4,
                            iterations: [0.6, 0.8], attention: [[0.5, 0.5], [0.7, 0.3]])
        let b = Explanation(probability: 0.5, logit: 0, boundary: 0.5, frequency: nil, reasoning: 0.4, external: 0.3, gate: 0.6,
                            iterations: [0.2, 0.4], attention: [[0.5, 0.5], [0.3, 0.7]])
        let m = TestTimeFlip.merge(a, b)
        XCTAssertEqual(m.logit, 1)
        XCTAssertEqual(m.probability, Float(1 / (1 + exp(-1.0))), accuracy: 1e-7, "sigmoid of the mean logit, not the mean probability (0.69)")
        XCTAssertEqual(m.boundary!, 0.7, accuracy: 1e-7); XCTAssertNil(m.frequency)
        XCTAssertEqual(m.reasoning, 0.6, accuracy: 1e-7); XCTAssertEqual(m.external, 0.5, accuracy: 1e-7); XCTAssertEqual(m.gate, 0.5)
        XCTAssertEqual(m.iterations[0], 0.4, accuracy: 1e-7); XCTAssertEqual(m.iterations[1], 0.6, accuracy: 1e-7)
        XCTAssertEqual(m.attention, [[0.5, 0.5], [0.5, 0.5]])
    }
}
