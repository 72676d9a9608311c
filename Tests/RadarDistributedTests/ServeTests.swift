import Foundation
#if canImport(Glibc)
import Glibc
#endif
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import RadarCore
import RadarDistributed
import XCTest

/// `radar serve`: images POSTed from many connections at once are scored in shared forward
/// passes, each as `radar predict` scores it; bad requests get a status and a one-line error;
/// SIGTERM ends it cleanly.
final class ServeTests: XCTestCase {
    /// A model file of a freshly initialised tiny RADAR, and three face images.
    func fixtures() throws -> (model: String, images: [String]) {
        let dir = NSTemporaryDirectory() + "radar-serve-\(UUID().uuidString.prefix(6))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let config = RADARConfig.preset("tiny")!
        let model = try RADARModel(config: config)
        let ctx = ExecutionContext(backend: try Devices.backend("cpu", threads: 1, precision: nil), layout: model.layout, seed: 3)
        model.initialize(ctx.params, seed: 11)
        try ModelFile.write(ctx.params, config: config, to: dir + "/model.safetensors")
        let faces = SyntheticFaces(size: 48, seed: 4)  // resized to 32 by the service, as by predict
        let images = try (0..<3).map { i -> String in
            let path = dir + "/f\(i).png"
            try ImageCodec.encodePNG(faces.rgbImage(i, label: i % 2)).write(to: URL(fileURLWithPath: path))
            return path
        }
        return (dir + "/model.safetensors", images)
    }

    /// (status, body) of one request; nil status when there was no answer.
    func request(_ url: String, method: String = "GET", body: Data? = nil) -> (Int?, String) {
        var r = URLRequest(url: URL(string: url)!, timeoutInterval: 60)
        r.httpMethod = method
        r.httpBody = body
        let done = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var result: (Int?, String) = (nil, "")
        URLSession.shared.dataTask(with: r) { data, response, error in
            result = ((response as? HTTPURLResponse)?.statusCode, data.map { String(decoding: $0, as: UTF8.self) } ?? "\(error.map { "\($0)" } ?? "")")
            done.signal()
        }.resume()
        done.wait()
        return result
    }

    /// What a process wrote to `pipe` up to its first line's end (where it says it listens).
    /// `radar serve` of `model` on 127.0.0.1 at a port the system picks, with `flags`: the process
    /// (the caller terminates it), its stderr after the first line, and the port.
    /// `prefix`: a command that runs it (`prlimit --nofile=N`).
    func startServe(_ model: String, _ flags: [String], prefix: [String] = []) throws -> (process: Process, stderr: Pipe, port: Int) {
        let p = Process()
        let radar = MPITrainingTests.products.appendingPathComponent("radar")
        p.executableURL = prefix.isEmpty ? radar : URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = (prefix.isEmpty ? [] : prefix + [radar.path]) + ["serve", "--checkpoint", model, "--listen", "127.0.0.1:0", "--threads", "1"] + flags
        let err = Pipe()
        p.standardError = err
        try p.run()
        // The first line says where it listens.
        let first = firstLine(err)
        guard let port = first.range(of: #"127\.0\.0\.1:(\d+)"#, options: .regularExpression).map({ Int(first[$0].split(separator: ":")[1])! }) else {
            p.terminate()
            throw ServeDidNotStart(firstLine: first)
        }
        return (p, err, port)
    }

    struct ServeDidNotStart: Error { let firstLine: String }

    func firstLine(_ pipe: Pipe) -> String {
        var said = Data()
        while !String(decoding: said, as: UTF8.self).contains("\n") {
            let d = pipe.fileHandleForReading.availableData
            if d.isEmpty { break }
            said.append(d)
        }
        return String(decoding: said, as: UTF8.self)
    }

