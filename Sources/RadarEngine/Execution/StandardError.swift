import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Writes `text` to standard error whole (a short write goes on, EINTR is retried) and lets a
/// failure pass: there is nowhere left to say it. Foundation's `FileHandle.write(_:)` traps on a
/// failed write, so `radar train 2>/dev/full`, a full disk under a redirected log, or the
/// terminal gone after a hangup (EIO) ended a run at its next log line with "Illegal
/// instruction". Every line this package writes to standard error goes through here.
public func writeStandardError(_ text: String) {
    var bytes = Array(text.utf8)
    bytes.withUnsafeMutableBytes { buffer in
        guard let base = buffer.baseAddress else { return }
        var done = 0
        while done < buffer.count {
            let n = write(STDERR_FILENO, base + done, buffer.count - done)
            if n > 0 { done += n } else if n < 0 && errno == EINTR { continue } else { return }
        }
    }
}

/// For commands that run for hours (training, serving, preparing, launching): a reader of their
/// output that goes away (`radar train 2>&1 | tee log`, and `tee` ends with the terminal while
/// the run is under `nohup`) no longer kills the process with SIGPIPE at its next line; the
/// write fails and is let pass, and the run goes on to its checkpoints. Short commands keep
/// SIGPIPE, so `radar predict DIR | head` ends as soon as `head` has what it wants; so does
/// `radar launch`, whose programs would inherit the ignored signal (a rank that is `radar-worker`
/// sets it itself; a script's `yes | head` would never end).
public func keepRunningWithoutReaders() {
    signal(SIGPIPE, SIG_IGN)
}
