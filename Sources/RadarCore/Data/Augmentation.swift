import CImageKernels
import Foundation

/// The random choices of one training augmentation (MODEL.md §8), drawn from Philox keyed by
/// (seed, epoch, sample key), so an image's augmentation never depends on thread or rank count
/// or on the order samples are processed in.
public struct AugmentationPlan: Equatable, Sendable {
    public var flip = false
    /// Degrees (counter-clockwise), scale factor, and shift as fractions of width and height.
    public var affine: (angle: Double, scale: Double, dx: Double, dy: Double)?
    /// Gaussian blur kernel size (3 or 5), or nil.
    public var blurKernel: Int?
    /// JPEG re-compression quality (70...100), or nil.
    public var jpegQuality: Int?
    /// Colour jitter factors and the order (0 brightness, 1 contrast, 2 saturation, 3 hue), or nil.
    public var jitter: (brightness: Double, contrast: Double, saturation: Double, hue: Double, order: [Int])?

    public static func == (a: AugmentationPlan, b: AugmentationPlan) -> Bool {
        a.flip == b.flip && a.affine?.angle == b.affine?.angle && a.affine?.scale == b.affine?.scale
            && a.affine?.dx == b.affine?.dx && a.affine?.dy == b.affine?.dy && a.blurKernel == b.blurKernel
            && a.jpegQuality == b.jpegQuality && a.jitter?.brightness == b.jitter?.brightness
            && a.jitter?.contrast == b.jitter?.contrast && a.jitter?.saturation == b.jitter?.saturation
            && a.jitter?.hue == b.jitter?.hue && a.jitter?.order == b.jitter?.order
    }

    /// MODEL.md §8: flip p 0.5; shift 0.05 / scale 0.1 / rotate 10 degrees p 0.3; one of Gaussian
    /// blur (kernel 3-5) or JPEG quality 70-100 with p 0.3; colour jitter (0.1, 0.1, 0.1, hue
    /// 0.02) p 0.3.
    public static func draw(seed: UInt64, epoch: Int, key: String) -> AugmentationPlan {
        let h = FNV1a.hash(key)
        let r = RandomStream(seed: seed, stream: RandomStream.id("augment", UInt64(epoch), h))
        var i: UInt64 = 0
        func u() -> Double { defer { i += 1 }; return Double(r.uniform(i)) }
        func between(_ lo: Double, _ hi: Double) -> Double { lo + (hi - lo) * u() }
        var p = AugmentationPlan()
        p.flip = u() < 0.5
        if u() < 0.3 { p.affine = (between(-10, 10), between(0.9, 1.1), between(-0.05, 0.05), between(-0.05, 0.05)) }
        if u() < 0.3 {
            if u() < 0.5 { p.blurKernel = u() < 0.5 ? 3 : 5 } else { p.jpegQuality = 70 + Int(u() * 31) }
        }
        if u() < 0.3 {
            var order = [0, 1, 2, 3]
            for k in stride(from: 3, to: 0, by: -1) { order.swapAt(k, Int(u() * Double(k + 1))) }
            p.jitter = (between(0.9, 1.1), between(0.9, 1.1), between(0.9, 1.1), between(-0.02, 0.02), order)
        }
        return p
    }
}

/// Applies augmentation plans to 8-bit RGB images, each operation producing 8-bit output as
/// albumentations/OpenCV do.
public enum Augmenter {
    /// Whether the AVX2 image kernels run on this CPU (CImageKernels).
    static let avx2 = radar_image_kernels_avx2() != 0
    public static var vectorKernels: Bool { avx2 }
    /// Tests set this to compare the vector kernels with the scalar path.
    nonisolated(unsafe) public static var scalarOnly = false

