import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A small HTTP/1.1 server for `radar serve`: one thread per connection (at most
/// `maxConnections`; more wait in the kernel's backlog), keep-alive, bodies by Content-Length
/// only (chunked requests are answered 411), a body limit (413), a read timeout per request.
/// What it does not know how to read it answers with a status and closes.
public final class HTTPServer: @unchecked Sendable {
    public struct Request: Sendable {
        public let method: String, path: String
        public let query: [String: String]
        /// Lower-cased names.
        public let headers: [String: String]
        public let body: Data
    }

    public struct Response: Sendable {
        public var status: Int
        public var contentType: String
        public var body: Data

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
    public var readTimeout: TimeInterval = 30
    private let fd: Int32
    private let slots: DispatchSemaphore
    private let lock = NSLock()
    private var stopped = false, open = Set<Int32>(), rejectedCount = 0
    /// Requests answered with an error status before they were read whole (411, 413, 431, 400).
    public var rejected: Int { lock.lock(); defer { lock.unlock() }; return rejectedCount }
    private let finished = DispatchGroup()

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
    /// connection's thread); returns once every connection has closed.
    public func serve(_ handler: @escaping @Sendable (Request) -> Response) {
        while true {
            slots.wait()
            let c = accept(fd, nil, nil)
            if c < 0 {
                slots.signal()
                if errno == EINTR || errno == ECONNABORTED { continue }
                break  // the listening socket was shut down (stop), or it failed
            }
            _ = fcntl(c, F_SETFD, FD_CLOEXEC)
            lock.lock()
            if stopped { lock.unlock(); close(c); slots.signal(); break }
            open.insert(c)
            lock.unlock()
            var tv = timeval(tv_sec: Int(readTimeout), tv_usec: 0)
            setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            finished.enter()
            Thread.detachNewThread { [self] in
                connection(c, handler)
                lock.lock(); open.remove(c); lock.unlock()
                close(c)
                slots.signal()
                finished.leave()
            }
        }
        finished.wait()
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
                return
            }
            lock.lock(); let stopping = stopped; lock.unlock()
            let keepAlive = !stopping && (request.headers["connection"]?.lowercased() != "close")
            write(c, handler(request), keepAlive: keepAlive)
            if !keepAlive { return }
        }
    }

    enum ReadResult { case request(Request), closed, reject(Int, String) }

    /// The next request on the connection (`buffer` keeps what was read past it).
    func read(_ c: Int32, _ buffer: inout Data) -> ReadResult {
        let separator = Data("\r\n\r\n".utf8)
        var found = buffer.range(of: separator)
        while found == nil {
            if buffer.count > 64 << 10 { return .reject(431, "request header over 64 KiB") }
            guard receive(c, &buffer) else { return buffer.isEmpty ? .closed : .reject(400, "the connection ended inside a request header") }
            found = buffer.range(of: separator)
        }
        let headEnd = found!
        let head = String(decoding: buffer[buffer.startIndex..<headEnd.lowerBound], as: UTF8.self)
        var lines = head.components(separatedBy: "\r\n")
        let parts = lines.removeFirst().split(separator: " ")
        guard parts.count == 3, parts[2].hasPrefix("HTTP/1.") else { return .reject(400, "not an HTTP/1.x request line") }
        var headers: [String: String] = [:]
        for l in lines {
            guard let colon = l.firstIndex(of: ":") else { return .reject(400, "a header line without a colon") }
            headers[l[..<colon].lowercased()] = l[l.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        if headers["transfer-encoding"] != nil { return .reject(411, "send the body with a Content-Length (chunked bodies are not read)") }
        var length = 0
        if let text = headers["content-length"] {
            guard let n = Int(text), n >= 0 else { return .reject(400, "Content-Length \(text) is not a byte count") }
            length = n
        }
        if length > maxBodyBytes { return .reject(413, "the body is \(length) bytes, over the limit of \(maxBodyBytes) (--max-image-mb)") }
        let bodyStart = headEnd.upperBound
        while buffer.count - (bodyStart - buffer.startIndex) < length {
            guard receive(c, &buffer) else { return .reject(400, "the connection ended inside the body") }
        }
        let body = Data(buffer[bodyStart..<(bodyStart + length)])
        buffer = Data(buffer[(bodyStart + length)...])
        let target = String(parts[1])
        let (path, queryText) = target.firstIndex(of: "?").map { (String(target[..<$0]), String(target[target.index(after: $0)...])) } ?? (target, "")
        var query: [String: String] = [:]
        for pair in queryText.split(separator: "&") {
            let kv = pair.split(separator: "=", maxSplits: 1)
            query[String(kv[0]).removingPercentEncoding ?? String(kv[0])] = kv.count > 1 ? (String(kv[1]).removingPercentEncoding ?? String(kv[1])) : ""
        }
        return .request(Request(method: String(parts[0]), path: path, query: query, headers: headers, body: body))
    }

    /// Appends what the socket has; false at its end, on a timeout or an error.
    private func receive(_ c: Int32, _ buffer: inout Data) -> Bool {
        var chunk = [UInt8](repeating: 0, count: 64 << 10)
        let n = chunk.withUnsafeMutableBytes { recv(c, $0.baseAddress, $0.count, 0) }
        guard n > 0 else { return false }
        buffer.append(contentsOf: chunk[0..<n])
        return true
    }

    static let reasons = [200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 411: "Length Required",
                          413: "Content Too Large", 431: "Request Header Fields Too Large", 500: "Internal Server Error", 503: "Service Unavailable"]

    private func write(_ c: Int32, _ r: Response, keepAlive: Bool) {
        let head = "HTTP/1.1 \(r.status) \(Self.reasons[r.status] ?? "Status")\r\nContent-Type: \(r.contentType)\r\nContent-Length: \(r.body.count)\r\n"
            + "Connection: \(keepAlive ? "keep-alive" : "close")\r\n\r\n"
        var out = Data(head.utf8)
        out.append(r.body)
        out.withUnsafeBytes { raw in
            var sent = 0
            while sent < raw.count {
                let n = send(c, raw.baseAddress! + sent, raw.count - sent, Int32(MSG_NOSIGNAL))
                if n <= 0 { return }
                sent += n
            }
        }
    }
}
