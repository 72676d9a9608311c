import Foundation
@testable import RadarCore
import XCTest

final class DownloadTests: XCTestCase {
    func testDownloaderListsRetriesResumesAndSendsTheToken() throws {
        let server = try LocalHTTPServer()
        defer { server.stop() }
        let root = temporaryDirectory("hf-src")
        _ = try makeWildDeepfakeArchives(root, sequencesPerArchive: 3, frames: 3, extras: false)
        var listing: [String: [[String: Any]]] = [:]
        for dir in HuggingFaceDownloader.archiveDirectories {
            let files = try FileManager.default.contentsOfDirectory(atPath: "\(root)/\(dir)").sorted()
            var items: [[String: Any]] = []
            for f in files {
                let data = FileManager.default.contents(atPath: "\(root)/\(dir)/\(f)")!
                server.put("/datasets/xingjunm/WildDeepfake/resolve/main/\(dir)/\(f)", data)
                items.append(["type": "file", "path": "\(dir)/\(f)", "size": data.count])
            }
            listing[dir] = items
            // Two pages: the first names the second in a Link header, as the Hub's tree API does.
            let page1 = "/api/datasets/xingjunm/WildDeepfake/tree/main/\(dir)", page2 = page1 + "?cursor=p2"
            server.put(page1, try JSONSerialization.data(withJSONObject: Array(items.prefix(0))),
                       header: "Link: <\(server.base)\(page2)>; rel=\"next\"")
            server.put(page2, try JSONSerialization.data(withJSONObject: items))  // the archives only on page 2
        }
        // HF_ENDPOINT points at the local server; HF_TOKEN goes out as a bearer token.
        let hf = HuggingFaceDownloader(endpoint: nil, token: "secret-token", environment: ["HF_ENDPOINT": server.base])
        hf.initialBackoff = 0.05
        XCTAssertEqual(hf.base, "\(server.base)/datasets/xingjunm/WildDeepfake/resolve/main/")
        let files = try hf.listArchives()
        XCTAssertEqual(files.count, 4)
        // The first archive: one 503, then a body cut after 100 bytes, then a resumed range.
        server.failNext(1)
        server.cutNextBody(after: 100)
        let dest = temporaryDirectory("hf-dl")
        try hf.download(files, to: dest)
        for f in files {
            XCTAssertEqual(FileManager.default.contents(atPath: "\(dest)/\(f)"), FileManager.default.contents(atPath: "\(root)/\(f)"), f)
        }
        let first = server.requests.filter { $0.path.hasSuffix(files[0]) }
        XCTAssertGreaterThanOrEqual(first.count, 3, "503, cut, resume: \(first.map(\.headers))")
        XCTAssertEqual(first.last?.headers["range"], "bytes=100-", "resumed with an HTTP Range request")
        XCTAssertTrue(server.requests.allSatisfy { $0.headers["authorization"] == "Bearer secret-token" })
        // The downloaded archives prepare like local ones.
        let m = try DatasetPreparer(options: PrepareOptions(output: temporaryDirectory("hf-prep"))).run(try WildDeepfakeArchives(root: dest, archives: files))
        XCTAssertEqual(m.shards.reduce(0) { $0 + $1.samples }, 4 * 9)
        // A missing file is a clear, non-retried error.
        XCTAssertThrowsError(try hf.downloadFile("\(server.base)/nope.tar.gz", to: "\(dest)/nope.tar.gz")) {
            XCTAssertTrue("\($0)".contains("404"), "\($0)")
        }
        // An interrupted download leaves only a .part file, never the final name.
        server.put("/big.bin", Data(repeating: 7, count: 5000))
        hf.attempts = 1
        server.cutNextBody(after: 1000)
        XCTAssertThrowsError(try hf.downloadFile("\(server.base)/big.bin", to: "\(dest)/big.bin"))
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(dest)/big.bin"))
        XCTAssertEqual(FileManager.default.contents(atPath: "\(dest)/big.bin.part")?.count, 1000)
        try hf.downloadFile("\(server.base)/big.bin", to: "\(dest)/big.bin")
        XCTAssertEqual(FileManager.default.contents(atPath: "\(dest)/big.bin"), Data(repeating: 7, count: 5000))
        // A path that climbs out of the download folder (a mirror's tree API, a file list) is
        // refused before anything is fetched; it was joined to the folder and written there.
        let before = server.requests.count
        for bad in ["deepfake_in_the_wild/../../escape.tar.gz", "/tmp/escape.tar.gz", "deepfake_in_the_wild//x.tar.gz"] {
            XCTAssertThrowsError(try hf.download([files[0], bad], to: temporaryDirectory("hf-bad"))) {
                XCTAssertTrue("\($0)".hasSuffix("archive path \(bad) is not a plain relative path (no empty, . or .. parts): refused"), "\($0)")
            }
        }
        XCTAssertEqual(server.requests.count, before, "nothing fetched")
        _ = listing
    }

