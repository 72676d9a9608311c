import Foundation

/// Progress for long-running commands: a redrawn bar with rate and ETA on a terminal; on
/// anything else (a log file, a batch system's output), a plain line every `logInterval` seconds
/// (`RADAR_PROGRESS_SECONDS`, default 60; 0: none), so an hour-long epoch is not an hour of silence.
public final class ProgressReporter: @unchecked Sendable {
    public let label: String
    public let total: Int
    public let unit: String
    public let interactive: Bool
    public var logInterval: Double = ProgressReporter.defaultLogInterval
    /// Where the plain lines go (stderr; tests collect them).
    public var lineSink: (String) -> Void = logLine
    private let start: Date
    private var lastDraw = Date.distantPast
    private var lastLine: Date

    /// `RADAR_PROGRESS_SECONDS`, or 60 with a notice where it is not a number of seconds (a typo
    /// was taken silently for the default, and a negative number for "none").
    public static var defaultLogInterval: Double {
        guard let text = ProcessInfo.processInfo.environment["RADAR_PROGRESS_SECONDS"], !text.isEmpty else { return 60 }
        if let seconds = Double(text.trimmingCharacters(in: .whitespaces)), seconds.isFinite, seconds >= 0 { return seconds }
        printNotice("RADAR_PROGRESS_SECONDS=\(text): expected the seconds between progress lines (0: none); a line every 60 s")
        return 60
    }

    /// `start` and `update`'s `now` are `monotonicNow()` times (a step of the wall clock made the
    /// rate and ETA wrong, and a step back silenced the plain lines for as long).
    public init(_ label: String, total: Int, unit: String = "it", interactive: Bool = isatty(STDERR_FILENO) != 0, start: Date = monotonicNow()) {
        self.label = label
        self.total = total
        self.unit = unit
        self.interactive = interactive
        self.start = start
        lastLine = start
    }

    /// `done` of `total` finished; `items` (e.g. images) processed so far, for the rate.
    public func update(_ done: Int, items: Int? = nil, detail: String = "", now: Date = monotonicNow()) {
        guard interactive else {
            guard logInterval > 0, done < total, now.timeIntervalSince(lastLine) >= logInterval else { return }
            lastLine = now
            lineSink(plainLine(done: done, elapsed: now.timeIntervalSince(start), items: items, detail: detail))
            return
        }
        guard now.timeIntervalSince(lastDraw) > 0.1 || done >= total else { return }
        lastDraw = now
        let line = render(done: done, elapsed: now.timeIntervalSince(start), items: items, detail: detail, columns: ProgressReporter.terminalColumns())
        writeStandardError(line)
        if done >= total { writeStandardError("\n") }
    }

    /// The bar's line as written to the terminal: carriage return, the text cut to `columns - 1`
    /// characters (so it never wraps), then "clear to end of line" (so a shorter line leaves
    /// nothing of a longer one behind).
    public func render(done: Int, elapsed: Double, items: Int? = nil, detail: String = "", columns: Int) -> String {
        let rate = Double(items ?? done) / max(elapsed, 1e-9)
        let eta = done > 0 ? elapsed / Double(done) * Double(max(total - done, 0)) : 0
        let width = 24
        let filled = total > 0 ? min(width, width * done / total) : 0
        let bar = String(repeating: "#", count: filled) + String(repeating: "-", count: width - filled)
        var text = String(format: "%@ [%@] %d/%d %.1f %@/s ETA %@", label, bar, done, total, rate, unit, ProgressReporter.clock(eta))
        if !detail.isEmpty { text += " " + detail }
        if columns > 1 && text.count > columns - 1 { text = String(text.prefix(columns - 1)) }
        return "\r" + text + "\u{1B}[K"
    }

    /// The log line for where the bar is not drawn: "epoch 1/3: 50/200 (25%) 10.0 img/s ETA 0:15 ...".
    public func plainLine(done: Int, elapsed: Double, items: Int? = nil, detail: String = "") -> String {
        let rate = Double(items ?? done) / max(elapsed, 1e-9)
        let eta = done > 0 ? elapsed / Double(done) * Double(max(total - done, 0)) : 0
        let percent = total > 0 ? 100 * done / total : 0
        let text = String(format: "%@: %d/%d (%d%%) %.1f %@/s ETA %@", label, done, total, percent, rate, unit, ProgressReporter.clock(eta))
        return detail.isEmpty ? text : text + " " + detail
    }

    /// The terminal's width (stderr), 80 when unknown.
    public static func terminalColumns() -> Int {
        var w = winsize()
        if ioctl(STDERR_FILENO, UInt(TIOCGWINSZ), &w) == 0, w.ws_col > 0 { return Int(w.ws_col) }
        return 80
    }

    public static func clock(_ s: Double) -> String {
        let t = Int(s.rounded())
        return t >= 3600 ? String(format: "%d:%02d:%02d", t / 3600, t / 60 % 60, t % 60) : String(format: "%d:%02d", t / 60, t % 60)
    }
}

/// One log line on stderr (stdout is kept for results and JSON); any thread may call it.
@Sendable public func logLine(_ s: String) {
    writeStandardError(s + "\n")
}

/// Writes out what is still buffered for stdout and says when any write to it failed, with a
/// non-zero exit: `radar predict DIR > scores.tsv` on a full disk exited 0 with the file cut
/// short (libc drops a failed buffer and only marks the stream). A reader that stopped early
/// (`| head`, EPIPE where SIGPIPE is ignored) is not an error worth a line; it still exits 1.
public func finishStandardOutput(_ program: String) {
    errno = 0
    let flushed = fflush(stdout) == 0
    let code = errno
    guard !flushed || ferror(stdout) != 0 else { return }
    if code != EPIPE {
        let reason = code != 0 ? String(cString: strerror(code)) : "a write failed"
        logLine("\(program): error: standard output: \(reason) (what was printed is incomplete)")
    }
    exit(1)
}
