import Foundation
import RadarCore
import XCTest

/// A whole training run on the fenced device (tensor memory inaccessible to the host outside
/// backend calls): two MPI ranks with gradient accumulation, validation, `last` written and
/// resumed, then `radar evaluate` and `radar predict` from the checkpoint. Any host access that
/// bypasses the backend would end a process with SIGSEGV. The result must equal the plain CPU
/// device's bit for bit: the fence changes where memory lives, not one operation.
extension MPITrainingTests {
    func trainTwoRanks(_ out: String, device: String, stop: Int, resume: Bool) throws -> [String] {
        var args = ["--data", MPITrainingTests.dataset, "--output", out, "--experiment", "e", "--config", "tiny", "--batch-size", "4",
                    "--num-epochs", "2", "--max-steps-per-epoch", "3", "--accumulation-steps", "2", "--threads", "2",
                    "--timeout", "60", "--device", device, "--stop-after-steps", String(stop), "--verify-replicas"]
        if resume { args += ["--resume", "auto"] }
        let r = try mpirun([(2, "radar-worker", args)], timeout: 400)
        XCTAssertEqual(r.status, 0, "\(device): \(r.err)")
        return hashes(r.out)
    }

    func testWholeRunOnTheFencedDeviceEqualsTheCPUDevice() throws {
        let fenced = tmp("fenced"), cpu = tmp("cpu")
        // 3 steps, stop (writing last), resume to the end of epoch 2 (6 steps): validation and
        // best/last checkpoints on the way.
        XCTAssertEqual(Set(try trainTwoRanks(fenced, device: "cpu-fenced", stop: 3, resume: false)).count, 1)
        let resumed = try trainTwoRanks(fenced, device: "cpu-fenced", stop: 0, resume: true)
        let plain = try trainTwoRanks(cpu, device: "cpu", stop: 0, resume: false)
        XCTAssertEqual(resumed.count, 2)
        XCTAssertEqual(Set(resumed), Set(plain), "fenced (3 + resumed 3 steps) vs cpu (6 steps) parameter hashes")
        let a = try Checkpoint.read(fenced + "/e/last.safetensors.lz4"), b = try Checkpoint.read(cpu + "/e/last.safetensors.lz4")
        XCTAssertEqual(a.state.optimizerStep, 6)
        for (k, t) in b.tensors { XCTAssertEqual(a.tensors[k]?.floats.map { $0.bitPattern }, t.floats.map { $0.bitPattern }, k) }

        let radar = MPITrainingTests.products.appendingPathComponent("radar").path
        func evaluate(_ device: String) throws -> [String: Any] {
            let d = try Process.runCapturing([radar, "evaluate", "--checkpoint", fenced + "/e/best.safetensors.lz4", "--data",
                                              MPITrainingTests.dataset, "--split", "val", "--threads", "1", "--device", device])
            return try JSONSerialization.jsonObject(with: d) as! [String: Any]
        }
        let ef = try evaluate("cpu-fenced"), ec = try evaluate("cpu")
        XCTAssertNotNil(ef["auc"] as? Double, "\(ef)")
        XCTAssertEqual(ef["auc"] as? Double, ec["auc"] as? Double)
        let img = fenced + "/face.png"
        try ImageCodec.encodePNG(SyntheticFaces(size: 32, seed: 3).rgbImage(0, label: 1)).write(to: URL(fileURLWithPath: img))
        func predict(_ device: String) throws -> String {
            String(decoding: try Process.runCapturing([radar, "predict", "--checkpoint", fenced + "/e/last.safetensors.lz4",
                                                       "--threads", "1", "--device", device, img]), as: UTF8.self)
        }
        let pf = try predict("cpu-fenced")
        XCTAssertTrue(pf.hasPrefix(img + "\t"), pf)
        XCTAssertEqual(pf, try predict("cpu"))
    }
}

