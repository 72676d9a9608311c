import CCUDAEmulator
import Foundation
@testable import RadarCUDA
import RadarCore
import XCTest

/// The CUDA kernels run on the emulated device (the same sources compiled as host C++, each
/// block's threads as fibers) against the CPU backend, on odd shapes; and the emulator catches
/// kernel bugs: deadlocks, strict-mode barrier misuse, and missing barriers (reversed thread order).
final class EmulatedDeviceTests: XCTestCase {
    /// A launch's arguments held inline: the initializer keeps their order up to the first absent
    /// one, `+` appends, and the argument array cuLaunchKernel takes points at each value in its C width.
    func testKernelArgumentsHoldTheirValuesInOrder() {
        let x = UnsafeMutablePointer<Float>.allocate(capacity: 1)
        defer { x.deallocate() }
        let head = KernelArgs(.ptr(x), .i32(-7)), tail = KernelArgs(.i64(1 << 40), .f32(2.5), .u32(9), .raw(nil))
        let all = head + tail
        XCTAssertEqual(all.count, 6)
        guard case .i64(1 << 40) = all[2], case .ptr(x) = all[0], case .raw(nil) = all[5] else { return XCTFail("\(Array(all))") }
        all.withArgumentArray { argv in
            XCTAssertEqual(argv[0]!.load(as: UnsafeMutablePointer<Float>.self), x)
            XCTAssertEqual(argv[1]!.load(as: Int32.self), -7)
            XCTAssertEqual(argv[2]!.load(as: Int.self), 1 << 40)
            XCTAssertEqual(argv[3]!.load(as: Float.self), 2.5)
            XCTAssertEqual(argv[4]!.load(as: UInt32.self), 9)
            XCTAssertNil(argv[5]!.load(as: UnsafeMutableRawPointer?.self))
        }
        var full = KernelArgs()
        XCTAssertEqual(full.count, 0)
        for i in 0..<KernelArgs.capacity { full.append(.i32(i)) }
        XCTAssertEqual(full.count, 16)
        guard case .i32(15) = full[15] else { return XCTFail("\(Array(full))") }
        let absent: KernelArg? = nil
        let listed = KernelArgs(.i32(0), .i32(1), .i32(2), .i32(3), .i32(4), .i32(5), .i32(6), .i32(7), .i32(8), .i32(9), .i32(10), .i32(11),
                                .i32(12), .i32(13), .i32(14), .i32(15))
        XCTAssertEqual(listed.count, 16)
        XCTAssertEqual((0..<16).map { i -> Int in if case .i32(let v) = listed[i] { return v } else { return -1 } }, Array(0..<16))
        XCTAssertEqual(KernelArgs(.i32(1), .f32(2), absent).count, 2, "a trailing absent argument ends the list")
    }

    /// A kernel argument, as cuLaunchKernel takes them (a pointer to each value).
    enum Arg {
        case buffer(UnsafeMutablePointer<Float>)
        case doubles(UnsafeMutablePointer<Double>)
        case i64(Int)
        case i32(Int32)
        case f32(Float)
        case u32(UInt32)
        case u64(UInt64)
    }

    @discardableResult
    func launch(_ name: String, grid: Int, block: Int, _ args: [Arg], file: StaticString = #filePath, line: UInt = #line) -> String {
        guard let kernel = radar_emu_lookup(name) else {
            XCTFail("no emulated kernel \(name)", file: file, line: line)
            return "missing"
        }
        let slots = args.map { _ in UnsafeMutableRawPointer.allocate(byteCount: 8, alignment: 8) }
        defer { slots.forEach { $0.deallocate() } }
        for (s, a) in zip(slots, args) {
            switch a {
            case .buffer(let p): s.storeBytes(of: p, as: UnsafeMutablePointer<Float>.self)
            case .doubles(let p): s.storeBytes(of: p, as: UnsafeMutablePointer<Double>.self)
            case .i64(let v): s.storeBytes(of: v, as: Int.self)
            case .i32(let v): s.storeBytes(of: v, as: Int32.self)
            case .f32(let v): s.storeBytes(of: v, as: Float.self)
            case .u32(let v): s.storeBytes(of: v, as: UInt32.self)
            case .u64(let v): s.storeBytes(of: v, as: UInt64.self)
            }
        }
        var argv: [UnsafeMutableRawPointer?] = slots
        let g: [UInt32] = [UInt32(grid), 1, 1], b: [UInt32] = [UInt32(block), 1, 1]
        let status = argv.withUnsafeMutableBufferPointer { kernel(g, b, $0.baseAddress) }
        return status == 0 ? "" : String(cString: radar_emu_last_error())
    }

    /// Host buffers the emulated kernels read and write (kept alive by the test).
    final class Buffers {
        var all: [UnsafeMutablePointer<Float>] = []
        func make(_ values: [Float]) -> UnsafeMutablePointer<Float> {
            let p = UnsafeMutablePointer<Float>.allocate(capacity: max(values.count, 1))
            p.initialize(from: values, count: values.count)
            all.append(p)
            return p
        }
        func zeros(_ n: Int) -> UnsafeMutablePointer<Float> { make([Float](repeating: 0, count: n)) }
        deinit { all.forEach { $0.deallocate() } }
    }

    func array(_ p: UnsafeMutablePointer<Float>, _ n: Int) -> [Float] { Array(UnsafeBufferPointer(start: p, count: n)) }

    let cpu = CPUBackend(threads: 1)
    func cpuTensor(_ v: [Float], _ s: Shape) -> DeviceTensor { DeviceTensor(cpu, s, v) }

    func testLayerNormAndSoftmaxMatchTheCPUBackend() {
        let buf = Buffers()
        for (rows, cols) in [(5, 37), (3, 7), (9, 130)] {
            let x = randomValues(rows * cols, seed: 1, std: 2), g = randomValues(cols, seed: 2), bt = randomValues(cols, seed: 3)
            let dy = randomValues(rows * cols, seed: 4)
            // CPU backend.
            let cx = cpuTensor(x, Shape(rows, cols)), cg = cpuTensor(g, Shape(cols)), cb = cpuTensor(bt, Shape(cols))
            let cy = DeviceTensor(cpu, Shape(rows, cols)), cm = DeviceTensor(cpu, Shape(rows)), cr = DeviceTensor(cpu, Shape(rows))
            cpu.layerNormForward(cx.tensor, gamma: cg.tensor, beta: cb.tensor, eps: 1e-6, cy.tensor, mean: cm.tensor, rstd: cr.tensor)
            let cdy = cpuTensor(dy, Shape(rows, cols)), cdx = DeviceTensor(cpu, Shape(rows, cols))
            let cdg = DeviceTensor(cpu, Shape(cols)), cdb = DeviceTensor(cpu, Shape(cols))
            cpu.layerNormBackward(cdy.tensor, x: cx.tensor, gamma: cg.tensor, mean: cm.tensor, rstd: cr.tensor, cdx.tensor,
                                  dGamma: cdg.tensor, dBeta: cdb.tensor)
            // Emulated device: two warps (rows) per block of 64 threads.
            let ex = buf.make(x), eg = buf.make(g), eb = buf.make(bt), ey = buf.zeros(rows * cols), em = buf.zeros(rows), er = buf.zeros(rows)
            let grid = (rows + 1) / 2
            XCTAssertEqual(launch("radar_layernorm_forward", grid: grid, block: 64,
                                  [.buffer(ex), .buffer(eg), .buffer(eb), .f32(1e-6), .buffer(ey), .i32(0), .buffer(em), .buffer(er), .i32(Int32(rows)), .i32(Int32(cols))]), "")
            assertClose(array(ey, rows * cols), cy.values, rtol: 1e-5, atol: 1e-5, "layernorm y \(rows)x\(cols)")
            assertClose(array(em, rows), cm.values, rtol: 1e-5, atol: 1e-6, "layernorm mean")
            assertClose(array(er, rows), cr.values, rtol: 1e-5, atol: 1e-6, "layernorm rstd")
            let edy = buf.make(dy), edx = buf.zeros(rows * cols), edg = buf.zeros(cols), edb = buf.zeros(cols)
            XCTAssertEqual(launch("radar_layernorm_backward_input", grid: grid, block: 64,
                                  [.buffer(edy), .buffer(ex), .buffer(eg), .buffer(em), .buffer(er), .u64(0), .buffer(edx), .u64(0),
                                   .i32(Int32(rows)), .i32(Int32(cols))]), "")
            // Parameter gradients in chunks of 2 rows (several chunks, the last one short), then
            // the chunks added in order.
            let chunks = (rows + 1) / 2, partial = buf.zeros(chunks * 2 * cols)
            XCTAssertEqual(launch("radar_layernorm_param_partials", grid: 3, block: 32,
                                  [.buffer(edy), .buffer(ex), .buffer(em), .buffer(er), .buffer(partial), .i32(Int32(rows)), .i32(Int32(cols)), .i32(2)]), "")
            for (offset, dst) in [(0, edg), (cols, edb)] {  // a warp per column
                XCTAssertEqual(launch("radar_add_chunk_sums", grid: (cols + 1) / 2, block: 64,
                                      [.buffer(partial + offset), .i32(Int32(chunks)), .i64(2 * cols), .i32(Int32(cols)), .buffer(dst)]), "")
            }
            assertClose(array(edx, rows * cols), cdx.values, rtol: 1e-4, atol: 1e-5, "layernorm dx")
            assertClose(array(edg, cols), cdg.values, rtol: 1e-4, atol: 1e-5, "layernorm dgamma")
            assertClose(array(edb, cols), cdb.values, rtol: 1e-5, atol: 1e-5, "layernorm dbeta")
            // Softmax forward and backward.
            let cs = DeviceTensor(cpu, Shape(rows, cols)), cds = DeviceTensor(cpu, Shape(rows, cols))
            cpu.softmaxForward(cx.tensor, cs.tensor, cols: cols)
            cpu.softmaxBackward(cdy.tensor, y: cs.tensor, cds.tensor, cols: cols)
            let es = buf.zeros(rows * cols), eds = buf.zeros(rows * cols)
            XCTAssertEqual(launch("radar_softmax_forward", grid: grid, block: 64,
                                  [.buffer(ex), .buffer(es), .u64(0), .i32(Int32(rows)), .i32(Int32(cols))]), "")
            XCTAssertEqual(launch("radar_softmax_backward", grid: grid, block: 64,
                                  [.buffer(edy), .buffer(es), .buffer(eds), .u64(0), .i32(Int32(rows)), .i32(Int32(cols))]), "")
            assertClose(array(es, rows * cols), cs.values, rtol: 1e-5, atol: 1e-7, "softmax")
            assertClose(array(eds, rows * cols), cds.values, rtol: 1e-4, atol: 1e-6, "softmax backward")
            // With a bf16 output (the attention's product operands under bf16): forward writes y and
            // its bf16 copy, backward writes dx as bf16 only; both the CPU backend's rounding of the
            // fp32 results, bit for bit.
            let half = (rows * cols + 1) / 2
            let es2 = buf.zeros(rows * cols), esb = buf.zeros(half), edsb = buf.zeros(half), eds2 = buf.zeros(rows * cols)
            XCTAssertEqual(launch("radar_softmax_forward", grid: grid, block: 64,
                                  [.buffer(ex), .buffer(es2), .buffer(esb), .i32(Int32(rows)), .i32(Int32(cols))]), "")
            XCTAssertEqual(array(es2, rows * cols), array(es, rows * cols), "softmax with a bf16 copy: the same fp32 output")
            XCTAssertEqual(launch("radar_softmax_backward", grid: grid, block: 64,
                                  [.buffer(edy), .buffer(es), .buffer(eds2), .buffer(edsb), .i32(Int32(rows)), .i32(Int32(cols))]), "")
            XCTAssertEqual(array(eds2, rows * cols), [Float](repeating: 0, count: rows * cols), "a bf16 dx leaves the fp32 one alone")
            for (device, values, what) in [(esb, array(es, rows * cols), "softmax bf16 copy"), (edsb, array(eds, rows * cols), "softmax backward bf16")] {
                let reference = cpuTensor(values, Shape(rows * cols))
                let rounded = Tensor(cpu.allocate(half), Shape(rows * cols), dtype: .bfloat16)
                cpu.convert(reference.tensor, into: rounded)
                let expected = UnsafeRawPointer(rounded.base).assumingMemoryBound(to: UInt16.self)
                let got = UnsafeRawPointer(device).assumingMemoryBound(to: UInt16.self)
                XCTAssertEqual((0..<rows * cols).map { got[$0] }, (0..<rows * cols).map { expected[$0] }, "\(what) \(rows)x\(cols)")
                cpu.release(rounded.base)
            }
        }
    }

