import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Why `path` could not be read as a file, in the system's words: "No such file or directory",
/// "Permission denied", or that it is a folder. Every "cannot read" error names this.
public func unreadableReason(_ path: String) -> String {
    var isDir: ObjCBool = false
    if FileManager.default.fileExists(atPath: path, isDirectory: &isDir), isDir.boolValue { return "a folder, not a file" }
    let fd = open(path, O_RDONLY)
    guard fd >= 0 else { return String(cString: strerror(errno)) }
    close(fd)
    return "cannot read file"
}
