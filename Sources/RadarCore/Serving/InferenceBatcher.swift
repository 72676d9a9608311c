import Foundation

/// Dynamic batching for `radar serve`: requests on many connection threads each hand one
/// normalised image (3, size, size) to `predict` and wait; one worker thread takes the first
/// waiting image, gathers those that arrive within `maxDelay` up to `batchSize`, and runs one
/// eval-mode forward for all of them (a GPU's throughput comes from batches). Each image's
/// explanation is what the same forward gives it in a batch of `radar predict`.
public final class InferenceBatcher: @unchecked Sendable {
    public struct Stats: Sendable {
        public var images = 0, batches = 0, largestBatch = 0
        /// Seconds of forward passes.
        public var forwardSeconds = 0.0
    }

    final class Job {
        let pixels: [Float]
        var result: Result<Explanation, Error>?
        let done = DispatchSemaphore(value: 0)
        init(_ pixels: [Float]) { self.pixels = pixels }
    }

    public let trainer: Trainer
    public let batchSize: Int, maxDelay: TimeInterval, flip: Bool
    private let input: DeviceTensor
    private let per: Int
    private let condition = NSCondition()
    private var waiting: [Job] = []
    private var stopping = false
    private var stats = Stats()
    private let worker = DispatchGroup()

    /// `flip`: each image also mirrored, the views merged (`TestTimeFlip`).
    public init(trainer: Trainer, batchSize: Int, maxDelay: TimeInterval, flip: Bool = false) throws {
        let c = trainer.model.config
        (self.trainer, self.batchSize, self.maxDelay, self.flip) = (trainer, batchSize, maxDelay, flip)
        per = 3 * c.imgSize * c.imgSize
        input = DeviceTensor(trainer.ctx.backend, Shape(batchSize, 3, c.imgSize, c.imgSize))
        worker.enter()
        do {
            try startThread("the inference batcher") { [self] in
                run()
                worker.leave()
            }
        } catch {
            worker.leave()
            throw error
        }
    }

    /// The explanation of one image, normalised as the model takes it ((3, size, size) values);
    /// waits for its batch.
    public func predict(_ pixels: [Float]) throws -> Explanation {
        precondition(pixels.count == per, "\(pixels.count) values for an image of \(per)")
        let job = Job(pixels)
        condition.lock()
        guard !stopping else { condition.unlock(); throw HTTPServer.ServerError(description: "the server is stopping") }
        waiting.append(job)
        condition.signal()
        condition.unlock()
        job.done.wait()
        return try job.result!.get()
    }

    public var statistics: Stats {
        condition.lock(); defer { condition.unlock() }
        return stats
    }

    /// Answers what is waiting, then ends the worker.
    public func stop() {
        condition.lock()
        stopping = true
        condition.signal()
        condition.unlock()
        worker.wait()
    }

    private func run() {
        let host = UnsafeMutableBufferPointer<Float>.allocate(capacity: batchSize * per)
        defer { host.deallocate() }
        while true {
            condition.lock()
            while waiting.isEmpty && !stopping { condition.wait() }
            if waiting.isEmpty { condition.unlock(); return }
            // The first image waits at most maxDelay for others to share its forward.
            let deadline = monotonicNow().addingTimeInterval(maxDelay)
            while waiting.count < batchSize && !stopping && condition.wait(untilMonotonic: deadline) {}
            let jobs = Array(waiting.prefix(batchSize))
            waiting.removeFirst(jobs.count)
            condition.unlock()
            for (i, j) in jobs.enumerated() { (host.baseAddress! + i * per).update(from: j.pixels, count: per) }
            let c = trainer.model.config
            let view = input.tensor.slice(from: 0, Shape(jobs.count, 3, c.imgSize, c.imgSize))
            let start = Date()
            let outcome = Result { () throws -> [Explanation] in
                let images = UnsafeBufferPointer(start: host.baseAddress, count: jobs.count * per)
                if flip { return try TestTimeFlip.explain(trainer, images: images, view: view) }
                trainer.ctx.backend.upload(images, into: view)
                return try trainer.explain(images: view)
            }
            let seconds = Date().timeIntervalSince(start)
            condition.lock()
            stats.images += jobs.count; stats.batches += 1
            stats.largestBatch = max(stats.largestBatch, jobs.count); stats.forwardSeconds += seconds
            condition.unlock()
            for (i, j) in jobs.enumerated() {
                j.result = outcome.map { $0[i] }
                j.done.signal()
            }
        }
    }
}