    func testClipAndAdamWMatchTheCPUBackendAndRespectTheGate() {
        let buf = Buffers()
        let n = 1000
        let p = randomValues(n, seed: 5), g = randomValues(n, seed: 6, std: 0.3)
        let (lr, b1, b2, eps, wd, step): (Float, Float, Float, Float, Float, Int) = (1e-2, 0.9, 0.999, 1e-8, 0.05, 3)
        // CPU: clip to 1 then AdamW.
        let cp = cpuTensor(p, Shape(n)), cg = cpuTensor(g, Shape(n)), cm = DeviceTensor(cpu, Shape(n)), cv = DeviceTensor(cpu, Shape(n))
        let flag = DeviceTensor(cpu, Shape(1)), norm = DeviceTensor(cpu, Shape(1)), gate = DeviceTensor(cpu, Shape(1))
        cpu.clipGradientNorm(cg.tensor, ranges: [0..<n], maxNorm: 1, nonFinite: flag.tensor, norm: norm.tensor, gate: gate.tensor)
        cpu.adamW(params: cp.tensor, grads: cg.tensor, expAvg: cm.tensor, expAvgSq: cv.tensor, lr: lr, beta1: b1, beta2: b2, eps: eps,
                  weightDecay: wd, step: step, gate: gate.tensor)
        // Emulated: partial sums (chunks of 300 -> 4 blocks), coefficient, scale, AdamW.
        let ep = buf.make(p), eg = buf.make(g), em = buf.zeros(n), ev = buf.zeros(n)
        let partial = UnsafeMutablePointer<Double>.allocate(capacity: 4)
        defer { partial.deallocate() }
        let eflag = buf.zeros(1), enorm = buf.zeros(1), egate = buf.zeros(1), ecoef = buf.zeros(1)
        XCTAssertEqual(launch("radar_sum_squares_partial", grid: 4, block: 256, [.buffer(eg), .i64(n), .i64(300), .doubles(partial)]), "")
        XCTAssertEqual(launch("radar_clip_coefficient", grid: 1, block: 1,
                              [.doubles(partial), .i32(4), .f32(1), .buffer(eflag), .buffer(enorm), .buffer(egate), .buffer(ecoef)]), "")
        XCTAssertEqual(enorm[0], norm.values[0], accuracy: 1e-5 * norm.values[0])
        XCTAssertEqual(egate[0], 1)
        XCTAssertLessThan(ecoef[0], 1, "these gradients are clipped")
        XCTAssertEqual(launch("radar_scale_by_scalar", grid: 2, block: 128, [.buffer(eg), .i64(n), .buffer(ecoef)]), "")
        assertClose(array(eg, n), cg.values, rtol: 1e-6, atol: 1e-8, "clipped gradients")
        let bc1 = 1 - pow(Double(b1), Double(step)), bc2 = 1 - pow(Double(b2), Double(step))
        let stepSize = Float(Double(lr) / bc1), bc2Sqrt = Float(bc2.squareRoot()), decay = Float(1 - Double(lr) * Double(wd))
        let adamArgs: [Arg] = [.buffer(ep), .buffer(eg), .buffer(em), .buffer(ev), .i64(n), .f32(b1), .f32(b2), .f32(eps),
                               .f32(stepSize), .f32(bc2Sqrt), .f32(decay), .buffer(egate)]
        XCTAssertEqual(launch("radar_adamw", grid: 3, block: 128, adamArgs), "")
        assertClose(array(ep, n), cp.values, rtol: 1e-6, atol: 1e-7, "AdamW parameters")
        assertClose(array(ev, n), cv.values, rtol: 1e-6, atol: 1e-12, "AdamW second moment")
        // A closed gate: nothing moves.
        let before = array(ep, n)
        egate[0] = 0
        XCTAssertEqual(launch("radar_adamw", grid: 3, block: 128, adamArgs), "")
        XCTAssertEqual(array(ep, n), before)
    }

    func testLossKernelsMatchTheCPUBackend() {
        let buf = Buffers()
        let n = 13
        let x = randomValues(n, seed: 7, std: 3), t = (0..<n).map { Float($0 % 2) * 0.9 + 0.05 }
        let cl = DeviceTensor(cpu, Shape(1)), cd = DeviceTensor(cpu, Shape(n, 1))
        let cx = cpuTensor(x, Shape(n, 1)), ct = cpuTensor(t, Shape(n, 1))
        withExtendedLifetime((cx, ct)) {
            cpu.binaryCrossEntropyWithLogits(cx.tensor, targets: ct.tensor, scale: 0.5, dLogits: cd.tensor, loss: cl.tensor, weight: 0.3)
        }
        let ex = buf.make(x), et = buf.make(t), ed = buf.zeros(n), el = buf.zeros(1)
        XCTAssertEqual(launch("radar_bce_with_logits", grid: 1, block: 256,
                              [.buffer(ex), .buffer(et), .i32(Int32(n)), .f32(0.5), .buffer(ed), .buffer(el), .f32(0.3)]), "")
        XCTAssertEqual(el[0], cl.values[0], accuracy: 1e-6)
        assertClose(array(ed, n), cd.values, rtol: 1e-6, atol: 1e-8, "BCE gradient")
        // The cosine margin penalty: value (a double sum, so within float rounding) and gradients.
        let (rows, e) = (5, 9)
        let av = randomValues(rows * e, seed: 8), noise = randomValues(rows * e, seed: 9)
        let bv = zip(av, noise).map { 0.7 * $0 + $1 }
        let ca = cpuTensor(av, Shape(rows, e)), cb = cpuTensor(bv, Shape(rows, e))
        let cda = DeviceTensor(cpu, Shape(rows, e)), cdb = DeviceTensor(cpu, Shape(rows, e)), cpen = cpuTensor([0.25], Shape(1))
        cpu.cosineMarginPenalty(ca.tensor, cb.tensor, margin: 0.1, scale: 0.7, da: cda.tensor, db: cdb.tensor, loss: cpen.tensor, weight: 0.1)
        let eda = buf.zeros(rows * e), edb = buf.zeros(rows * e), epen = buf.make([0.25])
        XCTAssertEqual(launch("radar_cosine_margin_penalty", grid: 1, block: 4,
                              [.buffer(buf.make(av)), .buffer(buf.make(bv)), .i32(Int32(rows)), .i32(Int32(e)), .f32(0.1), .f32(0.7),
                               .buffer(eda), .buffer(edb), .buffer(epen), .f32(0.1)]), "")
        XCTAssertEqual(epen[0], cpen.values[0], accuracy: 1e-7)
        XCTAssertGreaterThan(epen[0], 0.25, "the penalty is active for these vectors")
        assertClose(array(eda, rows * e), cda.values, rtol: 1e-6, atol: 1e-9, "cosine penalty da")
        assertClose(array(edb, rows * e), cdb.values, rtol: 1e-6, atol: 1e-9, "cosine penalty db")
        // The non-finite flag.
        let flag = buf.zeros(1)
        XCTAssertEqual(launch("radar_flag_non_finite", grid: 2, block: 64, [.buffer(ex), .i64(n), .buffer(flag)]), "")
        XCTAssertEqual(flag[0], 0)
        ex[11] = .infinity
        XCTAssertEqual(launch("radar_flag_non_finite", grid: 2, block: 64, [.buffer(ex), .i64(n), .buffer(flag)]), "")
        XCTAssertEqual(flag[0], 1)
    }

