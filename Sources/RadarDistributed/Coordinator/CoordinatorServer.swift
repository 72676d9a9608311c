import Foundation
import RadarCore
#if canImport(Glibc)
import Glibc
#endif

/// The control plane of a job (gradients never pass through it): workers log in with an HMAC
/// challenge-response on the job token, register their data address, receive the peer table,
/// fetch the epoch plan digest, send heartbeats and progress; a worker silent past the deadline
/// is declared lost and every other worker is told to abort. Runs in-process on rank 0 or as
/// `radar-coordinator`.
public final class CoordinatorServer: @unchecked Sendable {
    public let worldSize: Int
    public let token: Data
    public let port: Int
    public var heartbeatDeadline: TimeInterval = 10
    /// The job's restart count this coordinator serves (see `JobAttempt`): a rank of a later
    /// attempt is told to come back (this coordinator is stopping), one of an earlier is refused.
    /// nil (`radar-coordinator`, restarted by whatever supervises it, not by the launcher): the
    /// first rank to register sets it.
    public var attempt: Int? = JobAttempt.current
    /// How long the first rank waits for the last one to register (pods start minutes apart).
    public var rendezvousDeadline: TimeInterval = 600
    /// What one rank can make the coordinator keep: progress keys and the length of a string value.
    public static let maxProgressKeys = 32, maxValueLength = 128
    public var log: (String) -> Void = { _ in }
    /// The plan digest for a request; nil when the coordinator has no dataset.
    public var planDigest: ((PlanRequest) -> String)?

    /// What an epoch plan is a function of, as a worker asks for it.
    public struct PlanRequest: Sendable {
        public var seed: UInt64, epoch: Int, worldSize: Int, batchSize: Int, accumulationSteps: Int, maxStepsPerEpoch: Int
    }
    public var manifestHash = ""

    private let listenFD: Int32
    private let lock = NSLock()
    private var peers: [Int: TCPCommunicator.Peer] = [:]
    private var connections: [Int: Int32] = [:]
    private var lastSeen: [Int: Date] = [:]
    private var progressSlots: [Int: UnsafeMutablePointer<[String: Any]>] = [:]
    private var finished: Set<Int> = []
    private var turnedAway: Set<Int> = []
    private var lost: Int?
    private var stopped = false
    private let started = monotonicNow()
    public private(set) var refusedLogins = 0
    public private(set) var droppedConnections = 0
    /// Connections not yet past the login (the token's proof) at once: more are closed as they
    /// come. Each holds a thread for up to the 30 s login deadline, and a port scan or a flood
    /// of idle connections made one each, thousands (on rank 0, room its training's threads
    /// need).
    public var maxPendingLogins: Int
    private var pendingLogins = 0
    private let floodNotice = NoticeThrottle(every: 10), shortageNotice = NoticeThrottle(every: 10)
    private let spare = SpareDescriptor()

    public init(host: String = "0.0.0.0", port: Int, worldSize: Int, token: Data) throws {
        self.worldSize = worldSize
        self.token = token
        maxPendingLogins = max(64, 2 * worldSize)
        (listenFD, self.port) = try Sockets.listen(host: host, port: port)
        try startThread("the coordinator's listener") { [self] in self.acceptLoop() }
        try startThread("the coordinator's heartbeat watch") { [weak self] in self?.watch() }
    }

    /// Stops accepting. The listening descriptor is closed by the accept thread itself, so its
    /// number cannot be reused by another socket while that thread still polls it.
    public func stop() {
        lock.lock(); stopped = true; lock.unlock()
        shutdown(listenFD, Int32(SHUT_RDWR))
    }

    private func acceptLoop() {
        defer { close(listenFD) }
        while true {
            lock.lock(); let s = stopped; lock.unlock()
            if s { return }
            let accepted: Int32?
            do { accepted = try Sockets.accept(listenFD, deadline: monotonicNow().addingTimeInterval(1)) } catch {
                if lock.withLock({ stopped }) { return }
                turnAwayPending(error)
                continue
            }
            guard let fd = accepted else { continue }
            lock.lock()
            let late = stopped, full = pendingLogins >= maxPendingLogins
            if full { droppedConnections += 1 } else if !late { pendingLogins += 1 }
            lock.unlock()
            if late { close(fd); return }
            if full {
                turnAway(fd, "the coordinator is busy: \(maxPendingLogins) connections are logging in at once")
                if floodNotice.due() { log("coordinator: \(maxPendingLogins) connections are logging in at once: closing new ones until they have (a port scan or a flood?)") }
                continue
            }
            do { try startThread("a rank's connection to the coordinator") { [weak self] in self?.serve(fd) } } catch {
                // The rank is told to come back and tries again; the coordinator goes on.
                logLine("coordinator: \(error): connection dropped")
                turnAway(fd, "the coordinator could not serve the connection: \(error)")
                lock.lock(); droppedConnections += 1; pendingLogins -= 1; lock.unlock()
            }
        }
    }

