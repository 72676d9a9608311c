import Foundation

/// `radar export`: a zip (through libarchive) of a run's best checkpoint, config.json,
/// metrics.json, plots, TensorBoard event files and a README.md summary, plus optionally a download script.
public enum RunExport {
    /// Returns the zip's path.
    public static func export(results: String, to outputDir: String, downloadScript: Bool, now: Date = Date()) throws -> String {
        let fm = FileManager.default
        // The run folder's own name, also for "." or "outputs/demo/" (`--results-dir .` made a
        // hidden "._<stamp>.zip").
        let name = URL(fileURLWithPath: results).standardizedFileURL.lastPathComponent
        try requireFinishedRun(results)
        var isFolder: ObjCBool = false
        if fm.fileExists(atPath: outputDir, isDirectory: &isFolder), !isFolder.boolValue {  // it said "File exists"
            throw DatasetError(path: outputDir, reason: "a file, not a folder (--output-dir: the folder the zip goes into, made if missing)")
        }
        try fm.createDirectory(atPath: outputDir, withIntermediateDirectories: true)
        let stamp = { () -> String in let f = DateFormatter(); f.dateFormat = "yyyyMMdd_HHmmss"; f.timeZone = TimeZone(identifier: "UTC"); return f.string(from: now) }()
        let stem = (outputDir as NSString).appendingPathComponent("\(name)_\(stamp)")
        let tmp = stem + ".zip.partial-\(getpid())"  // two exports in one second never share it
        var zipPath = stem + ".zip"
        var files = ["best.safetensors.lz4", "model.safetensors", "config.json", "metrics.json", "calibration.json"]
        let plots = ((try? fm.contentsOfDirectory(atPath: (results as NSString).appendingPathComponent("plots"))) ?? []).sorted().map { "plots/\($0)" }
        files += plots
        let board = (results as NSString).appendingPathComponent("tensorboard")
        files += TensorBoardLog.eventFiles(in: board).map { "tensorboard/" + ($0 as NSString).lastPathComponent }
        let model = try modelFile(results)
        let readme = Data(summary(results: results, name: name, files: files + ["README.md"]).utf8)
        func member(_ f: String) -> Data? { f == "model.safetensors" ? model : fm.contents(atPath: (results as NSString).appendingPathComponent(f)) }
        do {
            // A failure anywhere (a full disk, say) leaves no .partial behind.
            let w = try TarWriter(path: tmp, format: .zip)
            w.mtime = Int(now.timeIntervalSince1970)
            for f in files {
                guard let d = member(f) else { continue }
                try w.add(name: "\(name)/\(f)", data: d)
            }
            try w.add(name: "\(name)/README.md", data: readme)
            try w.close()
            zipPath = try placeWithoutReplacing(tmp, stem: stem)
        } catch let e as ArchiveError where e.code == ENOSPC {
            unlink(tmp)
            // The members as they are (compression only makes them smaller) and a KiB each for
            // the zip's headers, against what is free once the partial file is gone.
            let sizes = files.map { f in f == "model.safetensors" ? model.count
                : ((try? fm.attributesOfItem(atPath: (results as NSString).appendingPathComponent(f)))?[.size] as? Int ?? 0) }
            let needed = sizes.reduce(readme.count, +) + 1024 * (files.count + 1)
            throw ArchiveError(path: e.path, reason: e.reason + spaceNote(outputDir, needed: needed, atMost: true), code: e.code)
        } catch {
            unlink(tmp)
            throw error
        }
        fsyncDirectory(outputDir)
        if downloadScript {
            let script = """
            #!/usr/bin/env bash
            # Copies \((zipPath as NSString).lastPathComponent) from the pod this run trained on.
            # Usage: bash download_\(name).sh user@pod-host [port] [destination]
            set -euo pipefail
            host="${1:?usage: $0 user@host [port] [destination]}"
            port="${2:-22}"
            dest="${3:-.}"
            remote=\(shellQuoted(zipPath.hasPrefix("/") ? zipPath : fm.currentDirectoryPath + "/" + zipPath))
            if command -v rsync >/dev/null 2>&1; then
              # -s: the remote shell does not split or expand the path.
              rsync -avPs -e "ssh -p $port" "$host:$remote" "$dest/"
            else
              scp -P "$port" "$host:$remote" "$dest/"
            fi

            """
            let path = (outputDir as NSString).appendingPathComponent("download_\(name).sh")
            try writeFileAtomically(Data(script.utf8), to: path)
            chmod(path, 0o755)
        }
        return zipPath
    }

