import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A small HTTP/1.1 server for `radar serve`: one thread per connection (at most
/// `maxConnections`; more wait in the kernel's backlog), keep-alive, bodies by Content-Length or
/// chunked (other transfer codings are answered 501), `Expect: 100-continue` answered, a body
/// limit (413). Time limits, so that slow or stalled clients cannot hold every connection (the
/// slowloris attack; Apache's mod_reqtimeout defaults): an idle keep-alive connection is closed
/// after `readTimeout`; a request's header must be whole within `readTimeout` of its first byte
/// (else 408); a body must come at `minBodyRate` bytes/s after a first `readTimeout` (else 408); a
/// client that stops reading its answer is dropped after `readTimeout`. An HTTP/1.0 request is
/// answered and closed unless it asks for keep-alive.
/// What it does not know how to read it answers with a status and closes.
public final class HTTPServer: @unchecked Sendable {
    public struct Request: Sendable {
        public internal(set) var method: String
        public let path: String
        public let query: [String: String]
        /// Lower-cased names.
        public let headers: [String: String]
        public let body: Data
        /// Whether the connection may carry another request: HTTP/1.1 unless `Connection: close`,
        /// HTTP/1.0 only with `Connection: keep-alive`; never after a body framed by both
        /// Transfer-Encoding and Content-Length (RFC 9112 6.3).
        public var keepAlive = true
    }

    public struct Response: Sendable {
        public var status: Int
        public var contentType: String
        public var body: Data
        /// More header fields (`Allow` with a 405).
        public var headers: [(String, String)] = []

        public init(status: Int, contentType: String = "application/json", body: Data) {
            (self.status, self.contentType, self.body) = (status, contentType, body)
        }

        /// A JSON document (`jsonData`: NaN as null, sorted keys) and a line break.
        public static func json(_ status: Int, _ object: Any) -> Response {
            Response(status: status, body: ((try? jsonData(object)) ?? Data("{}".utf8)) + Data("\n".utf8))
        }

        /// `{"error": "..."}`.
        public static func error(_ status: Int, _ message: String) -> Response { json(status, ["error": message]) }
    }

    public struct ServerError: Error, CustomStringConvertible {
        public let description: String
    }

    public let port: Int
    public let maxBodyBytes: Int
    /// Seconds: the idle keep-alive limit, the time a header may take, the body's first grace
    /// and the longest a blocked send waits.
    public var readTimeout: TimeInterval = 30
    /// Bytes per second a body must keep up after its first `readTimeout` seconds.
    public var minBodyRate: Double = 500
    private let fd: Int32
    private let slots: DispatchSemaphore
    private let lock = NSLock()
    private var stopped = false, open = Set<Int32>(), rejectedCount = 0, turnedAwayCount = 0
    /// Requests answered with an error status before they were read whole (400, 413, 431, 501).
    public var rejected: Int { lock.lock(); defer { lock.unlock() }; return rejectedCount }
    /// Connections answered 503 unread because the server had no thread or no descriptor for them.
    public var turnedAway: Int { lock.lock(); defer { lock.unlock() }; return turnedAwayCount }
    private let finished = DispatchGroup()
    private let spare = SpareDescriptor()
    private let shortageNotice = NoticeThrottle(every: 10)
    /// Where the server says what it cannot do for a while (the limit on open files reached).
    public var log: @Sendable (String) -> Void = logLine

    /// Listens on `host:port` (port 0: one the system picks; `port` says which). `host` is a
    /// numeric IPv4 or IPv6 address (brackets allowed); `::` is every interface of both kinds
    /// (one dual-stack socket), 0.0.0.0 every IPv4 one.
    public init(host: String, port: Int, maxBodyBytes: Int, maxConnections: Int = 64) throws {
        let shown = hostPortText(bareHost(host), port)
        guard let address = SocketAddress.numeric(host, port: port) else {
            throw ServerError(description: "--listen \(shown): \(bareHost(host)) is not an IPv4 or IPv6 address (0.0.0.0 or [::] for every interface)")
        }
        let (s, bound) = try address.listening(dualStack: true).mapError { ServerError(description: "--listen \(shown): \($0.text)") }.get()
        (self.fd, self.port, self.maxBodyBytes) = (s, bound, maxBodyBytes)
        slots = DispatchSemaphore(value: max(1, maxConnections))
    }

    /// Accepts connections until `stop`, answering each request with `handler` (called on the
    /// connection's thread); returns once every connection has closed. Where the limit on open
    /// files (or memory) refuses a connection, it is answered 503 from a spare descriptor and
    /// the server goes on; throws only where accepting fails for another reason.
    public func serve(_ handler: @escaping @Sendable (Request) -> Response) throws {
        var failure: Int32?
        while true {
            slots.wait()
            let c = accept(fd, nil, nil)
            if c < 0 {
                let code = errno
                slots.signal()
                if acceptMayBeRetried(code) { continue }
                if lock.withLock({ stopped }) { break }  // the listening socket was shut down
                if OpenFileLimit.reached(code) || code == ENOBUFS || code == ENOMEM {
                    refuseForShortage(code)
                    continue
                }
                failure = code
                break
            }
            _ = fcntl(c, F_SETFD, FD_CLOEXEC)
            lock.lock()
            if stopped { lock.unlock(); close(c); slots.signal(); break }
            open.insert(c)
            lock.unlock()
            // Reads wait in poll with the request's deadline; a send that the client does not
            // drain gives up after readTimeout.
            var tv = timeval(tv_sec: max(1, Int(readTimeout.rounded(.up))), tv_usec: 0)
            setsockopt(c, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            finished.enter()
            func done() {
                lock.lock(); open.remove(c); lock.unlock()
                close(c)
                slots.signal()
                finished.leave()
            }
            do {
                try startThread("a connection") { [self] in
                    connection(c, handler)
                    done()
                }
            } catch {
                // The system's limit on threads: this client is told so; the service goes on.
                refuse(c, "\(error)")
                done()
            }
        }
        finished.wait()
        if let failure { throw ServerError(description: "accepting connections on port \(port) failed: \(String(cString: strerror(failure)))") }
    }

    /// A connection refused for want of a descriptor (or of kernel memory): the pending one is
    /// answered 503 from the spare descriptor (else the next try waits 50 ms), said once per 10 s.
    private func refuseForShortage(_ code: Int32) {
        let reason = OpenFileLimit.reason(code)
        if shortageNotice.due() { log("radar serve: cannot take a connection (\(reason)): new ones are answered 503 until some close") }
        let answered = spare.shed(fd) { c in
            var tv = timeval(tv_sec: 1, tv_usec: 0)
            setsockopt(c, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            refuse(c, "the server cannot take the connection now: \(reason)")
        }
        if !answered { usleep(50_000) }
    }

    /// A 503 on a connection the server will not serve (no thread or no descriptor for it),
    /// before it is closed: what the client already sent is dropped first, so the close sends no
    /// reset that could destroy the answer (without waiting for more: the accept loop waits).
    private func refuse(_ c: Int32, _ message: String) {
        lock.lock(); turnedAwayCount += 1; lock.unlock()
        write(c, .error(503, message), keepAlive: false)
        shutdown(c, Int32(SHUT_WR))
        var scratch = [UInt8](repeating: 0, count: 4096)
        for _ in 0..<16 where recv(c, &scratch, scratch.count, Int32(MSG_DONTWAIT)) > 0 {}
    }

    /// Stops accepting; connections finish the request they are answering and close.
    public func stop() {
        lock.lock()
        stopped = true
        let idle = open
        lock.unlock()
        shutdown(fd, Int32(SHUT_RDWR))
        // Wakes connections waiting for their next request; one mid-request still writes its answer.
        for c in idle { shutdown(c, Int32(SHUT_RD)) }
    }

    deinit { close(fd) }

    private func connection(_ c: Int32, _ handler: (Request) -> Response) {
        var buffer = Data()
        while true {
            let request: Request
            switch read(c, &buffer) {
            case .request(let r): request = r
            case .closed: return
            case .reject(let status, let message):
                lock.lock(); rejectedCount += 1; lock.unlock()
                write(c, .error(status, message), keepAlive: false)
                lingeringClose(c)
                return
            }
            lock.lock(); let stopping = stopped; lock.unlock()
            let keepAlive = !stopping && request.keepAlive
            // HEAD is answered as GET without the body (RFC 9110 9.3.2): curl -I, health checkers.
            let head = request.method == "HEAD"
            var asked = request
            if head { asked.method = "GET" }
            write(c, handler(asked), keepAlive: keepAlive, withBody: !head)
            if !keepAlive { return }
        }
    }

    /// After an error answer while the client may still be sending (a body over the limit):
    /// closing with bytes unread makes the kernel send a reset, which can destroy the answer
    /// before the client reads it (the client saw "Connection reset by peer", not the 413, about
    /// one time in four here). So the sending side is shut and what still arrives is read and
    /// dropped until the client closes, for 2 s at most (Apache's lingering close).
    private func lingeringClose(_ c: Int32) {
        shutdown(c, Int32(SHUT_WR))
        let deadline = monotonicNow().addingTimeInterval(min(2, readTimeout))
        var dropped = Data()
        while receive(c, &dropped, until: deadline) == .data { dropped.removeAll(keepingCapacity: true) }
    }

    enum ReadResult { case request(Request), closed, reject(Int, String) }

    /// The next request on the connection (`buffer` keeps what was read past it).
    func read(_ c: Int32, _ buffer: inout Data) -> ReadResult {
        let separator = Data("\r\n\r\n".utf8)
        var found = buffer.range(of: separator)
        // Idle until the first byte (a keep-alive connection between requests), then the whole
        // header within readTimeout of it.
        var headerDeadline = buffer.isEmpty ? nil : monotonicNow().addingTimeInterval(readTimeout)
        while found == nil {
            if buffer.count > 64 << 10 { return .reject(431, "request header over 64 KiB") }
            // Only what arrives (and the 3 bytes before it) is searched: a header that comes a few
            // bytes at a time is not searched from its start at each arrival.
            let searchFrom = max(buffer.startIndex, buffer.endIndex - 3)
            switch receive(c, &buffer, until: headerDeadline ?? monotonicNow().addingTimeInterval(readTimeout)) {
            case .data: break
            case .end: return buffer.isEmpty ? .closed : .reject(400, "the connection ended inside a request header")
            case .late:
                return buffer.isEmpty ? .closed : .reject(408, "the request header did not arrive whole within \(seconds(readTimeout)) s")
            }
            if headerDeadline == nil { headerDeadline = monotonicNow().addingTimeInterval(readTimeout) }
            found = buffer.range(of: separator, in: searchFrom..<buffer.endIndex)
        }
        let headEnd = found!
        let head = String(decoding: buffer[buffer.startIndex..<headEnd.lowerBound], as: UTF8.self)
        var lines = head.components(separatedBy: "\r\n")
        let parts = lines.removeFirst().split(separator: " ")
        guard parts.count == 3, parts[2].hasPrefix("HTTP/1.") else { return .reject(400, "not an HTTP/1.x request line") }
        var headers: [String: String] = [:]
        for l in lines {
            guard let colon = l.firstIndex(of: ":") else { return .reject(400, "a header line without a colon") }
            let name = l[..<colon].lowercased(), value = l[l.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            // A field sent twice: one list (RFC 9110 5.3), as every other server reads it.
            headers[name] = headers[name].map { "\($0), \(value)" } ?? value
        }
        var chunked = false
        if let coding = headers["transfer-encoding"] {
            // Only "chunked" (what clients stream with); a compressed body is not read.
            guard coding.lowercased() == "chunked" else { return .reject(501, "Transfer-Encoding \(coding) is not read (send chunked or a Content-Length)") }
            chunked = true
        }
        var length = 0
        if !chunked, let text = headers["content-length"] {
            // Content-Length twice with one value is allowed (RFC 9110 8.6); two values say the
            // body's end two ways (a request smuggled through a proxy): refused.
            let values = Set(text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) })
            guard values.count == 1, let n = Int(values.first!), n >= 0 else { return .reject(400, "Content-Length \(text) is not one byte count") }
            length = n
        }
        let version = parts[2], connection = Set((headers["connection"] ?? "").lowercased().split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) })
        let keepAlive = version == "HTTP/1.0" ? connection.contains("keep-alive") : !connection.contains("close")
        if length > maxBodyBytes { return .reject(413, "the body is \(length) bytes, over the limit of \(maxBodyBytes) (--max-image-mb)") }
        // A client that asks first (curl does for bodies over 1 MiB) is told to go on, instead of
        // waiting its second for an answer that never comes.
        if headers["expect"]?.lowercased() == "100-continue" && (chunked || length > 0) {
            let bodyHere = buffer.count - (headEnd.upperBound - buffer.startIndex)
            if bodyHere == 0 { sendAll(c, Data("HTTP/1.1 100 Continue\r\n\r\n".utf8)) }
        }
        buffer = Data(buffer[headEnd.upperBound...])
        let body: Data
        let pace = BodyPace(start: monotonicNow(), grace: readTimeout, rate: minBodyRate)
        if chunked {
            switch readChunked(c, &buffer, pace: pace) {
            case .success(let b): body = b
            case .failure(let e): return .reject(e.status, e.message)
            }
        } else {
            var received = buffer.count
            while buffer.count < length {
                switch receive(c, &buffer, until: pace.deadline(received)) {
                case .data: received = buffer.count
                case .end: return .reject(400, "the connection ended inside the body")
                case .late: return .reject(408, pace.complaint(received, of: length))
                }
            }
            body = Data(buffer.prefix(length))
            buffer = Data(buffer.dropFirst(length))
        }
        let target = String(parts[1])
        let (path, queryText) = target.firstIndex(of: "?").map { (String(target[..<$0]), String(target[target.index(after: $0)...])) } ?? (target, "")
        var query: [String: String] = [:]
        for pair in queryText.split(separator: "&") {
            // "=" alone, "=x" and "x=" are pairs too (an empty name or value): "?=" ended the process.
            let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            query[String(kv[0]).removingPercentEncoding ?? String(kv[0])] = kv.count > 1 ? (String(kv[1]).removingPercentEncoding ?? String(kv[1])) : ""
        }
        return .request(Request(method: String(parts[0]), path: path, query: query, headers: headers, body: body,
                                keepAlive: keepAlive && !(chunked && headers["content-length"] != nil)))
    }

    /// How long a body may take: `grace` seconds, and one more for each `rate` bytes received.
    struct BodyPace {
        let start: Date, grace: TimeInterval, rate: Double
        func deadline(_ received: Int) -> Date { start.addingTimeInterval(grace + Double(received) / rate) }
        func complaint(_ received: Int, of total: Int?) -> String {
            "the body came slower than \(Int(rate)) bytes/s after \(seconds(grace)) s (\(received)\(total.map { " of \($0)" } ?? "") bytes in \(seconds(monotonicNow().timeIntervalSince(start))) s)"
        }
    }

    struct BodyError: Error { let status: Int, message: String }

    /// A chunked body (RFC 9112 7.1): hex sizes (extensions after ';' ignored), each chunk and its
    /// CRLF, a zero-size chunk, trailer lines (ignored) and the blank line. Over `maxBodyBytes`
    /// it stops at once (413). `buffer` starts at the first size line and keeps what follows.
    func readChunked(_ c: Int32, _ buffer: inout Data, pace: BodyPace) -> Result<Data, BodyError> {
        var body = Data()
        let crlf = Data("\r\n".utf8)
        var received = buffer.count
        func receive() -> BodyError? {
            let before = buffer.count
            switch self.receive(c, &buffer, until: pace.deadline(received)) {
            case .data: received += buffer.count - before; return nil
            case .end: return BodyError(status: 400, message: "the connection ended inside a chunked body")
            case .late: return BodyError(status: 408, message: pace.complaint(received, of: nil))
            }
        }
        func line() -> Result<String, BodyError> {
            while true {
                if let r = buffer.range(of: crlf) {
                    let text = String(decoding: buffer[buffer.startIndex..<r.lowerBound], as: UTF8.self)
                    buffer = Data(buffer[r.upperBound...])
                    return .success(text)
                }
                if buffer.count > 8 << 10 { return .failure(BodyError(status: 400, message: "a chunk-size or trailer line over 8 KiB")) }
                if let e = receive() { return .failure(e) }
            }
        }
        while true {
            let sizeLine: String
            switch line() { case .success(let l): sizeLine = l; case .failure(let e): return .failure(e) }
            let hex = sizeLine.split(separator: ";", maxSplits: 1, omittingEmptySubsequences: false)[0].trimmingCharacters(in: .whitespaces)
            guard !hex.isEmpty, hex.count <= 15, let size = Int(hex, radix: 16), size >= 0 else {
                return .failure(BodyError(status: 400, message: "chunk size '\(sizeLine.prefix(40))' is not a hexadecimal byte count"))
            }
            if size == 0 { break }
            if body.count + size > maxBodyBytes {
                return .failure(BodyError(status: 413, message: "the body is over the limit of \(maxBodyBytes) bytes (--max-image-mb)"))
            }
            while buffer.count < size + 2 {
                if let e = receive() { return .failure(e) }
            }
            guard buffer[buffer.startIndex + size] == 13, buffer[buffer.startIndex + size + 1] == 10 else {
                return .failure(BodyError(status: 400, message: "a chunk is not followed by CRLF"))
            }
            body.append(buffer.prefix(size))
            buffer = Data(buffer.dropFirst(size + 2))
        }
        while true {  // trailer fields, up to the blank line
            switch line() {
            case .success(let l): if l.isEmpty { return .success(body) }
            case .failure(let e): return .failure(e)
            }
        }
    }

    /// Writes all of `data` (a 100 Continue line, a response).
    private func sendAll(_ c: Int32, _ data: Data) {
        data.withUnsafeBytes { raw in
            var sent = 0
            while sent < raw.count {
                let n = send(c, raw.baseAddress! + sent, raw.count - sent, Int32(MSG_NOSIGNAL))
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { return }  // closed, or not drained within readTimeout (SO_SNDTIMEO)
                sent += n
            }
        }
    }

    enum Received { case data, end, late }

    /// Appends what the socket has, waiting until `deadline` at most: `.end` at its end or on an
    /// error, `.late` when nothing came in time.
    private func receive(_ c: Int32, _ buffer: inout Data, until deadline: Date) -> Received {
        while true {
            let left = deadline.monotonicSecondsLeft
            if left <= 0 { return .late }
            var p = pollfd(fd: c, events: Int16(POLLIN), revents: 0)
            let ready = poll(&p, 1, Int32(min(left * 1000, 3_600_000).rounded(.up)))
            if ready < 0 && errno == EINTR { continue }
            if ready < 0 { return .end }
            if ready == 0 { continue }  // the loop's check says whether the deadline has passed
            var chunk = [UInt8](repeating: 0, count: 64 << 10)
            let n = chunk.withUnsafeMutableBytes { recv(c, $0.baseAddress, $0.count, 0) }
            if n < 0 && (errno == EINTR || errno == EAGAIN) { continue }
            guard n > 0 else { return .end }
            buffer.append(contentsOf: chunk[0..<n])
            return .data
        }
    }

    static let reasons = [200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout", 411: "Length Required",
                          413: "Content Too Large", 431: "Request Header Fields Too Large", 500: "Internal Server Error", 501: "Not Implemented",
                          503: "Service Unavailable"]

    private func write(_ c: Int32, _ r: Response, keepAlive: Bool, withBody: Bool = true) {
        let head = "HTTP/1.1 \(r.status) \(Self.reasons[r.status] ?? "Status")\r\nContent-Type: \(r.contentType)\r\nContent-Length: \(r.body.count)\r\n"
            + r.headers.map { "\($0.0): \($0.1)\r\n" }.joined()
            + "Connection: \(keepAlive ? "keep-alive" : "close")\r\n\r\n"
        var out = Data(head.utf8)
        if withBody { out.append(r.body) }
        sendAll(c, out)
    }
}

/// 30 as "30", 2.5 as "2.5".
private func seconds(_ t: TimeInterval) -> String { t == t.rounded() ? String(Int(t)) : String(format: "%.1f", t) }
