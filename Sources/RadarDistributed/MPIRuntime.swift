import CMPI
import Foundation
import RadarCore

/// Errors from MPI calls, naming the call and the rank.
public struct MPIError: Error, CustomStringConvertible {
    public let call: String
    public let code: Int32
    public let rank: Int
    public var description: String { "rank \(rank): \(call) failed with MPI error \(code)" }
}

/// The process's MPI world (OpenMPI through CMPI) as a `Communicator`. Initialised with
/// MPI_Init_thread asking for MPI_THREAD_SERIALIZED (the gradient thread and the compute thread
/// never call MPI at the same time); the granted level is checked. Point-to-point calls are
/// non-blocking requests polled against a deadline, so no wait is unbounded.
public final class MPIRuntime: Communicator, @unchecked Sendable {
    public let rank: Int
    public let size: Int
    public let threadLevel: Int32
    public var timeout: TimeInterval = 60
    public var step = 0
    private let world: MPI_Comm
    /// The ranks by host where every rank agreed to reduce in two levels (`agreeOnHostGroups`).
    public private(set) var hostGroups: [[Int]]?
    public private(set) var twoLevels: HierarchicalAllReduce?

    /// Initialises MPI asking for `MPI_THREAD_SERIALIZED` (only one thread calls MPI at a time;
    /// the gradient thread of the distributed trainer needs no more).
    public init(initTimeout: TimeInterval = 600) throws {
        // Two TCP connections per pair of ranks on different hosts, unless the environment (or
        // mpirun's --mca, which arrives the same way) chooses: with OpenMPI's default of one, a
        // pair exchanging both ways moved half a 1 Gbit/s link on the simulated hosts (docs/distributed.md,
        // "Two levels"). Read by MPI_Init from this process's environment.
        setenv("OMPI_MCA_btl_tcp_links", MPIRuntime.defaultTCPLinks, 0)
        var argc: Int32 = 0
        var provided: Int32 = 0
        let required = radar_mpi_thread_serialized()
        // MPI_Init waits for every rank with no deadline of its own: a frozen or missing rank
        // would hold the others forever.
        let rc = Watchdog.run(seconds: initTimeout, "MPI_Init did not complete within \(Int(initTimeout)) s (a rank missing or frozen?); stopping") {
            MPI_Init_thread(&argc, nil, required, &provided)
        }
        guard rc == radar_mpi_success() else { throw MPIError(call: "MPI_Init_thread", code: rc, rank: -1) }
        world = radar_mpi_comm_world()
        var r: Int32 = 0, s: Int32 = 0
        MPI_Comm_rank(world, &r)
        MPI_Comm_size(world, &s)
        rank = Int(r)
        size = Int(s)
        threadLevel = provided
        guard provided >= required else {
            throw MPIError(call: "MPI_Init_thread (granted thread level \(provided) < requested \(required))", code: 0, rank: rank)
        }
    }

    public func sendRecv(_ send: UnsafeRawPointer, sendBytes: Int, to: Int,
                         _ recv: UnsafeMutableRawPointer, recvBytes: Int, from: Int, tag: Int) throws {
        var reqs: [MPI_Request?] = [nil, nil]
        var rc = MPI_Irecv(recv, Int32(recvBytes), radar_mpi_byte(), Int32(from), Int32(tag), world, &reqs[0])
        guard rc == radar_mpi_success() else { throw MPIError(call: "MPI_Irecv", code: rc, rank: rank) }
        rc = MPI_Isend(send, Int32(sendBytes), radar_mpi_byte(), Int32(to), Int32(tag), world, &reqs[1])
        guard rc == radar_mpi_success() else { throw MPIError(call: "MPI_Isend", code: rc, rank: rank) }
        try wait(&reqs[0], peer: from)
        try wait(&reqs[1], peer: to)
    }

    public func send(_ buffer: UnsafeRawPointer, bytes: Int, to: Int, tag: Int) throws {
        var req: MPI_Request?
        let rc = MPI_Isend(buffer, Int32(bytes), radar_mpi_byte(), Int32(to), Int32(tag), world, &req)
        guard rc == radar_mpi_success() else { throw MPIError(call: "MPI_Isend", code: rc, rank: rank) }
        try wait(&req, peer: to)
    }

    public func recv(_ buffer: UnsafeMutableRawPointer, bytes: Int, from: Int, tag: Int) throws {
        var req: MPI_Request?
        let rc = MPI_Irecv(buffer, Int32(bytes), radar_mpi_byte(), Int32(from), Int32(tag), world, &req)
        guard rc == radar_mpi_success() else { throw MPIError(call: "MPI_Irecv", code: rc, rank: rank) }
        try wait(&req, peer: from)
    }

