import ArgumentParser
import Foundation
import RadarCLI
import RadarCore

extension Bench {
    struct DataPipeline: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "data", abstract: "Decode + augment images/s per thread (PNG and JPEG), and prepare throughput and peak RSS.")
        @Option(help: "Image size.") var size = 224
        @Option(help: "Images per measurement.") var images = 300
        @Flag(help: "With --data: empty the page cache (root) before each way of opening the dataset is first timed.") var dropCaches = false
        @Option(help: "Synthetic images for the prepare measurement (0 skips it).") var prepareImages = 2000
        @Option(help: "Time these images instead of generated ones: the first 32 PNG members of a prepared dataset (what bench/data_reference.py reads).")
        var data: String?

        func validate() throws {
            try requireFlag((8...4096).contains(size), "size", "in 8...4096 pixels", size)
            try requireFlag((1...10_000_000).contains(images), "images", "in 1...10000000", images)
            try requireFlag((0...10_000_000).contains(prepareImages), "prepare-images", "0 (skip) to 10000000", prepareImages)
            if dropCaches {
                guard data != nil else { throw ValidationError("--drop-caches times opening a dataset: give it --data DIR") }
                guard access("/proc/sys/vm/drop_caches", W_OK) == 0 else {
                    throw ValidationError("--drop-caches writes /proc/sys/vm/drop_caches, which this user cannot (\(String(cString: strerror(errno)))): run as root, or leave it out")
                }
            }
        }

        func run() throws {
            try failing {
                var pngs: [Data] = []
                if let data {
                    let set = try ShardSet(directory: data)
                    // Opening the dataset (every rank, evaluate and the coordinator do it): from the
                    // shards' index files, and by walking every shard's headers; medians of 3, the
                    // files in the page cache (a cold network file system is far slower walking).
                    // `--drop-caches` (root) empties the page cache before each first open: the
                    // "_first" figures are then a cold start.
                    func openSeconds(_ indexFiles: Bool) throws -> (median: Double, first: Double) {
                        if dropCaches { sync(); try "3\n".write(toFile: "/proc/sys/vm/drop_caches", atomically: false, encoding: .utf8) }
                        var times: [Double] = []
                        for _ in 0..<3 {
                            let t0 = Date()
                            _ = try ShardSet(directory: data, indexFiles: indexFiles)
                            times.append(Date().timeIntervalSince(t0))
                        }
                        return (times.sorted()[1], times[0])
                    }
                    let members = set.indices.reduce(0) { $0 + $1.memberCount }
                    let indexed = set.indexNote == nil ? try openSeconds(true) : (median: Double.nan, first: Double.nan), walked = try openSeconds(false)
                    printJSON(["bench": "dataset_open", "shards": set.indices.count, "samples": set.indices.reduce(0) { $0 + $1.count },
                               "members": members, "index_files_seconds": indexed.median, "walk_seconds": walked.median,
                               "index_files_first_seconds": indexed.first, "walk_first_seconds": walked.first, "caches_dropped": dropCaches,
                               "note": set.indexNote ?? "",
                               "machine": machineRecord(threads: ProcessInfo.processInfo.activeProcessorCount)])
                    // Random access as an epoch reads: every sample's record and image, in a
                    // shuffled order, one thread, files in the page cache after a first pass.
                    let refs = (0..<set.indices.count).flatMap { s in (0..<set.indices[s].count).map { (s, $0) } }
                    var order = Array(refs.prefix(4000))
                    var rng = SplitMix64(seed: 1)
                    order.shuffle(using: &rng)
                    var bytes = 0  // one pass's
                    func readAll() throws -> Double {
                        let t0 = Date()
                        bytes = 0
                        for (s, i) in order { bytes += try set.indices[s].sample(i).image.count }
                        return Date().timeIntervalSince(t0)
                    }
                    _ = try readAll()
                    let seconds = [try readAll(), try readAll(), try readAll()].sorted()[1]
                    printJSON(["bench": "shard_reads", "samples": order.count, "samples_per_s": Double(order.count) / seconds,
                               "microseconds_per_sample": seconds / Double(order.count) * 1e6,
                               "mib_per_s": Double(bytes) / seconds / 1048576,
                               "machine": machineRecord(threads: 1)])
                    pngs = []
                    for index in set.indices { for i in 0..<index.count where pngs.count < 32 {
                        let b = try index.image(i)
                        if b.starts(with: [0x89, 0x50, 0x4E, 0x47]) { pngs.append(b) }
                    } }
                    guard !pngs.isEmpty else { throw ValidationError("\(data): no PNG members") }
                } else {
                    let faces = SyntheticFaces(size: size, seed: 1)
                    pngs = try (0..<32).map { try ImageCodec.encodePNG(faces.rgbImage($0, label: $0 % 2)) }
                }
                let imageSize = try ImageCodec.decode(pngs[0], item: "png").width
                let jpgs = try pngs.map { try ImageCodec.encodeJPEG(try ImageCodec.decode($0, item: "png"), quality: 95) }
                let maxPixels = try pngs.map { let i = try ImageCodec.decode($0, item: "png"); return i.width * i.height }.max()!
                let dst = UnsafeMutablePointer<Float>.allocate(capacity: 3 * maxPixels)
                defer { dst.deallocate() }
                for (name, blobs) in [("png", pngs), ("jpeg", jpgs)] {
                    for augment in [false, true] {
                        let t0 = Date()
                        for i in 0..<images {
                            var img = try ImageCodec.decode(blobs[i % blobs.count], item: name)
                            if augment { img = try Augmenter.apply(AugmentationPlan.draw(seed: 1, epoch: 0, key: "b\(i)"), to: img) }
                            Augmenter.normalize(img, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225], into: dst)
                        }
                        let rate = Double(images) / Date().timeIntervalSince(t0)
                        printJSON(["bench": "decode", "format": name, "size": imageSize, "augment": augment,
                                   "images_per_s_per_thread": rate, "machine": machineRecord(threads: 1)])
                    }
                }
                // Each augmentation operation alone, on a decoded image: median ms of 31 runs after a warm-up.
                let img = try ImageCodec.decode(pngs[0], item: "png")
                var ops: [String: Double] = [:]
                func time(_ name: String, _ body: () throws -> Void) rethrows {
                    ops[name] = try medianSeconds(repeats: 31, body) * 1000
                }
                time("flip") { _ = Augmenter.flipHorizontal(img) }
                time("shift_scale_rotate") { _ = Augmenter.shiftScaleRotate(img, angle: 7, scale: 1.05, dx: 0.03, dy: -0.02) }
                time("gaussian_blur_5") { _ = Augmenter.gaussianBlur(img, kernel: 5) }
                try time("jpeg_q85") { _ = try ImageCodec.decodeJPEG(try ImageCodec.encodeJPEG(img, quality: 85), item: "q") }
                time("brightness") { _ = Augmenter.adjustBrightness(img, 1.05) }
                time("contrast") { _ = Augmenter.adjustContrast(img, 1.05) }
                time("saturation") { _ = Augmenter.adjustSaturation(img, 1.05) }
                time("hue") { _ = Augmenter.adjustHue(img, 0.01) }
                try time("perturb_noise_8") { _ = try Perturbation.noise(sigma: 8).apply(img, key: "k") }
                time("normalize") { Augmenter.normalize(img, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225], into: dst) }
                printJSON(["bench": "augment_ops_ms_per_image", "size": imageSize, "ops": ops, "machine": machineRecord(threads: 1)])
                if prepareImages > 0 {
                    let dir = NSTemporaryDirectory() + "radar-bench-prepare-\(getpid())"
                    defer { try? FileManager.default.removeItem(atPath: dir) }
                    let t0 = Date()
                    let m = try DatasetPreparer(options: PrepareOptions(output: dir)).run(
                        SyntheticSource(size: size, count: prepareImages, seed: 1, difficulty: 0.3))
                    let n = m.shards.reduce(0) { $0 + $1.samples }
                    printJSON(["bench": "prepare", "images": n, "size": size, "images_per_s": Double(n) / Date().timeIntervalSince(t0),
                               "peak_rss_mib": peakRSSMiB(), "machine": machineRecord(threads: ProcessInfo.processInfo.activeProcessorCount)])  // every core
                }
            }
        }
    }
}
