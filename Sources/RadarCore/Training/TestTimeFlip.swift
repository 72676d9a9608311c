import Foundation

/// Test-time augmentation by a horizontal flip (`--tta flip` on `radar evaluate`, `radar
/// calibrate` and `radar predict`): each image is scored as it is and mirrored left to right (the
/// flip the recipe trains with, MODEL.md §8), and the two views are merged. The final logits are
/// averaged (the probability is the sigmoid of the mean, so a temperature divides the mean
/// logit); each head's probability, the gate, each iteration's probability and the attention
/// are averaged too. Twice the forward passes.
public enum TestTimeFlip {
    /// `--tta`'s values.
    public static let names = ["flip"]

    /// (n, 3, size, size) images mirrored left to right, row by row.
    public static func mirror(_ images: UnsafeBufferPointer<Float>, into out: UnsafeMutableBufferPointer<Float>, size: Int) {
        precondition(images.count == out.count && images.count % size == 0, "\(images.count) values, \(out.count) out, rows of \(size)")
        for row in 0..<(images.count / size) {
            let base = row * size
            for x in 0..<size { out[base + x] = images[base + size - 1 - x] }
        }
    }

    /// Eval-mode explanations of `host` (n, 3, size, size) and of its mirror, merged; `view`, of
    /// that shape on the device, takes each in turn.
    public static func explain(_ trainer: Trainer, images host: UnsafeBufferPointer<Float>, view: Tensor) throws -> [Explanation] {
        let be = trainer.ctx.backend
        be.upload(host, into: view)
        let plain = try trainer.explain(images: view)
        let mirrored = UnsafeMutableBufferPointer<Float>.allocate(capacity: host.count)
        defer { mirrored.deallocate() }
        mirror(host, into: mirrored, size: view.shape[3])
        be.upload(UnsafeBufferPointer(mirrored), into: view)
        return zip(plain, try trainer.explain(images: view)).map(merge)
    }

    /// The two views of one image as one explanation (see the type's comment).
    public static func merge(_ a: Explanation, _ b: Explanation) -> Explanation {
        func mean(_ x: Float, _ y: Float) -> Float { (x + y) / 2 }
        let logit = mean(a.logit, b.logit)
        return Explanation(probability: Explanation.sigmoid(logit), logit: logit,
                           boundary: a.boundary.map { mean($0, b.boundary!) }, frequency: a.frequency.map { mean($0, b.frequency!) },
                           reasoning: mean(a.reasoning, b.reasoning), external: mean(a.external, b.external), gate: mean(a.gate, b.gate),
                           iterations: zip(a.iterations, b.iterations).map(mean),
                           attention: zip(a.attention, b.attention).map { zip($0, $1).map(mean) })
    }
}