    func testServedImagesShareForwardPassesAndScoreAsPredictDoes() throws {
        let bin = MPITrainingTests.products.appendingPathComponent("radar").path
        let (model, images) = try fixtures()
        let (p, err, port) = try startServe(model, ["--batch-size", "8", "--max-delay-ms", "200", "--max-image-mb", "1"])
        defer { if p.isRunning { p.terminate() } }
        let base = "http://127.0.0.1:\(port)"
        // What radar predict says of each image.
        let predicted = try JSONSerialization.jsonObject(with: Process.runCapturing([bin, "predict", "--checkpoint", model, "--threads", "1", "--json"] + images)) as! [String: Any]
        let expected = (predicted["predictions"] as! [[String: Any]]).map { $0["probability_fake"] as! Double }
        // 12 requests at once on 12 connections: every answer is its image's, in fewer passes.
        let bodies = try images.map { try Data(contentsOf: URL(fileURLWithPath: $0)) }
        let config = URLSessionConfiguration.ephemeral
        config.httpMaximumConnectionsPerHost = 16
        let session = URLSession(configuration: config)
        let lock = NSLock(), all = DispatchGroup()
        nonisolated(unsafe) var answers = [(Int?, String)](repeating: (nil, ""), count: 12)
        for i in 0..<12 {
            var r = URLRequest(url: URL(string: base + "/v1/predict")!, timeoutInterval: 60)
            (r.httpMethod, r.httpBody) = ("POST", bodies[i % 3])
            all.enter()
            session.dataTask(with: r) { data, response, _ in
                lock.lock()
                answers[i] = ((response as? HTTPURLResponse)?.statusCode, data.map { String(decoding: $0, as: UTF8.self) } ?? "")
                lock.unlock()
                all.leave()
            }.resume()
        }
        all.wait()
        for (i, a) in answers.enumerated() {
            XCTAssertEqual(a.0, 200, a.1)
            let doc = try XCTUnwrap(try? JSONSerialization.jsonObject(with: Data(a.1.utf8)) as? [String: Any], a.1)
            XCTAssertEqual(doc["probability_fake"] as? Double ?? -1, expected[i % 3], accuracy: 1e-6, "request \(i)")
            XCTAssertEqual(doc["label"] as? String, expected[i % 3] >= 0.5 ? "fake" : "real")
            XCTAssertEqual(1 / (1 + exp(-(doc["logit"] as? Double ?? .nan))), expected[i % 3], accuracy: 1e-6)
        }
        let explained = request(base + "/v1/predict?explain=1", method: "POST", body: bodies[0])
        XCTAssertEqual(explained.0, 200)
        XCTAssertTrue(explained.1.contains("\"explanation\":{") && explained.1.contains("\"gate\":"), explained.1)
        // Bad requests: a status and a one-line error each, and the service goes on.
        XCTAssertEqual(request(base + "/v1/predict", method: "POST", body: Data("not an image".utf8)).1,
                       "{\"error\":\"the request body: not a PNG, JPEG or WebP image\"}\n")
        XCTAssertEqual(request(base + "/v1/predict", method: "POST", body: Data()).0, 400)
        XCTAssertEqual(request(base + "/v1/predict").1, "{\"error\":\"GET /v1/predict: use POST\"}\n")
        XCTAssertEqual(request(base + "/v2").0, 404)
        let big = request(base + "/v1/predict", method: "POST", body: Data(count: (1 << 20) + 1))
        XCTAssertEqual(big.0, 413, big.1)
        XCTAssertTrue(big.1.contains("over the limit of 1048576 (--max-image-mb)"), big.1)
        // The counts: 13 images scored, in fewer forward passes than requests.
        let (hs, hb) = request(base + "/v1/health")
        XCTAssertEqual(hs, 200, hb)
        let health = try JSONSerialization.jsonObject(with: Data(hb.utf8)) as! [String: Any]
        XCTAssertEqual(health["images"] as? Int, 13, hb)
        XCTAssertEqual(health["requests"] as? Int, 18, hb)
        XCTAssertEqual(health["rejected"] as? Int, 1, "the 413, answered before it was read: \(hb)")
        XCTAssertEqual(health["turned_away"] as? Int, 0, "every connection had a thread and a descriptor: \(hb)")
        XCTAssertLessThan(health["batches"] as! Int, 13, "12 requests at once shared passes: \(hb)")
        XCTAssertLessThanOrEqual(health["largest_batch"] as! Int, 8)
        // What is not HTTP it can read: a status, and the connection closed.
        func raw(_ text: String) -> String {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            defer { close(fd) }
            var addr = sockaddr_in()
            (addr.sin_family, addr.sin_port, addr.sin_addr.s_addr) = (sa_family_t(AF_INET), in_port_t(UInt16(port).bigEndian), inet_addr("127.0.0.1"))
            let r = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            guard r == 0 else { return "connect failed" }
            _ = text.withCString { send(fd, $0, strlen($0), 0) }
            var answer = Data(), chunk = [UInt8](repeating: 0, count: 4096)
            while true {
                let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                if n <= 0 { break }
                answer.append(contentsOf: chunk[0..<n])
            }
            return String(decoding: answer, as: UTF8.self)
        }
        let gzipped = raw("POST /v1/predict HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        XCTAssertTrue(gzipped.hasPrefix("HTTP/1.1 501 Not Implemented\r\n") && gzipped.contains("Connection: close"), gzipped)
        XCTAssertTrue(raw("HELLO THERE\r\n\r\n").hasPrefix("HTTP/1.1 400 Bad Request\r\n"))
        // A port that is taken is a one-line error.
        let (trc, tout) = try Process.runStatus([bin, "serve", "--checkpoint", model, "--listen", "127.0.0.1:\(port)"])
        XCTAssertEqual(trc, 1)
        XCTAssertEqual(tout, "radar: error: --listen 127.0.0.1:\(port): Address already in use\n")
        // SIGTERM: it stops accepting, says so, exits 0.
        p.terminate()
        let t0 = Date()
        while p.isRunning && Date().timeIntervalSince(t0) < 20 { usleep(50_000) }
        XCTAssertFalse(p.isRunning, "still running 20 s after SIGTERM")
        XCTAssertEqual(p.terminationStatus, 0)
        let rest = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        XCTAssertTrue(rest.contains("radar serve: SIGTERM: stopping") && rest.contains("stopped after 18 requests (13 images in ") && rest.contains(" forward passes; 3 refused unread)"), rest)
        // radar bench serve: the same service under load, measured.
        let benched = try lastJSON(String(decoding: try Process.runCapturing([bin, "bench", "serve", "--config", "tiny", "--clients", "4", "--requests", "30",
                                                                               "--threads", "1", "--max-delay-ms", "20"]), as: UTF8.self))
        XCTAssertEqual(benched["requests"] as? Int, 30, "\(benched)")
        XCTAssertGreaterThan(benched["requests_per_s"] as? Double ?? 0, 0)
        let lat = try XCTUnwrap(benched["latency_ms"] as? [String: Double])
        XCTAssertTrue(lat["p50"]! > 0 && lat["p50"]! <= lat["p90"]! && lat["p90"]! <= lat["p99"]! && lat["p99"]! <= lat["max"]!, "\(lat)")
        XCTAssertTrue((1...4).contains(benched["images_per_forward"] as? Double ?? 0), "4 clients, one request each at a time: \(benched)")
        let (brc, bout) = try Process.runStatus([bin, "serve", "--checkpoint", model, "--listen", "localhost"])
        XCTAssertNotEqual(brc, 0)
        XCTAssertTrue(bout.contains("--listen localhost: expected HOST:PORT"), bout)
    }
    /// One connection written and read byte by byte: a request's head and body sent apart, and
    /// each response read whole by its Content-Length (so keep-alive goes on).
    final class RawConnection {
        let fd: Int32
        var pending = Data()
        init?(port: Int) {
            fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var addr = sockaddr_in()
            (addr.sin_family, addr.sin_port, addr.sin_addr.s_addr) = (sa_family_t(AF_INET), in_port_t(UInt16(port).bigEndian), inet_addr("127.0.0.1"))
            var tv = timeval(tv_sec: 20, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            let r = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            if r != 0 { close(fd); return nil }
        }
        deinit { close(fd) }
        func send(_ d: Data) { d.withUnsafeBytes { _ = Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) } }
        /// Whether something (bytes or the end) arrives within `seconds`; nothing is read.
        func readable(within seconds: Double) -> Bool {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            return poll(&p, 1, Int32(seconds * 1000)) == 1
        }
        /// Whether the server closes the connection, with nothing more said, within `seconds`.
        func closes(within seconds: Double) -> Bool {
            var byte: UInt8 = 0
            return pending.isEmpty && readable(within: seconds) && recv(fd, &byte, 1, Int32(MSG_PEEK)) == 0
        }
        /// Everything the server sends up to its close.
        var closingWords: String {
            var chunk = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                if n <= 0 { break }
                pending.append(contentsOf: chunk[0..<n])
            }
            return String(decoding: pending, as: UTF8.self)
        }
        func send(_ s: String) { send(Data(s.utf8)) }
        /// The next response: status line and headers (one string) and body; nil head when the
        /// connection ended or timed out first.
        func response() -> (head: String?, body: String) {
            var chunk = [UInt8](repeating: 0, count: 65536)
            func fill() -> Bool {
                let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                if n <= 0 { return false }
                pending.append(contentsOf: chunk[0..<n])
                return true
            }
            var end = pending.range(of: Data("\r\n\r\n".utf8))
            while end == nil { guard fill() else { return (nil, "") }; end = pending.range(of: Data("\r\n\r\n".utf8)) }
            let head = String(decoding: pending[pending.startIndex..<end!.lowerBound], as: UTF8.self)
            pending = Data(pending[end!.upperBound...])
            var length = 0
            for line in head.components(separatedBy: "\r\n") where line.lowercased().hasPrefix("content-length:") {
                length = Int(line.dropFirst("content-length:".count).trimmingCharacters(in: .whitespaces)) ?? 0
            }
            while pending.count < length { guard fill() else { break } }
            let body = String(decoding: pending.prefix(length), as: UTF8.self)
            pending = Data(pending.dropFirst(length))
            return (head, body)
        }
    }

