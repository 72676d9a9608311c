import ArgumentParser
import Foundation
import RadarCLI
import RadarCore

/// Loads weights (a RADAR checkpoint, a model file or a PyTorch state dict with `--config`) into a
/// fresh model.
func loadCheckpointModel(_ path: String, config: String?, threads: Int, device: String?, precision: String?) throws -> (RADARModel, ExecutionContext, Trainer) {
    let weights = try ModelWeights.read(path, config: try config.map(RADARConfig.resolve))
    let ctx = ExecutionContext(backend: try Devices.backend(device ?? Devices.defaultName, threads: threads, precision: precision), layout: weights.model.layout)
    try weights.load(into: ctx.params, source: path)
    return (weights.model, ctx, Trainer(model: weights.model, ctx: ctx))
}

struct Evaluate: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Metrics of a checkpoint on a split of a prepared dataset (JSON on stdout): the model's, each head's (boundary, frequency, reasoning, external), the gate and the mean attention per class.")
    @Option(help: "Weights: a checkpoint (.safetensors.lz4), model.safetensors, a run's folder (its best checkpoint), hf-hub:ORG/NAME[@REVISION] (the repository's model.safetensors, from the Hugging Face cache), or a PyTorch state dict (safetensors, optionally LZ4-framed) with --config.") var checkpoint: String
    @Option(help: "Preset (tiny, mid, full) or config JSON file, for a state dict without RADAR metadata.") var config: String?
    @Option(help: "Prepared dataset directory.") var data: String
    @Option(help: "Split: train, val or test.") var split = "test"
    @Option(help: "Images per batch.") var batchSize = 32
    @Option(help: "Threads.") var threads = ProcessInfo.processInfo.activeProcessorCount
    @Option(help: "Backend: cpu, cuda, cuda:N (RADAR_CUDA_DRIVER=emulator: the emulated device), cuda-emulated or cpu-fenced (default: RADAR_DEVICE, else cpu).") var device: String?
    @Option(help: ArgumentHelp(stringLiteral: Devices.precisionHelp)) var precision: String?
    @Option(name: .customLong("perturb"), help: "Also evaluate on degraded images, one pass each (repeatable): jpeg:Q (quality 1-100), blur:3 or blur:5, noise:SIGMA (grey levels), scale:F (shrunk to F of the side, then enlarged back).")
    var perturbations: [String] = []
    @Option(help: "Also write each image's scores as CSV: perturbation (empty for the clean pass), key, sequence, label, probability and each head's (boundary, frequency, reasoning, external, the last iteration's attention on each kind of evidence).")
    var predictions: String?
    @Option(help: "Also 95% confidence intervals of the AUC, accuracy and EER from this many bootstrap replicates over sequences (each draws the split's sequences with replacement and takes all their frames; 1000 is usual; 0: none).")
    var bootstrap = 0
    @Option(help: "The bootstrap's seed (the same seed and scores give the same intervals).") var bootstrapSeed: UInt64 = 0
    @Option(help: ArgumentHelp(stringLiteral: SplitScoring.temperatureHelp)) var temperature: String?
    @Option(help: ArgumentHelp(stringLiteral: SplitScoring.ttaHelp)) var tta: String?

    func validate() throws {
        try SplitScoring.validate(tta: tta)
        if let temperature { do { _ = try TemperatureScaling.resolve(temperature) } catch { throw ValidationError("\(error)") } }
        try requireFlag((0...100_000).contains(bootstrap), "bootstrap", "in 0...100000", bootstrap)
        try requireFlag(batchSize >= 1, "batch-size", "at least 1", batchSize)  // no upper bound: at most the images scored are batched
        try requireThreads(threads)
        try requireFlag(Split(rawValue: split) != nil, "split", "train, val or test", split)
        for p in perturbations {
            do { _ = try Perturbation(parsing: p) } catch { throw ValidationError("\(error)") }
        }
    }

    func run() throws {
        try failing {
            // Before any work: a pass over WildDeepfake's test split takes a while.
            if let predictions { try requireWritableFile(predictions, flag: "--predictions", expected: "a file name (FILE.csv)") }
            let set = try ShardSet(directory: data)  // before the model: a wrong folder is said at once
            if let n = set.indexNote { logLine(n) }
            let (model, _, trainer) = try loadCheckpointModel(checkpoint, config: config, threads: threads, device: device, precision: precision)
            let sp = Split(rawValue: split)!
            let c = model.config
            let scoring = SplitScoring(set: set, trainer: trainer, batchSize: batchSize, device: device, tta: tta)
            let temperature = try self.temperature.map { try TemperatureScaling.resolve($0) } ?? 1
            var csv = "perturbation,key,sequence,label,probability,boundary,frequency,reasoning,external,attention_boundary,attention_frequency,logit\n"
            // One pass over the split: the model's metrics and each head's.
            func pass(_ perturbation: Perturbation?) throws -> [String: Any] {
                var scores: [Float] = [], logits: [Float] = [], labels: [Int] = [], seqs: [String] = []
                var heads = HeadMetrics(useBadm: c.useBadm, useAadm: c.useAadm)
                for r in try scoring.run(set.refs(sp), perturbation: perturbation, progress: perturbation.map { "evaluate \($0)" } ?? "evaluate") {
                    let e = r.explanation
                    let p = TemperatureScaling.probability(logit: e.logit, modelProbability: e.probability, temperature: temperature)
                    scores.append(p); logits.append(e.logit); labels.append(r.label); seqs.append(r.sequence)
                    heads.append(e)
                    if predictions != nil {
                        let last = e.attention.last ?? [.nan, .nan]
                        csv += ([perturbation?.description ?? "", r.key, r.sequence, String(r.label)].map(Self.csvField)
                                + [p, e.boundary, e.frequency, e.reasoning, e.external, last[0], last[1], e.logit].map { $0.map(Self.csvNumber) ?? "" })
                            .joined(separator: ",") + "\n"
                    }
                }
                guard !scores.isEmpty else { throw ValidationError("\(data): the \(split) split is empty") }
                var out: [String: Any] = ["images": scores.count]
                for (k, v) in BinaryMetrics.all(scores: scores, labels: labels, sequences: seqs, logits: logits, temperature: temperature) { out[k] = v }
                for (k, v) in heads.report(labels: labels, sequences: seqs) { out[k] = v }
                if bootstrap > 0, let b = SequenceBootstrap.run(scores: scores, labels: labels, sequences: seqs, replicates: bootstrap, seed: bootstrapSeed) {
                    out["bootstrap"] = b.json
                }
                if let why = BinaryMetrics.undefinedAUCReason(scores: scores, labels: labels) {
                    logLine("radar evaluate: warning: \(perturbation.map { "\($0): " } ?? "")the metrics that need it are undefined (null): \(why)")
                }
                return out
            }
            var out = try pass(nil)
            out["checkpoint"] = checkpoint
            out["split"] = split
            if temperature != 1 { out["temperature"] = temperature }
            if let tta { out["tta"] = tta }
            if !perturbations.isEmpty {
                out["perturbations"] = try perturbations.map { text -> [String: Any] in
                    let p = try Perturbation(parsing: text)
                    var r = try pass(p)
                    r["perturbation"] = p.description
                    return r
                }
            }
            if let predictions {
                try writeFileAtomically(Data(csv.utf8), to: predictions)
                out["predictions"] = predictions
            }
            printJSON(out)
        }
    }
}

