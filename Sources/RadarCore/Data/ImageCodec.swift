import CImageKernels
import CPNG
import CTurboJPEG
import CWebP
import Foundation

/// An 8-bit RGB image, pixels interleaved row by row (the decoder's and augmenter's currency).
public struct RGBImage: Equatable, Sendable {
    public var width: Int
    public var height: Int
    public var pixels: [UInt8]

    public init(width: Int, height: Int, pixels: [UInt8]) {
        precondition(pixels.count == width * height * 3, "RGB image \(width)x\(height) needs \(width * height * 3) bytes")
        self.width = width
        self.height = height
        self.pixels = pixels
    }
}

/// A decode or encode failure, naming the item.
public struct ImageCodecError: Error, CustomStringConvertible {
    public let item: String
    public let reason: String
    public var description: String { "\(item): \(reason)" }
}

/// PNG through libpng's simplified API, JPEG through TurboJPEG. Grey and RGBA become RGB (alpha
/// dropped, as PIL's convert("RGB") does).
public enum ImageCodec {
    public enum Format: String, Sendable { case png, jpeg, webp }

    /// The format from the file's magic bytes, or nil.
    public static func sniff(_ data: Data) -> Format? {
        if data.count >= 8 && data.prefix(8).elementsEqual([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]) { return .png }
        if data.count >= 3 && data.prefix(3).elementsEqual([0xFF, 0xD8, 0xFF]) { return .jpeg }
        if data.count >= 12 && data.prefix(4).elementsEqual(Array("RIFF".utf8)) && data.dropFirst(8).prefix(4).elementsEqual(Array("WEBP".utf8)) { return .webp }
        return nil
    }

    public static func decode(_ data: Data, item: String) throws -> RGBImage {
        switch sniff(data) {
        case .png: return try decodePNG(data, item: item)
        case .jpeg: return try decodeJPEG(data, item: item)
        case .webp: return try decodeWebP(data, item: item)
        case nil:
            if let kind = otherImageKind(data) {
                throw ImageCodecError(item: item, reason: "a \(kind) image, not a PNG, JPEG or WebP (the formats read)")
            }
            throw ImageCodecError(item: item, reason: data.isEmpty ? "empty (0 bytes), not an image" : "not a PNG, JPEG or WebP image")
        }
    }

    /// File extensions of image formats we do not read, and the format's name.
    public static let otherImageExtensions = ["bmp": "BMP", "gif": "GIF", "tif": "TIFF", "tiff": "TIFF", "heic": "HEIF",
                                              "heif": "HEIF", "avif": "AVIF", "jxl": "JPEG XL", "jp2": "JPEG 2000"]

    /// Image formats we do not read, named from their magic bytes so the error says what the file is.
    static func otherImageKind(_ data: Data) -> String? {
        let b = [UInt8](data.prefix(12))
        func starts(_ p: [UInt8], at i: Int = 0) -> Bool { b.count >= i + p.count && Array(b[i..<(i + p.count)]) == p }
        if starts(Array("GIF8".utf8)) { return "GIF" }
        if starts(Array("BM".utf8)) { return "BMP" }
        if starts([0x49, 0x49, 0x2A, 0]) || starts([0x4D, 0x4D, 0, 0x2A]) { return "TIFF" }
        if starts(Array("ftyp".utf8), at: 4) {
            for (brand, kind) in [("avif", "AVIF"), ("avis", "AVIF"), ("heic", "HEIF"), ("heix", "HEIF"), ("mif1", "HEIF"), ("msf1", "HEIF")]
            where starts(Array(brand.utf8), at: 8) { return kind }
        }
        if starts([0xFF, 0x0A]) || starts([0, 0, 0, 0x0C, 0x4A, 0x58, 0x4C, 0x20]) { return "JPEG XL" }
        return nil
    }

    /// The largest image decoded (width x height, checked from the header before any pixel is
    /// allocated): 4096 x 4096. Face crops are far smaller; a decompression bomb is refused.
    public static let maxPixels = 4096 * 4096

    public static func decodePNG(_ data: Data, item: String) throws -> RGBImage {
        if let fast = PNGFastPath.decode(data, maxPixels: maxPixels) { return fast }
        return try decodePNGWithLibpng(data, item: item)
    }

