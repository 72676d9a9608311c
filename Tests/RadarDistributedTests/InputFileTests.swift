import Foundation
import RadarCore
import RadarDistributed
import XCTest

/// Small input files given as pipes (process substitution, `--token-file <(pass show radar/token)`,
/// /dev/stdin): read to their end, where Foundation's readers gave nil ("cannot read the token
/// file"); an input that never ends, or a folder, is an error naming why.
final class InputFileTests: XCTestCase {
    /// `body` gets a /dev/fd path to a pipe another thread writes `text` into and then closes.
    func throughAPipe<T>(_ text: String, _ body: (String) throws -> T) throws -> T {
        var fds: [Int32] = [-1, -1]
        XCTAssertEqual(pipe(&fds), 0)
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }  // (a process another test starts must not hold the write end)
        defer { close(fds[0]) }
        let bytes = Array(text.utf8), write = fds[1]
        let writer = Thread {
            // A reader that stops early must fail the test, not end the process with SIGPIPE.
            var set = sigset_t()
            sigemptyset(&set)
            sigaddset(&set, SIGPIPE)
            pthread_sigmask(SIG_BLOCK, &set, nil)
            _ = bytes.withUnsafeBytes { writeAll(write, $0) }
            close(write)
        }
        writer.start()
        return try body("/dev/fd/\(fds[0])")
    }

    func testTokensConfigsListsAndCalibrationsReadFromPipes() throws {
        let token = String(repeating: "0123456789abcdef", count: 4)
        XCTAssertEqual(try throughAPipe(token + "\n") { try JobToken.read(file: $0, environment: [:]) }, Data(token.utf8))
        let tiny = RADARConfig.preset("tiny")!
        XCTAssertEqual(try throughAPipe(String(decoding: tiny.jsonData(), as: UTF8.self)) { try RADARConfig.load($0) }, tiny)
        XCTAssertEqual(try throughAPipe("a.tar.gz\n# a comment\n\nb.tar.gz\n") { try HuggingFaceDownloader.readFileList($0) }, ["a.tar.gz", "b.tar.gz"])
        XCTAssertEqual(try throughAPipe("\u{FEFF}a.tar.gz\r\nb.tar.gz") { try HuggingFaceDownloader.readFileList($0) }, ["a.tar.gz", "b.tar.gz"], "a byte order mark and CRLF")
        XCTAssertEqual(try throughAPipe(#"{"temperature": 1.5}"#) { try TemperatureScaling.resolve($0) }, 1.5)
        // More than the page a pipe holds at once (64 KiB): read to the end.
        let long = (0..<20_000).map { "deepfake_in_the_wild/fake_train/\($0).tar.gz" }
        XCTAssertEqual(try throughAPipe(long.joined(separator: "\n")) { try HuggingFaceDownloader.readFileList($0) }, long)
        // Endless, oversized or a folder: said, not read for ever.
        XCTAssertThrowsError(try throughAPipe(String(repeating: "f", count: 70_000)) { try JobToken.read(file: $0, environment: [:]) }) {
            XCTAssertTrue("\($0)".hasSuffix(": cannot read the token file: more than 64 KiB, too large for what it stands for"), "\($0)")
        }
        // An endless device is refused at once (/dev/zero was read up to the limit: 16 GiB for
        // `radar compare`'s predictions files); /dev/null is read, as empty.
        XCTAssertThrowsError(try JobToken.read(file: "/dev/zero", environment: [:])) {
            XCTAssertEqual("\($0)", "/dev/zero: cannot read the token file: a device, not a regular file")
        }
        XCTAssertThrowsError(try PredictionTable(path: "/dev/urandom")) {
            XCTAssertEqual("\($0)", "/dev/urandom: cannot read (a device, not a regular file)")
        }
        XCTAssertEqual(try readInputFile("/dev/null", limit: 10), Data())
        let folder = NSTemporaryDirectory()
        XCTAssertThrowsError(try JobToken.read(file: folder, environment: [:])) {
            XCTAssertEqual("\($0)", "\(folder): cannot read the token file: a folder, not a file")
        }
        XCTAssertThrowsError(try JobToken.read(file: "/nonexistent/token", environment: [:])) {
            XCTAssertEqual("\($0)", "/nonexistent/token: cannot read the token file: No such file or directory")
        }
    }

    /// Results on stdout that cannot all be written (a full disk: /dev/full) are an error naming
    /// standard output and a non-zero exit; they exited 0 with the output cut short. A reader that
    /// stops early (`| head -1`) ends the program as it ends every Unix program, with SIGPIPE.
    func testStandardOutputThatCannotBeWrittenIsAnError() throws {
        let bin = MPITrainingTests.products.appendingPathComponent("radar").path
        let root = NSTemporaryDirectory() + "radar-stdout-full-\(UUID().uuidString.prefix(6))"
        defer { try? FileManager.default.removeItem(atPath: root) }
        // 400 experiments: a table over libc's 4 KiB buffer, so writes fail while it prints, and
        // one that fits in the buffer, so only the last flush fails.
        for count in [400, 1] {
            let outputs = root + "/o\(count)"
            for i in 0..<count {
                try FileManager.default.createDirectory(atPath: "\(outputs)/experiment_\(i)", withIntermediateDirectories: true)
                XCTAssertTrue(FileManager.default.createFile(atPath: "\(outputs)/experiment_\(i)/metrics.jsonl", contents: Data()))  // an empty run
            }
            let p = Process()
            p.executableURL = URL(fileURLWithPath: bin)
            p.arguments = ["runs", outputs]
            p.standardOutput = try XCTUnwrap(FileHandle(forWritingAtPath: "/dev/full"))
            let err = Pipe()
            p.standardError = err
            try p.run()
            let said = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            p.waitUntilExit()
            XCTAssertEqual(p.terminationStatus, 1, said)
            XCTAssertEqual(said, "radar: error: standard output: No space left on device (what was printed is incomplete)\n")
            // The same to a file: all of it, exit 0.
            let (rc, table) = try Process.runStatus([bin, "runs", outputs])
            XCTAssertEqual(rc, 0)
            XCTAssertEqual(table.split(separator: "\n").count, count + 1, table)
        }
        // (The table fits in a pipe's buffer, so radar may finish before head closes it: 0 or SIGPIPE's 141.)
        let (rc, said) = try Process.runStatus(["bash", "-c", "'\(bin)' runs '\(root)/o400' | head -1 >/dev/null; echo \"status ${PIPESTATUS[0]}\""])
        XCTAssertEqual(rc, 0)
        XCTAssertTrue(said == "status 0\n" || said == "status 141\n", said)
    }

    /// Standard error that cannot be written (a full disk under `2>log`, /dev/full, a terminal
    /// gone after a hangup, a `| tee` that ended): a run goes on to its checkpoints and ends as it
    /// would have, a failing command still exits 1. Foundation's `FileHandle.write` traps on a
    /// failed write, so each of these ended with "Illegal instruction" (132) at the first line,
    /// and a reader that went away killed the run with SIGPIPE.
    func testStandardErrorThatCannotBeWrittenDoesNotEndARun() throws {
        let bin = MPITrainingTests.products.appendingPathComponent("radar").path
        let root = NSTemporaryDirectory() + "radar-stderr-full-\(UUID().uuidString.prefix(6))"
        defer { try? FileManager.default.removeItem(atPath: root) }
        func run(_ args: [String], stderr: Any) throws -> Int32 {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: bin)
            p.arguments = args
            var env = ProcessInfo.processInfo.environment
            env["OPENBLAS_NUM_THREADS"] = "1"
            p.environment = env
            p.standardOutput = FileHandle.nullDevice
            p.standardError = stderr
            try p.run()
            p.waitUntilExit()
            return p.terminationStatus
        }
        let full = try XCTUnwrap(FileHandle(forWritingAtPath: "/dev/full"))
        let gone = Pipe()
        try gone.fileHandleForReading.close()  // the reader has ended: writes get EPIPE (or SIGPIPE)
        for (name, stderr) in [("full", full as Any), ("gone", gone as Any)] {
            let out = "\(root)/\(name)"
            let rc = try run(["train", "--data", MPITrainingTests.dataset, "--output", out, "--experiment", "e", "--config", "tiny",
                              "--batch-size", "4", "--num-epochs", "2", "--max-steps-per-epoch", "2", "--accumulation-steps", "1", "--threads", "1"],
                             stderr: stderr)
            XCTAssertEqual(rc, 0, "radar train with standard error \(name)")
            XCTAssertTrue(FileManager.default.fileExists(atPath: out + "/e/model.safetensors"), name)
        }
        XCTAssertEqual(try run(["predict", "--checkpoint", root + "/none.safetensors", root + "/none.png"], stderr: full), 1)
    }
}
