import Foundation
@testable import RadarCore
import XCTest

/// tag -> [(step, float bits)] as TensorBoard reads `dir`.
func tensorBoardScalars(_ dir: String, file: StaticString = #filePath, line: UInt = #line) throws -> [String: [(step: Int, bits: UInt32)]] {
    let script = """
    import sys, json, struct
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0})
    ea.Reload()
    bits = lambda v: struct.unpack("<I", struct.pack("<f", v))[0]
    print("SCALARS " + json.dumps({t: [[e.step, bits(e.value)] for e in ea.Scalars(t)] for t in ea.Tags()["scalars"]}))
    """
    let (rc, out) = try shell([interopPython, "-c", script, dir])
    XCTAssertEqual(rc, 0, "TensorBoard's reader (RADAR_PYTHON=\(interopPython)): \(out)", file: file, line: line)
    let found = out.split(separator: "\n").last { $0.hasPrefix("SCALARS ") }
    let text = try XCTUnwrap(found, out, file: file, line: line)
    let obj = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(text.dropFirst(8).utf8)) as? [String: [[Int]]])
    return obj.mapValues { $0.map { (step: $0[0], bits: UInt32($0[1])) } }
}

/// A run's TensorBoard event files, read back by TensorBoard's own reader (`EventAccumulator`,
/// which checks every record's two CRC-32C sums) from the test venv (RADAR_PYTHON).
final class TensorBoardTests: XCTestCase {
    /// The HParams session in `run`/tensorboard equals `run`/config.json: config.json's values,
    /// flattened by Python on its own, against what TensorBoard's hparams protos decode.
    func assertHParamsAreTheConfig(_ run: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let hparamsCheck = """
        import sys, json
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        from tensorboard.plugins.hparams import plugin_data_pb2
        ea = EventAccumulator(sys.argv[1]); ea.Reload()
        content = ea.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        data = plugin_data_pb2.HParamsPluginData.FromString(content)
        assert data.version == 0 and data.WhichOneof("data") == "session_start_info", data
        got = {}
        for k, v in data.session_start_info.hparams.items():
            kind = v.WhichOneof("kind")
            got[k] = v.bool_value if kind == "bool_value" else v.number_value if kind == "number_value" else v.string_value
        def flat(o, prefix=""):
            out = {}
            for k, v in o.items():
                if isinstance(v, dict): out.update(flat(v, prefix + k + "."))
                elif isinstance(v, (bool, int, float, str)): out[prefix + k] = float(v) if isinstance(v, int) and not isinstance(v, bool) else v
            return out
        want = flat(json.load(open(sys.argv[2])))
        assert got == want, (sorted(set(got.items()) ^ set(want.items())))
        assert "model.embed_dim" in got and got["augment"] is True, got
        # The finished run's end, as add_hparams writes it (status SUCCESS), after its start.
        end = plugin_data_pb2.HParamsPluginData.FromString(ea.PluginTagToContent("hparams")["_hparams_/session_end_info"])
        assert end.WhichOneof("data") == "session_end_info" and end.session_end_info.status == 1, end
        assert end.session_end_info.end_time_secs >= data.session_start_info.start_time_secs > 0, (end, data.session_start_info.start_time_secs)
        print("HPARAMS", len(got))
        """
        let (rc, out) = try shell([interopPython, "-c", hparamsCheck, run + "/tensorboard", run + "/config.json"])
        XCTAssertEqual(rc, 0, out, file: file, line: line)
        XCTAssertTrue(out.contains("HPARAMS "), out, file: file, line: line)
    }