    /// The files every finished run has (`radar export` needs them).
    static func requireFinishedRun(_ results: String) throws {
        var isFolder: ObjCBool = false
        guard FileManager.default.fileExists(atPath: results, isDirectory: &isFolder) else {
            throw DatasetError(path: results, reason: "no such folder (a run's folder, such as outputs/radar_<time>)")
        }
        guard isFolder.boolValue else { throw DatasetError(path: results, reason: "a file, not a run's folder (such as outputs/radar_<time>)") }
        for f in ["best.safetensors.lz4", "config.json", "metrics.json"] where !FileManager.default.fileExists(atPath: (results as NSString).appendingPathComponent(f)) {
            throw DatasetError(path: results, reason: "no \(f): not a finished run directory")
        }
    }

    /// The run's `model.safetensors`; for runs from before it existed, made from `best`.
    static func modelFile(_ results: String) throws -> Data {
        if let d = FileManager.default.contents(atPath: (results as NSString).appendingPathComponent("model.safetensors")) { return d }
        let (t, st) = try Checkpoint.read((results as NSString).appendingPathComponent("best.safetensors.lz4"))
        return ModelFile.encode(t, configJSON: st.configJSON)
    }

    /// `radar export --hub-folder DIR`: a folder to publish the run's model on the Hugging Face
    /// Hub as it is (`huggingface-cli upload ORG/NAME DIR`), after which `--checkpoint
    /// hf-hub:ORG/NAME` and `--init-from hf-hub:ORG/NAME` read it: `model.safetensors` (the best
    /// weights, the config in its metadata), `config.json` (the model config and the training
    /// recipe, without the run's local paths) and a model card `README.md` (YAML metadata the Hub
    /// reads, the test and validation metrics, the config, how to use it). Written into a
    /// temporary folder beside DIR and renamed into place: DIR must not exist yet (or be empty),
    /// and a failure leaves nothing. With `onnx`, also `model.onnx` (`ONNXExport`, with the
    /// run's temperature as `calibrated_prob` where it fitted one) and its use in the card.
    public static func hubFolder(results: String, to dir: String, onnx: Bool = false) throws {
        let fm = FileManager.default
        let name = URL(fileURLWithPath: results).standardizedFileURL.lastPathComponent
        try requireFinishedRun(results)
        var isDir: ObjCBool = false
        if fm.fileExists(atPath: dir, isDirectory: &isDir) {
            guard isDir.boolValue else { throw DatasetError(path: dir, reason: "a file, not a folder: give a new folder for the Hub files") }
            if let inside = try? fm.contentsOfDirectory(atPath: dir), !inside.isEmpty {
                throw DatasetError(path: dir, reason: "not empty: give a new folder for the Hub files")
            }
        }
        func json(_ f: String) throws -> [String: Any] {
            let path = (results as NSString).appendingPathComponent(f)
            guard let d = fm.contents(atPath: path), let o = try? JSONSerialization.jsonObject(with: d) as? [String: Any] else {
                throw DatasetError(path: path, reason: "not a JSON object")
            }
            return o
        }
        let runConfig = try json("config.json"), metrics = try json("metrics.json")
        let model = try modelFile(results)
        // The recipe without the run's own paths and names.
        let recipeKeys = ["batch_size", "num_epochs", "learning_rate", "weight_decay", "accumulation_steps", "patience", "seed", "world_size",
                          "augment", "precision", "pretrained", "init_from"]
        var training: [String: Any] = [:]
        for k in recipeKeys { if let v = runConfig[k] { training[k] = v } }
        let published: [String: Any] = ["library": "radar", "model": runConfig["model"] ?? [:], "training": training]
        let parent = containingFolder(dir)
        try fm.createDirectory(atPath: parent, withIntermediateDirectories: true)
        let tmp = (parent as NSString).appendingPathComponent(".\((dir as NSString).lastPathComponent).partial-\(getpid())")
        try? fm.removeItem(atPath: tmp)
        do {
            try fm.createDirectory(atPath: tmp, withIntermediateDirectories: false)
            try writeFileAtomically(model, to: (tmp as NSString).appendingPathComponent("model.safetensors"))
            try writeFileAtomically(try jsonData(published, pretty: true), to: (tmp as NSString).appendingPathComponent("config.json"))
            try writeFileAtomically(Data(modelCard(name: name, runConfig: runConfig, metrics: metrics, onnx: onnx).utf8), to: (tmp as NSString).appendingPathComponent("README.md"))
            let calibration = (results as NSString).appendingPathComponent("calibration.json")
            if let c = fm.contents(atPath: calibration) {
                try writeFileAtomically(c, to: (tmp as NSString).appendingPathComponent("calibration.json"))
            }
            if onnx {
                let weights = try ModelWeights.read((tmp as NSString).appendingPathComponent("model.safetensors"))
                let temperature = fm.fileExists(atPath: calibration) ? try TemperatureScaling.resolve(calibration) : nil
                try writeFileAtomically(try ONNXExport.encode(weights.tensors, config: weights.model.config, temperature: temperature,
                                                              source: "\(name)/model.safetensors"),
                                        to: (tmp as NSString).appendingPathComponent("model.onnx"))
            }
            if fm.fileExists(atPath: dir) { try fm.removeItem(atPath: dir) }  // an empty folder
            guard rename(tmp, dir) == 0 else { throw DatasetError(path: dir, reason: "cannot rename \(tmp) to it: \(String(cString: strerror(errno)))") }
        } catch {
            try? fm.removeItem(atPath: tmp)
            throw error
        }
        fsyncDirectory(parent)
    }

