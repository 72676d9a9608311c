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
            let (fd, failure) = attempt(&addr, until: deadline)
            if let fd { return fd }
            if Date() > deadline { throw SocketError(reason: "cannot connect to \(host):\(port): \(String(cString: strerror(failure)))") }
            usleep(50_000)
        }
    }

    /// Connects to the first of `hosts` that takes the connection, trying them in turn (each
    /// attempt waits at most `attemptSeconds`, so an address that drops packets does not hold
    /// the others) until `deadline`; returns the socket and the host it reached. The error
    /// names every address and what each answered last.
    static func connect(hosts: [String], port: Int, deadline: Date, attemptSeconds: TimeInterval = 1) throws -> (Int32, String) {
        precondition(!hosts.isEmpty)
        if hosts.count == 1 { return (try connect(host: hosts[0], port: port, deadline: deadline), hosts[0]) }
        var addrs = try hosts.map { try address($0, port) }
        var last = [Int32](repeating: 0, count: hosts.count)
        while true {
            for i in hosts.indices {
                let (fd, failure) = attempt(&addrs[i], until: min(deadline, Date().addingTimeInterval(attemptSeconds)))
                if let fd { return (fd, hosts[i]) }
                last[i] = failure
            }
            if Date() > deadline {
                let tried = hosts.indices.map { "\(hosts[$0]) (\(String(cString: strerror(last[$0]))))" }.joined(separator: ", ")
                throw SocketError(reason: "cannot connect to port \(port) at any of \(tried)")
            }
            usleep(50_000)
        }
    }

    /// One non-blocking connect polled until `deadline` (a blocking connect to a host that drops
    /// packets waited the kernel's SYN timeout, about 2 minutes, past any deadline): the tuned
    /// blocking socket, or nil and the errno.
    private static func attempt(_ addr: inout sockaddr_in, until deadline: Date) -> (Int32?, Int32) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return (nil, errno) }
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
        if rc == 0 { setNonBlocking(fd, false); tune(fd); return (fd, 0) }
        close(fd)
        return (nil, failure)
    }

    /// This machine's IPv4 interface addresses that are up, loopback left out: (dotted address,
    /// address and netmask in host order), in the order the kernel lists them.
    static func interfaceAddresses() -> [(text: String, address: UInt32, netmask: UInt32)] {
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0 else { return [] }
        defer { freeifaddrs(list) }
        var out: [(String, UInt32, UInt32)] = []
        var p = list
        while let a = p {
            defer { p = a.pointee.ifa_next }
            guard let sa = a.pointee.ifa_addr, sa.pointee.sa_family == sa_family_t(AF_INET), let nm = a.pointee.ifa_netmask,
                  (a.pointee.ifa_flags & UInt32(IFF_UP)) != 0, (a.pointee.ifa_flags & UInt32(IFF_LOOPBACK)) == 0 else { continue }
            var sin = sa.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee }
            let mask = nm.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { UInt32(bigEndian: $0.pointee.sin_addr.s_addr) }
            var buf = [CChar](repeating: 0, count: 64)
            inet_ntop(AF_INET, &sin.sin_addr, &buf, 64)
            out.append((String(cString: buf), UInt32(bigEndian: sin.sin_addr.s_addr), mask))
        }
        return out.map { (text: $0.0, address: $0.1, netmask: $0.2) }
    }

    /// `candidates` (dotted IPv4 addresses of another machine) in the order to try them from
    /// this one: those on a subnet of one of `mine` first, then the rest, each group in its
    /// given order; an address that is one of `mine` (a bridge every host has, docker0's
    /// 172.17.0.1) names this machine, not the other, and is left out.
    static func reachableFirst(_ candidates: [String], mine: [(text: String, address: UInt32, netmask: UInt32)]) -> [String] {
        let candidates = candidates.filter { c in !mine.contains { $0.text == c } }
        func onMySubnet(_ c: String) -> Bool {
            var a = in_addr()
            guard inet_pton(AF_INET, c, &a) == 1 else { return false }
            let v = UInt32(bigEndian: a.s_addr)
            return mine.contains { $0.netmask != 0 && ($0.address & $0.netmask) == (v & $0.netmask) }
        }
        return candidates.filter(onMySubnet) + candidates.filter { !onMySubnet($0) }
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
