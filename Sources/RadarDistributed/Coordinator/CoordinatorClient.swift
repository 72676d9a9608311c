import Foundation
import RadarCore
#if canImport(Glibc)
import Glibc
#endif

/// A worker's link to the coordinator: login, registration, the peer table, heartbeats on a
/// background thread, progress reports; an abort from the coordinator ends the process with a
/// message naming the lost rank.
public final class CoordinatorClient: @unchecked Sendable {
    public let rank: Int
    /// The coordinator's address this rank reached.
    public let coordinatorHost: String
    private let fd: Int32
    private let lock = NSLock()
    public private(set) var peers: [TCPCommunicator.Peer]
    public private(set) var manifestHash: String
    private var progress: [String: Any] = [:]
    private var closed = false
    private var listening = false
    /// The coordinator's answer to this rank's own abort report: the lost rank and why.
    private let verdictReady = NSCondition()
    private var verdict: (rank: Int, cause: String)?
    private var verdictEnded = false
    private let planReply = NSCondition()
    private var plans: [Int: String] = [:]
    /// What happens when the coordinator aborts the job (default: the training loop is asked to
    /// stop at its next safe point, and transports stop waiting; see `JobAbort`).
    public var onAbort: (String) -> Void = { reason in JobAbort.request(reason) }

    /// Logs in and waits for the peer table, sending heartbeats while it waits (the last rank
    /// may start minutes later). `dataPort` is this rank's TCP data listener (0 with MPI);
    /// `timeout` bounds the connection and login, `rendezvousTimeout` the wait for the others.
    public convenience init(host: String, port: Int, token: Data, rank: Int, worldSize: Int? = nil, dataHost: String, dataPort: Int,
                            timeout: TimeInterval, rendezvousTimeout: TimeInterval = 600, attempt: Int = JobAttempt.current) throws {
        try self.init(hosts: [host], port: port, token: token, rank: rank, worldSize: worldSize, dataHost: dataHost, dataPort: dataPort,
                      timeout: timeout, rendezvousTimeout: rendezvousTimeout, attempt: attempt)
    }

    /// As above, with the coordinator at the first of `hosts` (its machine's addresses, tried in
    /// turn) that takes the connection; `coordinatorHost` says which. `attempt` is the job's
    /// restart count (`radar launch --max-restarts`, torchrun's elastic restarts): a coordinator
    /// of an earlier attempt still stopping turns the login away for now, and it is tried again
    /// (every half second, within the rendezvous timeout) until this attempt's coordinator is up.
    public init(hosts: [String], port: Int, token: Data, rank: Int, worldSize: Int? = nil, dataHost: String, dataPort: Int,
                timeout: TimeInterval, rendezvousTimeout: TimeInterval = 600, attempt: Int = JobAttempt.current) throws {
        self.rank = rank
        let giveUp = monotonicNow().addingTimeInterval(rendezvousTimeout + timeout)
        var deadline = monotonicNow().addingTimeInterval(timeout)
        var saidLater = false
        while true {
            let (fd, host) = try Sockets.connect(hosts: hosts, port: port, deadline: deadline)
            do {
                (peers, manifestHash) = try CoordinatorClient.login(fd, token: token, rank: rank, worldSize: worldSize, dataHost: dataHost,
                                                                    dataPort: dataPort, attempt: attempt, timeout: timeout,
                                                                    rendezvousTimeout: rendezvousTimeout)
                (self.fd, coordinatorHost) = (fd, host)
                return
            } catch let later as LaterAttempt {
                close(fd)
                if monotonicNow() > giveUp { throw CommunicationError(rank: rank, peer: nil, reason: "coordinator refused: \(later.reason)") }
                if !saidLater {
                    saidLater = true
                    logLine("radar-worker rank \(rank): the coordinator at \(hostPortText(host, port)) says to come back (\(later.reason)): "
                            + "trying again every 0.5 s for up to \(Int(giveUp.timeIntervalSince(monotonicNow()))) s")
                }
                usleep(500_000)
                deadline = max(deadline, monotonicNow().addingTimeInterval(timeout))
            } catch let e as CommunicationError { close(fd); throw e } catch {
                close(fd)
                throw CommunicationError(rank: rank, peer: nil, reason: "coordinator at \(hostPortText(host, port)): \(error)")
            }
        }
    }

