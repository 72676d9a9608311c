import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// Model files from the Hugging Face Hub for `--pretrained hf-hub:ORG/NAME[@REVISION]` (timm's own
/// spelling; `--pretrained timm` is the reference's `vit_small_patch16_224`, i.e.
/// `timm/vit_small_patch16_224.augreg_in21k_ft_in1k`), kept in huggingface_hub's cache layout so
/// timm, PyTorch and RADAR share one copy: `<cache>/models--ORG--NAME/blobs/<etag>`, the file
/// itself as `snapshots/<commit>/<file>`, a relative link to its blob, and `refs/<revision>`
/// holding the commit. The cache is `HF_HUB_CACHE`, else `HF_HOME/hub`, else
/// `XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`; the host `HF_ENDPOINT`;
/// `HF_TOKEN` (or the token file huggingface_hub writes) for private repositories;
/// `HF_HUB_OFFLINE=1` reads the cache only. A download goes to `blobs/<etag>.incomplete` (where
/// huggingface_hub resumes it too) under the same per-blob lock file
/// (`.locks/models--ORG--NAME/<etag>.lock`, flock), so ranks on one node download it once, and
/// it is checked against its etag (SHA-256 for large files, git's blob SHA-1 for small ones)
/// before it is renamed into place.
public enum HubModel {
    /// The reference's encoder: timm's `vit_small_patch16_224` (its default pretrained tag).
    public static let timmDefault = "timm/vit_small_patch16_224.augreg_in21k_ft_in1k"

    public struct Reference: Equatable, Sendable, CustomStringConvertible {
        public let repo: String
        public let revision: String
        public var description: String { "hf-hub:\(repo)" + (revision == "main" ? "" : "@\(revision)") }
    }

    public struct HubError: Error, CustomStringConvertible {
        public let description: String
        /// The Hub out of reach or answering 429/5xx (not the request's fault): a cached copy will do.
        var transient = false
    }

    /// `timm`, `hf-hub:ORG/NAME` or `hf-hub:ORG/NAME@REVISION` as a reference; nil for anything
    /// else (a file path). A malformed `hf-hub:` name is an error.
    public static func reference(_ spec: String) throws -> Reference? {
        if spec == "timm" { return Reference(repo: timmDefault, revision: "main") }
        guard spec.hasPrefix("hf-hub:") else { return nil }
        var name = String(spec.dropFirst("hf-hub:".count)), revision = "main"
        if let at = name.firstIndex(of: "@") {
            revision = String(name[name.index(after: at)...])
            name = String(name[..<at])
        }
        let parts = name.split(separator: "/", omittingEmptySubsequences: false)
        let allowed = CharacterSet.alphanumerics.union(CharacterSet(charactersIn: "-_."))
        guard parts.count == 2, parts.allSatisfy({ !$0.isEmpty && $0 != "." && $0 != ".." && $0.unicodeScalars.allSatisfy(allowed.contains) }),
              !revision.isEmpty, !revision.contains(".."), revision.unicodeScalars.allSatisfy({ allowed.contains($0) || $0 == "/" }) else {
            throw HubError(description: "\(spec): expected hf-hub:ORG/NAME or hf-hub:ORG/NAME@REVISION (letters, digits, - _ .)")
        }
        return Reference(repo: name, revision: revision)
    }

