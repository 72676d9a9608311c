import ArgumentParser
import Foundation
import RadarCLI
import RadarCore
import RadarDistributed

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "An HTTP service that scores images: POST an image to /v1/predict, get p(fake) as JSON; requests that arrive together share a forward pass.",
        discussion: """
        POST /v1/predict with a PNG, JPEG or WebP as the body (curl --data-binary @face.png URL/v1/predict): \
        {"probability_fake", "label", "logit"}, and with ?explain=1 what each head said (as radar predict --explain --json). \
        GET /v1/health: the model, the device and counts of requests and batches. An image is decoded on its \
        connection's thread and resized and normalised as radar predict does; one worker runs the forward passes, \
        each for up to --batch-size images that arrived within --max-delay-ms of the first. SIGINT, SIGTERM or \
        SIGHUP (not under nohup): stop accepting, answer what is waiting, exit 0.
        """)
    @Option(help: "Weights: a checkpoint (.safetensors.lz4), model.safetensors, a run's folder (its best checkpoint), hf-hub:ORG/NAME[@REVISION], or a PyTorch state dict with --config.") var checkpoint: String
    @Option(help: "Preset (tiny, mid, full) or config JSON file, for a state dict without RADAR metadata.") var config: String?
    @Option(help: "Address and port to listen on: HOST:PORT, an IPv6 host in brackets ([::]:8080 is every interface of both kinds); port 0: one the system picks, printed at start.") var listen = "127.0.0.1:8080"
    @Option(help: "Images per forward pass at most.") var batchSize = 32
    @Option(help: "How long the first image of a batch waits for others, in milliseconds.") var maxDelayMs = 5.0
    @Option(help: "Connections served at once (more wait in the listen backlog).") var connections = 64
    @Option(help: "Bodies larger than this many MiB are refused (413).") var maxImageMb = 16
    @Option(help: "Seconds: an idle keep-alive connection is closed after this, a request's header must arrive within it (else 408), a body must come at 500 bytes/s after it (else 408), a client that stops reading its answer is dropped after it.") var readTimeout = 30.0
    @Option(help: "Threads.") var threads = ProcessInfo.processInfo.activeProcessorCount
    @Option(help: "Backend: cpu, cuda, cuda:N, cuda-emulated or cpu-fenced (default: RADAR_DEVICE, else cpu).") var device: String?
    @Option(help: ArgumentHelp(stringLiteral: Devices.precisionHelp)) var precision: String?
    @Option(help: ArgumentHelp(stringLiteral: SplitScoring.temperatureHelp)) var temperature: String?
    @Option(help: ArgumentHelp(stringLiteral: SplitScoring.ttaHelp)) var tta: String?

    func validate() throws {
        try requireBatch(batchSize)
        try requireThreads(threads)
        try requireFlag((1...4096).contains(connections), "connections", "in 1...4096", connections)
        try requireFlag((1...1024).contains(maxImageMb), "max-image-mb", "in 1...1024", maxImageMb)
        try requireFlag(maxDelayMs >= 0 && maxDelayMs <= 10_000, "max-delay-ms", "in 0...10000", maxDelayMs)
        try requireFlag(readTimeout >= 0.1 && readTimeout <= 3600, "read-timeout", "in 0.1...3600 seconds", readTimeout)
        if let temperature { do { _ = try TemperatureScaling.resolve(temperature) } catch { throw ValidationError("\(error)") } }
        try SplitScoring.validate(tta: tta)
        _ = try Self.address(listen)
    }

    /// "HOST:PORT" as (host, port); an IPv6 host in brackets ([::1]:8080), returned without them.
    static func address(_ text: String) throws -> (String, Int) {
        guard let a = hostPort(text, allowAnyPort: true) else {
            throw ValidationError("--listen \(text): expected HOST:PORT (127.0.0.1:8080, [::1]:8080; port 0 picks a free one)")
        }
        return a
    }

    func run() throws {
        try failing {
            let temperature = try self.temperature.map { try TemperatureScaling.resolve($0) } ?? 1
            let (host, port) = try Self.address(listen)
            let (model, ctx, trainer) = try loadCheckpointModel(checkpoint, config: config, threads: threads, device: device, precision: precision)
            let c = model.config
            let server: HTTPServer
            do { server = try HTTPServer(host: host, port: port, maxBodyBytes: maxImageMb << 20, maxConnections: connections) } catch {
                throw ValidationError("\(error)")
            }
            server.readTimeout = readTimeout
            let batcher = try InferenceBatcher(trainer: trainer, batchSize: batchSize, maxDelay: maxDelayMs / 1000, flip: tta != nil)
            let health: [String: Any] = ["checkpoint": checkpoint, "device": ctx.backend.deviceDescription, "image_size": c.imgSize,
                                         "temperature": temperature, "tta": tta ?? NSNull(), "batch_size": batchSize]
            keepRunningWithoutReaders()
            let watch = SignalWatch([SIGINT, SIGTERM, SIGHUP]) { s in
                logLine("radar serve: \(SignalWatch.name(s)): stopping")
                server.stop()
            }
            defer { watch.cancel() }
            logLine("radar serve: listening on http://\(hostPortText(host, server.port)) (\(checkpoint) on \(ctx.backend.deviceDescription); POST an image to /v1/predict)")
            let service = ScoringService(server: server, batcher: batcher, config: c, temperature: temperature, health: health)
            try server.serve { service.respond($0) }
            batcher.stop()
            let s = batcher.statistics
            let away = server.turnedAway == 0 ? "" : "; \(server.turnedAway) turned away for want of a thread or descriptor"
            logLine("radar serve: stopped after \(service.requests) requests (\(s.images) images in \(s.batches) forward passes; \(server.rejected) refused unread\(away))")
        }
    }
}

