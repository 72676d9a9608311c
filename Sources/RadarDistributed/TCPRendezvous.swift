import Foundation
import RadarCore
#if canImport(Glibc)
import Glibc
#endif

/// Helpers for starting the TCP transport.
public enum TCPRendezvous {
    /// A data listener on a free port of `host` (default: every interface): (fd, port).
    public static func listen(host: String = "0.0.0.0") throws -> (Int32, Int) { try Sockets.listen(host: host, port: 0) }

    /// The local address this host uses to reach host:port (what peers should dial): IPv4 or
    /// IPv6 as the coordinator's address is.
    public static func localAddress(towards host: String, port: Int) throws -> String {
        let addr = try Sockets.address(host, port)
        let fd = socket(addr.family, Int32(SOCK_DGRAM.rawValue), 0)
        defer { close(fd) }
        _ = addr.withSockaddr { connect(fd, $0, $1) }
        let s = SocketAddress.reading { getsockname(fd, $0, $1) }?.host ?? ""
        switch s {
        case "", "0.0.0.0": return addr.family == AF_INET6 ? "::1" : "127.0.0.1"
        case "::": return "::1"
        default: return s
        }
    }

    /// A free TCP port on this host for a coordinator the ranks are told to reach (launchers).
    /// It is taken below the kernel's ephemeral range (`ip_local_port_range`), from which every
    /// automatic port comes (a data listener's bind to port 0, an outgoing connection's source
    /// port): a port from that range could be handed to another rank's socket between this check
    /// and rank 0's bind (CI saw `cannot listen on 0.0.0.0:P: Address already in use`). Checked
    /// free on every interface; from the ephemeral range only where nothing below it is free.
    public static func freePort() throws -> Int {
        let range = (try? String(contentsOfFile: "/proc/sys/net/ipv4/ip_local_port_range", encoding: .utf8))?
            .split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }).compactMap { Int($0) }
        let ephemeralLow = range?.first ?? 32768
        if ephemeralLow > 11_024 {
            for _ in 0..<200 {
                let port = Int.random(in: 10_000..<ephemeralLow)
                if let (fd, _) = try? Sockets.listen(host: "0.0.0.0", port: port) {
                    close(fd)
                    return port
                }
            }
        }
        let (fd, port) = try Sockets.listen(host: "127.0.0.1", port: 0)
        close(fd)
        return port
    }
}