    public static func apply(_ plan: AugmentationPlan, to image: RGBImage) throws -> RGBImage {
        var img = image
        if plan.flip { img = flipHorizontal(img) }
        if let a = plan.affine { img = shiftScaleRotate(img, angle: a.angle, scale: a.scale, dx: a.dx, dy: a.dy) }
        if let k = plan.blurKernel { img = gaussianBlur(img, kernel: k) }
        if let q = plan.jpegQuality { img = try ImageCodec.decodeJPEG(try ImageCodec.encodeJPEG(img, quality: q), item: "jpeg re-compression") }
        if let j = plan.jitter {
            for op in j.order {
                switch op {
                case 0: img = adjustBrightness(img, j.brightness)
                case 1: img = adjustContrast(img, j.contrast)
                case 2: img = adjustSaturation(img, j.saturation)
                default: img = adjustHue(img, j.hue)
                }
            }
        }
        return img
    }

    public static func flipHorizontal(_ img: RGBImage) -> RGBImage {
        let out = [UInt8](unsafeUninitializedCapacity: img.pixels.count) { o, n in
            img.pixels.withUnsafeBufferPointer {
                if avx2 && !scalarOnly {
                    radar_flip_rgb_avx2($0.baseAddress!, Int32(img.width), Int32(img.height), o.baseAddress!)
                } else {
                    radar_flip_rgb($0.baseAddress!, Int32(img.width), Int32(img.height), o.baseAddress!)
                }
            }
            n = img.pixels.count
        }
        return RGBImage(width: img.width, height: img.height, pixels: out)
    }

    /// OpenCV's BORDER_REFLECT_101 index (gfedcb|abcdefgh|gfedcba).
    @inline(__always) static func reflect101(_ i: Int, _ n: Int) -> Int {
        if n == 1 { return 0 }
        var j = i
        while j < 0 || j >= n { j = j < 0 ? -j : 2 * n - 2 - j }
        return j
    }

    /// The 2x3 matrix albumentations' ShiftScaleRotate builds: OpenCV's getRotationMatrix2D about
    /// the pixel-centre image centre, plus the shift in pixels.
    public static func affineMatrix(width: Int, height: Int, angle: Double, scale: Double, dx: Double, dy: Double) -> [Double] {
        let cx = Double(width) / 2 - 0.5, cy = Double(height) / 2 - 0.5
        let t = angle * Double.pi / 180
        let a = scale * cos(t), b = scale * sin(t)
        return [a, b, (1 - a) * cx - b * cy + dx * Double(width), -b, a, b * cx + (1 - a) * cy + dy * Double(height)]
    }

    public static func shiftScaleRotate(_ img: RGBImage, angle: Double, scale: Double, dx: Double, dy: Double) -> RGBImage {
        warpAffine(img, matrix: affineMatrix(width: img.width, height: img.height, angle: angle, scale: scale, dx: dx, dy: dy))
    }

