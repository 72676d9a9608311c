import Foundation

/// A procedural deepfake set: face-like RGB crops, where the "fakes" carry the two artifact
/// families RADAR looks for:
/// 1. a blended inner-face region with a visible boundary seam (colour/brightness mismatch
///    across a sharp mask edge), and
/// 2. an up-sampling signature: the pasted region is rendered at half resolution and
///    nearest-neighbour upsampled, plus a faint period-2 checkerboard, as transposed-convolution
///    generators leave.
///
/// `difficulty` in [0, 1] scales the artifacts down (0: obvious, 1: faint). Every image is a pure
/// function of (seed, index): labels alternate deterministically by a draw, not by position.
public struct SyntheticFaces: Sendable {
    public let size: Int
    public let seed: UInt64
    public let difficulty: Double

    public init(size: Int, seed: UInt64, difficulty: Double = 0.3) {
        precondition(size >= 8, "synthetic images need size >= 8")
        self.size = size
        self.seed = seed
        self.difficulty = min(max(difficulty, 0), 1)
    }

    /// Label of image `index` (1 = fake), balanced in expectation.
    public func label(_ index: Int) -> Int {
        RandomStream(seed: seed, stream: RandomStream.id("synth-label", UInt64(index))).uniform(0) < 0.5 ? 0 : 1
    }

    /// Image `index` drawn with the given label (1 adds the fake artifacts).
    public func rgbImage(_ index: Int, label: Int) -> RGBImage {
        RGBImage(width: size, height: size, pixels: image(index, label: label))
    }

    /// Interleaved RGB bytes (size x size x 3) of image `index`.
    public func image(_ index: Int) -> [UInt8] { image(index, label: label(index)) }

    func image(_ index: Int, label forcedLabel: Int) -> [UInt8] {
        let r = RandomStream(seed: seed, stream: RandomStream.id("synth-image", UInt64(index)))
        var k: UInt64 = 0
        func u() -> Double { k += 1; return Double(r.uniform(k)) }
        let s = size, fs = Double(size)
        // Scene parameters.
        let bg0 = (u(), u(), u()), bg1 = (u(), u(), u())
        let skin = (0.55 + 0.4 * u(), 0.35 + 0.35 * u(), 0.25 + 0.3 * u())
        let cx = fs * (0.45 + 0.1 * u()), cy = fs * (0.45 + 0.1 * u())
        let rx = fs * (0.24 + 0.08 * u()), ry = fs * (0.32 + 0.08 * u())
        let light = (u() - 0.5) * 0.6
        let eyeY = cy - ry * 0.25, eyeDX = rx * 0.42, eyeR = rx * (0.12 + 0.05 * u())
        let mouthY = cy + ry * 0.45, mouthW = rx * (0.35 + 0.2 * u()), mouthH = ry * 0.06
        let hairShade = 0.15 + 0.3 * u()
        let waves = (1 + 3 * u(), u() * 6.28)

        var img = [Double](repeating: 0, count: s * s * 3)
        func scene(_ x: Double, _ y: Double) -> (Double, Double, Double) {
            let t = y / fs
            var c = (bg0.0 * (1 - t) + bg1.0 * t, bg0.1 * (1 - t) + bg1.1 * t, bg0.2 * (1 - t) + bg1.2 * t)
            let wave = 0.05 * Foundation.sin(waves.0 * x / fs * 6.28 + waves.1)
            c = (c.0 + wave, c.1 + wave, c.2 + wave)
            let dx = (x - cx) / rx, dy = (y - cy) / ry
            let d2 = dx * dx + dy * dy
            if d2 < 1.25 && dy < -0.55 { c = (hairShade, hairShade * 0.8, hairShade * 0.6) }  // hair
            if d2 < 1 {
                let shade = 1 + light * dx - 0.25 * d2
                c = (skin.0 * shade, skin.1 * shade, skin.2 * shade)
                for ex in [cx - eyeDX, cx + eyeDX] {
                    let ed = ((x - ex) * (x - ex) + (y - eyeY) * (y - eyeY) * 2.5) / (eyeR * eyeR)
                    if ed < 1 { c = ed < 0.35 ? (0.08, 0.06, 0.05) : (0.9, 0.9, 0.88) }
                }
                let md = ((x - cx) / mouthW) * ((x - cx) / mouthW) + ((y - mouthY) / mouthH) * ((y - mouthY) / mouthH)
                if md < 1 { c = (0.55, 0.18, 0.2) }
                if abs(x - cx) < rx * 0.06 && y > eyeY && y < mouthY - mouthH * 2 { c = (c.0 * 0.9, c.1 * 0.88, c.2 * 0.88) }
            }
            return c
        }
        for y in 0..<s { for x in 0..<s {
            let c = scene(Double(x) + 0.5, Double(y) + 0.5)
            img[(y * s + x) * 3] = c.0; img[(y * s + x) * 3 + 1] = c.1; img[(y * s + x) * 3 + 2] = c.2
        } }
        // Sensor noise on every image.
        for i in 0..<img.count { img[i] += 0.02 * (u() - 0.5) }

        if forcedLabel == 1 {
            let strength = 1 - 0.85 * difficulty
            // The pasted region: an inner-face ellipse with a sharp (1-2 px) blend edge.
            let prx = rx * (0.7 + 0.15 * u()), pry = ry * (0.6 + 0.15 * u())
            let shift = (0.12 * strength * (u() - 0.3), 0.12 * strength * (u() - 0.5), 0.12 * strength * (u() - 0.6))
            let half = max(s / 2, 1)
            // Render the region at half resolution, then upsample by nearest neighbour.
            var low = [Double](repeating: 0, count: half * half * 3)
            for y in 0..<half { for x in 0..<half {
                let c = scene((Double(x) + 0.5) * fs / Double(half), (Double(y) + 0.5) * fs / Double(half))
                low[(y * half + x) * 3] = c.0 + shift.0; low[(y * half + x) * 3 + 1] = c.1 + shift.1; low[(y * half + x) * 3 + 2] = c.2 + shift.2
            } }
            for y in 0..<s { for x in 0..<s {
                let dx = (Double(x) + 0.5 - cx) / prx, dy = (Double(y) + 0.5 - cy) / pry
                let d = (dx * dx + dy * dy).squareRoot()
                let alpha = min(max((1 - d) * Double(s) / 6, 0), 1)  // about 2-3 px wide edge
                guard alpha > 0 else { continue }
                let lx = min(x * half / s, half - 1), ly = min(y * half / s, half - 1)
                let checker = ((x + y) % 2 == 0 ? 1.0 : -1.0) * 0.03 * strength
                for ch in 0..<3 {
                    let pasted = low[(ly * half + lx) * 3 + ch] + checker
                    let i = (y * s + x) * 3 + ch
                    img[i] = (1 - alpha) * img[i] + alpha * pasted
                }
            } }
        }
        return img.map { UInt8(max(0, min(255, ($0 * 255).rounded()))) }
    }

    /// Writes image `index` normalised with mean/std into `dst` (3, size, size).
    public func normalized(_ index: Int, mean: [Double], std: [Double], into dst: UnsafeMutablePointer<Float>) {
        let px = image(index)
        let plane = size * size
        for i in 0..<plane { for c in 0..<3 {
            dst[c * plane + i] = Float((Double(px[i * 3 + c]) / 255 - mean[c]) / std[c])
        } }
    }
}
