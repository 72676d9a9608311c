import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The coordinator's framing: a 4-byte big-endian length, then a version byte, a type byte and a
/// JSON object. Frames above `maxFrame` bytes, unknown types and bodies that are not JSON
/// objects close that connection only.
public enum Wire {
    public static let version: UInt8 = 1
    public static let maxFrame = 1 << 20

    public enum Kind: UInt8, Sendable {
        case challenge = 1, register = 2, peers = 3, epochPlan = 4, heartbeat = 5, progress = 6, abort = 7, status = 8,
             refused = 9, done = 10
    }

    public struct ProtocolError: Error, CustomStringConvertible {
        public let reason: String
        public var description: String { reason }
    }

    public static func send(_ fd: Int32, _ kind: Kind, _ body: [String: Any]) throws {
        let json = try JSONSerialization.data(withJSONObject: body, options: [.sortedKeys])
        var frame = Data()
        var len = UInt32(json.count + 2).bigEndian
        withUnsafeBytes(of: &len) { frame.append(contentsOf: $0) }
        frame.append(version)
        frame.append(kind.rawValue)
        frame.append(json)
        try frame.withUnsafeBytes { try Sockets.writeAll(fd, $0) }
    }

    /// The next frame, or throws (oversized, unknown type, bad body, closed, timed out). `deadline`
    /// is a `monotonicNow()` time.
    public static func receive(_ fd: Int32, deadline: Date) throws -> (Kind, [String: Any]) {
        let head = try Sockets.readExactly(fd, 4, deadline: deadline)
        let len = Int(head.withUnsafeBytes { UInt32(bigEndian: $0.loadUnaligned(as: UInt32.self)) })
        guard len >= 2, len <= maxFrame else { throw ProtocolError(reason: "frame of \(len) bytes (limit \(maxFrame))") }
        let body = try Sockets.readExactly(fd, len, deadline: deadline)
        guard body[body.startIndex] == version else { throw ProtocolError(reason: "protocol version \(body[body.startIndex]), expected \(version)") }
        guard let kind = Kind(rawValue: body[body.startIndex + 1]) else { throw ProtocolError(reason: "unknown message type \(body[body.startIndex + 1])") }
        guard let obj = try? JSONSerialization.jsonObject(with: body.dropFirst(2)) as? [String: Any] else {
            throw ProtocolError(reason: "malformed \(kind) body")
        }
        return (kind, obj)
    }
}