    func testBatchNormPoolingAndGRUKernelsMatchTheCPUBackend() {
        let buf = Buffers()
        let (b, c, h, w) = (3, 5, 7, 3)
        let n = b * c * h * w, hw = h * w
        let x = randomValues(n, seed: 11, std: 1.5, mean: 0.3), dy = randomValues(n, seed: 12)
        let gamma = randomValues(c, seed: 13), beta = randomValues(c, seed: 14)
        let cx = cpuTensor(x, Shape(b, c, h, w)), cdy = cpuTensor(dy, Shape(b, c, h, w))
        let cg = cpuTensor(gamma, Shape(c)), cb = cpuTensor(beta, Shape(c))
        let cm = DeviceTensor(cpu, Shape(c)), cv = DeviceTensor(cpu, Shape(c)), ci = DeviceTensor(cpu, Shape(c))
        let crm = cpuTensor([Float](repeating: 0.2, count: c), Shape(c)), crv = cpuTensor([Float](repeating: 1.1, count: c), Shape(c))
        let cy = DeviceTensor(cpu, Shape(b, c, h, w)), csd = DeviceTensor(cpu, Shape(c)), csx = DeviceTensor(cpu, Shape(c))
        let cdx = DeviceTensor(cpu, Shape(b, c, h, w))
        cpu.channelMoments(cx.tensor, mean: cm.tensor, variance: cv.tensor)
        cpu.batchNormUpdateStatistics(mean: cm.tensor, variance: cv.tensor, count: b * hw, eps: 1e-5, momentum: 0.1, invStd: ci.tensor,
                                      runningMean: crm.tensor, runningVar: crv.tensor)
        cpu.channelNormalize(cx.tensor, mean: cm.tensor, invStd: ci.tensor, gamma: cg.tensor, beta: cb.tensor, cy.tensor)
        cpu.channelGradientSums(cdy.tensor, x: cx.tensor, mean: cm.tensor, invStd: ci.tensor, sumDy: csd.tensor, sumDyXhat: csx.tensor)
        cpu.batchNormInputGradient(cdy.tensor, x: cx.tensor, mean: cm.tensor, invStd: ci.tensor, gamma: cg.tensor, sumDy: csd.tensor,
                                   sumDyXhat: csx.tensor, count: b * hw, cdx.tensor)
        let ex = buf.make(x), edy = buf.make(dy), eg = buf.make(gamma), eb = buf.make(beta)
        let em = buf.zeros(c), ev = buf.zeros(c), ei = buf.zeros(c), erm = buf.make([Float](repeating: 0.2, count: c))
        let erv = buf.make([Float](repeating: 1.1, count: c)), ey = buf.zeros(n), esd = buf.zeros(c), esx = buf.zeros(c), edx = buf.zeros(n)
        let (B, C, HW) = (Int32(b), Int32(c), Int32(hw))
        // Per-plane double partials (one block of 16 threads per plane, so each thread sums a
        // strided slice before the tree), then one thread per channel over the batch.
        let planes = UnsafeMutablePointer<Double>.allocate(capacity: 2 * b * c)
        defer { planes.deallocate() }
        XCTAssertEqual(launch("radar_plane_moments", grid: b * c, block: 16, [.buffer(ex), .doubles(planes), .i32(HW)]), "")
        XCTAssertEqual(launch("radar_channel_moments_from_planes", grid: 1, block: 32,
                              [.doubles(planes), .i32(B), .i32(C), .i32(HW), .buffer(em), .buffer(ev)]), "")
        XCTAssertEqual(launch("radar_batchnorm_update_statistics", grid: 1, block: 32,
                              [.buffer(em), .buffer(ev), .i32(C), .i32(B * HW), .f32(1e-5), .f32(0.1), .buffer(ei), .buffer(erm), .buffer(erv)]), "")
        XCTAssertEqual(launch("radar_channel_normalize", grid: 2, block: 64,
                              [.buffer(ex), .buffer(em), .buffer(ei), .buffer(eg), .buffer(eb), .buffer(ey), .i64(n), .i32(C), .i32(HW)]), "")
        XCTAssertEqual(launch("radar_plane_gradient_sums", grid: b * c, block: 16,
                              [.buffer(edy), .buffer(ex), .buffer(em), .buffer(ei), .doubles(planes), .i32(C), .i32(HW)]), "")
        for (component, dst) in [(0, esd), (1, esx)] {
            XCTAssertEqual(launch("radar_sum_planes_over_batch", grid: 1, block: 32,
                                  [.doubles(planes), .i32(B), .i32(C), .i32(2), .i32(Int32(component)), .buffer(dst), .i32(0)]), "")
        }
        XCTAssertEqual(launch("radar_batchnorm_input_gradient", grid: 2, block: 64,
                              [.buffer(edy), .buffer(ex), .buffer(em), .buffer(ei), .buffer(eg), .buffer(esd), .buffer(esx), .i32(B * HW),
                               .buffer(edx), .i64(n), .i32(C), .i32(HW)]), "")
        assertClose(array(em, c), cm.values, rtol: 1e-6, atol: 1e-7, "channel mean")
        assertClose(array(ev, c), cv.values, rtol: 1e-6, atol: 1e-7, "channel variance")
        assertClose(array(erv, c), crv.values, rtol: 1e-6, atol: 1e-7, "running variance")
        assertClose(array(ey, n), cy.values, rtol: 1e-5, atol: 1e-6, "batchnorm y")
        assertClose(array(esd, c), csd.values, rtol: 1e-6, atol: 1e-6, "sum dy")
        assertClose(array(esx, c), csx.values, rtol: 1e-5, atol: 1e-5, "sum dy xhat")
        assertClose(array(edx, n), cdx.values, rtol: 1e-4, atol: 1e-5, "batchnorm dx")
        // Global average pooling.
        let cp = DeviceTensor(cpu, Shape(b, c)), cpb = DeviceTensor(cpu, Shape(b, c, h, w))
        cpu.globalAvgPoolForward(cx.tensor, cp.tensor)
        cpu.globalAvgPoolBackward(cp.tensor, cpb.tensor)
        let ep = buf.zeros(b * c), epb = buf.zeros(n)
        XCTAssertEqual(launch("radar_global_avg_pool_forward", grid: 1, block: 32, [.buffer(ex), .buffer(ep), .i32(B * C), .i32(HW)]), "")
        XCTAssertEqual(launch("radar_global_avg_pool_backward", grid: 3, block: 32, [.buffer(ep), .buffer(epb), .i64(n), .i32(HW)]), "")
        assertClose(array(ep, b * c), cp.values, rtol: 1e-6, atol: 1e-7, "avg pool")
        assertClose(array(epb, n), cpb.values, rtol: 1e-6, atol: 1e-8, "avg pool backward")
        // GRU gates, forward and backward.
        let (gb, e) = (3, 11)
        let gi = randomValues(gb * 3 * e, seed: 15), gh = randomValues(gb * 3 * e, seed: 16), hv = randomValues(gb * e, seed: 17)
        let dhn = randomValues(gb * e, seed: 18)
        let cgi = cpuTensor(gi, Shape(gb, 3 * e)), cgh = cpuTensor(gh, Shape(gb, 3 * e)), ch = cpuTensor(hv, Shape(gb, e))
        let outs = (0..<4).map { _ in DeviceTensor(cpu, Shape(gb, e)) }
        cpu.gruGatesForward(gi: cgi.tensor, gh: cgh.tensor, h: ch.tensor, hNew: outs[0].tensor, r: outs[1].tensor, z: outs[2].tensor, n: outs[3].tensor)
        let cdhn = cpuTensor(dhn, Shape(gb, e)), cdgi = DeviceTensor(cpu, Shape(gb, 3 * e)), cdgh = DeviceTensor(cpu, Shape(gb, 3 * e))
        let cdh = DeviceTensor(cpu, Shape(gb, e))
        cpu.gruGatesBackward(dhNew: cdhn.tensor, gh: cgh.tensor, h: ch.tensor, r: outs[1].tensor, z: outs[2].tensor, n: outs[3].tensor,
                             dgi: cdgi.tensor, dgh: cdgh.tensor, dh: cdh.tensor)
        let egi = buf.make(gi), egh = buf.make(gh), eh = buf.make(hv), eo = (0..<4).map { _ in buf.zeros(gb * e) }
        XCTAssertEqual(launch("radar_gru_gates_forward", grid: 1, block: 16,
                              [.buffer(egi), .buffer(egh), .buffer(eh), .buffer(eo[0]), .buffer(eo[1]), .buffer(eo[2]), .buffer(eo[3]),
                               .i32(Int32(gb)), .i32(Int32(e))]), "")
        for k in 0..<4 { assertClose(array(eo[k], gb * e), outs[k].values, rtol: 1e-5, atol: 1e-6, "gru forward output \(k)") }
        let edhn = buf.make(dhn), edgi = buf.zeros(gb * 3 * e), edgh = buf.zeros(gb * 3 * e), edh = buf.zeros(gb * e)
        XCTAssertEqual(launch("radar_gru_gates_backward", grid: 2, block: 8,
                              [.buffer(edhn), .buffer(egh), .buffer(eh), .buffer(eo[1]), .buffer(eo[2]), .buffer(eo[3]), .buffer(edgi),
                               .buffer(edgh), .buffer(edh), .i32(Int32(gb)), .i32(Int32(e))]), "")
        assertClose(array(edgi, gb * 3 * e), cdgi.values, rtol: 1e-5, atol: 1e-6, "gru dgi")
        assertClose(array(edgh, gb * 3 * e), cdgh.values, rtol: 1e-5, atol: 1e-6, "gru dgh")
        assertClose(array(edh, gb * e), cdh.values, rtol: 1e-5, atol: 1e-6, "gru dh")
    }

