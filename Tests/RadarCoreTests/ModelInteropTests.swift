import Foundation
import RadarCore
import XCTest

/// Weights from PyTorch users (plain state dicts), experiment folders that never mix two runs, and
/// resume refusing another dataset or seed.
final class ModelInteropTests: XCTestCase {
    /// A PyTorch-style state dict written by Python (safetensors.numpy): DDP's `module.` prefix,
    /// F16 and BF16-free F32 tensors mixed, no metadata, LZ4-framed by python-lz4 without a content size.
    func testPlainStateDictLoadsWithConfigAndMisfitsAreListedAtOnce() throws {
        let (trainer, _, _) = try makeTinyTrainer()
        let dir = temporaryDirectory("statedict")
        let modelPath = dir + "/model.safetensors"
        try ModelFile.write(trainer.ctx.params, config: trainer.model.config, to: modelPath)
        let sd = dir + "/state_dict.safetensors.lz4"
        let script = """
        import sys, numpy as np, lz4.frame
        from safetensors.numpy import load_file, save_file
        t = load_file(sys.argv[1])
        out = {"module." + k: v for k, v in t.items()}
        out["module.external_classifier_dual.0.weight"] = out["module.external_classifier_dual.0.weight"].astype(np.float16)
        save_file(out, sys.argv[2] + ".tmp")
        open(sys.argv[2], "wb").write(lz4.frame.compress(open(sys.argv[2] + ".tmp", "rb").read(), store_size=False))
        """
        let (rc, out) = try shell([interopPython, "-c", script, modelPath, sd])
        XCTAssertEqual(rc, 0, "python (RADAR_PYTHON=\(interopPython)): \(out)")

        // No config in the file: --config is asked for, with the presets.
        XCTAssertThrowsError(try ModelWeights.read(sd)) { e in
            XCTAssertTrue("\(e)".hasPrefix(sd) && "\(e)".contains("--config") && "\(e)".contains("tiny, mid, full"), "\(e)")
        }
        // With it, every tensor loads (the F16 one rounded to half precision).
        let w = try ModelWeights.read(sd, config: RADARConfig.preset("tiny")!)
        XCTAssertEqual(w.kind, .stateDict)
        let store = ParameterStore(layout: w.model.layout, backend: sharedTestBackend)
        try w.load(into: store, source: sd)
        let original = trainer.ctx.params
        XCTAssertEqual(store.value(named: "encoder.cls_token")!.toArray(), original.value(named: "encoder.cls_token")!.toArray())
        let fc = store.value(named: "external_classifier_dual.0.weight")!.toArray(), ref = original.value(named: "external_classifier_dual.0.weight")!.toArray()
        for (a, b) in zip(fc, ref) { XCTAssertEqual(a, b, accuracy: abs(b) * 1e-3 + 1e-7) }
        XCTAssertEqual(Array(store.counters), Array(original.counters))

        // Our own model file carries its config; a --config that differs is named field by field.
        XCTAssertEqual(try ModelWeights.read(modelPath).kind, .modelFile)
        XCTAssertThrowsError(try ModelWeights.read(modelPath, config: RADARConfig.preset("mid")!)) { e in
            XCTAssertTrue("\(e)".contains("differs from --config") && "\(e)".contains("embed_dim: file 48, --config 192"), "\(e)")
        }
        // The wrong config: every misfit at once, folded, one short line.
        XCTAssertThrowsError(try ModelWeights.read(sd, config: RADARConfig.preset("mid")!)) { e in
            let text = "\(e)"
            XCTAssertTrue(text.contains("does not fit the model") && text.contains("missing") && text.contains("misshaped"), text)
            XCTAssertTrue(text.contains("encoder.blocks.*."), "block numbers folded: \(text)")
            XCTAssertFalse(text.contains("\n"))
            XCTAssertLessThan(text.count, 700, text)
        }
        // A renamed and a dropped key are both reported in one error.
        var tensors = try SafeTensors.read(modelPath).tensors
        tensors["badm.classifier.weights"] = tensors.removeValue(forKey: "badm.classifier.weight")
        tensors.removeValue(forKey: "encoder.norm.bias")
        let broken = dir + "/broken.safetensors"
        try SafeTensors.encode(tensors, metadata: [:]).write(to: URL(fileURLWithPath: broken))
        XCTAssertThrowsError(try ModelWeights.read(broken, config: RADARConfig.preset("tiny")!)) { e in
            let text = "\(e)"
            XCTAssertTrue(text.contains("missing 2: ") && text.contains("badm.classifier.weight") && text.contains("encoder.norm.bias"), text)
            XCTAssertTrue(text.contains("unexpected 1: badm.classifier.weights"), text)
        }
    }

