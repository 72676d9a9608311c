import CArchive
import Foundation

/// An archive read or write failure, naming the file.
public struct ArchiveError: Error, CustomStringConvertible {
    public let path: String
    public let reason: String
    /// The system's errno behind a failed write (ENOSPC: a full disk), 0 where none.
    public var code: Int32 = 0
    public var description: String { "\(path): \(reason)" }
}

/// libarchive converts member names through the C library's locale, and a process starts in the
/// "C" locale (ASCII only): a file named `é1.png` in a real/ fake/ folder stopped `prepare` with
/// "Can't translate pathname". Names are UTF-8 everywhere here (Swift strings, pax headers, zip
/// entries flagged UTF-8), so the character type is set to UTF-8 once, before the first archive,
/// and by each program at its start (before other threads run).
/// Where the bundle runs on its own glibc (scripts/bundle.sh: a machine whose glibc is older than
/// its files need), the machine's locale files are another glibc's, whose format that glibc may
/// refuse; the launcher then names the bundle's own `C.utf8` in `RADAR_BUNDLE_LOCALES`, read here
/// through `LOCPATH` for this one call, so programs started from here keep the machine's locales.
public enum ArchiveNames {
    public static let utf8: Bool = {
        if let dir = ProcessInfo.processInfo.environment["RADAR_BUNDLE_LOCALES"], !dir.isEmpty {
            let saved = getenv("LOCPATH").map { String(cString: $0) }
            setenv("LOCPATH", dir, 1)
            let found = setlocale(LC_CTYPE, "C.utf8") != nil
            if let s = saved { setenv("LOCPATH", s, 1) } else { unsetenv("LOCPATH") }
            if found { return true }
        }
        for name in ["C.UTF-8", "C.utf8", "en_US.UTF-8"] where setlocale(LC_CTYPE, name) != nil { return true }
        return false
    }()
}

/// Streams the members of a tar, tar.gz (or any format/filter libarchive knows) file: one member
/// in memory at a time, never the whole archive.
public final class ArchiveReader {
    public let path: String
    private let handle: OpaquePointer

    public struct Member {
        public let name: String
        public let size: Int
        public let isFile: Bool
        /// A GNU or pax sparse member (holes declared, not stored).
        public var isSparse = false
    }

    public init(path: String) throws {
        self.path = path
        _ = ArchiveNames.utf8
        guard let a = archive_read_new() else { throw ArchiveError(path: path, reason: "libarchive init failed") }
        archive_read_support_filter_all(a)
        archive_read_support_format_tar(a)
        archive_read_support_format_zip(a)
        handle = a
        if archive_read_open_filename(a, path, 1 << 16) != radar_archive_ok() {
            // deinit frees the handle.
            throw ArchiveError(path: path, reason: "cannot open archive: \(ArchiveReader.message(a))")
        }
    }

    deinit { archive_read_free(handle) }

    /// libarchive's words, with the system's where it has an errno ("Write error" said nothing
    /// of a full disk: "Write error: No space left on device").
    static func message(_ a: OpaquePointer) -> String {
        let text = archive_error_string(a).map { String(cString: $0) } ?? "unknown libarchive error"
        let code = archive_errno(a)
        guard code > 0 else { return text }
        let system = String(cString: strerror(code))
        return text.contains(system) ? text : "\(text): \(system)"
    }

    /// The next member header, or nil at the end. Throws on a truncated or corrupt archive.
    public func next() throws -> Member? {
        var entry: OpaquePointer?
        let rc = archive_read_next_header(handle, &entry)
        if rc == radar_archive_eof() { return nil }
        guard rc == radar_archive_ok() || rc == radar_archive_warn(), let entry else {
            throw ArchiveError(path: path, reason: "corrupt or truncated archive: \(ArchiveReader.message(handle))")
        }
        let name = (archive_entry_pathname_utf8(entry) ?? archive_entry_pathname(entry)).map { String(cString: $0) } ?? ""
        let isFile = archive_entry_filetype(entry) == radar_archive_regular_file()
        var m = Member(name: name, size: Int(archive_entry_size(entry)), isFile: isFile)
        m.isSparse = archive_entry_sparse_count(entry) > 0
        return m
    }

