import Foundation
import RadarCore
import XCTest

/// Commands whose disk fills, on a 3 MiB tmpfs in a private mount namespace (CI runs as root, as
/// the namespace-based multi-host tests need): one line that says what happened and what is
/// kept, a non-zero exit, and nothing half-written left behind.
final class DiskFullTests: XCTestCase {
    /// Runs `radar` with `args` (where "MNT" stands for the small disk's folder) and lists
    /// `MNT/listed` afterwards: the status, the error line, and the listing.
    func onSmallDisk(_ args: [String], listed: String) throws -> (status: Int32, error: String, listing: [String], mnt: String) {
        let mnt = NSTemporaryDirectory() + "radar-small-\(UUID().uuidString.prefix(6))"
        try FileManager.default.createDirectory(atPath: mnt, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: mnt) }
        let argv = [MPITrainingTests.products.appendingPathComponent("radar").path] + args.map { $0.replacingOccurrences(of: "MNT", with: mnt) }
        let script = "mount -t tmpfs -o size=3M tmpfs \"$0\" && \"$@\"; rc=$?; echo '--'; ls -A \"$0/\(listed)\"; exit $rc"
        let (rc, text) = try Process.runStatus(["unshare", "-m", "sh", "-c", script, mnt] + argv)
        let parts = text.components(separatedBy: "\n--\n")
        XCTAssertEqual(parts.count, 2, text)
        let error = parts[0].split(separator: "\n").first { $0.hasPrefix("radar: error:") }.map(String.init) ?? text
        return (rc, error, (parts.last ?? "").split(separator: "\n").map(String.init), mnt)
    }

    /// The checkpoint write says what the file needs and what is free (it said only "No space
    /// left on device"); no temporary is left.
    func testACheckpointOnAFullDiskSaysWhatItNeedsAndLeavesNoTemporary() throws {
        let r = try onSmallDisk(["train", "--data", MPITrainingTests.dataset, "--output", "MNT/o", "--experiment", "e", "--config", "tiny",
                                 "--batch-size", "4", "--num-epochs", "2", "--max-steps-per-epoch", "1", "--accumulation-steps", "1", "--threads", "1"],
                                listed: "o/e")
        XCTAssertEqual(r.status, 1, r.error)
        XCTAssertTrue(r.error.contains("/o/e/") && r.error.contains(".safetensors.lz4: write failed: No space left on device (the file needs up to "), r.error)
        XCTAssertTrue(r.error.contains(" MiB free in \(r.mnt)/o/e)"), r.error)
        XCTAssertFalse(r.listing.contains { $0.contains(".tmp-") }, "\(r.listing)")
    }

    /// A download that fills the disk names the file, what is left to fetch against what is free,
    /// and that the part downloaded is kept for the same command to resume (it said "write
    /// failed: No space left on device" against the URL). The archive comes from a local HTTP
    /// server laid out as the Hub, in another process.
    func testADownloadOnAFullDiskSaysWhatIsKeptAndWhatItNeeds() throws {
        let root = NSTemporaryDirectory() + "radar-hub-\(UUID().uuidString.prefix(6))"
        defer { try? FileManager.default.removeItem(atPath: root) }
        let files = root + "/datasets/xingjunm/WildDeepfake/resolve/main/fake_test"
        try FileManager.default.createDirectory(atPath: files, withIntermediateDirectories: true)
        try Data((0..<4_500_000).map { UInt8(truncatingIfNeeded: $0 &* 2_654_435_761 >> 13) }).write(to: URL(fileURLWithPath: files + "/1.tar.gz"))
        try Data("fake_test/1.tar.gz\n".utf8).write(to: URL(fileURLWithPath: root + "/list.txt"))
        let server = Process()
        server.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        server.arguments = ["python3", "-c", """
            import functools, http.server, sys
            handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])
            s = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
            print(s.server_address[1], flush=True)
            s.serve_forever()
            """, root]
        let out = Pipe()
        server.standardOutput = out
        server.standardError = FileHandle.nullDevice
        try server.run()
        defer { server.terminate(); server.waitUntilExit() }
        let port = try XCTUnwrap(String(data: out.fileHandleForReading.availableData, encoding: .utf8).flatMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) })
        let r = try onSmallDisk(["prepare", "--source", "hf", "--endpoint", "http://127.0.0.1:\(port)", "--file-list", root + "/list.txt", "--output", "MNT/d"],
                                listed: "d/downloads/fake_test")
        XCTAssertEqual(r.status, 1, r.error)
        let part = "\(r.mnt)/d/downloads/fake_test/1.tar.gz.part"
        XCTAssertTrue(r.error.contains(": cannot write \(part): No space left on device (") && r.error.contains(" MiB still to fetch, 0.0 MiB free in \(r.mnt)/d/downloads/fake_test)"), r.error)
        XCTAssertTrue(r.error.hasSuffix(" MiB downloaded are kept in \(part): the same command resumes from there once there is room"), r.error)
        XCTAssertEqual(r.listing, ["1.tar.gz.part"])
    }

    /// `radar synth` (as `radar prepare`): the system's reason (libarchive said "Write error"),
    /// the finished shards kept and said so, the unfinished ones removed (two were left, holding
    /// the space).
    func testAPreparationOnAFullDiskKeepsFinishedShardsAndRemovesPartialOnes() throws {
        let r = try onSmallDisk(["synth", "--output", "MNT/s", "--count", "2000", "--size", "64", "--shard-size", "100"], listed: "s")
        XCTAssertEqual(r.status, 1, r.error)
        // The shard's write fills the disk (libarchive's "Write error: ..."), or, where a shard
        // just fit, its index file's ("write failed: ...").
        XCTAssertTrue((r.error.contains("Write error: No space left on device (") || r.error.contains(".idx: write failed: No space left on device ("))
                      && r.error.contains(" finished shards in \(r.mnt)/s kept: the same command resumes once that is fixed)"), r.error)
        XCTAssertTrue(r.listing.contains("shard-000000.tar"), "\(r.listing)")
        XCTAssertFalse(r.listing.contains { $0.hasSuffix(".partial") }, "\(r.listing)")
    }

    /// An export whose zip fills the disk says what the zip needs and what is free (it said
    /// only "Write error: No space left on device"), and leaves no partial zip.
    func testAnExportOnAFullDiskSaysWhatTheZipNeedsAndLeavesNoPartialFile() throws {
        let runs = NSTemporaryDirectory() + "radar-export-full-\(UUID().uuidString.prefix(6))"
        defer { try? FileManager.default.removeItem(atPath: runs) }
        let (rc, said) = try Process.runStatus([MPITrainingTests.products.appendingPathComponent("radar").path, "train", "--data", MPITrainingTests.dataset,
                                                "--output", runs, "--experiment", "e", "--config", "tiny", "--batch-size", "4", "--num-epochs", "1",
                                                "--max-steps-per-epoch", "1", "--accumulation-steps", "1", "--threads", "1"])
        XCTAssertEqual(rc, 0, said)
        let r = try onSmallDisk(["export", "--results-dir", runs + "/e", "--output-dir", "MNT/ex"], listed: "ex")
        XCTAssertEqual(r.status, 1, r.error)
        XCTAssertTrue(r.error.contains("No space left on device (the file needs up to ") && r.error.contains(" MiB free in \(r.mnt)/ex)"), r.error)
        XCTAssertEqual(r.listing, [], "no partial zip left")
    }
}