extension SplitScoring {
    static let temperatureHelp = "Divide the model's final logit by this temperature before the sigmoid (temperature scaling: the same ranking and decisions, calibrated probabilities): a number, or radar calibrate's JSON output (a run's calibration.json)."

    static let ttaHelp = "Test-time augmentation: flip (each image also mirrored left to right, the two views' final logits averaged, and each head's probability, the gate and the attention; twice the forward passes)."

    /// A split on this process (`radar evaluate`, `radar calibrate`).
    init(set: ShardSet, trainer: Trainer, batchSize: Int, device: String?, tta: String?) {
        self.init(set: set, trainer: trainer, batchSize: batchSize,
                  loaderThreads: Devices.defaultLoaderThreads(device: device ?? Devices.defaultName, localRanks: 1), flip: tta == "flip")
    }

    /// `--tta`: nothing or one of `TestTimeFlip.names`.
    static func validate(tta: String?) throws {
        if let tta, !TestTimeFlip.names.contains(tta) {
            throw ValidationError("--tta must be " + TestTimeFlip.names.joined(separator: " or ") + ", got \(tta)")
        }
    }
}

extension Evaluate {
    /// RFC 4180: quoted when it holds a comma, a quote or a line break (quotes doubled).
    static func csvField(_ s: String) -> String {
        s.contains(where: { $0 == "," || $0 == "\"" || $0 == "\n" || $0 == "\r" }) ? "\"" + s.replacingOccurrences(of: "\"", with: "\"\"") + "\"" : s
    }