    /// Tells a connection not served now to come back (a rank's login tries again every half
    /// second within its rendezvous timeout, as for a coordinator of an earlier attempt) and
    /// closes it. The frame is tiny and the connection new, so the send does not wait on a
    /// peer that never reads.
    private func turnAway(_ fd: Int32, _ reason: String) {
        try? Wire.send(fd, .refused, ["reason": reason, "later": true])
        close(fd)
    }

    /// Accepting failed (the limit on open files): the pending connection is taken with the
    /// spare descriptor and told to come back (else the next try waits 100 ms), said once per
    /// 10 s. Without it the connection stayed pending and the accept loop spun.
    private func turnAwayPending(_ error: Error) {
        if shortageNotice.due() { log("coordinator: \(error): turning new connections away until some close") }
        let answered = spare.shed(listenFD) { c in
            try? Wire.send(c, .refused, ["reason": "the coordinator is busy: \(error)", "later": true])
        }
        if !answered { usleep(100_000) }
    }

    /// One connection: login, then messages until it closes. Any protocol error drops only it.
    private func serve(_ fd: Int32) {
        var rank: Int?
        var loggingIn = true
        func loggedIn() {
            guard loggingIn else { return }
            loggingIn = false
            lock.lock(); pendingLogins -= 1; lock.unlock()
        }
        defer {
            loggedIn()
            close(fd)
            if let r = rank {
                lock.lock()
                let gone = !finished.contains(r) && connections[r] == fd && !stopped
                if connections[r] == fd { connections[r] = nil }
                lock.unlock()
                if gone { declareLost(r, why: "its connection closed") }
            }
        }
        do {
            let nonce = HMACSHA256.randomHex()
            try Wire.send(fd, .challenge, ["nonce": nonce, "world_size": worldSize])
            let (kind, msg) = try Wire.receive(fd, deadline: monotonicNow().addingTimeInterval(30))
            guard kind == .register, let r = msg["rank"] as? Int, let proof = msg["proof"] as? String else {
                throw Wire.ProtocolError(reason: "expected a register message")
            }
            guard HMACSHA256.equal(proof, HMACSHA256.hex(key: token, message: Data("\(nonce):\(r)".utf8))) else {
                lock.lock(); refusedLogins += 1; lock.unlock()
                log("coordinator: refused a login claiming rank \(r): wrong job token")
                try? Wire.send(fd, .refused, ["reason": "wrong job token"])
                return
            }
            loggedIn()
            if r == -1 {  // an observer (radar-coordinator status)
                try Wire.send(fd, .status, status())
                return
            }
            guard r >= 0, r < worldSize, let host = msg["host"] as? String, host.utf8.count <= 255,
                  let port = msg["port"] as? Int, (0...65535).contains(port) else {
                try? Wire.send(fd, .refused, ["reason": "rank \(r) out of range for world size \(worldSize), or a bad data address"])
                return
            }
            let theirAttempt = msg["attempt"] as? Int ?? 0
            lock.lock()
            if attempt == nil { attempt = theirAttempt }
            let attempt = self.attempt ?? theirAttempt
            lock.unlock()
            if theirAttempt != attempt {
                let later = theirAttempt > attempt
                lock.lock(); let first = turnedAway.insert(r).inserted; lock.unlock()
                if first || !later { log("coordinator: \(later ? "turned away for now" : "refused") rank \(r) of attempt \(theirAttempt): this coordinator serves attempt \(attempt)") }
                try? Wire.send(fd, .refused, ["reason": "rank \(r) is of attempt \(theirAttempt) of the job, this coordinator serves attempt \(attempt)"
                                              + (later ? " (it is stopping)" : ": a rank left over from an earlier attempt"), "later": later])
                return
            }
            if let theirs = msg["world_size"] as? Int, theirs != worldSize {
                log("coordinator: refused rank \(r): it was started with world size \(theirs), the job has \(worldSize)")
                try? Wire.send(fd, .refused, ["reason": "rank \(r) was started with world size \(theirs), the job has \(worldSize)"])
                return
            }
            lock.lock()
            if peers[r] != nil {
                lock.unlock()
                log("coordinator: refused a second registration of rank \(r)")
                try? Wire.send(fd, .refused, ["reason": "rank \(r) is already registered (two ranks started with the same RANK?)"])
                return
            }
            peers[r] = TCPCommunicator.Peer(rank: r, host: host, port: port)
            connections[r] = fd
            lastSeen[r] = monotonicNow()
            rank = r
            lock.unlock()
            // Wait for every rank (heartbeats keep the waiting ones alive), then send the peer table.
            let deadline = started.addingTimeInterval(rendezvousDeadline)
            while true {
                lock.lock(); let n = peers.count; let l = lost; let missing = (0..<worldSize).filter { peers[$0] == nil }; lock.unlock()
                if n == worldSize { break }
                if l != nil { throw Wire.ProtocolError(reason: "rank \(l!) was lost during the rendezvous") }
                if monotonicNow() > deadline {
                    let reason = "\(describeRanks(missing)) never registered within \(Int(rendezvousDeadline)) s (the rendezvous timeout)"
                    log("coordinator: \(reason)")
                    lock.lock(); finished.insert(r); lock.unlock()
                    try? Wire.send(fd, .refused, ["reason": reason])
                    return
                }
                var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                if poll(&p, 1, 200) > 0 {
                    let (kind, _) = try Wire.receive(fd, deadline: monotonicNow().addingTimeInterval(10))
                    guard kind == .heartbeat else { throw Wire.ProtocolError(reason: "unexpected \(kind) message during the rendezvous") }
                    lock.lock(); lastSeen[r] = monotonicNow(); lock.unlock()
                }
            }
            lock.lock()
            let table = peers.values.sorted { $0.rank < $1.rank }.map { ["rank": $0.rank, "host": $0.host, "port": $0.port] as [String: Any] }
            lock.unlock()
            try Wire.send(fd, .peers, ["peers": table, "manifest": manifestHash])
            while true {
                let (kind, msg) = try Wire.receive(fd, deadline: monotonicNow().addingTimeInterval(3600))
                lock.lock(); lastSeen[r] = monotonicNow(); lock.unlock()
                switch kind {
                case .heartbeat, .progress:
                    try record(msg, for: r)
                    if kind == .progress, r == 0, let auc = msg["val_auc"] as? Double {
                        // Epochs counted from 1, as the ranks' epoch lines count them (the message's field is 0-based).
                        log("coordinator: epoch \((msg["epoch"] as? Int ?? -1) + 1) validation AUC \(fixed(auc))")
                    }
                case .epochPlan:
                    try Wire.send(fd, .epochPlan, ["epoch": msg["epoch"] as? Int ?? 0, "digest": try planDigest.map { $0(try planRequest(msg)) } ?? ""])
                case .done:
                    lock.lock(); finished.insert(r); lock.unlock()
                    return
                case .abort:
                    let why = String((msg["reason"] as? String ?? "it aborted").prefix(400))
                    // A rank that gave up waiting on a peer may only be the first to notice a
                    // host that went silent (the ring stalls everywhere at once): a rank whose
                    // heartbeats stopped is the one lost, and the reporter is told so too.
                    if msg["waiting_for"] is Int, let (silent, seconds) = awaitSilentRank(besides: r) {
                        let silence = "no heartbeat for \(fixed(seconds, 1)) s"
                        declareLost(silent, why: "\(silence); rank \(r) reported: \(why)", cause: silence)
                    } else {
                        declareLost(r, why: why)
                    }
                    return
                default:
                    throw Wire.ProtocolError(reason: "unexpected \(kind) message")
                }
            }
        } catch {
            lock.lock(); droppedConnections += 1; lock.unlock()
            if rank == nil { log("coordinator: dropped a connection: \(error)") }
        }
    }