    func testImageTransformsMatchTheCPUBackend() {
        let buf = Buffers()
        let (b, h, w) = (3, 9, 13)
        let img = randomValues(b * 3 * h * w, seed: 21)
        let cx = cpuTensor(img, Shape(b, 3, h, w)), cgray = DeviceTensor(cpu, Shape(b, 1, h, w)), csob = DeviceTensor(cpu, Shape(b, 1, h, w))
        cpu.grayscale(cx.tensor, cgray.tensor)
        cpu.sobelMagnitude(cgray.tensor, csob.tensor)
        let ex = buf.make(img), egray = buf.zeros(b * h * w), esob = buf.zeros(b * h * w)
        XCTAssertEqual(launch("radar_grayscale", grid: 2, block: 64, [.buffer(ex), .buffer(egray), .i32(Int32(b)), .i32(Int32(h * w))]), "")
        XCTAssertEqual(launch("radar_sobel_magnitude", grid: b, block: 64, [.buffer(egray), .buffer(esob), .i32(Int32(h)), .i32(Int32(w))]), "")
        assertClose(array(egray, b * h * w), cgray.values, rtol: 1e-6, atol: 1e-7, "grayscale")
        assertClose(array(esob, b * h * w), csob.values, rtol: 1e-5, atol: 1e-6, "sobel")
        XCTAssertEqual(array(esob, h * w).max(), 1, "each image divided by its own maximum")
        // High-pass + log + min-max on a (b, 1, F, F) magnitude with F = 11.
        let f = 11
        let mag = randomValues(b * f * f, seed: 22).map { abs($0) * 10 }
        let filter = HighPassFilter(size: f)
        let cmag = cpuTensor(mag, Shape(b, 1, f, f)), cmask = DeviceTensor(cpu, filter.mask), cout = DeviceTensor(cpu, Shape(b, 1, f, f))
        cpu.highPassLogNormalize(cmag.tensor, mask: cmask.tensor, cout.tensor)
        let emag = buf.make(mag), emask = buf.make(filter.mask.values), eout = buf.zeros(b * f * f)
        XCTAssertEqual(launch("radar_high_pass_log_normalize", grid: b, block: 32, [.buffer(emag), .buffer(emask), .buffer(eout), .i32(Int32(f * f))]), "")
        assertClose(array(eout, b * f * f), cout.values, rtol: 1e-5, atol: 1e-6, "high-pass log min-max")
    }

    func testDropoutDrawsTheCPUBackendsPhiloxMasksExactly() {
        let buf = Buffers()
        let n = 1001
        let x = randomValues(n, seed: 31)
        let seed: UInt64 = 0x1234_5678_9abc_def0
        let stream = RandomStream(seed: seed, stream: RandomStream.id("dropout", 7, 3, 0))
        let cy = DeviceTensor(cpu, Shape(n))
        let cx = cpuTensor(x, Shape(n))
        cpu.dropoutForward(cx.tensor, cy.tensor, p: 0.1, stream: stream)
        let ex = buf.make(x), ey = buf.zeros(n)
        XCTAssertEqual(launch("radar_dropout", grid: 3, block: 128,
                              [.buffer(ex), .buffer(ey), .i64(n), .f32(0.1), .u32(stream.philox.key0), .u32(stream.philox.key1), .u64(stream.stream)]), "")
        let ours = array(ey, n), theirs = cy.values
        XCTAssertEqual(ours.map(\.bitPattern), theirs.map(\.bitPattern), "identical masks and values")
        let dropped = ours.filter { $0 == 0 }.count
        XCTAssertTrue(dropped > 60 && dropped < 150, "about 10% dropped: \(dropped)")
    }

    /// im2col takes four elements a thread, stepping along rows, taps and planes: a geometry where
    /// the groups straddle output rows, taps and input planes and the range ends mid-group, with
    /// columns 16/8-byte aligned (whole-word stores) and not (element stores).
    func testIm2colFourElementsAThreadAcrossRowsTapsAndPlanes() {
        let buf = Buffers()
        let g = ConvolutionGeometry(batch: 1, inChannels: 2, height: 7, width: 5, outChannels: 3, kernel: 3, stride: 1, padding: 1)
        let total = g.patchSize * g.outHeight * g.outWidth
        XCTAssertEqual(total % 4, 2)
        let x = randomValues(2 * 7 * 5, seed: 44)
        let cx = cpuTensor(x, Shape(1, 2, 7, 5)), cw = cpuTensor(randomValues(3 * g.patchSize, seed: 45), Shape(3, 2, 3, 3))
        let work = DeviceTensor(cpu, Shape(cpu.convolutionWorkspaceCount(g))), cy = DeviceTensor(cpu, Shape(1, 3, g.outHeight, g.outWidth))
        cpu.convolutionForward(cx.tensor, weight: cw.tensor, bias: nil, g, workspace: work.tensor, cy.tensor)
        let want = Array(work.values.prefix(total))
        let ex = buf.make(x)
        let geom: [Arg] = [.i32(1), .i32(2), .i32(7), .i32(5), .i32(3), .i32(1), .i32(1), .i32(Int32(g.outHeight)), .i32(Int32(g.outWidth))]
        for offset in [0, 1] {
            let ecol = buf.zeros(total + 4), ecol16 = buf.zeros(total / 2 + 4)
            XCTAssertEqual(launch("radar_im2col", grid: 3, block: 32, [.buffer(ex), .buffer(ecol + offset), .i32(0)] + geom), "")
            XCTAssertEqual(array(ecol + offset, total), want, "im2col, column offset \(offset)")
            XCTAssertEqual(ecol[offset + total], 0, "nothing past the columns")
            XCTAssertEqual(launch("radar_im2col", grid: 3, block: 32, [.buffer(ex), .buffer(ecol16 + offset), .i32(1)] + geom), "")
            let halves = UnsafeRawPointer(ecol16 + offset).bindMemory(to: UInt16.self, capacity: total + 2)
            XCTAssertEqual((0..<total).map { halves[$0] }, want.map(BFloat16.bits), "im2col, bf16 columns, offset \(offset)")
            XCTAssertEqual(halves[total], 0, "nothing past the bf16 columns")
        }
    }

