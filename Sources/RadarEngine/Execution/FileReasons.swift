import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Why `path` could not be read as a file, in the system's words: "No such file or directory",
/// "Permission denied", or that it is a folder. Every "cannot read" error names this.
public func unreadableReason(_ path: String) -> String {
    fileReadProblem(path) ?? "cannot read file"
}

/// Why `path` is not a regular file this process can open for reading, or nil where it is (a
/// check before the work that reads it).
public func fileReadProblem(_ path: String) -> String? {
    var isDir: ObjCBool = false
    if FileManager.default.fileExists(atPath: path, isDirectory: &isDir), isDir.boolValue { return "a folder, not a file" }
    let fd = open(path, O_RDONLY | O_NONBLOCK)  // a FIFO's open blocks without it
    guard fd >= 0 else { return OpenFileLimit.reason(errno) }
    defer { close(fd) }
    var st = stat()
    guard fstat(fd, &st) == 0 else { return String(cString: strerror(errno)) }
    return imageFileProblem(st, limit: .max)  // a device, a FIFO, a socket
}

/// Why the file at `path` is not to be read as an image, or nil: it is not a regular file (a
/// FIFO, a device: reading one blocked for ever or never ended), or it has more than `limit`
/// bytes. A path that cannot be stat'ed is left to the read, which names the reason.
public func imageFileProblem(_ path: String, limit: Int) -> String? {
    var st = stat()
    guard stat(path, &st) == 0 else { return nil }
    return imageFileProblem(st, limit: limit)
}

/// `imageFileProblem(path:limit:)` for a file already stat'ed.
public func imageFileProblem(_ st: stat, limit: Int) -> String? {
    switch st.st_mode & S_IFMT {
    case S_IFREG: return Int(st.st_size) > limit ? "file of \(st.st_size) bytes exceeds the \(limit >> 20) MiB limit" : nil
    case S_IFDIR: return "a folder, not a file"
    case S_IFIFO: return "a FIFO, not a regular file"
    case S_IFCHR, S_IFBLK: return "a device, not a regular file"
    case S_IFSOCK: return "a socket, not a regular file"
    default: return "not a regular file"
    }
}

/// The folder part of `path`, as `NSString.deletingLastPathComponent` gives it ("a/b" → "a",
/// "a/b/" → "a", "/o" → "/", "o" → "", "/" → "/"). Foundation's crashes (SIGILL, Swift 6.3.1) on
/// a relative one-character path: `radar train --output o` died making its folder.
public func parentPath(_ path: String) -> String {
    var p = Substring(path)
    while p.count > 1 && p.hasSuffix("/") { p = p.dropLast() }
    guard let slash = p.lastIndex(of: "/") else { return "" }
    if slash == p.startIndex { return "/" }
    var parent = p[..<slash]
    while parent.count > 1 && parent.hasSuffix("/") { parent = parent.dropLast() }
    return String(parent)
}

/// The folder `path` is in, as a path to open or create: `parentPath`, or "." for a bare name.
public func containingFolder(_ path: String) -> String {
    let parent = parentPath(path)
    return parent.isEmpty ? "." : parent
}

/// Why a small input file could not be read, in words for "PATH: <reason>".
public struct InputFileError: Error, CustomStringConvertible {
    public let reason: String
    public var description: String { reason }
}

/// The bytes of a small input file (a job token, a config, a file list, a calibration), read to
/// its end whatever it is: a regular file, a pipe (process substitution, `--token-file <(pass
/// show radar/token)`, or /dev/stdin) or a kernel file. Foundation's readers give nil for a pipe
/// (`FileManager.contents(atPath:)`, `String(contentsOfFile:)`: the token file "could not be
/// read") and only the first page of a kernel file. More than `limit` bytes is an error (an input
/// that never ends is not read for ever); so is a folder, and a device other than a terminal or
/// /dev/null (/dev/zero was read up to the limit), with the system's reasons.
public func readInputFile(_ path: String, limit: Int) throws -> Data {
    try path.withCString { try readInputFile(bytes: $0, limit: limit) }
}

