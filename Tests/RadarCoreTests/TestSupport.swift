import Foundation
import RadarCore
import XCTest

/// The device every suite runs on: `RADAR_TEST_BACKEND` (cpu, cpu-fenced), cpu by default. The
/// fenced backend keeps tensor memory inaccessible outside backend calls, so a suite that passes
/// on it reaches tensor memory only through the backend.
let testDeviceName = ProcessInfo.processInfo.environment["RADAR_TEST_BACKEND"] ?? "cpu"

/// A backend of the test device with `threads` compute threads.
func testBackend(threads: Int = 1) -> any Backend {
    do { return try Devices.backend(testDeviceName, threads: threads) } catch { fatalError("RADAR_TEST_BACKEND: \(error)") }
}

/// The backend test helpers upload and download through (memory of every backend of the test
/// device is reachable through it: host memory, or the process-wide fence).
let sharedTestBackend = testBackend()

/// A context over a fresh store for the given layout, on the test device.
func makeContext(_ layout: ParameterLayout, threads: Int = 1, training: Bool = true, seed: UInt64 = 7)
    -> ExecutionContext
{
    ExecutionContext(backend: testBackend(threads: threads), layout: layout, training: training, seed: seed)
}

/// A device tensor holding `values` (tests' inputs and constants).
func testTensor(_ shape: Shape, _ values: [Float]) -> DeviceTensor { DeviceTensor(sharedTestBackend, shape, values) }
func testTensor(_ shape: Shape, fill: Float = 0) -> DeviceTensor {
    DeviceTensor(sharedTestBackend, shape, [Float](repeating: fill, count: shape.count))
}

/// Explicit host access for tests, through the backend (downloads and uploads).
extension Tensor {
    func toArray() -> [Float] { sharedTestBackend.download(self) }
    func fill(_ v: Float) { sharedTestBackend.fill(self, v) }
    func copy(from values: [Float]) { sharedTestBackend.upload(values, into: self) }
    /// One element (tests only: a download each).
    subscript(i: Int) -> Float {
        get { sharedTestBackend.download(slice(from: i, Shape(1)))[0] }
        nonmutating set { sharedTestBackend.upload([newValue], into: slice(from: i, Shape(1))) }
    }
}

/// Deterministic normal values.
func randomValues(_ count: Int, seed: UInt64, std: Float = 1, mean: Float = 0) -> [Float] {
    let s = RandomStream(seed: seed, stream: 99)
    return (0..<count).map { mean + std * s.normal(UInt64($0)) }
}

func randomHost(_ shape: Shape, seed: UInt64, std: Float = 1) -> DeviceTensor {
    testTensor(shape, randomValues(shape.count, seed: seed, std: std))
}

/// Fills every parameter of the store with N(0, std) (seeded), and BatchNorm-like buffers sensibly.
func randomizeParameters(_ store: ParameterStore, seed: UInt64, std: Float = 0.5) {
    store.uploadValues(randomValues(store.parameterCount, seed: seed, std: std))
    for slot in store.layout.bufferSlots {
        store.buffer(slot).fill(slot.name.hasSuffix("running_var") ? 1.3 : 0.1)
    }
}

let fixturesDirectory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures")

/// Max absolute and relative difference; fails with the numbers when a value is outside
/// |a - e| <= atol + rtol |e|.
@discardableResult
func assertClose(_ actual: [Float], _ expected: [Float], rtol: Float, atol: Float, _ label: String,
                 file: StaticString = #filePath, line: UInt = #line) -> (abs: Float, rel: Float) {
    guard actual.count == expected.count else {
        XCTFail("\(label): \(actual.count) values, expected \(expected.count)", file: file, line: line)
        return (.infinity, .infinity)
    }
    var maxAbs: Float = 0, maxRel: Float = 0, worst = -1
    for i in 0..<actual.count {
        let d = abs(actual[i] - expected[i])
        let r = d / max(abs(expected[i]), 1e-12)
        if !(d <= atol + rtol * abs(expected[i])) && worst < 0 { worst = i }
        if d.isNaN { worst = i }
        maxAbs = max(maxAbs, d)
        maxRel = max(maxRel, min(r, d))
    }
    if worst >= 0 {
        XCTFail("\(label): index \(worst) got \(actual[worst]), expected \(expected[worst]); max abs \(maxAbs) (rtol \(rtol), atol \(atol))",
                file: file, line: line)
    }
    return (maxAbs, maxRel)
}

