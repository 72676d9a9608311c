import CCUDAEmulator
import Foundation
import RadarCUDA
import RadarCore
import XCTest

/// The CUDA kernels have no atomics and promise bit-identical results run to run; on a GPU that
/// holds only if no output depends on the order blocks and threads run in, which a GPU never
/// promises. The emulator can run them in index order, reversed, or shuffled (seeded): every
/// kernel and a whole training step (forward, backward, AdamW) must give the same bits under each.
final class EmulatorScheduleTests: XCTestCase {
    let schedules = ["reversed", "shuffled:1", "shuffled:2"]

    override func tearDown() { _ = radar_emu_set_schedule_text("forward") }

    func testEveryKernelGivesTheSameResultUnderEverySchedule() {
        func check(_ schedule: String) -> [String: Double] {
            XCTAssertEqual(radar_emu_set_schedule_text(schedule), 0)
            let results = KernelCheck.run(on: CUDABackend(driver: EmulatedDevice(memory: 1 << 28), precision: .fp32))
            XCTAssertEqual(results.count, KernelCheck.kernelNames.count)
            for r in results { XCTAssertTrue(r.passed, "\(schedule): \(r.kernel): \(r.detail)") }
            return Dictionary(uniqueKeysWithValues: results.map { ($0.kernel, $0.maxAbsError) })
        }
        let forward = check("forward")
        for schedule in schedules {
            let other = check(schedule)
            for (kernel, e) in forward {
                // The same outputs give the same distance from the CPU backend, to the bit.
                XCTAssertTrue(other[kernel].map { $0.bitPattern == e.bitPattern } ?? false,
                              "\(kernel): max |error| \(e) in index order, \(other[kernel] ?? .nan) \(schedule)")
            }
        }
    }

    /// `radar dump-step`'s tensors (activations, gradients, parameters after two AdamW steps) on the
    /// small two-branch golden case, fp32 and bf16: bit-identical under every schedule.
    func testATrainingStepIsBitIdenticalUnderEverySchedule() throws {
        let root = fixturesDirectory.appendingPathComponent("parity/small_dual")
        let config = try RADARConfig.resolve(root.appendingPathComponent("config.json").path)
        let weights = try SafeTensors.read(root.appendingPathComponent("weights.safetensors").path).tensors
        let batch = try SafeTensors.read(root.appendingPathComponent("batch.safetensors").path).tensors
        for precision in ["fp32", "bf16"] {
            func dump(_ schedule: String) throws -> [String: SafeTensor] {
                XCTAssertEqual(radar_emu_set_schedule_text(schedule), 0)
                return try ParityDump.run(config: config, weights: weights, weightsSource: "weights", batch: batch, batchSource: "batch",
                                          steps: 2, lr: 1e-3, weightDecay: 0.05, device: "cuda-emulated", precision: precision)
            }
            let forward = try dump("forward")
            XCTAssertGreaterThan(forward.count, 200)
            for schedule in ["reversed", "shuffled:1"] {
                let other = try dump(schedule)
                XCTAssertEqual(Set(other.keys), Set(forward.keys))
                func bits(_ t: SafeTensor?) -> [UInt32] { t.map { $0.floats.map(\.bitPattern) + $0.ints.map { UInt32(truncatingIfNeeded: $0) } } ?? [] }
                let differing = forward.keys.sorted().filter { bits(other[$0]) != bits(forward[$0]) }
                XCTAssertEqual(differing, [], "\(precision) \(schedule): tensors that differ from index order")
            }
        }
    }
}