    /// The coordinator of an earlier attempt of the job answered, or a busy one (too many
    /// connections logging in at once) turned the connection away: try again shortly.
    struct LaterAttempt: Error { let reason: String }

    /// Throws for a refusal: `LaterAttempt` where the coordinator says to come back.
    private static func refusal(_ kind: Wire.Kind, _ msg: [String: Any], rank: Int) throws {
        guard kind == .refused else { return }
        let reason = msg["reason"] as? String ?? ""
        if msg["later"] as? Bool == true { throw LaterAttempt(reason: reason) }
        throw CommunicationError(rank: rank, peer: nil, reason: "coordinator refused: \(reason)")
    }

    /// Login (challenge, proof, registration), then the wait for the peer table with heartbeats.
    private static func login(_ fd: Int32, token: Data, rank: Int, worldSize: Int?, dataHost: String, dataPort: Int, attempt: Int,
                              timeout: TimeInterval, rendezvousTimeout: TimeInterval) throws -> ([TCPCommunicator.Peer], String) {
        let (kind, challenge) = try Wire.receive(fd, deadline: monotonicNow().addingTimeInterval(timeout))
        try refusal(kind, challenge, rank: rank)
        guard kind == .challenge, let nonce = challenge["nonce"] as? String else { throw Wire.ProtocolError(reason: "expected a challenge") }
        let proof = HMACSHA256.hex(key: token, message: Data("\(nonce):\(rank)".utf8))
        var register: [String: Any] = ["rank": rank, "host": dataHost, "port": dataPort, "proof": proof, "attempt": attempt]
        if let n = worldSize { register["world_size"] = n }
        try Wire.send(fd, .register, register)
        // The coordinator answers when every rank is in (or refuses); heartbeat meanwhile, often
        // (4 a second: tiny frames) so no heartbeat deadline can pass between two of them.
        let waitUntil = monotonicNow().addingTimeInterval(rendezvousTimeout + timeout)
        var lastBeat = Date.distantPast
        while true {
            if monotonicNow().timeIntervalSince(lastBeat) >= 0.25 {
                try Wire.send(fd, .heartbeat, ["rank": rank])
                lastBeat = monotonicNow()
            }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            if poll(&p, 1, 100) > 0 { break }
            if monotonicNow() > waitUntil { throw Wire.ProtocolError(reason: "no peer table within \(Int(rendezvousTimeout + timeout)) s") }
        }
        let (k2, msg) = try Wire.receive(fd, deadline: monotonicNow().addingTimeInterval(timeout))
        try refusal(k2, msg, rank: rank)
        if k2 == .abort { throw CommunicationError(rank: rank, peer: nil, reason: "stopping before training: \(msg["reason"] as? String ?? "the coordinator aborted the job")") }
        guard k2 == .peers, let table = msg["peers"] as? [[String: Any]] else { throw Wire.ProtocolError(reason: "expected the peer table") }
        let peers = try table.map {
            guard let r = $0["rank"] as? Int, let h = $0["host"] as? String, let p = $0["port"] as? Int else {
                throw Wire.ProtocolError(reason: "malformed peer table")
            }
            return TCPCommunicator.Peer(rank: r, host: h, port: p)
        }
        return (peers, msg["manifest"] as? String ?? "")
    }

    /// Seconds between a rank's heartbeats once training runs; a deadline under
    /// `minimumHeartbeatDeadline` (two of them) declared healthy ranks lost.
    public static let heartbeatInterval: TimeInterval = 1, minimumHeartbeatDeadline: TimeInterval = 2