    /// dst(x, y) = src(M^-1 (x, y)), bilinear, BORDER_REFLECT_101 (cv2.warpAffine semantics, as
    /// OpenCV >= 4.11 computes it: the inverse map in double, each row's offset rounded to Float,
    /// source coordinates by a Float multiply-add, a horizontal then a vertical lerp in Float,
    /// rounded to nearest-even). Reflect-101 only where a tap falls outside the image. The floor is
    /// a truncating conversion corrected for negatives (no libm call per pixel).
    public static func warpAffine(_ img: RGBImage, matrix m: [Double]) -> RGBImage {
        var det = m[0] * m[4] - m[1] * m[3]
        det = det != 0 ? 1 / det : 0
        let i0 = m[4] * det, i1 = -m[1] * det, i3 = -m[3] * det, i4 = m[0] * det
        let i2 = -i0 * m[2] - i1 * m[5], i5 = -i3 * m[2] - i4 * m[5]
        let w = img.width, h = img.height, stride = w * 3
        let a0 = Float(i0), a3 = Float(i3)
        var out = [UInt8](repeating: 0, count: w * h * 3)
        let useAVX2 = Augmenter.avx2 && !Augmenter.scalarOnly
        img.pixels.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBufferPointer { dst in
                let fast = useAVX2 && w >= 8
                for y in 0..<h {
                    let bx = Float(Double(y) * i1 + i2), by = Float(Double(y) * i4 + i5)
                    @inline(__always) func pixel(_ x: Int) {
                        let o = y * stride + x * 3
                        let xf = Float(x)
                        let sx = bx + a0 * xf
                        let sy = by + a3 * xf
                        var ix = Int(sx), iy = Int(sy)
                        if Float(ix) > sx { ix -= 1 }
                        if Float(iy) > sy { iy -= 1 }
                        let ax = sx - Float(ix), ay = sy - Float(iy)
                        let p00: Int, p01: Int, p10: Int, p11: Int
                        if ix >= 0 && ix < w - 1 && iy >= 0 && iy < h - 1 {
                            p00 = iy * stride + ix * 3; p01 = p00 + 3; p10 = p00 + stride; p11 = p10 + 3
                        } else {
                            let xa = reflect101(ix, w) * 3, xb = reflect101(ix + 1, w) * 3
                            let ya = reflect101(iy, h) * stride, yb = reflect101(iy + 1, h) * stride
                            p00 = ya + xa; p01 = ya + xb; p10 = yb + xa; p11 = yb + xb
                        }
                        for c in 0..<3 {
                            let q00 = Float(src[p00 + c]), q01 = Float(src[p01 + c])
                            let q10 = Float(src[p10 + c]), q11 = Float(src[p11 + c])
                            let v0 = q00 + ax * (q01 - q00), v1 = q10 + ax * (q11 - q10)
                            let v = v0 + ay * (v1 - v0)
                            // + 1.5 * 2^23 and back: nearest-even rounding without a libm call.
                            dst[o + c] = UInt8((min(255, max(0, v)) + 12_582_912) - 12_582_912)
                        }
                    }
                    var x = 0
                    while x < w {
                        if fast {
                            // Groups of 8 pixels whose taps are all inside, vectorised; the
                            // 8 pixels where it stops take the scalar path (reflect-101 edges).
                            x = Int(radar_warp_affine_row_avx2(src.baseAddress!, Int32(w), Int32(h), dst.baseAddress! + y * stride,
                                                               Int32(x), Int32(w), bx, by, a0, a3))
                        }
                        let end = fast ? min(x + 8, w) : w
                        while x < end { pixel(x); x += 1 }
                    }
                }
            }
        }
        return RGBImage(width: w, height: h, pixels: out)
    }

    /// cv2.GaussianBlur with sigma 0: OpenCV's fixed kernels for small sizes ([1 2 1]/4, [1 4 6 4 1]/16),
    /// separable, BORDER_REFLECT_101, rounded once at the end. The kernels are dyadic, so integer
    /// sums are exact: the horizontal pass keeps 16-bit sums, the vertical one rounds
    /// (sum + half) >> shift, which is what OpenCV's fixed-point path computes.
    public static func gaussianBlur(_ img: RGBImage, kernel k: Int) -> RGBImage {
        if avx2 && !scalarOnly {
            var tmp = [UInt16](repeating: 0, count: img.pixels.count)
            let out = [UInt8](unsafeUninitializedCapacity: img.pixels.count) { o, n in
                img.pixels.withUnsafeBufferPointer { src in
                    tmp.withUnsafeMutableBufferPointer { t in
                        radar_gaussian_blur_avx2(src.baseAddress!, Int32(img.width), Int32(img.height), o.baseAddress!, t.baseAddress!, Int32(k))
                    }
                }
                n = img.pixels.count
            }
            return RGBImage(width: img.width, height: img.height, pixels: out)
        }
        let weights: [UInt16] = k == 3 ? [1, 2, 1] : [1, 4, 6, 4, 1]
        let shift: UInt32 = k == 3 ? 4 : 8
        let taps = weights.count, r = taps / 2, w = img.width, h = img.height, stride = w * 3
        var tmp = [UInt16](repeating: 0, count: w * h * 3)
        let out = [UInt8](unsafeUninitializedCapacity: w * h * 3) { o, n in
            weights.withUnsafeBufferPointer { wt in
                img.pixels.withUnsafeBufferPointer { src in
                    tmp.withUnsafeMutableBufferPointer { t in
                        // Horizontal pass: a contiguous loop over the interior (taps 3 bytes apart in
                        // interleaved RGB), reflect-101 only at the edges.
                        for y in 0..<h {
                            let row = src.baseAddress! + y * stride, dst = t.baseAddress! + y * stride
                            if w > 2 * r {
                                let lo = r * 3, hi = (w - r) * 3
                                if taps == 3 {
                                    for i in lo..<hi { dst[i] = UInt16(row[i - 3]) + 2 * UInt16(row[i]) + UInt16(row[i + 3]) }
                                } else {
                                    for i in lo..<hi {
                                        let a = UInt16(row[i - 6]) + UInt16(row[i + 6]), b = UInt16(row[i - 3]) + UInt16(row[i + 3])
                                        dst[i] = a + 4 * b + 6 * UInt16(row[i])
                                    }
                                }
                            }
                            for x in 0..<w where x < r || x >= w - r || w <= 2 * r {
                                for c in 0..<3 {
                                    var acc: UInt16 = 0
                                    for j in 0..<taps { acc += wt[j] * UInt16(row[reflect101(x + j - r, w) * 3 + c]) }
                                    dst[x * 3 + c] = acc
                                }
                            }
                        }
                        // Vertical pass, a whole row at a time.
                        let half = UInt32(1) << (shift - 1)
                        for y in 0..<h {
                            let dst = o.baseAddress! + y * stride
                            func at(_ j: Int) -> UnsafeMutablePointer<UInt16> {
                                t.baseAddress! + (y >= r && y < h - r ? y + j - r : reflect101(y + j - r, h)) * stride
                            }
                            if taps == 3 {
                                let r0 = at(0), r1 = at(1), r2 = at(2)
                                for i in 0..<stride {
                                    let v = UInt32(r0[i]) + 2 * UInt32(r1[i]) + UInt32(r2[i])
                                    dst[i] = UInt8(truncatingIfNeeded: (v + half) >> shift)
                                }
                            } else {
                                let r0 = at(0), r1 = at(1), r2 = at(2), r3 = at(3), r4 = at(4)
                                for i in 0..<stride {
                                    let v = UInt32(r0[i]) + UInt32(r4[i]) + 4 * (UInt32(r1[i]) + UInt32(r3[i])) + 6 * UInt32(r2[i])
                                    dst[i] = UInt8(truncatingIfNeeded: (v + half) >> shift)
                                }
                            }
                        }
                    }
                }
            }
            n = w * h * 3
        }
        return RGBImage(width: w, height: h, pixels: out)
    }

    // Colour jitter, torchvision's definitions on 8-bit images (blend with black, with the mean
    // grey level, with the grey image; hue rotated in HSV), rounded to 8 bits after each.
    @inline(__always) static func byte(_ v: Double) -> UInt8 { UInt8(min(255, max(0, v)) + 0.5) }

    static func grey(_ r: Double, _ g: Double, _ b: Double) -> Double { 0.299 * r + 0.587 * g + 0.114 * b }

    public static func adjustBrightness(_ img: RGBImage, _ f: Double) -> RGBImage {
        // A lookup table: the result depends on the byte alone.
        let lut = (0..<256).map { byte(Double($0) * f) }
        var out = img.pixels
        out.withUnsafeMutableBufferPointer { o in lut.withUnsafeBufferPointer { l in for i in 0..<o.count { o[i] = l[Int(o[i])] } } }
        return RGBImage(width: img.width, height: img.height, pixels: out)
    }

    public static func adjustContrast(_ img: RGBImage, _ f: Double) -> RGBImage {
        var total = 0.0
        img.pixels.withUnsafeBufferPointer { p in
            for i in 0..<(img.width * img.height) { total += grey(Double(p[3 * i]), Double(p[3 * i + 1]), Double(p[3 * i + 2])) }
        }
        let mean = total / Double(img.width * img.height)
        let lut = (0..<256).map { byte(Double($0) * f + mean * (1 - f)) }
        var out = img.pixels
        out.withUnsafeMutableBufferPointer { o in lut.withUnsafeBufferPointer { l in for i in 0..<o.count { o[i] = l[Int(o[i])] } } }
        return RGBImage(width: img.width, height: img.height, pixels: out)
    }

    public static func adjustSaturation(_ img: RGBImage, _ f: Double) -> RGBImage {
        // Blend with the pixel's grey level: out = v * f + grey * (1 - f), with the grey weights
        // folded into (1 - f) once, in Double as before (a tie may not move).
        let g0 = 0.299 * (1 - f), g1 = 0.587 * (1 - f), g2 = 0.114 * (1 - f)
        let out = [UInt8](unsafeUninitializedCapacity: img.pixels.count) { o, n in
            img.pixels.withUnsafeBufferPointer { p in
                let pixels = img.width * img.height
                // Groups of 8 pixels on AVX2 (the same Double operations), the rest here.
                let start = avx2 && !scalarOnly ? Int(radar_adjust_saturation_avx2(p.baseAddress!, o.baseAddress!, Int32(pixels), f, g0, g1, g2)) : 0
                for i in start..<pixels {
                    let r = Double(p[3 * i]), g = Double(p[3 * i + 1]), b = Double(p[3 * i + 2])
                    let y = r * g0 + g * g1 + b * g2
                    o[3 * i] = byte(r * f + y)
                    o[3 * i + 1] = byte(g * f + y)
                    o[3 * i + 2] = byte(b * f + y)
                }
            }
            n = img.pixels.count
        }
        return RGBImage(width: img.width, height: img.height, pixels: out)
    }

    /// Hue shifted by `shift` of a full turn (torchvision's adjust_hue), in Float.
    public static func adjustHue(_ img: RGBImage, _ shift: Double) -> RGBImage {
        var out = img.pixels
        let sh = Float(shift)
        let vector = avx2 && !scalarOnly
        out.withUnsafeMutableBufferPointer { o in
            img.pixels.withUnsafeBufferPointer { p in
                let pixels = img.width * img.height
                // Groups of 8 pixels on AVX2 (the same Float operations), the rest here.
                let start = vector ? Int(radar_adjust_hue_avx2(p.baseAddress!, o.baseAddress!, Int32(pixels), sh)) : 0
                for i in start..<pixels {
                    let r = Float(p[3 * i]), g = Float(p[3 * i + 1]), b = Float(p[3 * i + 2])
                    let mx = max(r, g, b), mn = min(r, g, b), d = mx - mn
                    if d == 0 { continue }  // grey: hue has no effect
                    var h: Float = mx == r ? (g - b) / d : (mx == g ? 2 + (b - r) / d : 4 + (r - g) / d)
                    h = h / 6 + sh
                    h -= h.rounded(.down)
                    // HSV -> RGB with v = mx, s = d / mx (values stay in 0...255).
                    let h6 = h * 6, sector = Int(h6) % 6, f = h6 - Float(Int(h6))
                    let pv = mn, q = mx - d * f, t = mn + d * f
                    let (r2, g2, b2): (Float, Float, Float)
                    switch sector {
                    case 0: (r2, g2, b2) = (mx, t, pv)
                    case 1: (r2, g2, b2) = (q, mx, pv)
                    case 2: (r2, g2, b2) = (pv, mx, t)
                    case 3: (r2, g2, b2) = (pv, q, mx)
                    case 4: (r2, g2, b2) = (t, pv, mx)
                    default: (r2, g2, b2) = (mx, pv, q)
                    }
                    o[3 * i] = UInt8(min(255, max(0, r2)) + 0.5)
                    o[3 * i + 1] = UInt8(min(255, max(0, g2)) + 0.5)
                    o[3 * i + 2] = UInt8(min(255, max(0, b2)) + 0.5)
                }
            }
        }
        return RGBImage(width: img.width, height: img.height, pixels: out)
    }

    /// (pixel / 255 - mean) / std into a CHW float buffer.
    public static func normalize(_ img: RGBImage, mean: [Double], std: [Double], into dst: UnsafeMutablePointer<Float>) {
        let plane = img.width * img.height
        let scale = (0..<3).map { Float(1 / (255 * std[$0])) }, shift = (0..<3).map { Float(mean[$0] / std[$0]) }
        img.pixels.withUnsafeBufferPointer { p in
            let start = avx2 && !scalarOnly ? Int(radar_normalize_rgb_avx2(p.baseAddress!, Int32(plane), scale, shift, dst)) : 0
            for i in start..<plane { for c in 0..<3 { dst[c * plane + i] = Float(p[3 * i + c]) * scale[c] - shift[c] } }
        }
    }
}
