import Foundation
import RadarCUDA
import RadarCore
import XCTest

/// The CUDA backend's convolutions run over chunks of images whose columns fit a workspace
/// budget (RADAR_CONV_WORKSPACE_MIB). Any chunking gives the bits of one chunk over the whole
/// batch, in fp32 and in bf16 (where im2col writes bf16 columns): outputs, input gradients and the
/// weight gradients added to what dW held. And the memory a step takes falls with the budget.
final class ConvolutionChunkTests: XCTestCase {
    func testChunkedConvolutionGivesTheBitsOfOneChunk() throws {
        // Five images: chunks of 2, 2 and 1 under the small budget.
        let g = ConvolutionGeometry(batch: 5, inChannels: 3, height: 11, width: 9, outChannels: 4, kernel: 3, stride: 2, padding: 1)
        let columns = g.patchSize * g.outHeight * g.outWidth
        for precision in [Precision.fp32, .bf16] {
            var results: [[[UInt32]]] = []
            for budget in [ConvolutionGeometry.defaultWorkspaceBudget, 0] {
                let be = CUDABackend(driver: EmulatedDevice(memory: 1 << 26), precision: precision)
                let width = precision == .bf16 ? 2 : 4
                // Two images' columns, backward parts and column gradients: chunks of two.
                be.convolutionWorkspaceBudget = budget == 0 ? 2 * (columns * width + (g.outChannels * g.patchSize + columns) * 4) + 7 : budget
                XCTAssertEqual(be.convolutionChunk(g), budget == 0 ? 2 : 5, "\(precision)")
                XCTAssertEqual(be.convolutionWorkspaceCount(g), (be.convolutionChunk(g) * columns * width + 3) / 4)
                let x = DeviceTensor(be, Shape(5, 3, 11, 9), randomValues(5 * 3 * 11 * 9, seed: 61))
                let w = DeviceTensor(be, Shape(4, 3, 3, 3), randomValues(4 * 27, seed: 62))
                let bias = DeviceTensor(be, Shape(4), randomValues(4, seed: 63))
                let y = DeviceTensor(be, Shape(5, 4, g.outHeight, g.outWidth))
                let ws = DeviceTensor(be, Shape(be.convolutionWorkspaceCount(g)))
                be.convolutionForward(x.tensor, weight: w.tensor, bias: bias.tensor, g, workspace: ws.tensor, y.tensor)
                let dy = DeviceTensor(be, y.tensor.shape, randomValues(y.tensor.count, seed: 64))
                let dW = DeviceTensor(be, w.tensor.shape, randomValues(4 * 27, seed: 65)), dB = DeviceTensor(be, Shape(4), randomValues(4, seed: 66))
                let dx = DeviceTensor(be, x.tensor.shape, randomValues(x.tensor.count, seed: 67))  // overwritten, not added to
                let scratch = DeviceTensor(be, Shape(be.convolutionBackwardScratchCount(g, inputGradient: true)))
                be.convolutionBackward(dy.tensor, x: x.tensor, weight: w.tensor, g, workspace: ws.tensor, scratch: scratch.tensor,
                                       dWeight: dW.tensor, dBias: dB.tensor, dx: dx.tensor)
                results.append([y.values, dW.values, dB.values, dx.values].map { $0.map(\.bitPattern) })
            }
            for (i, name) in ["y", "dW", "db", "dx"].enumerated() {
                XCTAssertEqual(results[0][i], results[1][i], "\(precision): \(name) in chunks of 2 differs from one chunk")
            }
            // Against the CPU backend (fp32: the kernel check's tolerance; bf16 columns: rounded inputs).
            let cpu = CPUBackend(threads: 1)
            let cx = DeviceTensor(cpu, Shape(5, 3, 11, 9), randomValues(5 * 3 * 11 * 9, seed: 61))
            let cw = DeviceTensor(cpu, Shape(4, 3, 3, 3), randomValues(4 * 27, seed: 62))
            let cy = DeviceTensor(cpu, Shape(5, 4, g.outHeight, g.outWidth)), cws = DeviceTensor(cpu, Shape(cpu.convolutionWorkspaceCount(g)))
            let cb = DeviceTensor(cpu, Shape(4), randomValues(4, seed: 63))
            withExtendedLifetime((cx, cw, cb, cws)) {
                cpu.convolutionForward(cx.tensor, weight: cw.tensor, bias: cb.tensor, g, workspace: cws.tensor, cy.tensor)
            }
            let tolerance: Float = precision == .bf16 ? 3e-2 : 1e-5
            for (a, b) in zip(results[1][0].map(Float.init(bitPattern:)), cy.values) {
                XCTAssertLessThanOrEqual(abs(a - b), tolerance * (1 + abs(b)), "\(precision): y against the CPU backend")
            }
        }
    }

