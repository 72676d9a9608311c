import CCUDAEmulator
import Foundation
import RadarCUDA
import RadarCore
import XCTest

/// The CUDA kernels run on the emulated device (the same sources compiled as host C++, each
/// block's threads as fibers) against the CPU backend, on odd shapes; and the emulator catches
/// kernel bugs: deadlocks, strict-mode barrier misuse, and missing barriers (reversed thread order).
final class EmulatedDeviceTests: XCTestCase {
    /// A kernel argument, as cuLaunchKernel takes them (a pointer to each value).
    enum Arg {
        case buffer(UnsafeMutablePointer<Float>)
        case doubles(UnsafeMutablePointer<Double>)
        case i64(Int)
        case i32(Int32)
        case f32(Float)
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
                                  [.buffer(ex), .buffer(eg), .buffer(eb), .f32(1e-6), .buffer(ey), .buffer(em), .buffer(er), .i32(Int32(rows)), .i32(Int32(cols))]), "")
            assertClose(array(ey, rows * cols), cy.values, rtol: 1e-5, atol: 1e-5, "layernorm y \(rows)x\(cols)")
            assertClose(array(em, rows), cm.values, rtol: 1e-5, atol: 1e-6, "layernorm mean")
            assertClose(array(er, rows), cr.values, rtol: 1e-5, atol: 1e-6, "layernorm rstd")
            let edy = buf.make(dy), edx = buf.zeros(rows * cols), edg = buf.zeros(cols), edb = buf.zeros(cols)
            XCTAssertEqual(launch("radar_layernorm_backward_input", grid: grid, block: 64,
                                  [.buffer(edy), .buffer(ex), .buffer(eg), .buffer(em), .buffer(er), .buffer(edx), .i32(Int32(rows)), .i32(Int32(cols))]), "")
            XCTAssertEqual(launch("radar_layernorm_param_grads", grid: (cols + 31) / 32, block: 32,
                                  [.buffer(edy), .buffer(ex), .buffer(em), .buffer(er), .buffer(edg), .buffer(edb), .i32(Int32(rows)), .i32(Int32(cols))]), "")
            assertClose(array(edx, rows * cols), cdx.values, rtol: 1e-4, atol: 1e-5, "layernorm dx")
            assertClose(array(edg, cols), cdg.values, rtol: 1e-4, atol: 1e-5, "layernorm dgamma")
            assertClose(array(edb, cols), cdb.values, rtol: 1e-5, atol: 1e-5, "layernorm dbeta")
            // Softmax forward and backward.
            let cs = DeviceTensor(cpu, Shape(rows, cols)), cds = DeviceTensor(cpu, Shape(rows, cols))
            cpu.softmaxForward(cx.tensor, cs.tensor, cols: cols)
            cpu.softmaxBackward(cdy.tensor, y: cs.tensor, cds.tensor, cols: cols)
            let es = buf.zeros(rows * cols), eds = buf.zeros(rows * cols)
            XCTAssertEqual(launch("radar_softmax_forward", grid: grid, block: 64, [.buffer(ex), .buffer(es), .i32(Int32(rows)), .i32(Int32(cols))]), "")
            XCTAssertEqual(launch("radar_softmax_backward", grid: grid, block: 64,
                                  [.buffer(edy), .buffer(es), .buffer(eds), .i32(Int32(rows)), .i32(Int32(cols))]), "")
            assertClose(array(es, rows * cols), cs.values, rtol: 1e-5, atol: 1e-7, "softmax")
            assertClose(array(eds, rows * cols), cds.values, rtol: 1e-4, atol: 1e-6, "softmax backward")
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
        // The non-finite flag.
        let flag = buf.zeros(1)
        XCTAssertEqual(launch("radar_flag_non_finite", grid: 2, block: 64, [.buffer(ex), .i64(n), .buffer(flag)]), "")
        XCTAssertEqual(flag[0], 0)
        ex[11] = .infinity
        XCTAssertEqual(launch("radar_flag_non_finite", grid: 2, block: 64, [.buffer(ex), .i64(n), .buffer(flag)]), "")
        XCTAssertEqual(flag[0], 1)
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

    func testEveryShippedKernelHasAnEmulatedLauncherAndTheSourcesAreInSync() throws {
        var emulated = Set<String>()
        var p = radar_emu_kernel_names()!
        while let name = p.pointee { emulated.insert(String(cString: name)); p += 1 }
        let kernelsDir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Sources/CCUDAEmulator/kernels")
        for family in KernelSources.all {
            // The NVRTC source is the .cuh file, byte for byte (tools/codegen/cuda_kernels.py).
            let file = try String(contentsOf: kernelsDir.appendingPathComponent("\(family.name).cuh"), encoding: .utf8)
            XCTAssertEqual(family.source, file.trimmingCharacters(in: .newlines), "\(family.name): run tools/codegen/cuda_kernels.py")
            for name in family.source.components(separatedBy: "extern \"C\" __global__ void ").dropFirst().map({ String($0.prefix { $0 != "(" }) }) {
                XCTAssertTrue(emulated.contains(name), "\(name) has no emulated launcher")
            }
        }
    }
}