    /// Starts heartbeats (every `interval` s) and the listener for abort messages.
    public func start(interval: TimeInterval = CoordinatorClient.heartbeatInterval) throws {
        try startThread("rank \(rank)'s heartbeats to the coordinator") { [self] in
            while true {
                lock.lock(); let c = closed; var body = progress; lock.unlock()
                if c { return }
                body["rank"] = rank
                do { try lock.withLock { try Wire.send(fd, .heartbeat, body) } } catch { return }
                Thread.sleep(forTimeInterval: interval)
            }
        }
        lock.lock(); listening = true; lock.unlock()
        try startThread("rank \(rank)'s listener for the coordinator's messages") { [self] in
            defer { verdictReady.lock(); verdictEnded = true; verdictReady.broadcast(); verdictReady.unlock() }
            while true {
                guard let (kind, msg) = try? Wire.receive(fd, deadline: .distantFuture) else {
                    lock.lock(); let c = closed; lock.unlock()
                    if !c { onAbort("rank \(rank): lost the coordinator; stopping") }
                    return
                }
                lock.lock(); let reported = closed; lock.unlock()
                if reported {
                    // This rank reported its own failure: the answer says which rank was lost.
                    if kind == .abort, let r = msg["lost_rank"] as? Int {
                        verdictReady.lock(); verdict = (r, msg["cause"] as? String ?? ""); verdictReady.broadcast(); verdictReady.unlock()
                        return
                    }
                    continue
                }
                if kind == .epochPlan, let e = msg["epoch"] as? Int {
                    planReply.lock(); plans[e] = msg["digest"] as? String ?? ""; planReply.broadcast(); planReply.unlock()
                    continue
                }
                if kind == .abort {
                    onAbort("rank \(rank): stopping: \(msg["reason"] ?? "the coordinator aborted the job")")
                    return
                }
            }
        }
    }

    /// The coordinator's digest of an epoch plan ("" when it has no dataset). Call after `start`.
    public func epochPlanDigest(epoch: Int, seed: UInt64, batchSize: Int, accumulationSteps: Int, maxStepsPerEpoch: Int,
                                timeout: TimeInterval) throws -> String {
        try lock.withLock {
            try Wire.send(fd, .epochPlan, ["epoch": epoch, "seed": Int(truncatingIfNeeded: seed), "batch_size": batchSize,
                                           "accumulation_steps": accumulationSteps, "max_steps_per_epoch": maxStepsPerEpoch])
        }
        let deadline = monotonicNow().addingTimeInterval(timeout)
        planReply.lock()
        defer { planReply.unlock() }
        while plans[epoch] == nil {
            try CommunicationError.checkStop(rank: rank)
            if !planReply.wait(untilMonotonic: min(deadline, monotonicNow().addingTimeInterval(0.2))) && monotonicNow() >= deadline {
                throw CommunicationError(rank: rank, peer: nil, reason: "the coordinator did not answer the epoch \(epoch) plan request")
            }
        }
        return plans.removeValue(forKey: epoch)!
    }

    /// Sends metrics right away (a progress message), e.g. validation results at an epoch's end.
    public func sendProgress(_ values: [String: Any]) {
        var body = values
        body["rank"] = rank
        lock.lock()
        if !closed { try? Wire.send(fd, .progress, body) }
        lock.unlock()
    }

    /// Reported with the next heartbeat (step, images/s, loss, ...).
    public func report(_ values: [String: Any]) {
        // JSON has no NaN or infinity: such values are left out rather than failing the heartbeat.
        lock.lock(); for (k, v) in values { progress[k] = (v as? Double).map { $0.isFinite ? v : nil } ?? v }; lock.unlock()
    }

