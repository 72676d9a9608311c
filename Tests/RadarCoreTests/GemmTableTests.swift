import XCTest
import RadarCore
@testable import RadarCUDA
@testable import RadarEngine

/// Pinned cuBLASLt algorithms (`GemmTable`, RADAR_GEMM_TABLE, `radar bench gemm --write-table`) and
/// the parameter layout's alignment that keeps every weight, gradient and bf16 weight view a
/// 16-byte aligned cuBLAS operand. (DriverAPI's side, cublasLtMatmul with the pinned algorithm,
/// runs on the fake driver in FakeDriverTests' GPU-check test.)
final class GemmTableTests: XCTestCase {
    private func temporary(_ name: String) -> String { NSTemporaryDirectory() + "radar-gemm-table-\(getpid())-\(name)" }

    func testTheTableRoundTripsAndBadFilesAreOneLine() throws {
        let algorithm = (0..<64).map { UInt8($0 * 3 & 255) }
        let table = GemmTable(gpu: "NVIDIA H200", entries: ["bf16 TN m 8 n 8 k 8": algorithm, "fp32 NN m 1 n 2 k 3": [UInt8](repeating: 255, count: 64)])
        let path = temporary("good.json")
        defer { unlink(path) }
        XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: try table.data()))
        XCTAssertEqual(try GemmTable.load(path: path), table)

        func refusal(_ text: String) -> String {
            let p = temporary("bad.json")
            defer { unlink(p) }
            XCTAssertTrue(FileManager.default.createFile(atPath: p, contents: Data(text.utf8)))
            do { _ = try GemmTable.load(path: p); return "loaded" } catch { return "\(error)".replacingOccurrences(of: p, with: "T") }
        }
        XCTAssertEqual(refusal("[1, 2]"), "RADAR_GEMM_TABLE=T: not a JSON object (expected {\"gpu\": ..., \"entries\": [...]} as radar bench gemm --write-table writes)")
        XCTAssertEqual(refusal("{\"entries\": []}"), "RADAR_GEMM_TABLE=T: field \"gpu\": expected the GPU's name")
        XCTAssertEqual(refusal("{\"gpu\": \"x\", \"entries\": 3}"), "RADAR_GEMM_TABLE=T: field \"entries\": expected a list of {shape, algorithm}")
        XCTAssertEqual(refusal("{\"gpu\": \"x\", \"entries\": [{\"algorithm\": \"00\"}]}"), "RADAR_GEMM_TABLE=T: entries[0].shape: expected a product's shape")
        XCTAssertEqual(refusal("{\"gpu\": \"x\", \"entries\": [{\"shape\": \"s\", \"algorithm\": \"0g\(String(repeating: "0", count: 126))\"}]}"),
                       "RADAR_GEMM_TABLE=T: entries[0].algorithm: expected 128 hex digits (a cublasLtMatmulAlgo_t)")
        let hex = String(repeating: "ab", count: 64)
        XCTAssertEqual(refusal("{\"gpu\": \"x\", \"entries\": [{\"shape\": \"s\", \"algorithm\": \"\(hex)\"}, {\"shape\": \"s\", \"algorithm\": \"\(hex)\"}]}"),
                       "RADAR_GEMM_TABLE=T: entries[1].shape: s appears twice")
        XCTAssertEqual(refusal("{"), "RADAR_GEMM_TABLE=T: not a JSON object (expected {\"gpu\": ..., \"entries\": [...]} as radar bench gemm --write-table writes)")
        XCTAssertThrowsError(try GemmTable.load(path: temporary("absent.json"))) { error in
            XCTAssertEqual("\(error)", "RADAR_GEMM_TABLE=\(self.temporary("absent.json")): cannot read the file")
        }
    }

    /// A table is for the GPU model it was measured on; unset or empty, none.
    func testATableFromAnotherGPUIsRefused() throws {
        let device = EmulatedDevice(memory: 1 << 24)
        XCTAssertEqual(GemmTable.gpuName(device.deviceDescription), "emulated device")
        XCTAssertEqual(GemmTable.gpuName("cuda:0 (NVIDIA H200, sm_90, 139.8 GiB)"), "NVIDIA H200")
        XCTAssertNil(try Devices.gemmTable(for: device, [:]))
        XCTAssertNil(try Devices.gemmTable(for: device, ["RADAR_GEMM_TABLE": ""]))
        let path = temporary("other.json")
        defer { unlink(path) }
        XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: try GemmTable(gpu: "NVIDIA A40").data()))
        XCTAssertThrowsError(try Devices.gemmTable(for: device, ["RADAR_GEMM_TABLE": path])) { error in
            XCTAssertEqual("\(error)", "RADAR_GEMM_TABLE=\(path): field \"gpu\": measured on NVIDIA A40, this is emulated device (write one here with radar bench gemm --write-table)")
        }
        XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: try GemmTable(gpu: "emulated device", entries: ["k": [UInt8](repeating: 0, count: 64)]).data()))
        XCTAssertEqual(try Devices.gemmTable(for: device, ["RADAR_GEMM_TABLE": path])?.entries.count, 1)
    }

    /// A product's key names its types, sizes, leading dimensions and operand alignment: the same
    /// product at an address aligned otherwise is another entry (the heuristic offers differ).
    func testTheKeyNamesTheAlignment() throws {
        let device = EmulatedDevice(memory: 1 << 24)
        let base = try device.allocate(bytes: 4096)
        defer { device.free(base) }
        func product(_ offset: Int) -> StridedGemm {
            StridedGemm(transA: true, transB: false, m: 8, n: 4, k: 16, alpha: 1, a: base, lda: 16, b: base + 1024, ldb: 16, beta: 0,
                        c: (base + 2048 + offset).assumingMemoryBound(to: Float.self), ldc: 8, operands: .bf16, outputBF16: true)
        }
        XCTAssertEqual(GemmTable.key(product(0)), "bf16->bf16 TN m 8 n 4 k 16 ld 16,16,8 stride 0,0,0 batch 1 align 256,256,256,256")
        XCTAssertEqual(GemmTable.key(product(4)), "bf16->bf16 TN m 8 n 4 k 16 ld 16,16,8 stride 0,0,0 batch 1 align 256,256,4,4")
        XCTAssertEqual(GemmTable.alignment(UnsafeRawPointer(bitPattern: 0x1230)), 16)
    }

    /// A bf16 step's products found by their keys: every product in a table made from a step's
    /// census runs pinned in the next step; a table of other alignments pins none.
    func testATableFromAStepsCensusPinsEveryProductOfTheNext() throws {
        let device = EmulatedDevice(memory: 1 << 30)
        let backend = CUDABackend(driver: device, precision: .bf16)
        let (trainer, images, labels) = try makeTinyTrainer(batch: 2, backend: backend)
        _ = try trainer.step(images: images.tensor, labels: labels.tensor)
        var keys: [String] = []
        backend.gemmCensus = { keys.append(GemmTable.key($0)) }
        _ = try trainer.step(images: images.tensor, labels: labels.tensor)
        backend.gemmCensus = nil
        XCTAssertGreaterThan(keys.count, 20)
        let algorithm = [UInt8](repeating: 0, count: 64)
        device.gemmTable = GemmTable(gpu: "emulated device", entries: Dictionary(keys.map { ($0, algorithm) }) { a, _ in a })
        let (pinned, products) = (device.pinnedProducts, device.queued.products)
        _ = try trainer.step(images: images.tensor, labels: labels.tensor)
        XCTAssertEqual(device.pinnedProducts - pinned, device.queued.products - products)
        XCTAssertEqual(device.queued.products - products, keys.count)
        device.gemmTable = GemmTable(gpu: "emulated device", entries: Dictionary(keys.map { ($0.replacingOccurrences(of: "align", with: "aligned"), algorithm) }) { a, _ in a })
        let before = device.pinnedProducts
        _ = try trainer.step(images: images.tensor, labels: labels.tensor)
        XCTAssertEqual(device.pinnedProducts, before)
    }

    /// Every parameter starts on 64 floats: its gradient too, and its bf16 copy's view on 128
    /// bytes, so no weight is a misaligned cuBLAS operand (packed, most ViT weights started 4-byte
    /// aligned). The model's size is unchanged; the gaps stay zero through training.
    func testParametersAreAlignedAndTheGapsStayZero() throws {
        let full = try RADARModel(config: RADARConfig.preset("full")!)
        XCTAssertEqual(full.layout.parameterElements, 22_526_470, "the full model's size")
        XCTAssertEqual(full.layout.parameterElements, full.layout.parameters.reduce(0) { $0 + $1.count })
        XCTAssertTrue(full.layout.parameters.allSatisfy { $0.offset % ParameterLayout.parameterAlignment == 0 })
        XCTAssertLessThan(full.layout.parameterCount - full.layout.parameterElements, 64 * full.layout.parameters.count)

        let backend = CUDABackend(driver: EmulatedDevice(memory: 1 << 30), precision: .bf16)
        let (trainer, images, labels) = try makeTinyTrainer(batch: 2, backend: backend)
        let ctx = trainer.ctx, layout = trainer.model.layout
        // One range per run of updated slots next to each other in the layout, across their gaps.
        let active = Set(trainer.model.activeSlots.map(\.name))
        let updated = layout.parameters.map { active.contains($0.name) }
        let runs = updated.indices.filter { updated[$0] && ($0 == 0 || !updated[$0 - 1]) }.count
        XCTAssertLessThan(runs, 4)
        XCTAssertEqual(trainer.optimizer.ranges.count, runs)
        for _ in 0..<2 { _ = try trainer.step(images: images.tensor, labels: labels.tensor) }
        ctx.beginPass()
        for s in layout.parameters where s.shape.rank >= 2 {
            let view = ctx.productWeight(s)
            XCTAssertEqual(view.dtype, .bfloat16, s.name)
            XCTAssertEqual(GemmTable.alignment(UnsafeRawPointer(view.base)) % 128, 0, s.name)
            XCTAssertEqual(GemmTable.alignment(UnsafeRawPointer(ctx.params.grad(s).base)), 256, s.name)
        }
        var inGap = [Bool](repeating: true, count: layout.parameterCount)
        for s in layout.parameters { for i in s.offset..<(s.offset + s.count) { inGap[i] = false } }
        let values = ctx.params.downloadValues(), moments = trainer.optimizer.downloadMoments()
        XCTAssertGreaterThan(inGap.filter { $0 }.count, 0)
        for i in values.indices where inGap[i] {
            XCTAssertEqual(values[i], 0, "gap element \(i)")
            XCTAssertEqual(moments.expAvg[i], 0)
            XCTAssertEqual(moments.expAvgSq[i], 0)
        }
    }

    /// AdamW's ranges merge slots next to each other in the layout (across their gaps), and split
    /// where a slot between them is not updated.
    func testAdamWRangesSplitAtASlotLeftOut() throws {
        let layout = ParameterLayout()
        let a = layout.parameter("a", Shape(3)), b = layout.parameter("b", Shape(5, 7)), c = layout.parameter("c", Shape(2))
        XCTAssertEqual([a.offset, b.offset, c.offset], [0, 64, 128])
        XCTAssertEqual(layout.parameterCount, 130)
        let store = ParameterStore(layout: layout, backend: CPUBackend(threads: 1))
        XCTAssertEqual(AdamW(store: store, slots: [c, a, b]).ranges, [0..<130])
        XCTAssertEqual(AdamW(store: store, slots: [a, c]).ranges, [0..<3, 128..<130])
    }
}
