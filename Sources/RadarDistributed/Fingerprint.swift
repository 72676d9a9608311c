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
                // Rank 0's value first.
                let groups = distinct.sorted { values.firstIndex(of: $0)! < values.firstIndex(of: $1)! }.map { v in "\(describeRanks(values.indices.filter { values[$0] == v }))=\(v)" }
                throw CommunicationError(rank: comm.rank, peer: nil, reason: "ranks disagree on \(name): " + groups.joined(separator: " vs "))
            }
        }
    }
}

/// Ranks as a log line names them: "rank 3", "ranks 1, 4-9" (runs joined), and past twelve runs
/// the first six and the last three with the count between ("ranks 0, 2, ..., 98 (50 ranks)").
/// A rendezvous with WORLD_SIZE=100000 and one rank listed 99,999 numbers on one 689 KB line.
public func describeRanks(_ ranks: [Int]) -> String {
    let sorted = Array(Set(ranks)).sorted()
    guard !sorted.isEmpty else { return "no rank" }
    var runs: [ClosedRange<Int>] = []
    for r in sorted {
        if let last = runs.last, last.upperBound + 1 == r { runs[runs.count - 1] = last.lowerBound...r } else { runs.append(r...r) }
    }
    let text = runs.map { $0.count == 1 ? "\($0.lowerBound)" : "\($0.lowerBound)-\($0.upperBound)" }
    let shown = text.count > 12 ? text.prefix(6).joined(separator: ", ") + ", ..., " + text.suffix(3).joined(separator: ", ") + " (\(sorted.count) ranks)"
                                : text.joined(separator: ", ")
    return (sorted.count == 1 ? "rank " : "ranks ") + shown
}
