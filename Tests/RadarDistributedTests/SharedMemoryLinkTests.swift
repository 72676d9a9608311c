import Foundation
import RadarCore
@testable import RadarDistributed
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// The TCP transport's same-host links: ring neighbours on one host exchange frames through a
/// shared-memory segment (TCPCommunicator.connectSharedMemory). Ranks are threads of this
/// process here, each with its own communicator, as in CoordinatorTests; the multi-process runs
/// (radar launch, kill -9, TCP against MPI bits) are in MPITrainingTests and FaultInjectionTests.
final class SharedMemoryLinkTests: XCTestCase {
    static let token = Data("a job token of at least thirty-two characters".utf8)

    /// `hosts.count` ranks connected as TCPJob does (mesh, then the same-host links), rank r
    /// advertising hosts[r] and asking for links when enabled[r]; rings of `capacity` bytes.
    func connect(hosts: [String], enabled: [Bool]? = nil, capacity: Int = 4096, timeout: TimeInterval = 10,
                 hierarchical: [Bool]? = nil, log: (@Sendable (String) -> Void)? = nil) throws -> [TCPCommunicator] {
        let n = hosts.count
        let listeners = try (0..<n).map { _ in try TCPRendezvous.listen() }
        let peers = (0..<n).map { TCPCommunicator.Peer(rank: $0, host: hosts[$0], port: listeners[$0].1) }
        let comms = Shared<[TCPCommunicator?]>(Array(repeating: nil, count: n))
        let errors = Shared<[String]>([])
        let lock = NSLock()
        SharedMemoryLinkTests.threads(n) { r in
            do {
                let c = try TCPCommunicator(rank: r, size: n, token: SharedMemoryLinkTests.token, listenFD: listeners[r].0, peers: peers, timeout: timeout)
                if let log { c.log = log }
                try c.connectSharedMemory(peers: peers, enabled: enabled?[r] ?? true, capacity: capacity)
                try c.agreeOnHostGroups(peers: peers, enabled: hierarchical?[r] ?? true)
                lock.lock(); comms.value[r] = c; lock.unlock()
            } catch {
                lock.lock(); errors.value.append("rank \(r): \(error)"); lock.unlock()
            }
        }
        for (fd, _) in listeners { close(fd) }  // (connected: the listeners are done)
        XCTAssertEqual(errors.value, [])
        return try comms.value.map { try XCTUnwrap($0) }
    }

    /// `body(r)` for r in 0..<n, each on a thread of its own (ranks wait for each other, so they
    /// must all run at once: DispatchQueue.concurrentPerform runs as many as there are cores).
    static func threads(_ n: Int, _ body: @escaping @Sendable (Int) -> Void) {
        let done = DispatchGroup()
        for r in 0..<n {
            done.enter()
            let t = Thread { body(r); done.leave() }
            t.stackSize = 1 << 20
            t.start()
        }
        done.wait()
    }

    /// Every rank runs `body` on its own thread; the errors, by rank.
    func onEveryRank(_ comms: [TCPCommunicator], _ body: @escaping @Sendable (TCPCommunicator) throws -> Void) -> [String] {
        let errors = Shared<[String]>([])
        let lock = NSLock()
        SharedMemoryLinkTests.threads(comms.count) { r in
            do { try body(comms[r]) } catch { lock.lock(); errors.value.append("rank \(r): \(error)"); lock.unlock() }
        }
        return errors.value.sorted()
    }

    /// Small integers, so every sum is exact in any order and in bf16 (|sum| <= 16 x ranks).
    static func value(rank: Int, index: Int) -> Float { Float((rank * 7 + index * 13) % 33 - 16) }

