import Foundation
import RadarCore

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
            // Read to its end: a pipe too (`--token-file <(pass show radar/token)`, which keeps the
            // token out of the environment and of ps), where Foundation's reader gave nil.
            let d: Data
            do { d = try readInputFile(f, limit: 64 << 10) } catch { throw TokenError(description: "\(f): cannot read the token file: \(error)") }
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

    /// `read`, where a token must be given: `missing` says who needs one and how to give it.
    public static func required(file: String?, missing: @autoclosure () -> String,
                                environment: [String: String] = ProcessInfo.processInfo.environment) throws -> Data {
        guard let t = try read(file: file, environment: environment) else { throw TokenError(description: missing()) }
        return t
    }
}
