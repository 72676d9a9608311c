import Foundation
import RadarCore
import RadarDistributed
import XCTest
#if canImport(Glibc)
import Glibc
#endif

final class CoordinatorTests: XCTestCase {
    func rawConnect(_ port: Int) -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        return fd
    }

    func write(_ fd: Int32, _ bytes: [UInt8]) { _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) } }

    func testWrongTokenIsRefusedAndMalformedFramesDoNotCrashTheCoordinator() throws {
        let server = try CoordinatorServer(host: "127.0.0.1", port: 0, worldSize: 1, token: Data("right".utf8))
        defer { server.stop() }
        var logged: [String] = []
        let lock = NSLock()
        server.log = { s in lock.lock(); logged.append(s); lock.unlock() }
        XCTAssertThrowsError(try CoordinatorClient(host: "127.0.0.1", port: server.port, token: Data("wrong".utf8), rank: 0,
                                                   dataHost: "127.0.0.1", dataPort: 1, timeout: 5)) {
            print("wrong-token login error: \($0)")
            XCTAssertTrue("\($0)".contains("refused"), "\($0)")
        }
        // Random bytes, an oversized length, a truncated frame, an unknown type: each closes its
        // own connection only.
        var random = [UInt8](repeating: 0, count: 300)
        for i in random.indices { random[i] = UInt8(truncatingIfNeeded: i &* 97 &+ 13) }
        for frame in [random, [0x7F, 0xFF, 0xFF, 0xFF, 1, 2], [0, 0, 0, 50, 1, 2, 0x7B], [0, 0, 0, 4, 1, 99, 0x7B, 0x7D]] {
            let fd = rawConnect(server.port)
            write(fd, frame)
            usleep(100_000)
            close(fd)
        }
        usleep(300_000)
        let status = try CoordinatorClient.status(host: "127.0.0.1", port: server.port, token: Data("right".utf8))
        XCTAssertEqual(status["world_size"] as? Int, 1, "the coordinator still answers")
        XCTAssertEqual(status["refused_logins"] as? Int, 1)
        XCTAssertGreaterThanOrEqual(status["dropped_connections"] as? Int ?? 0, 4)
        lock.lock()
        XCTAssertTrue(logged.contains { $0.contains("refused") && $0.contains("wrong job token") }, "\(logged)")
        lock.unlock()
        XCTAssertThrowsError(try CoordinatorClient.status(host: "127.0.0.1", port: server.port, token: Data("wrong".utf8)))
    }

    func testSilentWorkerIsDeclaredLostAndTheOthersAreTold() throws {
        let token = Data("t".utf8)
        let server = try CoordinatorServer(host: "127.0.0.1", port: 0, worldSize: 2, token: token)
        defer { server.stop() }
        server.heartbeatDeadline = 1
        var a: CoordinatorClient?, b: CoordinatorClient?
        let g = DispatchGroup()
        g.enter(); DispatchQueue.global().async { a = try? CoordinatorClient(host: "127.0.0.1", port: server.port, token: token, rank: 0, dataHost: "h", dataPort: 1, timeout: 5); g.leave() }
        g.enter(); DispatchQueue.global().async { b = try? CoordinatorClient(host: "127.0.0.1", port: server.port, token: token, rank: 1, dataHost: "h", dataPort: 2, timeout: 5); g.leave() }
        g.wait()
        XCTAssertEqual(a?.peers.map(\.port), [1, 2], "both ranks get the peer table")
        let told = expectation(description: "rank 0 is told to stop")
        var reason = ""
        a?.onAbort = { reason = $0; told.fulfill() }
        a?.start(interval: 0.2)  // rank 1 registered but never sends heartbeats
        wait(for: [told], timeout: 10)
        XCTAssertTrue(reason.contains("rank 1 lost"), reason)
        XCTAssertEqual(server.status()["lost_rank"] as? Int, 1)
        // Leave no background threads behind (later tests count allocations process-wide).
        a?.onAbort = { _ in }
        a?.finish()
        b?.finish()
        usleep(500_000)
    }

    func testHMACMatchesRFC4231() {
        // RFC 4231 test case 2.
        XCTAssertEqual(HMACSHA256.hex(key: Data("Jefe".utf8), message: Data("what do ya want for nothing?".utf8)),
                       "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        var d = SHA256Digest()
        d.update(Data("abc".utf8))
        XCTAssertEqual(d.finalize(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    }
}
