import Foundation

/// A training checkpoint: a standard safetensors file (model parameters and buffers by PyTorch
/// name, `num_batches_tracked` as I64, AdamW moments as `optim.exp_avg.<name>` and
/// `optim.exp_avg_sq.<name>`, training state in `__metadata__`) inside an LZ4 frame with content
/// size and checksum. `lz4 -d X.safetensors.lz4` gives a file Python's safetensors reads and whose
/// model tensors load into the PyTorch reference with strict=True. Plain .safetensors files are
/// read too.
public enum Checkpoint {
    /// The checkpoint `--resume PATH` names: PATH itself, or for a run's folder its last
    /// checkpoint (a folder without one is an error saying what to name).
    public static func resumeFile(_ path: String) throws -> String {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir), isDir.boolValue else { return path }
        let last = (path as NSString).appendingPathComponent("last.safetensors.lz4")
        guard FileManager.default.fileExists(atPath: last) else {
            throw CheckpointError(path: path, reason: "a folder without last.safetensors.lz4 (a run's folder has one after its first epoch, or after --checkpoint-every steps); name a checkpoint file, or auto")
        }
        return last
    }

    public static let formatVersion = "1"

    /// Training state carried in the metadata.
    public struct State: Equatable, Sendable {
        public var optimizerStep = 0
        public var epoch = 0
        /// Micro-batches of `epoch` already consumed (the data position in the epoch plan).
        public var dataPosition = 0
        /// The micro-batch counter that keys dropout streams.
        public var microStep: UInt64 = 0
        public var seed: UInt64 = 0
        public var bestValAUC = -Double.infinity
        public var sinceBest = 0
        public var worldSize = 1
        /// Per-rank micro-batch size and accumulation steps (0 in checkpoints written before they were recorded).
        public var batchSize = 0
        public var accumulationSteps = 0
        public var schedulerMaxLR = 0.0
        public var schedulerTotalSteps = 0
        public var skippedSteps = 0
        public var configJSON = "{}"
        /// The training data's manifest hash and directory (empty in checkpoints written before
        /// they were recorded).
        public var dataManifest = ""
        public var dataDirectory = ""
        /// metrics.json's history so far (JSON), so a resumed run continues it.
        public var historyJSON = "{}"

        public init() {}

        var metadata: [String: String] {
            ["format": "radar-checkpoint", "format_version": Checkpoint.formatVersion, "step": String(optimizerStep), "epoch": String(epoch),
             "data_position": String(dataPosition), "rng_micro_step": String(microStep), "seed": String(seed),
             "best_val_auc": String(bestValAUC), "early_stopping_counter": String(sinceBest), "world_size": String(worldSize),
             "batch_size": String(batchSize), "accumulation_steps": String(accumulationSteps),
             "scheduler": "{\"type\":\"OneCycleLR\",\"max_lr\":\(schedulerMaxLR),\"total_steps\":\(schedulerTotalSteps),\"last_step\":\(optimizerStep)}",
             "skipped_steps": String(skippedSteps), "config": configJSON, "history": historyJSON,
             "data_manifest": dataManifest, "data_directory": dataDirectory]
        }

        public init(metadata m: [String: String], path: String) throws {
            func need(_ k: String) throws -> String {
                guard let v = m[k] else { throw CheckpointError(path: path, reason: "metadata lacks \(k)") }
                return v
            }
            // Weights without a training state (model.safetensors, a PyTorch state dict) said
            // "format_version missing, expected 1".
            if m["format_version"] == nil && m["format"] != "radar-checkpoint" {
                throw CheckpointError(path: path, reason: (m["radar_config"] != nil ? "a model-only file" : "a state dict without RADAR checkpoint metadata")
                                      + ", not a training checkpoint (no optimizer state, schedule or data position): resume from a checkpoint "
                                      + "(last.safetensors.lz4, or the run's folder); to start from these weights, use --init-from")
            }
            guard m["format_version"] == Checkpoint.formatVersion else {
                throw CheckpointError(path: path, reason: "format_version \(m["format_version"] ?? "missing"), expected \(Checkpoint.formatVersion)")
            }
            // Every count is a non-negative integer in a sane range (no trap on "-1" or 2^70).
            func int(_ k: String, max: Int = 1 << 48, min: Int = 0) throws -> Int {
                guard let v = Int(try need(k)), v >= min, v <= max else {
                    throw CheckpointError(path: path, reason: "metadata \(k) is \(m[k]!.prefix(40)), expected an integer in \(min)...\(max)")
                }
                return v
            }
            optimizerStep = try int("step")
            epoch = try int("epoch", max: 1 << 20)
            dataPosition = try int("data_position")
            microStep = UInt64(try int("rng_micro_step", max: Int.max))
            guard let sd = UInt64(try need("seed")) else { throw CheckpointError(path: path, reason: "metadata seed is not an unsigned 64-bit integer") }
            seed = sd
            bestValAUC = Double(try need("best_val_auc")) ?? -.infinity
            sinceBest = try int("early_stopping_counter")
            worldSize = try int("world_size", max: 1 << 20, min: 1)
            batchSize = m["batch_size"] == nil ? 0 : try int("batch_size", max: 1 << 20)
            accumulationSteps = m["accumulation_steps"] == nil ? 0 : try int("accumulation_steps", max: 1 << 20)
            skippedSteps = m["skipped_steps"] == nil ? 0 : try int("skipped_steps")
            configJSON = try need("config")
            historyJSON = m["history"] ?? "{}"
            dataManifest = String((m["data_manifest"] ?? "").prefix(64))
            dataDirectory = String((m["data_directory"] ?? "").prefix(4096))
            if let s = m["scheduler"], let d = try? JSONSerialization.jsonObject(with: Data(s.utf8)) as? [String: Any] {
                schedulerMaxLR = d["max_lr"] as? Double ?? 0
                schedulerTotalSteps = d["total_steps"] as? Int ?? 0
            }
        }
    }

    public struct CheckpointError: Error, CustomStringConvertible {
        public let path: String
        public let reason: String
        public var description: String { "\(path): \(reason)" }
    }

    /// Writes atomically: a temporary file in the same directory, fsync, rename, fsync of the
    /// directory; the previous checkpoint stays intact until the new one is complete.
    /// `ema`: the weights' moving average (`ModelEMA`), as `optim.ema.<name>` for every parameter
    /// and buffer (the `optim.` prefix keeps it out of every reader of the model's weights).
    public static func write(_ path: String, store: ParameterStore, optimizer: AdamW?, state: State, ema: ParameterStore? = nil) throws {
        let layout = store.layout
        // The named point where a checkpoint leaves the device: one download per flat buffer.
        let values = store.downloadValues(), buffers = store.downloadBuffers()
        let moments = optimizer?.downloadMoments()
        let averaged = (ema?.downloadValues() ?? [], ema?.downloadBuffers() ?? [])
        return try values.withUnsafeBytes { v in try buffers.withUnsafeBytes { b in
            try averaged.0.withUnsafeBytes { ev in try averaged.1.withUnsafeBytes { eb in
            try (moments?.expAvg ?? []).withUnsafeBytes { m in try (moments?.expAvgSq ?? []).withUnsafeBytes { q in
                func bytes(_ raw: UnsafeRawBufferPointer, _ s: ParameterSlot) -> UnsafeRawBufferPointer {
                    UnsafeRawBufferPointer(rebasing: raw[(s.offset * 4)..<((s.offset + s.count) * 4)])
                }
                // (name, dtype, shape, bytes) in name order: the header's data_offsets follow it.
                var entries: [(String, String, [Int], UnsafeRawBufferPointer)] = []
                for s in layout.parameters {
                    entries.append((s.name, "F32", s.shape.dims, bytes(v, s)))
                    if moments != nil {
                        entries.append(("optim.exp_avg.\(s.name)", "F32", s.shape.dims, bytes(m, s)))
                        entries.append(("optim.exp_avg_sq.\(s.name)", "F32", s.shape.dims, bytes(q, s)))
                    }
                }
                for s in layout.bufferSlots { entries.append((s.name, "F32", s.shape.dims, bytes(b, s))) }
                if ema != nil {
                    for s in layout.parameters { entries.append(("optim.ema.\(s.name)", "F32", s.shape.dims, bytes(ev, s))) }
                    for s in layout.bufferSlots { entries.append(("optim.ema.\(s.name)", "F32", s.shape.dims, bytes(eb, s))) }
                }
                for (i, n) in layout.counterNames.enumerated() {
                    entries.append((n, "I64", [], UnsafeRawBufferPointer(UnsafeMutableBufferPointer(rebasing: store.counters[i..<(i + 1)]))))
                }
                try writeEntries(entries, state: state, to: path)
            } }
            } }
        } }
    }

    /// The safetensors bytes of `entries` inside an LZ4 frame, written atomically.
    private static func writeEntries(_ entries: [(String, String, [Int], UnsafeRawBufferPointer)], state: State, to path: String) throws {
        var entries = entries
        entries.sort { $0.0 < $1.0 }
        var header: [String: Any] = ["__metadata__": state.metadata]
        var offset = 0
        for e in entries {
            header[e.0] = ["dtype": e.1, "shape": e.2, "data_offsets": [offset, offset + e.3.count]]
            offset += e.3.count
        }
        var headerData = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
        while (8 + headerData.count) % 8 != 0 { headerData.append(0x20) }
        let total = 8 + headerData.count + offset

        let (dir, tmp) = temporarySibling(of: path)
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw CheckpointError(path: path, reason: "cannot create \(tmp): " + creationFailure(errno, folder: dir)) }
        let h = FileHandle(fileDescriptor: fd, closeOnDealloc: true)
        do {
            let lz = try LZ4Frame.Writer(handle: h, path: path, contentSize: total)
            var len = UInt64(headerData.count).littleEndian
            try withUnsafeBytes(of: &len) { try lz.write($0) }
            try lz.write(headerData)
            for e in entries { try lz.write(e.3) }
            try lz.finish()
            try h.synchronize()
            try h.close()
        } catch {
            try? h.close()
            unlink(tmp)
            if let e = error as? LZ4Frame.FrameError {
                // Out of space: what it needs at most (the uncompressed size) and what is free.
                throw e.code == ENOSPC ? LZ4Frame.FrameError(path: e.path, reason: e.reason + spaceNote(dir, needed: total, atMost: true), code: e.code) : e
            }
            throw CheckpointError(path: path, reason: "write failed: \(systemReason(error))")
        }
        FaultInjection.point("checkpoint")
        guard rename(tmp, path) == 0 else {
            let code = errno
            unlink(tmp)
            throw CheckpointError(path: path, reason: "rename failed: " + creationFailure(code, folder: dir))
        }
        fsyncDirectory(dir)
    }

    /// Reads an LZ4-framed or plain safetensors checkpoint: its tensors and state.
    public static func read(_ path: String) throws -> (tensors: [String: SafeTensor], state: State) {
        guard let raw = FileManager.default.contents(atPath: path) else { throw CheckpointError(path: path, reason: unreadableReason(path)) }
        return try decode(raw, path: path)
    }

    /// `read` on bytes in memory (`path` names them in errors).
    public static func decode(_ raw: Data, path: String) throws -> (tensors: [String: SafeTensor], state: State) {
        let data = LZ4Frame.isFrame(raw) || LZ4Frame.isLegacyFrame(raw) ? try LZ4Frame.decompress(raw, path: path) : raw
        let (tensors, meta) = try SafeTensors.decode(data, path: path)
        return (tensors, try State(metadata: meta, path: path))
    }

    /// A checkpoint and the model its config describes (every name and shape checked against the
    /// tensors it holds before anything is allocated: a crafted config could ask for petabytes).
    public static func readModel(_ path: String) throws -> (model: RADARModel, tensors: [String: SafeTensor], state: State) {
        guard let raw = FileManager.default.contents(atPath: path) else { throw CheckpointError(path: path, reason: unreadableReason(path)) }
        return try decodeModel(raw, path: path)
    }

    /// `readModel` on bytes in memory.
    public static func decodeModel(_ raw: Data, path: String) throws -> (model: RADARModel, tensors: [String: SafeTensor], state: State) {
        let (tensors, state) = try decode(raw, path: path)
        let config = try RADARConfig.decode(Data(state.configJSON.utf8), source: "\(path): metadata config")
        let model = try RADARModel(config: config)
        try StateDict.verify(tensors.filter { !$0.key.hasPrefix("optim.") }, layout: model.layout, source: path)
        return (model, tensors, state)
    }

    /// The moving average a checkpoint holds (`write`'s `ema`) into `store`; false when it holds
    /// none. One that is there in part or misshaped is an error.
    public static func restoreEMA(_ tensors: [String: SafeTensor], into store: ParameterStore, path: String) throws -> Bool {
        guard tensors.keys.contains(where: { $0.hasPrefix("optim.ema.") }) else { return false }
        var values = [Float](repeating: 0, count: store.parameterCount), buffers = [Float](repeating: 0, count: store.layout.bufferCount)
        for (slots, isBuffer) in [(store.layout.parameters, false), (store.layout.bufferSlots, true)] {
            for s in slots {
                guard let t = tensors["optim.ema.\(s.name)"], t.floats.count == s.count else {
                    throw CheckpointError(path: path, reason: "moving average of \(s.name) (optim.ema.\(s.name)) missing or misshaped")
                }
                if isBuffer { buffers.replaceSubrange(s.offset..<(s.offset + s.count), with: t.floats) } else {
                    values.replaceSubrange(s.offset..<(s.offset + s.count), with: t.floats)
                }
            }
        }
        store.uploadValues(values)
        if !buffers.isEmpty { store.uploadBuffers(buffers) }
        return true
    }

    /// Restores parameters, buffers, counters and (if given) the AdamW moments and step.
    public static func restore(_ tensors: [String: SafeTensor], state: State, into store: ParameterStore, optimizer: AdamW?, path: String) throws {
        try StateDict.load(tensors.filter { !$0.key.hasPrefix("optim.") }, into: store, source: path)
        guard let o = optimizer else { return }
        var expAvg = [Float](repeating: 0, count: store.parameterCount), expAvgSq = expAvg
        for s in store.layout.parameters {
            guard let m = tensors["optim.exp_avg.\(s.name)"], let v = tensors["optim.exp_avg_sq.\(s.name)"],
                  m.floats.count == s.count, v.floats.count == s.count else {
                throw CheckpointError(path: path, reason: "optimizer state for \(s.name) missing or misshaped")
            }
            expAvg.replaceSubrange(s.offset..<(s.offset + s.count), with: m.floats)
            expAvgSq.replaceSubrange(s.offset..<(s.offset + s.count), with: v.floats)
        }
        o.uploadMoments(expAvg: expAvg, expAvgSq: expAvgSq)
        o.step = state.optimizerStep
    }
}
