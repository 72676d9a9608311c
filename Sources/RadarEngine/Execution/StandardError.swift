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

/// Standard input, output and error as the process found them.
public enum StandardStreams {
    nonisolated(unsafe) private static var closed: Set<Int32> = []

    /// Holds each of descriptors 0, 1 and 2 that the process started with closed (`radar serve
    /// 2>&-`, a service manager that closes them) with /dev/null opened the wrong way round (read
    /// only for output, write only for input), so that reading or writing fails as it did on the
    /// closed descriptor (`radar predict >&-` still says its output went nowhere) but no file
    /// takes the number. Otherwise the next file or socket the program opens takes it and what is
    /// written to the stream goes into it: `radar serve 2>&-` listened on descriptor 2, and its
    /// log lines were written to the listening socket (to a client's connection, or a checkpoint
    /// being written, as easily). Call at the start of `main`, before any thread and after the
    /// re-execution for OpenBLAS's kernels (which keeps them closed).
    public static func openClosed() {
        for fd in [STDIN_FILENO, STDOUT_FILENO, STDERR_FILENO] where fcntl(fd, F_GETFD) == -1 && errno == EBADF {
            closed.insert(fd)
            // The lowest free number: `fd` itself, since those below it are open by now.
            let opened = open("/dev/null", fd == STDIN_FILENO ? O_WRONLY : O_RDONLY)
            if opened >= 0 && opened != fd {
                dup2(opened, fd)
                close(opened)
            }
        }
    }

    /// Whether descriptor `fd` (0, 1 or 2) was closed when the process started (`openClosed`).
    public static func wasClosed(_ fd: Int32) -> Bool { closed.contains(fd) || fcntl(fd, F_GETFD) == -1 }
}
