import Foundation
import RadarCore

/// A failure that crosses process boundaries: names the rank that failed and the peer involved.
public struct CommunicationError: Error, CustomStringConvertible {
    public let rank: Int
    public let peer: Int?
    public let reason: String
    public init(rank: Int, peer: Int?, reason: String) { self.rank = rank; self.peer = peer; self.reason = reason }
    public var description: String { "rank \(rank): " + (peer.map { "waiting for rank \($0): " } ?? "") + reason }
}

extension CommunicationError {
    /// Thrown by any wait once the job was told to stop (`JobAbort`): waits end within one poll.
    public static func checkStop(rank: Int) throws {
        if JobAbort.requested { throw CommunicationError(rank: rank, peer: nil, reason: "stopping: \(JobAbort.reason)") }
    }
}

public enum ReduceOp: Sendable { case sum, max }

/// Point-to-point and collective operations between the ranks of a job. Two transports fill it
/// (MPI and raw TCP); the ring all-reduce and gradient sync above it are transport-agnostic.
/// Every blocking call gives up after `timeout` seconds with an error naming the awaited peer.
public protocol Communicator: AnyObject {
    var rank: Int { get }
    var size: Int { get }
    var timeout: TimeInterval { get set }
    /// The optimizer step messages belong to (the TCP transport puts it in every frame header
    /// and checks it on receipt).
    var step: Int { get set }

    /// Sends `sendBytes` to `to` while receiving `recvBytes` from `from` (both may be the same
    /// peer); returns when both are done. `tag` separates concurrent streams.
    func sendRecv(_ send: UnsafeRawPointer, sendBytes: Int, to: Int,
                  _ recv: UnsafeMutableRawPointer, recvBytes: Int, from: Int, tag: Int) throws
    func send(_ buffer: UnsafeRawPointer, bytes: Int, to: Int, tag: Int) throws
    func recv(_ buffer: UnsafeMutableRawPointer, bytes: Int, from: Int, tag: Int) throws
    /// Stops the whole job (every rank exits non-zero).
    func abort(_ code: Int32) -> Never
    /// The two-level all-reduce every rank agreed to, made once (`TCPCommunicator.agreeOnHostGroups`,
    /// `MPIRuntime.agreeOnHostGroups`); nil: one ring.
    var twoLevels: HierarchicalAllReduce? { get }
}

extension Communicator {
    public var twoLevels: HierarchicalAllReduce? { nil }

    /// Ring all-reduce of a Float buffer in place (see `RingAllReduce`).
    /// `tensor` identifies what is reduced (a gradient bucket, a flag); it travels as the tag.
    /// Across hosts of several ranks each, in two levels (`twoLevels`).
    public func allReduce(_ buffer: UnsafeMutablePointer<Float>, count: Int, op: ReduceOp = .sum, tensor: Int = 1, wire: WireFormat = .fp32) throws {
        if let h = twoLevels {
            try h.run(buffer, count: count, op: op, tag: tensor, wire: wire)
        } else {
            try RingAllReduce(communicator: self, wire: wire).run(buffer, count: count, op: op, tag: tensor)
        }
    }

    /// What `allReduce` runs here, for logs and benchmarks: "ring" or "2 levels: H hosts x L ranks".
    public var allReduceAlgorithm: String {
        twoLevels.map { "2 levels: \($0.cross.size) hosts x \($0.local.size) ranks" } ?? "ring"
    }

    /// Rank `root`'s bytes to everyone, along the ring.
    public func broadcast(_ buffer: UnsafeMutableRawPointer, bytes: Int, root: Int = 0, tag: Int = 2) throws {
        guard size > 1 else { return }
        let pos = (rank - root + size) % size
        if pos != 0 { try recv(buffer, bytes: bytes, from: (rank - 1 + size) % size, tag: tag) }
        if pos != size - 1 { try send(UnsafeRawPointer(buffer), bytes: bytes, to: (rank + 1) % size, tag: tag) }
    }

