import ArgumentParser
import Foundation
import RadarCLI
import RadarCore
import RadarDistributed

/// One data-parallel training rank: `mpirun -n N radar-worker --data DIR --output DIR --experiment NAME`.
/// Every rank holds a RADAR replica, reads its share of each epoch's shuffled samples, and
/// averages gradients with the ring all-reduce (in buckets, overlapped with backward) so all
/// replicas stay identical. Only rank 0 prints progress and writes outputs.
struct RadarWorker: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "radar-worker",
        abstract: "One data-parallel RADAR training rank (launch with mpirun).")

    @OptionGroup var flags: TrainingFlags
    @Flag(help: "SyncBatchNorm: batch statistics all-reduced across ranks (turns overlap off).") var syncBn = false
    @Flag(help: "All-reduce after backward instead of overlapping it.") var noOverlap = false
    @Option(help: "Gradient bucket size in MiB (the last bucket, which waits for the end of backward, is cut to about 1 MiB).") var bucketMb = 10
    @Option(help: "What gradients travel as between ranks: fp32, or bf16 (half the bytes; sums still formed in fp32, see docs/distributed.md).")
    var gradDtype: WireFormat = .fp32
    @Option(help: "Seconds any rank waits for a peer before giving up.") var timeout: Double = 30
    @Option(help: "Transport: mpi, or tcp (ranks from --rank/--world-size or RANK/WORLD_SIZE, rendezvous at the coordinator).")
    var transport = "mpi"
    @OptionGroup var job: RankFlags
    @Option(help: "Seconds without a heartbeat before the coordinator declares a rank lost.") var heartbeatDeadline: Double = 10
    @Flag(help: "TCP: listen for peers on every interface (default: only the one that reaches the coordinator).")
    var dataBindAll = false
    @Option(help: "Seconds the ranks wait for the last one to start and register (pods start minutes apart).")
    var rendezvousTimeout: Double = 600
    @Flag(help: "After every optimizer step, compare a hash of every rank's parameters and buffers (stop on a difference).")
    var verifyReplicas = false

    func validate() throws {
        let need = requireFlag
        try need(bucketMb >= 0, "bucket-mb", "0 (a bucket per parameter) or more", bucketMb)
        try need(["mpi", "tcp"].contains(transport), "transport", "mpi or tcp", transport)
        for (flag, v) in [("timeout", timeout), ("heartbeat-deadline", heartbeatDeadline), ("rendezvous-timeout", rendezvousTimeout)] {
            try need(v > 0 && v.isFinite, flag, "a positive number of seconds", v)
        }
        try need(heartbeatDeadline >= CoordinatorClient.minimumHeartbeatDeadline, "heartbeat-deadline",
                 "at least \(Int(CoordinatorClient.minimumHeartbeatDeadline)) seconds (ranks send a heartbeat every second)", heartbeatDeadline)
    }

    func run() throws {
        FaultInjection.point("init")
        switch transport {
        case "mpi":
            let mpi: MPIRuntime
            do { mpi = try MPIRuntime(initTimeout: rendezvousTimeout) } catch {
                logLine("radar-worker: \(error)")
                throw ExitCode.failure
            }
            mpi.timeout = timeout
            FaultInjection.rank = mpi.rank
            do {
                let algorithm = try mpi.agreeOnHostGroups(enabled: ProcessInfo.processInfo.environment["RADAR_HIERARCHICAL_ALLREDUCE"] != "0")
                if mpi.rank == 0 && algorithm != "ring" { logLine("rank 0: all-reduce in \(algorithm) (RADAR_HIERARCHICAL_ALLREDUCE=0: one ring)") }
                try train(mpi, client: try controlPlaneMPI(mpi))
                mpi.finalize()
            } catch let p as Preemption.Preempted {
                // Every rank stops after the same step (agreed), so all of them get here.
                logLine("radar-worker rank \(mpi.rank): \(p)")
                mpi.finalize()
                throw ExitCode(Preemption.Preempted.exitCode)
            } catch {
                RadarWorker.failed(rank: mpi.rank, error)
                mpi.abort(1)
            }
        case "tcp":
            let launch: LaunchEnvironment
            do {
                launch = try job.launch()
            } catch {
                logLine("radar-worker: \(error)")
                throw ExitCode(2)
            }
            let r = launch.rank
            FaultInjection.rank = r
            do {
                let (comm, client) = try controlPlaneTCP(launch)
                do { try train(comm, client: client) } catch let p as Preemption.Preempted {
                    logLine("radar-worker rank \(r): \(p)")
                    client.finish()
                    throw ExitCode(Preemption.Preempted.exitCode)
                }
                client.finish()
            } catch let e as ExitCode {
                throw e
            } catch {
                RadarWorker.failed(rank: r, error)
                exitNow(1)
            }
        default:
            logLine("radar-worker: --transport must be mpi or tcp")
            throw ExitCode(2)
        }
    }

    static var client: CoordinatorClient?

    static func failed(rank: Int, _ error: Error) { CoordinatorClient.reportFailure(error, rank: rank, client: client) }

    func split(_ address: String, allowAnyPort: Bool = false) throws -> (String, Int) {
        guard let a = hostPort(address, allowAnyPort: allowAnyPort) else { throw ValidationError(hostPortExpectation(address, allowAnyPort: allowAnyPort)) }
        return a
    }

    static var server: CoordinatorServer?

    /// MPI: rank 0 runs the coordinator unless one is given; its port, a fresh job token, its
    /// host name and its machine's addresses travel over MPI (a trusted channel), then every rank
    /// logs in and starts heartbeats: ranks on rank 0's host over loopback, the others at rank
    /// 0's addresses, those on a subnet of their own first (`CoordinatorAnnouncement`).
    func controlPlaneMPI(_ comm: MPIRuntime) throws -> CoordinatorClient {
        var token = try job.token() ?? Data()
        var hosts = ["127.0.0.1"], port = 0
        if let c = job.coordinator {
            let (host, p) = try split(c)
            (hosts, port) = ([host], p)
        } else {
            var buf = [UInt8](repeating: 0, count: 4096)
            if comm.rank == 0 {
                let t = HMACSHA256.randomHex()
                let s = try CoordinatorServer(port: 0, worldSize: comm.size, token: Data(t.utf8))
                s.heartbeatDeadline = heartbeatDeadline
                s.rendezvousDeadline = rendezvousTimeout
                s.log = logLine
                RadarWorker.server = s
                let text = CoordinatorAnnouncement(port: s.port, token: t, hostName: MPIRuntime.hostName()).encoded
                for (i, b) in text.utf8.prefix(buf.count - 1).enumerated() { buf[i] = b }
            }
            try buf.withUnsafeMutableBytes { try comm.broadcast($0.baseAddress!, bytes: 4096) }
            guard let a = CoordinatorAnnouncement(encoded: String(decoding: buf.prefix { $0 != 0 }, as: UTF8.self)) else {
                throw CommunicationError(rank: comm.rank, peer: 0, reason: "rank 0's coordinator announcement is malformed")
            }
            port = a.port
            token = Data(a.token.utf8)
            if comm.rank != 0 { hosts = a.hosts(from: MPIRuntime.hostName()) }
        }
        let client: CoordinatorClient
        do {
            client = try CoordinatorClient(hosts: hosts, port: port, token: token, rank: comm.rank, worldSize: comm.size, dataHost: "", dataPort: 0,
                                           timeout: timeout, rendezvousTimeout: rendezvousTimeout)
        } catch where job.coordinator == nil && !(error is CommunicationError) {
            throw CommunicationError(rank: comm.rank, peer: 0, reason: "rank 0's coordinator: \(error) (give --coordinator HOST:PORT where rank 0's address is another)")
        }
        try client.start()
        RadarWorker.client = client
        return client
    }

    /// TCP: rendezvous at the coordinator (in-process on rank 0 at the launcher's address, see
    /// `LaunchEnvironment`, unless --coordinator is given), then connect the data mesh.
    func controlPlaneTCP(_ launch: LaunchEnvironment) throws -> (Communicator, CoordinatorClient) {
        let tcp = try TCPJob.connect(launch, token: try job.requiredToken(), hostCoordinator: job.coordinator == nil, timeout: timeout,
                                     rendezvousTimeout: rendezvousTimeout, heartbeatDeadline: heartbeatDeadline, bindAll: dataBindAll,
                                     log: { logLine("radar-worker: " + $0) })
        RadarWorker.server = tcp.server
        RadarWorker.client = tcp.client
        return (tcp.communicator, tcp.client)
    }

    func train(_ comm: Communicator, client: CoordinatorClient) throws {
        let env = ProcessInfo.processInfo.environment
        Preemption.install()
        let localRanks = RankPlacement.localSize(env) ?? comm.size
        let localRank = RankPlacement.localRank(env) ?? comm.rank
        // Without --experiment, rank 0 names the folder (a timestamp, or the newest resumable run)
        // and every rank takes its name: clocks differ between hosts.
        var agreed: String?
        if flags.experiment == nil {
            var buf = [UInt8](repeating: 0, count: 512)
            if comm.rank == 0 { for (i, b) in flags.experimentName().utf8.prefix(511).enumerated() { buf[i] = b } }
            try buf.withUnsafeMutableBytes { try comm.broadcast($0.baseAddress!, bytes: 512) }
            agreed = String(decoding: buf.prefix { $0 != 0 }, as: UTF8.self)
        }
        let o = try flags.options(rank: comm.rank, worldSize: comm.size, localRanks: localRanks, localRank: localRank, experimentName: agreed)
        let run = try TrainingRun(options: o)
        FaultInjection.point("load")
        logLine("radar-worker rank \(comm.rank) (host \(ProcessInfo.processInfo.hostName), local rank \(localRank) of \(localRanks)): \(run.ctx.backend.deviceDescription)"
                + (run.ctx.backend.kernelSettings.map { "; \($0)" } ?? "") + (run.cpuPlacement.map { "; \($0)" } ?? ""))
        let fingerprint = Fingerprint(config: o.config, layout: run.model.layout, manifestHash: run.set.manifest.contentHash,
                                      worldSize: comm.size, extra: [("batch size", String(o.batchSize)), ("seed", String(o.seed)),
                                                                    ("sync-bn", String(syncBn)), ("grad-dtype", gradDtype.rawValue)])
        try fingerprint.verify(comm)
        let sync = GradientSync(communicator: comm, store: run.ctx.params, bucketBytes: bucketMb << 20, overlap: !noOverlap && !syncBn,
                                wire: gradDtype)
        try sync.broadcastInitialState()
        // The one seam between the training loop and the other ranks.
        run.parallel = DistributedReplica(communicator: comm, gradients: sync, coordinator: client, syncBatchNorm: syncBn,
                                          verifyReplicas: verifyReplicas,
                                          planRequest: (o.seed, o.batchSize, o.accumulationSteps, o.maxStepsPerEpoch), timeout: timeout)
        // The epoch plan is a pure function every rank computes; the coordinator (which knows the
        // dataset when it runs in-process or with --data) confirms it before each epoch.
        if let s = RadarWorker.server {
            let set = run.set
            s.manifestHash = set.manifest.contentHash
            s.planDigest = { r in
                EpochPlan(set: set, seed: r.seed, epoch: r.epoch, worldSize: r.worldSize, batchSize: r.batchSize,
                          accumulationSteps: r.accumulationSteps, maxStepsPerEpoch: r.maxStepsPerEpoch).digest
            }
        }
        if comm.rank == 0 {
            run.log = logLine
            logLine("radar-worker: \(comm.size) ranks x batch \(o.batchSize) x \(o.accumulationSteps) accumulation, \(o.threads) threads per rank, \(sync.buckets.count) gradient buckets (MB, in reduction order: \(sync.bucketSizesDescription)), overlap \(sync.overlap), sync-bn \(syncBn), gradients as \(gradDtype.rawValue) \(sync.stagingDescription)")
        }
        // Rank 0 shows the bar; every rank reports progress (with images/s) in its heartbeats.
        attachProgress(run, imagesPerBatch: o.batchSize * comm.size, showBar: comm.rank == 0) { epoch, done, loss, rate in
            client.report(["epoch": epoch, "batch": done, "loss": loss, "step": run.trainer.optimizer.step, "images_per_s": rate])
        }
        let h = try run.run()
        // A hash of the parameters and buffers, so launchers and tests can check that replicas agree.
        let hash = run.ctx.params.contentHash()
        print("rank \(comm.rank) parameters fnv1a \(String(hash, radix: 16)) steps \(run.trainer.optimizer.step) skipped \(run.trainer.skippedSteps)")
        if comm.rank == 0, let line = run.testAUCLine(h) {
            print("results: \(o.experimentDirectory)")
            print(line)
        }
        FaultInjection.point("finalize")
        client.finish()
        // Rank 0 hosts the coordinator: let the other ranks sign off before the process ends. One
        // that does not within the timeout is named, and the job ends non-zero (its launcher
        // then stops it): the outputs are complete, but a rank is stuck.
        if let s = RadarWorker.server {
            let deadline = monotonicNow().addingTimeInterval(timeout)
            var missing: [Int] = []
            repeat {
                let ranks = s.status()["ranks"] as? [[String: Any]] ?? []
                missing = ranks.filter { $0["finished"] as? Bool != true }.compactMap { $0["rank"] as? Int }
                if missing.isEmpty { break }
                usleep(20_000)
            } while monotonicNow() < deadline
            if !missing.isEmpty {
                throw CommunicationError(rank: 0, peer: missing.first, reason: "\(describeRanks(missing)) did not sign off within \(Int(timeout)) s after training (outputs are complete)")
            }
        }
    }
}

// Better OpenBLAS kernels than the library chose, when the CPU has them (before MPI starts).
ProgramImage.nameAfterProgram()
BLASKernels.reexecWithBestKernelsIfNeeded()
StandardStreams.openClosed()
ParentWatch.install()
_ = ArchiveNames.utf8  // before any thread: setlocale is process-wide
OpenSSLLibrary.prepare()
RadarWorker.main()
finishStandardOutput("radar-worker")
