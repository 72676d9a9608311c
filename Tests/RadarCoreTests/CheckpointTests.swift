import Foundation
import RadarCore
import XCTest

/// Runs a command, returning (status, stdout+stderr).
@discardableResult
func shell(_ args: [String], environment: [String: String] = [:]) throws -> (Int32, String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = args
    var env = ProcessInfo.processInfo.environment
    for (k, v) in environment { env[k] = v }
    p.environment = env
    let pipe = Pipe()
    p.standardOutput = pipe
    p.standardError = pipe
    try p.run()
    let out = pipe.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: out, as: UTF8.self))
}

/// The Python with numpy, safetensors and lz4 (scripts/test.sh makes one and exports RADAR_PYTHON).
var interopPython: String { ProcessInfo.processInfo.environment["RADAR_PYTHON"] ?? "python3" }

final class CheckpointTests: XCTestCase {
    func tinyTrainedStore() throws -> (Trainer, String) {
        let (trainer, images, labels) = try makeTinyTrainer()
        for _ in 0..<2 { _ = try trainer.step(images: images.tensor, labels: labels.tensor) }
        let dir = temporaryDirectory("ckpt")
        var st = Checkpoint.State()
        st.optimizerStep = trainer.optimizer.step
        st.epoch = 3
        st.dataPosition = 5
        st.microStep = trainer.ctx.step
        st.configJSON = String(decoding: trainer.model.config.jsonData(), as: UTF8.self)
        let path = "\(dir)/last.safetensors.lz4"
        try Checkpoint.write(path, store: trainer.ctx.params, optimizer: trainer.optimizer, state: st)
        return (trainer, path)
    }

    func testCheckpointRoundTripsExactly() throws {
        let (trainer, path) = try tinyTrainedStore()
        let (tensors, state) = try Checkpoint.read(path)
        XCTAssertEqual(state.epoch, 3)
        XCTAssertEqual(state.dataPosition, 5)
        XCTAssertEqual(state.optimizerStep, 2)
        let store = ParameterStore(layout: trainer.model.layout, backend: sharedTestBackend)
        let opt = AdamW(store: store, slots: trainer.model.activeSlots)
        try Checkpoint.restore(tensors, state: state, into: store, optimizer: opt, path: path)
        XCTAssertEqual(store.downloadValues().map(\.bitPattern), trainer.ctx.params.downloadValues().map(\.bitPattern))
        XCTAssertEqual(store.downloadBuffers(), trainer.ctx.params.downloadBuffers())
        XCTAssertEqual(Array(store.counters), Array(trainer.ctx.params.counters))
        XCTAssertEqual(opt.downloadMoments().expAvgSq, trainer.optimizer.downloadMoments().expAvgSq)
        XCTAssertEqual(opt.step, 2)
        XCTAssertEqual(tensors["badm.edge_encoder.1.num_batches_tracked"]?.ints, [2])
        XCTAssertNotNil(tensors["optim.exp_avg.encoder.pos_embed"])
    }

    func testLZ4CommandLineAndPythonSafetensorsInterop() throws {
        let (trainer, path) = try tinyTrainedStore()
        let plain = path.replacingOccurrences(of: ".lz4", with: "")
        let (rc, out) = try shell(["lz4", "-d", "-f", "-q", path, plain])
        XCTAssertEqual(rc, 0, out)
        // Our reader takes the plain file too.
        XCTAssertEqual(try Checkpoint.read(plain).tensors["encoder.cls_token"]?.floats, trainer.ctx.params.value(named: "encoder.cls_token")!.toArray())
        // Python's safetensors reads it; Python writes an LZ4-framed file we read.
        let written = path + ".py.safetensors.lz4"
        let script = """
        import sys, json, numpy as np, lz4.frame
        from safetensors.numpy import load_file, save
        t = load_file(sys.argv[1])
        assert t["badm.edge_encoder.1.num_batches_tracked"].dtype == np.int64, t["badm.edge_encoder.1.num_batches_tracked"].dtype
        print(len(t), float(t["encoder.pos_embed"].astype(np.float64).sum()))
        meta = {"format_version": "1", "step": "7", "epoch": "1", "data_position": "0", "rng_micro_step": "9", "seed": "1",
                "best_val_auc": "0.5", "early_stopping_counter": "0", "world_size": "1", "config": "{}"}
        out = {k: v for k, v in t.items()}
        out["encoder.cls_token"] = np.full(out["encoder.cls_token"].shape, 0.25, dtype=np.float32)
        open(sys.argv[2], "wb").write(lz4.frame.compress(save(out, metadata=meta), content_checksum=True))
        """
        let (prc, pout) = try shell([interopPython, "-c", script, plain, written])
        XCTAssertEqual(prc, 0, "python interop failed (RADAR_PYTHON=\(interopPython)): \(pout)")
        let parts = pout.split(separator: " ")
        XCTAssertEqual(Int(parts.first ?? ""), trainer.model.layout.parameterCount > 0 ? try Checkpoint.read(path).tensors.count : -1)
        let sum = trainer.ctx.params.value(named: "encoder.pos_embed")!.toArray().reduce(0.0) { $0 + Double($1) }
        XCTAssertEqual(Double(parts.last!.trimmingCharacters(in: .whitespacesAndNewlines)) ?? .nan, sum, accuracy: 1e-9)
        let back = try Checkpoint.read(written)
        XCTAssertEqual(back.state.optimizerStep, 7)
        XCTAssertTrue(back.tensors["encoder.cls_token"]!.floats.allSatisfy { $0 == 0.25 })
    }