    public func barrier() throws {
        var x: Float = 0
        try allReduce(&x, count: 1)
    }

    /// Every rank's `bytes` bytes, concatenated in rank order, on every rank.
    public func allGather(_ mine: Data) throws -> [Data] {
        let n = mine.count
        var all = Data(count: n * size)
        all.replaceSubrange((rank * n)..<((rank + 1) * n), with: mine)
        // Ring: at step s pass on the block received at step s-1.
        for s in 0..<(size - 1) {
            let sendBlock = (rank - s + size) % size, recvBlock = (rank - s - 1 + size) % size
            try all.withUnsafeMutableBytes { raw in
                try sendRecv(raw.baseAddress! + sendBlock * n, sendBytes: n, to: (rank + 1) % size,
                             raw.baseAddress! + recvBlock * n, recvBytes: n, from: (rank - 1 + size) % size, tag: 3)
            }
        }
        return (0..<size).map { all.subdata(in: ($0 * n)..<(($0 + 1) * n)) }
    }
}

/// What a gradient travels as between ranks. `bf16` halves the bytes: every message carries
/// bfloat16 (round to nearest even, as PyTorch's `.to(torch.bfloat16)`), every sum is formed in
/// fp32 on the receiving rank, and the finished segments are rounded to bf16 once before they go
/// round, so every rank still ends with the same bits.
public enum WireFormat: String, Sendable, CaseIterable {
    case fp32, bf16
    public var bytesPerValue: Int { self == .fp32 ? 4 : 2 }
}

/// Reduce-scatter then all-gather around the ring, in chunks, pipelined: the buffer is cut into
/// `size` segments (any length: segment boundaries are `count * i / size`), every segment travels
/// in pieces of at most `chunkFloats`, and while piece k+1 is on the wire a helper thread adds
/// piece k into the buffer (two scratch pieces alternate). Each segment's sum is formed in one
/// fixed order along the ring and then copied, so every rank ends with bit-identical values.
/// With `wire = .bf16` the messages are bfloat16 (see `WireFormat`): the result is the fp32 ring's
/// within bf16 rounding of each partial sum, identical on every rank.
public struct RingAllReduce {
    public let communicator: Communicator
    public var chunkFloats = 1 << 20
    public var wire: WireFormat = .fp32

    public init(communicator: Communicator, wire: WireFormat = .fp32) { self.communicator = communicator; self.wire = wire }

    /// The ring's two halves: after `.reduceScatter` rank r holds the full reduction of segment
    /// (r + 1) % size (`segment`); `.allGather` rounds that segment for a bf16 wire and passes
    /// the finished segments round.
    public enum Phases: Sendable { case both, reduceScatter, allGather }

    /// Segment `seg` of `count` values cut into `parts`.
    public static func segment(_ seg: Int, count: Int, parts p: Int) -> Range<Int> { (count * seg / p)..<(count * (seg + 1) / p) }