    /// The model card: YAML metadata (library, tags, metrics, the dataset where it was
    /// WildDeepfake), then the run's numbers and how to use the weights.
    static func modelCard(name: String, runConfig: [String: Any], metrics: [String: Any], onnx: Bool = false) -> String {
        let test = metrics["test_metrics"] as? [String: Any] ?? [:]
        var source: String?
        if let data = runConfig["data"] as? String,
           let d = FileManager.default.contents(atPath: (data as NSString).appendingPathComponent("manifest.json")),
           let m = try? JSONSerialization.jsonObject(with: d) as? [String: Any] {
            source = (m["source"] as? [String: Any])?["kind"] as? String
        }
        var yaml = ["---", "library_name: radar", "pipeline_tag: image-classification",
                    "tags:", "- deepfake-detection", "- vision-transformer", "- radar"]
        if source == "wilddeepfake-archives" { yaml += ["datasets:", "- xingjunm/WildDeepfake"] }
        yaml += ["metrics:", "- roc_auc", "- accuracy", "- eer", "---", ""]
        var lines = yaml + ["# RADAR deepfake detector `\(name)`", "",
                            "RADAR (Reasoning-Augmented Deepfake Artifact Recognition): a ViT encoder, boundary (Sobel) and frequency (FFT high-pass) artifact branches, evidence refinement (cross-attention and a GRU) and a gated fusion; the output is p(fake) for a face crop.",
                            "", "Trained on " + (source.map { "`\($0)` data" } ?? "a prepared dataset") + ".", "", "## Metrics", "", "| split | metric | value |", "|---|---|---|"]
        if let v = metrics["best_val_auc"] as? Double { lines.append(String(format: "| validation (best epoch %d) | AUC | %.4f |", metrics["best_epoch"] as? Int ?? 0, v)) }
        for k in BinaryMetrics.names {
            if let v = test[k] as? Double { lines.append(String(format: "| test | %@ | %.4f |", k, v)) }
        }
        var temperature: String?
        if let c = metrics["calibration"] as? [String: Any], let t = c["temperature"] as? Double {
            temperature = String(format: "%.6g", t)
            lines += ["", "## Calibration", "",
                      "Temperature scaling fitted on the validation split: T = \(temperature!) (`calibration.json`; p = sigmoid(logit / T)). "
                      + "It keeps the ranking and the decisions at 0.5 and changes what the probabilities claim."]
            if let test = c["test"] as? [String: Double], let a = test["ece"], let b = test["ece_calibrated"], let x = test["brier"], let y = test["brier_calibrated"] {
                lines += ["", "| test | at T = 1 | at T |", "|---|---|---|",
                          String(format: "| ECE | %.4f | %.4f |", a, b), String(format: "| Brier | %.4f | %.4f |", x, y)]
            }
        }
        lines += ["", "## Config", "", "| field | value |", "|---|---|"]
        if let m = runConfig["model"] as? [String: Any] {
            for k in m.keys.sorted() { lines.append("| `\(k)` | \(jsonText(m[k]!)) |") }
        }
        for k in ["batch_size", "world_size", "accumulation_steps", "num_epochs", "learning_rate", "weight_decay", "seed", "precision", "pretrained"] {
            if let v = runConfig[k], !(v is NSNull) { lines.append("| `\(k)` | \(jsonText(v)) |") }
        }
        lines += ["", "## Use", "", "```sh", "radar predict --checkpoint hf-hub:ORG/NAME face.png        # this repository's id"]
            + (temperature.map { ["radar predict --checkpoint hf-hub:ORG/NAME --temperature \($0) face.png   # calibrated"] } ?? [])
            + ["radar evaluate --checkpoint hf-hub:ORG/NAME --data DATASET --split test",
               "radar serve --checkpoint hf-hub:ORG/NAME    # HTTP: curl --data-binary @face.png http://127.0.0.1:8080/v1/predict", "```", "",
               "`model.safetensors` holds the weights by the PyTorch reference's names (the config in its metadata as `radar_config`):",
               "", "```python", "from safetensors.torch import load_file",
               "model.load_state_dict(load_file(\"model.safetensors\"), strict=True)  # model = the reference RADAR(**config[\"model\"])", "```", ""]
        if onnx {
            let model = runConfig["model"] as? [String: Any] ?? [:]
            let size = model["img_size"] as? Int ?? 224
            lines += ["`model.onnx` is the same model in eval mode (ONNX opset \(ONNXExport.opset); `radar export-onnx`) for ONNX Runtime and other runtimes. "
                      + "Its input `image` is (batch, 3, \(size), \(size)): RGB in [0, 1], normalised with the mean and std in its metadata; `prob` is p(fake)"
                      + (temperature.map { ", `calibrated_prob` the same at T = \($0)" } ?? "") + ":",
                      "", "```python", "import numpy as np, onnxruntime as ort", "from PIL import Image",
                      "session = ort.InferenceSession(\"model.onnx\")", "meta = session.get_modelmeta().custom_metadata_map",
                      "mean, std = (np.array(meta[k].split(\",\"), np.float32) for k in (\"normalization_mean\", \"normalization_std\"))",
                      "rgb = np.asarray(Image.open(\"face.png\").convert(\"RGB\").resize((\(size), \(size))), np.float32) / 255",
                      "prob = session.run([\"prob\"], {\"image\": ((rgb - mean) / std).transpose(2, 0, 1)[None]})[0][0, 0]", "```", ""]
        }
        return lines.joined(separator: "\n")
    }