func assertBitIdentical(_ a: [Float], _ b: [Float], _ label: String, file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(a.count, b.count, label, file: file, line: line)
    for i in 0..<min(a.count, b.count) where a[i].bitPattern != b[i].bitPattern {
        XCTFail("\(label): first difference at \(i): \(a[i]) vs \(b[i])", file: file, line: line)
        return
    }
}

/// Central finite differences against the analytic gradients of a layer.
///
/// The scalar checked is L = sum_i w_i y_i with fixed random w, accumulated in Double. Each input
/// and each parameter gets up to `samples` elements perturbed by +-eps. Float32 forward passes
/// limit the achievable agreement, hence the tolerance |fd - analytic| <= atol + rtol |analytic|.
struct GradientCheck {
    var eps: Float = 1e-2
    var atol: Float = 3e-3
    var rtol: Float = 3e-2
    var samples = 24

    typealias Pass = (ExecutionContext, [Tensor]) throws -> (Tensor, (Tensor) -> [Tensor?])

    func run(_ label: String, _ ctx: ExecutionContext, inputs: [DeviceTensor], _ pass: Pass,
             file: StaticString = #filePath, line: UInt = #line) throws {
        let store = ctx.params
        ctx.beginPass()
        let (y, back) = try pass(ctx, inputs.map(\.tensor))
        let w = randomValues(y.count, seed: 4242)
        store.zeroGrads()
        let dy = ctx.tensor(y.shape)
        dy.copy(from: w)
        let inputGrads = back(dy).map { $0?.toArray() }
        let paramGrads = store.downloadGrads()

        func loss() throws -> Double {
            ctx.beginPass()
            let out = try pass(ctx, inputs.map(\.tensor)).0.toArray()
            var s: Double = 0
            for i in 0..<out.count { s += Double(w[i]) * Double(out[i]) }
            return s
        }
        func probe(_ t: Tensor, _ i: Int) throws -> Float {
            let orig = t[i]
            t[i] = orig + eps
            let lp = try loss()
            t[i] = orig - eps
            let lm = try loss()
            t[i] = orig
            return Float((lp - lm) / Double(2 * eps))
        }
        func indices(_ n: Int, salt: UInt64) -> [Int] {
            if n <= samples { return Array(0..<n) }
            let s = RandomStream(seed: salt, stream: 5)
            return (0..<samples).map { Int(s.bits(UInt64($0)) % UInt32(n)) }
        }
        var checked = 0
        func compare(_ fd: Float, _ an: Float, _ what: String) {
            checked += 1
            if !(abs(fd - an) <= atol + rtol * abs(an)) {
                XCTFail("\(label): \(what): finite difference \(fd) vs analytic \(an) (atol \(atol), rtol \(rtol))",
                        file: file, line: line)
            }
        }
        for (k, input) in inputs.enumerated() {
            guard k < inputGrads.count, let g = inputGrads[k] else { continue }
            for i in indices(input.shape.count, salt: UInt64(k)) {
                compare(try probe(input.tensor, i), g[i], "input \(k)[\(i)]")
            }
        }
        for slot in store.layout.parameters {
            for i in indices(slot.count, salt: UInt64(slot.offset)) {
                compare(try probe(store.values, slot.offset + i), paramGrads[slot.offset + i],
                        "\(slot.name)[\(i)]")
            }
        }
        XCTAssertGreaterThan(checked, 0, "\(label): nothing was checked", file: file, line: line)
    }
}
