import Foundation
import RadarCore
import XCTest

/// `radar prepare` on archives with members that declare huge sizes: a 256 MiB member (zeros,
/// 1 MB gzipped) and a 10 GiB GNU-sparse member are skipped and counted without being read, and
/// the process stays far below their size. (Before, memory followed the declared size.)
final class PrepareLimitsTests: XCTestCase {
    func testOversizedAndSparseMembersAreSkippedWithoutBeingRead() throws {
        let root = NSTemporaryDirectory() + "radar-bigmember-\(UUID().uuidString.prefix(6))"
        let faces = SyntheticFaces(size: 16, seed: 3)
        for (dir, archive) in [("fake_train", 1), ("real_train", 2), ("fake_test", 3), ("real_test", 4)] {
            let label = dir.hasPrefix("fake") ? "fake" : "real"
            let path = "\(root)/deepfake_in_the_wild/\(dir)"
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
            let w = try TarWriter(path: "\(path)/\(archive).tar.gz", format: .tarGzip)
            for s in 0..<4 { for f in 0..<3 {
                try w.add(name: "./\(archive)/\(label)/\(100 + s)/\(f).png", data: try ImageCodec.encodePNG(faces.rgbImage(s * 3 + f, label: label == "fake" ? 1 : 0)))
            } }
            try w.close()
        }
        // GNU tar writes the crafted members: zeros in a normal member, and a sparse one.
        let staging = root + "/staging"
        for (sub, size) in [("5/fake/7", "256M"), ("6/fake/8", "10G")] {
            try FileManager.default.createDirectory(atPath: "\(staging)/\(sub)", withIntermediateDirectories: true)
            let (rc, text) = try Process.runStatus(["truncate", "-s", size, "\(staging)/\(sub)/1.png"])
            XCTAssertEqual(rc, 0, text)
        }
        let fakeTrain = "\(root)/deepfake_in_the_wild/fake_train"
        var (rc, text) = try Process.runStatus(["sh", "-c", "cd \(staging) && tar -cf - ./5/fake/7/1.png | gzip -1 > \(fakeTrain)/5.tar.gz"])
        XCTAssertEqual(rc, 0, text)
        (rc, text) = try Process.runStatus(["sh", "-c", "cd \(staging) && tar --sparse -czf \(fakeTrain)/6.tar.gz ./6/fake/8/1.png"])
        XCTAssertEqual(rc, 0, text)
        try FileManager.default.removeItem(atPath: staging)

        let out = root + "/out"
        (rc, text) = try Process.runStatus([MPITrainingTests.products.appendingPathComponent("radar").path, "prepare", "--source", root,
                                            "--output", out, "--val-fraction", "0.25"])
        XCTAssertEqual(rc, 0, text)
        let manifest = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out + "/manifest.json"))) as! [String: Any]
        let skipped = (manifest["skipped"] as? [[String: Any]] ?? []).map { "\($0["reason"] ?? "")" }
        XCTAssertTrue(skipped.contains { $0.contains("member of 268435456 bytes exceeds the 64 MiB limit") }, "\(skipped)")
        XCTAssertTrue(skipped.contains { $0.contains("sparse archive member") }, "\(skipped)")
        let line = try XCTUnwrap(text.split(separator: "\n").first { $0.contains("peak RSS") }, text)
        let mib = Double(String(line.components(separatedBy: "peak RSS ").last!.split(separator: " ").first!)) ?? .infinity
        print("prepare with a 256 MiB and a 10 GiB sparse member: \(line)")
        XCTAssertGreaterThan(mib, 1, "the peak RSS is parsed: \(line)")
        XCTAssertLessThan(mib, 200, String(line))
        // Each skipped member is said on stderr too, with its reason (it was only counted there).
        let said = text.split(separator: "\n").filter { $0.hasPrefix("prepare: skipped ") }
        XCTAssertEqual(said.count, skipped.count, text)
        XCTAssertTrue(said.contains { $0.contains("sparse archive member") }, text)
    }

    /// SIGTERM (or Ctrl-C) during `radar synth` / `radar prepare`: one line saying what is kept and
    /// that the same command resumes, status 143, finished shards in place (it ended without a word).
    func testAStoppedPreparationSaysWhatIsKept() throws {
        let out = NSTemporaryDirectory() + "radar-stopped-\(UUID().uuidString.prefix(6))"
        defer { try? FileManager.default.removeItem(atPath: out) }
        let p = Process()
        p.executableURL = MPITrainingTests.products.appendingPathComponent("radar")
        p.arguments = ["synth", "--output", out, "--count", "50000", "--size", "64", "--shard-size", "40"]
        let err = Pipe()
        p.standardError = err
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        // Until the journal names a finished shard (its header, then one line per shard).
        let deadline = Date().addingTimeInterval(120)
        while Date() < deadline, p.isRunning,
              (try? String(contentsOfFile: out + "/prepare-journal.jsonl", encoding: .utf8))?.split(separator: "\n").count ?? 0 < 2 {
            usleep(50_000)
        }
        XCTAssertTrue(p.isRunning, "still preparing when stopped")
        kill(p.processIdentifier, SIGTERM)
        let text = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 128 + SIGTERM, text)
        // "N finished shards in OUT (and any downloads) kept, M unfinished removed; ..."
        let said = try XCTUnwrap(text.firstMatch(of: #/^radar synth: stopped by SIGTERM: (\d+) finished shards? in (.+) \(and any downloads\) kept(, (\d+) unfinished removed)?; the same command again resumes\n$/#), text)
        XCTAssertEqual(String(said.2), out, text)
        let names = try FileManager.default.contentsOfDirectory(atPath: out)
        XCTAssertEqual(Int(said.1), names.filter { $0.hasPrefix("shard-") && $0.hasSuffix(".tar") }.count, "\(names)")
        // The shards being written are removed (a shard's worth of bytes each stayed until the
        // command was run again).
        XCTAssertEqual(names.filter { $0.hasPrefix(".shard-") }, [], text)
        XCTAssertTrue(FileManager.default.fileExists(atPath: out + "/shard-000000.tar"))
        XCTAssertFalse(FileManager.default.fileExists(atPath: out + "/manifest.json"))
    }

    /// An output folder inside the source's real/ or fake/ is refused before anything is written:
    /// it was scanned as part of the source (a skip, and on a second run its shards).
    func testAnOutputInsideTheSourceIsRefused() throws {
        let src = NSTemporaryDirectory() + "radar-inside-\(UUID().uuidString.prefix(6))"
        defer { try? FileManager.default.removeItem(atPath: src) }
        for c in ["real", "fake"] { try FileManager.default.createDirectory(atPath: src + "/" + c, withIntermediateDirectories: true) }
        let radar = MPITrainingTests.products.appendingPathComponent("radar").path
        for (out, c) in [(src + "/real/out", "real"), (src + "/fake", "fake")] {
            let (rc, text) = try Process.runStatus([radar, "prepare", "--source", src, "--output", out])
            XCTAssertNotEqual(rc, 0, text)
            XCTAssertTrue(text.contains("--output \(out) is inside the source's \(c)/ folder") && text.contains("choose a folder outside it"), text)
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: src + "/real/out"))
    }
}
