import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A socket address, IPv4 or IPv6 (with its scope for a link-local one): what the HTTP service
/// and the distributed transport bind, dial and log.
public struct SocketAddress {
    public var storage = sockaddr_storage()
    public var length: socklen_t = 0
    public var family: Int32 { Int32(storage.ss_family) }

    public init() {}

    /// A numeric IPv4 or IPv6 host (brackets allowed; no names) and a port, or nil.
    public static func numeric(_ host: String, port: Int) -> SocketAddress? {
        let h = bareHost(host)
        var a = SocketAddress()
        var a4 = sockaddr_in(), a6 = sockaddr_in6()
        if inet_pton(AF_INET, h, &a4.sin_addr) == 1 {
            a4.sin_family = sa_family_t(AF_INET)
            withUnsafeMutablePointer(to: &a.storage) { $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee = a4 } }
            a.length = socklen_t(MemoryLayout<sockaddr_in>.size)
        } else if inet_pton(AF_INET6, h, &a6.sin6_addr) == 1 {
            a6.sin6_family = sa_family_t(AF_INET6)
            withUnsafeMutablePointer(to: &a.storage) { $0.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { $0.pointee = a6 } }
            a.length = socklen_t(MemoryLayout<sockaddr_in6>.size)
        } else {
            return nil
        }
        a.port = port
        return a
    }

    /// From a resolver's answer (`getaddrinfo`'s `ai_addr` and `ai_addrlen`).
    public init(copying sa: UnsafePointer<sockaddr>, length: socklen_t) {
        withUnsafeMutableBytes(of: &storage) { $0.copyMemory(from: UnsafeRawBufferPointer(start: sa, count: Int(length))) }
        self.length = length
    }

    public func withSockaddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        withUnsafePointer(to: storage) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, length) } }
    }

    /// From what `getsockname` or `getpeername` fills in; nil where it failed.
    public static func reading(_ fill: (UnsafeMutablePointer<sockaddr>, UnsafeMutablePointer<socklen_t>) -> Int32) -> SocketAddress? {
        var a = SocketAddress()
        a.length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &a.storage) { p in p.withMemoryRebound(to: sockaddr.self, capacity: 1) { fill($0, &a.length) } }
        return rc == 0 ? a : nil
    }

    public var port: Int {
        get {
            withSockaddr { p, _ in
                family == AF_INET6
                    ? p.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { Int(UInt16(bigEndian: $0.pointee.sin6_port)) }
                    : p.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { Int(UInt16(bigEndian: $0.pointee.sin_port)) }
            }
        }
        set {
            let v = in_port_t(UInt16(newValue).bigEndian), six = family == AF_INET6
            withUnsafeMutablePointer(to: &storage) { st in
                if six {
                    st.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { $0.pointee.sin6_port = v }
                } else {
                    st.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee.sin_port = v }
                }
            }
        }
    }

    /// The numeric host: dotted IPv4, or IPv6 text (an IPv4-mapped one, ::ffff:a.b.c.d, as the
    /// IPv4 address: what a dual-stack listener sees of an IPv4 peer).
    public var host: String {
        var buf = [CChar](repeating: 0, count: 64)
        withSockaddr { p, _ in
            if family == AF_INET6 {
                var a6 = p.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { $0.pointee.sin6_addr }
                _ = inet_ntop(AF_INET6, &a6, &buf, 64)
            } else {
                var a4 = p.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee.sin_addr }
                _ = inet_ntop(AF_INET, &a4, &buf, 64)
            }
        }
        let text = String(cString: buf)
        return text.hasPrefix("::ffff:") && text.dropFirst(7).contains(".") ? String(text.dropFirst(7)) : text
    }

    /// An errno from setting up a socket.
    public struct Failure: Error {
        public let code: Int32
        public var text: String { String(cString: strerror(code)) }
    }

    /// A TCP socket bound to this address and listening (close-on-exec; an IPv6 one with
    /// `dualStack` takes IPv4 peers too): (fd, bound port).
    public func listening(dualStack: Bool = false) -> Result<(Int32, Int), Failure> {
        let fd = socket(family, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return .failure(Failure(code: errno)) }
        var one: Int32 = 1, zero: Int32 = 0
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        if dualStack && family == AF_INET6 { setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &zero, socklen_t(MemoryLayout<Int32>.size)) }
        guard withSockaddr({ bind(fd, $0, $1) }) == 0, listen(fd, 128) == 0 else {
            let e = errno
            close(fd)
            return .failure(Failure(code: e))
        }
        return .success((fd, SocketAddress.reading { getsockname(fd, $0, $1) }?.port ?? 0))
    }
}

/// `host` without the brackets of `[IPv6]`.
public func bareHost(_ host: String) -> String {
    host.hasPrefix("[") && host.hasSuffix("]") && host.count > 2 ? String(host.dropFirst().dropLast()) : host
}

/// HOST:PORT as written back: an IPv6 host in brackets.
public func hostPortText(_ host: String, _ port: Int) -> String {
    host.contains(":") && !host.hasPrefix("[") ? "[\(host)]:\(port)" : "\(host):\(port)"
}
