import Foundation

/// One experiment folder at a glance (`radar runs`): where it stands, how far it got, its best
/// validation AUC and its test metrics, read from the files a run writes (`config.json`,
/// `metrics.jsonl`, `metrics.json`, the checkpoints and the folder's `.lock`). Nothing is
/// locked or written: a run starting meanwhile is never disturbed.
public struct RunSummary: Sendable {
    public enum State: String, Sendable {
        /// A process on this machine holds the folder's lock.
        case running
        /// The run wrote its test metrics (metrics.json) after its last step.
        case finished
        /// A last checkpoint and no final metrics since: stopped (preempted, failed, or at
        /// --stop-after-steps), `--resume` continues it; or running on another machine.
        case stopped
        /// Neither checkpoints nor metrics: a run that never finished an epoch or a step.
        case empty
    }

    public let name: String
    public let state: State
    /// The lock file's words ("pid N on HOST") while running.
    public let holder: String?
    public let epochsDone: Int, epochs: Int?, step: Int?
    public let bestValAUC: Double?, bestEpoch: Int?
    /// metrics.json's test metrics (finished runs).
    public let test: [String: Double]
    /// The temperature the run fitted at its end (metrics.json's `calibration`; finished runs).
    public let temperature: Double?
    /// The last epoch's training images/s (all ranks).
    public let imagesPerSecond: Double?
    public let worldSize: Int?, batchSize: Int?, device: String?
    /// "img 224 patch 16 dim 384 depth 12" from the run's config.
    public let model: String?
    /// The newest write among the run's metrics and checkpoints.
    public let updated: Date?

    /// Every experiment folder under `output` (a folder with a run's config.json, metrics or
    /// checkpoints), by name; where `output` is itself one (and holds none), that one (`radar
    /// runs outputs/NAME` said "no experiments in outputs/NAME").
    public static func scan(_ output: String) throws -> [RunSummary] {
        let fm = FileManager.default
        var isDir: ObjCBool = false
        let exists = fm.fileExists(atPath: output, isDirectory: &isDir)
        guard exists, isDir.boolValue else {
            throw DatasetError(path: output, reason: (exists ? "a file, not a folder" : "no such folder") + " (the --output of radar train / radar-worker)")
        }
        let held = lockedInodes()
        func isRun(_ dir: String) -> Bool {
            ["config.json", "metrics.jsonl", "last.safetensors.lz4"].contains(where: { fm.fileExists(atPath: (dir as NSString).appendingPathComponent($0)) })
        }
        let runs = try fm.contentsOfDirectory(atPath: output).sorted().compactMap { name -> RunSummary? in
            let dir = (output as NSString).appendingPathComponent(name)
            guard !name.hasPrefix("."), fm.fileExists(atPath: dir, isDirectory: &isDir), isDir.boolValue, isRun(dir) else { return nil }
            return summary(name: name, dir: dir, held: held)
        }
        if runs.isEmpty && isRun(output) {
            let name = ((output as NSString).standardizingPath as NSString).lastPathComponent
            return [summary(name: name, dir: output, held: held)]
        }
        return runs
    }

    /// (device, inode) of every flock held on this machine (/proc/locks); nil where unreadable.
    static func lockedInodes() -> Set<String>? {
        guard let text = readKernelFile("/proc/locks") else { return nil }
        var out = Set<String>()
        for line in text.split(separator: "\n") {
            let f = line.split(separator: " ", omittingEmptySubsequences: true)
            // "1: FLOCK  ADVISORY  WRITE 13448 fe:00:16220189 0 EOF" (blocked waiters have "->")
            guard f.count >= 6, f[1] == "FLOCK", !f.contains("->") else { continue }
            let id = f[5].split(separator: ":")
            guard id.count == 3, let major = Int(id[0], radix: 16), let minor = Int(id[1], radix: 16), let inode = UInt64(id[2]) else { continue }
            out.insert("\(major):\(minor):\(inode)")
        }
        return out
    }