    /// A worker's plan request, every field checked (a bad one drops that worker).
    func planRequest(_ msg: [String: Any]) throws -> PlanRequest {
        func field(_ k: String, _ range: ClosedRange<Int>) throws -> Int {
            guard let v = msg[k] as? Int, range.contains(v) else {
                throw Wire.ProtocolError(reason: "epochPlan \(k) \(msg[k] ?? "missing") outside \(range)")
            }
            return v
        }
        return PlanRequest(seed: UInt64(truncatingIfNeeded: try field("seed", Int.min...Int.max)), epoch: try field("epoch", 0...(1 << 20)),
                           worldSize: worldSize, batchSize: try field("batch_size", 1...(1 << 20)),
                           accumulationSteps: try field("accumulation_steps", 1...(1 << 20)),
                           maxStepsPerEpoch: try field("max_steps_per_epoch", 0...(1 << 40)))
    }

    /// Keeps a worker's progress values: numbers and short strings, at most `maxProgressKeys`
    /// keys per rank, so no peer can make the coordinator grow without bound.
    func record(_ msg: [String: Any], for r: Int) throws {
        lock.lock(); defer { lock.unlock() }
        let slot = progressOf(r)
        for (k, v) in msg where k != "rank" {
            guard k.utf8.count <= 40 else { throw Wire.ProtocolError(reason: "progress key of \(k.utf8.count) bytes") }
            guard v is NSNumber || (v as? String).map({ $0.utf8.count <= CoordinatorServer.maxValueLength }) == true else {
                throw Wire.ProtocolError(reason: "progress value for \(k.prefix(40)) is not a number or a short string")
            }
            if slot.pointee[k] == nil && slot.pointee.count >= CoordinatorServer.maxProgressKeys { continue }
            slot.pointee[k] = v
        }
    }

