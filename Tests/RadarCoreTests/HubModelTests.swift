import Foundation
@testable import RadarCore
import XCTest

/// `--pretrained timm` / `hf-hub:ORG/NAME[@REVISION]`: the Hub's files in huggingface_hub's cache
/// layout, against a local server that answers as the Hub does (a HEAD of the resolve URL: 302 to
/// storage with X-Repo-Commit, X-Linked-Etag and X-Linked-Size for a large file; 200 with ETag for
/// a small one). huggingface_hub itself checks both directions: it finds what we downloaded, and
/// we find what it downloaded from the same server.
final class HubModelTests: XCTestCase {
    static let commit = "0123456789abcdef0123456789abcdef01234567"
    /// The storage server of the last `hub()`.
    var storedModel: LocalHTTPServer?

    /// The stand-in Hub with stand-in model bytes (`standInHub`); its storage stops with the test.
    func hub(model: Data = Data((0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }), etag: String? = nil) throws -> (LocalHTTPServer, Data, Data) {
        let (server, storage, config) = try standInHub(model: model, etag: etag)
        addTeardownBlock { storage.stop() }
        storedModel = storage
        return (server, model, config)
    }

    func environment(_ server: LocalHTTPServer?, cache: String, _ extra: [String: String] = [:]) -> [String: String] {
        var env = ["HF_HUB_CACHE": cache, "HF_TOKEN_PATH": "/nonexistent-radar-token", "HOME": NSTemporaryDirectory()]
        env["HF_ENDPOINT"] = server?.base ?? "http://127.0.0.1:9"
        return env.merging(extra) { $1 }
    }

    /// The token as huggingface_hub finds it: HF_TOKEN, else HF_TOKEN_PATH (read to its end, a
    /// FIFO from a secret manager included), else $HF_HOME/token; blank is none.
    func testTheTokenIsFoundWhereHuggingFaceHubLooks() throws {
        let home = temporaryDirectory("hf-home")
        try "hf_fromhome\n".write(toFile: home + "/token", atomically: true, encoding: .utf8)
        XCTAssertEqual(HubModel.token(["HF_HOME": home]), "hf_fromhome")
        XCTAssertEqual(HubModel.token(["HF_HOME": home, "HF_TOKEN": "hf_env"]), "hf_env")
        XCTAssertNil(HubModel.token(["HF_HOME": home, "HF_TOKEN_PATH": home + "/missing"]))
        let fifo = home + "/token.fifo"
        XCTAssertEqual(mkfifo(fifo, 0o600), 0)
        let writer = Thread {
            let fd = open(fifo, O_WRONLY)
            guard fd >= 0 else { return }
            // In two writes, as a program piping it would: the whole of it is the token.
            _ = "hf_from".withCString { write(fd, $0, 7) }
            usleep(100_000)
            _ = "fifo\n".withCString { write(fd, $0, 5) }
            close(fd)
        }
        writer.start()
        XCTAssertEqual(HubModel.token(["HF_HOME": home, "HF_TOKEN_PATH": fifo]), "hf_fromfifo")
        try "  \n".write(toFile: home + "/token", atomically: true, encoding: .utf8)
        XCTAssertNil(HubModel.token(["HF_HOME": home]))
    }

    func testReferencesAreTimmsSpelling() throws {
        XCTAssertEqual(try HubModel.reference("timm"), HubModel.Reference(repo: "timm/vit_small_patch16_224.augreg_in21k_ft_in1k", revision: "main"))
        XCTAssertEqual(try HubModel.reference("hf-hub:org/name@v1.0"), HubModel.Reference(repo: "org/name", revision: "v1.0"))
        XCTAssertEqual(try HubModel.reference("hf-hub:org/name@refs/pr/1"), HubModel.Reference(repo: "org/name", revision: "refs/pr/1"))
        XCTAssertNil(try HubModel.reference("weights/vit.safetensors"))
        for bad in ["hf-hub:org", "hf-hub:../x", "hf-hub:a/b/c", "hf-hub:a/..", "hf-hub:a/b@", "hf-hub:a/b c"] {
            XCTAssertThrowsError(try HubModel.reference(bad), bad) { XCTAssertTrue("\($0)".hasPrefix("\(bad): expected hf-hub:ORG/NAME"), "\($0)") }
        }
        XCTAssertEqual(HubModel.cacheDirectory(["HF_HOME": "/h"]), "/h/hub")
        XCTAssertEqual(HubModel.cacheDirectory(["HF_HUB_CACHE": "/c", "HF_HOME": "/h"]), "/c")
        XCTAssertEqual(HubModel.cacheDirectory(["HOME": "/home/u"]), "/home/u/.cache/huggingface/hub")
    }

