import ArgumentParser
import Foundation
import RadarCLI
import RadarCore

/// `radar train`: the training loop in one process (no MPI) on a prepared dataset directory.
struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Train RADAR on a prepared dataset directory in one process; writes outputs/<experiment>/ (checkpoints, metrics, plots, TensorBoard event files).")

    @OptionGroup var flags: TrainingFlags

    /// One process writes its run: --output is checked here (radar-worker's ranks other than 0
    /// write nothing, so theirs may be read-only).
    func validate() throws {
        try requireWritableFolder(flags.output, flag: "--output")
    }

    func run() throws {
        try failing {
            let o = try flags.options()
            Preemption.install()
            let run = try TrainingRun(options: o)
            run.log = logLine
            attachProgress(run, imagesPerBatch: o.batchSize)
            logLine("radar train: \(run.ctx.backend.deviceDescription)" + (run.ctx.backend.kernelSettings.map { "; \($0)" } ?? ""))
            if let p = run.cpuPlacement { logLine("radar train: \(p)") }
            logLine("radar train: experiment \(o.experimentDirectory), \(run.model.layout.parameterElements) parameters, \(run.set.refs(.train).count) train / \(run.set.refs(.val).count) val / \(run.set.refs(.test).count) test images, batch \(o.batchSize) x \(o.accumulationSteps), \(o.threads) threads")
            let h = try run.run()
            print("results: \(o.experimentDirectory)")
            if let line = run.testAUCLine(h) { print(line) }
        }
    }
}