    /// A rate limit (HTTP 429 with Retry-After, as the Hub sends one) is waited out as long as
    /// the server asks, and said, for a file and for the tree API; a wait beyond
    /// `maxRetryAfter` ends the download at once, naming it. Retry-After as seconds or a date.
    func testRateLimitsAreWaitedOutAsTheServerAsks() throws {
        let now = Date(timeIntervalSince1970: 1_800_000_000)  // Fri, 15 Jan 2027 08:00:00 GMT
        XCTAssertEqual(HuggingFaceDownloader.retryAfter("120", now: now), 120)
        XCTAssertEqual(HuggingFaceDownloader.retryAfter(" 7 ", now: now), 7)
        XCTAssertEqual(HuggingFaceDownloader.retryAfter("Fri, 15 Jan 2027 08:00:30 GMT", now: now), 30)
        XCTAssertEqual(HuggingFaceDownloader.retryAfter("Fri, 15 Jan 2027 07:00:00 GMT", now: now), 0, "a date past: no wait")
        for bad in [nil, "", "soon", "-5", "1.5", "\u{0661}\u{0662}"] {
            XCTAssertNil(HuggingFaceDownloader.retryAfter(bad, now: now), bad ?? "nil")
        }
        let server = try LocalHTTPServer()
        defer { server.stop() }
        let body = Data((0..<2000).map { UInt8(truncatingIfNeeded: $0) })
        server.put("/f.bin", body)
        server.put("/api/tree", Data("[]".utf8))
        let hf = HuggingFaceDownloader(endpoint: server.base, environment: [:])
        hf.initialBackoff = 0.01
        var logged: [String] = []
        hf.log = { logged.append($0) }
        let dest = temporaryDirectory("hf-429")
        server.failNext(1, status: "429 Too Many Requests", headers: "Retry-After: 1")
        var start = Date()
        try hf.downloadFile("\(server.base)/f.bin", to: "\(dest)/f.bin")
        XCTAssertGreaterThanOrEqual(Date().timeIntervalSince(start), 0.95, "waited the second asked, not the 0.01 s backoff")
        XCTAssertEqual(FileManager.default.contents(atPath: "\(dest)/f.bin"), body)
        XCTAssertEqual(logged, ["  attempt 1 failed (HTTP 429); retrying in 1.0s (the server's Retry-After)"])
        logged = []
        server.failNext(1, status: "429 Too Many Requests", headers: "Retry-After: 1")
        start = Date()
        XCTAssertEqual(try hf.fetch("\(server.base)/api/tree"), Data("[]".utf8))
        XCTAssertGreaterThanOrEqual(Date().timeIntervalSince(start), 0.95)
        XCTAssertEqual(logged, ["  \(server.base)/api/tree: HTTP 429; retrying in 1.0s (the server's Retry-After)"])
        // An hour asked: said now, one request, nothing written.
        for (i, fetchFile) in [true, false].enumerated() {
            server.failNext(1, status: "429 Too Many Requests", headers: "Retry-After: 3600")
            let before = server.requests.count
            let url = "\(server.base)/" + (fetchFile ? "f.bin" : "api/tree")
            XCTAssertThrowsError(try fetchFile ? hf.downloadFile(url, to: "\(dest)/g\(i).bin") : { _ = try hf.fetch(url) }()) {
                XCTAssertEqual("\($0)", "\(url): HTTP 429: the server asks to wait 3600 s (Retry-After), more than 300 s: try again later")
            }
            XCTAssertEqual(server.requests.count, before + 1)
            XCTAssertFalse(FileManager.default.fileExists(atPath: "\(dest)/g\(i).bin") || FileManager.default.fileExists(atPath: "\(dest)/g\(i).bin.part"))
        }
    }

