import ArgumentParser
import Foundation
import RadarCLI
import RadarCore

extension Bench {
    struct ServeLoad: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "serve",
            abstract: "radar serve under load: clients on keep-alive connections POST face images in a loop; requests/s, latency percentiles and images per forward pass (JSON).")
        @Option(help: "Preset (tiny, mid, full) or a config JSON file (freshly initialised weights: speed does not depend on them).") var config = "full"
        @Option(help: "Concurrent clients, each on its own connection, one request at a time.") var clients = 8
        @Option(help: "Requests in all (after one warm-up request per client).") var requests = 200
        @Option(help: "Images per forward pass at most.") var batchSize = 32
        @Option(help: "How long the first image of a batch waits for others, in milliseconds.") var maxDelayMs = 5.0
        @Option(help: "Side of the PNG faces sent, in pixels (default: the model's input size).") var imageSize: Int?
        @Option(help: "Threads.") var threads = ProcessInfo.processInfo.activeProcessorCount
        @Option(help: "Backend: cpu, cuda, cuda:N, cuda-emulated or cpu-fenced (default: RADAR_DEVICE, else cpu).") var device: String?
        @Option(help: ArgumentHelp(stringLiteral: Devices.precisionHelp)) var precision: String?

        func validate() throws {
            try requireFlag((1...256).contains(clients), "clients", "in 1...256", clients)
            try requireFlag(requests >= 1, "requests", "at least 1", requests)
            try requireBatch(batchSize)
            try requireThreads(threads)
            try requireFlag(maxDelayMs >= 0, "max-delay-ms", "at least 0", maxDelayMs)
            try requireFlag((imageSize ?? 16) >= 16, "image-size", "at least 16", imageSize ?? 16)
        }

        func run() throws {
            try failing {
                let cfg = try RADARConfig.resolve(config)
                let model = try RADARModel(config: cfg)
                let backend = try Devices.backend(device ?? Devices.defaultName, threads: threads, precision: precision)
                let ctx = ExecutionContext(backend: backend, layout: model.layout, seed: 1)
                model.initialize(ctx.params, seed: 1)
                let trainer = Trainer(model: model, ctx: ctx)
                let server = try HTTPServer(host: "127.0.0.1", port: 0, maxBodyBytes: 64 << 20, maxConnections: clients + 4)
                let batcher = try InferenceBatcher(trainer: trainer, batchSize: batchSize, maxDelay: maxDelayMs / 1000)
                let service = ScoringService(server: server, batcher: batcher, config: cfg, temperature: 1, health: [:])
                let serving = DispatchGroup()
                serving.enter()
                try startThread("the server") {
                    do { try server.serve { service.respond($0) } } catch { logLine("radar bench serve: \(error)") }
                    serving.leave()
                }
                let faces = SyntheticFaces(size: imageSize ?? cfg.imgSize, seed: 2)
                let bodies = try (0..<8).map { try ImageCodec.encodePNG(faces.rgbImage($0, label: $0 % 2)) }
                // Each client: a warm-up request, then its share of the requests, timed one by one.
                let results = ClientResults()
                let warm = DispatchGroup(), go = DispatchSemaphore(value: 0), done = DispatchGroup()
                var start = Date()
                for k in 0..<clients {
                    let mine = requests / clients + (k < requests % clients ? 1 : 0)
                    warm.enter(); done.enter()
                    try startThread("client \(k + 1)") {
                        defer { done.leave() }
                        var mineTimes: [Double] = [], warmed = false
                        do {
                            let connection = try LoopbackClient(port: server.port)
                            _ = try connection.post("/v1/predict", bodies[k % bodies.count])
                            warmed = true
                            warm.leave()
                            go.wait()
                            for i in 0..<mine {
                                let t0 = Date()
                                let (status, text) = try connection.post("/v1/predict", bodies[(k + i) % bodies.count])
                                guard status == 200 else { throw ValidationError("HTTP \(status): \(text)") }
                                mineTimes.append(Date().timeIntervalSince(t0))
                            }
                        } catch {
                            results.add(failure: "client \(k): \(error)")
                            if !warmed { warm.leave() }
                        }
                        results.add(latencies: mineTimes)
                    }
                }
                warm.wait()
                let before = batcher.statistics
                start = Date()
                for _ in 0..<clients { go.signal() }
                done.wait()
                let seconds = Date().timeIntervalSince(start)
                let after = batcher.statistics
                server.stop()
                serving.wait()
                batcher.stop()
                if let f = results.failures.first { throw ValidationError("bench serve: \(f)") }
                let sorted = results.latencies.sorted()
                func percentile(_ q: Double) -> Double { sorted.isEmpty ? .nan : sorted[min(sorted.count - 1, Int((q * Double(sorted.count - 1)).rounded()))] * 1000 }
                let (images, batches) = (after.images - before.images, after.batches - before.batches)
                printJSON(["bench": "serve", "config": config, "clients": clients, "requests": sorted.count, "batch_size": batchSize,
                           "max_delay_ms": maxDelayMs, "image_px": imageSize ?? cfg.imgSize, "seconds": seconds,
                           "requests_per_s": Double(sorted.count) / seconds,
                           "latency_ms": ["p50": percentile(0.5), "p90": percentile(0.9), "p99": percentile(0.99), "max": sorted.last.map { $0 * 1000 } ?? .nan],
                           "images_per_forward": batches > 0 ? Double(images) / Double(batches) : .nan,
                           "forward_share": (after.forwardSeconds - before.forwardSeconds) / seconds,
                           "device": backend.deviceDescription, "machine": machineRecord(threads: threads)])
            }
        }
    }
}

