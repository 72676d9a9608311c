import ArgumentParser
import Foundation
import RadarCore

@main
struct Radar: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "radar",
        abstract: "RADAR deepfake detector: training, benchmarks and tools.",
        subcommands: [Demo.self, Synth.self, Prepare.self, Train.self, Evaluate.self, Calibrate.self, Compare.self, Predict.self, Serve.self, Export.self, ExportONNX.self, Launch.self, Bench.self, DumpStep.self,
                      CheckDevice.self, Runs.self])

    static func main() {
        ProgramImage.nameAfterProgram()
        BLASKernels.reexecWithBestKernelsIfNeeded()
        StandardStreams.openClosed()
        OpenSSLLibrary.prepare()
        _ = ArchiveNames.utf8
        main(nil)
        finishStandardOutput("radar")
    }
}

/// Turns any error into one line on stderr and a non-zero exit.
func failing<T>(_ body: () throws -> T) throws -> T {
    do { return try body() } catch let e as ExitCode { throw e } catch let e as CleanExit { throw e } catch let p as Preemption.Preempted {
        logLine("radar: \(p)")
        throw ExitCode(Preemption.Preempted.exitCode)
    } catch {
        logLine("radar: error: \(errorLine(error))")
        throw ExitCode.failure
    }
}

/// Prints one JSON object on stdout (benchmarks, machine-readable results).
func printJSON(_ object: [String: Any]) {
    let data = try! jsonData(object)  // non-finite numbers become null; anything else is a bug here
    print(String(decoding: data, as: UTF8.self))
}

/// Peak resident set size of this process in MiB (Linux VmHWM).
func peakRSSMiB() -> Double {
    guard let s = readKernelFile("/proc/self/status") else { return 0 }
    for line in s.split(separator: "\n") where line.hasPrefix("VmHWM:") {
        // "VmHWM:\t   1234 kB" (no padding once the number is long): split on any whitespace.
        let kb = Double(line.split(whereSeparator: { $0 == " " || $0 == "\t" }).dropFirst().first.map(String.init) ?? "0") ?? 0
        return kb / 1024
    }
    return 0
}

/// Median wall time in seconds of `repeats` runs after `warmup` runs.
func medianSeconds(repeats: Int, warmup: Int = 1, _ body: () throws -> Void) rethrows -> Double {
    for _ in 0..<warmup { try body() }
    var times: [Double] = []
    for _ in 0..<repeats {
        let t0 = DispatchTime.now().uptimeNanoseconds
        try body()
        times.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
    }
    times.sort()
    return times[times.count / 2]
}

func machineRecord(threads: Int) -> [String: Any] {
    ["cpus": ProcessInfo.processInfo.activeProcessorCount, "threads": threads, "blas": CPUBackend.blasDescription,
     "blas_kernels": BLASKernels.record, "cpu": cpuModelName()]
}

/// The CPU's model name from /proc/cpuinfo (benchmark records must name the CPU).
func cpuModelName() -> String {
    guard let s = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) else { return "unknown" }
    for line in s.split(separator: "\n") where line.hasPrefix("model name") {
        return line.split(separator: ":", maxSplits: 1).last.map { $0.trimmingCharacters(in: .whitespaces) } ?? "unknown"
    }
    return "unknown"
}