    /// A download says how far it is (a bar on a terminal; here the plain lines a log gets):
    /// MiB done of the file's, the rate of this transfer, and, resumed, from where it stopped.
    func testDownloadsShowTheirProgressInMiB() throws {
        let server = try LocalHTTPServer()
        defer { server.stop() }
        let body = Data((0..<(4 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31) })
        server.put("/weights.bin", body)
        let hf = HuggingFaceDownloader(endpoint: server.base, token: nil, environment: [:])
        var lines: [String] = []
        (hf.progressLines, hf.progressInterval, hf.attempts) = ({ lines.append($0) }, 1e-9, 1)
        server.cutNextBody(after: (2 << 20) + 5)
        let dest = temporaryDirectory("hf-progress") + "/weights.bin"
        func mib(_ l: String) -> Int { Int(l.dropFirst("download weights.bin: ".count).prefix { $0 != "/" }) ?? -1 }
        XCTAssertThrowsError(try hf.downloadFile("\(server.base)/weights.bin", to: dest, expectedSize: body.count))
        let first = lines
        lines = []
        try hf.downloadFile("\(server.base)/weights.bin", to: dest, expectedSize: body.count)
        XCTAssertEqual(FileManager.default.contents(atPath: dest), body)
        for l in first + lines {
            XCTAssertTrue(l.hasPrefix("download weights.bin: ") && l.contains("/4 (") && l.contains(" MiB/s ETA "), l)
        }
        XCTAssertEqual(first.map(mib).first, 0, "\(first)")
        XCTAssertEqual(first.map(mib).max(), 2, "cut after 2 MiB: \(first)")
        XCTAssertEqual(lines.map(mib).first, 2, "resumed where it stopped: \(lines)")
        XCTAssertEqual(lines.map(mib).max(), 3, "plain lines stop short of the whole file: \(lines)")
    }
}

final class AugmentationTests: XCTestCase {
    static func fixture() throws -> [String: RGBImage] {
        let t = try SafeTensors.read(fixturesDirectory.appendingPathComponent("augment.safetensors").path).tensors
        return t.mapValues { RGBImage(width: $0.shape[1], height: $0.shape[0], pixels: $0.floats.map { UInt8($0) }) }
    }

    func maxDiff(_ a: RGBImage, _ b: RGBImage) -> Int {
        zip(a.pixels, b.pixels).map { abs(Int($0) - Int($1)) }.max() ?? 0
    }

    /// The AVX2 warpAffine kernel (where the CPU has AVX2) gives the scalar path's bytes: 60
    /// random rotations, scales and shifts of odd-sized images, edges included.
    func testVectorWarpAffineEqualsTheScalarPath() {
        print("image kernels: \(Augmenter.vectorKernels ? "AVX2 (compared with the scalar path)" : "scalar only (no AVX2 on this CPU)")")
        let faces = SyntheticFaces(size: 61, seed: 3)
        for i in 0..<60 {
            var img = faces.rgbImage(i, label: i % 2)
            if i % 3 == 1 { img = ImageResize.resize(img, width: 37 + i % 11, height: 23 + i % 7) }
            let a = Double(i * 7 % 21) - 10, s = 0.9 + Double(i % 5) * 0.05, dx = Double(i % 3) * 0.05 - 0.05, dy = Double(i % 4) * 0.03 - 0.05
            let m = Augmenter.affineMatrix(width: img.width, height: img.height, angle: a, scale: s, dx: dx, dy: dy)
            let vector = Augmenter.warpAffine(img, matrix: m)
            Augmenter.scalarOnly = true
            let scalar = Augmenter.warpAffine(img, matrix: m)
            Augmenter.scalarOnly = false
            XCTAssertEqual(vector.pixels, scalar.pixels, "case \(i): \(img.width)x\(img.height), angle \(a), scale \(s)")
        }
    }

