import Foundation
import RadarCore

/// HMAC-SHA256 (RFC 2104) over our SHA-256, for the coordinator's challenge-response login.
public enum HMACSHA256 {
    public static func hex(key: Data, message: Data) -> String {
        var k = [UInt8](key)
        if k.count > 64 { k = hexBytes(SHA256Digest.hex(key)) }
        k += [UInt8](repeating: 0, count: 64 - k.count)
        var inner = SHA256Digest()
        inner.update(Data(k.map { $0 ^ 0x36 }))
        inner.update(message)
        var outer = SHA256Digest()
        outer.update(Data(k.map { $0 ^ 0x5c }))
        outer.update(Data(hexBytes(inner.finalize())))
        return outer.finalize()
    }

    static func hexBytes(_ s: String) -> [UInt8] {
        var out: [UInt8] = []
        var i = s.startIndex
        while i < s.endIndex {
            let j = s.index(i, offsetBy: 2)
            out.append(UInt8(s[i..<j], radix: 16)!)
            i = j
        }
        return out
    }

    /// `bytes` bytes from the system's secure generator, as lowercase hex: job tokens and login
    /// nonces.
    public static func randomHex(bytes: Int = 32) -> String {
        var rng = SystemRandomNumberGenerator()
        return (0..<bytes).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &rng)) }.joined()
    }

    /// Constant-time comparison of two hex digests.
    public static func equal(_ a: String, _ b: String) -> Bool {
        guard a.utf8.count == b.utf8.count else { return false }
        var d: UInt8 = 0
        for (x, y) in zip(a.utf8, b.utf8) { d |= x ^ y }
        return d == 0
    }
}

/// The job token: from a file (`--token-file`) or RADAR_JOB_TOKEN, trimmed, and at least 128
/// bits' worth of text (32 characters), so it cannot be guessed.
public enum JobToken {
    public static let minimumCharacters = 32

    public struct TokenError: Error, CustomStringConvertible {
        public let description: String
    }

    public static func read(file: String?, environment: [String: String] = ProcessInfo.processInfo.environment) throws -> Data? {
        let text: String, source: String
        if let f = file {
            guard let d = FileManager.default.contents(atPath: f) else { throw TokenError(description: "\(f): cannot read the token file") }
            (text, source) = (String(decoding: d, as: UTF8.self), f)
        } else if let t = environment["RADAR_JOB_TOKEN"] {
            (text, source) = (t, "RADAR_JOB_TOKEN")
        } else {
            return nil
        }
        let token = text.trimmingCharacters(in: .whitespacesAndNewlines)
        guard token.count >= minimumCharacters else {
            throw TokenError(description: "\(source): the job token has \(token.count) characters, at least \(minimumCharacters) (128 bits as hex) are needed; make one with `openssl rand -hex 32`")
        }
        return Data(token.utf8)
    }
}