    func testIm2colCol2imTransposeColumnsAndTokenPoolingMatchTheCPUBackend() {
        let buf = Buffers()
        let g = ConvolutionGeometry(batch: 2, inChannels: 3, height: 9, width: 7, outChannels: 4, kernel: 3, stride: 2, padding: 1)
        let (ho, wo, ckk) = (g.outHeight, g.outWidth, g.patchSize)
        let x = randomValues(2 * 3 * 9 * 7, seed: 41)
        // The CPU backend's convolution leaves every image's im2col in its workspace.
        let cx = cpuTensor(x, Shape(2, 3, 9, 7)), cw = cpuTensor(randomValues(4 * ckk, seed: 42), Shape(4, 3, 3, 3))
        let work = DeviceTensor(cpu, Shape(cpu.convolutionWorkspaceCount(g))), cy = DeviceTensor(cpu, Shape(2, 4, ho, wo))
        cpu.convolutionForward(cx.tensor, weight: cw.tensor, bias: nil, g, workspace: work.tensor, cy.tensor)
        let ex = buf.make(x), ecol = buf.zeros(2 * ckk * ho * wo)
        let geom: [Arg] = [.i32(2), .i32(3), .i32(9), .i32(7), .i32(3), .i32(2), .i32(1), .i32(Int32(ho)), .i32(Int32(wo))]
        XCTAssertEqual(launch("radar_im2col", grid: 4, block: 64, [.buffer(ex), .buffer(ecol), .i32(0)] + geom), "")
        XCTAssertEqual(array(ecol, 2 * ckk * ho * wo), work.values, "im2col")
        // bf16 columns: the bits of rounding the fp32 ones (two per float of the buffer).
        let ecol16 = buf.zeros((2 * ckk * ho * wo + 1) / 2)
        XCTAssertEqual(launch("radar_im2col", grid: 4, block: 64, [.buffer(ex), .buffer(ecol16), .i32(1)] + geom), "")
        let halves = UnsafeRawPointer(ecol16).bindMemory(to: UInt16.self, capacity: 2 * ckk * ho * wo)
        XCTAssertEqual((0..<(2 * ckk * ho * wo)).map { halves[$0] }, work.values.map(BFloat16.bits), "im2col, bf16 columns")
        // col2im: the adjoint, against a scatter-add in the CPU backend's order.
        let colv = randomValues(2 * ckk * ho * wo, seed: 43)
        var ref = [Float](repeating: 0, count: 2 * 3 * 9 * 7)
        for b in 0..<2 { for c in 0..<3 { for ky in 0..<3 { for kx in 0..<3 { for oy in 0..<ho { for ox in 0..<wo {
            let iy = oy * 2 - 1 + ky, ix = ox * 2 - 1 + kx
            guard iy >= 0, iy < 9, ix >= 0, ix < 7 else { continue }
            ref[((b * 3 + c) * 9 + iy) * 7 + ix] += colv[((b * ckk + (c * 3 + ky) * 3 + kx) * ho + oy) * wo + ox]
        } } } } } }
        let ecolv = buf.make(colv), edx = buf.zeros(ref.count)
        XCTAssertEqual(launch("radar_col2im", grid: 3, block: 64, [.buffer(ecolv), .buffer(edx)] + geom), "")
        XCTAssertEqual(array(edx, ref.count).map(\.bitPattern), ref.map(\.bitPattern), "col2im (same summation order)")
        // Transpose and columns.
        let t = randomValues(2 * 5 * 6, seed: 44), ct = DeviceTensor(cpu, Shape(2, 6, 5))
        let cts = cpuTensor(t, Shape(2, 5, 6))
        withExtendedLifetime(cts) { cpu.transposeLastTwo(cts.tensor, ct.tensor) }
        let et = buf.make(t), ett = buf.zeros(60)
        XCTAssertEqual(launch("radar_transpose_last_two", grid: 1, block: 32, [.buffer(et), .buffer(ett), .i32(2), .i32(5), .i32(6)]), "")
        XCTAssertEqual(array(ett, 60), ct.values)
        let wide = buf.zeros(4 * 9), narrow = buf.make(randomValues(4 * 3, seed: 45)), back = buf.zeros(12)
        XCTAssertEqual(launch("radar_copy_columns", grid: 1, block: 32, [.buffer(narrow), .i32(3), .buffer(wide), .i32(9), .i32(5), .i64(4)]), "")
        XCTAssertEqual(launch("radar_slice_columns", grid: 1, block: 32, [.buffer(wide), .i32(9), .i32(5), .buffer(back), .i32(3), .i64(4)]), "")
        XCTAssertEqual(array(back, 12), array(narrow, 12))
        XCTAssertEqual(array(wide, 9).prefix(5), [0, 0, 0, 0, 0])
        // Token mean / max / argmax and the backward.
        let (tb, tn, td) = (2, 7, 5)
        var tv = randomValues(tb * tn * td, seed: 46)
        tv[3 * td + 1] = .nan  // NaN wins the max, as torch.max
        let ctok = cpuTensor(tv, Shape(tb, tn, td))
        let cmean = DeviceTensor(cpu, Shape(tb, td)), cmax = DeviceTensor(cpu, Shape(tb, td)), carg = DeviceTensor(cpu, Shape(tb, td))
        cpu.tokenMeanMaxForward(ctok.tensor, mean: cmean.tensor, max: cmax.tensor, argmax: carg.tensor)
        let etok = buf.make(tv), emean = buf.zeros(tb * td), emax = buf.zeros(tb * td), earg = buf.zeros(tb * td)
        XCTAssertEqual(launch("radar_token_mean_max", grid: 1, block: 8,
                              [.buffer(etok), .buffer(emean), .buffer(emax), .buffer(earg), .i32(Int32(tb)), .i32(Int32(tn)), .i32(Int32(td))]), "")
        XCTAssertEqual(array(emean, tb * td).map(\.bitPattern), cmean.values.map(\.bitPattern))
        XCTAssertEqual(array(emax, tb * td).map(\.bitPattern), cmax.values.map(\.bitPattern))
        XCTAssertEqual(array(earg, tb * td), carg.values)
        XCTAssertTrue(emax[1].isNaN)
        let dm = randomValues(tb * td, seed: 47), dx = randomValues(tb * td, seed: 48)
        let cdt = DeviceTensor(cpu, Shape(tb, tn, td))
        let cdm = cpuTensor(dm, Shape(tb, td)), cdx = cpuTensor(dx, Shape(tb, td))
        withExtendedLifetime((cdm, cdx)) { cpu.tokenMeanMaxBackward(dMean: cdm.tensor, dMax: cdx.tensor, argmax: carg.tensor, cdt.tensor) }
        let edt = buf.zeros(tb * tn * td)
        XCTAssertEqual(launch("radar_token_mean_max_backward", grid: 1, block: 32,
                              [.buffer(buf.make(dm)), .buffer(buf.make(dx)), .buffer(earg), .buffer(edt), .i32(Int32(tb)), .i32(Int32(tn)), .i32(Int32(td))]), "")
        XCTAssertEqual(array(edt, tb * tn * td).map(\.bitPattern), cdt.values.map(\.bitPattern))
    }

    func testCrossAttentionPiecesAndFusionBackwardAreBitIdenticalToTheCPUBackend() {
        let buf = Buffers()
        let (b, t, heads, e) = (3, 2, 4, 12)
        let qv = randomValues(b * e, seed: 51), kv = randomValues(b * t * e, seed: 52), vv = randomValues(b * t * e, seed: 53)
        let dsv = randomValues(b * heads * t, seed: 54), dcv = randomValues(b * e, seed: 55)
        let cq = cpuTensor(qv, Shape(b, e)), ck = cpuTensor(kv, Shape(b, t, e)), cv = cpuTensor(vv, Shape(b, t, e))
        let cds = cpuTensor(dsv, Shape(b, heads, t)), cdc = cpuTensor(dcv, Shape(b, e))
        let cs = DeviceTensor(cpu, Shape(b, heads, t)), cdq = DeviceTensor(cpu, Shape(b, e)), cdk = DeviceTensor(cpu, Shape(b, t, e))
        let cctx = DeviceTensor(cpu, Shape(b, e)), cdw = DeviceTensor(cpu, Shape(b, heads, t)), cdv = DeviceTensor(cpu, Shape(b, t, e))
        let cmean = DeviceTensor(cpu, Shape(b, t))
        cpu.queryKeyScores(q: cq.tensor, k: ck.tensor, tokens: t, heads: heads, scale: 0.4, cs.tensor)
        cpu.queryKeyScoresBackward(dScores: cds.tensor, q: cq.tensor, k: ck.tensor, tokens: t, heads: heads, scale: 0.4, dQ: cdq.tensor, dK: cdk.tensor)
        cpu.weightedValues(cds.tensor, v: cv.tensor, tokens: t, heads: heads, cctx.tensor)
        cpu.weightedValuesBackward(dCtx: cdc.tensor, w: cds.tensor, v: cv.tensor, tokens: t, heads: heads, dW: cdw.tensor, dV: cdv.tensor)
        cpu.meanOverHeads(cds.tensor, heads: heads, tokens: t, cmean.tensor)
        let eq = buf.make(qv), ek = buf.make(kv), ev = buf.make(vv), eds = buf.make(dsv), edc = buf.make(dcv)
        let es = buf.zeros(b * heads * t), edq = buf.zeros(b * e), edk = buf.zeros(b * t * e), ectx = buf.zeros(b * e)
        let edw = buf.zeros(b * heads * t), edv = buf.zeros(b * t * e), emean = buf.zeros(b * t)
        let dims: [Arg] = [.i32(Int32(b)), .i32(Int32(t)), .i32(Int32(heads)), .i32(Int32(e))]
        XCTAssertEqual(launch("radar_query_key_scores", grid: 1, block: 16, [.buffer(eq), .buffer(ek), .buffer(es)] + dims + [.f32(0.4)]), "")
        XCTAssertEqual(launch("radar_query_key_scores_backward", grid: 2, block: 16,
                              [.buffer(eds), .buffer(eq), .buffer(ek), .buffer(edq), .buffer(edk)] + dims + [.f32(0.4)]), "")
        XCTAssertEqual(launch("radar_weighted_values", grid: 1, block: 32, [.buffer(eds), .buffer(ev), .buffer(ectx)] + dims), "")
        XCTAssertEqual(launch("radar_weighted_values_backward", grid: 1, block: 32,
                              [.buffer(edc), .buffer(eds), .buffer(ev), .buffer(edw), .buffer(edv)] + dims), "")
        XCTAssertEqual(launch("radar_mean_over_heads", grid: 1, block: 32,
                              [.buffer(eds), .buffer(emean), .i32(Int32(b)), .i32(Int32(heads)), .i32(Int32(t))]), "")
        func same(_ p: UnsafeMutablePointer<Float>, _ d: DeviceTensor, _ what: String) {
            XCTAssertEqual(array(p, d.shape.count).map(\.bitPattern), d.values.map(\.bitPattern), what)
        }
        same(es, cs, "scores"); same(edq, cdq, "dQ"); same(edk, cdk, "dK"); same(ectx, cctx, "context")
        same(edw, cdw, "dW"); same(edv, cdv, "dV"); same(emean, cmean, "mean over heads")
        // Gated fusion backward.
        let n = 5
        let dfv = randomValues(n, seed: 56), rv = randomValues(n, seed: 57), xv = randomValues(n, seed: 58)
        let cdf = cpuTensor(dfv, Shape(n, 1)), cgate = cpuTensor([0.3], Shape()), cr = cpuTensor(rv, Shape(n, 1)), cx = cpuTensor(xv, Shape(n, 1))
        let cdr = DeviceTensor(cpu, Shape(n, 1)), cde = DeviceTensor(cpu, Shape(n, 1)), cdg = cpuTensor([0.5], Shape(1))
        cpu.gatedFusionBackward(dFinal: cdf.tensor, gate: cgate.tensor, reasoning: cr.tensor, external: cx.tensor, dReasoning: cdr.tensor,
                                dExternal: cde.tensor, dGate: cdg.tensor)
        let edr = buf.zeros(n), ede = buf.zeros(n), edg = buf.make([0.5])
        XCTAssertEqual(launch("radar_gated_fusion_backward", grid: 1, block: 32,
                              [.buffer(buf.make(dfv)), .buffer(buf.make([0.3])), .buffer(buf.make(rv)), .buffer(buf.make(xv)),
                               .buffer(edr), .buffer(ede), .buffer(edg), .i32(Int32(n))]), "")
        same(edr, cdr, "dReasoning"); same(ede, cde, "dExternal"); same(edg, cdg, "dGate (accumulated)")
    }

