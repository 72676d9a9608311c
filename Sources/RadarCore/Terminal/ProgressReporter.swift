import Foundation

/// Progress for long-running commands: a redrawn bar with rate and ETA on a terminal; on
/// anything else, nothing but the log lines the command prints itself.
public final class ProgressReporter: @unchecked Sendable {
    public let label: String
    public let total: Int
    public let unit: String
    public let interactive: Bool
    private let start = Date()
    private var lastDraw = Date.distantPast

    public init(_ label: String, total: Int, unit: String = "it", interactive: Bool = isatty(STDERR_FILENO) != 0) {
        self.label = label
        self.total = total
        self.unit = unit
        self.interactive = interactive
    }

    /// `done` of `total` finished; `items` (e.g. images) processed so far, for the rate.
    public func update(_ done: Int, items: Int? = nil, detail: String = "") {
        guard interactive else { return }
        let now = Date()
        guard now.timeIntervalSince(lastDraw) > 0.1 || done >= total else { return }
        lastDraw = now
        let elapsed = now.timeIntervalSince(start)
        let rate = Double(items ?? done) / max(elapsed, 1e-9)
        let eta = done > 0 ? elapsed / Double(done) * Double(total - done) : 0
        let width = 24
        let filled = total > 0 ? min(width, width * done / total) : 0
        let bar = String(repeating: "#", count: filled) + String(repeating: "-", count: width - filled)
        let line = String(format: "\r%@ [%@] %d/%d %.1f %@/s ETA %@ %@", label, bar, done, total, rate, unit,
                          ProgressReporter.clock(eta), detail)
        FileHandle.standardError.write(Data(line.utf8))
        if done >= total { FileHandle.standardError.write(Data("\n".utf8)) }
    }

    public static func clock(_ s: Double) -> String {
        let t = Int(s.rounded())
        return t >= 3600 ? String(format: "%d:%02d:%02d", t / 3600, t / 60 % 60, t % 60) : String(format: "%d:%02d", t / 60, t % 60)
    }
}

/// One log line on stderr (stdout is kept for results and JSON).
public func logLine(_ s: String) {
    FileHandle.standardError.write(Data((s + "\n").utf8))
}
