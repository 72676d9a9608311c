import Foundation
@testable import RadarCore
import XCTest

/// `radar serve`'s request reader against damaged requests: a request line, headers, a query, a
/// Content-Length or chunked body, each cut, flipped and spliced with the bytes parsers trip on
/// (a "?=" query ended the process once). Every request read is a request or an error status,
/// and the process goes on.
final class HTTPRequestFuzzTests: XCTestCase {
    func testDamagedRequestsAreReadOrRefusedNeverTrap() throws {
        let server = try HTTPServer(host: "127.0.0.1", port: 0, maxBodyBytes: 4096)
        server.readTimeout = 1
        let body = Data((0..<300).map { UInt8($0 % 251) })
        let bases: [Data] = [
            Data("GET /v1/health?explain=1&a=%41 HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n".utf8),
            Data("POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: \(body.count)\r\nExpect: 100-continue\r\n\r\n".utf8) + body,
            Data("POST /v1/predict HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n12c;x=1\r\n".utf8) + body + Data("\r\n0\r\nT: 1\r\n\r\n".utf8),
        ]
        let splices = ["\r\n", "\r\n\r\n", "=", "&", "?", "&=", "?=", "==", "%", "%zz", ";", ":", " ", "0", "-1", "ffffffffffffffff",
                       "99999999999999999999", "\u{0}", "HTTP/1.0", "Content-Length: 5\r\n", "Transfer-Encoding: gzip\r\n",
                       "Content-Length: 1, 2\r\n", "Transfer-Encoding: chunked\r\n"].map { Data($0.utf8) }
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15  // a fixed sequence: the same cases every run
        func next(_ n: Int) -> Int {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Int((state >> 33) % UInt64(max(n, 1)))
        }
        var requests = 0, refused = 0
        for _ in 0..<3000 {
            var d = bases[next(bases.count)]
            for _ in 0..<(1 + next(5)) {
                let at = next(d.count + 1)
                switch next(4) {
                case 0: d.removeSubrange(at..<min(d.count, at + 1 + next(8)))
                case 1: d.insert(contentsOf: splices[next(splices.count)], at: at)
                case 2: if at < d.count { d[at] = UInt8(next(256)) }
                default: d = d.prefix(at)
                }
            }
            var fds: [Int32] = [-1, -1]
            XCTAssertEqual(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds), 0)
            _ = d.withUnsafeBytes { send(fds[1], $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            shutdown(fds[1], Int32(SHUT_WR))
            var buffer = Data()
            reading: for _ in 0..<4 {  // pipelined requests: at most a few in one damaged stream
                switch server.read(fds[0], &buffer) {
                case .request(let r):
                    requests += 1
                    XCTAssertLessThanOrEqual(r.body.count, 4096)
                case .reject(let status, let message):
                    refused += 1
                    XCTAssertTrue((400...599).contains(status), "\(status) \(message)")
                    XCTAssertFalse(message.isEmpty)
                    break reading
                case .closed: break reading
                }
            }
            close(fds[0]); close(fds[1])
        }
        XCTAssertGreaterThan(requests, 300, "some damaged requests are still requests")
        XCTAssertGreaterThan(refused, 300, "and many are refused with a status")
    }
}