    func testResizeAndSyncBatchNormPiecesAreBitIdenticalToTheCPUBackendAndChannelSumsClose() {
        let buf = Buffers()
        func same(_ p: UnsafeMutablePointer<Float>, _ d: DeviceTensor, _ what: String) {
            XCTAssertEqual(array(p, d.shape.count).map(\.bitPattern), d.values.map(\.bitPattern), what)
        }
        // Bilinear resize down and up (AADM resizes the grey image to fft_size).
        for (ih, iw, oh, ow) in [(13, 11, 7, 5), (5, 6, 9, 13)] {
            let xv = randomValues(2 * ih * iw, seed: 61)
            let cx = cpuTensor(xv, Shape(2, 1, ih, iw)), cy = DeviceTensor(cpu, Shape(2, 1, oh, ow))
            cpu.resizeBilinear(cx.tensor, cy.tensor)
            let ey = buf.zeros(2 * oh * ow)
            XCTAssertEqual(launch("radar_resize_bilinear", grid: 2, block: 32,
                                  [.buffer(buf.make(xv)), .buffer(ey), .i32(2), .i32(Int32(ih)), .i32(Int32(iw)), .i32(Int32(oh)), .i32(Int32(ow))]), "")
            same(ey, cy, "resize \(ih)x\(iw) -> \(oh)x\(ow)")
        }
        // SyncBatchNorm sums and moments, inverse std, channel sums.
        let c = 6
        let mv = randomValues(c, seed: 62), vv = randomValues(c, seed: 63).map { abs($0) }
        let cm = cpuTensor(mv, Shape(c)), cv = cpuTensor(vv, Shape(c)), csums = DeviceTensor(cpu, Shape(2 * c + 1))
        let gm = DeviceTensor(cpu, Shape(c)), gv = DeviceTensor(cpu, Shape(c)), ci = DeviceTensor(cpu, Shape(c))
        cpu.batchNormLocalSums(mean: cm.tensor, variance: cv.tensor, count: 37, into: csums.tensor)
        cpu.batchNormGlobalMoments(csums.tensor, channels: c, mean: gm.tensor, variance: gv.tensor)
        cpu.inverseStandardDeviation(cv.tensor, eps: 1e-5, ci.tensor)
        let em = buf.make(mv), ev = buf.make(vv), esums = buf.zeros(2 * c + 1), egm = buf.zeros(c), egv = buf.zeros(c), ei = buf.zeros(c)
        XCTAssertEqual(launch("radar_batchnorm_local_sums", grid: 1, block: 32, [.buffer(em), .buffer(ev), .i32(Int32(c)), .f32(37), .buffer(esums)]), "")
        XCTAssertEqual(launch("radar_batchnorm_global_moments", grid: 1, block: 32, [.buffer(esums), .i32(Int32(c)), .buffer(egm), .buffer(egv)]), "")
        XCTAssertEqual(launch("radar_inverse_std", grid: 1, block: 32, [.buffer(ev), .f32(1e-5), .buffer(ei), .i32(Int32(c))]), "")
        same(esums, csums, "local sums"); same(egm, gm, "global mean"); same(egv, gv, "global variance"); same(ei, ci, "inverse std")
        let xv = randomValues(2 * c * 10, seed: 64), start = randomValues(c, seed: 65)
        let cx = cpuTensor(xv, Shape(2, c, 2, 5)), cdst = cpuTensor(start, Shape(c))
        cpu.accumulateChannelSums(cx.tensor, into: cdst.tensor)
        // Channel sums (convolution bias gradients): planes summed in double on the device, the
        // CPU sums in float, so close rather than equal.
        let edst = buf.make(start), partial = UnsafeMutablePointer<Double>.allocate(capacity: 2 * c)
        defer { partial.deallocate() }
        XCTAssertEqual(launch("radar_plane_sums", grid: 2 * c, block: 8, [.buffer(buf.make(xv)), .doubles(partial), .i32(10)]), "")
        XCTAssertEqual(launch("radar_sum_planes_over_batch", grid: 1, block: 32,
                              [.doubles(partial), .i32(2), .i32(Int32(c)), .i32(1), .i32(0), .buffer(edst), .i32(1)]), "")
        assertClose(array(edst, c), cdst.values, rtol: 1e-6, atol: 1e-6, "accumulated channel sums")
    }

    /// The reductions behind every bias, LayerNorm and BatchNorm gradient and BatchNorm's batch
    /// statistics, at the full config's shapes: the launch that reads the input must spread it
    /// over at least an H200's 132 SMs with no thread walking more than 64 rows (a first version
    /// gave a 384-column bias gradient 6 blocks of threads walking 6304 rows each, and BatchNorm
    /// one block per channel); and every launch keeps at least a thread per output. Values
    /// against the CPU backend.
    func testReductionsSpreadOverTheWholeGPU() {
        let device = EmulatedDevice(memory: 1 << 28)
        let gpu = CUDABackend(driver: device)
        func audit(_ what: String, elements: Int, outputs: Int, _ run: () -> Void) {
            device.launchLog = []
            run()
            let log = device.launchLog ?? []
            device.launchLog = nil
            guard let first = log.first else { return XCTFail("\(what): no launch") }
            XCTAssertGreaterThanOrEqual(first.grid, 132, "\(what): \(first.kernel) reads \(elements) values with \(first.grid) blocks")
            XCTAssertGreaterThanOrEqual(first.threads * 64, elements, "\(what): \(first.kernel) has \(first.threads) threads for \(elements) values")
            for l in log { XCTAssertGreaterThanOrEqual(l.threads, outputs, "\(what): \(l.kernel) has \(l.threads) threads for \(outputs) outputs") }
            XCTAssertLessThanOrEqual(log.count, 3, "\(what): \(log.map(\.kernel))")
        }
        func pair(_ shape: Shape, seed: UInt64, mean: Float = 0) -> (DeviceTensor, DeviceTensor) {
            let v = randomValues(shape.count, seed: seed, mean: mean)
            return (DeviceTensor(cpu, shape, v), DeviceTensor(gpu, shape, v))
        }
        // A bias gradient: ViT-S tokens at batch 32 (6304 rows, 384 columns), accumulated.
        let (cs, gs) = pair(Shape(6304, 384), seed: 71), (cd, gd) = pair(Shape(384), seed: 72)
        cpu.accumulateColumnSums(cs.tensor, into: cd.tensor)
        audit("column sums", elements: 6304 * 384, outputs: 384) { gpu.accumulateColumnSums(gs.tensor, into: gd.tensor) }
        assertClose(gpu.download(gd.tensor), cd.values, rtol: 1e-4, atol: 2e-4, "column sums")
        // LayerNorm's parameter gradients at batch 8 (1576 rows).
        let (rows, cols) = (1576, 384)
        let (cx, gx) = pair(Shape(rows, cols), seed: 73), (cdy, gdy) = pair(Shape(rows, cols), seed: 74), (cg, gg) = pair(Shape(cols), seed: 75)
        let (cm, gm) = pair(Shape(rows), seed: 76), rstd = randomValues(rows, seed: 77).map { 0.5 + abs($0) }
        let cr = DeviceTensor(cpu, Shape(rows), rstd), gr = DeviceTensor(gpu, Shape(rows), rstd)
        let cdx = DeviceTensor(cpu, Shape(rows, cols)), gdx = DeviceTensor(gpu, Shape(rows, cols))
        let cgrads = (DeviceTensor(cpu, Shape(cols)), DeviceTensor(cpu, Shape(cols))), ggrads = (DeviceTensor(gpu, Shape(cols)), DeviceTensor(gpu, Shape(cols)))
        cpu.layerNormBackward(cdy.tensor, x: cx.tensor, gamma: cg.tensor, mean: cm.tensor, rstd: cr.tensor, cdx.tensor,
                              dGamma: cgrads.0.tensor, dBeta: cgrads.1.tensor)
        gpu.layerNormBackward(gdy.tensor, x: gx.tensor, gamma: gg.tensor, mean: gm.tensor, rstd: gr.tensor, gdx.tensor,
                              dGamma: ggrads.0.tensor, dBeta: ggrads.1.tensor)
        assertClose(gpu.download(ggrads.0.tensor), cgrads.0.values, rtol: 1e-4, atol: 2e-4, "layernorm dgamma")
        assertClose(gpu.download(ggrads.1.tensor), cgrads.1.values, rtol: 1e-4, atol: 2e-4, "layernorm dbeta")
        // The parameter gradients' launches alone (the input gradient is one warp per row).
        device.launchLog = []
        gpu.layerNormBackward(gdy.tensor, x: gx.tensor, gamma: gg.tensor, mean: gm.tensor, rstd: gr.tensor, gdx.tensor,
                              dGamma: ggrads.0.tensor, dBeta: ggrads.1.tensor)
        let lnLaunches = Array((device.launchLog ?? []).dropFirst())
        device.launchLog = nil
        XCTAssertEqual(lnLaunches.first?.kernel, "radar_layernorm_param_partials")
        XCTAssertGreaterThanOrEqual(lnLaunches.first?.grid ?? 0, 132, "layernorm parameter gradients: \(lnLaunches)")
        // BatchNorm and convolution-bias reductions: BADM's first convolution at batch 8.
        let shape = Shape(8, 32, 56, 56), n = shape.count
        let (cbx, gbx) = pair(shape, seed: 78, mean: 0.7), (cbdy, gbdy) = pair(shape, seed: 79)
        let c4 = { (b: any Backend) in (DeviceTensor(b, Shape(32)), DeviceTensor(b, Shape(32))) }
        let (cmv, gmv) = (c4(cpu), c4(gpu))
        cpu.channelMoments(cbx.tensor, mean: cmv.0.tensor, variance: cmv.1.tensor)
        audit("channel moments", elements: n, outputs: 32) { gpu.channelMoments(gbx.tensor, mean: gmv.0.tensor, variance: gmv.1.tensor) }
        assertClose(gpu.download(gmv.0.tensor), cmv.0.values, rtol: 1e-6, atol: 1e-7, "channel mean")
        assertClose(gpu.download(gmv.1.tensor), cmv.1.values, rtol: 1e-6, atol: 1e-7, "channel variance")
        let inv = cmv.1.values.map { 1 / ($0 + 1e-5).squareRoot() }
        let ci = DeviceTensor(cpu, Shape(32), inv), gi = DeviceTensor(gpu, Shape(32), inv)
        let (csums, gsums) = (c4(cpu), c4(gpu))
        cpu.channelGradientSums(cbdy.tensor, x: cbx.tensor, mean: cmv.0.tensor, invStd: ci.tensor, sumDy: csums.0.tensor, sumDyXhat: csums.1.tensor)
        audit("channel gradient sums", elements: n, outputs: 32) {
            gpu.channelGradientSums(gbdy.tensor, x: gbx.tensor, mean: gmv.0.tensor, invStd: gi.tensor, sumDy: gsums.0.tensor, sumDyXhat: gsums.1.tensor)
        }
        assertClose(gpu.download(gsums.0.tensor), csums.0.values, rtol: 1e-5, atol: 1e-4, "sum dy")
        assertClose(gpu.download(gsums.1.tensor), csums.1.values, rtol: 1e-5, atol: 1e-4, "sum dy xhat")
        let (cbias, gbias) = pair(Shape(32), seed: 80)
        cpu.accumulateChannelSums(cbdy.tensor, into: cbias.tensor)
        audit("channel sums", elements: n, outputs: 32) { gpu.accumulateChannelSums(gbdy.tensor, into: gbias.tensor) }
        assertClose(gpu.download(gbias.tensor), cbias.values, rtol: 1e-6, atol: 1e-6, "channel sums")
    }

