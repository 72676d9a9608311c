import Foundation

/// The file of a `multipart/form-data` body (RFC 7578; what `curl -F file=@face.png`, an HTML
/// form and Python's `requests.post(url, files=...)` send), for `radar serve`.
public enum MultipartForm {
    public struct FormError: Error, CustomStringConvertible {
        public let description: String
    }

    /// The boundary of a `multipart/form-data` Content-Type (quoted or not), or nil when the
    /// type is another.
    public static func boundary(contentType: String) -> String? {
        let type = contentType.prefix { $0 != ";" }.trimmingCharacters(in: .whitespaces)
        guard type.lowercased() == "multipart/form-data" else { return nil }
        return parameters(String(contentType.dropFirst(type.count))).first { $0.0 == "boundary" }?.1 ?? ""  // none: `file` says so
    }

    /// A header value's `; key=value` parameters (keys lower-cased; a value quoted or not, a
    /// quoted one may hold ';' and backslash escapes), in order.
    static func parameters(_ text: String) -> [(String, String)] {
        var out: [(String, String)] = []
        var i = text.startIndex
        func skip(_ set: Set<Character>) { while i < text.endIndex && set.contains(text[i]) { i = text.index(after: i) } }
        while i < text.endIndex {
            skip([";", " ", "\t"])
            var key = ""
            while i < text.endIndex && text[i] != "=" && text[i] != ";" { key.append(text[i]); i = text.index(after: i) }
            guard i < text.endIndex, text[i] == "=" else { continue }
            i = text.index(after: i)
            skip([" ", "\t"])
            var value = ""
            if i < text.endIndex && text[i] == "\"" {
                i = text.index(after: i)
                while i < text.endIndex && text[i] != "\"" {
                    if text[i] == "\\", text.index(after: i) < text.endIndex { i = text.index(after: i) }
                    value.append(text[i])
                    i = text.index(after: i)
                }
                if i < text.endIndex { i = text.index(after: i) }
                while i < text.endIndex && text[i] != ";" { i = text.index(after: i) }
            } else {
                while i < text.endIndex && text[i] != ";" { value.append(text[i]); i = text.index(after: i) }
                value = value.trimmingCharacters(in: .whitespaces)
            }
            out.append((key.trimmingCharacters(in: .whitespaces).lowercased(), value))
        }
        return out
    }

    /// One part: its form field name, file name (nil when it is not a file) and content.
    public struct Part {
        public let name: String?, filename: String?
        public let content: Data
    }

    /// Every part of the body, in order.
    public static func parts(_ body: Data, boundary: String) throws -> [Part] {
        guard !boundary.isEmpty, boundary.utf8.count <= 70 else {
            throw FormError(description: "multipart/form-data without a usable boundary parameter in its Content-Type")
        }
        // With a CRLF in front, every delimiter (the first too) is CRLF "--" boundary.
        var text = Data("\r\n".utf8)
        text.append(body)
        let delimiter = Data("\r\n--\(boundary)".utf8), crlf = Data("\r\n".utf8), blank = Data("\r\n\r\n".utf8)
        guard var at = text.range(of: delimiter) else {
            throw FormError(description: "multipart/form-data body without its boundary '\(boundary)'")
        }
        var parts: [Part] = []
        while true {
            var next = at.upperBound
            // "--" after a delimiter ends the body.
            if text.count - (next - text.startIndex) >= 2 && text[next] == 0x2D && text[next + 1] == 0x2D { return parts }
            guard let lineEnd = text.range(of: crlf, in: next..<text.endIndex) else {
                throw FormError(description: "multipart/form-data body ends after a boundary line")
            }
            next = lineEnd.upperBound
            // The part's header lines end at a blank line (a part with no headers starts with one).
            let headerEnd: Range<Data.Index>
            if text.count - (next - text.startIndex) >= 2 && text[next] == 13 && text[next + 1] == 10 {
                headerEnd = next..<(next + 2)
            } else {
                guard let r = text.range(of: blank, in: next..<text.endIndex) else {
                    throw FormError(description: "multipart/form-data part without the blank line after its headers")
                }
                headerEnd = r
            }
            let headers = String(decoding: text[next..<headerEnd.lowerBound], as: UTF8.self)
            guard let close = text.range(of: delimiter, in: headerEnd.upperBound..<text.endIndex) else {
                throw FormError(description: "multipart/form-data part not closed by the boundary (a truncated body?)")
            }
            var name: String? = nil, filename: String? = nil
            for line in headers.components(separatedBy: "\r\n") {
                guard let colon = line.firstIndex(of: ":"),
                      line[..<colon].trimmingCharacters(in: .whitespaces).lowercased() == "content-disposition" else { continue }
                let params = parameters(String(line[line.index(after: colon)...]))
                name = params.first { $0.0 == "name" }?.1
                filename = params.first { $0.0 == "filename" }?.1
            }
            parts.append(Part(name: name, filename: filename, content: Data(text[headerEnd.upperBound..<close.lowerBound])))
            at = close
        }
    }

    /// The uploaded file: the first part with a file name, else the part named "image" or
    /// "file", else the only part.
    public static func file(_ body: Data, boundary: String) throws -> Data {
        let all = try parts(body, boundary: boundary)
        if let f = all.first(where: { $0.filename != nil }) ?? all.first(where: { $0.name == "image" || $0.name == "file" }) { return f.content }
        if all.count == 1 { return all[0].content }
        let names = all.map { $0.name ?? "?" }.joined(separator: ", ")
        throw FormError(description: "multipart/form-data with \(all.count) parts (\(names.isEmpty ? "none" : names)) and no file in them: send the image as a file part (curl -F file=@face.png)")
    }
}