    public func run(_ buffer: UnsafeMutablePointer<Float>, count: Int, op: ReduceOp, tag: Int, phases: Phases = .both) throws {
        let c = communicator
        let p = c.size
        guard p > 1, count > 0 else { return }
        let next = (c.rank + 1) % p, prev = (c.rank - 1 + p) % p
        func bounds(_ seg: Int) -> Range<Int> { RingAllReduce.segment(seg, count: count, parts: p) }
        let maxSeg = (0..<p).map { bounds($0).count }.max()!
        let piece = max(min(maxSeg, chunkFloats), 1)
        let half = wire == .bf16
        let w = wire.bytesPerValue
        // Two receive slots (fp32 or bf16), and for bf16 one packed send piece.
        let scratch = UnsafeMutableRawPointer.allocate(byteCount: 2 * piece * w + (half ? piece * 2 : 0), alignment: 64)
        defer { scratch.deallocate() }
        let packed = (scratch + 2 * piece * w).assumingMemoryBound(to: UInt16.self)
        // The helper thread only pays off when a segment travels in several pieces, and only
        // the reduce-scatter adds.
        let reducer: PieceReducer? = maxSeg > piece && phases != .allGather ? PieceReducer.started() : nil
        defer { reducer?.finish() }
        /// The bytes to send for `n` values at `src`: the values themselves, or packed to bf16.
        func outgoing(_ src: UnsafeMutablePointer<Float>, _ n: Int) -> UnsafeRawPointer {
            guard half else { return UnsafeRawPointer(src) }
            CPUBackend.packBFloat16(src, packed, count: n)
            return UnsafeRawPointer(packed)
        }
        // Reduce-scatter: after p-1 steps rank r holds the full reduction of segment (r+1) % p.
        for s in 0..<(phases == .allGather ? 0 : p - 1) {
            let sendSeg = bounds((c.rank - s + p) % p), recvSeg = bounds((c.rank - s - 1 + p) % p)
            // Every rank makes the same number of exchanges per step (set by the largest segment),
            // so each message meets a receive of its own size.
            var off = 0, k = 0
            while off < maxSeg {
                let sn = max(0, min(piece, sendSeg.count - off)), rn = max(0, min(piece, recvSeg.count - off))
                let slot = scratch + (k % 2) * piece * w
                reducer?.waitForSlot(k % 2)
                try c.sendRecv(outgoing(buffer + sendSeg.lowerBound + off, sn), sendBytes: sn * w, to: next, slot, recvBytes: rn * w, from: prev, tag: tag)
                if let reducer {
                    reducer.add(slot: k % 2, from: slot, bf16: half, into: buffer + recvSeg.lowerBound + off, count: rn, op: op)
                } else {
                    PieceReducer.add(slot, bf16: half, into: buffer + recvSeg.lowerBound + off, count: rn, op: op)
                }
                off += piece
                k += 1
            }
            reducer?.drain()  // the next step sends what this step reduced
        }
        guard phases != .reduceScatter else { return }
        // This rank's finished segment, rounded once, is what every rank will hold.
        if half {
            let own = bounds((c.rank + 1) % p)
            CPUBackend.roundBFloat16(buffer + own.lowerBound, count: own.count)
        }
        // All-gather: pass the finished segments around.
        for s in 0..<(p - 1) {
            let sendSeg = bounds((c.rank + 1 - s + p) % p), recvSeg = bounds((c.rank - s + p) % p)
            var off = 0
            while off < maxSeg {
                let sn = max(0, min(piece, sendSeg.count - off)), rn = max(0, min(piece, recvSeg.count - off))
                let dst = buffer + recvSeg.lowerBound + off
                if half {
                    try c.sendRecv(outgoing(buffer + sendSeg.lowerBound + off, sn), sendBytes: sn * 2, to: next,
                                   scratch, recvBytes: rn * 2, from: prev, tag: tag)
                    BFloat16.unpack(scratch.assumingMemoryBound(to: UInt16.self), dst, count: rn)
                } else {
                    try c.sendRecv(buffer + sendSeg.lowerBound + off, sendBytes: sn * 4, to: next,
                                   dst, recvBytes: rn * 4, from: prev, tag: tag)
                }
                off += piece
            }
        }
    }
}

/// A helper thread that adds received pieces into the buffer while the next piece is in flight.
final class PieceReducer: @unchecked Sendable {
    private let cond = NSCondition()
    private var pending: [(slot: Int, src: UnsafeMutableRawPointer, bf16: Bool, dst: UnsafeMutablePointer<Float>, n: Int, op: ReduceOp)] = []
    private var busy = [false, false]
    private var stopped = false

    /// The thread holds the reducer until `finish` lets its loop end: with an unowned reference
    /// a reducer finished before its thread first ran (a ring that made one and had nothing to
    /// add) was freed under it, and the thread's first read crashed the process.
    private init() {}