    /// The AVX2 hue rotation gives the scalar path's bytes: shifts of both signs and large ones,
    /// greys, saturated colours and a grid of colours with ties between channels.
    func testVectorHueEqualsTheScalarPath() {
        var bytes: [UInt8] = []
        for r in stride(from: 0, through: 255, by: 15) { for g in stride(from: 0, through: 255, by: 17) { for b in [0, 1, 127, 128, 254, 255, r, g] {
            bytes += [UInt8(r), UInt8(g), UInt8(b)]
        } } }
        let faces = SyntheticFaces(size: 33, seed: 2)
        for img in [RGBImage(width: bytes.count / 3, height: 1, pixels: bytes), faces.rgbImage(1, label: 1), RGBImage(width: 3, height: 3, pixels: Array(bytes.prefix(27)))] {
            for shift in [-0.02, -0.013, 0, 0.007, 0.02, 0.5, -0.5, 1.0 / 3] {
                let vector = Augmenter.adjustHue(img, shift)
                Augmenter.scalarOnly = true
                let scalar = Augmenter.adjustHue(img, shift)
                Augmenter.scalarOnly = false
                XCTAssertEqual(vector.pixels, scalar.pixels, "\(img.width)x\(img.height) shift \(shift)")
            }
        }
    }

    /// The AVX2 Gaussian blur gives the scalar path's bytes, tiny images (reflect-only) included.
    func testVectorBlurEqualsTheScalarPath() {
        let faces = SyntheticFaces(size: 40, seed: 8)
        for (i, (w, h)) in [(40, 40), (1, 1), (2, 7), (5, 3), (17, 9), (37, 23), (64, 5), (224, 224)].enumerated() {
            let img = ImageResize.resize(faces.rgbImage(i, label: i % 2), width: w, height: h)
            for k in [3, 5] {
                let vector = Augmenter.gaussianBlur(img, kernel: k)
                Augmenter.scalarOnly = true
                let scalar = Augmenter.gaussianBlur(img, kernel: k)
                Augmenter.scalarOnly = false
                XCTAssertEqual(vector.pixels, scalar.pixels, "\(w)x\(h) kernel \(k)")
            }
        }
    }

