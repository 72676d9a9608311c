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

/// The process's MPI world (OpenMPI through CMPI). Initialised with MPI_Init_thread; the granted
/// thread level is checked against the one requested.
public final class MPIRuntime: @unchecked Sendable {
    public let rank: Int
    public let size: Int
    public let threadLevel: Int32
    private let world: MPI_Comm

    /// Initialises MPI asking for `MPI_THREAD_SERIALIZED` (only one thread calls MPI at a time;
    /// the gradient thread of the distributed trainer needs no more).
    public init() throws {
        var argc: Int32 = 0
        var provided: Int32 = 0
        let required = radar_mpi_thread_serialized()
        let rc = MPI_Init_thread(&argc, nil, required, &provided)
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

    public func broadcast(_ buffer: UnsafeMutableRawPointer, bytes: Int, root: Int = 0) throws {
        let rc = MPI_Bcast(buffer, Int32(bytes), radar_mpi_byte(), Int32(root), world)
        guard rc == radar_mpi_success() else { throw MPIError(call: "MPI_Bcast", code: rc, rank: rank) }
    }

    public func barrier() throws {
        let rc = MPI_Barrier(world)
        guard rc == radar_mpi_success() else { throw MPIError(call: "MPI_Barrier", code: rc, rank: rank) }
    }

    public func abort(_ code: Int32) -> Never {
        MPI_Abort(world, code)
        exit(code)
    }

    public func finalize() { MPI_Finalize() }
}

/// Data-parallel gradient averaging over MPI: every rank ends the step with the mean gradient,
/// and a non-finite value on any rank makes every rank skip the step together.
public struct MPIGradientAverage {
    public let mpi: MPIRuntime

    public init(mpi: MPIRuntime) { self.mpi = mpi }

    /// Broadcasts rank 0's parameters, buffers and counters to every rank.
    public func broadcastInitialState(_ store: ParameterStore) throws {
        try mpi.broadcast(store.values.baseAddress!, bytes: store.values.count * 4)
        try mpi.broadcast(store.buffers.baseAddress!, bytes: store.buffers.count * 4)
        try mpi.broadcast(store.counters.baseAddress!, bytes: store.counters.count * 8)
    }

    /// Sums gradients over ranks and divides by the world size; returns whether every rank was finite.
    public func callAsFunction(_ store: ParameterStore, _ localFinite: Bool) -> Bool {
        do {
            var flag: Float = localFinite ? 0 : 1
            try mpi.allReduceMax(&flag, count: 1)
            try mpi.allReduceSum(store.grads.baseAddress!, count: store.grads.count)
            let inv = 1 / Float(mpi.size)
            for i in 0..<store.grads.count { store.grads[i] *= inv }
            return flag == 0
        } catch {
            logLine("rank \(mpi.rank): \(error)")
            mpi.abort(3)
        }
    }
}
