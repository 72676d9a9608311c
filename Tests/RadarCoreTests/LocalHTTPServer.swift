import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A minimal HTTP/1.1 server on 127.0.0.1 for download tests: serves byte blobs by path, honours
/// `Range: bytes=N-`, can answer the first requests with 503, and can cut a body short
/// (an interrupted download), redirects a path elsewhere (as the Hugging Face Hub sends a file to
/// its storage), and answers HEAD with the headers alone. Records every request's headers.
final class LocalHTTPServer: @unchecked Sendable {
    let port: UInt16
    private let fd: Int32
    private let lock = NSLock()
    private var files: [String: Data] = [:]
    private var extraHeaders: [String: String] = [:]
    private var redirects: [String: (location: String, headers: String)] = [:]
    private var failuresLeft = 0
    private var failure = (status: "503 Service Unavailable", headers: "")
    private var cutAfter: Int?
    private(set) var requests: [(path: String, headers: [String: String])] = []
    private var thread: Thread?
    private var stopped = false  // under `lock`
    private let finished = DispatchSemaphore(value: 0)

    init() throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = 0
        let bound = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard bound == 0, listen(fd, 16) == 0 else { throw NSError(domain: "LocalHTTPServer", code: Int(errno)) }
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        port = UInt16(bigEndian: addr.sin_port)
        self.fd = fd
        let t = Thread { [unowned self] in self.serve() }
        thread = t
        t.start()
    }

    var base: String { "http://127.0.0.1:\(port)" }

    func put(_ path: String, _ data: Data, header: String? = nil) {
        lock.lock(); files[path] = data; if let header { extraHeaders[path] = header }; lock.unlock()
    }
    /// `path` answers 302 to `location`, with `headers` (lines joined by CRLF).
    func redirect(_ path: String, to location: String, headers: String) {
        lock.lock(); redirects[path] = (location, headers); lock.unlock()
    }
    /// The next `n` requests answered with `status` (and `headers`, "Name: value" lines).
    func failNext(_ n: Int, status: String = "503 Service Unavailable", headers: String = "") {
        lock.lock(); failuresLeft = n; failure = (status, headers); lock.unlock()
    }
    func cutNextBody(after bytes: Int) { lock.lock(); cutAfter = bytes; lock.unlock() }

    /// Stops accepting and closes the socket once the serving thread has left `accept` (closing
    /// under it could hand it a reused descriptor); a connection that hangs is given 5 s.
    func stop() {
        lock.lock(); let already = stopped; stopped = true; lock.unlock()
        if already { return }
        shutdown(fd, Int32(SHUT_RDWR))
        _ = finished.wait(timeout: .now() + 5)
        close(fd)
    }

    private var isStopped: Bool { lock.lock(); defer { lock.unlock() }; return stopped }

    private func serve() {
        defer { finished.signal() }
        while !isStopped {
            let c = accept(fd, nil, nil)
            if c < 0 { return }
            handle(c)
            close(c)
        }
    }

    private func handle(_ c: Int32) {
        var buf = [UInt8](repeating: 0, count: 65536)
        var got = 0
        while got < buf.count {
            let n = recv(c, &buf[got], buf.count - got, 0)
            if n <= 0 { return }
            got += n
            if String(decoding: buf[0..<got], as: UTF8.self).contains("\r\n\r\n") { break }
        }
        let text = String(decoding: buf[0..<got], as: UTF8.self)
        let lines = text.components(separatedBy: "\r\n")
        let parts = lines.first?.split(separator: " ") ?? []
        let path = parts.count > 1 ? String(parts[1]) : "/"
        let head = parts.first == "HEAD"
        var headers: [String: String] = [:]
        for l in lines.dropFirst() { if let i = l.firstIndex(of: ":") { headers[l[..<i].lowercased()] = l[l.index(after: i)...].trimmingCharacters(in: .whitespaces) } }
        lock.lock()
        requests.append((path, headers))
        let fail = failuresLeft > 0
        if fail { failuresLeft -= 1 }
        let body = files[path]
        let headerLine = extraHeaders[path].map { $0 + "\r\n" } ?? ""
        let cut = cutAfter
        let moved = redirects[path]
        let failure = self.failure
        if body != nil && !fail { cutAfter = nil }
        lock.unlock()
        func send(_ s: String) { _ = s.withCString { Glibc.send(c, $0, strlen($0), Int32(MSG_NOSIGNAL)) } }
        if fail {
            send("HTTP/1.1 \(failure.status)\r\n" + (failure.headers.isEmpty ? "" : failure.headers + "\r\n") + "Content-Length: 0\r\nConnection: close\r\n\r\n")
            return
        }
        if let moved {
            send("HTTP/1.1 302 Found\r\nLocation: \(moved.location)\r\n\(moved.headers)\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        }
        guard let body else { send("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"); return }
        var start = 0
        var status = "200 OK"
        var extra = ""
        if let r = headers["range"], r.hasPrefix("bytes="), let s = Int(r.dropFirst(6).prefix { $0 != "-" }) {
            if s >= body.count {
                send("HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */\(body.count)\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            }
            start = s
            status = "206 Partial Content"
            extra = "Content-Range: bytes \(s)-\(body.count - 1)/\(body.count)\r\n"
        }
        let slice = body[start...]
        send("HTTP/1.1 \(status)\r\nContent-Length: \(slice.count)\r\n\(extra)\(headerLine)Connection: close\r\n\r\n")
        if head { return }
        let toSend = cut.map { min($0, slice.count) } ?? slice.count
        slice.prefix(toSend).withUnsafeBytes { raw in
            var off = 0
            while off < raw.count {
                let n = Glibc.send(c, raw.baseAddress! + off, raw.count - off, Int32(MSG_NOSIGNAL))
                if n <= 0 { break }
                off += n
            }
        }
    }
}