    /// All-reduces of many lengths (under the world size, odd, many times the 4 KiB rings: pieces
    /// wrap around the ring and wait for room), fp32 and bf16 on the wire, then a broadcast and an
    /// all-gather; every rank checks every value.
    func checkCollectives(_ comms: [TCPCommunicator], file: StaticString = #filePath, line: UInt = #line) {
        let p = comms.count
        let errors = onEveryRank(comms) { c in
            for wire in WireFormat.allCases {
                for count in [1, 2, 5, 1023, 1024, 3001, 40_000, 300_007] {
                    var ring = RingAllReduce(communicator: c, wire: wire)
                    ring.chunkFloats = 10_000  // several pieces a segment, the helper thread adding
                    // The single ring, then what allReduce runs (two levels where the ranks agreed to).
                    for twoLevels in [false, true] {
                        var buffer = (0..<count).map { SharedMemoryLinkTests.value(rank: c.rank, index: $0) }
                        try buffer.withUnsafeMutableBufferPointer {
                            if twoLevels {
                                // Small pieces, so both levels' rings run their helper threads.
                                if let two = c.twoLevels {
                                    try two.run($0.baseAddress!, count: count, op: .sum, tag: 9, wire: wire, chunkFloats: 10_000)
                                } else {
                                    try c.allReduce($0.baseAddress!, count: count, tensor: 9, wire: wire)
                                }
                            } else {
                                try ring.run($0.baseAddress!, count: count, op: .sum, tag: 9)
                            }
                        }
                        for i in 0..<count {
                            let expected = (0..<p).reduce(Float(0)) { $0 + SharedMemoryLinkTests.value(rank: $1, index: i) }
                            guard buffer[i] == expected else {
                                throw CommunicationError(rank: c.rank, peer: nil, reason: "\(twoLevels ? c.allReduceAlgorithm : "ring") \(wire) count \(count): [\(i)] = \(buffer[i]), expected \(expected)")
                            }
                        }
                    }
                }
            }
            var bytes = [UInt8](repeating: 0, count: 50_001)
            if c.rank == 1 { for i in bytes.indices { bytes[i] = UInt8(truncatingIfNeeded: i &* 31) } }
            try bytes.withUnsafeMutableBytes { try c.broadcast($0.baseAddress!, bytes: $0.count, root: 1) }
            guard bytes.indices.allSatisfy({ bytes[$0] == UInt8(truncatingIfNeeded: $0 &* 31) }) else {
                throw CommunicationError(rank: c.rank, peer: nil, reason: "broadcast differs")
            }
            let all = try c.allGather(Data(repeating: UInt8(c.rank + 1), count: 9000))
            guard all.enumerated().allSatisfy({ $0.element == Data(repeating: UInt8($0.offset + 1), count: 9000) }) else {
                throw CommunicationError(rank: c.rank, peer: nil, reason: "all-gather differs")
            }
        }
        XCTAssertEqual(errors, [], file: file, line: line)
    }

    /// A ring that starts its helper thread and then adds nothing (the all-gather half of a
    /// two-level all-reduce) finishes it at once: the reducer must outlive its thread's first look
    /// at it (an unowned capture crashed the process here: "Attempted to read an unowned
    /// reference but object ... was already destroyed"). Then one that adds, freed as it returns.
    func testARingHelperFinishedBeforeItsThreadRanOutlivesIt() {
        for _ in 0..<3000 { PieceReducer.started()!.finish() }
        var dst = [Float](repeating: 1, count: 64), src = [Float](repeating: 2, count: 64)
        for _ in 0..<500 {
            let r = PieceReducer.started()!
            src.withUnsafeMutableBytes { s in
                dst.withUnsafeMutableBufferPointer { d in
                    r.add(slot: 0, from: s.baseAddress!, bf16: false, into: d.baseAddress!, count: 64, op: .sum)
                    r.finish()
                }
            }
        }
        XCTAssertEqual(dst, [Float](repeating: 1001, count: 64))
    }

