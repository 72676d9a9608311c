import Foundation
import RadarCore
#if canImport(Glibc)
import Glibc
#endif

/// Thin POSIX socket helpers shared by the TCP transport and the coordinator. Every `deadline`
/// here (and in `Wire`, the communicators and the coordinator) is a `monotonicNow()` time: a
/// wall-clock `Date()` passed in is decades ahead of the monotonic clock and never comes.
enum Sockets {
    struct SocketError: Error, CustomStringConvertible {
        let reason: String
        /// The errno of a failed connect, where that is what failed.
        var code: Int32? = nil
        var description: String { reason }
    }

    /// `host` (a name, dotted IPv4, or IPv6 with or without brackets and a `%scope`) and `port`
    /// as an address: a name with both kinds of address resolves to its IPv4 one.
    static func address(_ host: String, _ port: Int) throws -> SocketAddress {
        guard (0...65535).contains(port) else { throw SocketError(reason: "port \(port) of \(host) is not in 0...65535") }
        let h = bareHost(host) == "localhost" ? "127.0.0.1" : bareHost(host)
        if let a = SocketAddress.numeric(h, port: port) { return a }
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var res: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(h, nil, &hints, &res) == 0, res != nil else { throw SocketError(reason: "cannot resolve host \(host)") }
        defer { freeaddrinfo(res) }
        var candidates: [UnsafeMutablePointer<addrinfo>] = []
        var p = res
        while let r = p { candidates.append(r); p = r.pointee.ai_next }
        guard let pick = candidates.first(where: { $0.pointee.ai_family == AF_INET }) ?? candidates.first(where: { $0.pointee.ai_family == AF_INET6 }),
              let sa = pick.pointee.ai_addr else { throw SocketError(reason: "cannot resolve host \(host) to an IPv4 or IPv6 address") }
        var a = SocketAddress(copying: sa, length: pick.pointee.ai_addrlen)
        a.port = port
        return a
    }

    /// Every interface's wildcard: "0.0.0.0", "::", "*" or "".
    static func isWildcard(_ host: String) -> Bool { ["0.0.0.0", "::", "[::]", "*", ""].contains(host) }

    /// A listening socket on host:port (port 0: any free port); returns (fd, bound port). On every
    /// interface (a wildcard host) it is one dual-stack IPv6 socket that takes IPv4 peers too,
    /// or an IPv4 one where the machine has IPv6 off.
    static func listen(host: String, port: Int) throws -> (Int32, Int) {
        func failed(_ e: SocketAddress.Failure) -> SocketError { SocketError(reason: "cannot listen on \(hostPortText(host, port)): \(e.text)") }
        if isWildcard(host) {
            switch SocketAddress.numeric("::", port: port)!.listening(dualStack: true) {
            case .success(let r): return r
            case .failure(let e) where e.code == EADDRINUSE: throw failed(e)
            case .failure: break  // no IPv6 here: IPv4 alone
            }
            return try SocketAddress.numeric("0.0.0.0", port: port)!.listening().mapError(failed).get()
        }
        return try address(host, port).listening().mapError(failed).get()
    }