    /// Downloaded once into the layout huggingface_hub reads (it finds the file), the weights'
    /// normalisation taken; then from the cache: with the Hub only asked (HEAD), offline without
    /// asking, and with the Hub unreachable (said).
    func testDownloadsIntoHuggingFaceHubsCacheAndTakesTheWeightsNormalisation() throws {
        let (server, model, config) = try hub()
        defer { server.stop() }
        let cache = temporaryDirectory("hub-cache")
        var o = TrainOptions(data: "d", output: "o", experiment: "e", config: RADARConfig.preset("tiny")!)
        XCTAssertEqual(o.config.mean, [0.485, 0.456, 0.406])
        o.pretrained = "hf-hub:timm/vit-test"
        var logged: [String] = []
        try o.resolvePretrained(environment: environment(server, cache: cache)) { logged.append($0) }
        let repo = "\(cache)/models--timm--vit-test"
        XCTAssertEqual(o.pretrained, "\(repo)/snapshots/\(Self.commit)/model.safetensors")
        XCTAssertEqual(FileManager.default.contents(atPath: o.pretrained!), model)
        XCTAssertEqual(try FileManager.default.destinationOfSymbolicLink(atPath: o.pretrained!), "../../blobs/\(SHA256Digest.hex(model))")
        XCTAssertEqual(FileManager.default.contents(atPath: "\(repo)/snapshots/\(Self.commit)/config.json"), config)
        XCTAssertEqual(try String(contentsOfFile: "\(repo)/refs/main", encoding: .utf8), Self.commit)
        XCTAssertEqual(o.config.mean, [0.5, 0.5, 0.5]); XCTAssertEqual(o.config.std, [0.5, 0.5, 0.5])
        XCTAssertTrue(o.setupNotes.contains { $0.hasPrefix("normalisation mean 0.5,0.5,0.5 std 0.5,0.5,0.5 from \(repo)/snapshots/\(Self.commit)/config.json") }, "\(o.setupNotes)")
        XCTAssertTrue(logged.contains { $0.contains("downloading model.safetensors (0.3 MiB)") }, "\(logged)")
        XCTAssertFalse(try FileManager.default.contentsOfDirectory(atPath: "\(repo)/blobs").contains { $0.hasSuffix(".incomplete") })

        // huggingface_hub finds both files where it looks.
        let script = """
        import sys
        from huggingface_hub import try_to_load_from_cache, hf_hub_download
        for f in ('model.safetensors', 'config.json'):
            print(try_to_load_from_cache('timm/vit-test', f, cache_dir=sys.argv[1]))
        print(hf_hub_download('timm/vit-test', 'model.safetensors', cache_dir=sys.argv[1], local_files_only=True))
        """
        let (rc, out) = try shell([interopPython, "-c", script, cache], environment: ["HF_HUB_OFFLINE": "1"])
        XCTAssertEqual(rc, 0, out)
        let ours = o.pretrained!, ourConfig = "\(repo)/snapshots/\(Self.commit)/config.json"
        XCTAssertEqual(out.split(separator: "\n").suffix(3).map(String.init), [ours, ourConfig, ours], out)

        // Again: the Hub asked what the revision is (HEAD), nothing downloaded.
        let storage = try XCTUnwrap(storedModel)
        let storageGets = { storage.requests.filter { $0.path == "/storage/model" }.count }
        XCTAssertEqual(storageGets(), 1)
        var again = TrainOptions(data: "d", output: "o", experiment: "e", config: RADARConfig.preset("tiny")!)
        again.pretrained = "hf-hub:timm/vit-test"
        try again.resolvePretrained(environment: environment(server, cache: cache))
        XCTAssertEqual(again.pretrained, ours)
        XCTAssertEqual(storageGets(), 1)
        // Offline: the cache alone, no request.
        let asked = server.requests.count + storage.requests.count
        again.pretrained = "hf-hub:timm/vit-test"
        try again.resolvePretrained(environment: environment(server, cache: cache, ["HF_HUB_OFFLINE": "1"]))
        XCTAssertEqual(again.pretrained, ours)
        XCTAssertEqual(server.requests.count + storage.requests.count, asked)
        // The Hub unreachable (a compute node): the cache, said.
        logged = []
        XCTAssertEqual(try HubModel.file(HubModel.Reference(repo: "timm/vit-test", revision: "main"), "model.safetensors",
                                         environment: environment(nil, cache: cache)) { logged.append($0) }, ours)
        XCTAssertTrue(logged.contains { $0.contains("the Hub is unreachable (") && $0.contains("; using the cached \(ours)") }, "\(logged)")
        // The Hub answering 503 (down): the cache too.
        server.failNext(3)
        logged = []
        XCTAssertEqual(try HubModel.file(HubModel.Reference(repo: "timm/vit-test", revision: "main"), "model.safetensors",
                                         environment: environment(server, cache: cache)) { logged.append($0) }, ours)
        XCTAssertTrue(logged.contains { $0.contains("the Hub answered HTTP 503 to 3 attempts; using the cached") }, "\(logged)")
    }