    /// Nine significant digits (a Float's round trip); nan/inf as Python's float() reads them.
    /// A disabled branch's column is empty.
    static func csvNumber(_ v: Float) -> String { v.isNaN ? "nan" : v.isInfinite ? (v < 0 ? "-inf" : "inf") : String(format: "%.9g", v) }
}

struct Predict: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Probability of 'fake' and the label for images (PNG/JPEG files or directories).")
    @Option(help: "Weights: a checkpoint (.safetensors.lz4), model.safetensors, a run's folder (its best checkpoint), hf-hub:ORG/NAME[@REVISION] (the repository's model.safetensors, from the Hugging Face cache), or a PyTorch state dict (safetensors, optionally LZ4-framed) with --config.") var checkpoint: String
    @Option(help: "Preset (tiny, mid, full) or config JSON file, for a state dict without RADAR metadata.") var config: String?
    @Flag(help: "One JSON document on stdout (predictions and unreadable files) instead of tab-separated lines.") var json = false
    @Flag(help: "Also what each head said and how the evidence refinement weighed the evidence: the boundary, frequency, reasoning and external probabilities, the gate, each iteration's probability and its attention on the boundary and frequency evidence.") var explain = false
    @Flag(help: "Also one verdict per folder (a video's frames): the mean probability of its images, as sequence AUC aggregates a sequence's frames.") var byFolder = false
    @Flag(help: "Also where the verdict comes from: each ViT patch of the resized image covered in turn by the normalisation mean colour, and how much that lowers p(fake) (one forward per patch: 196 per image on the full config).") var occlusion = false
    @Option(help: "With --occlusion: also write each image with its occlusion map laid over it (red: the patch argued fake; blue: real) as DIR/NNNNNN_<name>.png (NNNNNN: the image's place in the list).") var occlusionMaps: String?
    @Flag(help: "Also which patches the class token gathers from: attention rollout over the encoder (each block's self-attention averaged over its heads and mixed half and half with the identity for the residual path, multiplied through the blocks), a weight per ViT patch (they sum to at most 1). The same one forward per batch.") var rollout = false
    @Option(help: "With --rollout: also write each image with its rollout laid over it (orange, from none at the image's least weight to strongest at its most) as DIR/NNNNNN_<name>.png.") var rolloutMaps: String?
    @Option(help: "Images per forward pass (at most the number of images).") var batchSize = 32
    @Option(help: "Threads.") var threads = ProcessInfo.processInfo.activeProcessorCount
    @Option(help: "Backend: cpu, cuda, cuda:N (RADAR_CUDA_DRIVER=emulator: the emulated device), cuda-emulated or cpu-fenced (default: RADAR_DEVICE, else cpu).") var device: String?
    @Option(help: ArgumentHelp(stringLiteral: Devices.precisionHelp)) var precision: String?
    @Option(help: "Files larger than this many MiB are listed as unreadable, never read (as prepare skips them).")
    var maxImageMb = 64
    @Option(help: ArgumentHelp(stringLiteral: SplitScoring.temperatureHelp + " Occlusion drops are then differences of the scaled probabilities.")) var temperature: String?
    @Option(help: ArgumentHelp(stringLiteral: SplitScoring.ttaHelp + " Not with --occlusion or --rollout (their maps are of one view).")) var tta: String?
    @Argument(help: "Images, or directories searched at any depth for .png/.jpg/.jpeg/.webp files (hidden ones left out); - or a pipe is an image read to its end (curl -s URL | radar predict ... -).") var paths: [String]

    func validate() throws {
        try requireFlag(batchSize >= 1, "batch-size", "at least 1", batchSize)  // no upper bound: at most the images scored are batched
        try requireThreads(threads)
        try requireFlag((1...4096).contains(maxImageMb), "max-image-mb", "in 1...4096", maxImageMb)
        if let temperature { do { _ = try TemperatureScaling.resolve(temperature) } catch { throw ValidationError("\(error)") } }
        try SplitScoring.validate(tta: tta)
        if tta != nil && (occlusion || rollout) { throw ValidationError("--tta with --\(occlusion ? "occlusion" : "rollout"): its map is of one view; leave out --tta") }
        if occlusionMaps != nil && !occlusion { throw ValidationError("--occlusion-maps needs --occlusion") }
        if rolloutMaps != nil && !rollout { throw ValidationError("--rollout-maps needs --rollout") }
        if let a = occlusionMaps, let b = rolloutMaps, (a as NSString).standardizingPath == (b as NSString).standardizingPath {
            throw ValidationError("--occlusion-maps and --rollout-maps name the same folder (\(a)): their files would have the same names")
        }
    }

    func run() throws {
        try failing {
            let limit = maxImageMb << 20
            let temperature = try self.temperature.map { try TemperatureScaling.resolve($0) } ?? 1
            func scaled(_ e: Explanation) -> Float { TemperatureScaling.probability(logit: e.logit, modelProbability: e.probability, temperature: temperature) }
            var files: [String] = []
            // Files found in folders, opened by the bytes of their names (a name that is not UTF-8
            // is shown with \xNN and could not be opened by that text).
            var namedBytes: [String: [CChar]] = [:]
            // Given by name: a pipe (-, /dev/stdin, <(curl ...)) is read to its end, where one in a
            // folder is left unread (a FIFO named like an image blocked the walk for ever).
            var given = Set<String>()
            for argument in paths {
                // A name that is not UTF-8 is opened by its bytes and shown with \xNN.
                let raw = rawArgument(argument)
                let p = raw.map { displayName($0.map { UInt8(bitPattern: $0) }) } ?? argument
                if p == "-" {
                    // Said before any work: a terminal would wait for bytes that never come, a
                    // closed one was "No such file or directory", and a second - read nothing.
                    guard !StandardStreams.wasClosed(STDIN_FILENO) else { throw ValidationError("-: standard input is closed: give the image on it (radar predict --checkpoint W - < face.png)") }
                    guard isatty(STDIN_FILENO) == 0 else { throw ValidationError("-: standard input is a terminal: give the image on it (radar predict --checkpoint W - < face.png, or curl -s URL | radar predict --checkpoint W -)") }
                    guard !given.contains(p) else { throw ValidationError("- is given twice: standard input holds one image") }
                    files.append(p)
                    namedBytes[p] = Array("/dev/stdin".utf8CString)
                    given.insert(p)
                    continue
                }
                var st = stat()
                guard stat((raw ?? Array(p.utf8CString.dropLast())) + [0], &st) == 0 else {
                    throw ValidationError("\(p): " + (errno == ENOENT ? "no such file or directory" : String(cString: strerror(errno))))
                }
                if (st.st_mode & S_IFMT) == S_IFDIR {
                    // Its images at any depth (frames are often in a folder per video), in path
                    // order; hidden files and folders are left out.
                    let tree: [FolderEntry]
                    do {
                        tree = try folderTree(p, rootBytes: raw, skipHidden: true) { folder, reason in
                            logLine("radar predict: \(tableField(folder)): cannot list the folder (\(reason)): its images are left out")
                        }
                    } catch { throw ValidationError("\(error)") }
                    var found: [FolderEntry] = []
                    var otherFormats: [String: Int] = [:]
                    for entry in tree {
                        let ext = (entry.name as NSString).pathExtension.lowercased()
                        if ["png", "jpg", "jpeg", "webp"].contains(ext) { found.append(entry) }
                        else if let kind = ImageCodec.otherImageExtensions[ext] { otherFormats[kind, default: 0] += 1 }
                    }
                    for entry in found.sorted(by: { $0.name < $1.name }) {
                        let shown = (p as NSString).appendingPathComponent(entry.name)
                        files.append(shown)
                        namedBytes[shown] = entry.path
                    }
                    if !otherFormats.isEmpty {  // images of formats not read: said, not silently passed over
                        let counts = otherFormats.sorted { $0.key < $1.key }.map { "\($0.value) \($0.key)" }.joined(separator: ", ")
                        logLine("radar predict: \(tableField(p)): left out \(counts) image\(otherFormats.values.reduce(0, +) == 1 ? "" : "s") (only PNG, JPEG and WebP are read)")
                    }
                } else {
                    files.append(p)
                    given.insert(p)
                    if let raw { namedBytes[p] = raw + [0] }
                }
            }
            guard !files.isEmpty else {
                // A prepared dataset's images are inside its shards: evaluate reads those.
                let prepared = paths.first { FileManager.default.fileExists(atPath: ($0 as NSString).appendingPathComponent("manifest.json")) }
                throw ValidationError("no images to predict: \(paths.joined(separator: ", ")) hold\(paths.count == 1 ? "s" : "") no .png, .jpg, .jpeg or .webp file"
                                      + (prepared.map { " (\($0) is a prepared dataset: radar evaluate --checkpoint W --data \($0) --split S --predictions FILE.csv scores its images)" } ?? ""))
            }
            for (flag, folder) in [("occlusion-maps", occlusionMaps), ("rollout-maps", rolloutMaps)] {  // before any work
                guard let dir = folder else { continue }
                // (makeDirectory names a file in the way; Foundation said "File exists".)
                do { try makeDirectory(dir) } catch let e as DatasetError { throw ValidationError("--\(flag) \(e)") }
                guard access(dir, W_OK) == 0 else { throw ValidationError("--\(flag) \(dir): the folder is not writable") }
            }
            let (model, ctx, trainer) = try loadCheckpointModel(checkpoint, config: config, threads: threads, device: device, precision: precision)
            // Batches of --batch-size: the images decoded on every core, then one forward.
            // Sized for the images there are: the forward's memory grows with the batch.
            let c = model.config, per = 3 * c.imgSize * c.imgSize, batchSize = max(1, min(self.batchSize, files.count))
            let host = HostTensor(Shape(batchSize, 3, c.imgSize, c.imgSize))
            let input = DeviceTensor(ctx.backend, host.shape)
            let probs = UnsafeMutablePointer<Float>.allocate(capacity: batchSize)
            defer { probs.deallocate() }
            // --occlusion: the covered copies go in batches of --batch-size (at most one per cell),
            // however few images there are.
            let cells = (c.imgSize / c.patchSize) * (c.imgSize / c.patchSize), occlusionBatch = occlusion ? min(self.batchSize, cells) : 0
            let occlusionHost = HostTensor(Shape(max(occlusionBatch, 1), 3, c.imgSize, c.imgSize))
            let occlusionInput = occlusion ? DeviceTensor(ctx.backend, occlusionHost.shape) : nil
            let occlusionProbs = UnsafeMutablePointer<Float>.allocate(capacity: max(occlusionBatch, 1))
            defer { occlusionProbs.deallocate() }
            var predictions: [[String: Any]] = [], failures: [[String: Any]] = [], predicted = 0, warnedNonFinite = false
            var folders: [String: [Double]] = [:]  // --by-folder: each folder's probabilities
            // Progress on stderr where the results do not show it as they come: with --json (one
            // document at the end) or with stdout going to a file or a pipe. On a terminal the
            // lines themselves are the progress.
            let bar = files.count > batchSize && (json || isatty(STDOUT_FILENO) == 0)
                ? ProgressReporter("predict", total: files.count, unit: "img") : nil
            let opened = namedBytes, named = given  // read from every decoding thread
            for start in stride(from: 0, to: files.count, by: batchSize) {
                bar?.update(start)
                let chunk = Array(files[start..<min(start + batchSize, files.count)])
                // Slot i of the host batch is chunk[i]'s; failed images leave their slot unused.
                let errors = UnsafeMutableBufferPointer<String?>.allocate(capacity: chunk.count)
                errors.initialize(repeating: nil)
                defer { errors.deinitialize(); errors.deallocate() }
                // --occlusion covers the resized images.
                let resized = UnsafeMutableBufferPointer<RGBImage?>.allocate(capacity: chunk.count)
                resized.initialize(repeating: nil)
                defer { resized.deinitialize(); resized.deallocate() }
                let keepResized = occlusion || rolloutMaps != nil
                let slots = host.pointer
                concurrentPerform(iterations: chunk.count) { i in
                    do {
                        // Its kind and size first: a 3 GiB file named .png was read whole (32 at
                        // a time), a FIFO blocked for ever.
                        let bytes = opened[chunk[i]] ?? Array(chunk[i].utf8CString)
                        var st = stat()
                        let known = stat(bytes, &st) == 0, kind = st.st_mode & S_IFMT
                        let pipe = named.contains(chunk[i]) && known && (kind == S_IFIFO || kind == S_IFSOCK)
                        if known, !pipe, let problem = imageFileProblem(st, limit: limit) {
                            throw ValidationError("\(chunk[i]): \(problem)\(problem.hasSuffix("limit") ? " (--max-image-mb)" : "")")
                        }
                        let d: Data
                        do { d = try readInputFile(bytes: bytes, limit: limit) } catch { throw ValidationError("\(chunk[i]): \(error)") }
                        // The reference's evaluation transform: OpenCV INTER_LINEAR resize, then normalise.
                        let img = ImageResize.resize(try ImageCodec.decode(d, item: chunk[i]), width: c.imgSize, height: c.imgSize, mode: .openCVLinear)
                        Augmenter.normalize(img, mean: c.mean, std: c.std, into: slots + i * per)
                        if keepResized { resized[i] = img }
                    } catch { errors[i] = "\(error)" }
                }
                let good = chunk.indices.filter { errors[$0] == nil }
                for (k, i) in good.enumerated() where k != i { (slots + k * per).update(from: slots + i * per, count: per) }
                var explained: [Explanation] = [], rollouts: [[Float]] = []
                if !good.isEmpty {
                    let view = input.tensor.slice(from: 0, Shape(good.count, 3, c.imgSize, c.imgSize))
                    if tta == nil { ctx.backend.upload(UnsafeBufferPointer(start: slots, count: good.count * per), into: view) }  // TestTimeFlip uploads both views
                    func forward() throws {
                        if tta != nil {
                            explained = try TestTimeFlip.explain(trainer, images: UnsafeBufferPointer(start: slots, count: good.count * per), view: view)
                            for (k, e) in explained.enumerated() { probs[k] = scaled(e) }
                        } else if explain || temperature != 1 {  // the logits too
                            explained = try trainer.explain(images: view)
                            for (k, e) in explained.enumerated() { probs[k] = scaled(e) }
                        } else {
                            try trainer.predict(images: view, into: probs)
                        }
                    }
                    if rollout { rollouts = try trainer.attentionRollout(forward).1 } else { try forward() }
                }
                let chunkProbs = Array(UnsafeBufferPointer(start: probs, count: good.count))
                var maps: [Occlusion.Map] = []
                if let occlusionInput {
                    for (k, i) in good.enumerated() {
                        maps.append(try Occlusion.map(resized[i]!, probability: chunkProbs[k], config: c, batch: occlusionHost.pointer,
                                                      capacity: occlusionBatch) { n in
                            let view = occlusionInput.tensor.slice(from: 0, Shape(n, 3, c.imgSize, c.imgSize))
                            ctx.backend.upload(UnsafeBufferPointer(start: occlusionHost.pointer, count: n * per), into: view)
                            if temperature != 1 { return try trainer.explain(images: view).map(scaled) }
                            try trainer.predict(images: view, into: occlusionProbs)
                            return Array(UnsafeBufferPointer(start: occlusionProbs, count: n))
                        })
                    }
                }
                var k = 0
                for (i, f) in chunk.enumerated() {
                    if let e = errors[i] {
                        logLine("radar predict: \(tableField(e))")
                        failures.append(["path": f, "error": e])
                        continue
                    }
                    // A non-finite probability (weights that diverged) has no label: "real" was printed.
                    let prob = chunkProbs[k], label = !prob.isFinite ? "undefined" : prob >= 0.5 ? "fake" : "real"
                    if !prob.isFinite && !warnedNonFinite {
                        logLine("radar predict: warning: \(f): the probability is \(prob.isNaN ? "nan" : "\(prob)"): the weights give non-finite outputs (a diverged checkpoint?)")
                        warnedNonFinite = true
                    }
                    let detail = explain ? explained[k] : nil
                    let map = occlusion ? maps[k] : nil, weights = rollout ? rollouts[k] : nil
                    let name = String(format: "%06d_", start + i) + ((f as NSString).lastPathComponent as NSString).deletingPathExtension + ".png"
                    var mapFile: String?, rolloutFile: String?
                    if let map, let dir = occlusionMaps {
                        mapFile = (dir as NSString).appendingPathComponent(name)
                        try writeFileAtomically(try ImageCodec.encodePNG(Occlusion.overlay(resized[i]!, map)), to: mapFile!)
                    }
                    if let weights, let dir = rolloutMaps {
                        rolloutFile = (dir as NSString).appendingPathComponent(name)
                        // Above the image's least weight (the weights spread little around 1 / patches).
                        let least = weights.filter(\.isFinite).min() ?? 0
                        try writeFileAtomically(try ImageCodec.encodePNG(Heatmap.overlay(resized[i]!, grid: c.gridSize, cell: c.patchSize, values: weights.map { $0 - least },
                                                                                         positive: [255, 150, 0], negative: [255, 150, 0])), to: rolloutFile!)
                    }
                    k += 1
                    predicted += 1
                    if byFolder { folders[parentPath(f), default: []].append(Double(prob)) }
                    if json {
                        var p: [String: Any] = ["path": f, "probability_fake": Double(prob), "label": label]
                        if let detail { p["explanation"] = Self.explanationJSON(detail) }
                        if let map {
                            var o: [String: Any] = ["grid": map.grid, "cell": map.cell, "fill": map.fill.map(Int.init),
                                                    "drop": (0..<map.grid).map { r in map.drops[(r * map.grid)..<((r + 1) * map.grid)].map { Double($0) } }]
                            if let mapFile { o["map"] = mapFile }
                            p["occlusion"] = o
                        }
                        if let weights {
                            let g = c.gridSize
                            var o: [String: Any] = ["grid": g, "cell": c.patchSize,
                                                    "weight": (0..<g).map { r in weights[(r * g)..<((r + 1) * g)].map { Double($0) } }]
                            if let rolloutFile { o["map"] = rolloutFile }
                            p["rollout"] = o
                        }
                        predictions.append(p)
                    } else {
                        print("\(tableField(f))\t\(Self.decimal(prob))\t\(label)" + (detail.map { "\t" + Self.explanationText($0) } ?? "")
                              + (map.map { "\t" + Self.occlusionText($0) } ?? "") + (mapFile.map { "\tocclusion_map=" + tableField($0) } ?? "")
                              + (weights.map { "\t" + Self.rolloutText($0, grid: c.gridSize) } ?? "") + (rolloutFile.map { "\trollout_map=" + tableField($0) } ?? ""))
                    }
                }
            }
            bar?.update(files.count)  // after the last batch only (a failure leaves no full bar)
            // --by-folder: the mean probability of each folder's images (NaN when one is NaN).
            let verdicts = folders.keys.sorted().map { folder -> (String, Int, Double, String) in
                let p = folders[folder]!, mean = p.reduce(0, +) / Double(p.count)
                return (folder, p.count, mean, !mean.isFinite ? "undefined" : mean >= 0.5 ? "fake" : "real")
            }
            if json {
                var doc: [String: Any] = ["checkpoint": checkpoint, "images": predictions.count, "predictions": predictions, "unreadable": failures]
                if temperature != 1 { doc["temperature"] = temperature }
                if let tta { doc["tta"] = tta }
                if byFolder { doc["folders"] = verdicts.map { ["path": $0.0, "images": $0.1, "probability_fake": $0.2, "label": $0.3] as [String: Any] } }
                printJSON(doc)
            } else {
                for v in verdicts { print("\(tableField(v.0))/\t\(Self.decimal(Float(v.2)))\t\(v.3)\t\(v.1) image\(v.1 == 1 ? "" : "s")") }
            }
            // Some images unreadable: listed, the others predicted, status 0; none readable: status 1.
            if !failures.isEmpty && predicted == 0 { throw ExitCode.failure }
        }
    }
}