    /// A reducer with its thread running, or nil where the system refused a thread (the ring
    /// then adds each piece itself: slower, the same sums).
    static func started() -> PieceReducer? {
        let r = PieceReducer()
        do { try startThread("the ring's piece reducer") { r.loop() } } catch {
            printNotice("\(error): the ring adds received pieces itself")
            return nil
        }
        return r
    }

    func add(slot: Int, from src: UnsafeMutableRawPointer, bf16: Bool, into dst: UnsafeMutablePointer<Float>, count n: Int, op: ReduceOp) {
        cond.lock()
        busy[slot] = true
        pending.append((slot, src, bf16, dst, n, op))
        cond.broadcast()
        cond.unlock()
    }

    /// Blocks until the piece last queued on `slot` has been added (its scratch is free again).
    func waitForSlot(_ slot: Int) {
        cond.lock()
        while busy[slot] { cond.wait() }
        cond.unlock()
    }

    func drain() {
        cond.lock()
        while busy[0] || busy[1] { cond.wait() }
        cond.unlock()
    }

    func finish() {
        drain()
        cond.lock()
        stopped = true
        cond.broadcast()
        cond.unlock()
    }

    /// `dst[i] (op)= src[i]`, `src` holding fp32 values or bf16 ones (widened exactly).
    static func add(_ raw: UnsafeMutableRawPointer, bf16: Bool, into dst: UnsafeMutablePointer<Float>, count n: Int, op: ReduceOp) {
        if bf16 {
            let src = raw.assumingMemoryBound(to: UInt16.self)
            switch op {
            case .sum: for i in 0..<n { dst[i] += BFloat16.float(src[i]) }
            case .max: for i in 0..<n { dst[i] = Swift.max(dst[i], BFloat16.float(src[i])) }
            }
            return
        }
        let src = raw.assumingMemoryBound(to: Float.self)
        switch op {
        case .sum: for i in 0..<n { dst[i] += src[i] }
        case .max: for i in 0..<n { dst[i] = Swift.max(dst[i], src[i]) }
        }
    }

    private func loop() {
        while true {
            cond.lock()
            while pending.isEmpty && !stopped { cond.wait() }
            if pending.isEmpty && stopped { cond.unlock(); return }
            let job = pending.removeFirst()
            cond.unlock()
            PieceReducer.add(job.src, bf16: job.bf16, into: job.dst, count: job.n, op: job.op)
            cond.lock()
            busy[job.slot] = false
            cond.broadcast()
            cond.unlock()
        }
    }
}

/// The ranks `members` of `parent` (in that order) as a communicator of their own: rank i is
/// members[i]. Messages go through the parent's links (its per-link sequence numbers keep them
/// in order), so the groups of a `HierarchicalAllReduce` need no connections of their own. The
/// parent holds it (`twoLevels`), so the reference back is unowned.
final class SubCommunicator: Communicator {
    unowned let parent: Communicator
    let members: [Int]
    let rank: Int
    var size: Int { members.count }
    var timeout: TimeInterval { get { parent.timeout } set { parent.timeout = newValue } }
    var step: Int { get { parent.step } set { parent.step = newValue } }

    init(parent: Communicator, members: [Int]) {
        self.parent = parent
        self.members = members
        rank = members.firstIndex(of: parent.rank)!
    }

    func sendRecv(_ send: UnsafeRawPointer, sendBytes: Int, to: Int, _ recv: UnsafeMutableRawPointer, recvBytes: Int, from: Int, tag: Int) throws {
        try parent.sendRecv(send, sendBytes: sendBytes, to: members[to], recv, recvBytes: recvBytes, from: members[from], tag: tag)
    }
    func send(_ buffer: UnsafeRawPointer, bytes: Int, to: Int, tag: Int) throws { try parent.send(buffer, bytes: bytes, to: members[to], tag: tag) }
    func recv(_ buffer: UnsafeMutableRawPointer, bytes: Int, from: Int, tag: Int) throws { try parent.recv(buffer, bytes: bytes, from: members[from], tag: tag) }
    func abort(_ code: Int32) -> Never { parent.abort(code) }
}