    /// `--checkpoint` / `--init-from hf-hub:ORG/NAME`: the repository's model.safetensors, read
    /// as the file itself would be (here a golden case's state dict, with its config).
    func testWeightsFromTheHubReadAsTheFile() throws {
        let dir = fixturesDirectory.appendingPathComponent("parity/tiny_dual")
        let file = dir.appendingPathComponent("weights.safetensors").path
        let (server, storage, _) = try standInHub(model: try Data(contentsOf: URL(fileURLWithPath: file)))
        defer { server.stop(); storage.stop() }
        let cache = temporaryDirectory("hub-weights")
        let env = environment(server, cache: cache)
        for (k, v) in env { setenv(k, v, 1) }
        defer { for k in env.keys { unsetenv(k) } }
        let config = try RADARConfig.decode(try Data(contentsOf: dir.appendingPathComponent("config.json")), source: "config.json")
        let hub = try ModelWeights.read("hf-hub:timm/vit-test", config: config), local = try ModelWeights.read(file, config: config)
        XCTAssertEqual(hub.kind, .stateDict)
        XCTAssertEqual(hub.tensors.keys.sorted(), local.tensors.keys.sorted())
        for (k, t) in local.tensors { XCTAssertEqual(hub.tensors[k]?.floats, t.floats, k) }
        XCTAssertTrue(FileManager.default.fileExists(atPath: "\(cache)/models--timm--vit-test/snapshots/\(Self.commit)/model.safetensors"))
    }

    /// Four ranks resolving at once download the file once (the blob's lock file), and all get it.
    func testConcurrentResolversDownloadOnce() throws {
        let (server, model, _) = try hub()
        defer { server.stop() }
        let storage = try XCTUnwrap(storedModel)
        let cache = temporaryDirectory("hub-race"), env = environment(server, cache: cache)
        let ref = HubModel.Reference(repo: "timm/vit-test", revision: "main")
        let results = UnsafeMutableBufferPointer<Result<String, Error>?>.allocate(capacity: 4)
        results.initialize(repeating: nil)
        defer { results.deinitialize(); results.deallocate() }
        DispatchQueue.concurrentPerform(iterations: 4) { i in results[i] = Result { try HubModel.file(ref, "model.safetensors", environment: env) } }
        let paths = try results.map { try $0!.get() }
        XCTAssertEqual(Set(paths).count, 1)
        XCTAssertEqual(FileManager.default.contents(atPath: paths[0]), model)
        XCTAssertEqual(storage.requests.filter { $0.path == "/storage/model" }.count, 1)
    }

    /// A revision with slashes (a pull request's, refs/pr/1) goes quoted in the URL and nested
    /// under refs/, as huggingface_hub keeps it.
    func testAPullRequestRevisionIsQuotedAndNested() throws {
        let (server, _, config) = try hub()
        defer { server.stop() }
        server.put("/timm/vit-test/resolve/refs%2Fpr%2F1/config.json", config,
                   header: "X-Repo-Commit: \(String(repeating: "f", count: 40))\r\nETag: \"\(SHA256Digest.hex(config))\"")
        let cache = temporaryDirectory("hub-pr")
        let path = try HubModel.file(HubModel.Reference(repo: "timm/vit-test", revision: "refs/pr/1"), "config.json", environment: environment(server, cache: cache))
        XCTAssertEqual(path, "\(cache)/models--timm--vit-test/snapshots/\(String(repeating: "f", count: 40))/config.json")
        XCTAssertEqual(try String(contentsOfFile: "\(cache)/models--timm--vit-test/refs/refs/pr/1", encoding: .utf8), String(repeating: "f", count: 40))
        XCTAssertEqual(FileManager.default.contents(atPath: path), config)
    }

