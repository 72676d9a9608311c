import Foundation

/// Weights to evaluate, predict or start training from, in any of the forms users have:
/// - a RADAR training checkpoint (`best`/`last.safetensors.lz4`: config and state in the metadata);
/// - a model file (`model.safetensors`, written by training and `radar export`: config in the metadata);
/// - a plain PyTorch `state_dict` saved with `safetensors.torch.save_file` (no config: `--config`
///   names it), keys with or without DDP's `module.` or torch.compile's `_orig_mod.` prefix, F32,
///   F16, BF16 or F64, optionally LZ4-framed (with or without a content size, or the legacy frame).
/// Names, shapes and dtypes are checked against the model before any device memory is touched,
/// and every key that does not fit is reported in one error.
public struct ModelWeights {
    public enum Kind: Equatable, Sendable {
        case checkpoint(step: Int, epoch: Int)
        case modelFile
        case stateDict
    }

    public let model: RADARModel
    /// Model tensors only (no `optim.*`, wrapper prefixes removed), checked against `model`.
    public let tensors: [String: SafeTensor]
    public let kind: Kind
    /// The training state of a checkpoint (nil for a model file or a state dict).
    public let state: Checkpoint.State?

    /// One line for logs: what was loaded from where.
    public func describe(_ path: String) -> String {
        switch kind {
        case let .checkpoint(step, epoch): "\(path): RADAR checkpoint (epoch \(epoch), optimizer step \(step))"
        case .modelFile: "\(path): RADAR model file"
        case .stateDict: "\(path): PyTorch state dict (\(tensors.count) tensors)"
        }
    }

    /// `fallback`: the config for a plain state dict when `config` is nil (training's own).
    public static func read(_ given: String, config: RADARConfig? = nil, fallback: RADARConfig? = nil) throws -> ModelWeights {
        let path = try file(given)
        guard let raw = FileManager.default.contents(atPath: path) else {
            throw Checkpoint.CheckpointError(path: path, reason: unreadableReason(path))
        }
        return try decode(raw, path: path, config: config, fallback: fallback)
    }

    /// The weights file `path` names: itself, for a run's folder its `best.safetensors.lz4`, and
    /// for `hf-hub:ORG/NAME[@REVISION]` the repository's `model.safetensors` from the Hugging
    /// Face cache (downloaded when missing: `HubModel`), as a model `radar export` zipped and
    /// someone published.
    public static func file(_ path: String) throws -> String {
        if path.hasPrefix("hf-hub:"), let ref = try HubModel.reference(path) {
            return try HubModel.file(ref, "model.safetensors", log: logLine)
        }
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir), isDir.boolValue else { return path }
        let best = (path as NSString).appendingPathComponent("best.safetensors.lz4")
        guard FileManager.default.fileExists(atPath: best) else {
            // A run stopped in its first epoch (--checkpoint-every) has its latest weights in last.
            let last = (path as NSString).appendingPathComponent("last.safetensors.lz4")
            let hint = FileManager.default.fileExists(atPath: last) ? " (\(last) holds its latest weights)" : ""
            throw Checkpoint.CheckpointError(path: path, reason: "a folder without best.safetensors.lz4 (a run's folder has one after its first epoch); name a weights file\(hint)")
        }
        return best
    }

    /// `read` on bytes in memory (`path` names them in errors). `config` (from `--config`) is
    /// required for a plain state dict; for a file that carries its own, it must agree with it.
    public static func decode(_ raw: Data, path: String, config given: RADARConfig? = nil, fallback: RADARConfig? = nil) throws -> ModelWeights {
        let data = LZ4Frame.isFrame(raw) || LZ4Frame.isLegacyFrame(raw) ? try LZ4Frame.decompress(raw, path: path) : raw
        let (all, meta) = try SafeTensors.decode(data, path: path)
        var kind = Kind.stateDict, state: Checkpoint.State?, carried: RADARConfig?
        if meta["format"] == "radar-checkpoint" || meta["format_version"] != nil {
            let st = try Checkpoint.State(metadata: meta, path: path)
            carried = try RADARConfig.decode(Data(st.configJSON.utf8), source: "\(path): metadata config")
            (kind, state) = (.checkpoint(step: st.optimizerStep, epoch: st.epoch), st)
        } else if let c = meta["radar_config"] {
            carried = try RADARConfig.decode(Data(c.utf8), source: "\(path): metadata radar_config")
            kind = .modelFile
        }
        if let g = given, let c = carried, g != c {
            throw Checkpoint.CheckpointError(path: path, reason: "its config differs from --config: " + configDifferences(c, g, "file", "--config").joined(separator: "; ")
                                                   + " (leave --config out to use the file's)")
        }
        guard let config = given ?? carried ?? fallback else {
            throw Checkpoint.CheckpointError(path: path, reason: "a plain state dict (no RADAR config in its metadata): pass --config with a preset ("
                                             + RADARConfig.presetNames.joined(separator: ", ") + ") or a config JSON file")
        }
        let model = try RADARModel(config: config)
        let tensors = StateDict.unwrapped(all)
        try StateDict.verify(tensors, layout: model.layout, source: path)
        return ModelWeights(model: model, tensors: tensors, kind: kind, state: state)
    }

    /// `field: a-name X, b-name Y` for every field where two configs differ.
    public static func configDifferences(_ a: RADARConfig, _ b: RADARConfig, _ aName: String, _ bName: String) -> [String] {
        let x = (try? JSONSerialization.jsonObject(with: a.jsonData()) as? [String: Any]) ?? [:]
        let y = (try? JSONSerialization.jsonObject(with: b.jsonData()) as? [String: Any]) ?? [:]
        return Set(x.keys).union(y.keys).sorted().filter { "\(x[$0] ?? "nil")" != "\(y[$0] ?? "nil")" }
            .map { "\($0): \(aName) \(x[$0] ?? "nil"), \(bName) \(y[$0] ?? "nil")" }
    }

    /// Writes the weights into `store` (whose layout is `model`'s, or one with the same names and shapes).
    public func load(into store: ParameterStore, source: String) throws {
        try StateDict.load(tensors, into: store, source: source)
    }
}
