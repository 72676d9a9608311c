import ArgumentParser
import Foundation
import RadarCLI
import RadarCore

/// `radar prepare`: WildDeepfake archives (downloaded or on disk) or real/ fake/ folders into
/// WebDataset shards plus manifest.json.
struct Prepare: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Turn WildDeepfake (Hugging Face archives) or real/ fake/ folders into a sharded dataset directory.")

    @Option(help: "hf (download), a directory of WildDeepfake archives, or a directory with real/ and fake/.")
    var source: String?
    @Option(help: "Output dataset directory.") var output: String
    @Flag(help: "Only validate an existing dataset directory (manifest against shards) and print its summary.")
    var checkOnly = false
    @Option(help: "Fraction of train sequences drawn for validation.") var valFraction = 0.05
    @Option(help: "Fraction of images drawn as test for sources without an official split (real/ fake/ folders).")
    var testFraction = 0.1
    @Option(help: "Seed of the split and sampling decisions.") var seed: UInt64 = 0
    @Option(help: "Keep at most this many images, sampled per class across the whole source.") var maxImages: Int?
    @Option(help: "Share of real images under --max-images (default: the source's ratio).") var realFraction: Double?
    @Option(help: "Samples per shard.") var shardSize = 1000
    @Option(help: "keep (the original PNG/JPEG bytes) or png (JPEGs stored losslessly as PNG: one image type per dataset, which Hugging Face datasets needs).")
    var imageFormat = "keep"
    @Option(help: "Base URL of the dataset repository (default: HF_ENDPOINT or huggingface.co).") var endpoint: String?
    @Option(help: "A file listing archive paths to download, one per line (instead of the tree API).") var fileList: String?
    @Option(help: "Where downloaded archives are kept (default: <output>/downloads).") var downloadDir: String?
    @Option(help: "Images (archive members or files) larger than this many MiB are skipped and counted, never read.")
    var maxImageMb = 64
    @Flag(help: "Replace a dataset already prepared in --output (refused otherwise; downloads are kept).") var overwrite = false

    func validate() throws {
        try requireFlag((0..<1).contains(valFraction), "val-fraction", "in [0, 1)", valFraction)
        try requireFlag((0..<1).contains(testFraction), "test-fraction", "in [0, 1)", testFraction)
        try requireFlag((maxImages ?? 2) >= 2, "max-images", "at least 2 (one image per class)", maxImages ?? 2)
        try requireFlag(realFraction.map { $0 > 0 && $0 < 1 } ?? true, "real-fraction", "in (0, 1)", realFraction ?? 0.5)
        try requireFlag(shardSize >= 1, "shard-size", "at least 1", shardSize)
        try requireFlag(["keep", "png"].contains(imageFormat), "image-format", "keep or png", imageFormat)
        try requireFlag((1...4096).contains(maxImageMb), "max-image-mb", "in 1...4096", maxImageMb)
    }

    func run() throws {
        try failing {
            if checkOnly {
                // Hashing every shard: a bar (or a plain line a minute) in MiB.
                nonisolated(unsafe) var bar: ProgressReporter?
                let m = try DatasetChecker.check(directory: output, log: logLine) { done, total in
                    if bar == nil { bar = ProgressReporter("check", total: max(1, total >> 20), unit: "MiB") }
                    bar?.update(done >> 20, items: done >> 20)
                }
                print("\(output): OK\n" + DatasetChecker.summary(m))
                return
            }
            guard let source else { throw ValidationError("--source is required (hf, an archive directory, or a real/ fake/ directory)") }
            stopOnSignal("radar prepare", output: output)
            var opts = PrepareOptions(output: output)
            opts.valFraction = valFraction
            opts.seed = seed
            opts.maxImages = maxImages
            opts.realFraction = realFraction
            opts.shardSize = shardSize
            opts.pngOnly = imageFormat == "png"
            opts.overwrite = overwrite
            let limit = maxImageMb << 20
            let src: SampleSource
            if source == "hf" {
                let dir = downloadDir ?? (output as NSString).appendingPathComponent("downloads")
                let hf = HuggingFaceDownloader(endpoint: endpoint, token: ProcessInfo.processInfo.environment["HF_TOKEN"])
                hf.log = logLine
                var isDir: ObjCBool = false
                if FileManager.default.fileExists(atPath: "hf", isDirectory: &isDir), isDir.boolValue {
                    logLine("prepare: --source hf downloads from Hugging Face; for the folder ./hf here, pass --source ./hf")
                }
                let files = try fileList.map { try HuggingFaceDownloader.readFileList($0) } ?? hf.listArchives()
                logLine("prepare: \(files.count) archives from \(hf.base)")
                try hf.download(files, to: dir)
                var w = try WildDeepfakeArchives(root: dir, archives: files)
                w.maxMemberBytes = limit
                src = w
            } else if FileManager.default.fileExists(atPath: (source as NSString).appendingPathComponent("real")) {
                // An output inside real/ or fake/ was scanned as part of the source (its folder
                // recorded as a skip, and on a second run its shards).
                let out = URL(fileURLWithPath: output).standardizedFileURL.resolvingSymlinksInPath().path
                for c in ["real", "fake"] {
                    let dir = URL(fileURLWithPath: source).appendingPathComponent(c).standardizedFileURL.resolvingSymlinksInPath().path
                    if out == dir || out.hasPrefix(dir + "/") {
                        throw ValidationError("--output \(output) is inside the source's \(c)/ folder (\(dir)), whose files are the images: choose a folder outside it")
                    }
                }
                logLine("prepare: \(source) has the reference layout: no sequence ids, so every image is its own sequence; \(Int(testFraction * 100))% of images become the test split")
                var r = try ReferenceFolders(root: source, testFraction: testFraction, seed: seed)
                r.maxFileBytes = limit
                src = r
            } else {
                var w = try WildDeepfakeArchives(root: source)
                w.maxMemberBytes = limit
                src = w
            }
            try runPreparer(src, opts)
        }
    }
}

