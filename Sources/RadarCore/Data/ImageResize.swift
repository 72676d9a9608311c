/// Resizing RGB images to the model's input size, two ways:
/// - `.openCVLinear`: the reference's `A.Resize` (cv2.resize with INTER_LINEAR) to the bit, used by
///   evaluation, validation and prediction;
/// - `.bilinearOrArea` (training): bilinear (half-pixel centres) when enlarging, area averaging
///   (exact pixel coverage, as OpenCV's INTER_AREA) when shrinking, per axis.
public enum ImageResize {
    public enum Mode: Sendable { case openCVLinear, bilinearOrArea }

    public static func resize(_ img: RGBImage, width: Int, height: Int, mode: Mode) -> RGBImage {
        switch mode {
        case .openCVLinear: openCVLinear(img, width: width, height: height)
        case .bilinearOrArea: resize(img, width: width, height: height)
        }
    }

    /// One axis of OpenCV's INTER_LINEAR for 8-bit images: for each output index the source index
    /// and the two 11-bit fixed-point weights (OpenCV's INTER_RESIZE_COEF_SCALE 2048), computed as
    /// cv::resize does: the centre in double, rounded to float. Along x (`clamp`) an index outside
    /// the image becomes the edge pixel with weight 1; along y cv::resize keeps the weights and
    /// clamps only the rows it reads.
    static func linearTaps(input: Int, output: Int, clamp: Bool) -> [(index: Int, w0: Int32, w1: Int32)] {
        let scale = 1.0 / (Double(output) / Double(input))
        return (0..<output).map { d in
            var f = Float((Double(d) + 0.5) * scale - 0.5)
            var i = Int(f.rounded(.down))
            f -= Float(i)
            if clamp && i < 0 { (f, i) = (0, 0) }
            if clamp && i >= input - 1 { (f, i) = (0, input - 1) }
            // saturate_cast<short>: round half to even, like cvRound.
            let w0 = Int32(((1 - f) * 2048).rounded(.toNearestOrEven)), w1 = Int32((f * 2048).rounded(.toNearestOrEven))
            return (i, w0, w1)
        }
    }

    /// cv2.resize(img, (width, height), interpolation=INTER_LINEAR) on an 8-bit RGB image, bit for
    /// bit (OpenCV 5.0; checked against it in DataPipelineTests): an exact halving becomes OpenCV's
    /// fast 2x2 area average, as cv::resize does; otherwise 11-bit weights along x (exact
    /// integers), then along y OpenCV's vector arithmetic for every value of a row: sums shifted
    /// right by 4, 16-bit high products (floored), a rounding shift by 2.
    public static func openCVLinear(_ img: RGBImage, width: Int, height: Int) -> RGBImage {
        if img.width == width && img.height == height { return img }
        let (sw, sh) = (img.width, img.height)
        var out = [UInt8](repeating: 0, count: width * height * 3)
        if sw == 2 * width && sh == 2 * height {
            img.pixels.withUnsafeBufferPointer { s in
                for y in 0..<height { for x in 0..<width { for c in 0..<3 {
                    let a = Int(s[((2 * y) * sw + 2 * x) * 3 + c]) + Int(s[((2 * y) * sw + 2 * x + 1) * 3 + c])
                    let b = Int(s[((2 * y + 1) * sw + 2 * x) * 3 + c]) + Int(s[((2 * y + 1) * sw + 2 * x + 1) * 3 + c])
                    out[(y * width + x) * 3 + c] = UInt8((a + b + 2) >> 2)
                } } }
            }
            return RGBImage(width: width, height: height, pixels: out)
        }
        let tx = linearTaps(input: sw, output: width, clamp: true), ty = linearTaps(input: sh, output: height, clamp: false)
        let rowLength = width * 3
        // Horizontal pass of every source row: S[sx] * w0 + S[sx + 1] * w1 (the right neighbour
        // only where it exists; its weight is 0 at the clamped edge).
        var rows = [Int32](repeating: 0, count: sh * rowLength)
        img.pixels.withUnsafeBufferPointer { s in
            for y in 0..<sh {
                let src = y * sw * 3
                for (x, t) in tx.enumerated() { for c in 0..<3 {
                    var v = Int32(s[src + t.index * 3 + c]) * t.w0
                    if t.index + 1 < sw { v += Int32(s[src + (t.index + 1) * 3 + c]) * t.w1 }
                    rows[y * rowLength + x * 3 + c] = v
                } }
            }
        }
        for (y, t) in ty.enumerated() {
            let r0 = min(max(t.index, 0), sh - 1) * rowLength, r1 = min(max(t.index + 1, 0), sh - 1) * rowLength
            let (b0, b1) = (t.w0, t.w1)
            for x in 0..<rowLength {
                let hi0 = ((rows[r0 + x] >> 4) * b0) >> 16, hi1 = ((rows[r1 + x] >> 4) * b1) >> 16
                out[y * rowLength + x] = UInt8(max(0, min(255, (hi0 + hi1 + 2) >> 2)))
            }
        }
        return RGBImage(width: width, height: height, pixels: out)
    }

    /// For each output index, the (input index, weight) taps along one axis.
    static func taps(input: Int, output: Int) -> [[(Int, Float)]] {
        if output >= input {
            let scale = Double(input) / Double(output)
            return (0..<output).map { o in
                let f = max((Double(o) + 0.5) * scale - 0.5, 0)
                let i0 = min(Int(f), input - 1), i1 = min(i0 + 1, input - 1)
                let w1 = Float(f - Double(i0))
                return i0 == i1 ? [(i0, Float(1))] : [(i0, 1 - w1), (i1, w1)]
            }
        }
        let scale = Double(input) / Double(output)
        return (0..<output).map { o in
            let lo = Double(o) * scale, hi = lo + scale
            var taps: [(Int, Float)] = []
            var i = Int(lo)
            while Double(i) < hi && i < input {
                let cover = min(hi, Double(i + 1)) - max(lo, Double(i))
                if cover > 1e-12 { taps.append((i, Float(cover / scale))) }
                i += 1
            }
            return taps
        }
    }

    public static func resize(_ img: RGBImage, width: Int, height: Int) -> RGBImage {
        if img.width == width && img.height == height { return img }
        let tx = taps(input: img.width, output: width), ty = taps(input: img.height, output: height)
        var tmp = [Float](repeating: 0, count: img.height * width * 3)
        img.pixels.withUnsafeBufferPointer { src in
            for y in 0..<img.height { for x in 0..<width { for c in 0..<3 {
                var s: Float = 0
                for (i, w) in tx[x] { s += w * Float(src[(y * img.width + i) * 3 + c]) }
                tmp[(y * width + x) * 3 + c] = s
            } } }
        }
        var out = [UInt8](repeating: 0, count: width * height * 3)
        for y in 0..<height { for x in 0..<width { for c in 0..<3 {
            var s: Float = 0
            for (i, w) in ty[y] { s += w * tmp[(i * width + x) * 3 + c] }
            out[(y * width + x) * 3 + c] = UInt8(max(0, min(255, s.rounded())))
        } } }
        return RGBImage(width: width, height: height, pixels: out)
    }
}
