import Foundation

/// A deterministic degradation of evaluation images (`radar evaluate --perturb`), for robustness
/// measurements: how much AUC a detector keeps when the images it meets are compressed, blurred,
/// noisy or of lower resolution than its training set's. Applied after the evaluation resize and
/// before normalisation, where training applies its JPEG and blur augmentation (the same
/// functions: TurboJPEG, and the Gaussian blur that equals OpenCV's), so `jpeg:70`...`jpeg:100`
/// and `blur:3`/`blur:5` are the strengths the model was trained to tolerate and lower JPEG
/// qualities lie beyond them. Every value depends on the image and, for noise, its sample key
/// only: the same on any thread count, rank count or batch size.
public enum Perturbation: Sendable, Equatable, CustomStringConvertible {
    /// JPEG re-compression at quality 1...100.
    case jpeg(quality: Int)
    /// Gaussian blur with a 3 or 5 pixel kernel (OpenCV's sigma for the size).
    case blur(kernel: Int)
    /// Additive Gaussian noise of this standard deviation in grey levels (0 < sigma <= 255),
    /// rounded and clipped to 0...255; drawn from the sample key's own stream.
    case noise(sigma: Double)
    /// Resolution loss: shrunk to this fraction of the side (0 < f < 1; area-averaged), then
    /// enlarged back (OpenCV INTER_LINEAR).
    case scale(factor: Double)

    public struct ParseError: Error, CustomStringConvertible {
        public let description: String
    }

    /// "jpeg:50", "blur:5", "noise:8", "scale:0.5"; errors name `flag`.
    public init(parsing text: String, flag: String = "--perturb") throws {
        let parts = text.split(separator: ":", maxSplits: 1).map(String.init)
        func fail(_ why: String) -> ParseError { ParseError(description: "\(flag) \(text): \(why)") }
        guard parts.count == 2 else { throw fail("expected KIND:VALUE (jpeg:Q, blur:K, noise:SIGMA or scale:F)") }
        switch parts[0] {
        case "jpeg":
            guard let q = Int(parts[1]), (1...100).contains(q) else { throw fail("JPEG quality must be an integer in 1...100") }
            self = .jpeg(quality: q)
        case "blur":
            guard let k = Int(parts[1]), k == 3 || k == 5 else { throw fail("the blur kernel must be 3 or 5") }
            self = .blur(kernel: k)
        case "noise":
            guard let s = Double(parts[1]), s > 0, s <= 255 else { throw fail("the noise sigma must be a number in (0, 255] (grey levels)") }
            self = .noise(sigma: s)
        case "scale":
            guard let f = Double(parts[1]), f > 0, f < 1 else { throw fail("the scale factor must be a number in (0, 1)") }
            self = .scale(factor: f)
        default:
            throw fail("unknown kind \(parts[0]): expected jpeg, blur, noise or scale")
        }
    }

    public var description: String {
        switch self {
        case let .jpeg(q): "jpeg:\(q)"
        case let .blur(k): "blur:\(k)"
        case let .noise(s): "noise:\(Self.number(s))"
        case let .scale(f): "scale:\(Self.number(f))"
        }
    }

    static func number(_ v: Double) -> String { v == v.rounded() ? String(Int(v)) : String(v) }

    /// The perturbed image (same size); `key` is the sample's key (noise draws from it).
    public func apply(_ img: RGBImage, key: String) throws -> RGBImage {
        switch self {
        case let .jpeg(q):
            return try ImageCodec.decodeJPEG(try ImageCodec.encodeJPEG(img, quality: q), item: "\(key): jpeg:\(q) perturbation")
        case let .blur(k):
            return Augmenter.gaussianBlur(img, kernel: k)
        case let .noise(sigma):
            let r = RandomStream(seed: 0, stream: RandomStream.id("perturb-noise", FNV1a.hash(key)))
            var out = img
            let n = out.pixels.count
            // Value i draws r.normal(i); a pair shares one Philox block.
            func put(_ i: Int, _ z: Float) { out.pixels[i] = UInt8(min(255, max(0, (Double(img.pixels[i]) + sigma * Double(z)).rounded()))) }
            for p in 0..<((n + 1) / 2) {
                let (a, b) = r.normalPair(UInt64(p))
                put(2 * p, a)
                if 2 * p + 1 < n { put(2 * p + 1, b) }
            }
            return out
        case let .scale(f):
            let w = max(1, Int((Double(img.width) * f).rounded())), h = max(1, Int((Double(img.height) * f).rounded()))
            let small = ImageResize.resize(img, width: w, height: h, mode: .bilinearOrArea)
            return ImageResize.resize(small, width: img.width, height: img.height, mode: .openCVLinear)
        }
    }
}
