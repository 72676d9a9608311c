import Foundation
import RadarCore
import RadarDistributed
import Synchronization
import XCTest
#if canImport(Glibc)
import Glibc
#endif

final class CoordinatorTests: XCTestCase {
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
            let fd = loopbackConnect(server.port)
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

    /// Idle connections that never log in (a port scan, a flood) hold a thread each for the
    /// login deadline: past `maxPendingLogins` of them new ones are closed at once, said once,
    /// and once they go the coordinator answers again (there was a thread per connection, as
    /// many as the system would start).
    func testConnectionsThatNeverLogInAreBounded() throws {
        let token = Data("t".utf8)
        let server = try CoordinatorServer(host: "127.0.0.1", port: 0, worldSize: 1, token: token)
        defer { server.stop() }
        server.maxPendingLogins = 8
        let logged = Mutex<[String]>([])
        server.log = { s in logged.withLock { $0.append(s) } }
        let idle = (0..<30).map { _ in loopbackConnect(server.port) }
        // Each of the 22 past the bound is closed by the coordinator: a read sees the end.
        var closedByServer = 0
        for fd in idle {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            var buffer = [UInt8](repeating: 0, count: 4096)
            let deadline = Date().addingTimeInterval(5)
            while Date() < deadline, poll(&p, 1, 100) > 0 {
                if recv(fd, &buffer, buffer.count, 0) <= 0 { closedByServer += 1; break }  // the challenge, then the end
            }
        }
        XCTAssertEqual(closedByServer, 22)
        XCTAssertThrowsError(try CoordinatorClient.status(host: "127.0.0.1", port: server.port, token: token), "refused while 8 are logging in") {
            XCTAssertTrue("\($0)".contains("refused: the coordinator is busy: 8 connections are logging in at once"), "\($0)")
        }
        let said = logged.withLock { $0 }.filter { $0.contains("8 connections are logging in at once: closing new ones") }
        XCTAssertEqual(said.count, 1, "\(logged.withLock { $0 })")
        // A rank that comes during the flood is told to come back, not failed: it tries again
        // every half second and is in once the idle connections have gone.
        let login = Mutex<Result<CoordinatorClient, Error>?>(nil)
        let started = Date()
        let rankThread = Thread {
            let result = Result { try CoordinatorClient(host: "127.0.0.1", port: server.port, token: token, rank: 0,
                                                        dataHost: "127.0.0.1", dataPort: 1, timeout: 5, rendezvousTimeout: 20) }
            login.withLock { $0 = result }
        }
        rankThread.start()
        usleep(1_200_000)
        XCTAssertNil(login.withLock { $0 }, "the rank still waits while the flood holds every login place")
        idle.forEach { close($0) }
        while login.withLock({ $0 }) == nil, Date().timeIntervalSince(started) < 20 { usleep(50_000) }
        let client = try XCTUnwrap(login.withLock { $0 }).get()
        XCTAssertEqual(client.peers.count, 1, "the rank logged in once the flood went")
        let status = try CoordinatorClient.status(host: "127.0.0.1", port: server.port, token: token)
        XCTAssertEqual(status["world_size"] as? Int, 1, "the coordinator answers once they have gone")
        XCTAssertGreaterThanOrEqual(status["dropped_connections"] as? Int ?? 0, 24)
        client.finish()
        usleep(300_000)
    }

    /// Rank 0's validation result is logged with the epoch counted from 1, as the ranks' epoch
    /// lines count it (it said "epoch 0" beside "epoch 1/2").
    func testTheCoordinatorCountsEpochsAsTheRanksDo() throws {
        let token = Data("t".utf8)
        let server = try CoordinatorServer(host: "127.0.0.1", port: 0, worldSize: 1, token: token)
        defer { server.stop() }
        var logged: [String] = []
        let lock = NSLock()
        let said = expectation(description: "the validation result is logged")
        server.log = { s in lock.withLock { logged.append(s) }; if s.contains("validation AUC") { said.fulfill() } }
        let client = try CoordinatorClient(host: "127.0.0.1", port: server.port, token: token, rank: 0, dataHost: "h", dataPort: 1, timeout: 5)
        client.sendProgress(["epoch": 0, "val_auc": 0.484375])
        wait(for: [said], timeout: 10)
        XCTAssertTrue(lock.withLock { logged }.contains("coordinator: epoch 1 validation AUC 0.4844"), "\(logged)")
        client.finish()
        usleep(300_000)
    }

    /// The worker's start line lists a few bucket sizes, not 99 (--bucket-mb 0, tiny config).
    func testManyBucketSizesAreAbbreviated() {
        XCTAssertEqual(GradientSync.describeBucketSizes([250_000, 2_500_000]), "1.0 10.0")
        let many = GradientSync.describeBucketSizes((1...99).map { $0 * 250_000 })
        XCTAssertEqual(many, "1.0 2.0 3.0 4.0 5.0 6.0 ... 90 more ... 97.0 98.0 99.0")
    }

    /// Ranks in a log line: runs joined, and a long list cut (WORLD_SIZE=100000 by mistake listed
    /// 99,999 numbers on one line).
    func testRanksAreNamedInRunsAndALongListIsCut() {
        XCTAssertEqual(describeRanks([3]), "rank 3")
        XCTAssertEqual(describeRanks([9, 1, 4, 5, 6, 7, 8]), "ranks 1, 4-9")
        XCTAssertEqual(describeRanks(Array(1..<100_000)), "ranks 1-99999")
        XCTAssertEqual(describeRanks(Array(stride(from: 0, to: 100, by: 2))), "ranks 0, 2, 4, 6, 8, 10, ..., 94, 96, 98 (50 ranks)")
    }