    /// Polls a request until done or the deadline passes.
    private func wait(_ req: inout MPI_Request?, peer: Int) throws {
        let deadline = monotonicNow().addingTimeInterval(timeout)
        var flag: Int32 = 0
        var spins = 0
        while true {
            let rc = MPI_Test(&req, &flag, radar_mpi_status_ignore())
            guard rc == radar_mpi_success() else { throw MPIError(call: "MPI_Test", code: rc, rank: rank) }
            if flag != 0 { return }
            spins += 1
            // Spin (yielding the core) while transfers are quick; back off once a wait is long.
            if spins % 1024 == 0 {
                try CommunicationError.checkStop(rank: rank)
                if monotonicNow() > deadline {
                    throw CommunicationError(rank: rank, peer: peer, reason: "no progress for \(Int(timeout)) s (is rank \(peer) alive?)")
                }
                if spins > 1 << 20 { usleep(500) } else { sched_yield() }
            }
        }
    }

    /// `btl_tcp_links` where nothing sets it.
    public static let defaultTCPLinks = "2"

    /// This rank's host as the job's ranks tell hosts apart: `RADAR_HOST_NAME` where set (a
    /// launcher's per-host environment, or tests that simulate hosts on one machine), else
    /// `MPI_Get_processor_name` (the node's host name).
    public static func hostName(_ env: [String: String] = ProcessInfo.processInfo.environment) -> String {
        if let name = env["RADAR_HOST_NAME"], !name.isEmpty { return name }
        var buf = [CChar](repeating: 0, count: Int(MPI_MAX_PROCESSOR_NAME) + 1)
        var length: Int32 = 0
        guard MPI_Get_processor_name(&buf, &length) == radar_mpi_success() else { return ProcessInfo.processInfo.hostName }
        return String(decoding: buf.prefix(Int(length)).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// As `TCPCommunicator.agreeOnHostGroups`, for an mpirun job: reduce in two levels
    /// (`HierarchicalAllReduce`: the host's ranks through MPI's shared memory, one ring of hosts
    /// per local index over the network) where the job spans at least 2 hosts with the same
    /// number (at least 2) of ranks each, unless a rank refuses (`enabled` false:
    /// `RADAR_HIERARCHICAL_ALLREDUCE=0`). The ranks exchange their host names (`hostName`; the
    /// first 255 bytes) and agree by a MAX all-reduce of their refusals, so every rank builds the
    /// same groups or none does. Returns the algorithm for the log.
    @discardableResult
    public func agreeOnHostGroups(enabled: Bool, hostName: String = MPIRuntime.hostName()) throws -> String {
        guard size > 1 else { return allReduceAlgorithm }
        hostGroups = try HierarchicalAllReduce.agreedGroups(self, enabled: enabled, tensor: 6) {
            var mine = Data(hostName.utf8.prefix(255))
            mine.append(Data(count: 256 - mine.count))
            return try allGather(mine).map { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        }
        twoLevels = hostGroups.flatMap { HierarchicalAllReduce(communicator: self, groups: $0) }
        return allReduceAlgorithm
    }

    /// In-place sum over all ranks (OpenMPI's own MPI_Allreduce).
    public func allReduceSum(_ buffer: UnsafeMutablePointer<Float>, count: Int) throws {
        let rc = MPI_Allreduce(radar_mpi_in_place(), buffer, Int32(count), radar_mpi_float(), radar_mpi_sum(), world)
        guard rc == radar_mpi_success() else { throw MPIError(call: "MPI_Allreduce", code: rc, rank: rank) }
    }

    /// In-place max over all ranks.
    public func allReduceMax(_ buffer: UnsafeMutablePointer<Float>, count: Int) throws {
        let rc = MPI_Allreduce(radar_mpi_in_place(), buffer, Int32(count), radar_mpi_float(), radar_mpi_max(), world)
        guard rc == radar_mpi_success() else { throw MPIError(call: "MPI_Allreduce(MAX)", code: rc, rank: rank) }
    }

    public func abort(_ code: Int32) -> Never {
        fflush(stdout)
        fflush(stderr)
        MPI_Abort(world, code)
        exitNow(code)
    }

    /// MPI_Finalize, bounded: a peer frozen at the end cannot hold this rank.
    public func finalize() {
        _ = Watchdog.run(seconds: timeout, "rank \(rank): MPI_Finalize did not complete within \(Int(timeout)) s (a rank frozen?); stopping") { MPI_Finalize() }
    }
}

