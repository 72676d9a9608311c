import Foundation

/// An exclusive lock on a folder for as long as the value lives (flock on a file in it, released
/// by the kernel if the process dies; the file names the holder, "pid N on HOST"). A run holds
/// its experiment folder's `.lock`, so two jobs never write one folder's checkpoints and metrics;
/// a preparer holds `.prepare.lock`, so two never write one dataset's shards and journal.
public final class FolderLock {
    private var fd: Int32

    public let path: String

    /// `name`: the lock file in `directory`; `busy`: the error's reason given the holder's
    /// words (" (pid N on HOST)", or empty).
    public init(directory: String, name: String, busy: (String) -> String) throws {
        let path = (directory as NSString).appendingPathComponent(name)
        self.path = path
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw DatasetError(path: path, reason: "cannot open: \(String(cString: strerror(errno)))") }
        if flock(fd, LOCK_EX | LOCK_NB) != 0 {
            let holder = (try? String(contentsOfFile: path, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
            close(fd)
            fd = -1
            throw DatasetError(path: directory, reason: busy(holder.isEmpty ? "" : " (\(holder))"))
        }
        let me = "pid \(getpid()) on \(ProcessInfo.processInfo.hostName)\n"
        _ = ftruncate(fd, 0)
        _ = me.withCString { write(fd, $0, strlen($0)) }
    }

    /// A run's lock on its experiment folder.
    public static func experiment(_ directory: String) throws -> FolderLock {
        try FolderLock(directory: directory, name: ".lock") {
            "another run is using this experiment folder\($0): wait for it, or choose another --experiment"
        }
    }

    public func release() {
        if fd >= 0 { close(fd); fd = -1 }
    }

    deinit { release() }
}