    static func inodeKey(_ path: String) -> String? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        // glibc's gnu_dev_major / gnu_dev_minor, as the kernel prints them in /proc/locks.
        let dev = UInt64(st.st_dev)
        let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & ~UInt64(0xfff))
        let minor = (dev & 0xff) | ((dev >> 12) & ~UInt64(0xff))
        return "\(major):\(minor):\(st.st_ino)"
    }

    static func summary(name: String, dir: String, held: Set<String>?) -> RunSummary {
        let fm = FileManager.default
        func path(_ f: String) -> String { (dir as NSString).appendingPathComponent(f) }
        func json(_ f: String) -> [String: Any]? {
            fm.contents(atPath: path(f)).flatMap { try? JSONSerialization.jsonObject(with: $0) as? [String: Any] }
        }
        func modified(_ f: String) -> Date? { (try? fm.attributesOfItem(atPath: path(f)))?[.modificationDate] as? Date }
        let config = json("config.json"), final = json("metrics.json")
        // metrics.jsonl: the last step line's step, each epoch line's validation AUC and speed.
        var step: Int?, epochsDone = 0, best: (auc: Double, epoch: Int)?, speed: Double?
        if let text = fm.contents(atPath: path("metrics.jsonl")) {
            // Only epoch lines and the last step line are parsed: a 30-epoch WildDeepfake run
            // writes some 135,000 step lines (parsing each took 2.5 s a run).
            let epochKey = Data("\"train_loss\"".utf8), stepKey = Data("\"loss_total\"".utf8)
            var lastStep: Data?
            for line in text.split(separator: UInt8(ascii: "\n")) {
                if line.range(of: epochKey) != nil {
                    guard let o = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any], let e = o["epoch"] as? Int else { continue }
                    epochsDone = max(epochsDone, e + 1)
                    if let s = o["images_per_s"] as? Double { speed = s }
                    if let auc = (o["val"] as? [String: Any])?["auc"] as? Double, auc.isFinite, auc > (best?.auc ?? -.infinity) { best = (auc, e) }
                } else if line.range(of: stepKey) != nil {
                    lastStep = Data(line)
                }
            }
            if let lastStep, let o = try? JSONSerialization.jsonObject(with: lastStep) as? [String: Any] { step = o["step"] as? Int }
        }
        let updated = ["metrics.jsonl", "metrics.json", "last.safetensors.lz4", "best.safetensors.lz4"].compactMap(modified).max()
        var state = State.empty
        var holder: String?
        if let held, let key = inodeKey(path(".lock")), held.contains(key) {
            state = .running
            holder = (try? String(contentsOfFile: path(".lock"), encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
        } else if final?["test_metrics"] != nil, let done = modified("metrics.json"), done >= (modified("metrics.jsonl") ?? .distantPast) {
            state = .finished
        } else if fm.fileExists(atPath: path("last.safetensors.lz4")) || step != nil {
            state = .stopped
        }
        var test: [String: Double] = [:]
        if state == .finished, let t = final?["test_metrics"] as? [String: Any] {
            for (k, v) in t { if let d = v as? Double { test[k] = d } }
        }
        var model: String?
        if let m = config?["model"] as? [String: Any], let img = m["img_size"] as? Int, let patch = m["patch_size"] as? Int,
           let dim = m["embed_dim"] as? Int, let depth = m["depth"] as? Int {
            model = "img \(img) patch \(patch) dim \(dim) depth \(depth)"
        }
        let temperature = state == .finished ? (final?["calibration"] as? [String: Any])?["temperature"] as? Double : nil
        return RunSummary(name: name, state: state, holder: holder, epochsDone: epochsDone, epochs: config?["num_epochs"] as? Int, step: step,
                          bestValAUC: best?.auc, bestEpoch: best.map { $0.epoch + 1 }, test: test, temperature: temperature, imagesPerSecond: speed,
                          worldSize: config?["world_size"] as? Int, batchSize: config?["batch_size"] as? Int, device: config?["device"] as? String,
                          model: model, updated: updated)
    }

    /// `radar runs --json`'s object (absent values null).
    public var json: [String: Any] {
        func v(_ x: Any?) -> Any { x ?? NSNull() }
        return ["name": name, "state": state.rawValue, "holder": v(holder), "epochs_done": epochsDone, "epochs": v(epochs), "step": v(step),
                "best_val_auc": v(bestValAUC), "best_epoch": v(bestEpoch), "test_metrics": test, "images_per_s": v(imagesPerSecond),
                "temperature": v(temperature), "world_size": v(worldSize), "batch_size": v(batchSize), "device": v(device), "model": v(model),
                "updated": v(updated.map { ISO8601DateFormatter().string(from: $0) })]
    }
}
