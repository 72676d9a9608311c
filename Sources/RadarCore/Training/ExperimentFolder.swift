import Foundation

/// Experiment folders under `--output`: default names, and the rule that one folder holds one run.
public enum ExperimentFolder {
    /// The files a run writes. A folder holding any of them holds a run.
    public static let runFiles = ["config.json", "metrics.json", "metrics.jsonl", "last.safetensors.lz4", "best.safetensors.lz4",
                                  "model.safetensors", "plots", "tensorboard"]

    /// The run files present in `directory`.
    public static func runFilesPresent(in directory: String) -> [String] {
        runFiles.filter { FileManager.default.fileExists(atPath: (directory as NSString).appendingPathComponent($0)) }
    }

    /// `radar_YYYYMMDD_HHMMSS` (local time), as the reference names its runs.
    public static func timestampedName(_ date: Date = Date()) -> String {
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX")
        f.dateFormat = "yyyyMMdd_HHmmss"
        return "radar_" + f.string(from: date)
    }

    /// The newest experiment in `output` that has a last checkpoint (by the checkpoint's time).
    public static func newestResumable(in output: String) -> String? {
        let fm = FileManager.default
        let names = (try? fm.contentsOfDirectory(atPath: output)) ?? []
        return names.compactMap { name -> (String, Date)? in
            let last = ((output as NSString).appendingPathComponent(name) as NSString).appendingPathComponent("last.safetensors.lz4")
            guard let d = (try? fm.attributesOfItem(atPath: last))?[.modificationDate] as? Date else { return nil }
            return (name, d)
        }.max { $0.1 < $1.1 }?.0
    }

    /// The experiment a run without `--experiment` uses: with `--resume auto`, the newest one in
    /// `output` with a last checkpoint; otherwise a new timestamped name (with `_2`, `_3`, ... if
    /// that folder already exists).
    public static func defaultName(output: String, resume: String?, now: Date = Date()) -> String {
        if resume == "auto", let newest = newestResumable(in: output) { return newest }
        let base = timestampedName(now)
        var name = base, n = 1
        while FileManager.default.fileExists(atPath: (output as NSString).appendingPathComponent(name)) {
            n += 1
            name = "\(base)_\(n)"
        }
        return name
    }

    /// Removes `directory` where the run that made it ended before its first optimizer step: it
    /// holds only the lock, config.json and an empty step log (a run out of memory sizing its
    /// batch left one such folder per try, listed by radar runs as empty). Anything else in it,
    /// or a step log with a line, keeps it. Returns whether it was removed.
    @discardableResult
    public static func removeIfNeverStepped(_ directory: String) -> Bool {
        let fm = FileManager.default
        guard let names = try? fm.contentsOfDirectory(atPath: directory),
              Set(names).isSubset(of: [".lock", "config.json", "metrics.jsonl"]) else { return false }
        guard stepLogIsEmpty(directory) else { return false }
        for name in names { unlink((directory as NSString).appendingPathComponent(name)) }
        return rmdir(directory) == 0
    }

    /// Whether the folder's metrics.jsonl has no line (or is absent): its run took no step.
    static func stepLogIsEmpty(_ directory: String) -> Bool {
        ((try? FileManager.default.attributesOfItem(atPath: (directory as NSString).appendingPathComponent("metrics.jsonl")))?[.size] as? Int ?? 0) == 0
    }

    /// Refuses to start a fresh run in a folder that holds another one (unless `overwrite`, which
    /// removes the previous run's files); returns what was removed.
    public static func prepareFresh(_ directory: String, overwrite: Bool) throws -> [String] {
        let present = runFilesPresent(in: directory)
        if present.isEmpty { return [] }
        // A run that ended before its first optimizer step (out of memory sizing the batch, say)
        // left only its config and an empty step log: nothing to keep, so it does not block the
        // same command again (it was refused, pointing at a --resume auto that had no checkpoint).
        let neverStepped = Set(present).isSubset(of: ["config.json", "metrics.jsonl"]) && stepLogIsEmpty(directory)
        guard overwrite || neverStepped else {
            var when = ""
            if let d = (try? FileManager.default.attributesOfItem(atPath: (directory as NSString).appendingPathComponent(present[0])))?[.modificationDate] as? Date {
                when = ", last written " + ISO8601DateFormatter().string(from: d)
            }
            throw DatasetError(path: directory, reason: "holds another run (\(present.joined(separator: ", "))\(when)): pass --resume auto to continue it, --overwrite to replace it, or choose another --experiment")
        }
        for name in present { try FileManager.default.removeItem(atPath: (directory as NSString).appendingPathComponent(name)) }
        return present
    }
}