    /// Bodies as clients send them: multipart/form-data (curl -F, requests' files=), chunked
    /// (with an extension and a trailer), and `Expect: 100-continue` answered at once (curl waited
    /// a second for bodies over 1 MiB); each image scores as `radar predict` scores it. Limits
    /// hold for each form (413 before the body is read), and what cannot be read is a 400, 501
    /// or a hint (curl -d's stripped line breaks), each a one-line JSON error.
    func testBodiesChunkedMultipartAndExpectContinue() throws {
        let bin = MPITrainingTests.products.appendingPathComponent("radar").path
        let (model, images) = try fixtures()
        let (p, _, port) = try startServe(model, ["--max-delay-ms", "0", "--max-image-mb", "1"])
        defer { if p.isRunning { p.terminate() } }
        let predicted = try JSONSerialization.jsonObject(with: Process.runCapturing([bin, "predict", "--checkpoint", model, "--threads", "1", "--json"] + images)) as! [String: Any]
        let expected = (predicted["predictions"] as! [[String: Any]]).map { $0["probability_fake"] as! Double }
        let image = try Data(contentsOf: URL(fileURLWithPath: images[1]))
        func probability(_ body: String) -> Double {
            (try? JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any])?["probability_fake"] as? Double ?? -1
        }
        let c = try XCTUnwrap(RawConnection(port: port))
        // multipart/form-data: a text field first, then the file (a quoted boundary, as some clients write it).
        let boundary = "----radar-test-7d1f"
        var form = Data("--\(boundary)\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n".utf8)
        form.append(Data("--\(boundary)\r\nContent-Disposition: form-data; name=\"upload\"; filename=\"f1.png\"\r\nContent-Type: image/png\r\n\r\n".utf8))
        form.append(image)
        form.append(Data("\r\n--\(boundary)--\r\n".utf8))
        c.send("POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=\"\(boundary)\"\r\nContent-Length: \(form.count)\r\n\r\n")
        c.send(form)
        var r = c.response()
        XCTAssertTrue(r.head?.hasPrefix("HTTP/1.1 200 OK") ?? false, "\(r)")
        XCTAssertEqual(probability(r.body), expected[1], accuracy: 1e-6, "multipart: \(r.body)")
        // Chunked, on the same connection: 1000-byte chunks, an extension, a trailer field.
        var chunked = Data()
        var offset = 0
        while offset < image.count {
            let piece = image[offset..<min(offset + 1000, image.count)]
            chunked.append(Data("\(String(piece.count, radix: 16))\(offset == 0 ? ";ext=1" : "")\r\n".utf8))
            chunked.append(piece)
            chunked.append(Data("\r\n".utf8))
            offset += piece.count
        }
        chunked.append(Data("0\r\nX-Trailer: yes\r\n\r\n".utf8))
        c.send("POST /v1/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        c.send(chunked)
        r = c.response()
        XCTAssertTrue(r.head?.hasPrefix("HTTP/1.1 200 OK") ?? false, "\(r)")
        XCTAssertEqual(probability(r.body), expected[1], accuracy: 1e-6, "chunked: \(r.body)")
        // Expect: 100-continue: the interim answer comes before any body byte is sent.
        c.send("POST /v1/predict HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: \(image.count)\r\n\r\n")
        let interim = c.response()
        XCTAssertEqual(interim.head, "HTTP/1.1 100 Continue", "\(interim)")
        c.send(image)
        r = c.response()
        XCTAssertEqual(probability(r.body), expected[1], accuracy: 1e-6, "after 100 Continue: \(r.body)")
        // Too large, asked first: 413 and no 100 Continue.
        c.send("POST /v1/predict HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: \((1 << 20) + 1)\r\n\r\n")
        r = c.response()
        XCTAssertTrue(r.head?.hasPrefix("HTTP/1.1 413 ") ?? false, "\(r)")
        // A chunked body over the limit stops at the chunk that passes it.
        let big = try XCTUnwrap(RawConnection(port: port))
        big.send("POST /v1/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n80000\r\n")
        big.send(Data(count: 0x80000) + Data("\r\n80001\r\n".utf8))
        r = big.response()
        XCTAssertTrue(r.head?.hasPrefix("HTTP/1.1 413 ") ?? false, "\(r)")
        XCTAssertTrue(r.body.contains("over the limit of 1048576 bytes"), r.body)
        // Malformed forms: a 400 naming what is wrong, and the connection goes on.
        func post(_ headers: String, _ body: Data) -> (String?, String) {
            guard let k = RawConnection(port: port) else { return (nil, "connect failed") }
            k.send("POST /v1/predict HTTP/1.1\r\nHost: x\r\n\(headers)Content-Length: \(body.count)\r\n\r\n")
            k.send(body)
            return k.response()
        }
        var bad = post("Content-Type: multipart/form-data; boundary=zzz\r\n", form)
        XCTAssertTrue(bad.0?.hasPrefix("HTTP/1.1 400 ") ?? false, "\(bad)")
        XCTAssertEqual(bad.1, "{\"error\":\"multipart/form-data body without its boundary 'zzz'\"}\n")
        bad = post("Content-Type: multipart/form-data\r\n", form)
        XCTAssertTrue(bad.1.contains("without a usable boundary parameter"), bad.1)
        bad = post("Content-Type: multipart/form-data; boundary=\(boundary)\r\n", form.prefix(form.count - 30))
        XCTAssertTrue(bad.1.contains("not closed by the boundary (a truncated body?)"), bad.1)
        // curl -d @face.png: line breaks stripped, sent form-encoded; the answer says what to use.
        let stripped = Data(image.filter { $0 != 10 && $0 != 13 })
        bad = post("Content-Type: application/x-www-form-urlencoded\r\n", stripped)
        XCTAssertTrue(bad.1.contains("curl -d strips line breaks from a file; send it with --data-binary @FILE or -F file=@FILE"), bad.1)
        bad = post("Transfer-Encoding: chunked\r\n", Data("zz\r\n".utf8))
        XCTAssertTrue(bad.1.contains("chunk size 'zz' is not a hexadecimal byte count"), bad.1)
        // Query strings with empty names and values: answered (a bare "?=" ended the process).
        for query in ["?=", "?==", "?&=&", "?explain=&=1"] {
            let k = try XCTUnwrap(RawConnection(port: port))
            k.send("GET /v1/health\(query) HTTP/1.1\r\nHost: x\r\n\r\n")
            XCTAssertTrue(k.response().head?.hasPrefix("HTTP/1.1 200 OK") ?? false, query)
        }
        XCTAssertTrue(p.isRunning)
    }

