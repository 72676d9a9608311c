import Foundation

/// A TCP rank's way into its job: rank 0 hosts the coordinator (unless one runs elsewhere), every
/// rank registers there, learns its peers' data addresses and connects the data mesh. Shared by
/// `radar-worker --transport tcp` and `radar bench allreduce --transport tcp`. Ring neighbours on
/// one host then talk through shared memory (`TCPCommunicator.connectSharedMemory`;
/// `RADAR_SHM_DISABLE=1` keeps them on TCP, `RADAR_SHM_BYTES` sizes each direction's ring), and
/// a job over several hosts of several ranks each all-reduces in two levels
/// (`HierarchicalAllReduce`; `RADAR_HIERARCHICAL_ALLREDUCE=0`: one ring).
public struct TCPJob {
    public let communicator: TCPCommunicator
    public let client: CoordinatorClient
    /// The coordinator this process hosts (rank 0 without `--coordinator`).
    public let server: CoordinatorServer?

    /// `hostCoordinator`: rank 0 starts the coordinator at the launch port. `bindAll`: listen for
    /// peers on every interface instead of only the one that reaches the coordinator.
    public static func connect(_ launch: LaunchEnvironment, token: Data, hostCoordinator: Bool, timeout: TimeInterval,
                               rendezvousTimeout: TimeInterval, heartbeatDeadline: TimeInterval, bindAll: Bool = false,
                               log: @escaping @Sendable (String) -> Void) throws -> TCPJob {
        let (r, n, host, port) = (launch.rank, launch.worldSize, launch.host, launch.port)
        var server: CoordinatorServer?
        if hostCoordinator && r == 0 {
            let s = try CoordinatorServer(host: "0.0.0.0", port: port, worldSize: n, token: token)
            s.heartbeatDeadline = heartbeatDeadline
            s.rendezvousDeadline = rendezvousTimeout
            s.log = log
            server = s
            log("coordinator for \(n) ranks on port \(port) (\(launch.launcher))")
        }
        // The data listener binds only the address this host uses to reach the coordinator.
        let dataHost = try TCPRendezvous.localAddress(towards: host, port: port)
        let (listenFD, dataPort) = try TCPRendezvous.listen(host: bindAll ? "0.0.0.0" : dataHost)
        let client = try CoordinatorClient(host: host, port: port, token: token, rank: r, worldSize: n, dataHost: dataHost, dataPort: dataPort,
                                           timeout: timeout, rendezvousTimeout: rendezvousTimeout)
        let comm = try TCPCommunicator(rank: r, size: n, token: token, listenFD: listenFD, peers: client.peers, timeout: timeout)
        let env = ProcessInfo.processInfo.environment
        try comm.connectSharedMemory(peers: client.peers, enabled: env["RADAR_SHM_DISABLE"] != "1",
                                     capacity: env["RADAR_SHM_BYTES"].flatMap(Int.init).map { max($0, 4096) })
        try comm.agreeOnHostGroups(peers: client.peers, enabled: env["RADAR_HIERARCHICAL_ALLREDUCE"] != "0")
        try client.start()
        return TCPJob(communicator: comm, client: client, server: server)
    }
}