    public static func cacheDirectory(_ env: [String: String]) -> String {
        if let c = env["HF_HUB_CACHE"], !c.isEmpty { return c }
        if let h = env["HF_HOME"], !h.isEmpty { return (h as NSString).appendingPathComponent("hub") }
        let xdg = env["XDG_CACHE_HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? ((env["HOME"] ?? NSHomeDirectory()) as NSString).appendingPathComponent(".cache")
        return (xdg as NSString).appendingPathComponent("huggingface/hub")
    }

    static func isOffline(_ env: [String: String]) -> Bool {
        ["1", "on", "yes", "true"].contains((env["HF_HUB_OFFLINE"] ?? "").lowercased())
    }

    static func token(_ env: [String: String]) -> String? {
        if let t = env["HF_TOKEN"], !t.isEmpty { return t }
        let home = env["HF_HOME"].flatMap { $0.isEmpty ? nil : $0 }
            ?? ((env["XDG_CACHE_HOME"] ?? ((env["HOME"] ?? NSHomeDirectory()) as NSString).appendingPathComponent(".cache")) as NSString).appendingPathComponent("huggingface")
        let path = env["HF_TOKEN_PATH"] ?? (home as NSString).appendingPathComponent("token")
        // Read to its end whatever it is (a secret manager's FIFO, <(pass hf) as HF_TOKEN_PATH).
        let t = (try? readInputFile(path, limit: 64 << 10)).map { String(decoding: $0, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) }
        return t?.isEmpty == false ? t : nil
    }

    /// What the Hub says of a file: the commit the revision is at, the file's etag and size.
    struct Metadata { let commit: String, etag: String, size: Int? }

    /// The local path of `filename` at the reference's revision, from the cache, downloaded
    /// into it when missing. `log` hears about downloads and about falling back on the cache.
    public static func file(_ ref: Reference, _ filename: String, environment env: [String: String] = ProcessInfo.processInfo.environment,
                            log: @escaping (String) -> Void = { _ in }) throws -> String {
        let cache = cacheDirectory(env)
        let repoDir = (cache as NSString).appendingPathComponent("models--" + ref.repo.replacingOccurrences(of: "/", with: "--"))
        let host = { () -> String in
            var h = env["HF_ENDPOINT"].flatMap { $0.isEmpty ? nil : $0 } ?? "https://huggingface.co"
            while h.hasSuffix("/") { h.removeLast() }
            return h
        }()
        // A revision such as refs/pr/1 goes in the URL quoted, as huggingface_hub quotes it.
        let quoted = ref.revision.addingPercentEncoding(withAllowedCharacters: CharacterSet.alphanumerics.union(CharacterSet(charactersIn: "-_."))) ?? ref.revision
        let url = "\(host)/\(ref.repo)/resolve/\(quoted)/\(filename)"
        // The cached copy for the revision, if any: through refs/<revision> (or the commit itself).
        func cached() -> String? {
            let commit = isCommit(ref.revision) ? ref.revision
                : (try? String(contentsOfFile: "\(repoDir)/refs/\(ref.revision)", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
            guard let commit, !commit.isEmpty else { return nil }
            let p = "\(repoDir)/snapshots/\(commit)/\(filename)"
            return FileManager.default.fileExists(atPath: p) ? p : nil
        }
        if isOffline(env) {
            if let p = cached() { return p }
            throw HubError(description: "\(ref) \(filename): not in the Hugging Face cache (\(cache)) and HF_HUB_OFFLINE is set: "
                           + "download it where there is a network (the same command, or huggingface-cli download \(ref.repo) \(filename)) into that cache")
        }
        let token = token(env)
        let meta: Metadata
        do {
            meta = try metadata(url, token: token)
        } catch let e as HubError where e.transient {
            // No network (a compute node), or the Hub down or rate-limiting: the cached copy, said.
            if let p = cached() {
                log("\(ref) \(filename): \(e.description); using the cached \(p)")
                return p
            }
            throw HubError(description: "\(url): \(e.description), and \(filename) is not in the Hugging Face cache (\(cache))")
        } catch let e as HubError {
            // The Hub reached but refusing (a certificate problem, an expired token, a deleted
            // repository): an error, as huggingface_hub's, with the way to the copy there is.
            guard let p = cached() else { throw e }
            throw HubError(description: "\(e.description); HF_HUB_OFFLINE=1 uses the cached \(p)")
        }
        let snapshotDir = "\(repoDir)/snapshots/\(meta.commit)", snapshot = "\(snapshotDir)/\(filename)"
        let blob = "\(repoDir)/blobs/\(meta.etag)"
        let fm = FileManager.default
        let refFile = "\(repoDir)/refs/\(ref.revision)"
        func refHolds() -> Bool { (try? String(contentsOfFile: refFile, encoding: .utf8)) == meta.commit }
        do {
            for d in ["\(repoDir)/blobs", parentPath(refFile), parentPath(snapshot)] { try fm.createDirectory(atPath: d, withIntermediateDirectories: true) }
            if !isCommit(ref.revision) && !refHolds() {
                do { try writeFileAtomically(Data(meta.commit.utf8), to: refFile) } catch where refHolds() {}  // another resolver wrote it
            }
        } catch {
            throw HubError(description: "\(repoDir): cannot write the Hugging Face cache: \(error)")
        }
        if !fm.fileExists(atPath: blob) {
            let lockDir = "\(cache)/.locks/models--" + ref.repo.replacingOccurrences(of: "/", with: "--")
            try? fm.createDirectory(atPath: lockDir, withIntermediateDirectories: true)
            let lock = Glibc.open("\(lockDir)/\(meta.etag).lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
            if lock >= 0 { _ = flock(lock, LOCK_EX) }  // another rank (or huggingface_hub) may be downloading it
            defer { if lock >= 0 { flock(lock, LOCK_UN); close(lock) } }
            if !fm.fileExists(atPath: blob) {
                log("\(ref): downloading \(filename)" + (meta.size.map { " (\(mibText($0)))" } ?? "") + " into \(repoDir)")
                let downloader = HuggingFaceDownloader(endpoint: host, token: token, environment: env)
                downloader.log = log
                do {
                    try downloader.downloadFile(url, to: blob, expectedSize: meta.size, partSuffix: ".incomplete", label: "download \(filename)") { part in
                        // Etags of other forms (none seen) are left to the size check.
                        guard [40, 64].contains(meta.etag.count), meta.etag.allSatisfy(\.isHexDigit) else { return }
                        let got = try contentHash(part, like: meta.etag)
                        guard got == meta.etag else {
                            throw HubError(description: "\(url): the download's hash is \(got), the Hub's etag \(meta.etag): removed")
                        }
                    }
                } catch let e as HuggingFaceDownloader.DownloadError {
                    throw HubError(description: e.description)
                }
            }
        }
        if !fm.fileExists(atPath: snapshot) {
            // Relative, as huggingface_hub links it (the cache can move).
            let depth = filename.split(separator: "/").count
            let target = String(repeating: "../", count: depth + 1) + "blobs/\(meta.etag)"
            // Made aside and renamed over (a dangling link there, another resolver's link): the
            // path never goes missing under a reader.
            let aside = "\(snapshot).link-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
            guard symlink(target, aside) == 0, rename(aside, snapshot) == 0 else {
                let reason = String(cString: strerror(errno))
                unlink(aside)
                throw HubError(description: "\(snapshot): cannot link to its blob: \(reason)")
            }
        }
        return snapshot
    }

    static func isCommit(_ s: String) -> Bool { s.count == 40 && s.allSatisfy(\.isHexDigit) }

    /// The hash an etag of this form names, of the file at `path`: SHA-256 (64 hex digits, a
    /// large file's) or git's blob SHA-1 (40, a small file's).
    static func contentHash(_ path: String, like etag: String) throws -> String {
        guard let h = FileHandle(forReadingAtPath: path) else { throw HubError(description: "\(path): cannot read: \(unreadableReason(path))") }
        defer { try? h.close() }
        if etag.count == 40 {
            let size = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
            var data = Data("blob \(size)\0".utf8)
            data.append(try h.readToEnd() ?? Data())  // (readDataToEndOfFile traps on a read error)
            return SHA1Digest.hex(data)
        }
        let d = SHA256Digest()
        while let chunk = try h.read(upToCount: 1 << 20), !chunk.isEmpty { d.update(chunk) }
        return d.finalize()
    }

    /// A HEAD of the resolve URL, not following the Hub's redirect to its storage (whose answer
    /// has no commit): X-Repo-Commit, X-Linked-Etag (else ETag), X-Linked-Size (else
    /// Content-Length). A failure to connect or a 429/5xx three times is a transient error; an HTTP error names its status;
    /// a certificate problem is said as `HuggingFaceDownloader.permanentFailure` says it.
    static func metadata(_ url: String, token: String?) throws -> Metadata {
        guard let u = URL(string: url) else { throw HubError(description: "\(url): not a URL") }
        var last = ""
        for attempt in 1...3 {
            var req = URLRequest(url: u, timeoutInterval: 30)
            req.httpMethod = "HEAD"
            req.setValue("identity", forHTTPHeaderField: "Accept-Encoding")
            if let token { req.setValue("Bearer \(token)", forHTTPHeaderField: "Authorization") }
            let stopper = NoRedirect()
            let session = URLSession(configuration: .ephemeral, delegate: stopper, delegateQueue: nil)
            let sem = DispatchSemaphore(value: 0)
            nonisolated(unsafe) var result: (URLResponse?, Error?) = (nil, nil)
            session.dataTask(with: req) { _, r, e in result = (r, e); sem.signal() }.resume()
            sem.wait()
            session.finishTasksAndInvalidate()
            if let h = result.0 as? HTTPURLResponse {
                func header(_ name: String) -> String? { h.value(forHTTPHeaderField: name) }
                switch h.statusCode {
                case 200..<400:
                    guard let commit = header("X-Repo-Commit"), let tag = header("X-Linked-Etag") ?? header("ETag") else {
                        throw HubError(description: "\(url): HTTP \(h.statusCode) without X-Repo-Commit and ETag: not a Hugging Face Hub answer (HF_ENDPOINT?)")
                    }
                    let etag = tag.replacingOccurrences(of: "W/", with: "").trimmingCharacters(in: CharacterSet(charactersIn: "\" "))
                    guard !etag.isEmpty, etag.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" }), isCommit(commit) else {
                        throw HubError(description: "\(url): the Hub's commit \(commit) or etag \(tag) is malformed")
                    }
                    return Metadata(commit: commit, etag: etag, size: (header("X-Linked-Size") ?? header("Content-Length")).flatMap { Int($0) })
                case 401, 403: throw HubError(description: "\(url): HTTP \(h.statusCode): a private or gated repository (set HF_TOKEN)")
                case 404: throw HubError(description: "\(url): HTTP 404: no such repository, revision or file")
                case 429, 500...599: last = "HTTP \(h.statusCode)"
                default: throw HubError(description: "\(url): HTTP \(h.statusCode)")
                }
            } else if let e = result.1 {
                // A certificate problem is the machine's configuration, not the network's weather:
                // said at once, and not "unreachable" (which falls back on the cache), as
                // huggingface_hub raises SSL errors rather than use its cache.
                if let permanent = HuggingFaceDownloader.permanentFailure(e) { throw HubError(description: "\(url): \(permanent)") }
                last = e.localizedDescription
                if attempt == 3 { throw HubError(description: "the Hub is unreachable (\(last))", transient: true) }
            }
            if attempt < 3 { Thread.sleep(forTimeInterval: 0.5 * Double(attempt)) }
        }
        throw HubError(description: "the Hub answered \(last) to 3 attempts", transient: true)  // down or rate-limiting: the cache will do
    }

    final class NoRedirect: NSObject, URLSessionTaskDelegate, @unchecked Sendable {
        func urlSession(_ session: URLSession, task: URLSessionTask, willPerformHTTPRedirection response: HTTPURLResponse,
                        newRequest request: URLRequest, completionHandler: @escaping (URLRequest?) -> Void) {
            completionHandler(nil)
        }
    }

    /// The normalisation a timm Hub repository's `config.json` gives its weights
    /// (`pretrained_cfg.mean` / `.std`, or top-level `mean` / `std`), if it gives one.
    public static func normalisation(configFile: String) -> (mean: [Double], std: [Double])? {
        guard let d = FileManager.default.contents(atPath: configFile),
              let j = try? JSONSerialization.jsonObject(with: d) as? [String: Any] else { return nil }
        let cfg = (j["pretrained_cfg"] as? [String: Any]) ?? j
        func three(_ k: String) -> [Double]? {
            guard let v = cfg[k] as? [Any], v.count == 3 else { return nil }
            let f = v.compactMap { ($0 as? NSNumber)?.doubleValue }
            return f.count == 3 && f.allSatisfy(\.isFinite) ? f : nil
        }
        guard let mean = three("mean"), let std = three("std"), std.allSatisfy({ $0 > 0 }) else { return nil }
        return (mean, std)
    }
}