    /// Clients that are slow, stalled or old do not hold the service: with `--connections 2`, two
    /// clients dripping a header a few bytes at a time (slowloris) are answered 408 and dropped
    /// after `--read-timeout`, and a third client waiting behind them is then served (before, each
    /// read had its own 30 s, so a drip held a connection for ever); a body that trickles is 408
    /// too. An HTTP/1.0 request is answered and closed at once (curl -0, ab, busybox wget waited
    /// 30 s for the close), kept alive only when it asks. Content-Length given twice with two
    /// values is a 400 (it waited for the second length's bytes), with one value it is read; a body
    /// framed by both Transfer-Encoding and Content-Length is read chunked and the connection closed.
    /// HEAD is answered as GET without the body; a 405 says what is allowed.
    func testSlowStalledAndOldClientsDoNotHoldTheService() throws {
        let (model, _) = try fixtures()
        let (p, _, port) = try startServe(model, ["--connections", "2", "--read-timeout", "2"])
        defer { if p.isRunning { p.terminate() } }
        // HTTP/1.0: answered with Connection: close, and closed well before the 2 s idle limit.
        var c = try XCTUnwrap(RawConnection(port: port))
        c.send("GET /v1/health HTTP/1.0\r\n\r\n")
        var r = c.response()
        XCTAssertTrue(r.head?.hasPrefix("HTTP/1.1 200 OK") ?? false, "\(r)")
        XCTAssertTrue(r.head?.contains("Connection: close") ?? false, "\(r)")
        XCTAssertTrue(c.closes(within: 1), "an HTTP/1.0 answer is followed by the close its client waits for")
        // HTTP/1.0 asking for keep-alive: two requests on one connection.
        c = try XCTUnwrap(RawConnection(port: port))
        for _ in 0..<2 {
            c.send("GET /v1/health HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            r = c.response()
            XCTAssertTrue(r.head?.contains("Connection: keep-alive") ?? false, "\(r)")
        }
        c = try XCTUnwrap(RawConnection(port: port))  // frees the slot the kept-alive one held
        // HEAD: GET's status and headers, no body (curl -I, health checkers); 405 names what is allowed.
        let head = try XCTUnwrap(RawConnection(port: port))
        head.send("HEAD /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        let headWords = head.closingWords
        XCTAssertTrue(headWords.hasPrefix("HTTP/1.1 200 OK\r\n") && headWords.hasSuffix("Connection: close\r\n\r\n"), headWords)
        XCTAssertNotNil(headWords.range(of: #"Content-Length: [1-9]"#, options: .regularExpression), headWords)
        c.send("DELETE /v1/predict HTTP/1.1\r\nHost: x\r\n\r\n")
        r = c.response()
        XCTAssertTrue((r.head?.hasPrefix("HTTP/1.1 405 ") ?? false) && (r.head?.contains("\r\nAllow: POST\r\n") ?? false), "\(r)")
        // Content-Length twice: two values refused, one value read.
        c.send("POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 500\r\n\r\nhello")
        r = c.response()
        XCTAssertTrue(r.head?.hasPrefix("HTTP/1.1 400 ") ?? false, "\(r)")
        XCTAssertTrue(r.body.contains("Content-Length 5, 500 is not one byte count"), r.body)
        c = try XCTUnwrap(RawConnection(port: port))
        c.send("POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello")
        r = c.response()
        XCTAssertTrue(r.head?.hasPrefix("HTTP/1.1 400 ") ?? false, "\(r)")
        XCTAssertFalse(r.body.contains("byte count"), "one length twice is read (and the 5 bytes are not an image): \(r.body)")
        XCTAssertTrue(r.head?.contains("Connection: keep-alive") ?? false, "\(r)")
        // Transfer-Encoding and Content-Length together: read chunked, answered, closed.
        c.send("POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        r = c.response()
        XCTAssertTrue(r.head?.contains("Connection: close") ?? false, "\(r)")
        XCTAssertTrue(c.closes(within: 1))
        // Two slowloris clients take both connections, each sending a header line every 0.3 s.
        let drip = DispatchGroup()
        let answers = Answers()
        for _ in 0..<2 {
            DispatchQueue.global().async(group: drip) {
                guard let k = RawConnection(port: port) else { return }
                k.send("GET /v1/health HTTP/1.1\r\n")
                var t = 0
                while t < 40 && !k.readable(within: 0.3) { k.send("X-Drip-\(t): y\r\n"); t += 1 }
                // The server answered 408 and closed; what it said is in the socket before the close.
                answers.add(k.closingWords)
            }
        }
        usleep(500_000)
        // A third client waits in the backlog until the drips are dropped, and is answered.
        let t0 = Date()
        let third = try XCTUnwrap(RawConnection(port: port))
        third.send("GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        r = third.response()
        XCTAssertTrue(r.head?.hasPrefix("HTTP/1.1 200 OK") ?? false, "the client behind two slowloris connections: \(r)")
        XCTAssertLessThan(Date().timeIntervalSince(t0), 10, "the drips were dropped at the 2 s header limit")
        drip.wait()
        XCTAssertEqual(answers.all.count, 2)
        for a in answers.all {
            XCTAssertTrue(a.hasPrefix("HTTP/1.1 408 Request Timeout"), a)
            XCTAssertTrue(a.contains("the request header did not arrive whole within 2 s"), a)
        }
        // A trickling body: 408 after the grace and the 500 bytes/s it must keep up.
        let slow = try XCTUnwrap(RawConnection(port: port))
        slow.send("POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        var sent = 0
        while sent < 400 && !slow.readable(within: 0.25) { slow.send(Data(count: 10)); sent += 10 }
        let words = slow.closingWords
        XCTAssertTrue(words.hasPrefix("HTTP/1.1 408 "), words)
        XCTAssertTrue(words.contains("the body came slower than 500 bytes/s after 2 s ("), words)
        XCTAssertTrue(p.isRunning)
    }

    /// Connections past the limit on open files: each is answered 503 saying why (the server
    /// ended, status 0 and "stopped after 0 requests", when accept first failed with EMFILE), said
    /// once on stderr, and the service answers again as soon as connections close.
    func testTheLimitOnOpenFilesIsAnswered503AndTheServiceGoesOn() throws {
        let (model, _) = try fixtures()
        let (p, err, port) = try startServe(model, [], prefix: ["prlimit", "--nofile=32"])
        defer { if p.isRunning { p.terminate() } }
        // Idle connections, each a descriptor in the server, until it answers one at once: the
        // 503 from its spare descriptor.
        var held: [RawConnection] = []
        var refusal = ""
        while refusal.isEmpty, held.count < 60, let c = RawConnection(port: port) {
            if c.readable(within: 0.15) { refusal = c.closingWords } else { held.append(c) }
        }
        XCTAssertTrue(refusal.hasPrefix("HTTP/1.1 503 "), "\(held.count) held: \(refusal)")
        XCTAssertTrue(refusal.contains(#"{"error":"the server cannot take the connection now: Too many open files: the limit on open files is reached (ulimit -n 32)"}"#), refusal)
        XCTAssertGreaterThan(held.count, 5)
        // A request meanwhile is answered 503 too, and the server goes on.
        let during = try XCTUnwrap(RawConnection(port: port))
        during.send("GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        XCTAssertTrue(during.response().head?.hasPrefix("HTTP/1.1 503 ") ?? false)
        XCTAssertTrue(p.isRunning)
        held.removeAll()
        var answer: (head: String?, body: String) = (nil, "")
        let t0 = Date()
        while !(answer.head?.hasPrefix("HTTP/1.1 200 ") ?? false), Date().timeIntervalSince(t0) < 10 {
            let c = try XCTUnwrap(RawConnection(port: port))
            c.send("GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = c.response()
            usleep(50_000)
        }
        XCTAssertTrue(answer.head?.hasPrefix("HTTP/1.1 200 OK") ?? false, "answered again once the idle connections closed: \(answer)")
        // Each 503 is counted: the first refusal and the request meanwhile at least.
        let health = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(answer.body.utf8)) as? [String: Any], answer.body)
        let away = try XCTUnwrap(health["turned_away"] as? Int, answer.body)
        XCTAssertGreaterThanOrEqual(away, 2, answer.body)
        p.terminate()
        p.waitUntilExit()
        let said = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let notices = said.components(separatedBy: "\n").filter { $0.contains("cannot take a connection (Too many open files: the limit on open files is reached (ulimit -n 32)): new ones are answered 503 until some close") }
        XCTAssertEqual(notices.count, 1, said)
        XCTAssertTrue(said.contains("radar serve: SIGTERM: stopping"), said)
        XCTAssertTrue(said.contains(#/refused unread; \d+ turned away for want of a thread or descriptor\)/#), said)
    }

    /// Started with standard error closed (`2>&-`, a service manager that closes it): it is
    /// /dev/null, not the next descriptor opened. The listening socket took the number 2, and
    /// every log line was written to it.
    func testAClosedStandardErrorIsNotTheNextFileOpened() throws {
        let (model, images) = try fixtures()
        let port = try TCPRendezvous.freePort()
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/sh")
        p.arguments = ["-c", #"exec "$0" "$@" 2>&-"#, MPITrainingTests.products.appendingPathComponent("radar").path,
                       "serve", "--checkpoint", model, "--listen", "127.0.0.1:\(port)", "--threads", "1"]
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        defer { if p.isRunning { p.terminate() } }
        var status: Int?
        let t0 = Date()
        while status != 200, p.isRunning, Date().timeIntervalSince(t0) < 30 {
            usleep(100_000)
            status = request("http://127.0.0.1:\(port)/v1/health").0
        }
        XCTAssertEqual(status, 200)
        XCTAssertEqual(try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(p.processIdentifier)/fd/2"), "/dev/null")
        // A closed standard output still fails its writes: the scores went nowhere, and it says so.
        let (rc, said) = try Process.runStatus(["sh", "-c", #"exec "$0" "$@" >&-"#, MPITrainingTests.products.appendingPathComponent("radar").path,
                                                "predict", "--checkpoint", model, images[0]])
        XCTAssertEqual(rc, 1, said)
        XCTAssertTrue(said.contains("radar: error: standard output: Bad file descriptor (what was printed is incomplete)"), said)
    }

    final class Answers: @unchecked Sendable {
        private let lock = NSLock()
        private var list: [String] = []
        func add(_ s: String) { lock.lock(); list.append(s); lock.unlock() }
        var all: [String] { lock.lock(); defer { lock.unlock() }; return list }
    }

    /// `--listen [::]:0`: one dual-stack socket, answering over IPv6 and IPv4 alike; a bracketed
    /// IPv6 address alone; a bare IPv6 address with a port refused as ambiguous. In a network
    /// namespace of its own (root), so the machine's IPv6 settings do not matter.
    func testServesOverIPv6() throws {
        XCTAssertEqual(geteuid(), 0, "a network namespace needs root (CI has it)")
        guard geteuid() == 0 else { return }
        let ns = try LoopbackNamespace()
        let bin = MPITrainingTests.products.appendingPathComponent("radar").path
        let (model, _) = try fixtures()
        let python = ProcessInfo.processInfo.environment["RADAR_PYTHON"] ?? "python3"
        let get = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=30).read().decode())"
        for (listen, reachable) in [("[::]:0", ["[::1]", "127.0.0.1"]), ("[::1]:0", ["[::1]"])] {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: ns.prefix[0])
            p.arguments = Array(ns.prefix.dropFirst()) + [bin, "serve", "--checkpoint", model, "--listen", listen, "--threads", "1"]
            let err = Pipe()
            p.standardError = err
            try p.run()
            defer { if p.isRunning { p.terminate(); p.waitUntilExit() } }
            let first = firstLine(err)
            let port = try XCTUnwrap(first.range(of: #"\]:(\d+) "#, options: .regularExpression).map { first[$0].dropFirst(2).dropLast() }, first)
            for host in reachable {
                let (rc, body) = try Process.runStatus(ns.prefix + [python, "-c", get, "http://\(host):\(port)/v1/health"])
                XCTAssertEqual(rc, 0, "\(listen) from \(host): \(body)")
                XCTAssertTrue(body.contains("\"checkpoint\""), "\(listen) from \(host): \(body)")
            }
        }
        let (rc, text) = try Process.runStatus([bin, "serve", "--checkpoint", model, "--listen", "::1:8080"])
        XCTAssertNotEqual(rc, 0)
        XCTAssertTrue(text.contains("--listen ::1:8080: expected HOST:PORT"), text)
    }
}
