import Foundation

/// Every field of MODEL.md, with its JSON name. A JSON document that omits a field gets the
/// default (MODEL.md's defaults are the `full` preset).
public struct RADARConfig: Codable, Equatable, Sendable {
    public var imgSize = 224
    public var patchSize = 16
    public var embedDim = 384
    public var depth = 12
    public var numHeads = 6
    public var mlpRatio: Double = 4
    public var evidenceDim = 64
    public var reasoningIterations = 3
    public var reasoningHeads = 4
    public var fftSize = 112
    public var dropout: Double = 0.1
    public var branchDropout: Double = 0.1
    public var gatingInit: Double = 0.5
    public var useBadm = true
    public var useAadm = true
    public var mean: [Double] = [0.485, 0.456, 0.406]
    public var std: [Double] = [0.229, 0.224, 0.225]

    enum CodingKeys: String, CodingKey, CaseIterable {
        case imgSize = "img_size", patchSize = "patch_size", embedDim = "embed_dim", depth
        case numHeads = "num_heads", mlpRatio = "mlp_ratio", evidenceDim = "evidence_dim"
        case reasoningIterations = "reasoning_iterations", reasoningHeads = "reasoning_heads"
        case fftSize = "fft_size", dropout, branchDropout = "branch_dropout", gatingInit = "gating_init"
        case useBadm = "use_badm", useAadm = "use_aadm", mean, std
    }

    public init() {}

    private struct AnyKey: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    public init(from decoder: Decoder) throws {
        // A misspelt field would otherwise be ignored and its default used without a word.
        let unknown = try decoder.container(keyedBy: AnyKey.self).allKeys.map(\.stringValue).filter { CodingKeys(rawValue: $0) == nil }
        if !unknown.isEmpty {
            let known = RADARConfig.fieldNames
            throw ConfigError(source: "config", problems: unknown.sorted().map { u in
                let near = known.min { RADARConfig.editDistance(u, $0) < RADARConfig.editDistance(u, $1) }!
                return "unknown field \(u)" + (RADARConfig.editDistance(u, near) <= 2 ? " (did you mean \(near)?)" : "")
            } + ["the fields are \(known.joined(separator: ", "))"])
        }
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let d = RADARConfig()
        imgSize = try c.decodeIfPresent(Int.self, forKey: .imgSize) ?? d.imgSize
        patchSize = try c.decodeIfPresent(Int.self, forKey: .patchSize) ?? d.patchSize
        embedDim = try c.decodeIfPresent(Int.self, forKey: .embedDim) ?? d.embedDim
        depth = try c.decodeIfPresent(Int.self, forKey: .depth) ?? d.depth
        numHeads = try c.decodeIfPresent(Int.self, forKey: .numHeads) ?? d.numHeads
        mlpRatio = try c.decodeIfPresent(Double.self, forKey: .mlpRatio) ?? d.mlpRatio
        evidenceDim = try c.decodeIfPresent(Int.self, forKey: .evidenceDim) ?? d.evidenceDim
        reasoningIterations = try c.decodeIfPresent(Int.self, forKey: .reasoningIterations) ?? d.reasoningIterations
        reasoningHeads = try c.decodeIfPresent(Int.self, forKey: .reasoningHeads) ?? d.reasoningHeads
        fftSize = try c.decodeIfPresent(Int.self, forKey: .fftSize) ?? d.fftSize
        dropout = try c.decodeIfPresent(Double.self, forKey: .dropout) ?? d.dropout
        branchDropout = try c.decodeIfPresent(Double.self, forKey: .branchDropout) ?? d.branchDropout
        gatingInit = try c.decodeIfPresent(Double.self, forKey: .gatingInit) ?? d.gatingInit
        useBadm = try c.decodeIfPresent(Bool.self, forKey: .useBadm) ?? d.useBadm
        useAadm = try c.decodeIfPresent(Bool.self, forKey: .useAadm) ?? d.useAadm
        mean = try c.decodeIfPresent([Double].self, forKey: .mean) ?? d.mean
        std = try c.decodeIfPresent([Double].self, forKey: .std) ?? d.std
    }

