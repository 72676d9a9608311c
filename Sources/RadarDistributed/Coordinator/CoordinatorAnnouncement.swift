import Foundation

/// What rank 0 of an mpirun job tells the other ranks, over MPI, about the coordinator it runs:
/// its port, a fresh job token, its host name and its machine's addresses (IPv4, then IPv6). A rank on rank
/// 0's host (the same `MPIRuntime.hostName`) logs in over loopback; a rank on another host tries
/// rank 0's addresses, those on a subnet of one of its own interfaces first (`hosts(from:)`),
/// where a coordinator at 127.0.0.1 would have been its own machine.
public struct CoordinatorAnnouncement: Equatable {
    public var port: Int
    public var token: String
    public var addresses: [String]
    public var hostName: String

    public init(port: Int, token: String, addresses: [String] = CoordinatorAnnouncement.machineAddresses(), hostName: String) {
        self.port = port
        self.token = token
        self.addresses = addresses
        self.hostName = hostName
    }

    /// This machine's addresses that are up, loopback and IPv6 link-local left out: IPv4 then
    /// IPv6, each as the kernel lists them.
    public static func machineAddresses() -> [String] { Sockets.interfaceAddresses().map(\.text) }

    /// One line: `PORT TOKEN ADDR,ADDR,... HOSTNAME` (`-` for no address; the host name last,
    /// as it is free text).
    public var encoded: String {
        "\(port) \(token) \(addresses.isEmpty ? "-" : addresses.prefix(32).joined(separator: ",")) \(hostName)"
    }

    public init?(encoded text: String) {
        let parts = text.split(separator: " ", maxSplits: 3, omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 4, let port = Int(parts[0]), (1...65535).contains(port), !parts[1].isEmpty else { return nil }
        self.port = port
        token = parts[1]
        addresses = parts[2] == "-" ? [] : parts[2].split(separator: ",").map(String.init)
        hostName = parts[3]
    }

    /// Where a rank on host `myHost` tries to reach the coordinator, in order.
    public func hosts(from myHost: String) -> [String] { hosts(from: myHost, mine: Sockets.interfaceAddresses()) }

    /// The same, given this machine's interfaces.
    func hosts(from myHost: String, mine: [Sockets.Interface]) -> [String] {
        guard myHost != hostName else { return ["127.0.0.1"] }
        let order = Sockets.reachableFirst(addresses, mine: mine)
        return order.isEmpty ? ["127.0.0.1"] : order
    }
}
