import Foundation
import RadarCore
import XCTest

/// A run whose disk fills: the checkpoint write fails with one line that says what the file
/// needs and what is free (it said only "No space left on device"), exit 1, and no temporary
/// left behind. The small disk is a 3 MiB tmpfs in a private mount namespace (CI runs as root,
/// as the namespace-based multi-host tests need).
final class DiskFullTests: XCTestCase {
    func testACheckpointOnAFullDiskSaysWhatItNeedsAndLeavesNoTemporary() throws {
        let mnt = NSTemporaryDirectory() + "radar-small-\(UUID().uuidString.prefix(6))"
        try FileManager.default.createDirectory(atPath: mnt, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: mnt) }
        let radar = MPITrainingTests.products.appendingPathComponent("radar").path
        let train = [radar, "train", "--data", MPITrainingTests.dataset, "--output", mnt + "/o", "--experiment", "e", "--config", "tiny",
                     "--batch-size", "4", "--num-epochs", "2", "--max-steps-per-epoch", "1", "--accumulation-steps", "1", "--threads", "1"]
        let script = "mount -t tmpfs -o size=3M tmpfs \"$0\" && \"$@\"; rc=$?; ls -A \"$0/o/e\"; exit $rc"
        let (rc, text) = try Process.runStatus(["unshare", "-m", "sh", "-c", script, mnt] + train)
        XCTAssertEqual(rc, 1, text)
        let error = try XCTUnwrap(text.split(separator: "\n").first { $0.hasPrefix("radar: error:") }, text)
        XCTAssertTrue(error.contains("/o/e/") && error.contains(".safetensors.lz4: write failed: No space left on device (the file needs up to "),
                      String(error))
        XCTAssertTrue(error.contains(" MiB free in \(mnt)/o/e)"), String(error))
        // The folder's listing (printed inside the namespace): no temporary of the failed write.
        XCTAssertFalse(text.contains(".tmp-"), text)
    }

    /// `radar synth` (as `radar prepare`) on a full disk: the system's reason (libarchive said
    /// "Write error"), the finished shards kept and said so, the unfinished ones removed (two were
    /// left, holding the space).
    func testAPreparationOnAFullDiskKeepsFinishedShardsAndRemovesPartialOnes() throws {
        let mnt = NSTemporaryDirectory() + "radar-small-\(UUID().uuidString.prefix(6))"
        try FileManager.default.createDirectory(atPath: mnt, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: mnt) }
        let synth = [MPITrainingTests.products.appendingPathComponent("radar").path, "synth", "--output", mnt + "/s", "--count", "2000",
                     "--size", "64", "--shard-size", "100"]
        let script = "mount -t tmpfs -o size=3M tmpfs \"$0\" && \"$@\"; rc=$?; ls -A \"$0/s\"; exit $rc"
        let (rc, text) = try Process.runStatus(["unshare", "-m", "sh", "-c", script, mnt] + synth)
        XCTAssertEqual(rc, 1, text)
        let error = try XCTUnwrap(text.split(separator: "\n").first { $0.hasPrefix("radar: error:") }, text)
        XCTAssertTrue(error.contains("Write error: No space left on device (") && error.contains(" finished shards in \(mnt)/s kept: the same command resumes once that is fixed)"),
                      String(error))
        let listing = text.split(separator: "\n").filter { !$0.hasPrefix("radar") }
        XCTAssertTrue(listing.contains("shard-000000.tar"), text)
        XCTAssertFalse(listing.contains { $0.hasSuffix(".partial") }, text)
    }
}
