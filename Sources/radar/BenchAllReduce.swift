import ArgumentParser
import Foundation
import RadarCLI
import RadarCore
import RadarDistributed

extension Bench {
    struct AllReduce: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "allreduce",
            abstract: "Our ring all-reduce against MPI_Allreduce (under mpirun), or over TCP ranks (one per host, as radar-worker --transport tcp): algbw/busbw medians, or --verify.")
        @Option(help: "Transport: mpi (under mpirun; MPI_Allreduce timed alongside), or tcp (ranks from --rank/--world-size or RANK/WORLD_SIZE, coordinator at --coordinator or MASTER_ADDR:MASTER_PORT, token from --token-file or RADAR_JOB_TOKEN).")
        var transport = "mpi"
        @OptionGroup var job: RankFlags
        @Option(help: "Seconds any rank waits for a peer before giving up.") var timeout: Double = 60
        @Option(help: "Buffer sizes in MB (comma separated).") var sizes = "1,8,32,88"
        @Option(help: "Timed repeats (median reported).") var repeats = 5
        @Flag(help: "Check the ring against MPI_Allreduce over many lengths instead of timing.") var verify = false
        @Option(help: "Where the buffer lives: cpu (default), or a device (cuda, cuda-emulated): then each rank's buffer is downloaded to host memory, reduced by the ring and uploaded again, and the staging time is reported apart from the ring's.")
        var device = "cpu"
        @Option(help: "What the ring sends: fp32, or bf16 (half the bytes, sums in fp32). --verify then bounds the difference from MPI_Allreduce by bf16 rounding.")
        var gradDtype: WireFormat = .fp32

        func validate() throws {
            let mbs = sizes.split(separator: ",").map { Double($0.trimmingCharacters(in: .whitespaces)) }
            try requireFlag(!mbs.isEmpty && mbs.allSatisfy { ($0 ?? 0) > 0 && $0!.isFinite }, "sizes", "positive MB values, comma separated", sizes)
            try requireFlag(repeats >= 1, "repeats", "at least 1", repeats)
            try requireFlag(timeout > 0 && timeout.isFinite, "timeout", "a positive number of seconds", timeout)
            // Checked before MPI starts: an error after it is an MPI_Abort with its banner.
            try requireFlag(["mpi", "tcp"].contains(transport), "transport", "mpi or tcp", transport)
            try requireFlag(Devices.isValid(device), "device", "one of " + Devices.names.joined(separator: ", "), device)
            if verify && transport == "tcp" { throw ValidationError("--verify compares with MPI_Allreduce: use it with --transport mpi") }
        }

        func run() throws {
            if transport == "tcp" {
                let launch: LaunchEnvironment, token: Data
                do {
                    (launch, token) = (try job.launch(), try job.requiredToken())
                } catch {
                    logLine("radar bench allreduce: \(error)")
                    throw ExitCode(2)
                }
                do {
                    let tcp = try TCPJob.connect(launch, token: token, hostCoordinator: job.coordinator == nil, timeout: timeout,
                                                 rendezvousTimeout: timeout, heartbeatDeadline: timeout, log: { logLine("radar bench allreduce: " + $0) })
                    try runBench(tcp.communicator, mpi: nil)
                    tcp.client.finish()
                } catch {
                    logLine("rank \(launch.rank): \(error)")
                    exitNow(1)
                }
                return
            }
            let mpi = try MPIRuntime()
            defer { mpi.finalize() }
            do {
                try mpi.agreeOnHostGroups(enabled: ProcessInfo.processInfo.environment["RADAR_HIERARCHICAL_ALLREDUCE"] != "0")
                if verify { try runVerify(mpi) } else { try runBench(mpi, mpi: mpi) }
            } catch {
                logLine("rank \(mpi.rank): \(error)")
                mpi.abort(1)
            }
        }

        func fill(_ p: UnsafeMutablePointer<Float>, _ n: Int, rank: Int, salt: Int) {
            let s = RandomStream(seed: UInt64(rank + 1), stream: UInt64(salt))
            for i in 0..<n { p[i] = s.normal(UInt64(i)) }
        }

        func runVerify(_ mpi: MPIRuntime) throws {
            let p = mpi.size
            var lengths = [1, 2, 3, p - 1, p, p + 1, 2 * p + 1, 17, 100, 1000, 4097, 65_537, 300_001].filter { $0 > 0 }
            lengths = Array(Set(lengths)).sorted()
            var worst: Float = 0
            var identical = true
            for n in lengths {
                let ours = UnsafeMutablePointer<Float>.allocate(capacity: n), theirs = UnsafeMutablePointer<Float>.allocate(capacity: n)
                defer { ours.deallocate(); theirs.deallocate() }
                fill(ours, n, rank: mpi.rank, salt: n)
                theirs.update(from: ours, count: n)
                // Many pieces per segment at these lengths; in two levels where the ranks agreed to.
                if let two = mpi.twoLevels {
                    try two.run(ours, count: n, op: .sum, tag: 11, wire: gradDtype, chunkFloats: 1000)
                } else {
                    var ring = RingAllReduce(communicator: mpi, wire: gradDtype)
                    ring.chunkFloats = 1000
                    try ring.run(ours, count: n, op: .sum, tag: 11)
                }
                try mpi.allReduceSum(theirs, count: n)
                // bf16: each of the p-1 forwarded partial sums and the result are rounded once
                // (relative 2^-8 each, bf16 keeps 8 significant bits); the bound is on |difference| / (sum of |inputs|).
                let scale: UnsafeMutablePointer<Float>? = gradDtype == .bf16 ? .allocate(capacity: n) : nil
                defer { scale?.deallocate() }
                if let scale {
                    fill(scale, n, rank: mpi.rank, salt: n)
                    for i in 0..<n { scale[i] = abs(scale[i]) }
                    try mpi.allReduceSum(scale, count: n)
                }
                for i in 0..<n { worst = max(worst, abs(ours[i] - theirs[i]) / max(1, abs(scale?[i] ?? theirs[i]))) }
                // Every rank must hold the same bits: compare hashes across ranks.
                var h = FNV1a()
                for i in 0..<n { h.mix(ours[i].bitPattern) }
                let all = try mpi.allGather(withUnsafeBytes(of: h.value) { Data($0) })
                if Set(all).count != 1 { identical = false }
            }
            if mpi.rank == 0 {
                printJSON(["bench": "allreduce_verify", "ranks": p, "grad_dtype": gradDtype.rawValue, "lengths": lengths, "algorithm": mpi.allReduceAlgorithm,
                           "max_rel_diff_vs_mpi_allreduce": Double(worst),
                           "bit_identical_across_ranks": identical])
            }
        }

        /// Times the ring on `comm`, and MPI_Allreduce alongside when under MPI.
        func runBench(_ comm: Communicator, mpi: MPIRuntime?) throws {
            let p = Double(comm.size)
            // TCP: how many of the ring's links (rank to rank + 1) go through same-host shared memory.
            var sharedLinks: Float = 0
            if let tcp = comm as? TCPCommunicator, comm.size > 1 {
                sharedLinks = tcp.sharedMemoryPeers.contains((comm.rank + 1) % comm.size) ? 1 : 0
                try comm.allReduce(&sharedLinks, count: 1)
            }
            for mb in sizes.split(separator: ",").compactMap({ Double($0.trimmingCharacters(in: .whitespaces)) }) {
                let n = Int(mb * 1_000_000 / 4)
                let buf = UnsafeMutablePointer<Float>.allocate(capacity: n)
                defer { buf.deallocate() }
                fill(buf, n, rank: comm.rank, salt: 1)
                func time(_ body: () throws -> Void) throws -> Double {
                    var ts: [Double] = []
                    for _ in 0..<(repeats + 1) {
                        try comm.barrier()
                        let t0 = Date()
                        try body()
                        ts.append(Date().timeIntervalSince(t0))
                    }
                    return ts.dropFirst().sorted()[repeats / 2]
                }
                let ring = try time { try comm.allReduce(buf, count: n, tensor: 12, wire: gradDtype) }
                let mpiTime = try mpi.map { m in try time { try m.allReduceSum(buf, count: n) } }
                // A device buffer: the gradient path of a GPU rank (download, ring, upload).
                var staging: [String: Any] = [:]
                if device != "cpu" {
                    let env = ProcessInfo.processInfo.environment
                    let name = try RankPlacement.device(device, localRank: RankPlacement.localRank(env) ?? comm.rank,
                                                        localSize: RankPlacement.localSize(env) ?? comm.size, allowSharing: true,
                                                        gpuCount: CUDADrivers.deviceCount)
                    let backend = try Devices.backend(name, threads: 1, precision: "fp32")
                    let dev = DeviceTensor(backend, Shape(n), Array(UnsafeBufferPointer(start: buf, count: n)))
                    // The trainer's path: the copy streams and page-locked memory where the backend
                    // has them (GradientStaging), else plain downloads and uploads.
                    let staged = backend as? GradientStaging
                    // Slot 0 for the whole buffer; slots 1... for the trainer's 10 MB buckets.
                    let per = GradientSync.defaultBucketBytes / 4
                    let buckets = stride(from: 0, to: n, by: per).map { $0..<min($0 + per, n) }
                    staged?.prepareStaging(slots: 1 + buckets.count)
                    let host = staged?.allocatePinned(n) ?? buf
                    defer { if host != buf { staged?.releasePinned(host) } }
                    var down = 0.0, up = 0.0
                    let total = try time {
                        let t0 = Date()
                        if let staged {
                            staged.markFinal(0, dev.tensor, into: host)
                            staged.awaitDown(0)
                        } else {
                            backend.download(dev.tensor, into: UnsafeMutableBufferPointer(start: host, count: n))
                        }
                        let t1 = Date()
                        try comm.allReduce(host, count: n, tensor: 13, wire: gradDtype)
                        let t2 = Date()
                        if let staged {
                            staged.stageUp(host, into: dev.tensor, slot: 0)
                            staged.computeWaitsForUploads(0..<1)
                        } else {
                            backend.upload(UnsafeBufferPointer(start: host, count: n), into: dev.tensor)
                        }
                        backend.synchronize()
                        down = t1.timeIntervalSince(t0)
                        up = Date().timeIntervalSince(t2)
                    }
                    staging = ["device": backend.deviceDescription, "device_total_seconds": total, "staging_download_seconds": down,
                               "staging_upload_seconds": up, "staging": staged != nil ? "copy stream, page-locked" : "download/upload"]
                    if let staged {
                        // As the trainer stages its buckets once backward has finished them all: every
                        // download queued at once (as the marks come), then per bucket the wait for its
                        // download, its ring and its upload, so later downloads run under earlier rings.
                        // Against device_total_seconds: what that hides of the staging.
                        staging["bucketed_seconds"] = try time {
                            for (k, b) in buckets.enumerated() {
                                staged.markFinal(1 + k, dev.tensor.slice(from: b.lowerBound, Shape(b.count)), into: host + b.lowerBound)
                            }
                            for (k, b) in buckets.enumerated() {
                                staged.awaitDown(1 + k)
                                try comm.allReduce(host + b.lowerBound, count: b.count, tensor: 14, wire: gradDtype)
                                staged.stageUp(host + b.lowerBound, into: dev.tensor.slice(from: b.lowerBound, Shape(b.count)), slot: 1 + k)
                            }
                            staged.computeWaitsForUploads(1..<(1 + buckets.count))
                            backend.synchronize()
                        }
                        staging["buckets"] = buckets.count
                    }
                }
                if comm.rank == 0 {
                    let bytes = Double(n * 4)
                    // One rank reduces nothing (no byte crosses a wire): its "bandwidths" divided the
                    // buffer by a no-op's time (8,388 GB/s); null there, with a note.
                    func bw(_ t: Double) -> (Double, Double) {
                        comm.size == 1 ? (.nan, .nan) : (bytes / t / 1e9, bytes / t / 1e9 * 2 * (p - 1) / p)
                    }
                    // Bandwidths are of the fp32 buffer reduced (what the trainer gets), whatever the wire carries.
                    var record: [String: Any] = ["bench": "allreduce", "transport": transport, "ranks": comm.size, "mb": mb,
                                                 "grad_dtype": gradDtype.rawValue, "wire_bytes_per_rank": 2 * (comm.size - 1) * (n / comm.size) * gradDtype.bytesPerValue,
                                                 "ring_seconds": ring, "ring_algbw_gbs": bw(ring).0, "ring_busbw_gbs": bw(ring).1]
                    if transport == "tcp" && comm.size > 1 {
                        record["ring_links"] = comm.size
                        record["ring_links_shared_memory"] = Int(sharedLinks)
                    }
                    if comm.size > 1 {
                        record["algorithm"] = comm.allReduceAlgorithm
                        if let two = comm.twoLevels {
                            // Two levels: the host's ring on the buffer, then a ring of hosts on 1/L of it.
                            let l = two.local.size, h = two.cross.size, w = gradDtype.bytesPerValue
                            record["wire_bytes_per_rank"] = 2 * (l - 1) * (n / l) * w + 2 * (h - 1) * (n / l / h) * w
                        }
                    }
                    if let mpiTime {
                        // What OpenMPI's TCP transport between hosts runs with (MPIRuntime's default, or the environment's).
                        record["openmpi_btl_tcp_links"] = ProcessInfo.processInfo.environment["OMPI_MCA_btl_tcp_links"] ?? NSNull()
                        record.merge(["mpi_allreduce_seconds": mpiTime, "mpi_algbw_gbs": bw(mpiTime).0, "mpi_busbw_gbs": bw(mpiTime).1,
                                      "busbw_ratio_ring_over_mpi": comm.size == 1 ? .nan : mpiTime / ring]) { $1 }
                    }
                    if comm.size == 1 {
                        record["note"] = "one rank: nothing is reduced, so no bandwidth (run it under mpirun -n N, or as N TCP ranks)"
                    }
                    printJSON(record.merging(staging) { $1 })
                }
            }
        }
    }
}