    /// Named presets: tiny (tests), mid (benchmarks), full (MODEL.md defaults, ViT-S/16 at 224).
    public static func preset(_ name: String) -> RADARConfig? {
        var c = RADARConfig()
        switch name {
        case "full": return c
        case "mid":
            (c.imgSize, c.patchSize, c.embedDim, c.depth, c.numHeads) = (64, 8, 192, 6, 3)
            c.fftSize = 32
            return c
        case "tiny":
            (c.imgSize, c.patchSize, c.embedDim, c.depth, c.numHeads) = (32, 8, 48, 2, 3)
            (c.evidenceDim, c.fftSize) = (16, 16)
            return c
        default: return nil
        }
    }

    public static let presetNames = ["tiny", "mid", "full"]

    /// The JSON field names, in declaration order.
    public static let fieldNames = CodingKeys.allCases.map(\.rawValue)

    /// Levenshtein distance, for naming the field a misspelt one was meant to be.
    static func editDistance(_ a: String, _ b: String) -> Int {
        let a = Array(a), b = Array(b)
        guard !a.isEmpty, !b.isEmpty else { return max(a.count, b.count) }
        var row = Array(0...b.count)
        for i in 1...a.count {
            var diagonal = row[0]
            row[0] = i
            for j in 1...b.count {
                let above = row[j]
                row[j] = min(above + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1))
                diagonal = above
            }
        }
        return row[b.count]
    }

    /// Typical per-rank batch size of a preset (MODEL.md / issue table).
    public static func presetBatch(_ name: String) -> Int? {
        ["tiny": 8, "mid": 32, "full": 8][name]
    }

    public var headDim: Int { embedDim / numHeads }
    public var mlpHidden: Int { Int((Double(embedDim) * mlpRatio).rounded()) }
    public var gridSize: Int { imgSize / patchSize }
    public var patchCount: Int { gridSize * gridSize }

    /// Every inconsistency, each naming the field and what was expected.
    public func problems() -> [String] {
        var p: [String] = []
        func need(_ ok: Bool, _ msg: String) { if !ok { p.append(msg) } }
        need(imgSize > 0 && patchSize > 0, "img_size and patch_size must be positive")
        need(patchSize > 0 && imgSize % max(patchSize, 1) == 0, "img_size \(imgSize) must be divisible by patch_size \(patchSize)")
        need(embedDim > 0 && numHeads > 0 && embedDim % max(numHeads, 1) == 0, "embed_dim \(embedDim) must be divisible by num_heads \(numHeads)")
        need(embedDim % 2 == 0, "embed_dim \(embedDim) must be even (branches use embed_dim/2)")
        need(depth >= 0, "depth must be >= 0")
        need(mlpRatio > 0, "mlp_ratio must be positive")
        need(evidenceDim > 0 && reasoningHeads > 0 && evidenceDim % max(reasoningHeads, 1) == 0,
             "evidence_dim \(evidenceDim) must be divisible by reasoning_heads \(reasoningHeads)")
        need(evidenceDim % 2 == 0, "evidence_dim \(evidenceDim) must be even (external_classifier_single uses evidence_dim/2)")
        need(reasoningIterations >= 1, "reasoning_iterations must be >= 1")
        need(fftSize >= 2, "fft_size must be >= 2")
        need(imgSize >= 16, "img_size must be >= 16 (the artifact CNNs downsample by 16)")
        need(dropout >= 0 && dropout < 1 && branchDropout >= 0 && branchDropout < 1, "dropout and branch_dropout must be in [0, 1)")
        need(gatingInit > 0 && gatingInit < 1, "gating_init must be in (0, 1)")
        need(useBadm || useAadm, "at least one of use_badm and use_aadm must be true")
        need(mean.count == 3 && std.count == 3 && std.allSatisfy { $0 > 0 }, "mean and std need 3 values, std > 0")
        // Upper bounds, far above any ViT this model is meant for, so a crafted config cannot
        // overflow shape arithmetic or ask for petabytes.
        need(imgSize <= 4096 && patchSize <= imgSize, "img_size must be <= 4096 and patch_size <= img_size")
        need(embedDim <= 8192 && numHeads <= 256 && depth <= 128, "embed_dim <= 8192, num_heads <= 256 and depth <= 128 expected")
        need(mlpRatio <= 16 && evidenceDim <= 4096 && reasoningHeads <= 256 && reasoningIterations <= 64,
             "mlp_ratio <= 16, evidence_dim <= 4096, reasoning_heads <= 256 and reasoning_iterations <= 64 expected")
        need(fftSize <= 4096, "fft_size must be <= 4096")
        need(patchSize > 0 && patchCount <= 1 << 16, "at most 65536 patches expected")
        return p
    }

    public func validate() throws {
        let p = problems()
        if !p.isEmpty { throw ConfigError(source: "config", problems: p) }
    }

    public static func load(_ path: String) throws -> RADARConfig {
        let data: Data
        do { data = try readInputFile(path, limit: 16 << 20) } catch {  // a pipe too: --config <(jq ... run/config.json)
            let hint = path.contains("/") || path.hasSuffix(".json") || access(path, F_OK) == 0 ? "\(error)" : "not a preset (\(presetNames.joined(separator: ", "))) and no such file"
            throw ConfigError(source: path, problems: [hint])
        }
        return try decode(data, source: path)
    }

    /// The context of a decoding error that names a field (a type mismatch or a corrupt value
    /// below the top level), or nil.
    static func fieldContext(_ e: DecodingError) -> DecodingError.Context? {
        switch e {
        case let .typeMismatch(_, ctx) where !ctx.codingPath.isEmpty, let .dataCorrupted(ctx) where !ctx.codingPath.isEmpty: ctx
        default: nil
        }
    }

    /// A JSON config, checked (`source` names where it came from in errors).
    public static func decode(_ data: Data, source path: String) throws -> RADARConfig {
        // JSONSerialization first: its errors say where (JSONDecoder's only "not valid JSON").
        let object: Any
        do { object = try JSONSerialization.jsonObject(with: data) } catch {
            let why = (error as NSError).userInfo[NSDebugDescriptionErrorKey] as? String ?? "\(error)"
            throw ConfigError(source: path, problems: ["not valid JSON (\(why))"])
        }
        guard let fields = object as? [String: Any] else {
            throw ConfigError(source: path, problems: ["not a JSON object of config fields ({\"embed_dim\": 384, ...})"])
        }
        // A run's config.json (`radar train` writes the model's fields under "model", beside the
        // training options) stands for its model.
        if let model = fields["model"] as? [String: Any], fields["embed_dim"] == nil, let d = try? JSONSerialization.data(withJSONObject: model) {
            return try decode(d, source: path + " (its \"model\")")
        }
        let c: RADARConfig
        do { c = try JSONDecoder().decode(RADARConfig.self, from: data) } catch let e as ConfigError {
            throw ConfigError(source: path, problems: e.problems)
        } catch let e as DecodingError where Self.fieldContext(e) != nil {
            // A type mismatch or a corrupt value at a named field (written as one catch of two
            // patterns, its `where` applied to the second only).
            let ctx = Self.fieldContext(e)!
            throw ConfigError(source: path, problems: ["field \(ctx.codingPath.map(\.stringValue).joined(separator: ".")): \(ctx.debugDescription)"])
        } catch {
            // Valid JSON the decoder refused without naming a field: a fraction where a whole
            // number belongs (a depth of 2.5) is found by trying each fraction as a whole number.
            for (key, value) in fields.sorted(by: { $0.key < $1.key }) {
                guard let n = value as? Double, n.rounded() != n, n.isFinite else { continue }
                var whole = fields
                whole[key] = Int(n.rounded(.down))
                if let d = try? JSONSerialization.data(withJSONObject: whole), (try? JSONDecoder().decode(RADARConfig.self, from: d)) != nil {
                    throw ConfigError(source: path, problems: ["field \(key): \(value) is not a whole number"])
                }
            }
            throw ConfigError(source: path, problems: ["not a JSON config object (\(error))"])
        }
        let p = c.problems()
        if !p.isEmpty { throw ConfigError(source: path, problems: p) }
        return c
    }

    /// A preset name or a JSON file.
    public static func resolve(_ nameOrPath: String) throws -> RADARConfig {
        if let p = preset(nameOrPath) { return p }
        return try load(nameOrPath)
    }

    public func jsonData() -> Data {
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys]
        return try! e.encode(self)
    }
}

public struct ConfigError: Error, CustomStringConvertible {
    public let source: String
    public let problems: [String]
    public var description: String { "\(source): invalid RADAR config: " + problems.joined(separator: "; ") }
}