    private func progressOf(_ r: Int) -> UnsafeMutablePointer<[String: Any]> {
        if progressSlots[r] == nil {
            let p = UnsafeMutablePointer<[String: Any]>.allocate(capacity: 1)
            p.initialize(to: [:])
            progressSlots[r] = p
        }
        return progressSlots[r]!
    }

    private func watch() {
        while true {
            usleep(250_000)
            lock.lock()
            if stopped { lock.unlock(); return }
            let silent = lastSeen.filter { !finished.contains($0.key) && monotonicNow().timeIntervalSince($0.value) > heartbeatDeadline }.keys.sorted().first
            lock.unlock()
            if let r = silent { declareLost(r, why: "no heartbeat for \(String(format: "%g", heartbeatDeadline)) s") }
        }
    }

    /// How long a rank may be silent before a stalled peer's report is put down to it: three
    /// heartbeats missed (never more than the heartbeat deadline).
    var suspicionSeconds: TimeInterval { min(heartbeatDeadline, 3 * CoordinatorClient.heartbeatInterval) }

    /// The rank other than `reporter` silent longest, once it has been silent `suspicionSeconds`,
    /// waiting up to that long for one; nil when none goes silent or a loss was declared meanwhile.
    func awaitSilentRank(besides reporter: Int) -> (Int, TimeInterval)? {
        let until = monotonicNow().addingTimeInterval(suspicionSeconds)
        while true {
            lock.lock()
            let now = monotonicNow()
            var quiet: (Int, TimeInterval)?
            for (r, seen) in lastSeen.sorted(by: { $0.key < $1.key }) where r != reporter && !finished.contains(r) {
                let silence = now.timeIntervalSince(seen)
                if silence > (quiet?.1 ?? -1) { quiet = (r, silence) }
            }
            let decided = lost != nil
            lock.unlock()
            if decided { return nil }
            if let q = quiet, q.1 > suspicionSeconds { return q }
            if now >= until { return nil }
            usleep(100_000)
        }
    }

    /// Tells every other connected worker to abort, naming the lost rank (a rank whose report
    /// named another is told too).
    public func declareLost(_ r: Int, why: String, cause: String? = nil) {
        lock.lock()
        if lost != nil { lock.unlock(); return }
        lost = r
        let others = connections.filter { $0.key != r }
        lock.unlock()
        log("coordinator: rank \(r) lost (\(why)); telling the other ranks to stop")
        for (_, fd) in others { try? Wire.send(fd, .abort, ["lost_rank": r, "reason": "rank \(r) lost: \(why)", "cause": cause ?? why]) }
    }

    public func status() -> [String: Any] {
        lock.lock(); defer { lock.unlock() }
        let ranks = (0..<worldSize).map { r -> [String: Any] in
            var e: [String: Any] = ["rank": r, "registered": peers[r] != nil, "finished": finished.contains(r)]
            if let t = lastSeen[r] { e["last_heartbeat_s_ago"] = monotonicNow().timeIntervalSince(t) }
            if let p = progressSlots[r] { for (k, v) in p.pointee where k != "rank" { e[k] = v } }
            return e
        }
        return ["world_size": worldSize, "ranks": ranks, "lost_rank": lost ?? NSNull(), "manifest": manifestHash,
                "refused_logins": refusedLogins, "dropped_connections": droppedConnections]
    }
}
