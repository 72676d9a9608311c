import Foundation
import RadarCore
#if canImport(Glibc)
import Glibc
#endif

/// The TCP transport: one connection per pair of ranks (raw POSIX sockets, TCP_NODELAY, 4 MiB
/// buffers), authenticated. Connecting, the two ranks prove the job token to each other (HMAC
/// over fresh nonces from both sides, so a recorded handshake cannot be replayed) and derive a
/// key for that connection; a peer that fails is refused and logged, never used. Every message
/// then carries a 32-byte header (magic, version, step (low 16 bits), job id, tensor id (the
/// tag), per-link sequence number, length), the body, and a 16-byte AES-GCM tag over both under
/// the connection key (nonce: sender rank and frame counter), so a forged, altered, replayed or
/// crossed frame is an error, never training data. The job id is an HMAC of the token: it reveals
/// nothing about it. Transfers are non-blocking and polled against a deadline.
public final class TCPCommunicator: Communicator, @unchecked Sendable {
    public let rank: Int
    public let size: Int
    public var timeout: TimeInterval = 60
    public var step = 0
    public let jobID: UInt64
    private var fds: [Int32]
    private var sendSeq: [UInt32]
    private var recvSeq: [UInt32]
    private var sendCount: [UInt64]
    private var recvCount: [UInt64]
    private var sendAuth: [FrameAuthenticator?]
    private var recvAuth: [FrameAuthenticator?]
    /// Same-host links by peer (`connectSharedMemory`): frames to and from that peer go through
    /// shared memory, without the AES-GCM tag (the segment is the two processes' alone).
    private var links: [SharedMemoryLink?]
    /// The ranks by host where every rank agreed to reduce in two levels (`agreeOnHostGroups`).
    public private(set) var hostGroups: [[Int]]?
    public private(set) var twoLevels: HierarchicalAllReduce?
    /// Bytes of message bodies sent to each peer so far (over TCP or shared memory).
    public private(set) var sentBytes: [Int]
    /// Connections refused because they could not prove the job token (or were not ours).
    public private(set) var refusedConnections = 0
    public var log: (String) -> Void = logLine
    static let magic: UInt32 = 0x5244_5254  // "RDRT"
    static let headerBytes = 32

    public struct Peer: Codable, Sendable {
        public var rank: Int
        public var host: String
        public var port: Int
        public init(rank: Int, host: String, port: Int) { self.rank = rank; self.host = host; self.port = port }
    }

    /// The job id on the wire: an HMAC of the token, so it reveals nothing about it.
    public static func jobID(token: Data) -> UInt64 {
        HMACSHA256.bytes(key: token, message: Data("radar data plane job id".utf8)).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
    }

    static let helloBytes = 56, nonceBytes = 32

    /// The handshake transcript both proofs and the key are computed over.
    static func transcript(_ what: String, _ nonceC: Data, _ nonceA: Data, low: Int, high: Int) -> Data {
        var d = Data("\(what):\(low):\(high):".utf8)
        d.append(nonceC)
        d.append(nonceA)
        return d
    }