extension Predict {
    /// Six decimals, or nan/inf (a diverged checkpoint).
    static func decimal(_ v: Float) -> String { v.isNaN ? "nan" : v.isInfinite ? (v < 0 ? "-inf" : "inf") : String(format: "%.6f", v) }

    /// `--explain --json`: one object per image (a disabled branch's probability is null;
    /// `printJSON` writes non-finite values as null).
    static func explanationJSON(_ e: Explanation) -> [String: Any] {
        ["boundary_probability": e.boundary.map { Double($0) } ?? NSNull(), "frequency_probability": e.frequency.map { Double($0) } ?? NSNull(),
         "reasoning_probability": Double(e.reasoning), "external_probability": Double(e.external), "gate": Double(e.gate),
         "iteration_probabilities": e.iterations.map { Double($0) }, "logit": Double(e.logit),
         "attention": e.attention.map { ["boundary": Double($0[0]), "frequency": Double($0[1])] }]
    }

    /// `--occlusion` lines: the patch whose covering lowers p(fake) most, as
    /// `occlusion_top=ROW,COL:DROP` (row and column from the top left, from 0).
    static func occlusionText(_ m: Occlusion.Map) -> String {
        guard let top = m.drops.indices.filter({ m.drops[$0].isFinite }).max(by: { m.drops[$0] < m.drops[$1] }) else { return "occlusion_top=nan" }
        return "occlusion_top=\(top / m.grid),\(top % m.grid):" + String(format: "%+.6f", m.drops[top])
    }

