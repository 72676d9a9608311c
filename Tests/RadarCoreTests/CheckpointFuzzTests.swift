import Foundation
import RadarCore
import XCTest

/// Crafted and mutated checkpoints: every one is a one-line error or a valid load, never a trap
/// (a trap ends this test process, so the suite fails). The mutations start from a real tiny
/// checkpoint: bytes flipped in the LZ4 file, its frame header's content size forged, numbers in
/// the safetensors header replaced by hostile values (negative, 2^32, 2^62, fractional, strings),
/// metadata values replaced, header lengths forged, files truncated. RADAR_FUZZ_ITERATIONS sets
/// the count (default 1500; the issue's figure is 10,000).
final class CheckpointFuzzTests: XCTestCase {
    struct Rng {
        var s: UInt64
        mutating func next() -> UInt64 { s &+= 0x9E37_79B9_7F4A_7C15; var z = s; z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9; z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB; return z ^ (z >> 31) }
        mutating func below(_ n: Int) -> Int { Int(next() % UInt64(max(n, 1))) }
    }

    static let hostileNumbers = ["-1", "0", "4294967296", "4611686018427387904", "9223372036854775807", "18446744073709551616",
                                 "1e300", "1.5", "\"x\"", "null", "[]", "{}", "true", "-9223372036854775808", "65536"]
    static let hostileStrings = ["-1", "", "x", "18446744073709551616", "9999999999999999999999", "1e9", "nan", "inf", "-0",
                                 "{\"img_size\": 1048576}", "{\"embed_dim\": 4294967296, \"depth\": 4096}", "{\"patch_size\": 0}",
                                 "{\"embed_dim\": 8192, \"depth\": 128}", "[", "{\"mean\": []}"]

    /// The safetensors bytes with a new JSON header (length field rewritten).
    func withHeader(_ plain: Data, _ header: Data, oldLength: Int) -> Data {
        var out = Data()
        withUnsafeBytes(of: UInt64(header.count).littleEndian) { out.append(contentsOf: $0) }
        out.append(header)
        out.append(plain.dropFirst(8 + oldLength))
        return out
    }