    func testTheEmulatorCatchesBarrierBugs() {
        let buf = Buffers()
        let x = buf.zeros(64)
        // Threads waiting at two different __syncthreads: a deadlock, reported, not hung.
        let e = launch("radar_selftest_divergent_barrier", grid: 1, block: 32, [.buffer(x)])
        XCTAssertTrue(e.hasPrefix("deadlock in block (0, 0, 0)") && e.contains("__syncthreads line"), e)
        // A barrier after thread 0 returned: accepted, except in strict mode.
        XCTAssertEqual(launch("radar_selftest_early_return", grid: 2, block: 32, [.buffer(x)]), "")
        radar_emu_set_strict(1)
        let strict = launch("radar_selftest_early_return", grid: 2, block: 32, [.buffer(x)])
        radar_emu_set_strict(0)
        XCTAssertTrue(strict.contains("reached after 1 of 32 threads returned"), strict)
        // A missing barrier shows when the thread order is reversed; with the barrier it does not.
        var tag: Int32 = 0
        func neighbour(_ barrier: Int32, reversed: Bool) -> [Float] {
            let out = buf.zeros(64)
            radar_emu_set_reverse_order(reversed ? 1 : 0)
            defer { radar_emu_set_reverse_order(0) }
            tag += 1
            XCTAssertEqual(launch("radar_selftest_neighbour", grid: 1, block: 64, [.buffer(out), .i32(barrier), .i32(tag)]), "")
            let expected = (0..<64).map { Float(($0 + 1) % 64) + 1000 * Float(tag) }
            return zip(array(out, 64), expected).map { $0 - $1 }  // 0 where the thread saw this launch's value
        }
        let zeros = [Float](repeating: 0, count: 64)
        XCTAssertEqual(neighbour(1, reversed: false), zeros)
        XCTAssertEqual(neighbour(1, reversed: true), zeros)
        // Without it, index order reads 63 stale values and reversed order one (thread 63 reads
        // s[0] before thread 0 writes it): the two orders disagree.
        let forward = neighbour(0, reversed: false), backward = neighbour(0, reversed: true)
        XCTAssertEqual(forward.filter { $0 != 0 }.count, 63, "a missing __syncthreads must change the output")
        XCTAssertEqual(backward.filter { $0 != 0 }.count, 1)
        // Warp shuffles: every lane ends with the sum of its warp.
        let v = buf.make((0..<64).map(Float.init)), sums = buf.zeros(64)
        XCTAssertEqual(launch("radar_selftest_warp_sum", grid: 1, block: 64, [.buffer(v), .buffer(sums)]), "")
        XCTAssertEqual(array(sums, 64), (0..<64).map { $0 < 32 ? 496 : 1520 })
    }

    /// A vector load off its alignment faults on a GPU (CUDA_ERROR_MISALIGNED_ADDRESS), never on
    /// x86; the emulator is built with alignment checks and fails such a launch naming the access,
    /// the thread and the source line. Aligned, the same kernel runs and reads the right words.
    func testTheEmulatorFailsMisalignedAccessesAsAGPUWould() {
        let raw = UnsafeMutableRawPointer.allocate(byteCount: 2 * 4096, alignment: 256)
        defer { raw.deallocate() }
        let x = raw.bindMemory(to: Float.self, capacity: 2048), out = x + 1024
        for i in 0..<1024 { x[i] = Float(i) }
        func copy(_ load: Int32, _ store: Int32) -> String {
            launch("radar_selftest_vector_copy", grid: 1, block: 64, [.buffer(x), .buffer(out), .i32(load), .i32(store)])
        }
        XCTAssertEqual(copy(8, 4), "")
        XCTAssertEqual(Array(UnsafeBufferPointer(start: out + 4, count: 256)), (0..<256).map { Float(8 + $0) })
        for offset: Int32 in [1, 2, 3] {
            let e = copy(offset, 0)
            XCTAssertTrue(e.hasPrefix("misaligned address"), "load offset \(offset): \(e)")
            XCTAssertTrue(e.contains("'const uint4' at 0x") && e.contains("needs 16-byte alignment"), e)
            XCTAssertTrue(e.contains("by thread (0, 0, 0) of block (0, 0, 0)"), "the first thread that ran: \(e)")
            XCTAssertTrue(e.contains("(selftest/emulator_selftest.cuh:"), "names the source line: \(e)")
            let s = copy(0, offset)
            XCTAssertTrue(s.hasPrefix("misaligned address") && s.contains("'uint4' at 0x"), "store offset \(offset): \(s)")
        }
        // The next launch starts clean.
        XCTAssertEqual(copy(0, 0), "")
    }