/// SIGINT, SIGTERM or SIGHUP (a closed terminal; not under `nohup`): one line saying what is kept and how to go on, then the process ends
/// (128 + the signal). Stopping anywhere is safe: a shard is renamed into place only when
/// complete, the journal names the finished ones, and downloads resume by HTTP Range; it ended
/// without a word.
nonisolated(unsafe) private var stopWatch: SignalWatch?
func stopOnSignal(_ command: String, output: String) {
    guard stopWatch == nil else { return }
    keepRunningWithoutReaders()
    stopWatch = SignalWatch([SIGINT, SIGTERM, SIGHUP]) { s in
        // The shard being written is removed (the next run writes it again); a stop before
        // the folder is being written (a download, the first pass) has none.
        let folder = DatasetPreparer.discardUnfinishedShards().first
        let kept = folder.map { "\($0.finished) finished shard\($0.finished == 1 ? "" : "s")" } ?? "the finished shards"
        let removed = folder.map { $0.removed == 0 ? "" : ", \($0.removed) unfinished removed" } ?? ""
        logLine("\(command): stopped by \(SignalWatch.name(s)): \(kept) in \(output) (and any downloads) kept\(removed); "
                + "the same command again resumes")
        exitNow(128 + s)
    }
}

func runPreparer(_ source: SampleSource, _ opts: PrepareOptions) throws {
    let preparer = DatasetPreparer(options: opts)
    preparer.log = logLine
    var bar: ProgressReporter?
    preparer.progress = { done, total in
        if bar == nil { bar = ProgressReporter("prepare", total: total, unit: "img") }
        bar?.update(done)
    }
    let t0 = Date()
    let m = try preparer.run(source)
    let n = m.shards.reduce(0) { $0 + $1.samples }
    if !preparer.keptExisting { logLine(String(format: "prepare: %d images in %d shards, %d skipped, %.1f images/s, peak RSS %.0f MiB", n, m.shards.count,
                   m.skipped.count, Double(n) / Date().timeIntervalSince(t0), peakRSSMiB()))
        // What was skipped, said (it was only counted; the reasons were in manifest.json alone).
        for s in m.skipped.prefix(5) { logLine("prepare: skipped \(s.key): \(s.reason)") }
        if m.skipped.count > 5 { logLine("prepare: and \(m.skipped.count - 5) more skipped: manifest.json's \"skipped\" lists each with its reason") }
    }
    print(DatasetChecker.summary(m))
}

/// `radar synth`: the procedural deepfake set written as a dataset directory.
struct Synth: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Generate the synthetic deepfake set (face-like crops; fakes with blend seams and up-sampling traces) as a dataset directory.")

    @Option(help: "Output dataset directory.") var output: String
    @Option(help: "Images to generate.") var count = 2000
    @Option(help: "Image size in pixels.") var size = 32
    @Option(help: "Artifact strength, 0 (obvious) to 1 (faint).") var difficulty = 0.3
    @Option(help: "Seed.") var seed: UInt64 = 1
    @Option(help: "Frames per sequence.") var framesPerSequence = 8
    @Option(help: "Fraction of train sequences drawn for validation.") var valFraction = 0.1
    @Option(help: "Samples per shard.") var shardSize = 500
    @Flag(help: "Replace a dataset already in --output (refused otherwise, unless it is this same synthetic set, which is kept).") var overwrite = false

    func validate() throws {
        // The set is listed in memory before a shard is written: 10^11 ran out of memory slowly,
        // 2^63 - 1 trapped.
        try requireFlag((1...10_000_000).contains(count), "count", "in 1...10000000", count)
        try requireFlag((8...4096).contains(size), "size", "in 8...4096 pixels", size)
        try requireFlag(difficulty >= 0 && difficulty <= 1, "difficulty", "in [0, 1]", difficulty)
        try requireFlag(framesPerSequence >= 1, "frames-per-sequence", "at least 1", framesPerSequence)
        try requireFlag((0..<1).contains(valFraction), "val-fraction", "in [0, 1)", valFraction)
        try requireFlag(shardSize >= 1, "shard-size", "at least 1", shardSize)
    }

    func run() throws {
        try failing {
            stopOnSignal("radar synth", output: output)
            var opts = PrepareOptions(output: output)
            opts.valFraction = valFraction
            opts.seed = seed
            opts.shardSize = shardSize
            opts.overwrite = overwrite
            try runPreparer(SyntheticSource(size: size, count: count, seed: seed, difficulty: difficulty,
                                            framesPerSequence: framesPerSequence), opts)
        }
    }
}
