import Foundation
import RadarCUDA
import RadarCore
import XCTest

/// Kernels that read and write bf16 activations as they are (under bf16 activations): GELU's
/// bf16 x and y (fc1's output and its own), LayerNorm's bf16 y. The same bits as widening x,
/// computing in fp32 and converting y, which the layers did before (passes and fp32 copies more),
/// on the CPU (through fp32 chunks, several per thread here) and on the emulated device.
final class BFloat16OutputTests: XCTestCase {
    static func backends() -> [(String, any Backend)] {
        [("cpu", CPUBackend(threads: 2)), ("cuda-emulated", CUDABackend(driver: EmulatedDevice(memory: 1 << 26), precision: .bf16))]
    }

    func testLayerNormWritesTheBitsOfConvertingItsFloatOutput() {
        let (rows, cols) = (67, 384)
        for (name, be) in BFloat16OutputTests.backends() {
            let x = DeviceTensor(be, Shape(rows, cols), randomValues(rows * cols, seed: 3, std: 2, mean: 0.5))
            let g = DeviceTensor(be, Shape(cols), randomValues(cols, seed: 4, mean: 1)), bt = DeviceTensor(be, Shape(cols), randomValues(cols, seed: 5))
            let yf = DeviceTensor(be, Shape(rows, cols)), m1 = DeviceTensor(be, Shape(rows)), r1 = DeviceTensor(be, Shape(rows))
            let m2 = DeviceTensor(be, Shape(rows)), r2 = DeviceTensor(be, Shape(rows)), wide = DeviceTensor(be, Shape(rows, cols))
            let yb = Tensor(be.allocate(DType.bfloat16.floats(rows * cols)), Shape(rows, cols), dtype: .bfloat16)
            let old = Tensor(be.allocate(DType.bfloat16.floats(rows * cols)), Shape(rows, cols), dtype: .bfloat16)
            defer { be.release(yb.base); be.release(old.base) }
            be.layerNormForward(x.tensor, gamma: g.tensor, beta: bt.tensor, eps: 1e-6, yf.tensor, mean: m1.tensor, rstd: r1.tensor)
            be.convert(yf.tensor, into: old)
            be.layerNormForward(x.tensor, gamma: g.tensor, beta: bt.tensor, eps: 1e-6, yb, mean: m2.tensor, rstd: r2.tensor)
            be.convert(yb, into: wide.tensor)
            let want = DeviceTensor(be, Shape(rows, cols))
            be.convert(old, into: want.tensor)
            XCTAssertEqual(wide.values.map(\.bitPattern), want.values.map(\.bitPattern), "\(name): y")
            XCTAssertNotEqual(wide.values, yf.values, "\(name): y is rounded")
            XCTAssertEqual(m2.values, m1.values, name)
            XCTAssertEqual(r2.values, r1.values, name)
        }
    }

    func testBFloat16GELUGivesTheBitsOfTheFloatPath() {
        let n = 5003
        for (name, be) in BFloat16OutputTests.backends() {
            func bf16(_ count: Int) -> Tensor { Tensor(be.allocate(DType.bfloat16.floats(count)), Shape(count), dtype: .bfloat16) }
            func floats(_ t: Tensor) -> [Float] {
                guard t.dtype == .bfloat16 else { return be.download(t) }
                let w = DeviceTensor(be, t.shape)
                be.convert(t, into: w.tensor)
                return w.values
            }
            let x = DeviceTensor(be, Shape(n), randomValues(n, seed: 7, std: 3)), dy = DeviceTensor(be, Shape(n), randomValues(n, seed: 8))
            let xb = bf16(n), yb = bf16(n), yOld = bf16(n), yFromFloat = bf16(n)
            defer { [xb, yb, yOld, yFromFloat].forEach { be.release($0.base) } }
            be.convert(x.tensor, into: xb)
            // The old way: widen, fp32 GELU, round.
            let wide = DeviceTensor(be, Shape(n)), yf = DeviceTensor(be, Shape(n)), cdfOld = DeviceTensor(be, Shape(n))
            be.convert(xb, into: wide.tensor)
            be.geluForward(wide.tensor, yf.tensor, cdf: cdfOld.tensor)
            be.convert(yf.tensor, into: yOld)
            // bf16 in and out; bf16 in, fp32 out; fp32 in, bf16 out.
            let cdf = DeviceTensor(be, Shape(n)), yMixed = DeviceTensor(be, Shape(n))
            be.geluForward(xb, yb, cdf: cdf.tensor)
            be.geluForward(xb, yMixed.tensor, cdf: nil)
            be.geluForward(wide.tensor, yFromFloat, cdf: nil)
            let want = floats(yOld)
            XCTAssertEqual(floats(yb).map(\.bitPattern), want.map(\.bitPattern), "\(name): y")
            XCTAssertEqual(floats(yFromFloat).map(\.bitPattern), want.map(\.bitPattern), "\(name): fp32 x, bf16 y")
            XCTAssertEqual(yMixed.values.map(\.bitPattern), yf.values.map(\.bitPattern), "\(name): bf16 x, fp32 y")
            XCTAssertEqual(cdf.values.map(\.bitPattern), cdfOld.values.map(\.bitPattern), "\(name): cdf")
            XCTAssertNotEqual(yf.values, want, "\(name): y is rounded")
            // Backward from a bf16 x, with the CDF recomputed and kept.
            for kept in [nil, cdf.tensor] as [Tensor?] {
                let dxOld = DeviceTensor(be, Shape(n)), dx = DeviceTensor(be, Shape(n))
                be.geluBackward(dy.tensor, x: wide.tensor, cdf: kept, dxOld.tensor)
                be.geluBackward(dy.tensor, x: xb, cdf: kept, dx.tensor)
                XCTAssertEqual(dx.values.map(\.bitPattern), dxOld.values.map(\.bitPattern), "\(name): dx, cdf kept \(kept != nil)")
            }
        }
    }
}