    /// Connects the mesh: rank j connects to every lower rank's listener (`listenFD`, already
    /// listening) and accepts the higher ranks' connections; every connection is authenticated
    /// with the job token both ways.
    public init(rank: Int, size: Int, token: Data, listenFD: Int32, peers: [Peer], timeout: TimeInterval) throws {
        self.rank = rank
        self.size = size
        jobID = TCPCommunicator.jobID(token: token)
        self.timeout = timeout
        fds = [Int32](repeating: -1, count: size)
        sendSeq = [UInt32](repeating: 0, count: size)
        recvSeq = [UInt32](repeating: 0, count: size)
        sendCount = [UInt64](repeating: 0, count: size)
        recvCount = [UInt64](repeating: 0, count: size)
        sendAuth = [FrameAuthenticator?](repeating: nil, count: size)
        recvAuth = [FrameAuthenticator?](repeating: nil, count: size)
        links = [SharedMemoryLink?](repeating: nil, count: size)
        sentBytes = [Int](repeating: 0, count: size)
        let deadline = monotonicNow().addingTimeInterval(timeout)
        for p in peers where p.rank < rank {
            let fd = try Sockets.connect(host: p.host, port: p.port, deadline: deadline)
            do {
                let nonceC = Data(SecureRandom.bytes(TCPCommunicator.nonceBytes))
                var hello = Data()
                for w in [UInt64(TCPCommunicator.magic), jobID, UInt64(rank)] { withUnsafeBytes(of: w.littleEndian) { hello.append(contentsOf: $0) } }
                hello.append(nonceC)
                try hello.withUnsafeBytes { try Sockets.writeAll(fd, $0) }
                let reply = try Sockets.readExactly(fd, 64, deadline: deadline)
                let nonceA = reply.prefix(32), proofA = reply.suffix(32)
                let expected = HMACSHA256.bytes(key: token, message: TCPCommunicator.transcript("A", nonceC, Data(nonceA), low: p.rank, high: rank))
                guard HMACSHA256.equal(Array(proofA), expected) else {
                    throw CommunicationError(rank: rank, peer: p.rank, reason: "the listener at \(hostPortText(p.host, p.port)) could not prove the job token: not rank \(p.rank) of this job")
                }
                let proofC = HMACSHA256.bytes(key: token, message: TCPCommunicator.transcript("C", nonceC, Data(nonceA), low: p.rank, high: rank))
                try proofC.withUnsafeBytes { try Sockets.writeAll(fd, $0) }
                try install(fd, peer: p.rank, key: HMACSHA256.bytes(key: token, message: TCPCommunicator.transcript("K", nonceC, Data(nonceA), low: p.rank, high: rank)))
            } catch {
                close(fd)
                if let e = error as? CommunicationError { throw e }
                throw CommunicationError(rank: rank, peer: p.rank, reason: "handshake with rank \(p.rank) at \(hostPortText(p.host, p.port)) failed: \(error)")
            }
        }
        var pending = size - 1 - rank
        while pending > 0 {
            let missing = { [self] in (rank + 1..<size).filter { fds[$0] < 0 } }
            let accepted: Int32?
            do { accepted = try Sockets.accept(listenFD, deadline: deadline) } catch {
                throw CommunicationError(rank: rank, peer: nil, reason: "waiting for \(describeRanks(missing())) to connect: \(error)")
            }
            guard let fd = accepted else {
                throw CommunicationError(rank: rank, peer: nil, reason: "\(describeRanks(missing())) never connected within \(Int(timeout)) s")
            }
            let from = Sockets.peerName(fd)
            // A handshake is bounded by a few seconds, so an idle impostor cannot hold the listener.
            let hsDeadline = min(deadline, monotonicNow().addingTimeInterval(5))
            do {
                let hello = try Sockets.readExactly(fd, TCPCommunicator.helloBytes, deadline: hsDeadline)
                let words = hello.prefix(24).withUnsafeBytes { raw in (0..<3).map { UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: 8 * $0, as: UInt64.self)) } }
                let claimed = Int(truncatingIfNeeded: words[2])
                guard words[0] == UInt64(TCPCommunicator.magic), words[1] == jobID, claimed > rank, claimed < size, fds[claimed] < 0 else {
                    throw CommunicationError(rank: rank, peer: nil, reason: "not a rank of this job")
                }
                let nonceC = Data(hello.suffix(32)), nonceA = Data(SecureRandom.bytes(TCPCommunicator.nonceBytes))
                var reply = nonceA
                reply.append(contentsOf: HMACSHA256.bytes(key: token, message: TCPCommunicator.transcript("A", nonceC, nonceA, low: rank, high: claimed)))
                try reply.withUnsafeBytes { try Sockets.writeAll(fd, $0) }
                let proofC = try Sockets.readExactly(fd, 32, deadline: hsDeadline)
                let expected = HMACSHA256.bytes(key: token, message: TCPCommunicator.transcript("C", nonceC, nonceA, low: rank, high: claimed))
                guard HMACSHA256.equal(Array(proofC), expected) else {
                    throw CommunicationError(rank: rank, peer: nil, reason: "claimed rank \(claimed) but could not prove the job token")
                }
                try install(fd, peer: claimed, key: HMACSHA256.bytes(key: token, message: TCPCommunicator.transcript("K", nonceC, nonceA, low: rank, high: claimed)))
                pending -= 1
            } catch {
                close(fd)
                refusedConnections += 1
                let why = (error as? CommunicationError)?.reason ?? "\(error)"
                log("rank \(rank): refused a data connection from \(from): \(why)")
            }
        }
        for fd in fds where fd >= 0 { Sockets.setNonBlocking(fd, true) }
    }

    /// The peers this rank exchanges frames with through shared memory.
    public var sharedMemoryPeers: [Int] { (0..<size).filter { links[$0] != nil } }

    static let sharedMemoryTag = 0x53484D  // "SHM": the set-up frames' tensor id
    static let offerBytes = 8 + 128 + 32

    /// The ranks grouped by data address (`peers[].host`): hosts in order of their lowest rank,
    /// ranks in order within each.
    public static func groups(_ peers: [Peer]) -> [[Int]] {
        HierarchicalAllReduce.groups(hosts: peers.sorted(by: { $0.rank < $1.rank }).map(\.host))
    }

    /// Reduce in two levels (`HierarchicalAllReduce`) where the job spans hosts of several ranks
    /// each, if every rank asks to (`enabled`: `RADAR_HIERARCHICAL_ALLREDUCE=0` turns it off; the
    /// ranks agree by a MAX all-reduce of their refusals, so one refusal keeps everyone on the ring).
    public func agreeOnHostGroups(peers: [Peer], enabled: Bool) throws {
        guard size > 1 else { return }
        hostGroups = try HierarchicalAllReduce.agreedGroups(self, enabled: enabled, tensor: TCPCommunicator.sharedMemoryTag) {
            peers.sorted(by: { $0.rank < $1.rank }).map(\.host)
        }
        twoLevels = hostGroups.flatMap { HierarchicalAllReduce(communicator: self, groups: $0) }
        if rank == 0 && allReduceAlgorithm != "ring" { log("rank 0: all-reduce in \(allReduceAlgorithm) (RADAR_HIERARCHICAL_ALLREDUCE=0: one ring)") }
    }

    /// Same-host links with the ring neighbours (the ring all-reduce, broadcast and all-gather
    /// talk only to them) and with the neighbours in the ring of this host's ranks (the first
    /// level of `HierarchicalAllReduce`) whose data address is this rank's own (`peers[].host`:
    /// one machine; the simulated hosts of `cluster/netns.sh` have an address each and stay on
    /// TCP). Over the authenticated connection the lower rank of each pair offers a segment (name and nonce, or
    /// nothing where it cannot make one or `enabled` is false: `RADAR_SHM_DISABLE=1`), the
    /// higher maps it and answers; both then use it, or both keep TCP, and each says which in
    /// `log`. Offers all go out before any is awaited, so no order of ranks can deadlock.
    public func connectSharedMemory(peers: [Peer], enabled: Bool, capacity: Int? = nil) throws {
        guard size > 1 else { return }
        let capacity = capacity ?? SharedMemoryLink.defaultCapacity
        let hosts = Dictionary(peers.map { ($0.rank, $0.host) }, uniquingKeysWith: { a, _ in a })
        guard let mine = hosts[rank] else { return }
        var candidates = Set([(rank + 1) % size, (rank - 1 + size) % size])
        if let host = TCPCommunicator.groups(peers).first(where: { $0.contains(rank) }), let i = host.firstIndex(of: rank) {
            candidates.formUnion([host[(i + 1) % host.count], host[(i - 1 + host.count) % host.count]])
        }
        let neighbours = candidates.filter { $0 != rank && hosts[$0] == mine }.sorted()
        let higher = neighbours.filter { $0 > rank }, lower = neighbours.filter { $0 < rank }
        var made: [Int: SharedMemoryLink] = [:]
        // 1. Offers to the higher neighbours.
        for peer in higher {
            var offer = [UInt8](repeating: 0, count: TCPCommunicator.offerBytes)
            if enabled {
                do {
                    let (link, name, nonce) = try SharedMemoryLink.create(jobID: jobID, low: rank, high: peer, capacity: capacity)
                    made[peer] = link
                    offer[0] = 1
                    for (i, b) in name.utf8.prefix(127).enumerated() { offer[8 + i] = b }
                    for (i, b) in nonce.enumerated() { offer[136 + i] = b }
                } catch {
                    log("rank \(rank): no shared memory with rank \(peer) on this host (\(error)): TCP")
                }
            }
            try offer.withUnsafeBytes { try send($0.baseAddress!, bytes: $0.count, to: peer, tag: TCPCommunicator.sharedMemoryTag) }
        }
        // 2. The lower neighbours' offers, mapped and answered.
        for peer in lower {
            var offer = [UInt8](repeating: 0, count: TCPCommunicator.offerBytes)
            try offer.withUnsafeMutableBytes { try recv($0.baseAddress!, bytes: $0.count, from: peer, tag: TCPCommunicator.sharedMemoryTag) }
            var answer = [UInt8](repeating: 0, count: 8)
            var link: SharedMemoryLink?
            if offer[0] == 1 && enabled {
                let name = String(decoding: offer[8..<136].prefix { $0 != 0 }, as: UTF8.self)
                do {
                    link = try SharedMemoryLink.open(name: name, nonce: Array(offer[136..<168]), capacity: capacity)
                    answer[0] = 1
                } catch {
                    log("rank \(rank): no shared memory with rank \(peer) on this host (\(error)): TCP")
                }
            }
            try answer.withUnsafeBytes { try send($0.baseAddress!, bytes: 8, to: peer, tag: TCPCommunicator.sharedMemoryTag) }
            links[peer] = link  // (after the answer, which goes over TCP)
        }
        // 3. The higher neighbours' answers.
        for peer in higher {
            var answer = [UInt8](repeating: 0, count: 8)
            try answer.withUnsafeMutableBytes { try recv($0.baseAddress!, bytes: 8, from: peer, tag: TCPCommunicator.sharedMemoryTag) }
            guard let link = made[peer] else { continue }
            link.unlink()
            if answer[0] == 1 { links[peer] = link } else { log("rank \(rank): rank \(peer) on this host did not map the shared memory offered (it says why, or has RADAR_SHM_DISABLE=1): TCP") }
        }
        let shared = sharedMemoryPeers
        if !shared.isEmpty {
            log("rank \(rank): shared memory with \(describeRanks(shared)) (same host; \(capacity >> 10) KiB a direction)")
        }
    }

    private func install(_ fd: Int32, peer: Int, key: [UInt8]) throws {
        fds[peer] = fd
        sendAuth[peer] = FrameAuthenticator(key: key)
        recvAuth[peer] = FrameAuthenticator(key: key)
    }

    deinit { for fd in fds where fd >= 0 { close(fd) } }

    public func abort(_ code: Int32) -> Never {
        for fd in fds where fd >= 0 { shutdown(fd, Int32(SHUT_RDWR)) }
        exitNow(code)
    }

    public func send(_ buffer: UnsafeRawPointer, bytes: Int, to: Int, tag: Int) throws {
        try transfer(send: (buffer, bytes, to), recv: nil, tag: tag)
    }

    public func recv(_ buffer: UnsafeMutableRawPointer, bytes: Int, from: Int, tag: Int) throws {
        try transfer(send: nil, recv: (buffer, bytes, from), tag: tag)
    }

    public func sendRecv(_ send: UnsafeRawPointer, sendBytes: Int, to: Int,
                         _ recv: UnsafeMutableRawPointer, recvBytes: Int, from: Int, tag: Int) throws {
        try transfer(send: (send, sendBytes, to), recv: (recv, recvBytes, from), tag: tag)
    }

    private func header(tag: Int, seq: UInt32, length: Int) -> [UInt8] {
        var h = [UInt8](repeating: 0, count: TCPCommunicator.headerBytes)
        h.withUnsafeMutableBytes { raw in
            raw.storeBytes(of: TCPCommunicator.magic.littleEndian, toByteOffset: 0, as: UInt32.self)
            raw.storeBytes(of: UInt16(1).littleEndian, toByteOffset: 4, as: UInt16.self)
            raw.storeBytes(of: UInt16(truncatingIfNeeded: step).littleEndian, toByteOffset: 6, as: UInt16.self)
            raw.storeBytes(of: jobID.littleEndian, toByteOffset: 8, as: UInt64.self)
            raw.storeBytes(of: Int32(tag).littleEndian, toByteOffset: 16, as: Int32.self)
            raw.storeBytes(of: seq.littleEndian, toByteOffset: 20, as: UInt32.self)
            raw.storeBytes(of: UInt64(length).littleEndian, toByteOffset: 24, as: UInt64.self)
        }
        return h
    }

    /// One send and/or one receive, progressed together until both are done. Each side goes
    /// through the peer's shared-memory link where it has one (header and body, copied through
    /// the ring), else over TCP (header, body, AES-GCM tag), polled.
    private func transfer(send s: (UnsafeRawPointer, Int, Int)?, recv r: (UnsafeMutableRawPointer, Int, Int)?, tag: Int) throws {
        let deadline = monotonicNow().addingTimeInterval(timeout)
        let tagBytes = FrameAuthenticator.tagBytes, headerBytes = TCPCommunicator.headerBytes
        let sendLink = s.flatMap { links[$0.2] }, recvLink = r.flatMap { links[$0.2] }
        var sendHeader: [UInt8] = [], sentHeader = 0, sentBody = 0, sentTag = 0
        var sendTag = [UInt8](repeating: 0, count: tagBytes)
        if let s {
            sentBytes[s.2] += s.1
            sendHeader = header(tag: tag, seq: sendSeq[s.2], length: s.1)
            sendSeq[s.2] &+= 1
            if sendLink == nil {
                let counter = sendCount[s.2]
                sendCount[s.2] &+= 1
                sendHeader.withUnsafeBytes { h in
                    sendTag.withUnsafeMutableBytes { t in
                        sendAuth[s.2]!.tag(sender: UInt32(rank), counter: counter, header: h, body: UnsafeRawBufferPointer(start: s.0, count: s.1), into: t.baseAddress!)
                    }
                }
            } else {
                sentTag = tagBytes  // no tag on a shared-memory link
            }
        }
        var recvHeader = [UInt8](repeating: 0, count: headerBytes), gotHeader = 0, gotBody = 0, gotTag = 0
        var recvTag = [UInt8](repeating: 0, count: tagBytes)
        var expectedSeq: UInt32 = 0, recvCounter: UInt64 = 0
        if let r {
            expectedSeq = recvSeq[r.2]
            recvSeq[r.2] &+= 1
            if recvLink == nil {
                recvCounter = recvCount[r.2]
                recvCount[r.2] &+= 1
            } else {
                gotTag = tagBytes
            }
        }
        var sendDone = s == nil, recvDone = r == nil, idle = 0
        while !sendDone || !recvDone {
            var moved = false
            // Shared-memory sides: copy what the rings take and hold.
            if let s, !sendDone, let link = sendLink {
                if sentHeader < headerBytes {
                    let k = sendHeader.withUnsafeBytes { link.push($0.baseAddress! + sentHeader, headerBytes - sentHeader) }
                    sentHeader += k
                    moved = moved || k > 0
                }
                if sentHeader == headerBytes && sentBody < s.1 {
                    let k = link.push(s.0 + sentBody, s.1 - sentBody)
                    sentBody += k
                    moved = moved || k > 0
                }
                sendDone = sentHeader == headerBytes && sentBody == s.1
            }
            if let r, !recvDone, let link = recvLink {
                if gotHeader < headerBytes {
                    let k = recvHeader.withUnsafeMutableBytes { link.pull($0.baseAddress! + gotHeader, headerBytes - gotHeader) }
                    gotHeader += k
                    moved = moved || k > 0
                    if gotHeader == headerBytes { try checkHeader(recvHeader, from: r.2, tag: tag, seq: expectedSeq, length: r.1) }
                }
                if gotHeader == headerBytes && gotBody < r.1 {
                    let k = link.pull(r.0 + gotBody, r.1 - gotBody)
                    gotBody += k
                    moved = moved || k > 0
                }
                recvDone = gotHeader == headerBytes && gotBody == r.1
            }
            if sendDone && recvDone { break }
            let tcpSend = !sendDone && sendLink == nil, tcpRecv = !recvDone && recvLink == nil
            let sharedPending = (!sendDone && sendLink != nil) || (!recvDone && recvLink != nil)
            if tcpSend || tcpRecv {
                var polls: [pollfd] = []
                if let s, tcpSend { polls.append(pollfd(fd: fds[s.2], events: Int16(POLLOUT), revents: 0)) }
                if let r, tcpRecv {
                    if let i = polls.firstIndex(where: { $0.fd == fds[r.2] }) { polls[i].events |= Int16(POLLIN) } else {
                        polls.append(pollfd(fd: fds[r.2], events: Int16(POLLIN), revents: 0))
                    }
                }
                // Beside a shared-memory side, look at the rings again within a millisecond.
                let ms = moved ? 0 : sharedPending ? 1 : Int32(max(0, min(500, deadline.monotonicSecondsLeft * 1000)))
                let n = poll(&polls, nfds_t(polls.count), ms)
                if n > 0 {
                    moved = true
                    try progressTCP(polls, send: tcpSend ? s : nil, recv: tcpRecv ? r : nil, sendHeader: sendHeader, sentHeader: &sentHeader,
                                    sentBody: &sentBody, sendTag: sendTag, sentTag: &sentTag, recvHeader: &recvHeader, gotHeader: &gotHeader,
                                    gotBody: &gotBody, recvTag: &recvTag, gotTag: &gotTag, tag: tag, expectedSeq: expectedSeq, recvCounter: recvCounter)
                    if let s, tcpSend { sendDone = sentHeader == sendHeader.count && sentBody == s.1 && sentTag == tagBytes }
                    if let r, tcpRecv { recvDone = gotHeader == headerBytes && gotBody == r.1 && gotTag == tagBytes }
                }
            } else if !moved {
                // Only rings left, neither moved: sleep on the one awaited. When both are, each
                // peer wakes only its own side's word, so the sleep on the receive side is short,
                // doubling from 100 us to 1.6 ms while nothing moves (a peer still busy elsewhere).
                let both = !sendDone && !recvDone
                let us = both ? 100 << min(idle, 4) : 20_000
                if !recvDone, let recvLink { recvLink.waitForData(microseconds: us) } else if let sendLink { sendLink.waitForRoom(microseconds: us) }
            }
            idle = moved ? 0 : idle + 1
            if !moved {
                try CommunicationError.checkStop(rank: rank)
                // A peer that published its last bytes and then ended (its connection closed while
                // this side slept) is not lost: those bytes are pulled first, on the next pass.
                if sharedPending && !(!recvDone && recvLink?.hasData == true) {
                    try checkAlive([sendDone || sendLink == nil ? nil : s?.2, recvDone || recvLink == nil ? nil : r?.2])
                }
                if monotonicNow() > deadline {
                    let peer = !recvDone ? r!.2 : s!.2
                    throw CommunicationError(rank: rank, peer: peer, reason: "no progress for \(Int(timeout)) s (is rank \(peer) alive?)")
                }
            }
        }
    }

    /// A shared-memory peer whose TCP connection was closed (the process died) is lost.
    private func checkAlive(_ peers: [Int?]) throws {
        for peer in peers.compactMap({ $0 }) {
            var p = pollfd(fd: fds[peer], events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, 0) > 0 else { continue }
            var byte: UInt8 = 0
            let hungUp = (p.revents & Int16(POLLERR | POLLHUP | POLLNVAL)) != 0 || Glibc.recv(fds[peer], &byte, 1, Int32(MSG_PEEK)) == 0
            if hungUp { throw CommunicationError(rank: rank, peer: peer, reason: "connection to rank \(peer) lost") }
        }
    }

    /// The TCP sides' share of `transfer` after a poll: hang-ups, then what the sockets take and hold.
    private func progressTCP(_ polls: [pollfd], send s: (UnsafeRawPointer, Int, Int)?, recv r: (UnsafeMutableRawPointer, Int, Int)?,
                             sendHeader: [UInt8], sentHeader: inout Int, sentBody: inout Int, sendTag: [UInt8], sentTag: inout Int,
                             recvHeader: inout [UInt8], gotHeader: inout Int, gotBody: inout Int, recvTag: inout [UInt8], gotTag: inout Int,
                             tag: Int, expectedSeq: UInt32, recvCounter: UInt64) throws {
        let tagBytes = FrameAuthenticator.tagBytes
        for p in polls {
            if (p.revents & Int16(POLLERR | POLLHUP | POLLNVAL)) != 0 && (p.revents & Int16(POLLIN)) == 0 {
                let peer = fds.firstIndex(of: p.fd) ?? -1
                throw CommunicationError(rank: rank, peer: peer, reason: "connection to rank \(peer) lost")
            }
        }
        if let s, polls.contains(where: { $0.fd == fds[s.2] && ($0.revents & Int16(POLLOUT)) != 0 }) {
            let fd = fds[s.2]
            func push(_ base: UnsafeRawPointer, _ count: Int, _ done: inout Int) throws {
                guard done < count else { return }
                let k = Glibc.send(fd, base + done, count - done, Int32(MSG_NOSIGNAL))
                if k < 0 && errno != EAGAIN { throw CommunicationError(rank: rank, peer: s.2, reason: "connection to rank \(s.2) lost") }
                if k > 0 { done += k }
            }
            try sendHeader.withUnsafeBytes { try push($0.baseAddress!, $0.count, &sentHeader) }
            if sentHeader == sendHeader.count { try push(s.0, s.1, &sentBody) }
            if sentHeader == sendHeader.count && sentBody == s.1 { try sendTag.withUnsafeBytes { try push($0.baseAddress!, tagBytes, &sentTag) } }
        }
        if let r, polls.contains(where: { $0.fd == fds[r.2] && ($0.revents & Int16(POLLIN | POLLHUP)) != 0 }) {
            let fd = fds[r.2]
            func pull(_ base: UnsafeMutableRawPointer, _ count: Int, _ done: inout Int) throws {
                let k = Glibc.recv(fd, base + done, count - done, 0)
                if k == 0 || (k < 0 && errno != EAGAIN) { throw CommunicationError(rank: rank, peer: r.2, reason: "connection to rank \(r.2) lost") }
                if k > 0 { done += k }
            }
            if gotHeader < recvHeader.count {
                try recvHeader.withUnsafeMutableBytes { try pull($0.baseAddress!, $0.count, &gotHeader) }
                if gotHeader == recvHeader.count { try checkHeader(recvHeader, from: r.2, tag: tag, seq: expectedSeq, length: r.1) }
            } else if gotBody < r.1 {
                try pull(r.0, r.1, &gotBody)
            } else if gotTag < tagBytes {
                try recvTag.withUnsafeMutableBytes { try pull($0.baseAddress!, tagBytes, &gotTag) }
                if gotTag == tagBytes {
                    let ok = recvHeader.withUnsafeBytes { h in
                        recvTag.withUnsafeBytes { t in
                            recvAuth[r.2]!.verify(sender: UInt32(r.2), counter: recvCounter, header: h,
                                                  body: UnsafeRawBufferPointer(start: r.0, count: r.1), expected: t.baseAddress!)
                        }
                    }
                    guard ok else {
                        throw CommunicationError(rank: rank, peer: r.2, reason: "a frame from rank \(r.2) failed authentication (forged or altered): refused")
                    }
                }
            }
        }
    }

    private func checkHeader(_ h: [UInt8], from: Int, tag: Int, seq: UInt32, length: Int) throws {
        let st = h.withUnsafeBytes { Int(UInt16(littleEndian: $0.loadUnaligned(fromByteOffset: 6, as: UInt16.self))) }
        guard st == step & 0xffff else {
            throw CommunicationError(rank: rank, peer: from, reason: "frame from rank \(from) is for step \(st), this rank is at step \(step & 0xffff)")
        }
        let (magic, job, t, sq, len) = h.withUnsafeBytes { raw in
            (UInt32(littleEndian: raw.load(fromByteOffset: 0, as: UInt32.self)), UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: 8, as: UInt64.self)),
             Int32(littleEndian: raw.load(fromByteOffset: 16, as: Int32.self)), UInt32(littleEndian: raw.load(fromByteOffset: 20, as: UInt32.self)),
             UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: 24, as: UInt64.self)))
        }
        guard magic == TCPCommunicator.magic, job == jobID, Int(t) == tag, sq == seq, Int(len) == length else {
            throw CommunicationError(rank: rank, peer: from, reason: "bad frame from rank \(from): job \(job) tag \(t) seq \(sq) length \(len), expected job \(jobID) tag \(tag) seq \(seq) length \(length)")
        }
    }
}