    func testSilentWorkerIsDeclaredLostAndTheOthersAreTold() throws {
        let token = Data("t".utf8)
        let server = try CoordinatorServer(host: "127.0.0.1", port: 0, worldSize: 2, token: token)
        defer { server.stop() }
        server.heartbeatDeadline = 1
        let a = Shared<CoordinatorClient?>(nil), b = Shared<CoordinatorClient?>(nil)
        let g = DispatchGroup()
        g.enter(); DispatchQueue.global().async { a.value = try? CoordinatorClient(host: "127.0.0.1", port: server.port, token: token, rank: 0, dataHost: "h", dataPort: 1, timeout: 5); g.leave() }
        g.enter(); DispatchQueue.global().async { b.value = try? CoordinatorClient(host: "127.0.0.1", port: server.port, token: token, rank: 1, dataHost: "h", dataPort: 2, timeout: 5); g.leave() }
        g.wait()
        XCTAssertEqual(a.value?.peers.map(\.port), [1, 2], "both ranks get the peer table")
        let told = expectation(description: "rank 0 is told to stop")
        var reason = ""
        a.value?.onAbort = { reason = $0; told.fulfill() }
        try a.value?.start(interval: 0.2)  // rank 1 registered but never sends heartbeats
        wait(for: [told], timeout: 10)
        XCTAssertTrue(reason.contains("rank 1 lost"), reason)
        XCTAssertEqual(server.status()["lost_rank"] as? Int, 1)
        // Leave no background threads behind (later tests count allocations process-wide).
        a.value?.onAbort = { _ in }
        a.value?.finish()
        b.value?.finish()
        usleep(500_000)
    }

    /// A ring stalls on every rank when one host goes silent, and any rank may give up first,
    /// waiting on a live peer: the coordinator names the rank whose heartbeats stopped, tells the
    /// reporter so, and blames the reporter only when every other rank is still heard from.
    func testAStallIsPutDownToTheSilentRankNotToTheFirstToReportIt() throws {
        let token = Data("t".utf8)
        func job(_ silentRank: Int?) throws -> (CoordinatorServer, [CoordinatorClient], Shared<[String]>) {
            let server = try CoordinatorServer(host: "127.0.0.1", port: 0, worldSize: 3, token: token)
            server.heartbeatDeadline = 10  // far off: only the stall report can end the job
            let clients = Shared<[Int: CoordinatorClient]>([:])
            let g = DispatchGroup()
            for r in 0..<3 {
                g.enter()
                DispatchQueue.global().async {
                    let c = try? CoordinatorClient(host: "127.0.0.1", port: server.port, token: token, rank: r, dataHost: "h", dataPort: r + 1, timeout: 5)
                    clients.update { $0[r] = c }
                    g.leave()
                }
            }
            g.wait()
            let all = try (0..<3).map { r in try XCTUnwrap(clients.value[r], "rank \(r) registered") }
            let told = Shared<[String]>([])
            for (r, c) in all.enumerated() where r != silentRank {
                c.onAbort = { reason in told.update { $0.append(reason) } }
                try c.start(interval: 0.2)
            }
            return (server, all, told)
        }

        // Rank 2 registered and went silent; rank 1 gives up waiting on rank 0 (alive) first.
        let (server, clients, told) = try job(2)
        usleep(1_500_000)
        let t0 = Date()
        let found = clients[1].abortJob("rank 1 failed: rank 1: waiting for rank 0: no progress for 5 s", waitingFor: 0)
        XCTAssertEqual(found?.rank, 2, "the reporter is told which rank was lost")
        XCTAssertTrue(found?.cause.hasPrefix("no heartbeat for ") == true, "\(String(describing: found))")
        XCTAssertLessThan(Date().timeIntervalSince(t0), 4, "no longer than the suspicion window and a poll")
        XCTAssertEqual(server.status()["lost_rank"] as? Int, 2)
        usleep(300_000)
        XCTAssertTrue(told.value.contains { $0.contains("rank 2 lost: no heartbeat for") && $0.contains("rank 1 reported") }, "\(told.value)")

        // Every other rank heard from: the stall stays the reporter's.
        let (server2, clients2, told2) = try job(nil)
        usleep(500_000)
        XCTAssertNil(clients2[1].abortJob("rank 1 failed: rank 1: waiting for rank 0: no progress for 5 s", waitingFor: 0))
        XCTAssertEqual(server2.status()["lost_rank"] as? Int, 1)
        usleep(300_000)
        XCTAssertTrue(told2.value.contains { $0.contains("rank 1 lost: rank 1 failed") }, "\(told2.value)")

        for c in clients + clients2 { c.onAbort = { _ in }; c.finish() }
        server.stop(); server2.stop()
        usleep(500_000)
    }