    func segmentsInDevShm() -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/dev/shm")) ?? []).filter { $0.hasPrefix("radar-\(getpid())-") }
    }

    func testSameHostNeighboursTalkThroughSharedMemoryAndEverySumIsExact() throws {
        for n in [2, 3, 4] {
            let comms = try connect(hosts: Array(repeating: "127.0.0.1", count: n))
            for c in comms {
                XCTAssertEqual(c.sharedMemoryPeers, Set([(c.rank + 1) % n, (c.rank + n - 1) % n]).sorted(), "\(n) ranks, rank \(c.rank)")
            }
            XCTAssertEqual(segmentsInDevShm(), [], "every segment is unlinked once both ranks mapped it")
            checkCollectives(comms)
        }
    }

    func testARankWithSharedMemoryOffAndARankOnAnotherHostKeepTCPBesideSharedLinks() throws {
        // Rank 1 turned it off (RADAR_SHM_DISABLE=1): 0-1 and 1-2 stay TCP, 2-0 shares memory,
        // so ranks 0 and 2 each send over one kind of link and receive over the other.
        let off = try connect(hosts: Array(repeating: "127.0.0.1", count: 3), enabled: [true, false, true])
        XCTAssertEqual(off.map(\.sharedMemoryPeers), [[2], [], [0]])
        checkCollectives(off)
        // Rank 2 on another host (an address of its own): it keeps TCP; 0-1 and 3-0 are ring
        // neighbours on one host, 1-3 neighbours in the ring of that host's ranks 0, 1, 3.
        let apart = try connect(hosts: ["127.0.0.1", "127.0.0.1", "127.0.0.2", "127.0.0.1"])
        XCTAssertEqual(apart.map(\.sharedMemoryPeers), [[1, 3], [0, 3], [], [0, 1]])
        checkCollectives(apart)
        XCTAssertEqual(segmentsInDevShm(), [])
    }

    func testASegmentThatCannotBeReservedLeavesThePairOnTCPSayingWhy() throws {
        // Rings far larger than /dev/shm: posix_fallocate refuses at once (no SIGBUS later).
        let lines = Shared<[String]>([])
        let lock = NSLock()
        let comms = try connect(hosts: ["127.0.0.1", "127.0.0.1", "127.0.0.1"], capacity: 1 << 40,
                                log: { line in lock.lock(); lines.value.append(line); lock.unlock() })
        XCTAssertEqual(comms.map(\.sharedMemoryPeers), [[], [], []])
        XCTAssertEqual(lines.value.filter { $0.contains("no shared memory with rank") && $0.contains("reserving") && $0.contains("/dev/shm") && $0.hasSuffix(": TCP") }.count,
                       3, "the creator of each of the 3 pairs says why: \(lines.value)")
        XCTAssertEqual(segmentsInDevShm(), [])
        checkCollectives(comms)
    }

    func testAWaitOnASharedLinkGivesUpNamingThePeerAndAFrameIsStillChecked() throws {
        let comms = try connect(hosts: ["127.0.0.1", "127.0.0.1"])
        XCTAssertEqual(comms[0].sharedMemoryPeers, [1])
        comms[0].timeout = 1
        var x: Float = 0
        let t0 = Date()
        XCTAssertThrowsError(try comms[0].recv(&x, bytes: 4, from: 1, tag: 5)) { e in
            XCTAssertTrue("\(e)".contains("rank 0: waiting for rank 1: no progress for 1 s"), "\(e)")
        }
        XCTAssertLessThan(Date().timeIntervalSince(t0), 3)
        // A frame for another tensor id is refused, as over TCP.
        var v: Float = 1
        try comms[1].send(&v, bytes: 4, to: 0, tag: 6)
        XCTAssertThrowsError(try comms[0].recv(&x, bytes: 4, from: 1, tag: 5)) { e in
            XCTAssertTrue("\(e)".contains("bad frame from rank 1") && "\(e)".contains("tag 6"), "\(e)")
        }
        // More than the ring holds, with no one reading: the send gives up naming the reader.
        comms[1].timeout = 1
        let big = [Float](repeating: 2, count: 10_000)
        XCTAssertThrowsError(try big.withUnsafeBytes { try comms[1].send($0.baseAddress!, bytes: $0.count, to: 0, tag: 7) }) { e in
            XCTAssertTrue("\(e)".contains("rank 1: waiting for rank 0: no progress"), "\(e)")
        }
    }

    func testAPeerThatDiesOnASharedLinkIsNamedAtOnce() throws {
        var comms = try connect(hosts: ["127.0.0.1", "127.0.0.1"], timeout: 30)
        XCTAssertEqual(comms[0].sharedMemoryPeers, [1])
        let survivor = comms[0]
        comms.removeLast()  // rank 1's communicator goes: its TCP connection closes, as at a process's death
        var x = [Float](repeating: 0, count: 100)
        let t0 = Date()
        XCTAssertThrowsError(try x.withUnsafeMutableBytes { try survivor.recv($0.baseAddress!, bytes: $0.count, from: 1, tag: 5) }) { e in
            XCTAssertTrue("\(e)".contains("rank 0: waiting for rank 1: connection to rank 1 lost"), "\(e)")
        }
        XCTAssertLessThan(Date().timeIntervalSince(t0), 2, "named within a wait slice, not at the 30 s timeout")
    }

    /// A peer that publishes its last message and ends at once (its connection closes) while the
    /// receiver sleeps on the ring is not lost: the receiver woke, saw the closed connection and
    /// named rank 1 lost with the message sitting in the ring (a fresh-clone run of
    /// `MultiHostTests`: ranks 1 and 3 ended their all-reduce bench with status 0, ranks 0 and 2
    /// "waiting for rank 1: connection to rank 1 lost"). Many rounds, as it is a race.
    func testAPeerThatSendsItsLastMessageAndEndsIsNotLost() throws {
        for round in 0..<40 {
            var comms = try connect(hosts: ["127.0.0.1", "127.0.0.1"], timeout: 30)
            XCTAssertEqual(comms[0].sharedMemoryPeers, [1])
            let receiver = comms[0]
            var sender: TCPCommunicator? = comms.removeLast()
            comms.removeAll()
            let done = DispatchSemaphore(value: 0)
            let outcome = Shared<String>("")
            Thread.detachNewThread {
                var x = [Float](repeating: 0, count: 1000)
                do {
                    try x.withUnsafeMutableBytes { try receiver.recv($0.baseAddress!, bytes: $0.count, from: 1, tag: 5) }
                    outcome.value = x.allSatisfy { $0 == 7 } ? "ok" : "wrong values"
                } catch { outcome.value = "\(error)" }
                done.signal()
            }
            usleep(UInt32(2_000 + round * 500))  // the receiver is asleep on the ring by now
            var y = [Float](repeating: 7, count: 1000)
            try y.withUnsafeMutableBytes { try sender!.send($0.baseAddress!, bytes: $0.count, to: 0, tag: 5) }
            sender = nil  // ends at once: its connection closes
            XCTAssertEqual(done.wait(timeout: .now() + 20), .success)
            XCTAssertEqual(outcome.value, "ok", "round \(round)")
            if outcome.value != "ok" { break }
        }
    }

    // Two levels (HierarchicalAllReduce): hosts of several ranks each reduce within the host,
    // then across hosts one segment per rank, then gather within the host.

    func testHostsOfSeveralRanksReduceInTwoLevelsSendingLessBetweenHosts() throws {
        let a = "127.0.0.1", b = "127.0.0.2"
        for (hosts, groups) in [([a, a, b, b], [[0, 1], [2, 3]]), ([a, a, a, b, b, b], [[0, 1, 2], [3, 4, 5]]), ([a, b, a, b], [[0, 2], [1, 3]])] {
            let comms = try connect(hosts: hosts)
            XCTAssertEqual(comms.map(\.hostGroups), Array(repeating: groups, count: hosts.count))
            XCTAssertEqual(comms[0].allReduceAlgorithm, "2 levels: 2 hosts x \(groups[0].count) ranks")
            checkCollectives(comms)
            // Arbitrary values: every rank ends with the same bits.
            let n = 100_003
            let results = Shared<[[Float]]>(Array(repeating: [], count: hosts.count))
            let lock = NSLock()
            XCTAssertEqual(onEveryRank(comms) { c in
                var rng = SplitMix64(seed: UInt64(c.rank + 1))
                var x = (0..<n).map { _ in Float(Double(rng.next() >> 11) / Double(1 << 53) * 2 - 1) }
                try x.withUnsafeMutableBufferPointer { try c.allReduce($0.baseAddress!, count: n, tensor: 11) }
                lock.lock(); results.value[c.rank] = x; lock.unlock()
            }, [])
            for r in 1..<hosts.count { XCTAssertTrue(results.value[r].elementsEqual(results.value[0]) { $0.bitPattern == $1.bitPattern }, "rank \(r) differs from rank 0") }
        }
        // Bytes between the hosts for one all-reduce of n floats, two levels against one ring.
        func interHostBytes(_ comms: [TCPCommunicator], _ hosts: [String]) throws -> Int {
            let before = comms.map(\.sentBytes)
            XCTAssertEqual(onEveryRank(comms) { c in
                var x = [Float](repeating: 1, count: 600_000)
                try x.withUnsafeMutableBufferPointer { try c.allReduce($0.baseAddress!, count: $0.count, tensor: 12) }
            }, [])
            return comms.indices.reduce(0) { total, r in
                total + comms[r].sentBytes.indices.filter { hosts[$0] != hosts[r] }.reduce(0) { $0 + comms[r].sentBytes[$1] - before[r][$1] }
            }
        }
        let hosts = [a, a, a, b, b, b]
        let twoLevels = try interHostBytes(try connect(hosts: hosts), hosts)
        let oneRing = try interHostBytes(try connect(hosts: hosts, hierarchical: [true, true, false, true, true, true]), hosts)
        // Per host and direction: 2 (H-1)/H = 1 buffer against 2 (p-1)/p = 5/3 (2.4 MB of fp32).
        XCTAssertEqual(Double(twoLevels), 2 * 2_400_000, accuracy: 64)
        XCTAssertEqual(Double(oneRing), 2 * 2_400_000 * 5 / 3, accuracy: 64)
    }

    func testOneRefusalOrUnevenHostsKeepEveryRankOnOneRing() throws {
        let a = "127.0.0.1", b = "127.0.0.2"
        let refused = try connect(hosts: [a, a, b, b], hierarchical: [true, true, true, false])
        XCTAssertEqual(refused.map(\.hostGroups), [nil, nil, nil, nil])
        XCTAssertEqual(refused.map(\.allReduceAlgorithm), Array(repeating: "ring", count: 4))
        checkCollectives(refused)
        let uneven = try connect(hosts: [a, a, a, b])
        XCTAssertEqual(uneven[0].hostGroups, [[0, 1, 2], [3]])
        XCTAssertEqual(uneven.map(\.allReduceAlgorithm), Array(repeating: "ring", count: 4))
        checkCollectives(uneven)
    }
}
