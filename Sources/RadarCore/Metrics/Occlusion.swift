import Foundation

/// Occlusion sensitivity (Zeiler and Fergus, 2014) for `radar predict --occlusion`: which parts
/// of a face the verdict rests on. The image, at the model's input size, is covered one cell at
/// a time (cells are the ViT's patches: 14 x 14 of 16 px on the full config) with its
/// normalisation mean colour (the nearest 8-bit colour: about zero once normalised), and each covered copy goes through the
/// same eval-mode forward. A cell's drop is p(fake | image) - p(fake | image with the cell
/// covered): positive where the cell argued "fake", negative where it argued "real". Only
/// forward passes: every value is one `radar predict` would print for the covered image.
public enum Occlusion {
    public struct Map: Sendable {
        /// Cells per side and each cell's side in pixels.
        public let grid: Int, cell: Int
        /// The covering colour: round(255 x mean) per channel.
        public let fill: [UInt8]
        /// Row-major, grid x grid.
        public let drops: [Float]
    }

    /// The normalisation mean as 8-bit RGB.
    public static func fill(_ config: RADARConfig) -> [UInt8] { config.mean.map { UInt8(min(255, max(0, ($0 * 255).rounded()))) } }

    /// `image` with the cell at (row, col) covered by `fill`.
    public static func covered(_ image: RGBImage, cell: Int, row: Int, col: Int, fill: [UInt8]) -> RGBImage {
        var out = image
        for y in (row * cell)..<min(image.height, (row + 1) * cell) {
            for x in (col * cell)..<min(image.width, (col + 1) * cell) {
                for ch in 0..<3 { out.pixels[(y * image.width + x) * 3 + ch] = fill[ch] }
            }
        }
        return out
    }

    /// The map of `image` (already at the model's input size), whose own probability is
    /// `probability`. `forward` takes `count` normalised images at `batch` (3 x size x size
    /// floats each, at most `capacity` of them) and returns their probabilities.
    public static func map(_ image: RGBImage, probability: Float, config c: RADARConfig, batch: UnsafeMutablePointer<Float>, capacity: Int,
                           forward: (Int) throws -> [Float]) throws -> Map {
        precondition(image.width == c.imgSize && image.height == c.imgSize, "occlusion needs the model's input size")
        let cell = c.patchSize, grid = c.imgSize / cell, per = 3 * c.imgSize * c.imgSize, fill = fill(c)
        var drops: [Float] = []
        drops.reserveCapacity(grid * grid)
        for start in stride(from: 0, to: grid * grid, by: capacity) {
            let n = min(capacity, grid * grid - start)
            concurrentPerform(iterations: n) { k in
                let at = start + k
                Augmenter.normalize(covered(image, cell: cell, row: at / grid, col: at % grid, fill: fill), mean: c.mean, std: c.std, into: batch + k * per)
            }
            drops += try forward(n).map { probability - $0 }
        }
        return Map(grid: grid, cell: cell, fill: fill, drops: drops)
    }

    /// The image with the map laid over it: red where covering lowered p(fake), blue where it
    /// raised it, opacity up to 0.6 in proportion to |drop| / the largest |drop|.
    public static func overlay(_ image: RGBImage, _ m: Map) -> RGBImage {
        Heatmap.overlay(image, grid: m.grid, cell: m.cell, values: m.drops, positive: [255, 0, 0], negative: [0, 64, 255])
    }
}

/// A grid of values laid over an image (`radar predict --occlusion-maps`, `--rollout-maps`).
public enum Heatmap {
    /// Each cell tinted `positive` (a value above 0) or `negative` (below), opacity up to 0.6 in
    /// proportion to |value| / the largest |value|; non-finite values leave their cell alone.
    public static func overlay(_ image: RGBImage, grid: Int, cell: Int, values: [Float], positive: [Double], negative: [Double]) -> RGBImage {
        precondition(values.count == grid * grid, "\(values.count) values for a \(grid) x \(grid) grid")
        let scale = values.map { abs($0) }.filter(\.isFinite).max() ?? 0
        var out = image
        guard scale > 0 else { return out }
        for y in 0..<image.height {
            for x in 0..<image.width {
                let r = min(grid - 1, y / cell), col = min(grid - 1, x / cell)
                let d = values[r * grid + col]
                guard d.isFinite else { continue }
                let alpha = 0.6 * Double(abs(d) / scale)
                let colour = d > 0 ? positive : negative
                for ch in 0..<3 {
                    let i = (y * image.width + x) * 3 + ch
                    out.pixels[i] = UInt8(((1 - alpha) * Double(image.pixels[i]) + alpha * colour[ch]).rounded())
                }
            }
        }
        return out
    }
}
