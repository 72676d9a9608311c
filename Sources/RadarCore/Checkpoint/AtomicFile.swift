import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Atomic file replacement, shared by checkpoints, manifests, metrics, plots and exports: write
/// beside the target, fsync, rename(2), fsync the directory.

/// Writes `data` to `path` atomically: a temporary file in the same directory, fsync, rename,
/// then fsync of the directory. A crash leaves either the old file or the new one.
/// What `path` names decides where the bytes go: a symbolic link to a file has its target
/// replaced (the link stays a link); a device, FIFO or socket (`--predictions /dev/stdout`, a
/// named pipe, `/dev/null`) is written into, as asked, with no temporary and no rename (the
/// rename put a regular file in place of /dev/stdout, and would have of /dev/null, for everyone
/// on the machine when run as root); a folder, or a link to nothing, is an error naming it.
public func writeFileAtomically(_ data: Data, to given: String) throws {
    var path = given, st = stat(), lst = stat()
    if lstat(given, &lst) == 0 {
        guard stat(given, &st) == 0 else {
            throw DatasetError(path: given, reason: "a symbolic link to nothing (\((try? FileManager.default.destinationOfSymbolicLink(atPath: given)) ?? "?")): remove it or give another path")
        }
        switch st.st_mode & S_IFMT {
        case S_IFREG:
            if (lst.st_mode & S_IFMT) == S_IFLNK, let real = realpath(given, nil) {
                path = String(cString: real)
                free(real)
            }
        case S_IFDIR:
            throw DatasetError(path: given, reason: "a folder, expected a file name")
        default:
            let fd = open(given, O_WRONLY | O_CLOEXEC)
            guard fd >= 0 else { throw DatasetError(path: given, reason: "cannot open for writing: \(OpenFileLimit.reason(errno))") }
            let failure = data.withUnsafeBytes { writeAll(fd, $0) }
            close(fd)
            if let failure { throw DatasetError(path: given, reason: "write failed: \(String(cString: strerror(failure)))") }
            return
        }
    }
    let (dir, tmp) = temporarySibling(of: path)
    let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    guard fd >= 0 else { throw DatasetError(path: path, reason: "cannot create \(tmp): " + creationFailure(errno, folder: dir)) }
    var failure = data.withUnsafeBytes { writeAll(fd, $0) }
    if failure == nil && fsync(fd) != 0 { failure = errno }
    close(fd)
    if failure == nil && rename(tmp, path) != 0 { failure = errno }
    if let failure {
        unlink(tmp)
        throw DatasetError(path: path, reason: "write failed: " + creationFailure(failure, folder: dir) + (failure == ENOSPC ? spaceNote(dir, needed: data.count) : ""))
    }
    fsyncDirectory(dir)
}

/// For a write that ran out of space: how much the file needs and what is free there (measured
/// after the failed temporary is removed), so the message says how much to clear.
func spaceNote(_ dir: String, needed: Int, atMost: Bool = false) -> String {
    guard let free = freeBytes(dir) else { return "" }
    return " (the file needs \(atMost ? "up to " : "")\(mibText(needed)), \(mibText(free)) free in \(dir))"
}

/// Bytes an unprivileged writer may still use in `dir`'s file system (nil when it cannot be asked).
func freeBytes(_ dir: String) -> Int? {
    var s = statvfs()
    guard statvfs(dir.isEmpty ? "." : dir, &s) == 0 else { return nil }
    return Int(s.f_bavail) * Int(s.f_frsize)
}

/// "12.3 MiB".
func mibText(_ bytes: Int) -> String { String(format: "%.1f MiB", Double(bytes) / 1048576) }

/// Writes every byte to `fd` (again after an interrupted call): nil when all were written, else
/// the errno of the write that failed (EIO for one that wrote nothing).
public func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> Int32? {
    var off = 0
    while off < bytes.count {
        let n = write(fd, bytes.baseAddress! + off, bytes.count - off)
        if n < 0 && errno == EINTR { continue }
        guard n > 0 else { return n < 0 ? errno : EIO }
        off += n
    }
    return nil
}

