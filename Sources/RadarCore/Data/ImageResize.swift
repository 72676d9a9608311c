/// Resizing RGB images to the model's input size: bilinear (half-pixel centres, as
/// align_corners=false and OpenCV's INTER_LINEAR) when enlarging, area averaging (exact pixel
/// coverage, as OpenCV's INTER_AREA) when shrinking, per axis.
public enum ImageResize {
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
