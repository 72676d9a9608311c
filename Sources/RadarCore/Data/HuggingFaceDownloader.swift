import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// Fetches WildDeepfake's archives from a Hugging Face dataset repository over HTTPS: the file list
/// from the tree API (or a file), each archive streamed to `<name>.part` with HTTP Range resume
/// and retries with exponential backoff, then renamed once its size checks out.
public final class HuggingFaceDownloader: @unchecked Sendable {
    public static let repository = "datasets/xingjunm/WildDeepfake"
    public static let archiveDirectories = ["fake_test", "fake_train", "real_test", "real_train"].map { "deepfake_in_the_wild/\($0)" }

    /// Host, e.g. https://huggingface.co (HF_ENDPOINT semantics).
    public let host: String
    /// Where files resolve: <host>/datasets/xingjunm/WildDeepfake/resolve/main/.
    public let base: String
    public let token: String?
    public var attempts = 5
    public var initialBackoff: TimeInterval = 0.5
    public var timeout: TimeInterval = 60
    /// The longest wait a server's Retry-After is followed for (a 429 from the Hub's rate limit,
    /// a 503): one asking for more ends the download at once, saying how long it asked.
    public var maxRetryAfter: TimeInterval = 300
    public var log: (String) -> Void = { _ in }
    /// Each file's progress (a bar on a terminal, else a line every `RADAR_PROGRESS_SECONDS`):
    /// where its lines go and how often (tests), as `ProgressReporter` has them.
    public var progressLines: ((String) -> Void)?, progressInterval: Double?
    private var sizes: [String: Int] = [:]

    /// `endpoint`: a full resolve base URL, or a host; nil falls back to HF_ENDPOINT, then huggingface.co.
    public init(endpoint: String? = nil, token: String? = nil, environment: [String: String] = ProcessInfo.processInfo.environment) {
        let given = endpoint ?? environment["HF_ENDPOINT"] ?? "https://huggingface.co"
        var trimmed = given
        while trimmed.hasSuffix("/") { trimmed.removeLast() }
        if let r = trimmed.range(of: "/datasets/") {
            host = String(trimmed[..<r.lowerBound])
            base = trimmed + "/"
        } else {
            host = trimmed
            base = "\(trimmed)/\(HuggingFaceDownloader.repository)/resolve/main/"
        }
        self.token = token
    }

    public struct DownloadError: Error, CustomStringConvertible {
        public let url: String
        public let reason: String
        public var description: String { "\(url): \(reason)" }
    }

