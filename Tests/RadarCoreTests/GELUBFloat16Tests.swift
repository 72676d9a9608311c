import Foundation
import RadarCUDA
import RadarCore
import XCTest

/// GELU reads a bf16 x and writes a bf16 y as they are (fc1's output and GELU's under bf16
/// activations): the same bits as widening x, computing in fp32 and converting y, which the layer
/// did before (two passes and an fp32 copy more), on the CPU (through its fp32 chunks, several
/// of them per thread here) and on the emulated device.
final class GELUBFloat16Tests: XCTestCase {
    func testBFloat16GELUGivesTheBitsOfTheFloatPath() {
        let n = 5003
        let backends: [(String, any Backend)] = [("cpu", CPUBackend(threads: 2)),
                                                 ("cuda-emulated", CUDABackend(driver: EmulatedDevice(memory: 1 << 26), precision: .bf16))]
        for (name, be) in backends {
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