    func mutate(_ rng: inout Rng, lz4: Data, plain: Data) -> (Data, String) {
        let headerLength = Int(plain.prefix(8).withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) })
        let header = String(decoding: plain.subdata(in: 8..<(8 + headerLength)), as: UTF8.self)
        switch rng.below(8) {
        case 0:  // bytes flipped anywhere in the compressed file
            var d = lz4
            for _ in 0...rng.below(4) { d[rng.below(d.count)] ^= UInt8(1 << rng.below(8)) }
            return (d, "lz4 flips")
        case 1:  // the frame's declared content size forged (FLG bit 3 set: 8 bytes at offset 6)
            var d = lz4
            let size: UInt64 = [1 << 36, 1 << 40, UInt64.max, 0, 1, UInt64(plain.count + 1), UInt64(plain.count - 1)][rng.below(7)]
            withUnsafeBytes(of: size.littleEndian) { for i in 0..<8 { d[6 + i] = $0[i] } }
            return (d, "lz4 content size \(size)")
        case 2:  // truncated (compressed or plain)
            let src = rng.below(2) == 0 ? lz4 : plain
            return (src.prefix(rng.below(src.count)), "truncated")
        case 3:  // one number in the header replaced
            let nums = header.ranges(of: try! Regex("-?[0-9]+"))
            guard let r = nums.isEmpty ? nil : nums[rng.below(nums.count)] else { return (plain, "unchanged") }
            let v = CheckpointFuzzTests.hostileNumbers[rng.below(CheckpointFuzzTests.hostileNumbers.count)]
            var h = header
            h.replaceSubrange(r, with: v)
            return (withHeader(plain, Data(h.utf8), oldLength: headerLength), "number \(header[r]) -> \(v)")
        case 4:  // one metadata value replaced
            let keys = ["step", "epoch", "data_position", "rng_micro_step", "seed", "best_val_auc", "early_stopping_counter",
                        "world_size", "config", "history", "skipped_steps", "batch_size", "format_version"]
            guard var obj = try? JSONSerialization.jsonObject(with: Data(header.utf8)) as? [String: Any],
                  var meta = obj["__metadata__"] as? [String: String] else { return (plain, "unchanged") }
            let k = keys[rng.below(keys.count)]
            let v = CheckpointFuzzTests.hostileStrings[rng.below(CheckpointFuzzTests.hostileStrings.count)]
            if rng.below(5) == 0 { meta[k] = nil } else { meta[k] = v }
            obj["__metadata__"] = meta
            let h = try! JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys])
            return (withHeader(plain, h, oldLength: headerLength), "metadata \(k) -> \(meta[k] ?? "removed")")
        case 5:  // header length forged
            var d = plain
            let v: UInt64 = [0, 1, 7, UInt64(headerLength - 1), UInt64(headerLength + 1), UInt64(plain.count), 1 << 40, UInt64.max, 99_000_000][rng.below(9)]
            withUnsafeBytes(of: v.littleEndian) { for i in 0..<8 { d[i] = $0[i] } }
            return (d, "header length \(v)")
        case 6:  // bytes flipped in the plain header
            var d = plain
            for _ in 0...rng.below(3) { d[8 + rng.below(headerLength)] ^= UInt8(1 << rng.below(7)) }
            return (d, "header flips")
        default:  // a tensor's shape or offsets swapped with another's
            guard var obj = try? JSONSerialization.jsonObject(with: Data(header.utf8)) as? [String: Any] else { return (plain, "unchanged") }
            let names = obj.keys.filter { $0 != "__metadata__" }.sorted()
            let a = names[rng.below(names.count)], b = names[rng.below(names.count)]
            var ea = obj[a] as! [String: Any], eb = obj[b] as! [String: Any]
            let field = ["shape", "data_offsets", "dtype"][rng.below(3)]
            (ea[field], eb[field]) = (eb[field], ea[field])
            obj[a] = ea; obj[b] = eb
            let h = try! JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys])
            return (withHeader(plain, h, oldLength: headerLength), "\(field) of \(a) <-> \(b)")
        }
    }

    func testMutatedCheckpointsGiveOneLineErrorsOrValidLoads() throws {
        let (trainer, images, labels) = try makeTinyTrainer()
        _ = try trainer.step(images: images.tensor, labels: labels.tensor)
        let path = temporaryDirectory("fuzz") + "/last.safetensors.lz4"
        var st = Checkpoint.State()
        st.optimizerStep = 1
        st.configJSON = String(decoding: trainer.model.config.jsonData(), as: UTF8.self)
        try Checkpoint.write(path, store: trainer.ctx.params, optimizer: trainer.optimizer, state: st)
        let lz4 = try Data(contentsOf: URL(fileURLWithPath: path))
        let plain = try LZ4Frame.decompress(lz4, path: path)
        XCTAssertNoThrow(try Checkpoint.decodeModel(lz4, path: path), "the unmutated checkpoint loads")

        let iterations = Int(ProcessInfo.processInfo.environment["RADAR_FUZZ_ITERATIONS"] ?? "") ?? 1500
        var rng = Rng(s: 20261201)
        var loaded = 0, refused = 0
        var reasons: [String: Int] = [:]
        let t0 = Date()
        for _ in 0..<iterations {
            let (bytes, what) = mutate(&rng, lz4: lz4, plain: plain)
            do {
                let (model, tensors, state) = try Checkpoint.decodeModel(bytes, path: "x.safetensors")
                let store = ParameterStore(layout: model.layout, backend: sharedTestBackend)
                try Checkpoint.restore(tensors, state: state, into: store, optimizer: AdamW(store: store, slots: model.activeSlots), path: "x.safetensors")
                loaded += 1
            } catch {
                let text = "\(error)"
                XCTAssertFalse(text.contains("\n"), "\(what): a one-line error, got: \(text)")
                XCTAssertLessThan(text.count, 600, "\(what): a short error, got: \(text)")
                XCTAssertTrue(text.hasPrefix("x.safetensors"), "\(what): the error names the file: \(text)")
                refused += 1
                let key = String(text.dropFirst("x.safetensors: ".count).prefix(28))
                reasons[key, default: 0] += 1
            }
        }
        print("checkpoint fuzz: \(iterations) mutations in \(String(format: "%.1f", Date().timeIntervalSince(t0))) s: \(loaded) loaded, \(refused) refused, 0 traps; top reasons: \(reasons.sorted { $0.value > $1.value }.prefix(8).map { "\($0.key)… \($0.value)" })")
        XCTAssertGreaterThan(refused, iterations / 2, "most mutations are refused")
    }

    /// The crafted files of the issue, each refused with a message that says what is wrong.
    func testCraftedCheckpointsAreRefusedByName() throws {
        func st(_ header: String, body: Int = 0) -> Data {
            var d = Data()
            withUnsafeBytes(of: UInt64(header.utf8.count).littleEndian) { d.append(contentsOf: $0) }
            d.append(Data(header.utf8))
            d.append(Data(count: body))
            return d
        }
        let cases: [(Data, String)] = [
            (st(#"{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}}"#), "more elements"),
            (st(#"{"a":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,16]}}"#, body: 16), "more elements"),
            (st(#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#, body: 12), "overlap"),
            (st(#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#, body: 16), "belong to no tensor"),
            (st(#"{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}"#, body: 8), "negative dimension"),
            (st(#"{"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}}"#, body: 4), "must be integers"),
            (st(String(repeating: " ", count: SafeTensors.maxHeaderBytes + 1)), "exceeds the limit"),
        ]
        for (bytes, expected) in cases {
            XCTAssertThrowsError(try SafeTensors.decode(bytes, path: "c.safetensors")) {
                XCTAssertTrue("\($0)".hasPrefix("c.safetensors: ") && "\($0)".contains(expected), "\($0) should say \(expected)")
            }
        }
        // An LZ4 frame declaring 64 GB (allocated up front before) is refused by its size.
        let path = temporaryDirectory("crafted") + "/c.lz4"
        XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: nil))
        let h = try XCTUnwrap(FileHandle(forWritingAtPath: path))
        let w = try LZ4Frame.Writer(handle: h, path: path, contentSize: 64 << 30)
        try w.write(Data(count: 1000))
        try h.close()
        let frame = try Data(contentsOf: URL(fileURLWithPath: path))
        XCTAssertThrowsError(try LZ4Frame.decompress(frame, path: path)) { XCTAssertTrue("\($0)".contains("more than its"), "\($0)") }
        // Metadata that trapped: a negative micro step, an absurd epoch, a world size of 0.
        let (trainer, _, _) = try makeTinyTrainer()
        for (key, value, expected) in [("rng_micro_step", "-1", "rng_micro_step is -1"), ("epoch", "99999999999", "epoch is 99999999999"),
                                       ("world_size", "0", "world_size is 0")] {
            var s = Checkpoint.State()
            s.configJSON = String(decoding: trainer.model.config.jsonData(), as: UTF8.self)
            let p = temporaryDirectory("meta") + "/m.safetensors.lz4"
            try Checkpoint.write(p, store: trainer.ctx.params, optimizer: nil, state: s)
            let plain = try LZ4Frame.decompress(try Data(contentsOf: URL(fileURLWithPath: p)), path: p)
            let n = Int(plain.prefix(8).withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) })
            var obj = try JSONSerialization.jsonObject(with: plain.subdata(in: 8..<(8 + n))) as! [String: Any]
            var meta = obj["__metadata__"] as! [String: String]
            meta[key] = value
            obj["__metadata__"] = meta
            let forged = withHeader(plain, try JSONSerialization.data(withJSONObject: obj), oldLength: n)
            XCTAssertThrowsError(try Checkpoint.decode(forged, path: "m")) { XCTAssertTrue("\($0)".contains(expected), "\($0)") }
        }
        // A config asking for far more values than the file holds.
        var s = Checkpoint.State()
        var big = trainer.model.config
        big.depth = 64
        s.configJSON = String(decoding: big.jsonData(), as: UTF8.self)
        let p = temporaryDirectory("big") + "/b.safetensors.lz4"
        try Checkpoint.write(p, store: trainer.ctx.params, optimizer: nil, state: s)
        XCTAssertThrowsError(try Checkpoint.readModel(p)) { XCTAssertTrue("\($0)".contains("does not fit the model: missing"), "\($0)") }
    }

    /// Frames the stock `lz4` tool writes: no content size by default, and the legacy format (`-l`).
    func testStockLZ4FramesWithoutContentSizeAndLegacyFramesAreRead() throws {
        let (trainer, images, labels) = try makeTinyTrainer()
        for _ in 0..<2 { _ = try trainer.step(images: images.tensor, labels: labels.tensor) }
        var st = Checkpoint.State()
        st.optimizerStep = 2
        st.configJSON = String(decoding: trainer.model.config.jsonData(), as: UTF8.self)
        let path = temporaryDirectory("stock-src") + "/last.safetensors.lz4"
        try Checkpoint.write(path, store: trainer.ctx.params, optimizer: trainer.optimizer, state: st)
        let plain = try LZ4Frame.decompress(try Data(contentsOf: URL(fileURLWithPath: path)), path: path)
        let dir = temporaryDirectory("stock")
        let src = dir + "/m.safetensors"
        try plain.write(to: URL(fileURLWithPath: src))
        for (flags, name) in [([String](), "default"), (["-l"], "legacy"), (["--content-size"], "sized"), (["-B4", "--no-frame-crc"], "small blocks")] {
            let out = dir + "/m-\(name).lz4"
            let (rc, text) = try shell(["lz4", "-q", "-f"] + flags + [src, out])
            XCTAssertEqual(rc, 0, text)
            let got = try LZ4Frame.decompress(try Data(contentsOf: URL(fileURLWithPath: out)), path: out)
            XCTAssertEqual(got, plain, "lz4 \(flags) round-trips")
            XCTAssertEqual(try Checkpoint.read(out).state.optimizerStep, 2)
        }
    }
}