    public static func readFileList(_ path: String) throws -> [String] {
        let text: String
        do { text = String(decoding: try readInputFile(path, limit: 64 << 20), as: UTF8.self) } catch {  // a pipe too: --file-list <(grep ...)
            throw DatasetError(path: path, reason: "cannot read file list: \(error)")
        }
        // A byte order mark (Notepad's UTF-8) would be part of the first path.
        let files = text.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: CharacterSet.whitespaces.union(CharacterSet(charactersIn: "\u{FEFF}"))) }
            .filter { !$0.isEmpty && !$0.hasPrefix("#") }
        guard !files.isEmpty else { throw DatasetError(path: path, reason: "file list is empty") }
        return files
    }

    /// Archive paths from the repository's tree API, sorted.
    public func listArchives() throws -> [String] {
        var files: [String] = []
        for dir in HuggingFaceDownloader.archiveDirectories {
            // The tree API pages long listings; the next page's URL comes in a Link header.
            var next: String? = "\(host)/api/\(HuggingFaceDownloader.repository)/tree/main/\(dir)"
            while let url = next {
                let (data, response) = try fetchWithResponse(url)
                guard let items = try? JSONSerialization.jsonObject(with: data) as? [[String: Any]] else {
                    throw DownloadError(url: url, reason: "tree API answer is not a JSON list")
                }
                for item in items where (item["type"] as? String) == "file" {
                    guard let path = item["path"] as? String, path.hasSuffix(".tar.gz") || path.hasSuffix(".tar") else { continue }
                    files.append(path)
                    if let size = item["size"] as? Int { sizes[path] = size }
                }
                next = HuggingFaceDownloader.nextPage(response.value(forHTTPHeaderField: "Link"), base: host)
            }
        }
        guard !files.isEmpty else { throw DownloadError(url: host, reason: "the tree API listed no archives") }
        return files.sorted()
    }

    /// Downloads every file under `directory` (keeping the repository's relative paths); files
    /// already complete are skipped, partial ones resumed.
    public func download(_ files: [String], to directory: String) throws {
        // Each path is joined to the download folder: one from the tree API (a mirror's answer) or
        // a file list that climbs out of it (`..`, an absolute path) is refused, never written.
        for f in files {
            let parts = f.split(separator: "/", omittingEmptySubsequences: false)
            guard !f.hasPrefix("/"), !parts.contains(where: { $0.isEmpty || $0 == "." || $0 == ".." }) else {
                throw DownloadError(url: base + f, reason: "archive path \(f) is not a plain relative path (no empty, . or .. parts): refused")
            }
        }
        for (i, f) in files.enumerated() {
            let dest = (directory as NSString).appendingPathComponent(f)
            if FileManager.default.fileExists(atPath: dest) { continue }
            try FileManager.default.createDirectory(atPath: parentPath(dest), withIntermediateDirectories: true)
            log("download \(i + 1)/\(files.count): \(f)")
            try downloadFile(base + f, to: dest, expectedSize: sizes[f])
        }
    }

    /// One file with resume and retries, into `dest + partSuffix` until complete; `verify` (a
    /// hash check) sees the finished part before it is renamed, and its error removes it.
    /// `label`: the progress bar's (default "download <file name>"; the Hub cache names its
    /// blobs by hash, so the Hub passes the repository's file name).
    public func downloadFile(_ url: String, to dest: String, expectedSize: Int? = nil, partSuffix: String = ".part", label: String? = nil,
                             verify: ((String) throws -> Void)? = nil) throws {
        let part = dest + partSuffix
        var lastError = ""
        var backoff = initialBackoff
        // MiB of the file (a 15 GB WildDeepfake archive, an 88 MB ViT-S): shown where the size is known.
        let bar = expectedSize.map { ProgressReporter(label ?? "download " + (dest as NSString).lastPathComponent, total: max(1, $0 >> 20), unit: "MiB") }
        if let bar, let progressLines { bar.lineSink = progressLines }
        if let bar, let progressInterval { bar.logInterval = progressInterval }
        for attempt in 1...max(attempts, 1) {
            var serverWait: TimeInterval?
            let have = (try? FileManager.default.attributesOfItem(atPath: part)[.size] as? Int) ?? 0
            let result = transfer(url, appendingTo: part, from: have) { bytes in
                bar?.update(min(bytes >> 20, bar!.total - 1), items: (bytes - have) >> 20)
            }
            switch result {
            case .complete(let total):
                let size = (try? FileManager.default.attributesOfItem(atPath: part)[.size] as? Int) ?? 0
                if let want = expectedSize ?? total, size != want {
                    lastError = "size \(size) after download, expected \(want)"
                    if size > want { try? FileManager.default.removeItem(atPath: part) }
                } else {
                    do { try verify?(part) } catch {
                        try? FileManager.default.removeItem(atPath: part)
                        throw error
                    }
                    guard rename(part, dest) == 0 else { throw DownloadError(url: url, reason: "cannot rename to \(dest)") }
                    bar?.update(bar!.total, items: (size - have) >> 20)  // a finished bar ends its line
                    return
                }
            case .failed(let reason, let retry, let after):
                lastError = reason
                if !retry { throw DownloadError(url: url, reason: reason) }
                serverWait = after
            }
            if attempt < attempts {
                let wait = try pause(lastError, serverWait: serverWait, backoff: backoff, url: url)
                log("  attempt \(attempt) failed (\(lastError)); retrying in \(wait)s" + (serverWait != nil ? " (the server's Retry-After)" : ""))
                Thread.sleep(forTimeInterval: wait)
                backoff *= 2
            }
        }
        throw DownloadError(url: url, reason: "gave up after \(attempts) attempts: \(lastError)")
    }

    enum Transfer { case complete(total: Int?), failed(String, retry: Bool, after: TimeInterval? = nil) }

    /// Seconds a Retry-After header asks for (RFC 9110: delta-seconds, or an HTTP-date), or nil.
    static func retryAfter(_ value: String?, now: Date = Date()) -> TimeInterval? {
        guard let v = value?.trimmingCharacters(in: .whitespaces), !v.isEmpty else { return nil }
        if v.allSatisfy(\.isASCII), v.allSatisfy(\.isNumber) { return Int(v).map(TimeInterval.init) }
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX")
        f.timeZone = TimeZone(identifier: "GMT")
        f.dateFormat = "EEE, dd MMM yyyy HH:mm:ss 'GMT'"
        return f.date(from: v).map { max(0, $0.timeIntervalSince(now)) }
    }

    /// The wait before the next attempt: the server's Retry-After where it sent one, else the
    /// backoff; a Retry-After beyond `maxRetryAfter` is an error now (waiting hours in silence,
    /// or hammering a rate limit, helps no one).
    func pause(_ failure: String, serverWait: TimeInterval?, backoff: TimeInterval, url: String) throws -> TimeInterval {
        guard let serverWait else { return backoff }
        guard serverWait <= maxRetryAfter else {
            throw DownloadError(url: url, reason: "\(failure): the server asks to wait \(Int(serverWait.rounded())) s (Retry-After), more than \(Int(maxRetryAfter)) s: try again later")
        }
        return serverWait
    }

    /// A transfer error no retry can mend, said with what to do about it; nil for the others
    /// (a refused or lost connection, a timeout, an unresolved name: a flaky network or a Hub
    /// restarting, which retries outlast). Permanent: the server's certificate not verified
    /// (corelibs Foundation reports libcurl's "SSL certificate problem: ..." as code -1 with
    /// curl's text, Apple's as the -120x codes), no CA certificates where libcurl reads them
    /// ("error setting certificate file: PATH"), a URL libcurl cannot fetch. huggingface_hub,
    /// likewise, retries none of these and does not fall back on its cache for them.
    public static func permanentFailure(_ error: Error) -> String? {
        let e = error as NSError
        guard e.domain == NSURLErrorDomain else { return nil }
        let text = e.localizedDescription
        switch e.code {
        case NSURLErrorBadURL, NSURLErrorUnsupportedURL:
            return "\(text) (not a URL this downloader fetches: check HF_ENDPOINT or --endpoint)"
        case NSURLErrorServerCertificateHasBadDate, NSURLErrorServerCertificateUntrusted, NSURLErrorServerCertificateHasUnknownRoot,
             NSURLErrorServerCertificateNotYetValid, NSURLErrorClientCertificateRejected, NSURLErrorClientCertificateRequired:
            break
        default:
            guard text.lowercased().contains("certificate") else { return nil }
        }
        // SSL_CERT_FILE (and the like) reaches libcurl only through the bundle's tools/ca_bundle.c (Foundation
        // takes no CA file on Linux, Debian's libcurl reads only its own path): the remedy said
        // is the one that works in this process.
        let named = caBundleInterposed ? "set SSL_CERT_FILE (or CURL_CA_BUNDLE, REQUESTS_CA_BUNDLE) to a CA bundle that holds it"
            : "add it to this machine's CA store, which libcurl reads at /etc/ssl/certs/ca-certificates.crt (Debian: copy it to /usr/local/share/ca-certificates/ and run update-ca-certificates)"
        if text.contains("certificate file") || text.contains("verify locations") {
            return "\(text) (no CA certificates there: install the system's (Debian: ca-certificates)" + (caBundleInterposed ? " or set SSL_CERT_FILE to a CA bundle)" : ")")
        }
        return "\(text) (the server's certificate is not signed by a CA this machine trusts; retrying cannot help: behind a TLS-inspecting proxy, take the proxy's CA and \(named))"
    }

    /// Whether the bundle's `libradar-ca-bundle.so` is loaded (it is the programs' first needed
    /// library there, and nowhere else).
    static let caBundleInterposed: Bool = {
        readKernelFile("/proc/self/maps")?.contains("/libradar-ca-bundle.so") ?? false
    }()

    private func request(_ url: String) -> URLRequest? {
        guard let u = URL(string: url) else { return nil }
        var r = URLRequest(url: u, timeoutInterval: timeout)
        if let token { r.setValue("Bearer \(token)", forHTTPHeaderField: "Authorization") }
        return r
    }

    /// The `rel="next"` target of an RFC 8288 Link header (made absolute against `base`).
    static func nextPage(_ link: String?, base: String) -> String? {
        guard let link else { return nil }
        for part in link.split(separator: ",") where part.contains("rel=\"next\"") {
            guard let a = part.firstIndex(of: "<"), let b = part.firstIndex(of: ">"), a < b else { continue }
            let target = String(part[part.index(after: a)..<b])
            return target.hasPrefix("http") ? target : base + (target.hasPrefix("/") ? "" : "/") + target
        }
        return nil
    }

    /// GET into memory (small answers: the tree API), with retries.
    func fetch(_ url: String) throws -> Data { try fetchWithResponse(url).0 }

    func fetchWithResponse(_ url: String) throws -> (Data, HTTPURLResponse) {
        var backoff = initialBackoff
        var last = ""
        for attempt in 1...max(attempts, 1) {
            var serverWait: TimeInterval?
            guard let req = request(url) else { throw DownloadError(url: url, reason: "bad URL") }
            let sem = DispatchSemaphore(value: 0)
            nonisolated(unsafe) var result: (Data?, URLResponse?, Error?) = (nil, nil, nil)
            URLSession.shared.dataTask(with: req) { d, r, e in result = (d, r, e); sem.signal() }.resume()
            sem.wait()
            if let e = result.2 {
                if let permanent = HuggingFaceDownloader.permanentFailure(e) { throw DownloadError(url: url, reason: permanent) }
                last = "\(e.localizedDescription)"
            } else if let h = result.1 as? HTTPURLResponse {
                if h.statusCode == 200, let d = result.0 { return (d, h) }
                last = "HTTP \(h.statusCode)"
                if h.statusCode == 401 || h.statusCode == 403 || h.statusCode == 404 {
                    throw DownloadError(url: url, reason: last + (h.statusCode == 404 ? " (not found)" : " (set HF_TOKEN?)"))
                }
                serverWait = HuggingFaceDownloader.retryAfter(h.value(forHTTPHeaderField: "Retry-After"))
            }
            if attempt < attempts {
                let wait = try pause(last, serverWait: serverWait, backoff: backoff, url: url)
                if serverWait != nil { log("  \(url): \(last); retrying in \(wait)s (the server's Retry-After)") }
                Thread.sleep(forTimeInterval: wait)
                backoff *= 2
            }
        }
        throw DownloadError(url: url, reason: "gave up after \(attempts) attempts: \(last)")
    }

    /// Streams the body into `path`, asking for bytes from `offset` on (HTTP Range).
    func transfer(_ url: String, appendingTo path: String, from offset: Int, received: ((Int) -> Void)? = nil) -> Transfer {
        guard var req = request(url) else { return .failed("bad URL", retry: false) }
        if offset > 0 { req.setValue("bytes=\(offset)-", forHTTPHeaderField: "Range") }
        let sink = StreamSink(path: path, offset: offset)
        sink.received = received
        let session = URLSession(configuration: .ephemeral, delegate: sink, delegateQueue: nil)
        defer { session.finishTasksAndInvalidate() }
        session.dataTask(with: req).resume()
        sink.done.wait()
        if var reason = sink.failure {
            if sink.diskFull, let have = try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int, have > 0 {
                reason += "; the \(mibText(have)) downloaded are kept in \(path): the same command resumes from there once there is room"
            }
            return .failed(reason, retry: sink.retry, after: sink.retryAfter)
        }
        return .complete(total: sink.total)
    }

    /// URLSession delegate that writes the body to a file as it arrives.
    final class StreamSink: NSObject, URLSessionDataDelegate, @unchecked Sendable {
        let path: String
        let offset: Int
        let done = DispatchSemaphore(value: 0)
        var handle: FileHandle?
        var failure: String?
        var retry = true
        /// The server's Retry-After with an error status (a 429, a 503), in seconds.
        var retryAfter: TimeInterval?
        var total: Int?
        /// The write failed for want of space: what is downloaded is kept for the next run.
        var diskFull = false
        /// Called with the file's size after each write (the progress bar).
        var received: ((Int) -> Void)?
        private var size = 0

        init(path: String, offset: Int) { self.path = path; self.offset = offset }

        func urlSession(_ session: URLSession, dataTask: URLSessionDataTask, didReceive response: URLResponse,
                        completionHandler: @escaping (URLSession.ResponseDisposition) -> Void) {
            guard let h = response as? HTTPURLResponse else { failure = "no HTTP response"; completionHandler(.cancel); return }
            switch h.statusCode {
            case 206 where offset > 0:
                // Content-Range: bytes start-end/total
                if let cr = h.value(forHTTPHeaderField: "Content-Range"), let slash = cr.lastIndex(of: "/") { total = Int(cr[cr.index(after: slash)...]) }
                if !FileManager.default.fileExists(atPath: path) { _ = FileManager.default.createFile(atPath: path, contents: nil) }
                handle = FileHandle(forWritingAtPath: path)
                size = Int((try? handle?.seekToEnd()) ?? 0)
            case 200:
                // The server ignored the range (or there was none): start over.
                _ = FileManager.default.createFile(atPath: path, contents: nil)
                handle = FileHandle(forWritingAtPath: path)
                total = h.expectedContentLength >= 0 ? Int(h.expectedContentLength) : nil
            case 416:
                failure = nil
                total = offset
            case 401, 403, 404:
                failure = "HTTP \(h.statusCode)" + (h.statusCode == 404 ? " (not found)" : " (set HF_TOKEN?)")
                retry = false
            default:
                failure = "HTTP \(h.statusCode)"
                retryAfter = HuggingFaceDownloader.retryAfter(h.value(forHTTPHeaderField: "Retry-After"))
            }
            completionHandler(handle == nil ? .cancel : .allow)
        }

        func urlSession(_ session: URLSession, dataTask: URLSessionDataTask, didReceive data: Data) {
            do {
                try handle?.write(contentsOf: data)
                size += data.count
                received?(size)
            } catch {
                // The file and, on a full disk, how much is left to fetch against what is free
                // (it said only "write failed: No space left on device", against the URL).
                var text = "cannot write \(path): \(systemReason(error))"
                if systemReason(error) == String(cString: strerror(ENOSPC)) {
                    let have = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
                    let dir = parentPath(path)
                    if let free = freeBytes(dir) {
                        text += " (" + (total.map { "\(mibText(max(0, $0 - have))) still to fetch, " } ?? "") + "\(mibText(free)) free in \(dir))"
                    }
                    diskFull = true
                }
                failure = text
                retry = false
                dataTask.cancel()
            }
        }

        func urlSession(_ session: URLSession, task: URLSessionTask, didCompleteWithError error: Error?) {
            try? handle?.synchronize()
            try? handle?.close()
            if let error, failure == nil, handle != nil || total == nil {
                if let permanent = HuggingFaceDownloader.permanentFailure(error) {
                    failure = permanent
                    retry = false
                } else {
                    failure = "connection lost: \(error.localizedDescription)"
                }
            }
            if let total, failure == nil, let size = try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int, size < total {
                failure = "connection lost after \(size) of \(total) bytes"
            }
            done.signal()
        }
    }
}