    /// What huggingface_hub downloaded from the same server is what we use offline.
    func testHuggingFaceHubsOwnDownloadIsFound() throws {
        let (server, model, _) = try hub()
        defer { server.stop() }
        let cache = temporaryDirectory("hub-theirs")
        let script = """
        import sys
        from huggingface_hub import hf_hub_download
        print(hf_hub_download('timm/vit-test', 'model.safetensors', cache_dir=sys.argv[1]))
        """
        let (rc, out) = try shell([interopPython, "-c", script, cache], environment: ["HF_ENDPOINT": server.base, "HF_HUB_DISABLE_XET": "1"])
        XCTAssertEqual(rc, 0, out)
        let theirs = String(out.split(separator: "\n").last ?? "")
        let ours = try HubModel.file(HubModel.Reference(repo: "timm/vit-test", revision: "main"), "model.safetensors",
                                     environment: environment(server, cache: cache, ["HF_HUB_OFFLINE": "1"]))
        XCTAssertEqual(ours, theirs)
        XCTAssertEqual(FileManager.default.contents(atPath: ours), model)
    }

    /// A download that is not the file the Hub names (its hash), a missing repository, and an
    /// empty cache offline: each one line naming what, nothing left in the cache's blobs.
    func testBadDownloadsMissingRepositoriesAndAnEmptyOfflineCacheAreSaid() throws {
        let wrong = String(repeating: "ab", count: 32)
        let (server, model, _) = try hub(etag: wrong)
        defer { server.stop() }
        let cache = temporaryDirectory("hub-bad")
        let ref = HubModel.Reference(repo: "timm/vit-test", revision: "main")
        XCTAssertThrowsError(try HubModel.file(ref, "model.safetensors", environment: environment(server, cache: cache))) {
            XCTAssertEqual("\($0)", "\(server.base)/timm/vit-test/resolve/main/model.safetensors: the download's hash is \(SHA256Digest.hex(model)), the Hub's etag \(wrong): removed")
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: "\(cache)/models--timm--vit-test/blobs"), [])
        XCTAssertThrowsError(try HubModel.file(HubModel.Reference(repo: "timm/missing", revision: "main"), "model.safetensors",
                                               environment: environment(server, cache: cache))) {
            XCTAssertEqual("\($0)", "\(server.base)/timm/missing/resolve/main/model.safetensors: HTTP 404: no such repository, revision or file")
        }
        let empty = temporaryDirectory("hub-empty")
        XCTAssertThrowsError(try HubModel.file(ref, "model.safetensors", environment: environment(server, cache: empty, ["HF_HUB_OFFLINE": "1"]))) {
            XCTAssertTrue("\($0)".hasPrefix("hf-hub:timm/vit-test model.safetensors: not in the Hugging Face cache (\(empty)) and HF_HUB_OFFLINE is set"), "\($0)")
        }
    }

    /// A certificate no CA here signs (a TLS-inspecting proxy, a machine without its CA bundle):
    /// said at once with what to do, one connection each (five attempts would be five), nothing
    /// half-written; the Hub's file an error, not "unreachable" with the cache quietly used (as
    /// huggingface_hub raises SSL errors), the cached copy named where there is one.
    func testACertificateProblemIsSaidAtOnceNotRetriedAndNotHiddenByTheCache() throws {
        let https = try UntrustedHTTPSServer()
        defer { https.stop() }
        let downloader = HuggingFaceDownloader(endpoint: https.base, environment: [:])
        XCTAssertEqual(downloader.attempts, 5)
        var logged: [String] = []
        downloader.log = { logged.append($0) }
        func certificateProblem(_ e: Error) -> Bool {
            "\(e)".contains("SSL certificate problem") && "\(e)".contains("update-ca-certificates") && !"\(e)".contains("gave up")
        }
        XCTAssertThrowsError(try downloader.listArchives()) { XCTAssertTrue(certificateProblem($0), "\($0)") }
        XCTAssertEqual(https.accepted, 1)
        let dest = temporaryDirectory("https-download") + "/fake_train/1.tar.gz"
        XCTAssertThrowsError(try downloader.downloadFile(https.base + "/fake_train/1.tar.gz", to: dest)) {
            XCTAssertTrue("\($0)".hasPrefix("\(https.base)/fake_train/1.tar.gz: SSL certificate problem"), "\($0)")
            XCTAssertTrue(certificateProblem($0), "\($0)")
        }
        XCTAssertEqual(https.accepted, 2)
        XCTAssertEqual(logged, [])  // no "attempt 1 failed ...; retrying"
        XCTAssertFalse(FileManager.default.fileExists(atPath: dest + ".part"))

        let (server, _, _) = try hub()
        defer { server.stop() }
        let cache = temporaryDirectory("hub-tls"), ref = HubModel.Reference(repo: "timm/vit-test", revision: "main")
        let untrusted = environment(nil, cache: cache, ["HF_ENDPOINT": https.base])
        let url = "\(https.base)/timm/vit-test/resolve/main/model.safetensors"
        XCTAssertThrowsError(try HubModel.file(ref, "model.safetensors", environment: untrusted)) {
            XCTAssertTrue("\($0)".hasPrefix("\(url): SSL certificate problem"), "\($0)")
            XCTAssertFalse("\($0)".contains("unreachable") || "\($0)".contains("HF_HUB_OFFLINE"), "\($0)")
        }
        XCTAssertEqual(https.accepted, 3)
        let ours = try HubModel.file(ref, "model.safetensors", environment: environment(server, cache: cache))
        logged = []
        XCTAssertThrowsError(try HubModel.file(ref, "model.safetensors", environment: untrusted) { logged.append($0) }) {
            XCTAssertTrue("\($0)".hasPrefix("\(url): SSL certificate problem"), "\($0)")
            XCTAssertTrue("\($0)".hasSuffix("; HF_HUB_OFFLINE=1 uses the cached \(ours)"), "\($0)")
        }
        XCTAssertEqual(https.accepted, 4)
        XCTAssertEqual(logged, [])
        XCTAssertEqual(try HubModel.file(ref, "model.safetensors", environment: environment(nil, cache: cache, ["HF_HUB_OFFLINE": "1"])), ours)
    }
}