    /// libpng (its classic API, driven from C: `radar_png_decode_rgb`): every PNG the fast path
    /// leaves alone, and every error message. Nothing is colour-managed: a gAMA, cHRM, sRGB or
    /// iCCP chunk leaves the pixels as stored, and 16-bit samples keep their high byte, as
    /// Pillow's `convert("RGB")` and OpenCV's `imread` read them (libpng's simplified API, used
    /// before, converted gamma and took 16-bit files for linear light).
    public static func decodePNGWithLibpng(_ data: Data, item: String) throws -> RGBImage {
        var pixels: UnsafeMutablePointer<UInt8>? = nil
        var w: Int32 = 0, h: Int32 = 0
        var message = [CChar](repeating: 0, count: 256)
        let rc = data.withUnsafeBytes { raw in
            radar_png_decode_rgb(raw.bindMemory(to: UInt8.self).baseAddress, raw.count, maxPixels, &pixels, &w, &h, &message, message.count)
        }
        if rc == -2 {
            throw ImageCodecError(item: item, reason: "PNG of \(w)x\(h) pixels exceeds the limit of \(maxPixels) (4096x4096)")
        }
        guard rc == 0, let pixels else {
            let text = String(decoding: message.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            throw ImageCodecError(item: item, reason: "corrupt PNG: \(text)")
        }
        defer { radar_png_free(pixels) }
        let count = Int(w) * Int(h) * 3
        return RGBImage(width: Int(w), height: Int(h), pixels: Array(UnsafeBufferPointer(start: pixels, count: count)))
    }

    public static func decodeJPEG(_ data: Data, item: String) throws -> RGBImage {
        guard let handle = tjInitDecompress() else { throw ImageCodecError(item: item, reason: "TurboJPEG init failed") }
        defer { tjDestroy(handle) }
        var w: Int32 = 0, h: Int32 = 0, sub: Int32 = 0, space: Int32 = 0
        let size = UInt(data.count)
        let header = data.withUnsafeBytes { raw in
            tjDecompressHeader3(handle, raw.bindMemory(to: UInt8.self).baseAddress, size, &w, &h, &sub, &space)
        }
        guard header == 0, w > 0, h > 0 else {
            throw ImageCodecError(item: item, reason: "corrupt JPEG: \(String(cString: tjGetErrorStr2(handle)))")
        }
        guard Int(w) * Int(h) <= maxPixels else {
            throw ImageCodecError(item: item, reason: "JPEG of \(w)x\(h) pixels exceeds the limit of \(maxPixels) (4096x4096)")
        }
        if space == Int32(TJCS_CMYK.rawValue) || space == Int32(TJCS_YCCK.rawValue) {
            return try decodeCMYKJPEG(handle, data, width: w, height: h, item: item)
        }
        var rgb = [UInt8](repeating: 0, count: Int(w) * Int(h) * 3)
        let rc = data.withUnsafeBytes { raw in
            rgb.withUnsafeMutableBufferPointer { out in
                tjDecompress2(handle, raw.bindMemory(to: UInt8.self).baseAddress, size, out.baseAddress, w, 0, h,
                              Int32(TJPF_RGB.rawValue), 0)
            }
        }
        // TurboJPEG returns -1 for warnings too (e.g. a truncated but partly decodable stream):
        // anything short of a clean decode is an error here.
        guard rc == 0 else { throw ImageCodecError(item: item, reason: "corrupt JPEG: \(String(cString: tjGetErrorStr2(handle)))") }
        return RGBImage(width: Int(w), height: Int(h), pixels: rgb)
    }

    /// A still WebP image (lossy or lossless) through libwebp, as Pillow reads it: RGB, alpha
    /// dropped (not composited). An animation is refused: which frame would be meant is unclear.
    public static func decodeWebP(_ data: Data, item: String) throws -> RGBImage {
        var features = WebPBitstreamFeatures()
        let ok = data.withUnsafeBytes { raw in radar_webp_features(raw.bindMemory(to: UInt8.self).baseAddress, raw.count, &features) }
        guard ok != 0 else { throw ImageCodecError(item: item, reason: "corrupt WebP: its header could not be read") }
        let w = Int(features.width), h = Int(features.height)
        guard features.has_animation == 0 else {
            throw ImageCodecError(item: item, reason: "an animated WebP (\(w)x\(h)): extract one frame as an image first")
        }
        guard w > 0, h > 0, w * h <= maxPixels else {
            throw ImageCodecError(item: item, reason: "WebP of \(w)x\(h) pixels exceeds the limit of \(maxPixels) (4096x4096)")
        }
        var rgb = [UInt8](repeating: 0, count: w * h * 3)
        let done = data.withUnsafeBytes { raw in
            rgb.withUnsafeMutableBufferPointer { out in
                WebPDecodeRGBInto(raw.bindMemory(to: UInt8.self).baseAddress, raw.count, out.baseAddress, out.count, Int32(w * 3))
            }
        }
        guard done != nil else { throw ImageCodecError(item: item, reason: "corrupt WebP: libwebp could not decode it") }
        return RGBImage(width: w, height: h, pixels: rgb)
    }

    /// A four-channel (CMYK or YCCK) JPEG as Pillow reads it: the samples libjpeg gives taken as
    /// Adobe's inverted CMYK (Pillow's "CMYK;I", whatever the markers say), then Pillow's
    /// CMYK to RGB, (255 - C)(255 - K) / 255 rounded, which on the stored samples is
    /// c k / 255 rounded. OpenCV reads them alike, up to its rounding.
    static func decodeCMYKJPEG(_ handle: tjhandle, _ data: Data, width w: Int32, height h: Int32, item: String) throws -> RGBImage {
        let n = Int(w) * Int(h)
        var cmyk = [UInt8](repeating: 0, count: n * 4)
        let rc = data.withUnsafeBytes { raw in
            cmyk.withUnsafeMutableBufferPointer { out in
                tjDecompress2(handle, raw.bindMemory(to: UInt8.self).baseAddress, UInt(data.count), out.baseAddress, w, 0, h,
                              Int32(TJPF_CMYK.rawValue), 0)
            }
        }
        guard rc == 0 else { throw ImageCodecError(item: item, reason: "corrupt JPEG: \(String(cString: tjGetErrorStr2(handle)))") }
        let rgb = [UInt8](unsafeUninitializedCapacity: n * 3) { o, count in
            cmyk.withUnsafeBufferPointer { src in
                for i in 0..<n {
                    let k = UInt32(src[4 * i + 3])
                    for c in 0..<3 {
                        let t = UInt32(src[4 * i + c]) * k + 128  // x / 255 rounded: ((t >> 8) + t) >> 8
                        o[3 * i + c] = UInt8(((t >> 8) + t) >> 8)
                    }
                }
            }
            count = n * 3
        }
        return RGBImage(width: Int(w), height: Int(h), pixels: rgb)
    }

    public static func encodePNG(_ img: RGBImage) throws -> Data {
        try encodePNG(pixels: img.pixels, width: img.width, height: img.height, channels: 3)
    }

    /// PNG from interleaved 8-bit pixels with 1 (grey), 3 (RGB) or 4 (RGBA) channels.
    public static func encodePNG(pixels: [UInt8], width: Int, height: Int, channels: Int) throws -> Data {
        precondition([1, 3, 4].contains(channels) && pixels.count == width * height * channels, "bad PNG pixel buffer")
        var image = png_image()
        image.version = radar_png_image_version()
        image.width = UInt32(width)
        image.height = UInt32(height)
        image.format = channels == 1 ? 0 : UInt32(radar_png_format_rgb()) | (channels == 4 ? UInt32(PNG_FORMAT_FLAG_ALPHA) : 0)
        let stride = Int32(width * channels)
        // One pass into a buffer of the largest size it can take: asking the size first
        // (memory nil) compressed every image twice, 2/3 of `radar synth`'s time at 224 px.
        var size = radar_png_size_max(&image)
        var out = Data(count: size)
        let ok = out.withUnsafeMutableBytes { dst in
            pixels.withUnsafeBytes { png_image_write_to_memory(&image, dst.baseAddress, &size, 0, $0.baseAddress, stride, nil) }
        }
        guard ok != 0 else { throw ImageCodecError(item: "png encoder", reason: pngMessage(&image)) }
        return out.prefix(size)
    }

    private static func pngMessage(_ image: inout png_image) -> String {
        withUnsafeBytes(of: &image.message) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
    }

    /// Baseline JPEG with 4:2:0 chroma subsampling and the accurate integer DCT (libjpeg's and
    /// OpenCV's defaults; TurboJPEG would otherwise pick the fast DCT when compressing).
    public static func encodeJPEG(_ img: RGBImage, quality: Int) throws -> Data {
        guard let handle = tjInitCompress() else { throw ImageCodecError(item: "jpeg encoder", reason: "TurboJPEG init failed") }
        defer { tjDestroy(handle) }
        var buffer: UnsafeMutablePointer<UInt8>? = nil
        var size: UInt = 0
        let rc = img.pixels.withUnsafeBufferPointer { src in
            tjCompress2(handle, src.baseAddress, Int32(img.width), 0, Int32(img.height), Int32(TJPF_RGB.rawValue), &buffer, &size,
                        Int32(TJSAMP_420.rawValue), Int32(quality), Int32(TJFLAG_ACCURATEDCT))
        }
        defer { if let buffer { tjFree(buffer) } }
        guard rc == 0, let buffer else { throw ImageCodecError(item: "jpeg encoder", reason: String(cString: tjGetErrorStr2(handle))) }
        return Data(bytes: buffer, count: Int(size))
    }
}
