import Foundation
import RadarCore
import XCTest

/// The fixed transforms against PyTorch (Fixtures/transforms.safetensors, written by
/// tools/golden/transforms.py) and the FFT against the DFT definition.
final class TransformTests: XCTestCase {
    func loadFixture() throws -> [String: SafeTensor] {
        try SafeTensors.read(fixturesDirectory.appendingPathComponent("transforms.safetensors").path).tensors
    }

    func host(_ t: SafeTensor) -> DeviceTensor { testTensor(Shape(t.shape), t.floats) }

    func testTransformsMatchPyTorch() throws {
        let fx = try loadFixture()
        let ctx = makeContext(ParameterLayout(), threads: 2)
        for name in ["a", "b"] {
            let x = host(fx["\(name).input"]!)
            ctx.beginPass()
            let gray = try ImageTransforms.grayscale(x.tensor, ctx)
            assertClose(gray.toArray(), fx["\(name).gray"]!.floats, rtol: 1e-6, atol: 1e-6, "\(name) grayscale")
            let edges = try ImageTransforms.sobel(gray, ctx)
            assertClose(edges.toArray(), fx["\(name).sobel"]!.floats, rtol: 1e-5, atol: 1e-6, "\(name) sobel")
            for size in [8, 13, 32] {
                let r = try ImageTransforms.resize(gray, to: size, ctx)
                assertClose(r.toArray(), fx["\(name).resize\(size)"]!.floats, rtol: 1e-5, atol: 1e-6, "\(name) resize \(size)")
                let mag = try ImageTransforms.fftMagnitude(r, ctx)
                // FFT round-off grows with the transform size; magnitudes here are O(10).
                assertClose(mag.toArray(), fx["\(name).fft\(size)"]!.floats, rtol: 1e-4, atol: 1e-4, "\(name) fft \(size)")
                let hp = try HighPassFilter(size: size).forward(mag, ctx)
                assertClose(hp.toArray(), fx["\(name).highpass\(size)"]!.floats, rtol: 1e-4, atol: 1e-5, "\(name) high-pass \(size)")
            }
        }
        // Constant image: no Sobel division (max 0), and the min-max denominator clamp.
        let flat = host(fx["flat.input"]!)
        ctx.beginPass()
        let g = try ImageTransforms.grayscale(flat.tensor, ctx)
        assertClose(try ImageTransforms.sobel(g, ctx).toArray(), fx["flat.sobel"]!.floats, rtol: 1e-6, atol: 1e-6, "flat sobel")
        let m = try ImageTransforms.fftMagnitude(try ImageTransforms.resize(g, to: 8, ctx), ctx)
        assertClose(try HighPassFilter(size: 8).forward(m, ctx).toArray(), fx["flat.highpass8"]!.floats,
                    rtol: 1e-4, atol: 1e-5, "flat high-pass")
    }

    func testFFTMagnitudeMatchesDFTDefinitionAndResizeMatchesNaiveLoop() throws {
        let ctx = makeContext(ParameterLayout(), threads: 2)
        for f in [5, 8, 11] {
            let x = randomHost(Shape(2, 1, f, f), seed: UInt64(f))
            let mag = try ImageTransforms.fftMagnitude(x.tensor, ctx).toArray()
            let xv = x.values
            let ref = Naive.dftMagnitudeShifted(Array(xv[0..<(f * f)]), f: f) + Naive.dftMagnitudeShifted(Array(xv[(f * f)...]), f: f)
            assertClose(mag, ref, rtol: 1e-4, atol: 1e-4, "fft \(f)")
        }
        let x = randomHost(Shape(1, 2, 9, 14), seed: 3)
        for (oh, ow) in [(4, 4), (18, 18), (9, 14)] {
            let y = testTensor(Shape(1, 2, oh, ow))
            ctx.backend.resizeBilinear(x.tensor, y.tensor)
            assertClose(y.values, Naive.resize(x.values, planes: 2, h: 9, w: 14, oh: oh, ow: ow), rtol: 1e-5, atol: 1e-6,
                        "resize to \(oh)x\(ow)")
        }
    }
}