    /// One value as JSON writes it (inside an array: JSONSerialization takes no bare scalar).
    static func jsonText(_ v: Any) -> String {
        guard let d = try? jsonData([v]) else { return "\(v)" }
        return String(String(decoding: d, as: UTF8.self).dropFirst().dropLast())
    }

    /// Moves `tmp` to `STEM.zip`, or `STEM-2.zip`, `STEM-3.zip`, ... when taken: two runs of one
    /// folder name exported in the same second (`for d in sweep/*/run; do radar export ...`) each
    /// keep their zip, where the second replaced the first. A hard link claims the name
    /// atomically; where the file system has none, a name found free is renamed onto.
    static func placeWithoutReplacing(_ tmp: String, stem: String) throws -> String {
        for n in 1...1000 {
            let path = n == 1 ? stem + ".zip" : stem + "-\(n).zip"
            if link(tmp, path) == 0 {
                unlink(tmp)
                return path
            }
            let e = errno
            if e == EEXIST { continue }
            guard e == EPERM || e == ENOTSUP || e == EMLINK else {
                throw DatasetError(path: path, reason: "cannot create: \(String(cString: strerror(e)))")
            }
            if access(path, F_OK) == 0 { continue }
            guard rename(tmp, path) == 0 else { throw DatasetError(path: path, reason: "rename failed: \(String(cString: strerror(errno)))") }
            return path
        }
        throw DatasetError(path: stem + ".zip", reason: "1000 exports of this name in one second already there")
    }

    /// `text` as one word for a POSIX shell: single-quoted, each `'` written as `'\''`.
    public static func shellQuoted(_ text: String) -> String {
        "'" + text.replacingOccurrences(of: "'", with: "'\\''") + "'"
    }

    static func summary(results: String, name: String, files: [String]) -> String {
        var lines = ["# RADAR run `\(name)`", ""]
        if let d = FileManager.default.contents(atPath: (results as NSString).appendingPathComponent("metrics.json")),
           let m = try? JSONSerialization.jsonObject(with: d) as? [String: Any] {
            if let v = m["best_val_auc"] as? Double { lines.append(String(format: "- best validation AUC: %.4f (epoch %d)", v, m["best_epoch"] as? Int ?? 0)) }
            if let t = m["test_metrics"] as? [String: Any] {
                for k in BinaryMetrics.names {
                    if let v = t[k] as? Double { lines.append(String(format: "- test %@: %.4f", k, v)) }
                }
            }
            if let ts = m["timestamp"] as? String { lines.append("- finished: \(ts)") }
        }
        lines += ["", "Files:", ""] + files.map { "- `\($0)`" }
        lines += ["", "`model.safetensors` holds the best weights alone (parameters and buffers by PyTorch name, no optimizer state).",
                  "Into the reference PyTorch model:", "",
                  "```python", "import json", "from safetensors import safe_open", "from safetensors.torch import load_file",
                  "with safe_open(\"model.safetensors\", \"pt\") as f:", "    config = json.loads(f.metadata()[\"radar_config\"])",
                  "model = RADAR(**config)  # the reference implementation's model class", "model.load_state_dict(load_file(\"model.safetensors\"), strict=True)",
                  "```", "",
                  "`best.safetensors.lz4` is the full checkpoint (with AdamW moments as `optim.*` and the training state) inside an LZ4",
                  "frame: `lz4 -d best.safetensors.lz4` gives a safetensors file; drop the `optim.*` tensors before `strict=True`.", ""]
        return lines.joined(separator: "\n")
    }
}
