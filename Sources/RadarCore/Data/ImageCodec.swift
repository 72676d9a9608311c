import CPNG
import CTurboJPEG
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
    public enum Format: String, Sendable { case png, jpeg }

    /// The format from the file's magic bytes, or nil.
    public static func sniff(_ data: Data) -> Format? {
        if data.count >= 8 && data.prefix(8).elementsEqual([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]) { return .png }
        if data.count >= 3 && data.prefix(3).elementsEqual([0xFF, 0xD8, 0xFF]) { return .jpeg }
        return nil
    }

    public static func decode(_ data: Data, item: String) throws -> RGBImage {
        switch sniff(data) {
        case .png: return try decodePNG(data, item: item)
        case .jpeg: return try decodeJPEG(data, item: item)
        case nil: throw ImageCodecError(item: item, reason: "not a PNG or JPEG image")
        }
    }

    /// The largest image decoded (width x height, checked from the header before any pixel is
    /// allocated): 4096 x 4096. Face crops are far smaller; a decompression bomb is refused.
    public static let maxPixels = 4096 * 4096

    public static func decodePNG(_ data: Data, item: String) throws -> RGBImage {
        if let fast = PNGFastPath.decode(data, maxPixels: maxPixels) { return fast }
        return try decodePNGWithLibpng(data, item: item)
    }

    /// libpng's simplified API: every PNG the fast path leaves alone, and every error message.
    public static func decodePNGWithLibpng(_ data: Data, item: String) throws -> RGBImage {
        var image = png_image()
        image.version = radar_png_image_version()
        let ok = data.withUnsafeBytes { raw in png_image_begin_read_from_memory(&image, raw.baseAddress, raw.count) }
        guard ok != 0 else { throw ImageCodecError(item: item, reason: "corrupt PNG: \(pngMessage(&image))") }
        defer { png_image_free(&image) }
        // Read as RGBA so alpha is dropped afterwards rather than composited.
        image.format = UInt32(radar_png_format_rgb()) | UInt32(PNG_FORMAT_FLAG_ALPHA)
        let w = Int(image.width), h = Int(image.height)
        guard w > 0, h > 0, w * h <= maxPixels else {
            throw ImageCodecError(item: item, reason: "PNG of \(w)x\(h) pixels exceeds the limit of \(maxPixels) (4096x4096)")
        }
        var rgba = [UInt8](repeating: 0, count: w * h * 4)
        let done = data.withUnsafeBytes { _ in
            rgba.withUnsafeMutableBytes { png_image_finish_read(&image, nil, $0.baseAddress, Int32(w * 4), nil) }
        }
        guard done != 0 else { throw ImageCodecError(item: item, reason: "corrupt PNG: \(pngMessage(&image))") }
        var rgb = [UInt8](repeating: 0, count: w * h * 3)
        for i in 0..<(w * h) {
            rgb[3 * i] = rgba[4 * i]; rgb[3 * i + 1] = rgba[4 * i + 1]; rgb[3 * i + 2] = rgba[4 * i + 2]
        }
        return RGBImage(width: w, height: h, pixels: rgb)
    }

    private static func pngMessage(_ image: inout png_image) -> String {
        withUnsafeBytes(of: &image.message) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
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