    func testCorruptedAndTruncatedCheckpointsAreReported() throws {
        let (_, path) = try tinyTrainedStore()
        let good = FileManager.default.contents(atPath: path)!
        var flipped = good
        flipped[good.count / 2] ^= 0x40
        try flipped.write(to: URL(fileURLWithPath: path))
        XCTAssertThrowsError(try Checkpoint.read(path)) { XCTAssertTrue("\($0)".contains(path) && "\($0)".contains("corrupt"), "\($0)") }
        try good.prefix(good.count - 100).write(to: URL(fileURLWithPath: path))
        XCTAssertThrowsError(try Checkpoint.read(path)) { XCTAssertTrue("\($0)".contains("truncated") || "\($0)".contains("corrupt"), "\($0)") }
        try Data("not a checkpoint at all".utf8).write(to: URL(fileURLWithPath: path))
        XCTAssertThrowsError(try Checkpoint.read(path)) { XCTAssertTrue("\($0)".hasPrefix(path), "\($0)") }
    }

    func testAFailedCheckpointWriteNamesTheFileAndKeepsThePreviousOne() throws {
        // A full disk, made here with RLIMIT_FSIZE (writes past 1 MiB fail with EFBIG; SIGXFSZ
        // ignored): the error is one line naming the file and the system's reason (it was
        // Foundation's "Error Domain=NSCocoaErrorDomain Code=640 ..."), the previous checkpoint
        // reads back unchanged and no temporary is left.
        let (trainer, path) = try tinyTrainedStore()
        let before = FileManager.default.contents(atPath: path)!
        XCTAssertGreaterThan(before.count, 1 << 21, "the checkpoint must be larger than the limit")
        var st = Checkpoint.State()
        st.configJSON = String(decoding: trainer.model.config.jsonData(), as: UTF8.self)
        var old = rlimit()
        getrlimit(Int32(RLIMIT_FSIZE.rawValue), &old)
        var small = old
        small.rlim_cur = 1 << 20
        let previousHandler = signal(SIGXFSZ, SIG_IGN)
        XCTAssertEqual(setrlimit(Int32(RLIMIT_FSIZE.rawValue), &small), 0)
        XCTAssertThrowsError(try Checkpoint.write(path, store: trainer.ctx.params, optimizer: trainer.optimizer, state: st)) { e in
            XCTAssertEqual("\(e)", "\(path): write failed: File too large")
        }
        setrlimit(Int32(RLIMIT_FSIZE.rawValue), &old)
        signal(SIGXFSZ, previousHandler)
        XCTAssertEqual(FileManager.default.contents(atPath: path), before, "the previous checkpoint is untouched")
        let dir = (path as NSString).deletingLastPathComponent
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), ["last.safetensors.lz4"], "no temporary left")
        // The run's folder removed while it trains: said as such (it was "cannot create
        // .../.last.safetensors.lz4.tmp-PID" with no reason), for a checkpoint and any other file.
        let gone = dir + "/removed", missing = gone + "/last.safetensors.lz4"
        let tmp = gone + "/.last.safetensors.lz4.tmp-\(getpid())"
        XCTAssertThrowsError(try Checkpoint.write(missing, store: trainer.ctx.params, optimizer: trainer.optimizer, state: st)) { e in
            XCTAssertEqual("\(e)", "\(missing): cannot create \(tmp): No such file or directory (the folder \(gone) does not exist: removed while this ran?)")
        }
        XCTAssertThrowsError(try writeFileAtomically(Data("{}".utf8), to: gone + "/metrics.json")) { e in
            XCTAssertTrue("\(e)".hasSuffix(": No such file or directory (the folder \(gone) does not exist: removed while this ran?)"), "\(e)")
        }
    }

    func testFoundationFileErrorsPrintAsPathAndReason() {
        // What `radar: error:` prints for a Foundation file error (was the NSError dump).
        XCTAssertThrowsError(try Data("x".utf8).write(to: URL(fileURLWithPath: "/nonexistent-radar-dir/x.json"))) { e in
            XCTAssertEqual(errorLine(e), "/nonexistent-radar-dir/x.json: No such file or directory")
        }
        XCTAssertEqual(errorLine(DatasetError(path: "p", reason: "r")), "p: r", "our errors print as they describe themselves")
    }

    func testPyTorchPickleFilesAreNamedAsSuch() throws {
        // torch.save writes a zip archive (the legacy format: a pickle, protocol 2); both begin with
        // bytes that read as an absurd safetensors header length. The error says what the file is.
        let body = Data((0..<600).map { UInt8(truncatingIfNeeded: $0 &* 37) })
        for (magic, what) in [([0x50, 0x4B, 0x03, 0x04] as [UInt8], "zip archive, as torch.save writes"), ([0x80, 0x02, 0x8A, 0x0A], "Python pickle")] {
            XCTAssertThrowsError(try SafeTensors.decode(Data(magic) + body, path: "sd.pt")) { e in
                XCTAssertTrue("\(e)".hasPrefix("sd.pt: ") && "\(e)".contains(what) && "\(e)".contains("safetensors.torch.save_file"), "\(e)")
            }
        }
        // What sits beside a checkpoint, named too (config.json passed as weights read as a header
        // length of 7161674631644973691).
        for (bytes, what) in [(Data(" \n{\"model\": {}}".utf8) + body, "it is JSON text (a run's config.json or metrics.json?), not a safetensors file"),
                              (Data([0x89, 0x50, 0x4E, 0x47]) + body, "it is an image, not a safetensors file"),
                              (Data([0xFF, 0xD8, 0xFF, 0xE0]) + body, "it is an image, not a safetensors file")] {
            XCTAssertThrowsError(try SafeTensors.decode(bytes, path: "w")) { e in
                XCTAssertTrue("\(e)".hasPrefix("w: header length ") && "\(e)".hasSuffix("(\(what))"), "\(e)")
            }
        }
    }

    func makeRunData() throws -> String {
        let data = temporaryDirectory("resume-data")
        _ = try DatasetPreparer(options: PrepareOptions(output: data).with { $0.valFraction = 0.2 }).run(
            SyntheticSource(size: 32, count: 200, seed: 3, difficulty: 0.2, framesPerSequence: 4))
        return data
    }

    func options(_ data: String, _ out: String, stop: Int, resume: String? = nil) -> TrainOptions {
        var o = TrainOptions(data: data, output: out, experiment: "r", config: RADARConfig.preset("tiny")!)
        o.device = testDeviceName
        (o.batchSize, o.epochs, o.accumulationSteps, o.learningRate, o.stopAfterSteps, o.resume) = (8, 3, 2, 1e-3, stop, resume)
        return o
    }

    /// A run that stops mid-epoch (a stop request, `stopAfterSteps`) stops its loader: its
    /// workers, waiting for room in the queue, held it and stayed blocked for the life of the
    /// process (threads and up to four batches each epoch left early).
    func testAnEpochLeftEarlyLeavesNoLoaderWorkerBehind() throws {
        let data = try makeRunData()
        func threads() -> Int { (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task").count) ?? -1 }
        var o = options(data, temporaryDirectory("early-warm"), stop: 1)
        o.loaderThreads = 3
        _ = try TrainingRun(options: o).run()  // thread pools that stay (BLAS, the device) start here
        usleep(200_000)
        let before = threads()
        o.output = temporaryDirectory("early")
        _ = try TrainingRun(options: o).run()
        usleep(200_000)
        XCTAssertGreaterThan(before, 0)
        XCTAssertLessThanOrEqual(threads(), before, "loader workers left blocked after the run stopped mid-epoch")
    }

    func testResumingGivesBitIdenticalParameters() throws {
        let data = try makeRunData()
        let straight = temporaryDirectory("straight"), split = temporaryDirectory("split")
        _ = try TrainingRun(options: options(data, straight, stop: 4)).run()
        _ = try TrainingRun(options: options(data, split, stop: 2)).run()
        let resumed = try TrainingRun(options: options(data, split, stop: 4, resume: "auto"))
        _ = try resumed.run()
        let a = try Checkpoint.read("\(straight)/r/last.safetensors.lz4"), b = try Checkpoint.read("\(split)/r/last.safetensors.lz4")
        XCTAssertEqual(a.state.optimizerStep, 4)
        XCTAssertEqual(b.state.optimizerStep, 4)
        XCTAssertEqual(a.state.dataPosition, b.state.dataPosition)
        XCTAssertEqual(a.tensors.count, b.tensors.count)
        for (k, t) in a.tensors {
            XCTAssertEqual(t.floats.map(\.bitPattern), b.tensors[k]!.floats.map(\.bitPattern), "\(k) differs after 2+2 vs 4 steps")
            XCTAssertEqual(t.ints, b.tensors[k]!.ints, k)
        }
        // A run's folder stands for its last checkpoint.
        _ = try TrainingRun(options: options(data, split, stop: 5, resume: "\(split)/r")).run()
        XCTAssertEqual(try Checkpoint.read("\(split)/r/last.safetensors.lz4").state.optimizerStep, 5)
        // A different config or world size is refused with what differs.
        var other = options(data, split, stop: 6, resume: "auto")
        other.config.depth = 1
        XCTAssertThrowsError(try TrainingRun(options: other).run()) { XCTAssertTrue("\($0)".contains("depth: checkpoint 2, now 1"), "\($0)") }
        var wider = options(data, split, stop: 6, resume: "auto")
        wider.worldSize = 2
        XCTAssertThrowsError(try TrainingRun(options: wider).run()) { XCTAssertTrue("\($0)".contains("world size 1"), "\($0)") }
        // So is another learning-rate schedule: the checkpoint's OneCycle state is read back.
        var faster = options(data, split, stop: 6, resume: "auto")
        faster.learningRate = 2e-3
        XCTAssertThrowsError(try TrainingRun(options: faster).run()) {
            XCTAssertTrue("\($0)".contains("OneCycle schedule (max_lr 0.001, total_steps") && "\($0)".contains("max_lr 0.002"), "\($0)")
        }
        var longer = options(data, split, stop: 6, resume: "auto")
        longer.epochs = 4
        XCTAssertThrowsError(try TrainingRun(options: longer).run()) { XCTAssertTrue("\($0)".contains("--num-epochs"), "\($0)") }
        // Another batch size moves the data position and the schedule: refused, naming both.
        var smaller = options(data, split, stop: 6, resume: "auto")
        smaller.batchSize = 4
        XCTAssertThrowsError(try TrainingRun(options: smaller).run()) {
            XCTAssertTrue("\($0)".contains("written with --batch-size 8 --accumulation-steps 2, this run has --batch-size 4"), "\($0)")
        }
    }

    /// `ModelEMA`: ema = decay * ema + (1 - decay) * weights for the parameters and the
    /// BatchNorm buffers, starting from the weights; loading it into the model swaps nothing else.
    func testModelEMAAveragesParametersAndBuffers() throws {
        let (trainer, _, _) = try makeTinyTrainer()
        let params = trainer.ctx.params
        let ema = ModelEMA(decay: 0.75, like: params)
        var expected = (params.downloadValues().map(Double.init), params.downloadBuffers().map(Double.init))
        XCTAssertEqual(ema.store.downloadValues(), params.downloadValues(), "it starts from the weights")
        var rng = SplitMix64(seed: 5)
        for _ in 0..<3 {
            let v = (0..<params.parameterCount).map { _ in Float.random(in: -1...1, using: &rng) }
            let b = (0..<params.layout.bufferCount).map { _ in Float.random(in: 0...2, using: &rng) }
            params.uploadValues(v); params.uploadBuffers(b)
            ema.update(from: params)
            expected.0 = zip(expected.0, v).map { 0.75 * $0 + 0.25 * Double($1) }
            expected.1 = zip(expected.1, b).map { 0.75 * $0 + 0.25 * Double($1) }
        }
        XCTAssertGreaterThan(params.layout.bufferCount, 0, "the tiny model has BatchNorm buffers")
        for (got, want) in [(ema.store.downloadValues(), expected.0), (ema.store.downloadBuffers(), expected.1)] {
            let worst = zip(got, want).map { abs(Double($0) - $1) }.max() ?? 0
            XCTAssertLessThan(worst, 1e-6, "largest difference from the recurrence in Double")
        }
        ema.load(into: params)
        XCTAssertEqual(params.downloadValues(), ema.store.downloadValues())
        XCTAssertEqual(params.downloadBuffers(), ema.store.downloadBuffers())
    }

    /// `--model-ema-decay`: the average is what validation scores and what `best` (and so the test
    /// and model.safetensors) holds; `last` keeps the training weights and the average
    /// (`optim.ema.*`), and a run stopped and resumed ends with the same bits as one that was not.
    /// A checkpoint without an average starts it from the resumed weights, said.
    func testModelEMAIsValidatedKeptAsBestAndResumesBitIdentically() throws {
        let data = try makeRunData()
        func emaOptions(_ out: String, stop: Int, resume: String? = nil) -> TrainOptions {
            var o = options(data, out, stop: stop, resume: resume)
            (o.epochs, o.maxStepsPerEpoch, o.modelEmaDecay) = (1, 4, 0.6)
            return o
        }
        let straight = temporaryDirectory("ema-straight"), split = temporaryDirectory("ema-split")
        let h = try TrainingRun(options: emaOptions(straight, stop: 0)).run()
        XCTAssertEqual(h.bestEpoch, 0, "validation AUC defined: \(h.valAUC)")
        let last = try Checkpoint.read("\(straight)/r/last.safetensors.lz4"), best = try Checkpoint.read("\(straight)/r/best.safetensors.lz4")
        let layout = try RADARModel(config: RADARConfig.preset("tiny")!).layout
        var differs = false
        for s in layout.parameters + layout.bufferSlots {
            let averaged = try XCTUnwrap(last.tensors["optim.ema.\(s.name)"], s.name)
            XCTAssertEqual(best.tensors[s.name]?.floats, averaged.floats, "best holds the average: \(s.name)")
            if last.tensors[s.name]?.floats != averaged.floats { differs = true }
        }
        XCTAssertTrue(differs, "last holds the training weights, not the average")
        let model = try ModelWeights.read("\(straight)/r/model.safetensors")
        for s in layout.parameters { XCTAssertEqual(model.tensors[s.name]?.floats, best.tensors[s.name]?.floats, s.name) }
        // Stopped after 2 of 4 steps and resumed: the same bits, the average included.
        _ = try TrainingRun(options: emaOptions(split, stop: 2)).run()
        _ = try TrainingRun(options: emaOptions(split, stop: 0, resume: "auto")).run()
        let resumed = try Checkpoint.read("\(split)/r/last.safetensors.lz4")
        XCTAssertEqual(Set(resumed.tensors.keys), Set(last.tensors.keys))
        for (k, t) in last.tensors { XCTAssertEqual(t.floats.map(\.bitPattern), resumed.tensors[k]!.floats.map(\.bitPattern), "\(k) after 2+2 vs 4 steps") }
        // From a checkpoint written without an average: it starts from the resumed weights.
        let plain = temporaryDirectory("ema-plain")
        var first = emaOptions(plain, stop: 2)
        first.modelEmaDecay = nil
        _ = try TrainingRun(options: first).run()
        XCTAssertFalse(try Checkpoint.read("\(plain)/r/last.safetensors.lz4").tensors.keys.contains { $0.hasPrefix("optim.ema.") })
        let run = try TrainingRun(options: emaOptions(plain, stop: 0, resume: "auto"))
        var said: [String] = []
        run.log = { said.append($0) }
        _ = try run.run()
        XCTAssertTrue(said.contains { $0.hasSuffix("holds no moving average of the weights: --model-ema-decay starts it from the resumed weights") }, "\(said)")
        let plainLast = try Checkpoint.read("\(plain)/r/last.safetensors.lz4")
        for s in layout.parameters + layout.bufferSlots { XCTAssertNotNil(plainLast.tensors["optim.ema.\(s.name)"], s.name) }
    }

    /// Stopped mid-epoch and resumed, a run's bookkeeping equals an uninterrupted run's:
    /// metrics.json's history exactly, metrics.jsonl with each step once and the same values.
    func testResumedRunsMetricsEqualAnUninterruptedRuns() throws {
        let data = try makeRunData()
        let straight = temporaryDirectory("m-straight"), split = temporaryDirectory("m-split")
        _ = try TrainingRun(options: options(data, straight, stop: 0)).run()
        _ = try TrainingRun(options: options(data, split, stop: 3)).run()   // mid-epoch 0
        _ = try TrainingRun(options: options(data, split, stop: 13, resume: "auto")).run()  // mid-epoch 1
        _ = try TrainingRun(options: options(data, split, stop: 0, resume: "auto")).run()
        func metrics(_ dir: String) throws -> [String: Any] {
            var m = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: "\(dir)/r/metrics.json"))) as! [String: Any]
            m["timestamp"] = nil
            return m
        }
        let a = try metrics(straight), b = try metrics(split)
        XCTAssertEqual(NSDictionary(dictionary: a), NSDictionary(dictionary: b), "metrics.json: \(a) vs \(b)")
        func lines(_ dir: String) throws -> [String] {
            try String(contentsOfFile: "\(dir)/r/metrics.jsonl", encoding: .utf8).split(separator: "\n").map { line in
                var o = try JSONSerialization.jsonObject(with: Data(line.utf8)) as! [String: Any]
                // Timings, not results.
                for k in ["images_per_s", "step_seconds", "data_wait_seconds", "allreduce_seconds", "allreduce_exposed_seconds", "overlap_fraction"] { o[k] = nil }
                return String(decoding: try JSONSerialization.data(withJSONObject: o, options: [.sortedKeys]), as: UTF8.self)
            }
        }
        let la = try lines(straight), lb = try lines(split)
        XCTAssertEqual(la.count, lb.count, "metrics.jsonl has each step once")
        XCTAssertEqual(la, lb)
    }

    /// Two runs in one experiment folder at once: the second is refused while the first holds it.
    func testExperimentFolderIsLockedWhileARunUsesIt() throws {
        let data = try makeRunData(), out = temporaryDirectory("lock")
        try FileManager.default.createDirectory(atPath: "\(out)/r", withIntermediateDirectories: true)
        let holder = try FolderLock.experiment("\(out)/r")
        XCTAssertThrowsError(try TrainingRun(options: options(data, out, stop: 1)).run()) {
            XCTAssertTrue("\($0)".contains("another run is using this experiment folder (pid \(getpid())"), "\($0)")
        }
        holder.release()
        XCTAssertNoThrow(try TrainingRun(options: options(data, out, stop: 1)).run(), "free again once released")
    }

    /// model.safetensors has exactly the tensors of the PyTorch reference's state_dict (names,
    /// shapes, dtypes: the key set of the golden fixture's weights, written by PyTorch), so
    /// strict=True loads it; Python's safetensors reads it and finds the config in the metadata.
    func testModelFileMatchesTheReferenceStateDict() throws {
        let fixture = fixturesDirectory.appendingPathComponent("parity/tiny_dual").path
        let config = try RADARConfig.load(fixture + "/config.json")
        let model = try RADARModel(config: config)
        let store = ParameterStore(layout: model.layout, backend: sharedTestBackend)
        let path = temporaryDirectory("model") + "/model.safetensors"
        try ModelFile.write(store, config: config, to: path)
        let ours = try SafeTensors.read(path), reference = try SafeTensors.read(fixture + "/weights.safetensors")
        XCTAssertEqual(Set(ours.tensors.keys), Set(reference.tensors.keys), "the reference state_dict's keys, no more, no less")
        for (k, t) in reference.tensors {
            XCTAssertEqual(ours.tensors[k]?.shape, t.shape, k)
            XCTAssertEqual(ours.tensors[k]?.dtype == .i64, t.dtype == .i64, "\(k): I64 exactly where PyTorch has integers")
        }
        let script = """
        import sys, json
        from safetensors import safe_open
        with safe_open(sys.argv[1], "np") as f:
            print(len(list(f.keys())), json.loads(f.metadata()["radar_config"])["embed_dim"])
        """
        let (rc, out) = try shell([interopPython, "-c", script, path])
        XCTAssertEqual(rc, 0, out)
        XCTAssertEqual(out.trimmingCharacters(in: .whitespacesAndNewlines), "\(reference.tensors.count) \(config.embedDim)")
    }

    func testFullRunWritesCheckpointsPlotsAndExportZip() throws {
        let data = try makeRunData(), out = temporaryDirectory("full")
        var o = options(data, out, stop: 0)
        o.epochs = 2
        o.maxStepsPerEpoch = 3
        _ = try TrainingRun(options: o).run()
        let dir = "\(out)/r"
        for f in ["best.safetensors.lz4", "last.safetensors.lz4", "model.safetensors", "config.json", "metrics.json", "metrics.jsonl",
                  "plots/loss.svg", "plots/val.svg", "plots/heads.svg", "plots/roc.svg"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: "\(dir)/\(f)"), f)
        }
        // Resumed into another folder, the run keeps its best weights: the test split used the
        // last weights, and the new folder had no best checkpoint to export.
        let elsewhere = temporaryDirectory("moved")
        var moved = o
        (moved.output, moved.resume) = (elsewhere, dir)
        _ = try TrainingRun(options: moved).run()
        let original = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: "\(dir)/metrics.json"))) as! [String: Any]
        let again = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: "\(elsewhere)/r/metrics.json"))) as! [String: Any]
        XCTAssertEqual(original["test_metrics"] as? [String: Double], again["test_metrics"] as? [String: Double])
        XCTAssertEqual(FileManager.default.contents(atPath: "\(elsewhere)/r/best.safetensors.lz4"), FileManager.default.contents(atPath: "\(dir)/best.safetensors.lz4"))
        // ... and its last checkpoint (the run was finished: it wrote none, so the new folder
        // could not be resumed or exported with --resume auto).
        XCTAssertEqual(FileManager.default.contents(atPath: "\(elsewhere)/r/last.safetensors.lz4"), FileManager.default.contents(atPath: "\(dir)/last.safetensors.lz4"))
        // Resuming from weights alone (model.safetensors) says what the file is and what to use
        // (it was "format_version missing, expected 1").
        var weightsOnly = o
        (weightsOnly.output, weightsOnly.resume) = (temporaryDirectory("weights-only"), "\(dir)/model.safetensors")
        XCTAssertThrowsError(try TrainingRun(options: weightsOnly).run()) {
            XCTAssertEqual("\($0)", "\(dir)/model.safetensors: a model-only file, not a training checkpoint (no optimizer state, schedule or data position): "
                           + "resume from a checkpoint (last.safetensors.lz4, or the run's folder); to start from these weights, use --init-from")
        }
        // A run's folder names its best checkpoint (evaluate, predict, --init-from); it was "cannot read file".
        let fromFolder = try ModelWeights.read(dir), fromBest = try ModelWeights.read("\(dir)/best.safetensors.lz4")
        XCTAssertEqual(fromFolder.kind, fromBest.kind)
        XCTAssertEqual(fromFolder.tensors.keys.sorted(), fromBest.tensors.keys.sorted())
        XCTAssertEqual(fromFolder.state?.optimizerStep, fromBest.state?.optimizerStep)
        XCTAssertThrowsError(try ModelWeights.read("\(dir)/plots")) {
            XCTAssertEqual("\($0)", "\(dir)/plots: a folder without best.safetensors.lz4 (a run's folder has one after its first epoch); name a weights file")
        }
        // A run stopped in its first epoch: its last checkpoint is named.
        let early = temporaryDirectory("first-epoch")
        try FileManager.default.copyItem(atPath: "\(dir)/last.safetensors.lz4", toPath: "\(early)/last.safetensors.lz4")
        XCTAssertThrowsError(try ModelWeights.read(early)) {
            XCTAssertEqual("\($0)", "\(early): a folder without best.safetensors.lz4 (a run's folder has one after its first epoch); name a weights file (\(early)/last.safetensors.lz4 holds its latest weights)")
        }
        let svg = try String(contentsOfFile: "\(dir)/plots/roc.svg", encoding: .utf8)
        XCTAssertTrue(svg.hasPrefix("<svg") && svg.contains("polyline") && svg.contains("Test ROC"))
        let exports = temporaryDirectory("exports")
        let zip = try RunExport.export(results: dir, to: exports, downloadScript: true)
        // Two more of a folder of the same name in the same second each keep their zip (the
        // second replaced the first: `for d in sweep/*/run; do radar export ...`).
        let same = Date(), sameDir = temporaryDirectory("exports-same")
        let zips = try (0..<3).map { _ in try RunExport.export(results: dir, to: sameDir, downloadScript: false, now: same) }
        XCTAssertEqual(zips.map { ($0 as NSString).lastPathComponent.replacingOccurrences(of: #"_\d{8}_\d{6}"#, with: "_STAMP", options: .regularExpression) },
                       ["r_STAMP.zip", "r_STAMP-2.zip", "r_STAMP-3.zip"])
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: sameDir).sorted(), zips.map { ($0 as NSString).lastPathComponent }.sorted(),
                       "three zips, no partial left")
        let reader = try ArchiveReader(path: zip)
        var names: [String] = []
        while let m = try reader.next() { names.append(m.name); try reader.skipData() }
        XCTAssertEqual(Set(names), Set(["r/best.safetensors.lz4", "r/model.safetensors", "r/config.json", "r/metrics.json", "r/plots/loss.svg",
                                        "r/plots/val.svg", "r/plots/heads.svg", "r/plots/roc.svg", "r/README.md"]
                                   // calibration.json where the run could fit a temperature (ModelInteropTests and the demo test cover both cases)
                                   + (FileManager.default.fileExists(atPath: dir + "/calibration.json") ? ["r/calibration.json"] : [])
                                   + TensorBoardLog.eventFiles(in: dir + "/tensorboard").map { "r/tensorboard/" + ($0 as NSString).lastPathComponent }))
        XCTAssertTrue(names.contains { $0.hasPrefix("r/tensorboard/events.out.tfevents.") }, "\(names)")
        // Zip entries carry the export's date (not 1970); JSON paths are not escaped ("\/").
        let (rc, year) = try shell([interopPython, "-c", "import sys, zipfile; print(min(i.date_time[0] for i in zipfile.ZipFile(sys.argv[1]).infolist()))", zip])
        XCTAssertEqual(rc, 0, year)
        XCTAssertGreaterThanOrEqual(Int(year.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0, 2025, year)
        XCTAssertFalse(try String(contentsOfFile: "\(dir)/config.json", encoding: .utf8).contains("\\/"))
        let script = try String(contentsOfFile: "\(exports)/download_r.sh", encoding: .utf8)
        XCTAssertTrue(script.contains("rsync") && script.contains((zip as NSString).lastPathComponent))
        // The script quotes the zip's path: a folder named with quotes, `$` and spaces made it a
        // shell syntax error. A stand-in rsync records the arguments the script gives it.
        let odd = temporaryDirectory("exports") + "/we\"ird $HOME 'x'"
        let oddZip = try RunExport.export(results: dir, to: odd, downloadScript: true)
        let bin = temporaryDirectory("bin")
        try "#!/bin/sh\nfor a in \"$@\"; do echo \"$a\"; done\n".write(toFile: bin + "/rsync", atomically: true, encoding: .utf8)
        chmod(bin + "/rsync", 0o755)
        let (src, args) = try shell(["bash", odd + "/download_r.sh", "me@pod", "2222", "/dl"], environment: ["PATH": "\(bin):/usr/bin:/bin"])
        XCTAssertEqual(src, 0, args)
        XCTAssertEqual(args.split(separator: "\n").map(String.init), ["-avPs", "-e", "ssh -p 2222", "me@pod:" + oddZip, "/dl/"])
        XCTAssertThrowsError(try RunExport.export(results: temporaryDirectory("nothing"), to: exports, downloadScript: false))
        // Each path said for what it is ("File exists" for an --output-dir that is a file; "not a
        // finished run directory" for a folder that does not exist).
        let missing = temporaryDirectory("missing") + "/none"
        XCTAssertThrowsError(try RunExport.export(results: missing, to: exports, downloadScript: false)) {
            XCTAssertEqual("\($0)", "\(missing): no such folder (a run's folder, such as outputs/radar_<time>)")
        }
        let aFile = dir + "/config.json"
        XCTAssertThrowsError(try RunExport.export(results: aFile, to: exports, downloadScript: false)) {
            XCTAssertEqual("\($0)", "\(aFile): a file, not a run's folder (such as outputs/radar_<time>)")
        }
        XCTAssertThrowsError(try RunExport.export(results: dir, to: aFile, downloadScript: false)) {
            XCTAssertEqual("\($0)", "\(aFile): a file, not a folder (--output-dir: the folder the zip goes into, made if missing)")
        }
        // From inside the run folder: `--results-dir .` made a hidden "._<stamp>.zip" of "./" entries.
        let cwd = FileManager.default.currentDirectoryPath
        XCTAssertEqual(chdir(dir), 0)
        defer { chdir(cwd) }
        let here = try RunExport.export(results: ".", to: temporaryDirectory("exports-here"), downloadScript: false)
        XCTAssertTrue((here as NSString).lastPathComponent.hasPrefix("r_"), here)
        let hereReader = try ArchiveReader(path: here)
        var hereNames: [String] = []
        while let m = try hereReader.next() { hereNames.append(m.name); try hereReader.skipData() }
        XCTAssertEqual(Set(hereNames), Set(names))
    }
}
