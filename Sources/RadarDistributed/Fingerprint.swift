import Foundation
import RadarCore

/// What every rank must agree on before training: exchanged with an all-gather; any field that
/// differs stops every rank with a message naming the field and the ranks.
public struct Fingerprint: Equatable, Sendable {
    public static let codeVersion = "radar-1"
    public var fields: [(String, String)]

    public static func == (a: Fingerprint, b: Fingerprint) -> Bool { a.fields.map(\.1) == b.fields.map(\.1) }

    public init(config: RADARConfig, layout: ParameterLayout, manifestHash: String, worldSize: Int, extra: [(String, String)] = []) {
        fields = [("config", SHA256Digest.hex(config.jsonData()).prefix(16).description),
                  ("parameter count", String(layout.parameterCount)),
                  ("layout", String(layout.fingerprint, radix: 16)),
                  ("dataset manifest", manifestHash),
                  ("world size", String(worldSize)),
                  ("code version", Fingerprint.codeVersion)] + extra
    }

    static let width = 64

    func encoded() -> Data {
        var d = Data()
        for (_, v) in fields {
            var b = Array(v.utf8.prefix(Fingerprint.width))
            b += [UInt8](repeating: 0, count: Fingerprint.width - b.count)
            d.append(contentsOf: b)
        }
        return d
    }

    /// Throws unless every rank holds the same fingerprint.
    public func verify(_ comm: Communicator) throws {
        let all = try comm.allGather(encoded())
        for (i, (name, _)) in fields.enumerated() {
            let values = all.map { String(decoding: $0[(i * Fingerprint.width)..<((i + 1) * Fingerprint.width)].prefix { $0 != 0 }, as: UTF8.self) }
            let distinct = Set(values)
            if distinct.count > 1 {
                let groups = distinct.sorted().map { v in "ranks \(values.indices.filter { values[$0] == v }.map(String.init).joined(separator: ","))=\(v)" }
                throw CommunicationError(rank: comm.rank, peer: nil, reason: "ranks disagree on \(name): " + groups.joined(separator: " vs "))
            }
        }
    }
}
