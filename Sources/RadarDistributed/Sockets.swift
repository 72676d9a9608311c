import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Thin POSIX socket helpers shared by the TCP transport and the coordinator.
enum Sockets {
    struct SocketError: Error, CustomStringConvertible {
        let reason: String
        var description: String { reason }
    }

    static func address(_ host: String, _ port: Int) throws -> sockaddr_in {
        guard (0...65535).contains(port) else { throw SocketError(reason: "port \(port) of \(host) is not in 0...65535") }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        var resolved = host
        if host == "localhost" { resolved = "127.0.0.1" }
        if inet_pton(AF_INET, resolved, &addr.sin_addr) != 1 {
            var hints = addrinfo()
            hints.ai_family = AF_INET
            var res: UnsafeMutablePointer<addrinfo>?
            guard getaddrinfo(host, nil, &hints, &res) == 0, let r = res else { throw SocketError(reason: "cannot resolve host \(host)") }
            defer { freeaddrinfo(res) }
            addr.sin_addr = r.pointee.ai_addr.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee.sin_addr }
        }
        return addr
    }

    /// A listening socket on host:port (port 0: any free port); returns (fd, bound port).
    static func listen(host: String, port: Int) throws -> (Int32, Int) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw SocketError(reason: "socket: \(String(cString: strerror(errno)))") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var addr = try address(host, port)
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard rc == 0, Glibc.listen(fd, 128) == 0 else {
            close(fd)
            throw SocketError(reason: "cannot listen on \(host):\(port): \(String(cString: strerror(errno)))")
        }
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        return (fd, Int(UInt16(bigEndian: addr.sin_port)))
    }

    /// Connects with retries until `deadline` (the peer may not be listening yet).
    static func connect(host: String, port: Int, deadline: Date) throws -> Int32 {
        var addr = try address(host, port)
        while true {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            // Non-blocking, then polled until the deadline: a blocking connect to a host that
            // drops packets waited the kernel's SYN timeout (about 2 minutes) past any deadline.
            setNonBlocking(fd, true)
            var rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            var failure = rc == 0 ? 0 : errno
            if rc != 0 && failure == EINPROGRESS {
                var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                let r = poll(&p, 1, Int32(max(0, min(Double(Int32.max), deadline.timeIntervalSinceNow * 1000))))
                if r > 0 {
                    var err: Int32 = 0
                    var len = socklen_t(MemoryLayout<Int32>.size)
                    getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len)
                    (rc, failure) = err == 0 ? (0, 0) : (-1, err)
                } else {
                    failure = r == 0 ? ETIMEDOUT : errno
                }
            }
            if rc == 0 { setNonBlocking(fd, false); tune(fd); return fd }
            close(fd)
            if Date() > deadline { throw SocketError(reason: "cannot connect to \(host):\(port): \(String(cString: strerror(failure)))") }
            usleep(50_000)
        }
    }

    /// TCP_NODELAY and large buffers.
    static func tune(_ fd: Int32) {
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        var size: Int32 = 4 << 20
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
    }

    static func setNonBlocking(_ fd: Int32, _ on: Bool) {
        let flags = fcntl(fd, F_GETFL, 0)
        _ = fcntl(fd, F_SETFL, on ? flags | O_NONBLOCK : flags & ~O_NONBLOCK)
    }

    /// Accepts one connection before `deadline`, or nil.
    static func accept(_ fd: Int32, deadline: Date) -> Int32? {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        while true {
            let ms = Int32(max(0, min(1000, deadline.timeIntervalSinceNow * 1000)))
            if poll(&p, 1, ms) > 0 {
                let c = Glibc.accept(fd, nil, nil)
                if c >= 0 { tune(c); return c }
            }
            if Date() > deadline { return nil }
        }
    }

    /// The remote address of a connected socket, as HOST:PORT (for logs).
    static func peerName(_ fd: Int32) -> String {
        var addr = sockaddr_in()
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let rc = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(fd, $0, &len) } }
        guard rc == 0 else { return "an unknown address" }
        var buf = [CChar](repeating: 0, count: 64)
        inet_ntop(AF_INET, &addr.sin_addr, &buf, 64)
        return "\(String(cString: buf)):\(UInt16(bigEndian: addr.sin_port))"
    }

    /// Writes all bytes (blocking socket) or throws.
    static func writeAll(_ fd: Int32, _ data: UnsafeRawBufferPointer) throws {
        var off = 0
        while off < data.count {
            let n = Glibc.send(fd, data.baseAddress! + off, data.count - off, Int32(MSG_NOSIGNAL))
            if n <= 0 { throw SocketError(reason: "connection lost while sending") }
            off += n
        }
    }

    /// Reads exactly `count` bytes before `deadline` or throws.
    static func readExactly(_ fd: Int32, _ count: Int, deadline: Date) throws -> Data {
        var out = Data(count: count)
        var got = 0
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        while got < count {
            let ms = Int32(max(0, min(1000, deadline.timeIntervalSinceNow * 1000)))
            let r = poll(&p, 1, ms)
            if r == 0 { if Date() > deadline { throw SocketError(reason: "timed out") } else { continue } }
            let n = out.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + got, count - got, 0) }
            if n <= 0 { throw SocketError(reason: "connection closed") }
            got += n
        }
        return out
    }
}