    /// cp.async (the fast attention build's staging): a copy lands by the issuing thread's wait;
    /// under the forward schedule exactly there, so a tile read before its wait is stale (as it may
    /// be on a GPU), under reversed at once (a request made while others still read the tile
    /// overwrites it); a copy never waited for, or a misaligned one, fails the launch.
    func testTheEmulatorModelsCpAsyncCopiesLandingByTheWait() {
        let raw = UnsafeMutableRawPointer.allocate(byteCount: 2 * 4096, alignment: 256)
        defer { raw.deallocate() }
        let x = raw.bindMemory(to: Float.self, capacity: 2048), out = x + 1024
        for i in 0..<1024 { x[i] = Float(i) }
        defer { _ = radar_emu_set_schedule_text("forward") }
        func run(_ wait: Int32, _ schedule: String, offset: Int32 = 0) -> (String, [Float]) {
            XCTAssertEqual(radar_emu_set_schedule_text(schedule), 0)
            for i in 0..<256 { out[i] = 0 }
            let e = launch("radar_selftest_cp_async", grid: 1, block: 64, [.buffer(x), .buffer(out), .i32(wait), .i32(offset)])
            return (e, Array(UnsafeBufferPointer(start: out, count: 256)))
        }
        let neighbours = (0..<256).map { Float(($0 + 4) % 256) }
        let stale = [Float](repeating: Float(bitPattern: ~0), count: 256).map(\.bitPattern)
        for schedule in ["forward", "reversed", "shuffled:2"] {
            let (e, got) = run(1, schedule)
            XCTAssertEqual(e, "", schedule)
            XCTAssertEqual(got, neighbours, "waited, then a barrier: every thread sees its neighbour's copy (\(schedule))")
        }
        let (early, staleRead) = run(0, "forward")
        XCTAssertEqual(early, "")
        // Read before the wait: what the tile held, but for thread 63, which runs after thread 0
        // has waited (its copy landed in tile[0]).
        XCTAssertEqual(staleRead.map(\.bitPattern), Array(stale[0..<252]) + [0, 1, 2, 3].map { Float($0).bitPattern }, "read before the wait")
        let (atOnce, landed) = run(0, "reversed")
        XCTAssertEqual(atOnce, "")
        XCTAssertEqual(landed, neighbours, "landed at the request")
        let (never, _) = run(2, "forward")
        XCTAssertTrue(never.contains("returned with 1 cp.async copies it never waited for"), never)
        let (misaligned, _) = run(1, "forward", offset: 1)
        XCTAssertTrue(misaligned.hasPrefix("misaligned address") && misaligned.contains("cp.async of 16 bytes"), misaligned)
        XCTAssertEqual(run(1, "forward").0, "", "the next launch starts clean")
    }

    /// Warps run apart as far as a GPU lets them: a warp released from an exchange runs on to the
    /// next block barrier before another passes its own exchange. So a read of another warp's
    /// cp.async copy after the reader's own wait but with no barrier after everyone's (the bug
    /// of a fast attention kernel with its middle barrier removed, which a lockstep schedule hid:
    /// every warp had waited by the time any went past its next exchange) reads the tile as it
    /// was; with the barrier every schedule reads the copies.
    func testWarpsDriftApartSoAReadOfAnotherWarpsCopyNeedsABarrier() {
        let raw = UnsafeMutableRawPointer.allocate(byteCount: 3 * 1024, alignment: 256)
        defer { raw.deallocate() }
        let x = raw.bindMemory(to: Float.self, capacity: 768), out = x + 256, exchanged = x + 512
        for i in 0..<256 { x[i] = Float(i) }
        defer { _ = radar_emu_set_schedule_text("forward") }
        func run(barrier: Bool, _ schedule: String) -> [Float] {
            XCTAssertEqual(radar_emu_set_schedule_text(schedule), 0)
            for i in 0..<256 { out[i] = 0 }
            for i in 0..<64 { exchanged[i] = -1 }
            let e = launch("radar_selftest_warp_drift", grid: 1, block: 64, [.buffer(x), .buffer(out), .buffer(exchanged), .i32(barrier ? 1 : 0)])
            XCTAssertEqual(e, "", schedule)
            XCTAssertEqual(Array(UnsafeBufferPointer(start: exchanged, count: 64)), (0..<64).map(Float.init), "the exchanges (\(schedule))")
            return Array(UnsafeBufferPointer(start: out, count: 256))
        }
        let otherHalf = (0..<256).map { Float(($0 + 128) % 256) }
        for schedule in ["forward", "reversed", "shuffled:3"] {
            XCTAssertEqual(run(barrier: true, schedule), otherHalf, "a barrier after the waits (\(schedule))")
        }
        // Forward: warp 0 runs ahead and reads warp 1's half before warp 1 has waited (stale,
        // all-ones bits); warp 1 then reads warp 0's half, long landed.
        let raced = run(barrier: false, "forward").map(\.bitPattern)
        XCTAssertEqual(raced, [UInt32](repeating: ~0, count: 128) + otherHalf[128...].map(\.bitPattern), "no barrier: warp 0 reads ahead of warp 1's wait")
    }

    /// Past 256 threads a block, a kernel launches only up to its `__launch_bounds__` (what ptxas
    /// fitted its registers to); the emulated device refuses a larger block, as a GPU may.
    func testBlocksLargerThanAKernelsLaunchBoundsAreRefused() {
        let buf = Buffers()
        let x = buf.zeros(2048), out = buf.zeros(2048)
        let e = launch("radar_selftest_vector_copy", grid: 1, block: 288, [.buffer(x), .buffer(out), .i32(0), .i32(0)])
        XCTAssertTrue(e.hasPrefix("a block of 288 threads is more than this kernel's limit of 256 (it declares no __launch_bounds__"), e)
        XCTAssertEqual(launch("radar_selftest_vector_copy", grid: 1, block: 256, [.buffer(x), .buffer(out), .i32(0), .i32(0)]), "")
        let v = buf.make((0..<1024).map { Float($0 % 7) }), sums = buf.zeros(1024)
        XCTAssertEqual(launch("radar_selftest_warp_sum", grid: 1, block: 1024, [.buffer(v), .buffer(sums)]), "", "declares 1024")
        XCTAssertEqual(sums[1023], Float((992..<1024).map { $0 % 7 }.reduce(0, +)))
        let big = launch("radar_selftest_warp_sum", grid: 1, block: 1056, [.buffer(v), .buffer(sums)])
        XCTAssertTrue(big.hasPrefix("a block of 1056 threads is more than this kernel's limit of 1024 (its __launch_bounds__)"), big)
        // The parser the compile gate and this test share finds both.
        let selftest = KernelFamily(name: "t", source: """
            extern "C" __global__ void a(float* x) { }
            extern "C" __global__ void __launch_bounds__(512) b(float* x) { }
            extern "C" __global__ void __launch_bounds__(128, 3) c(float* x) { }
            """)
        XCTAssertEqual(selftest.kernels.map(\.name), ["a", "b", "c"])
        XCTAssertEqual(selftest.kernels.map(\.blockLimit), [256, 512, 128])
    }

    /// The schedules (`RADAR_EMULATED_SCHEDULE`): a block reading another block's output (a race
    /// on a GPU, where blocks run in no promised order) and a missing `__syncthreads` give
    /// index-order results only under `forward`; with the barrier every schedule agrees.
    func testSchedulesExposeRacesBetweenBlocksAndBetweenThreads() {
        defer { _ = radar_emu_set_schedule_text("forward") }
        let buf = Buffers()
        func chain(_ schedule: String) -> [Float] {
            XCTAssertEqual(radar_emu_set_schedule_text(schedule), 0, schedule)
            let x = buf.zeros(16)
            XCTAssertEqual(launch("radar_selftest_block_chain", grid: 16, block: 32, [.buffer(x)]), "")
            return array(x, 16)
        }
        XCTAssertEqual(chain("forward"), (1...16).map(Float.init))
        XCTAssertEqual(chain("reversed"), [Float](repeating: 1, count: 16), "blocks last to first: each reads a 0")
        let shuffled = chain("shuffled:5")
        XCTAssertNotEqual(shuffled, (1...16).map(Float.init), "a shuffled block order must break the chain")
        XCTAssertEqual(chain("shuffled:5"), shuffled, "a seed gives one schedule")
        XCTAssertNotEqual(chain("shuffled:6"), shuffled, "another seed, another block order")
        var tag: Int32 = 100
        func neighbour(_ barrier: Int32, _ schedule: String) -> Int {
            XCTAssertEqual(radar_emu_set_schedule_text(schedule), 0, schedule)
            let out = buf.zeros(64)
            tag += 1
            XCTAssertEqual(launch("radar_selftest_neighbour", grid: 1, block: 64, [.buffer(out), .i32(barrier), .i32(tag)]), "")
            return zip(array(out, 64), (0..<64).map { Float(($0 + 1) % 64) + 1000 * Float(tag) }).filter { $0 != $1 }.count
        }
        for schedule in ["forward", "reversed", "shuffled", "shuffled:9"] { XCTAssertEqual(neighbour(1, schedule), 0, schedule) }
        let stale = neighbour(0, "shuffled:9")
        XCTAssertTrue(stale > 0 && stale < 64, "a shuffled thread order without the barrier: \(stale) stale reads")
        for bad in ["shuffle", "shuffled:", "shuffled:-1", "shuffled:x", "Forward", ""] {
            XCTAssertEqual(radar_emu_set_schedule_text(bad), -1, "'\(bad)' must be refused")
        }
    }

    func testEveryShippedKernelHasAnEmulatedLauncherAndTheSourcesAreInSync() throws {
        var emulated = Set<String>()
        var p = radar_emu_kernel_names()!
        while let name = p.pointee { emulated.insert(String(cString: name)); p += 1 }
        let kernelsDir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Sources/CCUDAEmulator/kernels")
        for family in KernelSources.all {
            // The NVRTC source is common.h then the .cuh file, byte for byte (tools/codegen/cuda_kernels.py).
            let common = try String(contentsOf: kernelsDir.appendingPathComponent("common.h"), encoding: .utf8)
            let file = try String(contentsOf: kernelsDir.appendingPathComponent("\(family.name).cuh"), encoding: .utf8)
            XCTAssertEqual(family.source, (common + "\n" + file).trimmingCharacters(in: .newlines), "\(family.name): run tools/codegen/cuda_kernels.py")
            XCTAssertEqual(family.kernels.count, family.source.components(separatedBy: "__global__").count - 1, "\(family.name): a kernel the parser missed")
            for name in family.kernels.map(\.name) {
                XCTAssertTrue(emulated.contains(name), "\(name) has no emulated launcher")
            }
        }
    }
}