    /// Connects with retries until `deadline` (the peer may not be listening yet).
    /// `retrying`: a refused connection is tried again until `deadline` (a rank whose
    /// coordinator is still starting); false: said at once (a status query).
    static func connect(host: String, port: Int, deadline: Date, retrying: Bool = true) throws -> Int32 {
        var addr = try address(host, port)
        while true {
            let (fd, failure) = attempt(&addr, until: deadline)
            if let fd { return fd }
            if monotonicNow() > deadline || (!retrying && failure == ECONNREFUSED) {
                throw SocketError(reason: "cannot connect to \(hostPortText(host, port)): \(String(cString: strerror(failure)))", code: failure)
            }
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
                let (fd, failure) = attempt(&addrs[i], until: min(deadline, monotonicNow().addingTimeInterval(attemptSeconds)))
                if let fd { return (fd, hosts[i]) }
                last[i] = failure
            }
            if monotonicNow() > deadline {
                let tried = hosts.indices.map { "\(hosts[$0]) (\(String(cString: strerror(last[$0]))))" }.joined(separator: ", ")
                throw SocketError(reason: "cannot connect to port \(port) at any of \(tried)")
            }
            usleep(50_000)
        }
    }

    /// One non-blocking connect polled until `deadline` (a blocking connect to a host that drops
    /// packets waited the kernel's SYN timeout, about 2 minutes, past any deadline): the tuned
    /// blocking socket, or nil and the errno.
    private static func attempt(_ addr: inout SocketAddress, until deadline: Date) -> (Int32?, Int32) {
        let fd = socket(addr.family, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return (nil, errno) }
        setNonBlocking(fd, true)
        var rc = addr.withSockaddr { Glibc.connect(fd, $0, $1) }
        var failure = rc == 0 ? 0 : errno
        if rc != 0 && failure == EINPROGRESS {
            var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            let r = poll(&p, 1, Int32(max(0, min(Double(Int32.max), deadline.monotonicSecondsLeft * 1000))))
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

    /// An interface's address and netmask, IPv4 (4 bytes) or IPv6 (16), in network order.
    struct Interface: Equatable {
        let text: String
        let address: [UInt8]
        let netmask: [UInt8]

        /// An IPv4 one from host-order words (tests).
        static func v4(_ text: String, _ address: UInt32, _ netmask: UInt32) -> Interface {
            Interface(text: text, address: withUnsafeBytes(of: address.bigEndian, Array.init), netmask: withUnsafeBytes(of: netmask.bigEndian, Array.init))
        }
    }

    /// The bytes of a numeric IPv4 or IPv6 address, or nil.
    static func numeric(_ text: String) -> [UInt8]? {
        var a4 = in_addr(), a6 = in6_addr()
        if inet_pton(AF_INET, text, &a4) == 1 { return withUnsafeBytes(of: a4, Array.init) }
        if inet_pton(AF_INET6, bareHost(text), &a6) == 1 { return withUnsafeBytes(of: a6, Array.init) }
        return nil
    }

    /// This machine's interface addresses that are up, loopback and IPv6 link-local (fe80::/10,
    /// which needs a scope to dial) left out: IPv4 first, then IPv6, each in the kernel's order.
    static func interfaceAddresses() -> [Interface] {
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0 else { return [] }
        defer { freeifaddrs(list) }
        var v4: [Interface] = [], v6: [Interface] = []
        var p = list
        while let a = p {
            defer { p = a.pointee.ifa_next }
            guard let sa = a.pointee.ifa_addr, let nm = a.pointee.ifa_netmask,
                  (a.pointee.ifa_flags & UInt32(IFF_UP)) != 0, (a.pointee.ifa_flags & UInt32(IFF_LOOPBACK)) == 0 else { continue }
            var buf = [CChar](repeating: 0, count: 64)
            if sa.pointee.sa_family == sa_family_t(AF_INET) {
                var sin = sa.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee.sin_addr }
                let mask = nm.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee.sin_addr }
                inet_ntop(AF_INET, &sin, &buf, 64)
                v4.append(Interface(text: String(cString: buf), address: withUnsafeBytes(of: sin, Array.init), netmask: withUnsafeBytes(of: mask, Array.init)))
            } else if sa.pointee.sa_family == sa_family_t(AF_INET6) {
                var sin6 = sa.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { $0.pointee.sin6_addr }
                let mask = nm.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { $0.pointee.sin6_addr }
                let bytes = withUnsafeBytes(of: sin6, Array.init)
                guard !(bytes[0] == 0xFE && bytes[1] & 0xC0 == 0x80) else { continue }
                inet_ntop(AF_INET6, &sin6, &buf, 64)
                v6.append(Interface(text: String(cString: buf), address: bytes, netmask: withUnsafeBytes(of: mask, Array.init)))
            }
        }
        return v4 + v6
    }

    /// `candidates` (numeric addresses of another machine) in the order to try them from this
    /// one: those on a subnet of one of `mine` first, then the rest, each group in its given
    /// order; an address that is one of `mine` (a bridge every host has, docker0's 172.17.0.1)
    /// names this machine, not the other, and is left out.
    static func reachableFirst(_ candidates: [String], mine: [Interface]) -> [String] {
        let candidates = candidates.filter { c in
            let bytes = numeric(c)
            return !mine.contains { m in m.text == c || bytes == m.address }
        }
        func onMySubnet(_ c: String) -> Bool {
            guard let v = numeric(c) else { return false }
            return mine.contains { m in
                m.address.count == v.count && m.netmask.contains { $0 != 0 }
                    && zip(zip(m.address, m.netmask), v).allSatisfy { ($0.0 & $0.1) == ($1 & $0.1) }
            }
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

    /// Accepts one connection before `deadline`, or nil. Throws where accepting fails for a
    /// reason that waiting does not mend: the limit on open files (the connection stays pending
    /// and poll says the listener is readable again at once: the loop spun until the deadline,
    /// and a rank then said the others "never connected"), or a listener shut down.
    static func accept(_ fd: Int32, deadline: Date) throws -> Int32? {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        while true {
            let ms = Int32(max(0, min(1000, deadline.monotonicSecondsLeft * 1000)))
            if poll(&p, 1, ms) > 0 {
                let c = Glibc.accept(fd, nil, nil)
                if c >= 0 { tune(c); return c }
                let code = errno
                if code == ENOBUFS || code == ENOMEM {
                    usleep(10_000)
                } else if !acceptMayBeRetried(code) {
                    throw SocketError(reason: "cannot accept a connection: \(OpenFileLimit.reason(code))")
                }
            }
            if monotonicNow() > deadline { return nil }
        }
    }

    /// The remote address of a connected socket, as HOST:PORT ([IPv6]:PORT; for logs).
    static func peerName(_ fd: Int32) -> String {
        guard let a = SocketAddress.reading({ getpeername(fd, $0, $1) }) else { return "an unknown address" }
        return hostPortText(a.host, a.port)
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
            let ms = Int32(max(0, min(1000, deadline.monotonicSecondsLeft * 1000)))
            let r = poll(&p, 1, ms)
            if r == 0 { if monotonicNow() > deadline { throw SocketError(reason: "timed out") } else { continue } }
            let n = out.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + got, count - got, 0) }
            if n <= 0 { throw SocketError(reason: "connection closed") }
            got += n
        }
        return out
    }
}