    /// Flip, saturation and normalisation on AVX2 give the scalar paths' bytes and floats, on images narrower than a vector group and with scalar tails;
    /// the flip also equals a flip written out by index.
    func testVectorFlipSaturationAndNormaliseEqualTheScalarPath() {
        let faces = SyntheticFaces(size: 48, seed: 5)
        var colours: [UInt8] = []
        for v in stride(from: 0, through: 255, by: 5) { colours += [UInt8(v), UInt8(255 - v), UInt8((v * 7) % 256)] }
        var images = [RGBImage(width: colours.count / 3, height: 1, pixels: colours)]
        for (i, (w, h)) in [(1, 1), (5, 1), (6, 2), (7, 3), (11, 4), (17, 9), (37, 23), (224, 224)].enumerated() {
            images.append(ImageResize.resize(faces.rgbImage(i, label: i % 2), width: w, height: h))
        }
        func both<T: Equatable>(_ f: () -> T) -> (T, T) {
            let v = f()
            Augmenter.scalarOnly = true
            defer { Augmenter.scalarOnly = false }
            return (v, f())
        }
        for img in images {
            let name = "\(img.width)x\(img.height)"
            let (flipV, flipS) = both { Augmenter.flipHorizontal(img).pixels }
            var byIndex = [UInt8](repeating: 0, count: img.pixels.count)
            for y in 0..<img.height { for x in 0..<img.width { for c in 0..<3 {
                byIndex[(y * img.width + x) * 3 + c] = img.pixels[(y * img.width + img.width - 1 - x) * 3 + c]
            } } }
            XCTAssertEqual(flipV, byIndex, "flip \(name)")
            XCTAssertEqual(flipS, byIndex, "flip \(name), scalar")
            for f in [0.0, 0.9, 0.93, 1.0, 1.1, 2.5] {
                let (satV, satS) = both { Augmenter.adjustSaturation(img, f).pixels }
                XCTAssertEqual(satV, satS, "saturation \(f) \(name)")
            }
            let n = img.pixels.count
            let (normV, normS) = both { () -> [UInt32] in
                var out = [Float](repeating: .nan, count: n)
                out.withUnsafeMutableBufferPointer { Augmenter.normalize(img, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225], into: $0.baseAddress!) }
                return out.map(\.bitPattern)
            }
            XCTAssertEqual(normV, normS, "normalise \(name)")
            XCTAssertFalse(normV.contains(Float.nan.bitPattern), "every value written \(name)")
        }
    }

    func testGeometricBlurAndJPEGMatchOpenCV() throws {
        // Fixture: tools/golden/augment_fixture.py (cv2.warpAffine, cv2.GaussianBlur, cv2.imencode).
        // warpAffine may differ by one grey level on a rounding tie; blur kernels are dyadic and match exactly, and
        // JPEG re-compression uses the same libjpeg-turbo settings (4:2:0, accurate DCT).
        let f = try Self.fixture()
        let input = f["input"]!
        for (i, a) in [(7.0, 1.05, 0.03, -0.02), (-10.0, 0.9, -0.05, 0.05), (0.0, 1.1, 0.0, 0.0)].enumerated() {
            let ours = Augmenter.shiftScaleRotate(input, angle: a.0, scale: a.1, dx: a.2, dy: a.3)
            let ref = f["affine\(i)"]!
            XCTAssertLessThanOrEqual(maxDiff(ours, ref), 1, "affine \(i)")
            // OpenCV >= 4.11 computes in Float as we do, but with fused multiply-adds where the CPU
            // has them (we build for baseline x86-64, where fmaf is a libm call): two bytes of
            // 1,440 in affine 2 sit on a rounding tie and go the other way.
            XCTAssertLessThanOrEqual(zip(ours.pixels, ref.pixels).filter { $0 != $1 }.count, 2, "affine \(i)")
        }
        for k in [3, 5] { XCTAssertEqual(maxDiff(Augmenter.gaussianBlur(input, kernel: k), f["blur\(k)"]!), 0, "blur \(k)") }
        for q in [70, 95] {
            let ours = try ImageCodec.decodeJPEG(try ImageCodec.encodeJPEG(input, quality: q), item: "q\(q)")
            let ref = f["jpeg\(q)"]!
            var sum = 0
            for i in 0..<ref.pixels.count { sum += abs(Int(ours.pixels[i]) - Int(ref.pixels[i])) }
            print("JPEG q\(q): max diff \(maxDiff(ours, ref)), mean \(Double(sum) / Double(ref.pixels.count))")
            XCTAssertEqual(maxDiff(ours, ref), 0, "JPEG quality \(q): the same codec settings as OpenCV")
        }
    }

    func testFlipAndColourJitterClosedForm() {
        let img = RGBImage(width: 3, height: 1, pixels: [10, 20, 30, 200, 100, 50, 0, 255, 128])
        XCTAssertEqual(Augmenter.flipHorizontal(img).pixels, [0, 255, 128, 200, 100, 50, 10, 20, 30])
        XCTAssertEqual(Augmenter.adjustBrightness(img, 1.1).pixels, [11, 22, 33, 220, 110, 55, 0, 255, 141])
        var greys: [Double] = []
        for p in 0..<3 {
            let r = Double(img.pixels[3 * p]), g = Double(img.pixels[3 * p + 1]), b = Double(img.pixels[3 * p + 2])
            greys.append(0.299 * r + 0.587 * g + 0.114 * b)
        }
        let mean = (greys[0] + greys[1] + greys[2]) / 3
        let contrast = Augmenter.adjustContrast(img, 0.9).pixels
        for (i, v) in img.pixels.enumerated() {
            let expected = (Double(v) * 0.9 + mean * 0.1).rounded()
            XCTAssertEqual(Int(contrast[i]), Int(expected), "contrast \(i)")
        }
        let sat = Augmenter.adjustSaturation(img, 1.1).pixels
        for (i, v) in img.pixels.enumerated() {
            let raw: Double = Double(v) * 1.1 - greys[i / 3] * 0.1
            let expected: Double = max(0, min(255, raw.rounded()))
            XCTAssertEqual(Int(sat[i]), Int(expected), "saturation \(i)")
        }
        // Hue: a pure red shifted by a third of a turn becomes pure green; grey is unchanged.
        let hue = Augmenter.adjustHue(RGBImage(width: 2, height: 1, pixels: [255, 0, 0, 90, 90, 90]), 1.0 / 3)
        XCTAssertEqual(hue.pixels, [0, 255, 0, 90, 90, 90])
        XCTAssertEqual(Augmenter.adjustHue(img, 0).pixels, img.pixels, "zero hue shift is the identity")
    }

    func testPlansAreAPureFunctionOfSeedEpochAndKeyWithTheDocumentedRates() {
        XCTAssertEqual(AugmentationPlan.draw(seed: 1, epoch: 2, key: "k"), AugmentationPlan.draw(seed: 1, epoch: 2, key: "k"))
        var flips = 0, affine = 0, blurOrJPEG = 0, jitter = 0
        let n = 4000
        for i in 0..<n {
            let p = AugmentationPlan.draw(seed: 1, epoch: 0, key: "s\(i)")
            if p.flip { flips += 1 }
            if let a = p.affine { affine += 1; XCTAssertTrue(abs(a.angle) <= 10 && abs(a.scale - 1) <= 0.1 && abs(a.dx) <= 0.05) }
            if p.blurKernel != nil || p.jpegQuality != nil { blurOrJPEG += 1 }
            if let q = p.jpegQuality { XCTAssertTrue((70...100).contains(q)) }
            if let k = p.blurKernel { XCTAssertTrue(k == 3 || k == 5) }
            if let j = p.jitter { jitter += 1; XCTAssertEqual(j.order.sorted(), [0, 1, 2, 3]); XCTAssertTrue(abs(j.hue) <= 0.02) }
        }
        func near(_ count: Int, _ p: Double) { XCTAssertEqual(Double(count), Double(n) * p, accuracy: 5 * (Double(n) * p * (1 - p)).squareRoot()) }
        near(flips, 0.5); near(affine, 0.3); near(blurOrJPEG, 0.3); near(jitter, 0.3)
        XCTAssertNotEqual((0..<50).map { AugmentationPlan.draw(seed: 1, epoch: 0, key: "s\($0)") },
                          (0..<50).map { AugmentationPlan.draw(seed: 1, epoch: 1, key: "s\($0)") }, "a new epoch draws new plans")
    }

    func testLoaderBatchesAreIdenticalForAnyThreadCountAndReshuffledPerEpoch() throws {
        let out = temporaryDirectory("loader")
        _ = try DatasetPreparer(options: PrepareOptions(output: out).with { $0.shardSize = 30 }).run(
            SyntheticSource(size: 16, count: 120, seed: 3, difficulty: 0.3))
        let set = try ShardSet(directory: out)
        let refs = set.shuffled(set.refs(.train), seed: 9, epoch: 0)
        func batches(_ threads: Int) throws -> [([Float], [Float], [String])] {
            let loader = StreamingLoader(set: set, refs: refs, batchSize: 7, size: 16, mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5],
                                         augment: true, seed: 9, epoch: 0, threads: threads, depth: 2, dropLast: false)
            var out: [([Float], [Float], [String])] = []
            while let b = try loader.next() { out.append((b.images.values, b.labels, b.keys)) }
            return out
        }
        let one = try batches(1), three = try batches(3)
        XCTAssertEqual(one.count, (refs.count + 6) / 7)
        XCTAssertEqual(one.flatMap(\.2), refs.map { set.key($0) }, "batches keep the assignment order")
        for (a, b) in zip(one, three) {
            XCTAssertEqual(a.0.map(\.bitPattern), b.0.map(\.bitPattern))
            XCTAssertEqual(a.1, b.1)
        }
        XCTAssertNotEqual(set.shuffled(set.refs(.train), seed: 9, epoch: 1), refs, "each epoch reshuffles")
        XCTAssertEqual(set.shuffled(set.refs(.train), seed: 9, epoch: 0), refs)
        XCTAssertEqual(Set(set.shuffled(set.refs(.train), seed: 9, epoch: 1)), Set(refs))
    }
}