/// `readInputFile` of a path given as the bytes the file system holds (a `FolderEntry`'s).
public func readInputFile(bytes path: UnsafePointer<CChar>, limit: Int) throws -> Data {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw InputFileError(reason: String(cString: strerror(errno))) }
    defer { close(fd) }
    var st = stat()
    if fstat(fd, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR { throw InputFileError(reason: "a folder, not a file") }
    if [S_IFCHR, S_IFBLK].contains(st.st_mode & S_IFMT) && isatty(fd) == 0 && !isNullDevice(st) {
        // /dev/zero, /dev/urandom, a disk: read up to the limit (16 GiB for a predictions file)
        // before the error. A terminal (a token typed in) and /dev/null are read.
        throw InputFileError(reason: "a device, not a regular file")
    }
    var bytes = Data(), chunk = [UInt8](repeating: 0, count: 1 << 16)
    while true {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 && errno == EINTR { continue }
        guard n >= 0 else { throw InputFileError(reason: String(cString: strerror(errno))) }
        if n == 0 { return bytes }
        guard bytes.count + n <= limit else { throw InputFileError(reason: "more than \(Bytes.limitText(limit)), too large for what it stands for") }
        bytes.append(contentsOf: chunk[0..<n])
    }
}

/// Whether a stat'ed file is the null device (/dev/null, whatever name it is opened by).
private func isNullDevice(_ st: stat) -> Bool {
    var null = stat()
    return (st.st_mode & S_IFMT) == S_IFCHR && stat("/dev/null", &null) == 0 && null.st_rdev == st.st_rdev
}

/// The whole text of a kernel-made file (`/proc/locks`, `/proc/self/maps`), read to its end; nil
/// where it cannot be read. Foundation's `String(contentsOfFile:)` takes such a file's size from
/// stat (0) and returns what its first read gave: the kernel's first page, about 4 KB, the rest
/// silently lost (a run's lock past the first 70 or so in /proc/locks went unseen). (/proc/cpuinfo
/// is still read that way where only the first processor is wanted: the kernel gives its record
/// whole in the first read, and the rest of it on a large machine is slow to make.)
public func readKernelFile(_ path: String) -> String? {
    (try? readInputFile(path, limit: 256 << 20)).map { String(decoding: $0, as: UTF8.self) }
}

/// One entry of a folder as the file system names it: `path`, the bytes to open it by (folder,
/// "/", name; NUL-terminated), and `name` for showing and keys, with each byte that is not UTF-8
/// written \xNN. Foundation's listings decode names as UTF-8 and put U+FFFD for such bytes (a
/// Latin-1 "caf\xE9.png" copied from an old Windows archive), and the name it gives then opens
/// nothing ("No such file or directory").
public struct FolderEntry: Sendable {
    public let name: String
    public let path: [CChar]
}

/// The entries of `folder` (not "." and ".."), in the order the system lists them.
public func folderEntries(_ folder: String) throws -> [FolderEntry] {
    try folderEntries(bytes: Array(folder.utf8CString.dropLast()))
}

/// `folderEntries` of a folder given as its path's bytes (no NUL).
public func folderEntries(bytes folder: [CChar]) throws -> [FolderEntry] {
    guard let dir = opendir(folder + [0]) else { throw InputFileError(reason: String(cString: strerror(errno))) }
    defer { closedir(dir) }
    var out: [FolderEntry] = []
    let base = folder + (folder.last == CChar(UInt8(ascii: "/")) ? [] : [CChar(UInt8(ascii: "/"))])
    while true {
        errno = 0
        guard let e = readdir(dir) else {
            if errno != 0 { throw InputFileError(reason: String(cString: strerror(errno))) }
            return out
        }
        let raw: [CChar] = withUnsafeBytes(of: &e.pointee.d_name) { b in
            Array(b.bindMemory(to: CChar.self).prefix(while: { $0 != 0 }))
        }
        if raw == [46] || raw == [46, 46] { continue }
        out.append(FolderEntry(name: displayName(raw.map { UInt8(bitPattern: $0) }), path: base + raw + [0]))
    }
}