/// What `radar serve` answers (and `radar bench serve` measures): POST /v1/predict, GET /v1/health.
final class ScoringService: @unchecked Sendable {
    let batcher: InferenceBatcher, config: RADARConfig, temperature: Double, health: [String: Any]
    /// Where requests that were refused before they were read are counted.
    let server: HTTPServer
    private let started = Date()
    private let lock = NSLock()
    private var count = 0

    init(server: HTTPServer, batcher: InferenceBatcher, config: RADARConfig, temperature: Double, health: [String: Any]) {
        (self.server, self.batcher, self.config, self.temperature, self.health) = (server, batcher, config, temperature, health)
    }

    /// Requests answered so far.
    var requests: Int { lock.lock(); defer { lock.unlock() }; return count }

    func respond(_ request: HTTPServer.Request) -> HTTPServer.Response {
        lock.lock(); count += 1; lock.unlock()
        let c = config
        switch (request.method, request.path) {
        case ("GET", "/v1/health"):
            let s = batcher.statistics
            var doc = health
            doc["status"] = "ok"
            doc["uptime_s"] = Date().timeIntervalSince(started)
            doc["requests"] = requests
            doc["rejected"] = server.rejected
            doc["turned_away"] = server.turnedAway
            doc["images"] = s.images
            doc["batches"] = s.batches
            doc["largest_batch"] = s.largestBatch
            doc["forward_seconds"] = s.forwardSeconds
            return .json(200, doc)
        case ("POST", "/v1/predict"):
            let pixels: [Float]
            do {
                guard !request.body.isEmpty else { return .error(400, "empty body: POST the image's bytes (PNG, JPEG or WebP)") }
                var body = request.body, item = "the request body"
                let contentType = request.headers["content-type"] ?? ""
                if let boundary = MultipartForm.boundary(contentType: contentType) {
                    // curl -F file=@face.png, an HTML form, requests.post(url, files=...).
                    body = try MultipartForm.file(body, boundary: boundary)
                    item = "the form's file"
                }
                let decoded: RGBImage
                do { decoded = try ImageCodec.decode(body, item: item) } catch {
                    // curl -d @FILE sends the file as a form field with its line breaks removed
                    // (a PNG's signature loses its CR LF; a JPEG decodes as corrupt).
                    let stripped = body.starts(with: [0x89, 0x50, 0x4E, 0x47, 0x1A]) || body.starts(with: [0xFF, 0xD8, 0xFF])
                    if stripped && contentType.lowercased().hasPrefix("application/x-www-form-urlencoded") {
                        return .error(400, "\(error) (sent form-encoded: curl -d strips line breaks from a file; send it with --data-binary @FILE or -F file=@FILE)")
                    }
                    throw error
                }
                let img = ImageResize.resize(decoded, width: c.imgSize, height: c.imgSize, mode: .openCVLinear)
                pixels = [Float](unsafeUninitializedCapacity: 3 * c.imgSize * c.imgSize) { b, n in
                    Augmenter.normalize(img, mean: c.mean, std: c.std, into: b.baseAddress!)
                    n = b.count
                }
            } catch { return .error(400, "\(error)") }
            do {
                let e = try batcher.predict(pixels)
                let p = TemperatureScaling.probability(logit: e.logit, modelProbability: e.probability, temperature: temperature)
                var doc: [String: Any] = ["probability_fake": Double(p), "logit": Double(e.logit),
                                          "label": !p.isFinite ? "undefined" : p >= 0.5 ? "fake" : "real"]
                if let flag = request.query["explain"], flag != "0" && flag != "false" { doc["explanation"] = Predict.explanationJSON(e) }
                return .json(200, doc)
            } catch { return .error(503, "\(error)") }
        case (_, "/v1/predict"), (_, "/v1/health"):
            var answer = HTTPServer.Response.error(405, "\(request.method) \(request.path): use \(request.path == "/v1/health" ? "GET" : "POST")")
            answer.headers = [("Allow", request.path == "/v1/health" ? "GET, HEAD" : "POST")]
            return answer
        default:
            return .error(404, "\(request.path): not found (POST /v1/predict, GET /v1/health)")
        }
    }
}