/// `radar evaluate --perturb`: the degradations, checked against OpenCV where OpenCV defines them
/// (the augmentation fixture), their statistics, and their independence from threads and batches.
final class PerturbationTests: XCTestCase {
    func testSpecificationsParseAndBadOnesSayWhatIsExpected() throws {
        for text in ["jpeg:50", "jpeg:1", "jpeg:100", "blur:3", "blur:5", "noise:8", "noise:2.5", "scale:0.5", "scale:0.25"] {
            XCTAssertEqual(try Perturbation(parsing: text).description, text)
        }
        for (text, why) in [("jpeg:0", "JPEG quality must be an integer in 1...100"), ("jpeg:high", "JPEG quality must be an integer in 1...100"),
                            ("blur:4", "the blur kernel must be 3 or 5"), ("noise:0", "the noise sigma must be a number in (0, 255] (grey levels)"),
                            ("scale:1", "the scale factor must be a number in (0, 1)"), ("scale:-0.5", "the scale factor must be a number in (0, 1)"),
                            ("sharpen:2", "unknown kind sharpen: expected jpeg, blur, noise or scale"),
                            ("jpeg", "expected KIND:VALUE (jpeg:Q, blur:K, noise:SIGMA or scale:F)")] {
            XCTAssertThrowsError(try Perturbation(parsing: text), text) { XCTAssertEqual("\($0)", "--perturb \(text): \(why)") }
        }
    }