/// Training flags are validated before any work: one line naming the flag, a non-zero exit.
final class TrainingFlagValidationTests: XCTestCase {
    func run(_ args: [String], command: [String] = ["train", "--data", "/nonexistent-radar-data", "--config", "tiny"],
             program: String = "radar") throws -> (status: Int32, err: String) {
        let p = Process()
        p.executableURL = MPITrainingTests.products.appendingPathComponent(program)
        p.arguments = command + args
        let err = Pipe()
        p.standardError = err
        p.standardOutput = Pipe()
        try p.run()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: e, as: UTF8.self))
    }

    /// A command that re-executes itself for better BLAS kernels keeps its name for ps, pgrep,
    /// pkill and killall (through /proc/self/exe it was "exe": `pgrep -x radar-worker` found no rank
    /// on a CPU OpenBLAS 0.3.21 takes for a Prescott, and the multi-host partition test failed).
    /// The CPU's flags say AVX-512 with BF16 (Cooperlake, the strongest): any other choice of
    /// OpenBLAS re-executes; the launcher does no product, so the kernels never run here.
    func testAReexecutedCommandKeepsItsName() throws {
        let cpuinfo = NSTemporaryDirectory() + "radar-cpuinfo-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: cpuinfo) }
        let machine = try String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)
        try machine.replacingOccurrences(of: #"(?m)^(flags\s*:.*)$"#, with: "$1 avx512f avx512bw avx512dq avx512vl avx512cd avx512_bf16",
                                         options: .regularExpression).write(toFile: cpuinfo, atomically: true, encoding: .utf8)
        let p = Process()
        p.executableURL = MPITrainingTests.products.appendingPathComponent("radar")
        p.arguments = ["launch", "-n", "1", "--", "/bin/sh", "-c", #"echo "$(cat /proc/$PPID/comm) ${RADAR_BLAS_REEXEC-none}""#]
        var env = ProcessInfo.processInfo.environment
        env["RADAR_TEST_CPUINFO"] = cpuinfo
        env["OPENBLAS_CORETYPE"] = nil
        env["RADAR_BLAS_REEXEC"] = nil
        p.environment = env
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice
        try p.run()
        let said = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0, said)
        let line = said.split(separator: "\n").last.map(String.init) ?? ""
        XCTAssertTrue(line.hasPrefix("radar "), "the launcher's name as its child sees it: \(line)")
        if line.hasSuffix(" none") { print("OpenBLAS already chose Cooperlake here: no re-execution to check") }
    }

    /// A step cap past what Int holds caps nothing (the plan multiplied it by the accumulation
    /// steps and trapped); a large checkpoint interval and stop step likewise run to the end.
    func testStepCountsPastIntRunToTheEnd() throws {
        let out = NSTemporaryDirectory() + "radar-flag-huge-\(UUID().uuidString.prefix(6))"
        defer { try? FileManager.default.removeItem(atPath: out) }
        let big = String(Int.max)
        let r = try run(["--output", out, "--experiment", "e", "--batch-size", "16", "--num-epochs", "1", "--accumulation-steps", "2", "--threads", "1",
                         "--max-steps-per-epoch", big, "--checkpoint-every", big, "--stop-after-steps", big],
                        command: ["train", "--data", MPITrainingTests.dataset, "--config", "tiny"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(FileManager.default.fileExists(atPath: out + "/e/model.safetensors"), r.err)
    }

    func testBadValuesAreOneLineErrorsNamingTheFlag() throws {
        let cases: [([String], String)] = [
            (["--batch-size", "0"], "--batch-size must be in 1...65536, got 0"),
            // Values past any machine: sizes and step counts multiplied from them overflowed and trapped.
            (["--batch-size", "9223372036854775807"], "--batch-size must be in 1...65536, got 9223372036854775807"),
            (["--num-epochs", "9223372036854775807"], "--num-epochs must be in 1...1000000, got 9223372036854775807"),
            (["--accumulation-steps", "9223372036854775807"], "--accumulation-steps must be in 1...65536, got 9223372036854775807"),
            (["--num-epochs", "0"], "--num-epochs must be in 1...1000000, got 0"),
            (["--epochs", "0"], "--num-epochs must be in 1...1000000, got 0"),  // radar demo's spelling, the same flag
            (["--accumulation-steps", "0"], "--accumulation-steps must be in 1...65536, got 0"),
            (["--learning-rate", "nan"], "--learning-rate must be a finite number above 0"),
            (["--learning-rate", "inf"], "--learning-rate must be a finite number above 0"),
            (["--weight-decay=-1"], "--weight-decay must be"),
            (["--threads", "0"], "--threads must be from 1 to "),
            (["--loader-threads", "100000"], "--loader-threads must be from 1 to "),
            (["--experiment", "../x"], "--experiment must be a folder name inside --output"),
            (["--device", "tpu"], "--device must be one of cpu, cpu-fenced, cuda, cuda:N"),
            (["--device", "cuda:x"], "--device must be one of"),
            (["--precision", "fp16"], "--precision must be auto, fp32, tf32 or bf16, got fp16"),
            // Both were taken, --resume silently winning.
            (["--init-from", "w", "--resume", "auto"], "--init-from starts from weights with a fresh optimizer and schedule, --resume continues a run with its own: choose one"),
        ]
        // radar synth and radar prepare likewise (synth --size 7 was a crash: a failed precondition).
        let synth = ["synth", "--output", NSTemporaryDirectory() + "radar-flag-synth"]
        let prepare = ["prepare", "--source", "/nonexistent-radar-src", "--output", NSTemporaryDirectory() + "radar-flag-prep"]
        let tokenFile = NSTemporaryDirectory() + "radar-launch-token-\(getpid())"
        try String(repeating: "ab", count: 32).write(toFile: tokenFile, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: tokenFile) }
        let image = NSTemporaryDirectory() + "radar-flag-face-\(getpid()).png"
        try ImageCodec.encodePNG(SyntheticFaces(size: 32, seed: 3).rgbImage(0, label: 1)).write(to: URL(fileURLWithPath: image))
        defer { try? FileManager.default.removeItem(atPath: image) }
        let emptyRun = NSTemporaryDirectory() + "radar-flag-run-\(getpid())"
        try FileManager.default.createDirectory(atPath: emptyRun, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: emptyRun) }
        let train = ["train", "--data", "/nonexistent-radar-data", "--config", "tiny"]
        let others: [([String], String)] = [
            // Said before the model was built (a second), and with the flag's name.
            (train + ["--resume", "/nonexistent-radar-ckpt"], "--resume /nonexistent-radar-ckpt: No such file or directory"),
            (train + ["--resume", emptyRun], "--resume \(emptyRun): a folder without last.safetensors.lz4 (a run's folder has one after its first epoch"),
            (train + ["--resume", "/dev/null"], "--resume /dev/null: a device, not a regular file"),
            (train + ["--init-from", "/nonexistent-radar-w"], "--init-from /nonexistent-radar-w: No such file or directory"),
            (train + ["--init-from", emptyRun], "--init-from \(emptyRun): a folder without best.safetensors.lz4"),
            (train + ["--output", tokenFile], "--output \(tokenFile): a file, not a folder"),
            (train + ["--output", tokenFile + "/runs"], "--output \(tokenFile)/runs: \(tokenFile) is a file, not a folder"),
            // A file where the maps' folder goes: it said Foundation's "File exists".
            (["predict", "--checkpoint", "w", "--occlusion", "--occlusion-maps", tokenFile, image],
             "--occlusion-maps \(tokenFile): cannot create the folder: a file of that name exists"),
            (synth + ["--size", "7"], "--size must be in 8...4096 pixels, got 7"),
            (synth + ["--count", "0"], "--count must be in 1...10000000, got 0"),
            (synth + ["--count", "9223372036854775807"], "--count must be in 1...10000000, got 9223372036854775807"),
            (synth + ["--difficulty", "1.5"], "--difficulty must be in [0, 1], got 1.5"),
            (synth + ["--frames-per-sequence", "0"], "--frames-per-sequence must be at least 1"),
            (prepare + ["--val-fraction", "1"], "--val-fraction must be in [0, 1), got 1.0"),
            (prepare + ["--real-fraction", "0"], "--real-fraction must be in (0, 1), got 0.0"),
            (prepare + ["--max-images", "1"], "--max-images must be at least 2"),
            (prepare + ["--image-format", "jpg"], "--image-format must be keep or png, got jpg"),
            // These crashed (a failed precondition) or ran with 0 threads.
            (["evaluate", "--checkpoint", "w", "--data", "d", "--batch-size", "0"], "--batch-size must be at least 1, got 0"),
            (["serve", "--checkpoint", "w", "--batch-size", "9223372036854775807"], "--batch-size must be in 1...65536, got 9223372036854775807"),
            (["evaluate", "--checkpoint", "w", "--data", "d", "--split", "dev"], "--split must be train, val or test, got dev"),
            // Said before the kernels ran (minutes on a GPU); the repository's fixtures are found from the build folder.
            (["check-device", "--device", "cpu", "--fixtures", "/nonexistent-radar-fixtures"], "--fixtures /nonexistent-radar-fixtures: no such folder"),
            (["predict", "--checkpoint", "w", "--threads", "0", "x.png"], "--threads must be from 1 to \(max(64, 4 * ProcessInfo.processInfo.activeProcessorCount)) (four per CPU of the "),
            (["bench", "step", "--config", "tiny", "--batch", "0"], "--batch must be in 1...65536, got 0"),
            (["bench", "step", "--config", "tiny", "--accumulation-steps", "9223372036854775807"], "--accumulation-steps must be in 1...65536, got 9223372036854775807"),
            (["bench", "infer", "--config", "tiny", "--batch", "9223372036854775807"], "--batch must be in 1...65536, got 9223372036854775807"),
            (["bench", "data", "--images", "9223372036854775807"], "--images must be in 1...10000000, got 9223372036854775807"),
            (["bench", "data", "--size", "0"], "--size must be in 8...4096 pixels, got 0"),
            (["bench", "data", "--drop-caches"], "--drop-caches times opening a dataset: give it --data DIR"),
            // Said after the kernels' setup, under the root command's usage.
            (["bench", "kernels", "--precision", "fp16"], "--precision must be fp32 or bf16, got fp16"),
            (["bench", "allreduce", "--sizes", "1,x"], "--sizes must be positive MB values"),
            // These were MPI_Abort banners (checked after MPI started), or exit 2 without the usage.
            (["bench", "allreduce", "--device", "tpu"], "--device must be one of cpu, cpu-fenced, cuda, cuda:N, cuda-emulated, got tpu"),
            (["bench", "allreduce", "--transport", "udp"], "--transport must be mpi or tcp, got udp"),
            (["bench", "allreduce", "--transport", "tcp", "--verify"], "--verify compares with MPI_Allreduce: use it with --transport mpi"),
            // A malformed coordinator address was each rank's MPI_Abort, banner and all.
            (["bench", "allreduce", "--coordinator", "x"], "--coordinator x: expected HOST:PORT with a port in 1...65535"),
            (["bench", "crypto", "--mb", "0"], "--mb must be in 1...4096, got 0"),
            (["demo", "--threads", "0"], "--threads must be from 1 to "),
            (["demo", "--threads", "50000"], "more threads than CPUs only slow the work), got 50000"),
            (["demo", "--num-epochs", "0"], "--epochs must be in 1...1000000, got 0"),  // radar train's spelling
            // One sentence named five flags; a NaN learning rate and a difficulty of 2 ran.
            (["demo", "--train-images", "0"], "--train-images must be in 1...1000000, got 0"),
            (["demo", "--train-images", "9223372036854775807"], "--train-images must be in 1...1000000, got 9223372036854775807"),
            (["demo", "--val-images", "1"], "--val-images must be in 2...1000000 (an AUC needs both classes), got 1"),
            (["demo", "--batch-size", "2000"], "--batch-size must be at most --train-images (1024), got 2000"),
            (["demo", "--learning-rate", "nan"], "--learning-rate must be a finite number above 0, got nan"),
            (["demo", "--difficulty", "2"], "--difficulty must be in [0, 1], got 2.0"),
            // radar launch: a missing program was a Foundation error dump (or 127 from env per rank).
            (["launch", "-n", "0", "--", "true"], "-n must be at least 1, got 0"),
            (["launch", "-n", "100000", "--", "true"], "-n must be at most \(max(64, 4 * ProcessInfo.processInfo.activeProcessorCount)) here (four ranks per CPU of the "),
            (["launch", "-n", "2", "--grace=-1", "--", "true"], "--grace must be a finite number of seconds, 0 or more, got -1.0"),
            (["launch", "-n", "2", "--", "/nonexistent-radar-prog"], "/nonexistent-radar-prog: no such file"),
            (["launch", "-n", "2", "--", "nonexistent-radar-prog"], "nonexistent-radar-prog: not found next to radar ("),
            (["launch", "-n", "2", "--", "/tmp"], "/tmp: not an executable file"),
            // Several machines: node 0's address, a shared token and one experiment folder are needed.
            (["launch", "--nnodes", "2", "-n", "1", "--", "true"], "--nnodes 2 needs --master HOST:PORT"),
            (["launch", "--nnodes", "2", "--node-rank", "2", "--master", "h:1", "-n", "1", "--", "true"], "--node-rank must be in 0...1 (--nnodes 2), got 2"),
            (["launch", "--nnodes", "2", "--master", "fd00::1:80", "-n", "1", "--", "true"], "--master fd00::1:80: expected HOST:PORT"),
            (["launch", "--nnodes", "2", "--master", "h:1", "--token-file", tokenFile, "-n", "1", "--", "radar-worker", "--data", "d"],
             "--nnodes 2: give radar-worker --experiment NAME, the same on every node"),
        ] + (ProcessInfo.processInfo.environment["RADAR_JOB_TOKEN"] == nil
             ? [(["launch", "--nnodes", "2", "--master", "h:1", "-n", "1", "--", "true"], "--nnodes 2: every node needs the same job token")] : [])
        for (args, expected) in cases + others {
            let r = args.first?.hasPrefix("--") == false ? try run(args, command: []) : try run(args)  // a command of its own, or radar train's flags
            XCTAssertNotEqual(r.status, 0, "\(args)")
            XCTAssertFalse(r.status == 4 || r.status > 128, "\(args): crashed with status \(r.status)")
            let lines = r.err.split(separator: "\n").filter { !$0.hasPrefix("Usage") && !$0.contains("--help") && !$0.isEmpty }
            XCTAssertEqual(lines.count, 1, "\(args): \(r.err)")
            XCTAssertTrue(r.err.contains(expected), "\(args): \(r.err)")
            // A usage, where one is shown, is the command's own (radar launch's errors showed the
            // top level's, "radar <subcommand>").
            XCTAssertFalse(r.err.contains("Usage: radar <subcommand>"), "\(args): \(r.err)")
        }
        // radar launch reads a worker's `--output=DIR --resume=auto` as `--output DIR --resume auto`:
        // it named the experiment from ./outputs and added a second --transport and --resume.
        let root = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("radar-launch-\(getpid())")
        defer { try? FileManager.default.removeItem(at: root) }
        let runs = root.appendingPathComponent("runs")
        for (name, age) in [("older", 100.0), ("newer", 10.0)] {
            let dir = runs.appendingPathComponent(name)
            try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
            let last = dir.appendingPathComponent("last.safetensors.lz4").path
            XCTAssertTrue(FileManager.default.createFile(atPath: last, contents: Data([0])))
            try FileManager.default.setAttributes([.modificationDate: Date().addingTimeInterval(-age)], ofItemAtPath: last)
        }
        let worker = root.appendingPathComponent("bin/radar-worker")
        try FileManager.default.createDirectory(at: worker.deletingLastPathComponent(), withIntermediateDirectories: true)
        let record = root.appendingPathComponent("args")
        try "#!/bin/sh\necho \"$RANK $*\" >> \(record.path)\n".write(to: worker, atomically: true, encoding: .utf8)
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: worker.path)
        let launched = try run(["launch", "-n", "2", "--", worker.path, "--data", "d", "--output=\(runs.path)", "--resume=auto", "--transport=tcp"], command: [])
        XCTAssertEqual(launched.status, 0, launched.err)
        XCTAssertTrue(launched.err.contains("radar launch: experiment newer"), launched.err)
        let lines = (try String(contentsOf: record, encoding: .utf8)).split(separator: "\n").sorted()
        XCTAssertEqual(lines, ["0 --data d --output=\(runs.path) --resume=auto --transport=tcp --experiment newer",
                               "1 --data d --output=\(runs.path) --resume=auto --transport=tcp --experiment newer"])
        // radar-worker's own flags (a negative bucket size ran as one bucket per parameter).
        for (args, expected) in [(["--bucket-mb=-1"], "--bucket-mb must be 0 (a bucket per parameter) or more, got -1"),
                                 (["--timeout", "0"], "--timeout must be a positive number of seconds, got 0.0"),
                                 (["--transport", "udp"], "--transport must be mpi or tcp, got udp"),
                                 // Heartbeats come every second: a smaller deadline declared healthy ranks lost.
                                 (["--heartbeat-deadline", "0.5"], "--heartbeat-deadline must be at least 2 seconds (ranks send a heartbeat every second), got 0.5")] {
            let r = try run(args, command: ["--data", "/nonexistent-radar-data", "--config", "tiny"], program: "radar-worker")
            XCTAssertEqual(r.status, 64, "\(args): \(r.err)")
            XCTAssertTrue(r.err.contains(expected), "\(args): \(r.err)")
        }
    }
}