    func lines(_ path: String) throws -> [[String: Any]] {
        try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n").map {
            try XCTUnwrap(exactNumbers(try JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: Any])
        }
    }

    /// The object with every non-integer number re-read from its text: Foundation's JSON parser
    /// on Linux gives an NSDecimalNumber whose doubleValue can miss the written Double by an ulp
    /// (0.30000000000000004 does), which may move its Float by one (seen on 2026-12-04: one
    /// metric of 14, 1056960560 against 1056960559).
    func exactNumbers(_ o: Any) -> Any {
        switch o {
        case let d as [String: Any]: return d.mapValues(exactNumbers)
        case let a as [Any]: return a.map(exactNumbers)
        case let n as NSDecimalNumber: return Double(n.stringValue) ?? n.doubleValue
        default: return o
        }
    }

    func options(_ data: String, _ out: String, experiment: String) -> TrainOptions {
        var o = TrainOptions(data: data, output: out, experiment: experiment, config: RADARConfig.preset("tiny")!)
        o.device = testDeviceName
        (o.batchSize, o.epochs, o.accumulationSteps, o.learningRate, o.maxStepsPerEpoch, o.seed) = (8, 2, 1, 1e-3, 3, 5)
        return o
    }

    func synthData() throws -> String {
        let data = temporaryDirectory("tb-data")
        _ = try DatasetPreparer(options: PrepareOptions(output: data).with { $0.valFraction = 0.2 }).run(
            SyntheticSource(size: 32, count: 160, seed: 3, difficulty: 0.2, framesPerSequence: 4))
        return data
    }

    func testCRC32CIsCastagnolis() {
        XCTAssertEqual(CRC32C.checksum(Array("123456789".utf8)), 0xE306_9283)  // RFC 3720's check value
        XCTAssertEqual(CRC32C.checksum([UInt8](repeating: 0, count: 32)), 0x8A91_36AA)  // RFC 3720 B.4
    }

    /// Every scalar of metrics.jsonl and metrics.json is in TensorBoard at its optimizer step,
    /// as the same float: losses, learning rate and gradient norm per step; validation metrics,
    /// the epoch loss and speed at each epoch's last step; test metrics at the end.
    func testTensorBoardReadsTheRunsScalars() throws {
        let data = try synthData(), out = temporaryDirectory("tb-out")
        var o = options(data, out, experiment: "r")
        o.testPerturbations = [.jpeg(quality: 50)]
        let h = try TrainingRun(options: o).run()
        let files = TensorBoardLog.eventFiles(in: out + "/r/tensorboard")
        XCTAssertEqual(files.count, 1, "\(files)")
        XCTAssertTrue((files.first as NSString?)?.lastPathComponent.hasSuffix(".\(getpid()).0") ?? false, "\(files)")
        let tb = try tensorBoardScalars(out + "/r/tensorboard")
        let all = try lines(out + "/r/metrics.jsonl")
        let steps = all.filter { $0["lr"] != nil }, epochs = all.filter { $0["train_loss"] != nil }
        XCTAssertEqual(steps.count, 6)
        XCTAssertEqual(epochs.count, 2)
        func value(_ tag: String, at step: Int) -> UInt32? {
            let hits = tb[tag]?.filter { $0.step == step } ?? []
            XCTAssertEqual(hits.count, 1, "\(tag) at step \(step): \(tb[tag] ?? [])")
            return hits.first?.bits
        }
        for s in steps {
            let step = s["step"] as! Int
            for (tag, key) in [("train/loss", "loss_total"), ("train/loss_main", "loss_main"), ("train/loss_branch", "loss_branch"),
                               ("train/loss_orth", "loss_orth"), ("train/loss_deep", "loss_deep"), ("train/lr", "lr"), ("train/grad_norm", "grad_norm")] {
                XCTAssertEqual(value(tag, at: step), Float(s[key] as! Double).bitPattern, "\(tag) at step \(step)")
            }
        }
        for e in epochs {
            let epoch = e["epoch"] as! Int
            let last = steps.filter { $0["epoch"] as! Int == epoch }.map { $0["step"] as! Int }.max()!
            XCTAssertEqual(value("epoch/train_loss", at: last), Float(e["train_loss"] as! Double).bitPattern)
            XCTAssertEqual(value("epoch/number", at: last), Float(epoch + 1).bitPattern)
            XCTAssertEqual(value("epoch/skipped_steps", at: last), Float(steps.filter { $0["epoch"] as! Int == epoch && $0["skipped"] as! Bool }.count).bitPattern)
            let val = e["val"] as! [String: Double]
            for (k, v) in val { XCTAssertEqual(value("val/\(k)", at: last), Float(v).bitPattern, "val/\(k) epoch \(epoch)") }
            // Each head's: the AUCs, the gate, the attention on frequency evidence per class.
            let heads = HeadMetrics.scalars(e["val_heads"] as! [String: Any], prefix: "val_heads")
            XCTAssertEqual(heads.count, 7, "four heads, the gate, two classes: \(heads)")
            for (tag, v) in heads { XCTAssertEqual(value(tag, at: last), Float(v).bitPattern, "\(tag) epoch \(epoch)") }
            XCTAssertEqual(value("perf/images_per_s", at: last), Float(e["images_per_s"] as! Double).bitPattern)
        }
        XCTAssertTrue(h.testMetrics["auc"]!.isFinite, "the set's test split has both classes")
        for (k, v) in h.testMetrics { XCTAssertEqual(value("test/\(k)", at: 6), Float(v).bitPattern, "test/\(k)") }
        let metrics = exactNumbers(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out + "/r/metrics.json")))) as! [String: Any]
        let testHeads = HeadMetrics.scalars(metrics["test_heads"] as! [String: Any], prefix: "test_heads")
        XCTAssertEqual(testHeads.count, 7, "\(testHeads)")
        for (tag, v) in testHeads { XCTAssertEqual(value(tag, at: 6), Float(v).bitPattern, tag) }
        // --test-perturb: the degraded pass's AUC, as metrics.json has it.
        let perturbed = try XCTUnwrap((metrics["test_perturbations"] as? [[String: Any]])?.first)
        XCTAssertEqual(perturbed["perturbation"] as? String, "jpeg:50")
        XCTAssertEqual(value("test_perturbed/jpeg_50_auc", at: 6), Float(perturbed["auc"] as! Double).bitPattern)
        // The HParams dashboard's session: config.json's values.
        try assertHParamsAreTheConfig(out + "/r")
        XCTAssertEqual(Set(tb.keys), Set(["train/loss", "train/loss_main", "train/loss_branch", "train/loss_orth", "train/loss_deep", "train/lr",
                                          "train/grad_norm", "epoch/number", "epoch/train_loss", "epoch/skipped_steps", "perf/images_per_s", "perf/step_seconds", "perf/data_wait_seconds"]
                                         + h.testMetrics.keys.map { "val/\($0)" } + h.testMetrics.keys.map { "test/\($0)" }
                                         + testHeads.map { "val_heads/" + $0.0.dropFirst("test_heads/".count) } + testHeads.map(\.0) + ["test_perturbed/jpeg_50_auc"]))
        // The export carries them.
        let zip = try RunExport.export(results: out + "/r", to: out + "/exports", downloadScript: false)
        let (rc, listing) = try shell([interopPython, "-c", "import sys, zipfile; print(zipfile.ZipFile(sys.argv[1]).namelist())", zip])
        XCTAssertEqual(rc, 0, listing)
        XCTAssertTrue(listing.contains("r/tensorboard/" + (files[0] as NSString).lastPathComponent), listing)
    }

    /// A run killed after its checkpoint had logged two more steps (and half a record); resumed,
    /// TensorBoard shows each step once, the resumed run's values, equal bit for bit to an
    /// uninterrupted run's. The resumed file sorts after the first (same second, other pid).
    func testResumeDropsWhatTheInterruptedRunLoggedAfterItsCheckpoint() throws {
        let data = try synthData(), out = temporaryDirectory("tb-resume")
        _ = try TrainingRun(options: options(data, out, experiment: "straight")).run()
        var first = options(data, out, experiment: "resumed")
        first.stopAfterSteps = 2
        _ = try TrainingRun(options: first).run()
        let dir = out + "/resumed/tensorboard"
        let original = try XCTUnwrap(TensorBoardLog.eventFiles(in: dir).first)
        let interrupted = String(decoding: FileManager.default.contents(atPath: original)!, as: UTF8.self)
        XCTAssertTrue(interrupted.contains("_hparams_/session_start_info"))
        XCTAssertFalse(interrupted.contains("_hparams_/session_end_info"), "a run that stopped has not ended: status unknown")
        // What the killed run would have written after the checkpoint at step 2.
        let handle = try XCTUnwrap(FileHandle(forWritingAtPath: original))
        try handle.seekToEnd()
        for step in [3, 4] {
            var value = ProtoWriter(), summary = ProtoWriter(), event = ProtoWriter()
            value.string(1, "train/loss")
            value.float(2, 1e6)
            summary.message(1, value.bytes)
            event.double(1, Date().timeIntervalSince1970)
            event.varint(2, UInt64(step))
            event.message(5, summary.bytes)
            try handle.write(contentsOf: Data(TensorBoardLog.record(event.bytes)))
        }
        try handle.write(contentsOf: Data(TensorBoardLog.record([0x08, 0x01]).prefix(10)))  // cut short by the kill
        try handle.close()
        XCTAssertEqual(TensorBoardLog.records([UInt8](FileManager.default.contents(atPath: original)!)).map(\.step).suffix(2), [3, 4])

        // Resumed from that checkpoint into a new folder: its first file has the hyperparameters,
        // then the steps from the checkpoint on, as the uninterrupted run's.
        var elsewhere = options(data, out, experiment: "elsewhere")
        elsewhere.resume = out + "/resumed"
        _ = try TrainingRun(options: elsewhere).run()
        try assertHParamsAreTheConfig(out + "/elsewhere")

        var resume = options(data, out, experiment: "resumed")
        resume.resume = "auto"
        _ = try TrainingRun(options: resume).run()
        let files = TensorBoardLog.eventFiles(in: dir)
        XCTAssertEqual(files.count, 2, "\(files)")
        XCTAssertEqual(files.first, original, "the resumed run's file sorts after the first")
        // The first file now ends at the checkpoint's step, whole.
        let kept = TensorBoardLog.records([UInt8](FileManager.default.contents(atPath: original)!))
        XCTAssertEqual(kept.map(\.step).max(), 2)
        XCTAssertEqual(kept.flatMap { TensorBoardLog.record(Array($0.payload)) }.count, FileManager.default.contents(atPath: original)!.count)

        let straight = try tensorBoardScalars(out + "/straight/tensorboard"), resumed = try tensorBoardScalars(dir)
        for tag in ["train/loss", "train/lr", "train/grad_norm", "train/loss_main", "epoch/train_loss", "val/auc", "test/auc"] {
            let a = try XCTUnwrap(straight[tag], tag), b = try XCTUnwrap(resumed[tag], tag)
            XCTAssertEqual(a.map(\.step), b.map(\.step), tag)
            XCTAssertEqual(a.map(\.bits), b.map(\.bits), tag)
        }
        XCTAssertEqual(resumed["train/loss"]?.map(\.step), [1, 2, 3, 4, 5, 6])
        let moved = try tensorBoardScalars(out + "/elsewhere/tensorboard")
        XCTAssertEqual(moved["train/loss"]?.map(\.step), [3, 4, 5, 6])
        XCTAssertEqual(moved["train/loss"]?.map(\.bits), straight["train/loss"]?.suffix(4).map(\.bits))
        // A run resumed in its own folder keeps the hyperparameters of its first file, once.
        try assertHParamsAreTheConfig(out + "/resumed")
        let sessions = files.map { [UInt8](FileManager.default.contents(atPath: $0)!) }.map { bytes in
            TensorBoardLog.records(bytes).filter { String(decoding: $0.payload, as: UTF8.self).contains("_hparams_/session_start_info") }.count
        }
        XCTAssertEqual(sessions, [1, 0])
    }

    /// A run that cannot write its event files (`tensorboard` is a link to nowhere) says so once,
    /// naming the folder, and trains on.
    func testAnUnwritableTensorBoardFolderIsSaidOnceAndTheRunGoesOn() throws {
        let data = try synthData(), out = temporaryDirectory("tb-blocked")
        try FileManager.default.createDirectory(atPath: out + "/r", withIntermediateDirectories: true)
        XCTAssertEqual(symlink("/dev/null/nowhere", out + "/r/tensorboard"), 0)
        let run = try TrainingRun(options: options(data, out, experiment: "r"))
        var said: [String] = []
        run.log = { said.append($0) }
        let h = try run.run()
        XCTAssertEqual(h.trainLoss.count, 2)
        let warnings = said.filter { $0.contains("TensorBoard") }
        XCTAssertEqual(warnings.count, 1, "\(said)")
        XCTAssertTrue(warnings.first?.hasPrefix("warning: \(out)/r/tensorboard: cannot create the folder: ") ?? false, "\(said)")
        XCTAssertTrue(FileManager.default.fileExists(atPath: out + "/r/model.safetensors"))
    }

    /// Event files that cannot be trimmed on resume (here the rewrite's temporary name is taken by
    /// a folder) are said once; the run goes on without TensorBoard rather than stopping.
    func testEventFilesThatCannotBeTrimmedOnResumeAreSaidAndTheRunGoesOn() throws {
        let dir = temporaryDirectory("tb-trim")
        let log = try TensorBoardLog(directory: dir + "/tensorboard", resumedAtStep: nil)
        for step in 1...5 { try log.scalars(step: step, [("train/loss", Double(step))]) }
        let file = try XCTUnwrap(log.path)
        XCTAssertEqual(mkdir(temporarySibling(of: file).tmp, 0o755), 0)
        var said: [String] = []
        let steps = try TrainingRun.StepLog(path: dir + "/metrics.jsonl", fresh: false, writes: true, resumedFrom: (step: 3, epoch: 0),
                                            say: { said.append($0) })
        XCTAssertNil(steps.tensorBoard)
        XCTAssertEqual(said.count, 1, "\(said)")
        XCTAssertTrue(said.first?.hasPrefix("warning: \(file): cannot create ") ?? false, "\(said)")
        XCTAssertTrue(said.first?.hasSuffix("; no TensorBoard scalars for this run") ?? false, "\(said)")
        XCTAssertEqual(TensorBoardLog.records([UInt8](FileManager.default.contents(atPath: file)!)).map(\.step), [0, 1, 2, 3, 4, 5],
                       "the file is left whole")
        steps.scalars(step: 4, [("train/loss", 4)])  // nothing to write to, nothing said
        XCTAssertEqual(said.count, 1)
    }

    /// A damaged event file (a disk error, a kill mid-write, a foreign file with our name) never
    /// traps the reader that trims files on resume: what it returns is always a prefix of whole,
    /// checksummed records of the file, up to the first damage.
    func testDamagedEventFilesGiveTheirWholePrefix() throws {
        let dir = temporaryDirectory("tb-fuzz")
        let log = try TensorBoardLog(directory: dir, resumedAtStep: nil, hparams: [("lr", .number(1e-3)), ("augment", .bool(true))])
        for step in 1...20 { try log.scalars(step: step, [("train/loss", Double(step) / 7), ("train/lr", 1e-4)]) }
        let clean = [UInt8](FileManager.default.contents(atPath: try XCTUnwrap(log.path))!)
        XCTAssertEqual(TensorBoardLog.records(clean).map(\.step), [0, 0] + Array(1...20), "file version, hparams, the steps")
        var rng = CheckpointFuzzTests.Rng(s: 11)
        for _ in 0..<500 {
            var bytes = clean
            for _ in 0..<(1 + Int(rng.next() % 3)) {
                let i = Int(rng.next() % UInt64(bytes.count))
                switch rng.next() % 3 {
                case 0: bytes[i] ^= UInt8(1 << (rng.next() % 8))
                case 1: bytes.removeSubrange(i...)
                default: bytes[i] = 0xFF
                }
                if bytes.isEmpty { break }
            }
            let read = TensorBoardLog.records(bytes)
            let prefix = read.flatMap { TensorBoardLog.record(Array($0.payload)) }
            XCTAssertEqual(Array(bytes.prefix(prefix.count)), prefix, "not a prefix of the file")
            XCTAssertLessThanOrEqual(read.count, 22)
        }
    }
}