    func testJPEGAndBlurAreOpenCVs() throws {
        let f = try AugmentationTests.fixture()
        XCTAssertEqual(try Perturbation.jpeg(quality: 70).apply(f["input"]!, key: "k"), f["jpeg70"]!, "cv2.imencode quality 70")
        XCTAssertEqual(try Perturbation.blur(kernel: 5).apply(f["input"]!, key: "k"), f["blur5"]!, "cv2.GaussianBlur 5x5")
    }

    func testNoiseHasItsSigmaAndDependsOnTheKeyOnly() throws {
        let grey = RGBImage(width: 64, height: 64, pixels: [UInt8](repeating: 128, count: 64 * 64 * 3))
        let a = try Perturbation.noise(sigma: 10).apply(grey, key: "shard-0/img_1")
        XCTAssertEqual(try Perturbation.noise(sigma: 10).apply(grey, key: "shard-0/img_1"), a, "the same key, the same noise")
        XCTAssertNotEqual(try Perturbation.noise(sigma: 10).apply(grey, key: "shard-0/img_2"), a, "another key, other noise")
        let d = a.pixels.map { Double($0) - 128 }
        let mean = d.reduce(0, +) / Double(d.count), sd = (d.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(d.count)).squareRoot()
        XCTAssertEqual(mean, 0, accuracy: 0.3)
        XCTAssertEqual(sd, 10, accuracy: 0.3, "12,288 draws of sigma 10 (rounding adds 1/12 to the variance)")
        let loud = try Perturbation.noise(sigma: 255).apply(grey, key: "k")
        XCTAssertTrue(loud.pixels.contains(0) && loud.pixels.contains(255), "clipped, not wrapped")
        // Value i is the key's stream's normal(i) (drawn in pairs from one Philox block): an odd
        // pixel count included.
        let odd = RGBImage(width: 5, height: 3, pixels: (0..<45).map { UInt8(3 * $0) })
        let r = RandomStream(seed: 0, stream: RandomStream.id("perturb-noise", FNV1a.hash("k")))
        XCTAssertEqual(try Perturbation.noise(sigma: 7).apply(odd, key: "k").pixels,
                       odd.pixels.enumerated().map { i, p in UInt8(min(255, max(0, (Double(p) + 7 * Double(r.normal(UInt64(i)))).rounded()))) })
        for p in [0, 1, 7, 1 << 33] as [UInt64] {
            let (a, b) = r.normalPair(p)
            XCTAssertEqual([a.bitPattern, b.bitPattern], [r.normal(2 * p).bitPattern, r.normal(2 * p + 1).bitPattern])
        }
    }