    /// A restarted job (`radar launch --max-restarts` on each of several nodes) meets at the same
    /// port: a rank of the new attempt that reaches the old attempt's coordinator, still stopping,
    /// is turned away for now and logs in once the new one is up; a rank left from an earlier
    /// attempt is refused, naming both attempts.
    func testARestartedRankWaitsForItsAttemptsCoordinator() throws {
        let token = Data("t".utf8)
        let old = try CoordinatorServer(host: "127.0.0.1", port: 0, worldSize: 1, token: token)
        old.attempt = 0
        let port = old.port
        let joined = Shared<CoordinatorClient?>(nil), failure = Shared<String>("")
        let done = DispatchGroup()
        done.enter()
        DispatchQueue.global().async {
            do {
                joined.value = try CoordinatorClient(host: "127.0.0.1", port: port, token: token, rank: 0, worldSize: 1, dataHost: "h", dataPort: 2,
                                                     timeout: 5, rendezvousTimeout: 20, attempt: 1)
            } catch { failure.value = "\(error)" }
            done.leave()
        }
        usleep(1_200_000)  // turned away at least twice by the old coordinator
        XCTAssertNil(joined.value, "not let in by attempt 0's coordinator")
        XCTAssertEqual(failure.value, "", "and not failed either")
        old.stop()
        var new: CoordinatorServer?
        for _ in 0..<40 where new == nil {
            new = try? CoordinatorServer(host: "127.0.0.1", port: port, worldSize: 1, token: token)
            if new == nil { usleep(100_000) }
        }
        let server = try XCTUnwrap(new, "port \(port) free again once the old coordinator stopped")
        server.attempt = 1
        XCTAssertEqual(done.wait(timeout: .now() + 15), .success)
        XCTAssertEqual(failure.value, "")
        XCTAssertNotNil(joined.value, "attempt 1's rank logs in to attempt 1's coordinator")
        joined.value?.finish()
        server.stop()

        // A standalone coordinator (radar-coordinator, restarted by its supervisor) takes the
        // attempt of its first rank; a rank of an earlier attempt is then refused.
        let standalone = try CoordinatorServer(host: "127.0.0.1", port: 0, worldSize: 2, token: token)
        standalone.attempt = nil
        defer { standalone.stop() }
        let first = Shared<CoordinatorClient?>(nil)
        let registered = DispatchGroup()
        registered.enter()
        DispatchQueue.global().async {
            first.value = try? CoordinatorClient(host: "127.0.0.1", port: standalone.port, token: token, rank: 1, worldSize: 2, dataHost: "h",
                                                 dataPort: 1, timeout: 2, rendezvousTimeout: 1, attempt: 2)  // rank 0 never comes
            registered.leave()
        }
        var adopted: Int?
        for _ in 0..<50 where adopted == nil { usleep(100_000); adopted = standalone.attempt }
        XCTAssertEqual(adopted, 2, "the first rank's attempt")
        XCTAssertThrowsError(try CoordinatorClient(host: "127.0.0.1", port: standalone.port, token: token, rank: 0, worldSize: 2, dataHost: "h",
                                                   dataPort: 1, timeout: 5, rendezvousTimeout: 5, attempt: 1)) { error in
            XCTAssertTrue("\(error)".contains("rank 0 is of attempt 1 of the job, this coordinator serves attempt 2: a rank left over"), "\(error)")
        }
        standalone.stop()
        _ = registered.wait(timeout: .now() + 15)
        first.value?.finish()
        usleep(300_000)
    }

    func testTCPWaitGivesUpNamingTheAwaitedRank() throws {
        // Two ranks in this process; rank 1 never sends, so rank 0's receive times out naming it.
        let (fd0, port0) = try TCPRendezvous.listen()
        let (fd1, port1) = try TCPRendezvous.listen()
        let peers = [TCPCommunicator.Peer(rank: 0, host: "127.0.0.1", port: port0), TCPCommunicator.Peer(rank: 1, host: "127.0.0.1", port: port1)]
        let c0 = Shared<TCPCommunicator?>(nil), c1 = Shared<TCPCommunicator?>(nil)
        let g = DispatchGroup()
        let token = Data("a job token of at least thirty-two characters".utf8)
        g.enter(); DispatchQueue.global().async { c0.value = try? TCPCommunicator(rank: 0, size: 2, token: token, listenFD: fd0, peers: peers, timeout: 5); g.leave() }
        g.enter(); DispatchQueue.global().async { c1.value = try? TCPCommunicator(rank: 1, size: 2, token: token, listenFD: fd1, peers: peers, timeout: 5); g.leave() }
        g.wait()
        let comm = try XCTUnwrap(c0.value)
        XCTAssertNotNil(c1.value)
        comm.timeout = 1
        var x: Float = 0
        let t0 = Date()
        XCTAssertThrowsError(try comm.recv(&x, bytes: 4, from: 1, tag: 5)) { e in
            XCTAssertTrue("\(e)".contains("rank 0: waiting for rank 1"), "\(e)")
        }
        XCTAssertLessThan(Date().timeIntervalSince(t0), 3)
        // A frame for another tensor id is refused, not mixed up.
        let done = expectation(description: "sent")
        DispatchQueue.global().async { var v: Float = 1; try? c1.value?.send(&v, bytes: 4, to: 0, tag: 6); done.fulfill() }
        wait(for: [done], timeout: 5)
        XCTAssertThrowsError(try comm.recv(&x, bytes: 4, from: 1, tag: 5)) { e in
            XCTAssertTrue("\(e)".contains("bad frame from rank 1") && "\(e)".contains("tag 6"), "\(e)")
        }
    }