    func runOptions(_ data: String, _ out: String, experiment: String = "r", seed: UInt64 = 42, resume: String? = nil) -> TrainOptions {
        var o = TrainOptions(data: data, output: out, experiment: experiment, config: RADARConfig.preset("tiny")!)
        o.device = testDeviceName
        (o.batchSize, o.epochs, o.accumulationSteps, o.learningRate, o.stopAfterSteps, o.resume, o.seed) = (8, 1, 1, 1e-3, 2, resume, seed)
        return o
    }

    func synth(_ name: String, seed: UInt64) throws -> String {
        let data = temporaryDirectory(name)
        _ = try DatasetPreparer(options: PrepareOptions(output: data).with { $0.valFraction = 0.2 }).run(
            SyntheticSource(size: 32, count: 120, seed: seed, difficulty: 0.2, framesPerSequence: 4))
        return data
    }

    /// `radar runs`: a finished run, a stopped one, one running here (its folder's lock held),
    /// and folders that hold no run (left out), each read from the files the runs wrote.
    func testRunSummariesSayWhereEachRunStands() throws {
        let data = try synth("runs-data", seed: 3)
        let out = temporaryDirectory("runs-out")
        var finished = runOptions(data, out, experiment: "a-finished")
        finished.stopAfterSteps = 0
        finished.maxStepsPerEpoch = 3
        let done = try TrainingRun(options: finished)
        let h = try done.run()
        _ = try TrainingRun(options: runOptions(data, out, experiment: "b-stopped")).run()  // --stop-after-steps 2
        let live = out + "/c-running"
        try FileManager.default.createDirectory(atPath: live, withIntermediateDirectories: true)
        try Data("{}".utf8).write(to: URL(fileURLWithPath: live + "/config.json"))
        // Locks of other programs around the run's (a busy node's /proc/locks runs to many
        // pages; the run's lock once went unseen past the first): 300 flocks before it and 300
        // after (the kernel lists the newest first), so it lies pages deep either way.
        let others = temporaryDirectory("runs-other-locks")
        func lockOthers(_ range: Range<Int>) -> [Int32] {
            range.map { i in
                let fd = open("\(others)/\(i)", O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
                XCTAssertEqual(flock(fd, LOCK_EX), 0)
                return fd
            }
        }
        var held = lockOthers(0..<300)
        defer { held.forEach { close($0) } }
        let lock = try FolderLock.experiment(live)
        held += lockOthers(300..<600)
        try FileManager.default.createDirectory(atPath: out + "/d-not-a-run", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: out + "/.hidden", withIntermediateDirectories: true)
        try Data("{}".utf8).write(to: URL(fileURLWithPath: out + "/.hidden/config.json"))

        let runs = try RunSummary.scan(out)
        XCTAssertEqual(runs.map(\.name), ["a-finished", "b-stopped", "c-running"])
        let a = runs[0], b = runs[1], c = runs[2]
        XCTAssertEqual(a.state, .finished)
        XCTAssertEqual(a.epochsDone, 1); XCTAssertEqual(a.epochs, 1); XCTAssertEqual(a.step, 3)
        XCTAssertEqual(a.bestValAUC, h.bestValAUC); XCTAssertEqual(a.bestEpoch, 1)
        // Through metrics.json (its numbers printed to 15 digits or so).
        XCTAssertEqual(a.test["auc"] ?? -1, h.testMetrics["auc"]!, accuracy: 1e-12); XCTAssertEqual(a.test["ece"] ?? -1, h.testMetrics["ece"]!, accuracy: 1e-12)
        XCTAssertEqual(a.model, "img 32 patch 8 dim 48 depth 2"); XCTAssertEqual(a.batchSize, 8); XCTAssertEqual(a.worldSize, 1)
        XCTAssertGreaterThan(a.imagesPerSecond ?? 0, 0)
        XCTAssertEqual(b.state, .stopped); XCTAssertEqual(b.step, 2); XCTAssertEqual(b.epochsDone, 0); XCTAssertTrue(b.test.isEmpty)
        XCTAssertEqual(c.state, .running)
        XCTAssertEqual(c.holder, "pid \(getpid()) on \(ProcessInfo.processInfo.hostName)")
        lock.release()
        XCTAssertEqual(try RunSummary.scan(out)[2].state, .empty, "the lock released: nothing written")
        // An experiment's own folder: itself (it was "no experiments in"); the same summary.
        let alone = try RunSummary.scan(out + "/a-finished/")
        XCTAssertEqual(alone.map(\.name), ["a-finished"])
        XCTAssertEqual(alone.first?.step, a.step); XCTAssertEqual(alone.first?.state, .finished); XCTAssertEqual(alone.first?.bestValAUC, a.bestValAUC)
        XCTAssertEqual(try RunSummary.scan(out + "/d-not-a-run").count, 0)
        XCTAssertThrowsError(try RunSummary.scan(out + "/nonexistent")) {
            XCTAssertEqual("\($0)", "\(out)/nonexistent: no such folder (the --output of radar train / radar-worker)")
        }
        XCTAssertThrowsError(try RunSummary.scan(out + "/c-running/config.json")) {
            XCTAssertEqual("\($0)", "\(out)/c-running/config.json: a file, not a folder (the --output of radar train / radar-worker)")
        }
    }

    /// `radar export --hub-folder`: what huggingface_hub reads as a model card (metadata and
    /// all), a config without the run's paths, the run's model file; served by the (stand-in)
    /// Hub it is read back through `hf-hub:` as the file itself is. A non-empty folder is refused.
    func testHubFolderIsAModelRepositoryTheHubAndWeRead() throws {
        let data = try synth("hubexp-data", seed: 3)
        let out = temporaryDirectory("hubexp-out")
        var o = runOptions(data, out, experiment: "published")
        (o.stopAfterSteps, o.maxStepsPerEpoch) = (0, 2)
        let h = try TrainingRun(options: o).run()
        let folder = temporaryDirectory("hubexp-folder") + "/repo"
        try RunExport.hubFolder(results: o.experimentDirectory, to: folder)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: folder).sorted(), ["README.md", "config.json", "model.safetensors"])
        XCTAssertEqual(FileManager.default.contents(atPath: folder + "/model.safetensors"), FileManager.default.contents(atPath: o.experimentDirectory + "/model.safetensors"))
        let config = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: folder + "/config.json"))) as! [String: Any]
        XCTAssertEqual(Set(config.keys), ["library", "model", "training"])
        XCTAssertEqual((config["model"] as? [String: Any])?["use_badm"] as? Bool, true)
        XCTAssertNil((config["training"] as? [String: Any])?["data"], "no local paths")
        let configText = try String(contentsOfFile: folder + "/config.json", encoding: .utf8)
        XCTAssertTrue(configText.contains("\"use_badm\" : true") && configText.contains("\"batch_size\" : 8"), "booleans stay booleans: \(configText)")
        // Any JSON read back and written (printJSON, reports): true stays true, 1 stays 1, NaN is null.
        let mixed = try JSONSerialization.jsonObject(with: Data(#"{"t": true, "f": false, "one": 1, "half": 0.5}"#.utf8))
        XCTAssertEqual(String(decoding: try jsonData(mixed), as: UTF8.self), #"{"f":false,"half":0.5,"one":1,"t":true}"#)
        XCTAssertEqual(String(decoding: try jsonData(["n": Double.nan, "b": true] as [String: Any]), as: UTF8.self), #"{"b":true,"n":null}"#)
        let script = """
        import json, sys
        from huggingface_hub import ModelCard
        card = ModelCard.load(sys.argv[1] + '/README.md')
        print(json.dumps({'library_name': card.data.library_name, 'tags': card.data.tags, 'metrics': card.data.metrics, 'text': card.text}))
        """
        let (rc, text) = try shell([interopPython, "-c", script, folder])
        XCTAssertEqual(rc, 0, text)
        let card = try JSONSerialization.jsonObject(with: Data(text.split(separator: "\n").last!.utf8)) as! [String: Any]
        XCTAssertEqual(card["library_name"] as? String, "radar")
        XCTAssertEqual(card["tags"] as? [String], ["deepfake-detection", "vision-transformer", "radar"])
        XCTAssertEqual(card["metrics"] as? [String], ["roc_auc", "accuracy", "eer"])
        XCTAssertTrue((card["text"] as? String ?? "").contains(String(format: "| test | auc | %.4f |", h.testMetrics["auc"]!)), text)
        // Two steps leave logits that rank the validation split backwards: no temperature was
        // fitted, so none is published (radar export's zip and --hub-folder carry one otherwise).
        XCTAssertFalse(FileManager.default.fileExists(atPath: o.experimentDirectory + "/calibration.json"))
        XCTAssertFalse((card["text"] as? String ?? "").contains("Calibration"), text)
        XCTAssertThrowsError(try RunExport.hubFolder(results: o.experimentDirectory, to: folder)) {
            XCTAssertEqual("\($0)", "\(folder): not empty: give a new folder for the Hub files")
        }
        let aFile = folder + "/README.md"
        XCTAssertThrowsError(try RunExport.hubFolder(results: o.experimentDirectory, to: aFile)) {
            XCTAssertEqual("\($0)", "\(aFile): a file, not a folder: give a new folder for the Hub files")
        }
        XCTAssertTrue(FileManager.default.fileExists(atPath: aFile), "left alone")
        // --onnx: model.onnx beside the weights, and how to run it in the card; ONNX Runtime's
        // p(fake) is our eval forward's of the folder's model.safetensors.
        let withONNX = temporaryDirectory("hubexp-onnx") + "/repo"
        try RunExport.hubFolder(results: o.experimentDirectory, to: withONNX, onnx: true)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: withONNX).sorted(), ["README.md", "config.json", "model.onnx", "model.safetensors"])
        let onnxCard = try String(contentsOfFile: withONNX + "/README.md", encoding: .utf8)
        XCTAssertTrue(onnxCard.contains("`model.onnx` is the same model") && onnxCard.contains("ort.InferenceSession(\"model.onnx\")"), onnxCard)
        XCTAssertFalse(onnxCard.contains("calibrated_prob"), "no temperature was fitted")
        let weights = try ModelWeights.read(withONNX + "/model.safetensors")
        let ctx = ExecutionContext(backend: sharedTestBackend, layout: weights.model.layout)
        try weights.load(into: ctx.params, source: "model.safetensors")
        let size = weights.model.config.imgSize, faces = SyntheticFaces(size: size, seed: 9)
        let host = HostTensor(Shape(2, 3, size, size))
        for i in 0..<2 { faces.normalized(i, mean: weights.model.config.mean, std: weights.model.config.std, into: host.pointer + i * 3 * size * size) }
        let images = DeviceTensor(ctx.backend, host)
        let ours = ctx.backend.download(try Trainer(model: weights.model, ctx: ctx).evalForward(images: images.tensor).prob)
        let batchFile = withONNX + "/../batch.safetensors"
        try SafeTensors.encode(["image": SafeTensor(shape: [2, 3, size, size], floats: images.values)]).write(to: URL(fileURLWithPath: batchFile))
        let runONNX = """
        import sys, json, onnxruntime as ort
        from safetensors.numpy import load_file
        s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
        print(json.dumps([o.name for o in s.get_outputs()] + s.run(["prob"], load_file(sys.argv[2]))[0][:, 0].tolist()))
        """
        let (orc, oout) = try shell([interopPython, "-c", runONNX, withONNX + "/model.onnx", batchFile])
        XCTAssertEqual(orc, 0, oout)
        let fromRuntime = try JSONSerialization.jsonObject(with: Data((oout.split(separator: "\n").last ?? "").utf8)) as? [Any] ?? []
        XCTAssertFalse(fromRuntime.contains { $0 as? String == "calibrated_prob" }, oout)
        let probs = fromRuntime.compactMap { $0 as? Double }
        XCTAssertEqual(probs.count, 2, oout)
        for (a, b) in zip(probs, ours) { XCTAssertEqual(a, Double(b), accuracy: 1e-5, oout) }
        // Served as a Hub repository: the same weights, the model's own config.
        let (hub, storage, _) = try standInHub(model: try Data(contentsOf: URL(fileURLWithPath: folder + "/model.safetensors")))
        defer { hub.stop(); storage.stop() }
        let env = ["HF_ENDPOINT": hub.base, "HF_HUB_CACHE": temporaryDirectory("hubexp-cache"), "HF_TOKEN_PATH": "/nonexistent-radar-token"]
        for (k, v) in env { setenv(k, v, 1) }
        defer { for k in env.keys { unsetenv(k) } }
        let served = try ModelWeights.read("hf-hub:timm/vit-test"), local = try ModelWeights.read(o.experimentDirectory + "/model.safetensors")
        XCTAssertEqual(served.kind, .modelFile)
        XCTAssertEqual(served.model.config, local.model.config)
        for (k, t) in local.tensors { XCTAssertEqual(served.tensors[k]?.floats, t.floats, k) }
    }

    func testOneRunPerFolderAndResumeRefusesOtherDataOrSeed() throws {
        let data = try synth("exp-data", seed: 3), other = try synth("exp-other", seed: 4)
        let out = temporaryDirectory("exp-out")
        _ = try TrainingRun(options: runOptions(data, out)).run()
        // A second fresh run into the folder is refused, naming the way out.
        XCTAssertThrowsError(try TrainingRun(options: runOptions(data, out)).run()) { e in
            XCTAssertTrue("\(e)".contains("holds another run") && "\(e)".contains("--resume auto") && "\(e)".contains("--overwrite"), "\(e)")
        }
        // A folder whose run ended before its first step (out of memory sizing the batch: the
        // process exits there) holds only config.json and an empty metrics.jsonl; the same
        // command again starts afresh in it (it was refused, pointing at a --resume auto that
        // had no checkpoint).
        let stale = temporaryDirectory("exp-stale")
        try FileManager.default.createDirectory(atPath: stale + "/r", withIntermediateDirectories: true)
        try Data("{}".utf8).write(to: URL(fileURLWithPath: stale + "/r/config.json"))
        XCTAssertTrue(FileManager.default.createFile(atPath: stale + "/r/metrics.jsonl", contents: Data()))
        let again = try TrainingRun(options: runOptions(data, stale))
        var said: [String] = []
        again.log = { said.append($0) }
        _ = try again.run()
        XCTAssertTrue(said.contains("replaced the previous run's config.json, metrics.jsonl (it ended before its first step)"), "\(said)")
        XCTAssertTrue(FileManager.default.fileExists(atPath: stale + "/r/last.safetensors.lz4"))
        // Resuming on another dataset or with another seed is refused, naming both.
        XCTAssertThrowsError(try TrainingRun(options: runOptions(other, out, resume: "auto")).run()) { e in
            let ours = try! ShardSet(directory: data).manifest.contentHash, theirs = try! ShardSet(directory: other).manifest.contentHash
            XCTAssertTrue("\(e)".contains(ours) && "\(e)".contains(theirs) && "\(e)".contains("--allow-data-change"), "\(e)")
        }
        XCTAssertThrowsError(try TrainingRun(options: runOptions(data, out, seed: 7, resume: "auto")).run()) { e in
            XCTAssertTrue("\(e)".contains("--seed 42") && "\(e)".contains("--seed 7"), "\(e)")
        }
        var allowed = runOptions(data, out, seed: 7, resume: "auto")
        allowed.allowDataChange = true
        allowed.stopAfterSteps = 3
        XCTAssertNoThrow(try TrainingRun(options: allowed).run())
        // --overwrite starts afresh: the old run's files are gone before the new one writes.
        let oldBest = try Data(contentsOf: URL(fileURLWithPath: out + "/r/metrics.jsonl"))
        var fresh = runOptions(data, out, seed: 5)
        fresh.overwrite = true
        _ = try TrainingRun(options: fresh).run()
        XCTAssertEqual(try Checkpoint.read(out + "/r/last.safetensors.lz4").state.seed, 5)
        XCTAssertNotEqual(try Data(contentsOf: URL(fileURLWithPath: out + "/r/metrics.jsonl")), oldBest)
    }

    func testDefaultExperimentNamesAreTimestampedAndResumeAutoFindsTheNewest() throws {
        let out = temporaryDirectory("names")
        var c = DateComponents()
        (c.year, c.month, c.day, c.hour, c.minute, c.second) = (2026, 12, 1, 9, 5, 7)
        let when = Calendar.current.date(from: c)!
        XCTAssertEqual(ExperimentFolder.timestampedName(when), "radar_20261201_090507")
        XCTAssertEqual(ExperimentFolder.defaultName(output: out, resume: nil, now: when), "radar_20261201_090507")
        try FileManager.default.createDirectory(atPath: out + "/radar_20261201_090507", withIntermediateDirectories: true)
        XCTAssertEqual(ExperimentFolder.defaultName(output: out, resume: nil, now: when), "radar_20261201_090507_2", "never an existing folder")
        // --resume auto without --experiment: the newest folder with a last checkpoint.
        for (name, age) in [("a", 300.0), ("b", 10.0), ("c", 100.0)] {
            try FileManager.default.createDirectory(atPath: "\(out)/\(name)", withIntermediateDirectories: true)
            XCTAssertTrue(FileManager.default.createFile(atPath: "\(out)/\(name)/last.safetensors.lz4", contents: Data([1]),
                                                         attributes: [.modificationDate: Date().addingTimeInterval(-age)]))
        }
        XCTAssertEqual(ExperimentFolder.defaultName(output: out, resume: "auto"), "b")
        XCTAssertTrue(ExperimentFolder.defaultName(output: out + "/none", resume: "auto").hasPrefix("radar_"))
    }

    func testInitFromLoadsEveryWeight() throws {
        let (trainer, _, _) = try makeTinyTrainer()
        let dir = temporaryDirectory("initfrom")
        try ModelFile.write(trainer.ctx.params, config: trainer.model.config, to: dir + "/model.safetensors")
        let data = try synth("initfrom-data", seed: 3)
        var o = runOptions(data, dir + "/out")
        o.initFrom = dir + "/model.safetensors"
        let run = try TrainingRun(options: o)
        XCTAssertEqual(run.ctx.params.downloadValues(), trainer.ctx.params.downloadValues(), "every parameter from the file")
        XCTAssertEqual(run.ctx.params.downloadBuffers(), trainer.ctx.params.downloadBuffers(), "and every buffer")
        var lines: [String] = []
        run.log = { lines.append($0) }
        _ = try run.run()
        XCTAssertTrue(lines.contains { $0.contains("initialised every weight from") && $0.contains("RADAR model file") }, "\(lines)")
        // Weights of another config: the config fields that differ, and what to pass (the error
        // listed only the tensors whose shapes differ).
        var other = runOptions(data, dir + "/out2")
        other.initFrom = dir + "/model.safetensors"
        other.config.embedDim *= 2
        XCTAssertThrowsError(try TrainingRun(options: other)) {
            XCTAssertEqual("\($0)", "\(dir)/model.safetensors: it holds another model: its config differs from this run's in embed_dim: file "
                           + "\(trainer.model.config.embedDim), run \(other.config.embedDim): pass --config with the file's (its run folder's config.json)")
        }
    }

    /// 96 synthetic images in 12 sequences of 8: the test split is one sequence, so one class, where
    /// the other class has a single sequence (training keeps it). The run says so at its
    /// start and at the test, and metrics.json has null, not a silent NaN.
    func testOneClassSplitsAreWarnedAbout() throws {
        let data = temporaryDirectory("oneclass")
        // The first seed whose set is like that (the other class, with two or more sequences
        // before the test split, would join it).
        let seeds = (UInt64(1)...500).lazy.map { SyntheticSource(size: 32, count: 96, seed: $0, difficulty: 0.2) }
        let found = seeds.first { s in Set(s.testSequences().map { s.faces.label($0 * 8) }).count == 1 }
        let source = try XCTUnwrap(found, "no seed below 500 gives a one-class test split")
        XCTAssertEqual(source.testSequences(), [11], "seed \(source.faces.seed)")
        _ = try DatasetPreparer(options: PrepareOptions(output: data)).run(source)
        let out = temporaryDirectory("oneclass-out")
        var o = runOptions(data, out)
        o.stopAfterSteps = 0
        o.maxStepsPerEpoch = 2
        let run = try TrainingRun(options: o)
        var lines: [String] = []
        run.log = { lines.append($0) }
        let h = try run.run()
        let warnings = lines.filter { $0.hasPrefix("warning: the test split has") }
        XCTAssertEqual(warnings.count, 2, "at the start and at the test: \(lines)")
        guard warnings.count == 2 else { return }
        XCTAssertTrue(warnings[0].contains("0 fake") || warnings[0].contains("0 real"), warnings[0])
        XCTAssertFalse(h.testMetrics["auc"]!.isFinite)
        let metrics = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out + "/r/metrics.json"))) as! [String: Any]
        XCTAssertTrue((metrics["test_metrics"] as! [String: Any])["auc"] is NSNull)
    }

    /// A run that diverges (a learning rate of 1e6) says so: one warning at the first skipped
    /// step, skips counted in the epoch line, "nan" (printf wrote "-nan") and the test AUC's real
    /// reason (it said "the test split has one class" for NaN outputs).
    func testADivergingRunSaysSo() throws {
        let data = try synth("diverge-data", seed: 3)
        var o = runOptions(data, temporaryDirectory("diverge-out"))
        (o.learningRate, o.stopAfterSteps, o.maxStepsPerEpoch, o.epochs) = (1e6, 0, 3, 1)
        let run = try TrainingRun(options: o)
        var lines: [String] = []
        run.log = { lines.append($0) }
        let h = try run.run()
        XCTAssertGreaterThan(run.trainer.skippedSteps, 0, "\(lines)")
        XCTAssertEqual(lines.filter { $0.hasPrefix("warning: optimizer step") }.count, 1, "\(lines)")
        XCTAssertTrue(lines.contains { $0.contains("its loss or gradients are not finite; if this goes on, the learning rate (--learning-rate 1e+06) may be too high") },
                      "\(lines)")
        let epoch = try XCTUnwrap(lines.first { $0.hasPrefix("epoch 1/1") }, "\(lines)")
        XCTAssertTrue(epoch.contains("train_loss nan ") && epoch.hasSuffix("(\(run.trainer.skippedSteps) optimizer step\(run.trainer.skippedSteps == 1 ? "" : "s") skipped: not finite)"),
                      epoch)
        XCTAssertFalse(lines.contains { $0.contains("-nan") }, "\(lines)")
        // TensorBoard: the skipped steps counted at the epoch's end, the NaN losses as NaN.
        let tb = try tensorBoardScalars(o.experimentDirectory + "/tensorboard")
        XCTAssertEqual(tb["epoch/skipped_steps"]?.map(\.bits), [Float(run.trainer.skippedSteps).bitPattern], "\(tb)")
        XCTAssertTrue(tb["train/loss"]?.contains { Float(bitPattern: $0.bits).isNaN } ?? false, "\(tb)")
        let last = try XCTUnwrap(run.testAUCLine(h))
        XCTAssertTrue(last.hasPrefix("test AUC undefined: ") && last.contains("scores are NaN"), last)
    }

    /// --pretrained says what it loaded (a good load used to log nothing).
    func testPretrainedLogsWhatItLoaded() throws {
        let data = try synth("pretrained-data", seed: 3)
        var o = runOptions(data, temporaryDirectory("pretrained-out"))
        (o.config.imgSize, o.config.patchSize, o.config.embedDim, o.config.depth, o.config.numHeads) = (48, 8, 16, 1, 2)
        o.pretrained = fixturesDirectory.appendingPathComponent("timm/vit_tiny_grid4.safetensors").path
        o.stopAfterSteps = 1
        let run = try TrainingRun(options: o)
        var lines: [String] = []
        run.log = { lines.append($0) }
        _ = try run.run()
        let encoder = run.model.layout.parameters.filter { $0.name.hasPrefix("encoder.") }.count
        XCTAssertTrue(lines.contains { $0.hasPrefix("loaded \(encoder) encoder tensors from ") && $0.contains("resampled to the 6x6 patch grid: pos_embed") }, "\(lines)")
    }

    /// --pretrained hf-hub:ORG/NAME: the same weights from the (stand-in) Hub's cache, the run
    /// normalising as the weights' config.json says, in its config.json and checkpoints.
    func testPretrainedFromTheHubTakesItsNormalisation() throws {
        let file = fixturesDirectory.appendingPathComponent("timm/vit_tiny_grid4.safetensors").path
        let (hub, storage, _) = try standInHub(model: try Data(contentsOf: URL(fileURLWithPath: file)))
        defer { hub.stop(); storage.stop() }
        let data = try synth("hub-data", seed: 3)
        var o = runOptions(data, temporaryDirectory("hub-out"))
        (o.config.imgSize, o.config.patchSize, o.config.embedDim, o.config.depth, o.config.numHeads) = (48, 8, 16, 1, 2)
        o.pretrained = "hf-hub:timm/vit-test"
        o.stopAfterSteps = 1
        let cache = temporaryDirectory("hub-run-cache")
        try o.resolvePretrained(environment: ["HF_ENDPOINT": hub.base, "HF_HUB_CACHE": cache, "HF_TOKEN_PATH": "/nonexistent-radar-token"])
        let run = try TrainingRun(options: o)
        var lines: [String] = []
        run.log = { lines.append($0) }
        _ = try run.run()
        XCTAssertTrue(lines.contains { $0 == "--pretrained hf-hub:timm/vit-test: \(cache)/models--timm--vit-test/snapshots/\(HubModelTests.commit)/model.safetensors" }, "\(lines)")
        XCTAssertTrue(lines.contains { $0.hasPrefix("normalisation mean 0.5,0.5,0.5 std 0.5,0.5,0.5 from ") && $0.hasSuffix("not the config's mean 0.485,0.456,0.406 std 0.229,0.224,0.225") }, "\(lines)")
        XCTAssertTrue(lines.contains { $0.hasPrefix("loaded ") && $0.contains("encoder tensors from \(cache)/models--timm--vit-test/snapshots/") }, "\(lines)")
        let saved = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: o.experimentDirectory + "/config.json"))) as! [String: Any]
        XCTAssertEqual((saved["model"] as? [String: Any])?["mean"] as? [Double], [0.5, 0.5, 0.5], "\(saved)")
    }
}