    func testScaleLosesDetailButKeepsSizeAndFlatRegions() throws {
        let f = try AugmentationTests.fixture(), input = f["input"]!
        let half = try Perturbation.scale(factor: 0.5).apply(input, key: "k")
        XCTAssertEqual([half.width, half.height], [input.width, input.height])
        XCTAssertNotEqual(half, input)
        let w = Int((Double(input.width) * 0.5).rounded()), h = Int((Double(input.height) * 0.5).rounded())
        XCTAssertEqual(half, ImageResize.resize(ImageResize.resize(input, width: w, height: h, mode: .bilinearOrArea),
                                                width: input.width, height: input.height, mode: .openCVLinear))
        let flat = RGBImage(width: 30, height: 20, pixels: (0..<600).flatMap { _ in [UInt8(40), 120, 200] })
        XCTAssertEqual(try Perturbation.scale(factor: 0.3).apply(flat, key: "k"), flat, "a flat image has no detail to lose")
    }

    /// The loader applies it after the resize, before normalisation: the same batches for any
    /// thread count, and different from the clean ones.
    func testLoaderPerturbsEverySampleTheSameWayOnAnyThreadCount() throws {
        let out = temporaryDirectory("perturb")
        _ = try DatasetPreparer(options: PrepareOptions(output: out).with { $0.shardSize = 30 }).run(
            SyntheticSource(size: 16, count: 60, seed: 4, difficulty: 0.3))
        let set = try ShardSet(directory: out)
        let refs = set.refs(.train)
        func images(_ p: Perturbation?, threads: Int) throws -> [Float] {
            let loader = StreamingLoader(set: set, refs: refs, batchSize: 5, size: 16, mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5],
                                         augment: false, seed: 0, epoch: 0, threads: threads, depth: 2, dropLast: false, perturbation: p)
            var v: [Float] = []
            while let b = try loader.next() { v += b.images.values }
            return v
        }
        let noisy = try images(.noise(sigma: 6), threads: 1)
        XCTAssertEqual(try images(.noise(sigma: 6), threads: 3).map(\.bitPattern), noisy.map(\.bitPattern))
        XCTAssertNotEqual(try images(nil, threads: 1), noisy)
        // The first sample by hand: decode, resize, perturb with its key, normalise.
        let index = set.indices[refs[0].shard], key = index.key(refs[0].index)
        let img = try Perturbation.noise(sigma: 6).apply(
            ImageResize.resize(try ImageCodec.decode(try index.image(refs[0].index), item: key), width: 16, height: 16, mode: .openCVLinear), key: key)
        var expected = [Float](repeating: 0, count: 3 * 16 * 16)
        expected.withUnsafeMutableBufferPointer { Augmenter.normalize(img, mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5], into: $0.baseAddress!) }
        XCTAssertEqual(Array(noisy.prefix(expected.count)).map(\.bitPattern), expected.map(\.bitPattern))
    }
}
