import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The limit on open files (`ulimit -n`, RLIMIT_NOFILE; ENFILE: the system's): how an error it
/// caused says so.
public enum OpenFileLimit {
    /// Whether `code` (an errno) is the limit on open files, the process's or the system's.
    public static func reached(_ code: Int32) -> Bool { code == EMFILE || code == ENFILE }

    /// strerror's words, and for the limit which one: "Too many open files: the limit on open
    /// files is reached (ulimit -n 24)".
    public static func reason(_ code: Int32) -> String {
        let words = String(cString: strerror(code))
        switch code {
        case EMFILE:
            var limit = rlimit()
            let n = getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 ? " (ulimit -n \(limit.rlim_cur))" : ""
            return words + ": the limit on open files is reached" + n
        case ENFILE: return words + ": the system's limit on open files is reached (fs.file-max)"
        default: return words
        }
    }
}

/// Whether accept(2) failing with `code` is only this connection's trouble, to be tried again:
/// an interrupted call, a connection gone before it was taken, and the network errors Linux
/// passes on from a pending connection (accept(2): "treat them like EAGAIN by retrying").
public func acceptMayBeRetried(_ code: Int32) -> Bool {
    [EINTR, EAGAIN, ECONNABORTED, EPROTO, ENETDOWN, ENOPROTOOPT, EHOSTDOWN, ENONET, EHOSTUNREACH, EOPNOTSUPP, ENETUNREACH, EPERM].contains(code)
}

/// One descriptor held back (on /dev/null) for a listener that meets the limit on open files. A
/// pending connection then cannot be accepted, stays pending, and poll says the listener is
/// readable again at once: a loop that spun, or a server that gave up (`radar serve` ended when
/// accept failed). With the spare closed for a moment the connection is taken, told why, and
/// closed, and the listener goes on serving the connections it has.
public final class SpareDescriptor: @unchecked Sendable {
    private let lock = NSLock()
    private var fd: Int32

    public init() { fd = open("/dev/null", O_RDONLY | O_CLOEXEC) }

    deinit { if fd >= 0 { close(fd) } }

    /// Takes the next pending connection on `listener` with the spare descriptor, hands it to
    /// `answer` (to write its refusal; it is closed after), and takes the spare back. False where
    /// no spare could be held or nothing was pending: wait a little instead.
    public func shed(_ listener: Int32, answer: (Int32) -> Void) -> Bool {
        lock.lock(); defer { lock.unlock() }
        if fd < 0 { fd = open("/dev/null", O_RDONLY | O_CLOEXEC) }
        // Only a connection still pending: accept on the blocking listener would wait for the next.
        var p = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
        guard fd >= 0, poll(&p, 1, 0) > 0 else { return false }
        close(fd)
        let c = accept(listener, nil, nil)
        if c >= 0 {
            _ = fcntl(c, F_SETFD, FD_CLOEXEC)
            answer(c)
            close(c)
        }
        fd = open("/dev/null", O_RDONLY | O_CLOEXEC)
        return c >= 0
    }
}