/// All-reduce in two levels across H hosts of L ranks each (`Communicator.twoLevels`): a ring
/// reduce-scatter among each host's ranks (through shared memory: the same-host links over TCP,
/// MPI's own under mpirun), then
/// for each segment an all-reduce among the H ranks that hold it, one per host (L rings of H,
/// over the network, each on 1/L of the buffer), then a ring all-gather within each host. A
/// host's network link carries 2 (H-1)/H of the buffer each way instead of the single ring's
/// 2 (HL-1)/HL (at 2 hosts of 4 ranks: 1.0 against 1.75 buffers). Each value is summed once in
/// a fixed order (within the host, then across hosts) and copied, so every rank ends with the
/// same bits (not a single ring's: its sums run in another order); `allReduce` takes the single ring
/// where there is one host, or hosts of different sizes.
public struct HierarchicalAllReduce {
    /// This host's ranks, and the ranks of this rank's local index, one per host.
    public let local: Communicator
    public let cross: Communicator
    public let localIndex: Int

    /// Nil unless `groups` (ranks by host) has at least 2 hosts, all with the same number (at
    /// least 2) of ranks.
    public init?(communicator c: Communicator, groups: [[Int]]) {
        guard groups.count > 1, let l = groups.first?.count, l > 1,
              groups.allSatisfy({ $0.count == l }), let mine = groups.first(where: { $0.contains(c.rank) }),
              let index = mine.firstIndex(of: c.rank) else { return nil }
        local = SubCommunicator(parent: c, members: mine)
        cross = SubCommunicator(parent: c, members: groups.map { $0[index] })
        localIndex = index
    }

    /// Ranks grouped by host (`hosts[r]` is rank r's: a data address, a host name): hosts in
    /// order of their lowest rank, ranks in order within each.
    public static func groups(hosts: [String]) -> [[Int]] {
        var order: [String] = [], byHost: [String: [Int]] = [:]
        for (r, h) in hosts.enumerated() {
            if byHost[h] == nil { order.append(h) }
            byHost[h, default: []].append(r)
        }
        return order.map { byHost[$0]! }
    }

    /// Both transports' agreement: the ranks' host groups if every rank asks for two levels
    /// (`enabled`; a MAX all-reduce of refusals, so one refusal keeps everyone on one ring), else nil.
    static func agreedGroups(_ c: Communicator, enabled: Bool, tensor: Int, hosts: () throws -> [String]) throws -> [[Int]]? {
        var refused: Float = enabled ? 0 : 1
        try c.allReduce(&refused, count: 1, op: .max, tensor: tensor)
        return refused == 0 ? groups(hosts: try hosts()) : nil
    }

    /// `chunkFloats`: the rings' piece size (`RingAllReduce.chunkFloats`).
    public func run(_ buffer: UnsafeMutablePointer<Float>, count: Int, op: ReduceOp, tag: Int, wire: WireFormat, chunkFloats: Int = 1 << 20) throws {
        var inHost = RingAllReduce(communicator: local, wire: wire), across = RingAllReduce(communicator: cross, wire: wire)
        inHost.chunkFloats = chunkFloats
        across.chunkFloats = chunkFloats
        try inHost.run(buffer, count: count, op: op, tag: tag, phases: .reduceScatter)
        let mine = RingAllReduce.segment((localIndex + 1) % local.size, count: count, parts: local.size)
        try across.run(buffer + mine.lowerBound, count: mine.count, op: op, tag: tag)
        try inHost.run(buffer, count: count, op: op, tag: tag, phases: .allGather)
    }
}
