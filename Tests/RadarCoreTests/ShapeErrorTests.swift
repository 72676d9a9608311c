import RadarCore
import XCTest

/// A wrong input shape is a typed error naming the layer, the expected and the actual shape,
/// raised before any kernel runs.
final class ShapeErrorTests: XCTestCase {
    func expectMismatch(_ layer: String, _ body: () throws -> Void, file: StaticString = #filePath, line: UInt = #line) {
        do {
            try body()
            XCTFail("\(layer): expected a ShapeMismatch", file: file, line: line)
        } catch let e as ShapeMismatch {
            XCTAssertEqual(e.layer, layer, file: file, line: line)
            XCTAssertTrue(e.description.contains("expected") && e.description.contains("got"), e.description, file: file, line: line)
        } catch {
            XCTFail("unexpected error \(error)", file: file, line: line)
        }
    }

    func testEveryLayerRejectsWrongShapesWithItsName() {
        let l = ParameterLayout()
        let lin = Linear("head.fc", 8, 2, layout: l)
        let conv = Conv2d("badm.edge_encoder.0", 1, 4, kernel: 7, stride: 4, padding: 3, layout: l)
        let bn = BatchNorm2d("badm.edge_encoder.1", 4, layout: l)
        let ln = LayerNorm("encoder.norm", 8, eps: 1e-6, layout: l)
        let attn = SelfAttention("encoder.blocks.0.attn", dim: 8, heads: 2, layout: l)
        let xattn = CrossAttention("reasoning.attention", dim: 8, heads: 2, dropout: 0, layout: l)
        let gru = GRUCell("reasoning.gru", inputSize: 8, hiddenSize: 8, layout: l)
        let ctx = makeContext(l)
        let wrong = testTensor(Shape(2, 3, 5))
        expectMismatch("head.fc") { _ = try lin.forward(wrong.tensor, ctx) }
        expectMismatch("badm.edge_encoder.0") { _ = try conv.forward(wrong.tensor, ctx) }
        expectMismatch("badm.edge_encoder.0") { _ = try conv.forward(testTensor(Shape(1, 3, 8, 8)).tensor, ctx) }
        expectMismatch("badm.edge_encoder.1") { _ = try bn.forward(testTensor(Shape(1, 3, 8, 8)).tensor, ctx) }
        expectMismatch("encoder.norm") { _ = try ln.forward(wrong.tensor, ctx) }
        expectMismatch("encoder.blocks.0.attn") { _ = try attn.forward(wrong.tensor, ctx) }
        expectMismatch("reasoning.attention") {
            _ = try xattn.forward(query: testTensor(Shape(2, 8)).tensor, tokens: testTensor(Shape(3, 2, 8)).tensor, ctx)
        }
        expectMismatch("reasoning.gru") { _ = try gru.forward(testTensor(Shape(2, 8)).tensor, h: testTensor(Shape(2, 7)).tensor, ctx) }
        expectMismatch("grayscale") { _ = try ImageTransforms.grayscale(testTensor(Shape(1, 1, 4, 4)).tensor, ctx) }
        let msg = ShapeMismatch(layer: "head.fc", expected: "(*, 8)", actual: Shape(2, 3, 5)).description
        XCTAssertEqual(msg, "head.fc: expected input of shape (*, 8), got (2, 3, 5)")
    }
}