/// What the benchmark's client threads measured.
final class ClientResults: @unchecked Sendable {
    private let lock = NSLock()
    private(set) var latencies: [Double] = [], failures: [String] = []
    func add(latencies l: [Double]) { lock.lock(); latencies += l; lock.unlock() }
    func add(failure f: String) { lock.lock(); failures.append(f); lock.unlock() }
}

/// One keep-alive HTTP/1.1 connection to a local server, for the benchmark's clients.
final class LoopbackClient {
    private let fd: Int32
    private var buffer = Data()

    init(port: Int) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let r = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard fd >= 0, r == 0 else { throw ValidationError("connect to 127.0.0.1:\(port): \(String(cString: strerror(errno)))") }
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
    }

    deinit { close(fd) }

    /// (status, body) of one POST.
    func post(_ path: String, _ body: Data) throws -> (Int, String) {
        var out = Data("POST \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: \(body.count)\r\n\r\n".utf8)
        out.append(body)
        try out.withUnsafeBytes { raw in
            var sent = 0
            while sent < raw.count {
                let n = send(fd, raw.baseAddress! + sent, raw.count - sent, Int32(MSG_NOSIGNAL))
                guard n > 0 else { throw ValidationError("send: \(String(cString: strerror(errno)))") }
                sent += n
            }
        }
        let separator = Data("\r\n\r\n".utf8)
        while buffer.range(of: separator) == nil { try receive() }
        let end = buffer.range(of: separator)!
        let head = String(decoding: buffer[buffer.startIndex..<end.lowerBound], as: UTF8.self)
        let status = Int(head.split(separator: " ").dropFirst().first ?? "") ?? 0
        let length = head.components(separatedBy: "\r\n").compactMap { line -> Int? in
            line.lowercased().hasPrefix("content-length:") ? Int(line.dropFirst("content-length:".count).trimmingCharacters(in: .whitespaces)) : nil
        }.first ?? 0
        while buffer.count - (end.upperBound - buffer.startIndex) < length { try receive() }
        let text = String(decoding: buffer[end.upperBound..<(end.upperBound + length)], as: UTF8.self)
        buffer = Data(buffer[(end.upperBound + length)...])
        return (status, text)
    }

    private func receive() throws {
        var chunk = [UInt8](repeating: 0, count: 16 << 10)
        let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        guard n > 0 else { throw ValidationError("the server closed the connection") }
        buffer.append(contentsOf: chunk[0..<n])
    }
}
