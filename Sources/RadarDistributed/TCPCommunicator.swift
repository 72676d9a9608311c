import Foundation
import RadarCore
#if canImport(Glibc)
import Glibc
#endif

/// The TCP transport: one connection per pair of ranks (raw POSIX sockets, TCP_NODELAY, 4 MiB
/// buffers). Every message carries a 32-byte header (magic, version, step (low 16 bits), job id,
/// tensor id (the tag), per-link sequence number, length) that the receiver checks, so a crossed or stale stream is an
/// error, not silent corruption. Transfers are non-blocking and polled against a deadline.
public final class TCPCommunicator: Communicator, @unchecked Sendable {
    public let rank: Int
    public let size: Int
    public var timeout: TimeInterval = 60
    public var step = 0
    public let jobID: UInt64
    private var fds: [Int32]
    private var sendSeq: [UInt32]
    private var recvSeq: [UInt32]
    static let magic: UInt32 = 0x5244_5254  // "RDRT"
    static let headerBytes = 32

    public struct Peer: Codable, Sendable {
        public var rank: Int
        public var host: String
        public var port: Int
        public init(rank: Int, host: String, port: Int) { self.rank = rank; self.host = host; self.port = port }
    }

    /// Connects the mesh: rank j connects to every lower rank's listener (`listenFD`, already
    /// listening) and accepts the higher ranks' connections.
    public init(rank: Int, size: Int, jobID: UInt64, listenFD: Int32, peers: [Peer], timeout: TimeInterval) throws {
        self.rank = rank
        self.size = size
        self.jobID = jobID
        self.timeout = timeout
        fds = [Int32](repeating: -1, count: size)
        sendSeq = [UInt32](repeating: 0, count: size)
        recvSeq = [UInt32](repeating: 0, count: size)
        let deadline = Date().addingTimeInterval(timeout)
        for p in peers where p.rank < rank {
            let fd = try Sockets.connect(host: p.host, port: p.port, deadline: deadline)
            let hello = [UInt64(TCPCommunicator.magic), jobID, UInt64(rank)]
            try hello.withUnsafeBytes { try Sockets.writeAll(fd, $0) }
            fds[p.rank] = fd
        }
        var pending = size - 1 - rank
        while pending > 0 {
            guard let fd = Sockets.accept(listenFD, deadline: deadline) else {
                let missing = (rank + 1..<size).filter { fds[$0] < 0 }.map(String.init).joined(separator: ",")
                throw CommunicationError(rank: rank, peer: nil, reason: "ranks \(missing) never connected within \(Int(timeout)) s")
            }
            let hello = try Sockets.readExactly(fd, 24, deadline: deadline)
            let words = hello.withUnsafeBytes { Array($0.bindMemory(to: UInt64.self)) }
            guard words[0] == UInt64(TCPCommunicator.magic), words[1] == jobID, Int(words[2]) > rank, Int(words[2]) < size, fds[Int(words[2])] < 0 else {
                close(fd)
                continue  // not one of ours: ignore it
            }
            fds[Int(words[2])] = fd
            pending -= 1
        }
        for fd in fds where fd >= 0 { Sockets.setNonBlocking(fd, true) }
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

    private func transfer(send s: (UnsafeRawPointer, Int, Int)?, recv r: (UnsafeMutableRawPointer, Int, Int)?, tag: Int) throws {
        let deadline = Date().addingTimeInterval(timeout)
        var sendHeader: [UInt8] = [], sentHeader = 0, sentBody = 0
        if let s {
            sendHeader = header(tag: tag, seq: sendSeq[s.2], length: s.1)
            sendSeq[s.2] &+= 1
        }
        var recvHeader = [UInt8](repeating: 0, count: TCPCommunicator.headerBytes), gotHeader = 0, gotBody = 0
        var expectedSeq: UInt32 = 0
        if let r { expectedSeq = recvSeq[r.2]; recvSeq[r.2] &+= 1 }
        var sendDone = s == nil, recvDone = r == nil
        while !sendDone || !recvDone {
            var polls: [pollfd] = []
            if let s, !sendDone { polls.append(pollfd(fd: fds[s.2], events: Int16(POLLOUT), revents: 0)) }
            if let r, !recvDone {
                if let i = polls.firstIndex(where: { $0.fd == fds[r.2] }) { polls[i].events |= Int16(POLLIN) } else {
                    polls.append(pollfd(fd: fds[r.2], events: Int16(POLLIN), revents: 0))
                }
            }
            let ms = Int32(max(0, min(500, deadline.timeIntervalSinceNow * 1000)))
            let n = poll(&polls, nfds_t(polls.count), ms)
            if JobAbort.requested { throw CommunicationError(rank: rank, peer: nil, reason: "stopping: \(JobAbort.reason)") }
            if n == 0 {
                if Date() > deadline {
                    let peer = !recvDone ? r!.2 : s!.2
                    throw CommunicationError(rank: rank, peer: peer, reason: "no progress for \(Int(timeout)) s (is rank \(peer) alive?)")
                }
                continue
            }
            for p in polls {
                if (p.revents & Int16(POLLERR | POLLHUP | POLLNVAL)) != 0 && (p.revents & Int16(POLLIN)) == 0 {
                    let peer = fds.firstIndex(of: p.fd) ?? -1
                    throw CommunicationError(rank: rank, peer: peer, reason: "connection to rank \(peer) lost")
                }
            }
            if let s, !sendDone, polls.contains(where: { $0.fd == fds[s.2] && ($0.revents & Int16(POLLOUT)) != 0 }) {
                let fd = fds[s.2]
                if sentHeader < sendHeader.count {
                    let k = sendHeader.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + sentHeader, sendHeader.count - sentHeader, Int32(MSG_NOSIGNAL)) }
                    if k < 0 && errno != EAGAIN { throw CommunicationError(rank: rank, peer: s.2, reason: "connection to rank \(s.2) lost") }
                    if k > 0 { sentHeader += k }
                }
                if sentHeader == sendHeader.count && sentBody < s.1 {
                    let k = Glibc.send(fd, s.0 + sentBody, s.1 - sentBody, Int32(MSG_NOSIGNAL))
                    if k < 0 && errno != EAGAIN { throw CommunicationError(rank: rank, peer: s.2, reason: "connection to rank \(s.2) lost") }
                    if k > 0 { sentBody += k }
                }
                sendDone = sentHeader == sendHeader.count && sentBody == s.1
            }
            if let r, !recvDone, polls.contains(where: { $0.fd == fds[r.2] && ($0.revents & Int16(POLLIN | POLLHUP)) != 0 }) {
                let fd = fds[r.2]
                if gotHeader < recvHeader.count {
                    let want = TCPCommunicator.headerBytes - gotHeader, at = gotHeader
                    let k = recvHeader.withUnsafeMutableBytes { Glibc.recv(fd, $0.baseAddress! + at, want, 0) }
                    if k == 0 || (k < 0 && errno != EAGAIN) { throw CommunicationError(rank: rank, peer: r.2, reason: "connection to rank \(r.2) lost") }
                    if k > 0 { gotHeader += k }
                    if gotHeader == recvHeader.count { try checkHeader(recvHeader, from: r.2, tag: tag, seq: expectedSeq, length: r.1) }
                } else if gotBody < r.1 {
                    let k = Glibc.recv(fd, r.0 + gotBody, r.1 - gotBody, 0)
                    if k == 0 || (k < 0 && errno != EAGAIN) { throw CommunicationError(rank: rank, peer: r.2, reason: "connection to rank \(r.2) lost") }
                    if k > 0 { gotBody += k }
                }
                recvDone = gotHeader == recvHeader.count && gotBody == r.1
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