    /// RADAR_CONV_WORKSPACE_MIB: whole MiB, at least 1; anything else a one-line error naming it.
    func testTheBudgetVariable() throws {
        XCTAssertEqual(try Devices.convolutionWorkspaceBudget([:]), 64 << 20)
        XCTAssertEqual(try Devices.convolutionWorkspaceBudget(["RADAR_CONV_WORKSPACE_MIB": "8"]), 8 << 20)
        for bad in ["0", "lots", "-3", "1.5"] {
            XCTAssertThrowsError(try Devices.convolutionWorkspaceBudget(["RADAR_CONV_WORKSPACE_MIB": bad])) { error in
                XCTAssertEqual("\(error)", "RADAR_CONV_WORKSPACE_MIB=\(bad): expected a whole number of MiB, at least 1")
            }
        }
    }

    /// The CPU backend chunks the same way (fp32 columns): the bits of one chunk, two threads.
    func testCPUChunksGiveTheBitsOfOneChunk() throws {
        let g = ConvolutionGeometry(batch: 5, inChannels: 3, height: 11, width: 9, outChannels: 4, kernel: 3, stride: 2, padding: 1)
        let columns = g.patchSize * g.outHeight * g.outWidth
        var results: [[UInt32]] = []
        for small in [false, true] {
            let be = CPUBackend(threads: 2)
            if small { be.convolutionWorkspaceBudget = 2 * (columns * 4 + (g.outChannels * g.patchSize + columns) * 4) }
            XCTAssertEqual(be.convolutionChunk(g), small ? 2 : 5)
            XCTAssertEqual(be.convolutionWorkspaceCount(g), be.convolutionChunk(g) * columns)
            let x = DeviceTensor(be, Shape(5, 3, 11, 9), randomValues(5 * 3 * 11 * 9, seed: 61))
            let w = DeviceTensor(be, Shape(4, 3, 3, 3), randomValues(4 * 27, seed: 62)), bias = DeviceTensor(be, Shape(4), randomValues(4, seed: 63))
            let y = DeviceTensor(be, Shape(5, 4, g.outHeight, g.outWidth)), ws = DeviceTensor(be, Shape(be.convolutionWorkspaceCount(g)))
            let dy = DeviceTensor(be, y.tensor.shape, randomValues(y.tensor.count, seed: 64))
            let dW = DeviceTensor(be, w.tensor.shape, randomValues(4 * 27, seed: 65)), dB = DeviceTensor(be, Shape(4))
            let dx = DeviceTensor(be, x.tensor.shape), scratch = DeviceTensor(be, Shape(be.convolutionBackwardScratchCount(g, inputGradient: true)))
            withExtendedLifetime((x, w, bias, ws, dy, scratch)) {
                be.convolutionForward(x.tensor, weight: w.tensor, bias: bias.tensor, g, workspace: ws.tensor, y.tensor)
                be.convolutionBackward(dy.tensor, x: x.tensor, weight: w.tensor, g, workspace: ws.tensor, scratch: scratch.tensor,
                                       dWeight: dW.tensor, dBias: dB.tensor, dx: dx.tensor)
            }
            results.append((y.values + dW.values + dB.values + dx.values).map(\.bitPattern))
        }
        XCTAssertEqual(results[0], results[1], "chunks of 2 give the bits of one chunk of 5")
    }

    /// Through the layer (the arena and the backend's scratch, as a step uses them): the
    /// branches' first convolution on 6 images of 64 x 64, chunks of one image under a small
    /// budget. The device memory it took falls; its gradients and output keep their bits.
    func testTheBudgetBoundsTheConvolutionsMemory() throws {
        var peaks: [Int] = [], results: [[Float]] = []
        for budget in [ConvolutionGeometry.defaultWorkspaceBudget, 1] {
            let be = CUDABackend(driver: EmulatedDevice(memory: 1 << 28), precision: .bf16)
            be.convolutionWorkspaceBudget = budget
            let layout = ParameterLayout()
            let conv = Conv2d("conv", 1, 32, kernel: 7, stride: 4, padding: 3, layout: layout)
            let ctx = ExecutionContext(backend: be, layout: layout, seed: 1)
            be.upload(randomValues(32 * 49, seed: 71), into: ctx.params.value(conv.weight))
            let x = DeviceTensor(be, Shape(6, 1, 64, 64), randomValues(6 * 64 * 64, seed: 72))
            XCTAssertEqual(be.convolutionChunk(conv.geometry(x.tensor.shape)), budget == 1 ? 1 : 6)
            let (y, saved) = try conv.forward(x.tensor, ctx)
            let dx = try XCTUnwrap(conv.backward(y, saved, ctx))
            peaks.append(be.peakDeviceBytes)
            results.append(be.download(y) + be.download(dx) + be.download(ctx.params.grad(conv.weight)))
        }
        XCTAssertEqual(results[0], results[1], "chunks of one image give the bits of one chunk of six")
        XCTAssertLessThan(peaks[1], peaks[0], "a smaller budget, a smaller peak")
    }
}