    /// A listener on 127.0.0.1 with the given backlog that never accepts, and its port.
    func silentListener(backlog: Int32) throws -> (fd: Int32, port: Int) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in(sin_family: sa_family_t(AF_INET), sin_port: 0, sin_addr: in_addr(s_addr: inet_addr("127.0.0.1")), sin_zero: (0, 0, 0, 0, 0, 0, 0, 0))
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        try withUnsafeMutablePointer(to: &addr) { p in
            try p.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                guard bind(fd, $0, len) == 0, listen(fd, backlog) == 0, getsockname(fd, $0, &len) == 0 else { throw NSError(domain: "listen", code: Int(errno)) }
            }
        }
        return (fd, Int(UInt16(bigEndian: addr.sin_port)))
    }

    /// `status` keeps its deadline against a host that drops the connection attempt (a blocking
    /// connect waited the kernel's SYN timeout, about 2 minutes) and says which step timed out
    /// (it said only "timed out").
    func testStatusKeepsItsDeadlineAndSaysWhatTimedOut() throws {
        // A full accept queue drops further SYNs, as a firewall does.
        let full = try silentListener(backlog: 0)
        defer { close(full.fd) }
        var fillers: [Int32] = []
        defer { fillers.forEach { close($0) } }
        for _ in 0..<3 {
            let c = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            _ = fcntl(c, F_SETFL, fcntl(c, F_GETFL, 0) | O_NONBLOCK)
            var a = sockaddr_in(sin_family: sa_family_t(AF_INET), sin_port: UInt16(full.port).bigEndian, sin_addr: in_addr(s_addr: inet_addr("127.0.0.1")),
                                sin_zero: (0, 0, 0, 0, 0, 0, 0, 0))
            _ = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(c, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            fillers.append(c)
        }
        usleep(200_000)
        let t0 = Date()
        XCTAssertThrowsError(try CoordinatorClient.status(host: "127.0.0.1", port: full.port, token: Data("t".utf8), timeout: 2)) {
            XCTAssertEqual("\($0)", "cannot connect to 127.0.0.1:\(full.port): Connection timed out")
        }
        XCTAssertLessThan(Date().timeIntervalSince(t0), 30, "the 2 s deadline, not the kernel's SYN timeout")
        // A listener that takes the connection and says nothing.
        let mute = try silentListener(backlog: 8)
        defer { close(mute.fd) }
        XCTAssertThrowsError(try CoordinatorClient.status(host: "127.0.0.1", port: mute.port, token: Data("t".utf8), timeout: 1)) {
            XCTAssertEqual("\($0)", "127.0.0.1:\(mute.port) took the connection but sent nothing within 1 s: is a RADAR coordinator listening there?")
        }
    }

    func testHMACMatchesRFC4231() {
        // AES-256-GCM, zero key, zero nonce, nothing authenticated (the GCM specification's test
        // case 13): the frame tag's wiring of key and nonce.
        var tag = [UInt8](repeating: 0, count: 16)
        tag.withUnsafeMutableBytes { FrameAuthenticator(key: [UInt8](repeating: 0, count: 32)).tag(sender: 0, counter: 0, header: UnsafeRawBufferPointer(start: nil, count: 0), body: UnsafeRawBufferPointer(start: nil, count: 0), into: $0.baseAddress!) }
        XCTAssertEqual(tag.map { String(format: "%02x", $0) }.joined(), "530f8afbc74536b9a963b4f1c4cb738b")
        // RFC 4231 test case 6: a key longer than the block.
        XCTAssertEqual(HMACSHA256.hex(key: Data(repeating: 0xaa, count: 131), message: Data("Test Using Larger Than Block-Size Key - Hash Key First".utf8)),
                       "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54")
        // RFC 4231 test case 2.
        XCTAssertEqual(HMACSHA256.hex(key: Data("Jefe".utf8), message: Data("what do ya want for nothing?".utf8)),
                       "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        let d = SHA256Digest()
        d.update(Data("abc".utf8))
        XCTAssertEqual(d.finalize(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        // Many blocks fed in uneven pieces, against coreutils' sha256sum.
        let bytes = Data((0..<100_003).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 >> 7) })
        let file = NSTemporaryDirectory() + "radar-sha-\(getpid())"
        try? bytes.write(to: URL(fileURLWithPath: file))
        let piecewise = SHA256Digest()
        var at = 0
        for n in [1, 63, 65, 1000, 64, 7].cycled(until: bytes.count) {
            let m = min(n, bytes.count - at)
            piecewise.update(bytes.subdata(in: at..<(at + m)))
            at += m
        }
        let reference = String(decoding: (try? Process.runCapturing(["sha256sum", file])) ?? Data(), as: UTF8.self).prefix(64)
        XCTAssertEqual(piecewise.finalize(), String(reference))
        XCTAssertEqual(SHA256Digest.hex(bytes), String(reference))
    }
}

/// The data plane authenticates both ends of every connection and every frame.
final class DataPlaneAuthenticationTests: XCTestCase {
    let token = Data(HMACSHA256.randomHex(bytes: 16).utf8)

    /// Impostors at rank 0's data port (garbage; a hello with the right job id, as an observer of
    /// one hello could send, claiming rank 1 with a made-up proof) are refused and logged; the
    /// real rank 1 then joins and the all-reduce is exact. A listener without the token is
    /// refused by the connecting rank.
    func testImpostorsAreRefusedAndNoFrameOfTheirsIsAccepted() throws {
        let (fd0, port0) = try TCPRendezvous.listen()
        let (fd1, port1) = try TCPRendezvous.listen()
        let peers = [TCPCommunicator.Peer(rank: 0, host: "127.0.0.1", port: port0), TCPCommunicator.Peer(rank: 1, host: "127.0.0.1", port: port1)]
        let c0 = Shared<TCPCommunicator?>(nil)
        var logged: [String] = []
        let lock = NSLock()
        let g = DispatchGroup()
        g.enter()
        DispatchQueue.global().async {
            c0.value = try? TCPCommunicator(rank: 0, size: 2, token: self.token, listenFD: fd0, peers: peers, timeout: 20)
            g.leave()
        }
        // Impostor 1: garbage. Impostor 2: a well-formed hello with the job id, wrong proof.
        let a = loopbackConnect(port0)
        _ = [UInt8](repeating: 0x41, count: 56).withUnsafeBytes { send(a, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        let b = loopbackConnect(port0)
        var hello = Data()
        for w in [UInt64(0x5244_5254), TCPCommunicator.jobID(token: token), 1] { withUnsafeBytes(of: w.littleEndian) { hello.append(contentsOf: $0) } }
        hello.append(Data(SecureRandom.bytes(32)))
        _ = hello.withUnsafeBytes { send(b, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        var reply = [UInt8](repeating: 0, count: 64)
        XCTAssertEqual(recv(b, &reply, 64, Int32(MSG_WAITALL)), 64, "the listener answers the challenge")
        _ = SecureRandom.bytes(32).withUnsafeBytes { send(b, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        // A frame an impostor might push after its handshake: it must never be read as data.
        _ = [UInt8](repeating: 0x7F, count: 4096).withUnsafeBytes { send(b, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        usleep(300_000)
        let c1 = try TCPCommunicator(rank: 1, size: 2, token: token, listenFD: fd1, peers: peers, timeout: 20)
        g.wait()
        close(a); close(b)
        let comm0 = try XCTUnwrap(c0.value)
        comm0.log = { s in lock.lock(); logged.append(s); lock.unlock() }
        XCTAssertEqual(comm0.refusedConnections, 2, "both impostors refused")
        // The honest ranks' all-reduce is exact.
        var x0: [Float] = [1, 2, 3]
        let x1 = Shared<[Float]>([10, 20, 30])
        let done = expectation(description: "rank 1 reduced")
        DispatchQueue.global().async { x1.update { x in try? x.withUnsafeMutableBufferPointer { try c1.allReduce($0.baseAddress!, count: 3) } }; done.fulfill() }
        try x0.withUnsafeMutableBufferPointer { try comm0.allReduce($0.baseAddress!, count: 3) }
        wait(for: [done], timeout: 10)
        XCTAssertEqual(x0, [11, 22, 33])
        XCTAssertEqual(x1.value, [11, 22, 33])
        print("data-plane impostors: \(comm0.refusedConnections) connections refused, 0 frames accepted")

        // A listener that knows the job id (seen in a hello) but not the token cannot pass for rank 0.
        let (fdX, portX) = try TCPRendezvous.listen()
        let (fdY, portY) = try TCPRendezvous.listen()
        let fake = [TCPCommunicator.Peer(rank: 0, host: "127.0.0.1", port: portX), TCPCommunicator.Peer(rank: 1, host: "127.0.0.1", port: portY)]
        DispatchQueue.global().async {
            guard let c = Sockets_accept(fdX) else { return }
            var hello = [UInt8](repeating: 0, count: 56)
            _ = recv(c, &hello, 56, Int32(MSG_WAITALL))
            _ = SecureRandom.bytes(64).withUnsafeBytes { send(c, $0.baseAddress, 64, Int32(MSG_NOSIGNAL)) }
            usleep(500_000)
            close(c)
        }
        XCTAssertThrowsError(try TCPCommunicator(rank: 1, size: 2, token: token, listenFD: fdY, peers: fake, timeout: 5)) {
            XCTAssertTrue("\($0)".contains("could not prove the job token: not rank 0 of this job"), "\($0)")
        }
    }

    /// A man in the middle flips one bit of a gradient frame: the receiver refuses the frame
    /// (its tag fails) instead of adding the altered values.
    func testAnAlteredFrameIsRefused() throws {
        let (fd0, port0) = try TCPRendezvous.listen()
        let (fd1, port1) = try TCPRendezvous.listen()
        let (proxyFD, proxyPort) = try TCPRendezvous.listen()
        // Rank 1 dials the proxy, which relays to rank 0 and flips a bit of the first frame's body.
        DispatchQueue.global().async {
            guard let inbound = Sockets_accept(proxyFD) else { return }
            let outbound = loopbackConnect(port0)
            let handshake = 56 + 32, header = 32
            DispatchQueue.global().async { self.pump(from: outbound, to: inbound, flipAt: nil) }
            self.pump(from: inbound, to: outbound, flipAt: handshake + header + 5)
        }
        let peers = [TCPCommunicator.Peer(rank: 0, host: "127.0.0.1", port: proxyPort), TCPCommunicator.Peer(rank: 1, host: "127.0.0.1", port: port1)]
        let peers0 = [TCPCommunicator.Peer(rank: 0, host: "127.0.0.1", port: port0), TCPCommunicator.Peer(rank: 1, host: "127.0.0.1", port: port1)]
        let c0 = Shared<TCPCommunicator?>(nil)
        let g = DispatchGroup()
        g.enter(); DispatchQueue.global().async { c0.value = try? TCPCommunicator(rank: 0, size: 2, token: self.token, listenFD: fd0, peers: peers0, timeout: 10); g.leave() }
        let c1 = try TCPCommunicator(rank: 1, size: 2, token: token, listenFD: fd1, peers: peers, timeout: 10)
        g.wait()
        let comm0 = try XCTUnwrap(c0.value)
        comm0.timeout = 5
        c1.timeout = 5
        DispatchQueue.global().async { let v: [Float] = [1, 2, 3, 4]; try? v.withUnsafeBytes { try c1.send($0.baseAddress!, bytes: 16, to: 0, tag: 7) } }
        var got = [Float](repeating: 0, count: 4)
        XCTAssertThrowsError(try got.withUnsafeMutableBytes { try comm0.recv($0.baseAddress!, bytes: 16, from: 1, tag: 7) }) {
            XCTAssertTrue("\($0)".contains("failed authentication"), "\($0)")
        }
    }

    /// Copies bytes until EOF, flipping bit 0 of the byte at stream offset `flipAt`.
    func pump(from: Int32, to: Int32, flipAt: Int?) {
        var buf = [UInt8](repeating: 0, count: 1 << 16)
        var offset = 0
        while true {
            let n = recv(from, &buf, buf.count, 0)
            if n <= 0 { shutdown(to, Int32(SHUT_WR)); return }
            if let f = flipAt, f >= offset, f < offset + n { buf[f - offset] ^= 1 }
            offset += n
            _ = buf.withUnsafeBytes { send(to, $0.baseAddress, n, Int32(MSG_NOSIGNAL)) }
        }
    }
}

/// A plain TCP connection to 127.0.0.1:port (for raw, hostile peers in tests).
func loopbackConnect(_ port: Int) -> Int32 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = in_port_t(UInt16(port).bigEndian)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    return fd
}

func Sockets_accept(_ fd: Int32) -> Int32? {
    let c = accept(fd, nil, nil)
    return c >= 0 ? c : nil
}

final class StandaloneCoordinatorTests: XCTestCase {
    /// `radar-coordinator` as a service with two TCP workers pointed at it: status mid-run shows
    /// ranks, step, images/s and the last heartbeat; the epoch plans are confirmed against the
    /// coordinator's own copy of the dataset; the service exits 0 once every rank finished.
    func testStandaloneCoordinatorServesTCPWorkersAndReportsStatus() throws {
        let bin = MPITrainingTests.products
        let tokenFile = NSTemporaryDirectory() + "radar-token-\(getpid())"
        // A short token is refused in one line that says how to make a good one.
        try Data("s3cret\n".utf8).write(to: URL(fileURLWithPath: tokenFile))
        let (rc, text) = try Process.runStatus([bin.appendingPathComponent("radar-coordinator").path, "--world-size", "2", "--token-file", tokenFile])
        XCTAssertNotEqual(rc, 0)
        XCTAssertTrue(text.contains("\(tokenFile): the job token has 6 characters, at least 32") && text.contains("openssl rand"), text)
        // A job of no ranks is refused (it listened, and reported every rank finished).
        let (zrc, ztext) = try Process.runStatus([bin.appendingPathComponent("radar-coordinator").path, "--world-size", "0", "--token-file", tokenFile])
        XCTAssertEqual(zrc, 64, ztext)
        XCTAssertTrue(ztext.contains("--world-size must be from 1 to 65536, got 0"), ztext)
        let (brc, btext) = try Process.runStatus([bin.appendingPathComponent("radar-coordinator").path, "--world-size", "100000000", "--token-file", tokenFile])
        XCTAssertEqual(brc, 64, btext)
        XCTAssertTrue(btext.contains("--world-size must be from 1 to 65536, got 100000000"), btext)
        let (hrc, htext) = try Process.runStatus([bin.appendingPathComponent("radar-coordinator").path, "--world-size", "2", "--token-file", tokenFile,
                                                  "--heartbeat-deadline", "0.001"])
        XCTAssertEqual(hrc, 64, htext)
        XCTAssertTrue(htext.contains("--heartbeat-deadline must be at least 2 seconds (ranks send a heartbeat every second), got 0.001"), htext)
        try Data((HMACSHA256.randomHex(bytes: 16) + "\n").utf8).write(to: URL(fileURLWithPath: tokenFile))
        // A port past 65535 crashed it (a trap converting to UInt16).
        let (prc, ptext) = try Process.runStatus([bin.appendingPathComponent("radar-coordinator").path, "--world-size", "2", "--token-file", tokenFile,
                                                  "--listen", "127.0.0.1:99999"])
        XCTAssertEqual(prc, 64, ptext)
        XCTAssertTrue(ptext.contains("127.0.0.1:99999: expected HOST:PORT with a port in 0...65535"), ptext)
        // With the command's own usage (it showed the top level's, "radar-coordinator <subcommand>").
        XCTAssertTrue(ptext.contains("Usage: radar-coordinator serve "), ptext)
        let (src, stext) = try Process.runStatus([bin.appendingPathComponent("radar-coordinator").path, "status", "--address", "nonsense"])
        XCTAssertEqual(src, 64, stext)
        XCTAssertTrue(stext.contains("nonsense: expected HOST:PORT") && stext.contains("Usage: radar-coordinator status "), stext)
        // No token: one line, no usage (a usage error it was not).
        let (nrc, ntext) = try Process.runStatus(["-u", "RADAR_JOB_TOKEN", bin.appendingPathComponent("radar-coordinator").path, "--world-size", "2"])  // env -u
        XCTAssertEqual(nrc, 1, ntext)
        XCTAssertEqual(ntext, "radar-coordinator: error: a job token is needed: --token-file or RADAR_JOB_TOKEN (make one with `openssl rand -hex 32`)\n")
        let port = try TCPRendezvous.freePort()
        // Nothing listening yet: said at once (after 10 s of tries before).
        let t0 = Date()
        let (qrc, qtext) = try Process.runStatus([bin.appendingPathComponent("radar-coordinator").path, "status", "--address", "127.0.0.1:\(port)", "--token-file", tokenFile])
        XCTAssertEqual(qrc, 1, qtext)
        XCTAssertEqual(qtext, "radar-coordinator status: cannot connect to 127.0.0.1:\(port): Connection refused: no coordinator listens there (is the job running, and is this its --listen port?)\n")
        XCTAssertLessThan(Date().timeIntervalSince(t0), 8, "not the 10 s of tries a rank makes")
        let coord = Process()
        coord.executableURL = bin.appendingPathComponent("radar-coordinator")
        // Heartbeats are due every 2 s; rank 1 starts 6 s after rank 0 and must still join.
        coord.arguments = ["--data", MPITrainingTests.dataset, "--listen", "127.0.0.1:\(port)", "--world-size", "2", "--token-file", tokenFile,
                           "--heartbeat-deadline", "2"]
        coord.standardError = FileHandle.nullDevice
        try coord.run()
        let out = NSTemporaryDirectory() + "radar-standalone-\(UUID().uuidString.prefix(6))"
        var workers: [Process] = []
        for r in 0..<2 {
            if r == 1 { sleep(6) }
            let w = Process()
            w.executableURL = bin.appendingPathComponent("radar-worker")
            w.arguments = ["--transport", "tcp", "--rank", String(r), "--world-size", "2", "--coordinator", "127.0.0.1:\(port)",
                           "--token-file", tokenFile, "--data", MPITrainingTests.dataset, "--output", out, "--experiment", "e",
                           "--config", "tiny", "--batch-size", "4", "--num-epochs", "3", "--accumulation-steps", "1", "--threads", "1"]
            w.standardOutput = FileHandle.nullDevice
            w.standardError = FileHandle.nullDevice
            try w.run()
            workers.append(w)
        }
        var seen: [String: Any]?
        let deadline = Date().addingTimeInterval(120)
        while Date() < deadline && workers.contains(where: { $0.isRunning }) {
            let text = String(decoding: try Process.runCapturing([bin.appendingPathComponent("radar-coordinator").path, "status",
                                                                   "--address", "127.0.0.1:\(port)", "--token-file", tokenFile]), as: UTF8.self)
            if let s = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any],
               let ranks = s["ranks"] as? [[String: Any]], ranks.count == 2,
               ranks.allSatisfy({ ($0["step"] as? Int ?? 0) > 0 && $0["images_per_s"] != nil && $0["last_heartbeat_s_ago"] != nil }) {
                seen = s
                break
            }
            usleep(200_000)
        }
        XCTAssertNotNil(seen, "status showed both ranks with step, images/s and last heartbeat")
        for w in workers { w.waitUntilExit(); XCTAssertEqual(w.terminationStatus, 0) }
        coord.waitUntilExit()
        XCTAssertEqual(coord.terminationStatus, 0, "the service ends cleanly once every rank finished")
        XCTAssertTrue(FileManager.default.fileExists(atPath: out + "/e/best.safetensors.lz4"))
    }
}

final class RendezvousTests: XCTestCase {
    let token = Data(HMACSHA256.randomHex(bytes: 16).utf8)

    /// The launcher's coordinator port comes from below the ephemeral range, where no automatic
    /// port (another rank's data listener, an outgoing connection) can take it before rank 0
    /// binds it; and it is free on every interface.
    func testTheLaunchersPortIsFreeAndNoAutomaticPortCanTakeIt() throws {
        let range = try String(contentsOfFile: "/proc/sys/net/ipv4/ip_local_port_range", encoding: .utf8)
            .split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }).compactMap { Int($0) }
        let ports = try (0..<20).map { _ in try TCPRendezvous.freePort() }
        for port in ports {
            XCTAssertTrue((10_000..<range[0]).contains(port), "port \(port), ephemeral range \(range)")
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var one: Int32 = 1
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
            var addr = sockaddr_in(sin_family: sa_family_t(AF_INET), sin_port: UInt16(port).bigEndian, sin_addr: in_addr(s_addr: 0), sin_zero: (0, 0, 0, 0, 0, 0, 0, 0))
            let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            XCTAssertEqual(rc, 0, "0.0.0.0:\(port) binds, as rank 0's coordinator will")
            close(fd)
        }
        XCTAssertGreaterThan(Set(ports).count, 1, "drawn at random")
    }

    func client(_ port: Int, rank: Int, worldSize: Int? = nil, rendezvous: TimeInterval = 30) throws -> CoordinatorClient {
        try CoordinatorClient(host: "127.0.0.1", port: port, token: token, rank: rank, worldSize: worldSize, dataHost: "127.0.0.1",
                              dataPort: 1000 + rank, timeout: 5, rendezvousTimeout: rendezvous)
    }

    /// A waiting rank heartbeats, so a late one joins; the rendezvous has its own deadline and
    /// its error names the ranks that never came.
    func testWaitingRanksStayAliveAndTheRendezvousDeadlineNamesTheMissingRanks() throws {
        let server = try CoordinatorServer(host: "127.0.0.1", port: 0, worldSize: 3, token: token)
        defer { server.stop() }
        server.heartbeatDeadline = 1.5
        server.rendezvousDeadline = 5
        var logged: [String] = []
        let lock = NSLock()
        server.log = { s in lock.lock(); logged.append(s); lock.unlock() }
        let t0 = Date()
        let errors = Shared<[String]>([])
        let g = DispatchGroup()
        for r in 0..<2 {
            g.enter()
            DispatchQueue.global().async {
                do { _ = try self.client(server.port, rank: r) } catch { errors.update { $0.append("\(error)") } }
                g.leave()
            }
        }
        g.wait()
        XCTAssertGreaterThan(Date().timeIntervalSince(t0), 4.5, "the ranks waited past 3 heartbeat deadlines without being declared lost")
        XCTAssertEqual(errors.value.count, 2)
        XCTAssertTrue(errors.value.allSatisfy { $0.contains("rank 2 never registered within 5 s") }, "\(errors.value)")
        XCTAssertNil(server.status()["lost_rank"] as? Int, "nobody was declared lost: \(logged)")
    }

    func testLateRankJoinsAfterManyHeartbeatDeadlines() throws {
        let server = try CoordinatorServer(host: "127.0.0.1", port: 0, worldSize: 2, token: token)
        defer { server.stop() }
        server.heartbeatDeadline = 1
        let first = Shared<CoordinatorClient?>(nil)
        let g = DispatchGroup()
        g.enter(); DispatchQueue.global().async { first.value = try? self.client(server.port, rank: 0); g.leave() }
        sleep(4)
        let second = try client(server.port, rank: 1)
        g.wait()
        XCTAssertEqual(first.value?.peers.count, 2)
        XCTAssertEqual(second.peers.map(\.port), [1000, 1001])
        first.value?.finish(); second.finish()
    }

    /// A rank started with another world size, or a second rank 0, is refused at the rendezvous
    /// with a message naming both values.
    func testWorldSizeMismatchAndDuplicateRanksAreNamed() throws {
        let server = try CoordinatorServer(host: "127.0.0.1", port: 0, worldSize: 2, token: token)
        defer { server.stop() }
        server.rendezvousDeadline = 2
        XCTAssertThrowsError(try client(server.port, rank: 1, worldSize: 3)) {
            XCTAssertTrue("\($0)".contains("rank 1 was started with world size 3, the job has 2"), "\($0)")
        }
        let g = DispatchGroup()
        g.enter(); DispatchQueue.global().async { _ = try? self.client(server.port, rank: 0); g.leave() }
        usleep(500_000)
        XCTAssertThrowsError(try client(server.port, rank: 0, worldSize: 2)) {
            XCTAssertTrue("\($0)".contains("rank 0 is already registered"), "\($0)")
        }
        g.wait()
    }

    /// Bad fields (a zero batch size crashed the coordinator) drop that worker only; progress
    /// with ever new keys does not grow it without bound.
    func testHostileButAuthenticatedMessagesAreBounded() throws {
        let server = try CoordinatorServer(host: "127.0.0.1", port: 0, worldSize: 1, token: token)
        defer { server.stop() }
        server.planDigest = { r in String(1000 / r.batchSize) }
        let c = try client(server.port, rank: 0)
        c.onAbort = { _ in }
        for i in 0..<500 { c.report(["key\(i)": i, "long\(i)": String(repeating: "x", count: 10)]) }
        try c.start(interval: 0.05)
        usleep(600_000)
        let ranks = try XCTUnwrap(server.status()["ranks"] as? [[String: Any]])
        XCTAssertLessThanOrEqual(ranks[0].count, CoordinatorServer.maxProgressKeys + 5, "bounded: \(ranks[0].count) fields")
        XCTAssertEqual(try c.epochPlanDigest(epoch: 0, seed: 1, batchSize: 4, accumulationSteps: 1, maxStepsPerEpoch: 0, timeout: 5), "250")
        XCTAssertThrowsError(try c.epochPlanDigest(epoch: 1, seed: 1, batchSize: 0, accumulationSteps: 1, maxStepsPerEpoch: 0, timeout: 2))
        usleep(300_000)
        XCTAssertEqual(server.status()["lost_rank"] as? Int, 0, "the misbehaving rank is dropped; the coordinator lives")
        XCTAssertEqual(server.status()["world_size"] as? Int, 1)
        c.finish()
    }

    /// `radar-coordinator` at its limit on open files: a connection it cannot accept is told to
    /// come back (from a spare descriptor) and said once; a rank's login waits and gets in once
    /// connections close. (The connection stayed pending, poll said readable at once, and the
    /// accept loop spun a core; a rank waited out its timeout.)
    func testACoordinatorAtItsLimitOnOpenFilesTurnsConnectionsAwayAndGoesOn() throws {
        let bin = MPITrainingTests.products
        let tokenFile = NSTemporaryDirectory() + "radar-token-files-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: tokenFile) }
        let token = HMACSHA256.randomHex(bytes: 16)
        try Data((token + "\n").utf8).write(to: URL(fileURLWithPath: tokenFile))
        let port = try TCPRendezvous.freePort()
        // Nothing listening yet: said at once (after 10 s of tries before).
        let t0 = Date()
        let (qrc, qtext) = try Process.runStatus([bin.appendingPathComponent("radar-coordinator").path, "status", "--address", "127.0.0.1:\(port)", "--token-file", tokenFile])
        XCTAssertEqual(qrc, 1, qtext)
        XCTAssertEqual(qtext, "radar-coordinator status: cannot connect to 127.0.0.1:\(port): Connection refused: no coordinator listens there (is the job running, and is this its --listen port?)\n")
        XCTAssertLessThan(Date().timeIntervalSince(t0), 8, "not the 10 s of tries a rank makes")
        let coord = Process()
        coord.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        coord.arguments = ["prlimit", "--nofile=32", bin.appendingPathComponent("radar-coordinator").path, "--data", MPITrainingTests.dataset,
                           "--listen", "127.0.0.1:\(port)", "--world-size", "1", "--token-file", tokenFile]
        let err = Pipe()
        coord.standardError = err
        try coord.run()
        defer { if coord.isRunning { coord.terminate() } }
        let started = Date()
        while (try? CoordinatorClient.status(host: "127.0.0.1", port: port, token: Data(token.utf8))) == nil, Date().timeIntervalSince(started) < 20 {
            usleep(100_000)
        }
        // Idle connections, a descriptor each in the coordinator, until one is turned away.
        var idle: [Int32] = []
        defer { idle.forEach { close($0) } }
        var turnedAway = ""
        while turnedAway.isEmpty, idle.count < 60 {
            let fd = loopbackConnect(port)
            guard let (kind, body) = try? Wire.receive(fd, deadline: monotonicNow().addingTimeInterval(5)) else { close(fd); break }
            if kind == .refused { turnedAway = "\(body)"; close(fd) } else { idle.append(fd) }
        }
        XCTAssertTrue(turnedAway.contains("the coordinator is busy: cannot accept a connection: Too many open files: the limit on open files is reached (ulimit -n 32)"),
                      "\(idle.count) idle: \(turnedAway)")
        XCTAssertTrue(turnedAway.contains("later"), turnedAway)
        XCTAssertGreaterThan(idle.count, 5)
        // A rank comes meanwhile: told to come back, it is in once the idle connections close.
        let login = Shared<Result<CoordinatorClient, Error>?>(nil)
        let rankThread = Thread {
            login.value = Result { try CoordinatorClient(host: "127.0.0.1", port: port, token: Data(token.utf8), rank: 0,
                                                         dataHost: "127.0.0.1", dataPort: 1, timeout: 5, rendezvousTimeout: 20) }
        }
        rankThread.start()
        usleep(1_200_000)
        XCTAssertNil(login.value, "the rank waits while the coordinator has no descriptor for it")
        idle.forEach { close($0) }
        idle = []
        while login.value == nil, Date().timeIntervalSince(started) < 60 { usleep(50_000) }
        let client = try XCTUnwrap(login.value).get()
        XCTAssertEqual(client.peers.count, 1)
        client.finish()
        coord.terminate()
        coord.waitUntilExit()
        let said = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let notices = said.components(separatedBy: "\n").filter {
            $0.contains("coordinator: cannot accept a connection: Too many open files: the limit on open files is reached (ulimit -n 32): turning new connections away until some close")
        }
        XCTAssertEqual(notices.count, 1, said)
    }
}

extension Array where Element == Int {
    /// The elements repeated until their running sum reaches `total`.
    func cycled(until total: Int) -> [Int] {
        var out: [Int] = [], sum = 0, i = 0
        while sum < total { out.append(self[i % count]); sum += self[i % count]; i += 1 }
        return out
    }
}

/// A value threads of a test hand to each other under a lock (a captured `var` mutated in a
/// dispatched closure is a data race by Swift 6's rules, and a warning now).
final class Shared<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: T
    init(_ value: T) { stored = value }
    var value: T {
        get { lock.withLock { stored } }
        set { lock.withLock { stored = newValue } }
    }
    func update(_ change: (inout T) -> Void) { lock.withLock { change(&stored) } }
}