/// Every entry under `root` that is not a folder, at any depth, `name` its path relative to `root`
/// ("sub/x.png"). Folders are walked where they are (a link to a folder is an entry, not walked:
/// no loops); with `skipHidden`, names starting with "." are left out, folders with what is in them.
/// `root` that cannot be listed is an error; a folder inside it that cannot be (no permission) is
/// told to `unlisted` with the reason, and the walk goes on.
/// `rootBytes`: the folder's path as bytes (no NUL) where `root` only shows it (a name that is not UTF-8).
public func folderTree(_ root: String, rootBytes: [CChar]? = nil, skipHidden: Bool, unlisted: (String, InputFileError) -> Void = { _, _ in }) throws -> [FolderEntry] {
    var out: [FolderEntry] = []
    func walk(_ folder: [CChar], shown: String, prefix: String) throws {
        let entries: [FolderEntry]
        do { entries = try folderEntries(bytes: folder) } catch let e as InputFileError {
            if prefix.isEmpty { throw InputFileError(reason: "\(shown): \(e)") }
            unlisted(shown, e)
            return
        }
        for e in entries where !(skipHidden && e.name.hasPrefix(".")) {
            var st = stat()
            let relative = prefix + e.name
            if lstat(e.path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR {
                try walk(Array(e.path.dropLast()), shown: (root as NSString).appendingPathComponent(relative), prefix: relative + "/")
            } else {
                out.append(FolderEntry(name: relative, path: e.path))
            }
        }
    }
    try walk(rootBytes ?? Array(root.utf8CString.dropLast()), shown: root, prefix: "")
    return out
}

/// UTF-8 bytes as text, each byte of no valid UTF-8 sequence as \xNN (uppercase hex).
public func displayName(_ bytes: [UInt8]) -> String {
    if let s = String(validating: bytes, as: UTF8.self) { return s }
    var out = "", i = 0
    while i < bytes.count {
        let b = bytes[i]
        let length = b < 0x80 ? 1 : b >= 0xC2 && b < 0xE0 ? 2 : b >= 0xE0 && b < 0xF0 ? 3 : b >= 0xF0 && b < 0xF5 ? 4 : 0
        if length > 0, i + length <= bytes.count, let s = String(validating: bytes[i..<(i + length)], as: UTF8.self) {
            out += s
            i += length
        } else {
            out += String(format: "\\x%02X", b)
            i += 1
        }
    }
    return out
}

/// A name as one field of a tab-separated line (`radar predict`'s table, a log line): tab, line
/// breaks and the other control characters written `\t`, `\n`, `\r`, `\xNN`, as `displayName`
/// writes bytes that are not UTF-8. A file named with a tab or a newline (legal on Linux) split
/// its row in two, or into an extra column, for `cut` and `awk`. `--json` keeps names as they are.
public func tableField(_ name: String) -> String {
    guard name.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) else { return name }
    var out = ""
    for u in name.unicodeScalars {
        switch u {
        case "\t": out += "\\t"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case _ where u.value < 0x20 || u.value == 0x7F: out += String(format: "\\x%02X", u.value)
        default: out.unicodeScalars.append(u)
        }
    }
    return out
}

/// The bytes (no NUL) of the command-line argument Swift decoded as `text`, where that decoding
/// replaced bytes that are not UTF-8 with U+FFFD (so `radar predict caf\xE9.png`, a Latin-1 name,
/// could not be opened by its text); nil for any other text.
public func rawArgument(_ text: String) -> [CChar]? {
    guard text.unicodeScalars.contains("\u{FFFD}") else { return nil }
    for i in 1..<Int(CommandLine.argc) {
        guard let c = CommandLine.unsafeArgv[i] else { continue }
        let bytes = Array(UnsafeBufferPointer(start: c, count: strlen(c)))
        if String(validating: bytes.map { UInt8(bitPattern: $0) }, as: UTF8.self) == nil,
           String(decoding: bytes.map { UInt8(bitPattern: $0) }, as: UTF8.self) == text { return bytes }
    }
    return nil
}