    /// Tells the coordinator this rank failed (it tells the other ranks to stop), then closes.
    /// A rank that gave up waiting on `waitingFor` waits up to `verdictWithin` seconds for the
    /// coordinator's verdict and returns it when another rank was found lost (the one whose
    /// heartbeats stopped: a ring stalls on every rank when one host goes silent). The
    /// coordinator looks for a silent rank for at most three heartbeats: half a second more is
    /// enough, and bounds how much later a rank that is itself cut off ends.
    @discardableResult
    public func abortJob(_ reason: String, waitingFor peer: Int? = nil,
                         verdictWithin: TimeInterval = 3 * CoordinatorClient.heartbeatInterval + 0.5) -> (rank: Int, cause: String)? {
        lock.lock()
        if closed { lock.unlock(); return nil }
        closed = true
        var body: [String: Any] = ["rank": rank, "reason": String(reason.prefix(400))]
        if let p = peer { body["waiting_for"] = p }
        let sent = (try? Wire.send(fd, .abort, body)) != nil
        let wait = sent && peer != nil && listening
        lock.unlock()
        var answer: (rank: Int, cause: String)?
        if wait {
            let until = monotonicNow().addingTimeInterval(verdictWithin)
            verdictReady.lock()
            while verdict == nil && !verdictEnded && verdictReady.wait(untilMonotonic: until) {}
            answer = verdict
            verdictReady.unlock()
        }
        shutdown(fd, Int32(SHUT_RDWR))
        return answer.flatMap { $0.rank == rank ? nil : $0 }
    }

    /// One line for a failed rank. A stop the coordinator ordered is named as such; any other
    /// failure is reported to the coordinator, which tells the other ranks at once, and a stall
    /// it puts down to another (silent) rank gets a second line naming that rank.
    public static func reportFailure(_ error: Error, rank: Int, client: CoordinatorClient?) {
        if JobAbort.requested {
            logLine("radar-worker rank \(rank): stopped: \(JobAbort.reason)")
        } else {
            logLine("radar-worker rank \(rank): error: \(errorLine(error))")
            let peer = (error as? CommunicationError)?.peer
            if let found = client?.abortJob("rank \(rank) failed: \(error)", waitingFor: peer), found.rank != peer {
                logLine("radar-worker rank \(rank): the coordinator found rank \(found.rank) lost (\(found.cause)): the stall started there")
            }
        }
    }

    /// Signs off (the coordinator stops expecting heartbeats) and closes the link.
    public func finish() {
        lock.lock()
        if closed { lock.unlock(); return }
        closed = true
        try? Wire.send(fd, .done, ["rank": rank])
        lock.unlock()
        shutdown(fd, Int32(SHUT_RDWR))
    }

    deinit {
        finish()
        close(fd)
    }

    /// The status of a job, as an observer (rank -1).
    public static func status(host: String, port: Int, token: Data, timeout: TimeInterval = 10) throws -> [String: Any] {
        let deadline = monotonicNow().addingTimeInterval(timeout)
        // Nothing listening is said at once (it was said after 10 s of tries).
        let fd: Int32
        do { fd = try Sockets.connect(host: host, port: port, deadline: deadline, retrying: false) } catch let e as Sockets.SocketError where e.code == ECONNREFUSED {
            throw Sockets.SocketError(reason: "\(e.reason): no coordinator listens there (is the job running, and is this its --listen port?)")
        }
        defer { close(fd) }
        let (first, challenge): (Wire.Kind, [String: Any])
        do { (first, challenge) = try Wire.receive(fd, deadline: deadline) } catch let e as Sockets.SocketError where e.reason == "timed out" {
            // It said only "timed out".
            throw Sockets.SocketError(reason: "\(hostPortText(host, port)) took the connection but sent nothing within \(String(format: "%g", timeout)) s: is a RADAR coordinator listening there?")
        }
        if first == .refused { throw Wire.ProtocolError(reason: "refused: \(challenge["reason"] ?? "")") }
        guard let nonce = challenge["nonce"] as? String else { throw Wire.ProtocolError(reason: "expected a challenge") }
        try Wire.send(fd, .register, ["rank": -1, "proof": HMACSHA256.hex(key: token, message: Data("\(nonce):-1".utf8))])
        let (kind, body) = try Wire.receive(fd, deadline: deadline)
        if kind == .refused { throw Wire.ProtocolError(reason: "refused: \(body["reason"] ?? "")") }
        return body
    }
}