/// The system's words for a Foundation file error ("No space left on device"), not the NSError
/// dump (`Error Domain=NSCocoaErrorDomain Code=640 ...`) that `\(error)` prints.
public func systemReason(_ error: Error) -> String {
    let ns = error as NSError
    if let code = posixCode(error) { return OpenFileLimit.reason(code) }
    // Foundation's file codes without an underlying POSIX error: the errno they stand for.
    let posix: [Int: Int32] = [NSFileNoSuchFileError: ENOENT, NSFileReadNoSuchFileError: ENOENT, NSFileReadNoPermissionError: EACCES,
                               NSFileWriteNoPermissionError: EACCES, NSFileWriteOutOfSpaceError: ENOSPC, NSFileWriteFileExistsError: EEXIST,
                               NSFileWriteVolumeReadOnlyError: EROFS]
    if ns.domain == NSCocoaErrorDomain, let e = posix[ns.code] { return String(cString: strerror(e)) }
    return ns.localizedDescription
}

/// The errno behind a Foundation error: its own (NSPOSIXErrorDomain) or its underlying error's.
public func posixCode(_ error: Error) -> Int32? {
    let ns = error as NSError
    if ns.domain == NSPOSIXErrorDomain { return Int32(ns.code) }
    if let u = ns.userInfo[NSUnderlyingErrorKey] as? NSError, u.domain == NSPOSIXErrorDomain { return Int32(u.code) }
    return nil
}

/// An error as the one line a command prints: Foundation's file errors as "PATH: reason" (the
/// path from the error, the system's words), everything else as it describes itself.
public func errorLine(_ error: Error) -> String {
    let ns = error as NSError
    guard ns.domain == NSCocoaErrorDomain || ns.domain == NSPOSIXErrorDomain else { return "\(error)" }
    let path = ns.userInfo[NSFilePathErrorKey] as? String ?? (ns.userInfo[NSURLErrorKey] as? URL)?.path
    return (path.map { "\($0): " } ?? "") + systemReason(error)
}

/// The directory of `path` ("." when it has none) and a hidden temporary name beside it, for a
/// write that ends in rename(2) (same filesystem, so the rename is atomic).
public func temporarySibling(of path: String) -> (dir: String, tmp: String) {
    let dir = containingFolder(path)
    return (dir, dir + "/." + (path as NSString).lastPathComponent + ".tmp-\(getpid())")
}

public func fsyncDirectory(_ dir: String) {
    let dfd = open(dir, O_RDONLY)
    if dfd >= 0 { fsync(dfd); close(dfd) }
}

/// A folder made with its parents, or an error in plain words (the path and the errno text).
public func makeDirectory(_ path: String) throws {
    var isDir: ObjCBool = false
    if FileManager.default.fileExists(atPath: path, isDirectory: &isDir) {
        if isDir.boolValue { return }
        throw DatasetError(path: path, reason: "cannot create the folder: a file of that name exists")
    }
    let parent = parentPath(path)
    if !parent.isEmpty && parent != path { try makeDirectory(parent) }
    if mkdir(path, 0o755) != 0 && errno != EEXIST {
        throw DatasetError(path: path, reason: "cannot create the folder: \(String(cString: strerror(errno)))")
    }
}

/// Removes the temporaries (`.NAME.tmp-PID`) that writers killed mid-write left in `dir`: those
/// whose process no longer exists. Returns the names removed.
@discardableResult
public func removeStaleTemporaries(in dir: String) -> [String] {
    guard let names = try? FileManager.default.contentsOfDirectory(atPath: dir) else { return [] }
    var removed: [String] = []
    for name in names where name.hasPrefix(".") {
        guard let r = name.range(of: ".tmp-", options: .backwards), let pid = Int32(name[r.upperBound...]), pid > 0 else { continue }
        if kill(pid, 0) != 0 && errno == ESRCH, unlink(dir + "/" + name) == 0 { removed.append(name) }
    }
    return removed
}

/// Why a file could not be created in `folder`: the system's words, and where the folder itself is
/// gone, that it is (a run's folder removed while the run went on said only "cannot create").
func creationFailure(_ code: Int32, folder: String) -> String {
    let reason = OpenFileLimit.reason(code)
    return code == ENOENT && access(folder, F_OK) != 0 ? reason + " (the folder \(folder) does not exist: removed while this ran?)" : reason
}