    /// `--rollout` lines: the patch with the most weight, as `rollout_top=ROW,COL:WEIGHT`.
    static func rolloutText(_ w: [Float], grid: Int) -> String {
        guard let top = w.indices.filter({ w[$0].isFinite }).max(by: { w[$0] < w[$1] }) else { return "rollout_top=nan" }
        return "rollout_top=\(top / grid),\(top % grid):" + String(format: "%.6f", w[top])
    }

    /// `--explain` lines: tab-separated key=value fields after the label; attention per iteration
    /// as boundary/frequency, iterations separated by commas; a disabled branch is "off".
    static func explanationText(_ e: Explanation) -> String {
        ["boundary=" + (e.boundary.map(decimal) ?? "off"), "frequency=" + (e.frequency.map(decimal) ?? "off"),
         "reasoning=" + decimal(e.reasoning), "external=" + decimal(e.external), "gate=" + decimal(e.gate),
         "iterations=" + e.iterations.map(decimal).joined(separator: ","),
         "attention=" + e.attention.map { decimal($0[0]) + "/" + decimal($0[1]) }.joined(separator: ",")].joined(separator: "\t")
    }
}

struct Export: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Zip a run (best checkpoint, config, metrics, plots, README) for download.")
    @Option(help: "The run directory (outputs/<experiment>).") var resultsDir: String
    @Option(help: "Where the zip goes.") var outputDir = "exports"
    @Flag(help: "Also write a script that copies the zip from a pod with rsync (or scp).") var createDownloadScript = false
    @Option(help: "Instead of the zip, a folder (new, or empty) to publish the model on the Hugging Face Hub as it is: model.safetensors, config.json and a model card README.md (huggingface-cli upload ORG/NAME DIR; then --checkpoint hf-hub:ORG/NAME reads it).")
    var hubFolder: String?
    @Flag(help: "With --hub-folder, also model.onnx (radar export-onnx's model, the run's temperature included) and how to run it in the model card.") var onnx = false

    func validate() throws {
        if onnx && hubFolder == nil { throw ValidationError("--onnx goes with --hub-folder (radar export-onnx writes one file from any checkpoint)") }
    }

    func run() throws {
        try failing {
            if let hubFolder {
                try RunExport.hubFolder(results: resultsDir, to: hubFolder, onnx: onnx)
                print(hubFolder)
                return
            }
            let zip = try RunExport.export(results: resultsDir, to: outputDir, downloadScript: createDownloadScript)
            print(zip)
        }
    }
}