/// A local HTTPS server (Python's, in a thread) whose self-signed certificate (openssl's) no CA
/// on this machine signs; it answers nothing past the handshake. `accepted`: the TCP connections
/// it took, each the start of one attempt.
final class UntrustedHTTPSServer {
    let process = Process()
    let directory: String
    private(set) var base = ""

    init() throws {
        directory = temporaryDirectory("untrusted-https")
        let (rc, out) = try shell(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "\(directory)/key.pem",
                                   "-out", "\(directory)/cert.pem", "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"])
        guard rc == 0 else { throw DatasetError(path: directory, reason: "openssl could not make a test certificate: \(out)") }
        let script = """
        import http.server, os, ssl, sys
        d = sys.argv[1]
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(d + "/cert.pem", d + "/key.pem")
        class Server(http.server.HTTPServer):
            accepted = 0
            def get_request(self):
                sock, addr = self.socket.accept()
                Server.accepted += 1
                with open(d + "/accepted.tmp", "w") as f: f.write(str(Server.accepted))
                os.replace(d + "/accepted.tmp", d + "/accepted")
                return ctx.wrap_socket(sock, server_side=True), addr
            def handle_error(self, request, address): pass
        s = Server(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
        print(s.server_address[1], flush=True)
        s.serve_forever()
        """
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = [interopPython, "-c", script, directory]
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = FileHandle.nullDevice
        try process.run()
        var line = Data()
        while !line.contains(UInt8(ascii: "\n")) {
            let chunk = pipe.fileHandleForReading.availableData
            guard !chunk.isEmpty else { throw DatasetError(path: directory, reason: "the HTTPS test server did not start") }
            line.append(chunk)
        }
        base = "https://127.0.0.1:" + String(decoding: line, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    var accepted: Int { Int((try? String(contentsOfFile: directory + "/accepted", encoding: .utf8)) ?? "0") ?? -1 }

    func stop() {
        process.terminate()
        process.waitUntilExit()
    }
}

/// A Hub repository `timm/vit-test` on a local server: `model` as model.safetensors through
/// storage (another origin, as the Hub's is: a HEAD of the resolve URL answers 302 with
/// X-Repo-Commit, X-Linked-Etag and X-Linked-Size), config.json with timm's pretrained_cfg (mean
/// and std 0.5; 200 with its git blob id as ETag). `etag` overrides the model's.
func standInHub(model: Data, etag: String? = nil) throws -> (hub: LocalHTTPServer, storage: LocalHTTPServer, config: Data) {
    let server = try LocalHTTPServer(), storage = try LocalHTTPServer()
    storage.put("/storage/model", model)
    server.redirect("/timm/vit-test/resolve/main/model.safetensors", to: "\(storage.base)/storage/model",
                    headers: "X-Repo-Commit: \(HubModelTests.commit)\r\nX-Linked-Etag: \"\(etag ?? SHA256Digest.hex(model))\"\r\nX-Linked-Size: \(model.count)\r\nETag: W/\"other\"")
    let config = Data(#"{"architecture": "vit_small_patch16_224", "pretrained_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}"#.utf8)
    var blob = Data("blob \(config.count)\0".utf8)
    blob.append(config)
    server.put("/timm/vit-test/resolve/main/config.json", config, header: "X-Repo-Commit: \(HubModelTests.commit)\r\nETag: \"\(SHA1Digest.hex(blob))\"")
    return (server, storage, config)
}