/// The CUDA device's errors through the command line, on the emulated device: each one line
/// and a non-zero exit, never a crash.
final class CUDADeviceCLITests: XCTestCase {
    func run(_ args: [String], env: [String: String]) throws -> (status: Int32, err: String) {
        let p = Process()
        p.executableURL = MPITrainingTests.products.appendingPathComponent("radar")
        p.arguments = args
        p.environment = ProcessInfo.processInfo.environment.merging(env) { $1 }
        let err = Pipe()
        p.standardError = err
        p.standardOutput = Pipe()
        try p.run()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: e, as: UTF8.self))
    }

    func testDeviceErrorsAreOneLine() throws {
        let step = ["bench", "step", "--config", "tiny", "--repeats", "1"]
        let cases: [([String], [String: String], String)] = [
            (step + ["--device", "cuda:7"], ["RADAR_CUDA_DRIVER": "emulator"], "device cuda:7: this machine has 1 CUDA device (cuda:0)"),
            (step + ["--device", "cuda-emulated", "--batch", "512"], ["RADAR_EMULATED_MEMORY": "64M"],
             "out of device memory on cuda:0 (emulated device, 64.0 MiB (67108864 bytes)): "),
            (step + ["--device", "cpu", "--precision", "tf32"], [:], "precision tf32 needs a CUDA device"),
            // The CPU too: a batch the machine cannot hold was ended by the OOM killer without a word.
            (step + ["--device", "cpu", "--batch", "2048"], ["RADAR_HOST_MEMORY": "200M"], "out of host memory on cpu: "),
            // The benchmark's input batch (37 GB) trapped in Swift's allocator before the backend's check.
            (["bench", "step", "--config", "full", "--repeats", "1", "--device", "cpu", "--batch", "65536"], ["RADAR_HOST_MEMORY": "200M"],
             "out of host memory on cpu: 36.8 GiB (39460012032 bytes) requested, "),
        ]
        for (args, env, expected) in cases {
            let r = try run(args, env: env)
            XCTAssertEqual(r.status, 1, "\(args): \(r.err)")
            XCTAssertEqual(r.err.split(separator: "\n").count, 1, "\(args): \(r.err)")
            XCTAssertTrue(r.err.contains(expected), "\(args): \(r.err)")
        }
        let oom = try run(step + ["--device", "cuda-emulated", "--batch", "512"], env: ["RADAR_EMULATED_MEMORY": "64M"])
        XCTAssertTrue(oom.err.hasSuffix("while sizing --batch 512: lower it\n"), oom.err)
        let host = try run(step + ["--device", "cpu", "--batch", "2048"], env: ["RADAR_HOST_MEMORY": "200M"])
        XCTAssertTrue(host.err.hasSuffix("available (free and reclaimable memory plus free swap) while sizing --batch 2048: lower it\n"), host.err)
        // radar train out of memory sizing its batch leaves no experiment folder (one per try was
        // left, config.json and an empty step log, listed by radar runs as empty); a folder that
        // was there before is kept.
        let outputs = NSTemporaryDirectory() + "radar-oom-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: outputs) }
        try FileManager.default.createDirectory(atPath: outputs + "/kept", withIntermediateDirectories: true)
        let train = ["train", "--data", MPITrainingTests.dataset, "--output", outputs, "--config", "tiny", "--batch-size", "128",
                     "--accumulation-steps", "1", "--num-epochs", "1", "--threads", "1"]
        for experiment in ["made", "kept"] {
            let r = try run(train + ["--experiment", experiment], env: ["RADAR_HOST_MEMORY": "100M"])
            XCTAssertEqual(r.status, 1, r.err)
            XCTAssertTrue(r.err.hasSuffix("while sizing --batch-size 128 per rank: lower it\n"), r.err)
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: outputs), ["kept"])
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: outputs + "/kept").sorted(), [".lock", "config.json", "metrics.jsonl"])
        XCTAssertEqual(HostMemory.parseBytes("64M"), 64 << 20)
        XCTAssertEqual(HostMemory.parseBytes("2g"), 2 << 30)
        XCTAssertEqual(HostMemory.parseBytes("1000"), 1000)
        XCTAssertNil(HostMemory.parseBytes("lots"))
        XCTAssertNil(HostMemory.parseBytes("99999999999999T"), "past Int (it trapped)")
        XCTAssertGreaterThan(HostMemory.available() ?? 0, 0, "this machine's /proc/meminfo")
    }

    /// The memory cgroups' headroom: the tightest limit over the process's cgroup and its
    /// ancestors (a SLURM step inside its job), usage less the reclaimable inactive file pages
    /// (a page cache full of shards is no shortage), v2 and v1 (either spelling of the memory
    /// line), unlimited levels and a path the mount does not show (a container's own cgroup) too.
    func testCgroupHeadroomIsTheTightestAncestorLimitLessWhatCannotBeReclaimed() throws {
        let root = NSTemporaryDirectory() + "radar-cgroups-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: root) }
        func put(_ dir: String, _ files: [String: String]) throws {
            try FileManager.default.createDirectory(atPath: root + dir, withIntermediateDirectories: true)
            for (name, text) in files { try Data(text.utf8).write(to: URL(fileURLWithPath: root + dir + "/" + name)) }
        }
        // v2: a job (limit 1,000,000, 600,000 used of which 100,000 inactive file pages), an
        // unlimited level, its step (2,000,000, 1,900,000 used, nothing reclaimable).
        try put("/job", ["memory.max": "1000000\n", "memory.current": "600000\n", "memory.stat": "anon 400000\ninactive_file 100000\nactive_file 50000\n"])
        try put("/job/mid", ["memory.max": "max\n", "memory.current": "10\n"])
        try put("/job/mid/step", ["memory.max": "2000000\n", "memory.current": "1900000\n"])
        XCTAssertEqual(HostMemory.cgroupHeadroom(cgroups: "0::/job/mid/step\n", root: root), 100_000)
        XCTAssertEqual(HostMemory.cgroupHeadroom(cgroups: "0::/job/mid\n", root: root), 500_000)
        XCTAssertNil(HostMemory.cgroupHeadroom(cgroups: "0::/\n", root: root), "no limit at the root")
        XCTAssertNil(HostMemory.cgroupHeadroom(cgroups: nil, root: root))
        // v1 (a hybrid machine: the memory controller's line wins over "0::/"); Int64.max-ish is no limit.
        try put("/memory", ["memory.limit_in_bytes": "9223372036854771712\n", "memory.usage_in_bytes": "5000000\n"])
        try put("/memory/slurm/job_7", ["memory.limit_in_bytes": "4096000\n", "memory.usage_in_bytes": "1000000\n",
                                        "memory.stat": "cache 600000\ninactive_file 1\ntotal_inactive_file 500000\n"])
        for cgroups in ["9:pids:/slurm/job_7\n4:memory:/slurm/job_7\n0::/\n", "5:cpu,memory:/slurm/job_7\n"] {
            XCTAssertEqual(HostMemory.cgroupHeadroom(cgroups: cgroups, root: root), 4_096_000 - 500_000, cgroups)
        }
        // A cgroup path the mount does not show (a container mounted at its own cgroup): the
        // mount's own limit; usage above the limit (reclaim pending) leaves nothing, not less.
        try put("/memory", ["memory.limit_in_bytes": "8000000\n", "memory.usage_in_bytes": "9000000\n"])
        XCTAssertEqual(HostMemory.cgroupHeadroom(cgroups: "4:memory:/docker/abc\n", root: root), 0)
    }

    /// `--precision bf16` on the CPU: bf16 through oneDNN where the CPU has AMX-BF16 or
    /// AVX512-BF16, else fp32 after exactly one notice line; the rounded-operand check path when
    /// asked for; forcing oneDNN where it cannot run bf16 is a one-line error.
    func testCPUBF16RunsOrFallsBackWithOneNotice() throws {
        func bench(_ env: [String: String]) throws -> (status: Int32, err: String, json: [String: Any]) {
            let p = Process()
            p.executableURL = MPITrainingTests.products.appendingPathComponent("radar")
            p.arguments = ["bench", "step", "--config", "tiny", "--repeats", "1", "--threads", "1", "--device", "cpu", "--precision", "bf16"]
            p.environment = ProcessInfo.processInfo.environment.merging(env) { $1 }
            let out = Pipe(), err = Pipe()
            p.standardOutput = out
            p.standardError = err
            try p.run()
            let e = err.fileHandleForReading.readDataToEndOfFile(), o = out.fileHandleForReading.readDataToEndOfFile()
            p.waitUntilExit()
            // A refused run prints no JSON.
            let json = p.terminationStatus == 0 ? try lastJSON(String(decoding: o, as: UTF8.self)) : [:]
            return (p.terminationStatus, String(decoding: e, as: UTF8.self), json)
        }
        let flags = BLASKernels.cpuFlags()?.flags ?? []
        let auto = try bench(["RADAR_CPU_BF16": "auto"])
        XCTAssertEqual(auto.status, 0, auto.err)
        if flags.contains("amx_bf16") || flags.contains("avx512_bf16") {
            XCTAssertEqual(auto.json["precision"] as? String, "bf16", auto.err)
            XCTAssertTrue((auto.json["device"] as? String ?? "").contains("bf16 (oneDNN"), "\(auto.json)")
            XCTAssertNotNil(auto.json["onednn_implementation"] as? String, "\(auto.json)")
            XCTAssertFalse(auto.err.contains("notice"), auto.err)
        } else {
            XCTAssertEqual(auto.json["precision"] as? String, "fp32")
            XCTAssertTrue(auto.json["onednn_implementation"] is NSNull, "\(auto.json)")
            XCTAssertEqual(auto.err, "radar: notice: precision bf16: this CPU has neither AMX-BF16 nor AVX512-BF16, so bf16 products would be slower than fp32 here: computing in fp32\n")
            // Forced, oneDNN runs where its probe does: it emulates bf16 on AVX-512 cores whose
            // bf16 flags a hypervisor hides (this session's Intel Xeon), and refuses on AVX2 ones.
            let forced = try bench(["RADAR_CPU_BF16": "onednn"])
            if let why = CPUProducts.oneDNNBF16Failure() {
                XCTAssertEqual(forced.status, 1)
                XCTAssertEqual(forced.err, "radar: error: precision bf16 on the CPU: \(why)\n")
                XCTAssertTrue(why.hasPrefix("oneDNN bf16 matmul failed"), why)
            } else {
                XCTAssertEqual(forced.status, 0, forced.err)
                XCTAssertEqual(forced.json["precision"] as? String, "bf16", forced.err)
                XCTAssertTrue((forced.json["device"] as? String ?? "").contains("bf16 (oneDNN"), "\(forced.json)")
            }
        }
        let rounded = try bench(["RADAR_CPU_BF16": "rounded"])
        XCTAssertEqual(rounded.status, 0, rounded.err)
        XCTAssertEqual(rounded.json["precision"] as? String, "bf16")
        XCTAssertTrue((rounded.json["device"] as? String ?? "").contains("bf16 (operands rounded, OpenBLAS fp32 products)"), "\(rounded.json)")
        XCTAssertEqual(rounded.json["heap_allocations_per_step"] as? Int, 0, "the rounded path reuses its scratch")
    }
}
