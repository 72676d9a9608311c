import Foundation

/// Per-image scores as `radar evaluate --predictions` writes them (RFC 4180 CSV with a header):
/// `key`, `label` (0 real, 1 fake) and `probability` are needed; `sequence` (frames of one face
/// sequence are resampled together) and `perturbation` (which pass; empty for the clean one) are
/// read when present, so another detector's scores written with those columns compare too.
public struct PredictionTable {
    public struct Row: Sendable, Equatable {
        public let perturbation: String, key: String, sequence: String?, label: Int, probability: Float
    }

    public let path: String
    public let rows: [Row]
    /// The file has a `sequence` column.
    public let hasSequences: Bool

    public struct ReadError: Error, CustomStringConvertible {
        public let description: String
    }

    public init(path: String) throws {
        // Read to its end whatever it is (<(...) or /dev/stdin too).
        let data: Data
        do { data = try readInputFile(path, limit: 16 << 30) } catch { throw ReadError(description: "\(path): cannot read (\(error))") }
        var text = String(decoding: data, as: UTF8.self)
        // Excel's "CSV UTF-8" and PowerShell's Export-Csv begin with a byte order mark.
        if text.unicodeScalars.first == "\u{FEFF}" { text.unicodeScalars.removeFirst() }
        let records = try Self.parse(text, path: path)
        guard let header = records.first?.map({ $0.trimmingCharacters(in: .whitespaces) }) else {
            throw ReadError(description: "\(path): empty, expected a header line")
        }
        func column(_ name: String) -> Int? { header.firstIndex(of: name) }
        guard let key = column("key"), let label = column("label"), let prob = column("probability") else {
            let missing = ["key", "label", "probability"].filter { column($0) == nil }
            throw ReadError(description: "\(path): no \(missing.joined(separator: ", ")) column (radar evaluate --predictions' columns; key, label and probability are needed)")
        }
        let seq = column("sequence"), pass = column("perturbation")
        var rows: [Row] = []
        for (i, r) in records.enumerated().dropFirst() {
            if r == [""] { continue }  // a blank line
            let line = i + 1
            guard r.count == header.count else { throw ReadError(description: "\(path) record \(line): \(r.count) fields, the header has \(header.count)") }
            // Numbers as people and pandas write them: " 0.5" after a comma and a space, a label
            // "1.0" from a float column.
            let labelText = r[label].trimmingCharacters(in: .whitespaces), probText = r[prob].trimmingCharacters(in: .whitespaces)
            guard let yValue = Double(labelText), yValue == 0 || yValue == 1 else {
                throw ReadError(description: "\(path) record \(line): label \(r[label]): expected 0 or 1")
            }
            let y = Int(yValue)
            guard let p = Float(probText) else { throw ReadError(description: "\(path) record \(line): probability \(r[prob]): not a number") }
            // NaN is read (a diverged checkpoint's, as radar evaluate writes it) and left to the
            // comparison to name; another number outside [0, 1] is no probability (a logit or a
            // score: the accuracy's 0.5 threshold would mean nothing).
            if !p.isNaN && !(0...1).contains(p) {
                throw ReadError(description: "\(path) record \(line): probability \(r[prob]): expected a number in [0, 1] (a logit or another score? give p(fake))")
            }
            rows.append(Row(perturbation: pass.map { r[$0] } ?? "", key: r[key], sequence: seq.map { r[$0] }, label: y, probability: p))
        }
        (self.path, self.rows, self.hasSequences) = (path, rows, seq != nil)
    }

    /// The passes in file order ("" for the clean one).
    public var perturbations: [String] {
        var seen = Set<String>(), out: [String] = []
        for r in rows where seen.insert(r.perturbation).inserted { out.append(r.perturbation) }
        return out
    }

    /// One pass's rows by key; a key twice in a pass is an error.
    public func pass(_ perturbation: String) throws -> [String: Row] {
        var out: [String: Row] = [:]
        for r in rows where r.perturbation == perturbation {
            guard out.updateValue(r, forKey: r.key) == nil else {
                throw ReadError(description: "\(path): key \(r.key) twice in the \(perturbation.isEmpty ? "clean pass" : "pass \(perturbation)")")
            }
        }
        return out
    }

    /// RFC 4180 records: fields split at commas, quoted fields may hold commas, quotes (doubled)
    /// and line breaks; lines end in LF or CRLF.
    static func parse(_ text: String, path: String) throws -> [[String]] {
        var records: [[String]] = [], record: [String] = [], field = "", quoted = false, wasQuoted = false
        var chars = text.unicodeScalars.makeIterator()
        var pending = chars.next()
        while let c = pending {
            pending = chars.next()
            if quoted {
                if c == "\"" {
                    if pending == "\"" { field.unicodeScalars.append("\""); pending = chars.next() } else { quoted = false }
                } else {
                    field.unicodeScalars.append(c)
                }
                continue
            }
            switch c {
            case "\"" where field.isEmpty && !wasQuoted: quoted = true; wasQuoted = true
            case ",": record.append(field); field = ""; wasQuoted = false
            case "\r" where pending == "\n": continue
            case "\n": record.append(field); records.append(record); record = []; field = ""; wasQuoted = false
            default:
                if wasQuoted { throw ReadError(description: "\(path) record \(records.count + 1): text after a closing quote") }
                field.unicodeScalars.append(c)
            }
        }
        if quoted { throw ReadError(description: "\(path) record \(records.count + 1): a quoted field is not closed") }
        if !field.isEmpty || !record.isEmpty || wasQuoted { record.append(field); records.append(record) }
        return records
    }
}
