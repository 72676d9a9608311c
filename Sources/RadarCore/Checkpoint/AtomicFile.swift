import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Atomic file replacement, shared by checkpoints, manifests, metrics, plots and exports: write
/// beside the target, fsync, rename(2), fsync the directory.

/// Writes `data` to `path` atomically: a temporary file in the same directory, fsync, rename,
/// then fsync of the directory. A crash leaves either the old file or the new one.
public func writeFileAtomically(_ data: Data, to path: String) throws {
    let (dir, tmp) = temporarySibling(of: path)
    let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    guard fd >= 0 else { throw DatasetError(path: path, reason: "cannot create \(tmp): \(String(cString: strerror(errno)))") }
    var ok = data.withUnsafeBytes { raw -> Bool in
        var off = 0
        while off < raw.count {
            let n = write(fd, raw.baseAddress! + off, raw.count - off)
            if n <= 0 { return false }
            off += n
        }
        return true
    }
    ok = ok && fsync(fd) == 0
    close(fd)
    guard ok, rename(tmp, path) == 0 else {
        unlink(tmp)
        throw DatasetError(path: path, reason: "write failed: \(String(cString: strerror(errno)))")
    }
    fsyncDirectory(dir)
}

/// The directory of `path` ("." when it has none) and a hidden temporary name beside it, for a
/// write that ends in rename(2) (same filesystem, so the rename is atomic).
public func temporarySibling(of path: String) -> (dir: String, tmp: String) {
    let d = (path as NSString).deletingLastPathComponent
    let dir = d.isEmpty ? "." : d
    return (dir, dir + "/." + (path as NSString).lastPathComponent + ".tmp-\(getpid())")
}

public func fsyncDirectory(_ dir: String) {
    let dfd = open(dir, O_RDONLY)
    if dfd >= 0 { fsync(dfd); close(dfd) }
}