    /// The current member's bytes.
    public func readData(expected: Int) throws -> Data {
        var out = Data(count: expected)
        var got = 0
        while got < expected {
            let n = out.withUnsafeMutableBytes { archive_read_data(handle, $0.baseAddress! + got, expected - got) }
            if n < 0 { throw ArchiveError(path: path, reason: "corrupt or truncated archive: \(ArchiveReader.message(handle))") }
            if n == 0 { throw ArchiveError(path: path, reason: "truncated archive: member ends after \(got) of \(expected) bytes") }
            got += n
        }
        return out
    }

    /// Skips the current member's data.
    public func skipData() throws {
        if archive_read_data_skip(handle) != radar_archive_ok() {
            throw ArchiveError(path: path, reason: "corrupt or truncated archive: \(ArchiveReader.message(handle))")
        }
    }
}

/// Writes a tar file (POSIX pax-restricted: plain ustar unless a name needs more) with fixed
/// metadata, so identical content gives identical bytes.
public final class TarWriter {
    public let path: String
    private let handle: OpaquePointer
    private var closed = false

    public init(path: String, format: Format = .tar) throws {
        self.path = path
        _ = ArchiveNames.utf8
        guard let a = archive_write_new() else { throw ArchiveError(path: path, reason: "libarchive init failed") }
        handle = a
        switch format {
        case .tar: archive_write_set_format_pax_restricted(a)
        case .tarGzip:
            archive_write_set_format_pax_restricted(a)
            archive_write_add_filter_gzip(a)
        case .zip:
            archive_write_set_format_zip(a)
            // Names are UTF-8, flagged as such (bit 11): without it readers such as Python's
            // zipfile and Windows take them for CP437 ("my run ü" read as "my run ├╝").
            archive_write_set_format_option(a, "zip", "hdrcharset", "UTF-8")
        }
        if archive_write_open_filename(a, path) != radar_archive_ok() {
            // deinit frees the handle.
            throw ArchiveError(path: path, reason: "cannot create: \(ArchiveReader.message(a))")
        }
    }

    public enum Format { case tar, tarGzip, zip }

    deinit { if !closed { archive_write_free(handle) } }

    /// Modification time written for each member: 0 by default, so shards are byte-for-byte
    /// reproducible; exports set the time they are made.
    public var mtime = 0

    public func add(name: String, data: Data) throws {
        guard let entry = archive_entry_new() else { throw ArchiveError(path: path, reason: "libarchive entry failed") }
        defer { archive_entry_free(entry) }
        archive_entry_set_pathname_utf8(entry, name)  // Swift strings are UTF-8, whatever the locale
        archive_entry_set_size(entry, Int64(data.count))
        archive_entry_set_filetype(entry, radar_archive_regular_file())
        archive_entry_set_perm(entry, 0o644)
        archive_entry_set_mtime(entry, mtime, 0)
        guard archive_write_header(handle, entry) == radar_archive_ok() else {
            throw ArchiveError(path: path, reason: "cannot write \(name): \(ArchiveReader.message(handle))")
        }
        let n = data.withUnsafeBytes { archive_write_data(handle, $0.baseAddress, data.count) }
        guard n == data.count else {
            throw ArchiveError(path: path, reason: "short write of \(name): \(ArchiveReader.message(handle))", code: archive_errno(handle))
        }
    }

    /// Writes what is buffered (a zip's central directory) and closes the file.
    public func close() throws {
        closed = true
        let rc = archive_write_close(handle)
        let failure = rc == radar_archive_ok() ? nil : ArchiveError(path: path, reason: "close failed: \(ArchiveReader.message(handle))", code: archive_errno(handle))
        archive_write_free(handle)
        if let failure { throw failure }
    }
}
