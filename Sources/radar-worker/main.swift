import ArgumentParser
import Foundation
import RadarCore
import RadarDistributed

/// One data-parallel training rank: `mpirun -n N radar-worker ...`. Each rank trains a RADAR
/// replica on its own slice of a synthetic deepfake stream; gradients are averaged with
/// MPI_Allreduce after every step, so every rank holds identical parameters.
struct RadarWorker: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "radar-worker",
        abstract: "One data-parallel RADAR training rank (launch with mpirun).")

    @Option(help: "Preset (tiny, mid, full) or a config JSON file.") var config = "tiny"
    @Option(help: "Images per batch on each rank.") var batchSize = 8
    @Option(help: "Optimizer steps.") var steps = 20
    @Option(help: "Peak learning rate.") var learningRate: Double = 1e-3
    @Option(help: "Seed.") var seed: UInt64 = 1
    @Option(help: "CPU threads per rank (default: cores / ranks on this node).") var threads: Int?
    @Option(help: "A timm vit_small_patch16_224 safetensors file for the encoder.") var pretrained: String?

    func run() throws {
        let mpi: MPIRuntime
        do { mpi = try MPIRuntime() } catch {
            logLine("radar-worker: \(error)")
            throw ExitCode.failure
        }
        defer { mpi.finalize() }
        do {
            let localRanks = Int(ProcessInfo.processInfo.environment["OMPI_COMM_WORLD_LOCAL_SIZE"] ?? "") ?? mpi.size
            let t = threads ?? max(1, ProcessInfo.processInfo.activeProcessorCount / max(localRanks, 1))
            let cfg = try RADARConfig.resolve(config)
            let model = try RADARModel(config: cfg)
            let ctx = ExecutionContext(backend: CPUBackend(threads: t), params: ParameterStore(layout: model.layout),
                                       seed: seed &+ UInt64(mpi.rank))
            model.initialize(ctx.params, seed: seed)
            if let pretrained { try TimmWeights.load(pretrained, into: ctx.params, config: cfg) }
            let sync = MPIGradientAverage(mpi: mpi)
            try sync.broadcastInitialState(ctx.params)
            let trainer = Trainer(model: model, ctx: ctx, lr: Float(learningRate))
            trainer.schedule = OneCycleLR(maxLR: learningRate, totalSteps: steps)
            trainer.gradientHook = { store, finite in sync(store, finite) }
            let synth = SyntheticFaces(size: cfg.imgSize, seed: seed)
            let per = 3 * cfg.imgSize * cfg.imgSize
            let images = HostTensor(Shape(batchSize, 3, cfg.imgSize, cfg.imgSize)), labels = HostTensor(Shape(batchSize))
            if mpi.rank == 0 { logLine("radar-worker: \(mpi.size) ranks x batch \(batchSize), \(t) threads per rank, \(steps) steps") }
            for step in 0..<steps {
                for j in 0..<batchSize {
                    let index = (step * mpi.size + mpi.rank) * batchSize + j
                    synth.normalized(index, mean: cfg.mean, std: cfg.std, into: images.tensor.base + j * per)
                    labels.tensor.base[j] = Float(synth.label(index))
                }
                let r = try trainer.step(images: images.tensor, labels: labels.tensor)
                if mpi.rank == 0 && (step % 5 == 0 || step == steps - 1) {
                    logLine(String(format: "step %d/%d  loss %.4f  grad_norm %.3f  lr %.2e", step + 1, steps, r.terms.total, r.gradNorm, r.lr))
                }
            }
            // A hash of the parameters, so launchers and tests can check that replicas agree.
            var h: UInt64 = 0xcbf2_9ce4_8422_2325
            for v in ctx.params.values { h = (h ^ UInt64(v.bitPattern)) &* 0x100_0000_01b3 }
            print("rank \(mpi.rank) parameters fnv1a \(String(h, radix: 16)) skipped \(trainer.skippedSteps)")
        } catch {
            logLine("radar-worker rank \(mpi.rank): error: \(error)")
            mpi.abort(1)
        }
    }
}

RadarWorker.main()
