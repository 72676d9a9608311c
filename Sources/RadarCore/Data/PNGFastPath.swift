import CLibDeflate
import Foundation

/// The common PNG (8-bit grey, grey+alpha, RGB or RGBA, not interlaced, nothing that changes
/// colours) decoded without libpng: chunks walked and CRC-checked here, the IDAT stream inflated by
/// libdeflate in one call into a buffer of the exact size, rows unfiltered in place. WildDeepfake's
/// frames are such PNGs, and decoding dominates the training loader; libpng's zlib inflate alone
/// took longer than this whole path. Anything else (palette, 16-bit, low-bit grey, interlace, an
/// unknown chunk) returns nil and goes to libpng, so the pixels are always the ones
/// `ImageCodec.decodePNGWithLibpng` gives (checked in DataPipelineTests).
public enum PNGFastPath {
    /// Chunks that leave pixel values alone as we read them (text, time, physical size,
    /// background, histogram, suggested palette, EXIF, ...; the colour-space chunks too, since
    /// neither path applies them, as Pillow and OpenCV do not; tRNS only marks a transparent
    /// colour, and alpha is dropped). A chunk type not listed here sends the file to libpng.
    static let harmless: Set<String> = ["tEXt", "zTXt", "iTXt", "tIME", "pHYs", "bKGD", "hIST", "sPLT", "eXIf", "oFFs", "pCAL", "sCAL", "sTER",
                                        "PLTE", "sRGB", "gAMA", "cHRM", "iCCP", "sBIT", "cICP", "mDCV", "cLLI", "tRNS"]

    /// RGB pixels, or nil when the file is not one of the kinds handled here or anything about it
    /// is unusual (a bad CRC, data too short or too long, an unknown filter): libpng then decodes
    /// it, or words the error, exactly as before.
    public static func decode(_ data: Data, maxPixels: Int) -> RGBImage? {
        data.withUnsafeBytes { raw -> RGBImage? in
            guard let base = raw.baseAddress?.assumingMemoryBound(to: UInt8.self) else { return nil }
            return decode(UnsafeBufferPointer(start: base, count: raw.count), maxPixels: maxPixels)
        }
    }

    static func be32(_ p: UnsafePointer<UInt8>) -> UInt32 {
        UInt32(p[0]) << 24 | UInt32(p[1]) << 16 | UInt32(p[2]) << 8 | UInt32(p[3])
    }

    /// The header and the IDAT chunks: (width, height, channels, IDAT (offset, length) list).
    static func scan(_ b: UnsafeBufferPointer<UInt8>, maxPixels: Int) -> (Int, Int, Int, [(Int, Int)])? {
        let signature: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]
        guard b.count >= 8 + 25, b.prefix(8).elementsEqual(signature) else { return nil }
        let p = b.baseAddress!
        var pos = 8
        var width = 0, height = 0, channels = 0
        var idat: [(Int, Int)] = []
        while pos + 12 <= b.count {
            let length = Int(be32(p + pos))
            guard length <= b.count - pos - 12 else { return nil }
            let type = String(decoding: UnsafeBufferPointer(start: p + pos + 4, count: 4), as: UTF8.self)
            guard UInt32(libdeflate_crc32(0, p + pos + 4, 4 + length)) == be32(p + pos + 8 + length) else { return nil }
            let body = p + pos + 8
            switch type {
            case "IHDR":
                guard pos == 8, length == 13 else { return nil }
                width = Int(be32(body)); height = Int(be32(body + 4))
                guard body[8] == 8, body[10] == 0, body[11] == 0, body[12] == 0 else { return nil }  // 8-bit, deflate, filter 0, no interlace
                switch body[9] {
                case 0: channels = 1
                case 2: channels = 3
                case 4: channels = 2
                case 6: channels = 4
                default: return nil
                }
                guard width > 0, height > 0, width <= maxPixels, height <= maxPixels, width * height <= maxPixels else { return nil }
            case "IDAT":
                guard channels > 0 else { return nil }
                idat.append((pos + 8, length))
            case "IEND":
                return channels > 0 && !idat.isEmpty ? (width, height, channels, idat) : nil
            default:
                guard channels > 0, harmless.contains(type) else { return nil }
            }
            pos += 12 + length
        }
        return nil
    }

    static func decode(_ b: UnsafeBufferPointer<UInt8>, maxPixels: Int) -> RGBImage? {
        guard let (width, height, channels, idat) = scan(b, maxPixels: maxPixels),
              var filtered = inflate(b, idat, count: height * (width * channels + 1)) else { return nil }
        return unfilter(&filtered, width: width, height: height, channels: channels)
    }

    /// The IDAT chunks' zlib stream inflated in one call; nil unless it is exactly `count` bytes.
    static func inflate(_ b: UnsafeBufferPointer<UInt8>, _ idat: [(Int, Int)], count: Int) -> [UInt8]? {
        var out = [UInt8](repeating: 0, count: count)
        func run(_ stream: UnsafeRawPointer, _ length: Int) -> Bool {
            out.withUnsafeMutableBytes { o in
                guard let d = libdeflate_alloc_decompressor() else { return false }
                defer { libdeflate_free_decompressor(d) }
                var actual = 0
                return libdeflate_zlib_decompress(d, stream, length, o.baseAddress, count, &actual) == LIBDEFLATE_SUCCESS && actual == count
            }
        }
        let ok: Bool
        if idat.count == 1 {
            ok = run(b.baseAddress! + idat[0].0, idat[0].1)
        } else {
            // One zlib stream split over several chunks: join their bodies.
            var joined: [UInt8] = []
            joined.reserveCapacity(idat.reduce(0) { $0 + $1.1 })
            for (o, n) in idat { joined.append(contentsOf: UnsafeBufferPointer(start: b.baseAddress! + o, count: n)) }
            ok = joined.withUnsafeBytes { run($0.baseAddress!, $0.count) }
        }
        return ok ? out : nil
    }

    /// The filter type of every row (tests check that their images exercise all five).
    public static func rowFilters(_ data: Data) -> [UInt8] {
        data.withUnsafeBytes { raw -> [UInt8] in
            let b = UnsafeBufferPointer(start: raw.baseAddress!.assumingMemoryBound(to: UInt8.self), count: raw.count)
            guard let (width, height, channels, idat) = scan(b, maxPixels: 1 << 24) else { return [] }
            let stride = width * channels + 1
            guard let out = inflate(b, idat, count: height * stride) else { return [] }
            return (0..<height).map { out[$0 * stride] }
        }
    }

    /// Reverses the row filters in place (rows of `stride` bytes after a filter-type byte) and
    /// returns RGB pixels (grey repeated, alpha dropped).
    static func unfilter(_ buf: inout [UInt8], width: Int, height: Int, channels bpp: Int) -> RGBImage? {
        let stride = width * bpp
        var bad = -1
        buf.withUnsafeMutableBufferPointer { b in
            let base = b.baseAddress!
            var prev: UnsafeMutablePointer<UInt8>? = nil
            for y in 0..<height {
                let f = base[y * (stride + 1)]
                let cur = base + y * (stride + 1) + 1
                switch f {
                case 0: break
                case 1:
                    for i in bpp..<stride { cur[i] &+= cur[i - bpp] }
                case 2:
                    if let up = prev { for i in 0..<stride { cur[i] &+= up[i] } }
                case 3:
                    if let up = prev {
                        for i in 0..<bpp { cur[i] &+= up[i] >> 1 }
                        for i in bpp..<stride { cur[i] &+= UInt8((UInt16(cur[i - bpp]) + UInt16(up[i])) >> 1) }
                    } else {
                        for i in bpp..<stride { cur[i] &+= cur[i - bpp] >> 1 }
                    }
                case 4:
                    if let up = prev {
                        for i in 0..<bpp { cur[i] &+= up[i] }  // a = c = 0: Paeth picks b
                        for i in bpp..<stride {
                            let a = Int16(cur[i - bpp]), bb = Int16(up[i]), c = Int16(up[i - bpp])
                            let pa = abs(bb - c), pb = abs(a - c), pc = abs(a + bb - 2 * c)
                            cur[i] &+= UInt8(pa <= pb && pa <= pc ? a : (pb <= pc ? bb : c))
                        }
                    } else {
                        for i in bpp..<stride { cur[i] &+= cur[i - bpp] }  // b = c = 0: Paeth picks a
                    }
                default:
                    if bad < 0 { bad = Int(f) }
                }
                prev = cur
            }
        }
        if bad >= 0 { return nil }  // an unknown filter type: libpng reports it
        let pixels = width * height
        let rgb = [UInt8](unsafeUninitializedCapacity: pixels * 3) { o, n in
            buf.withUnsafeBufferPointer { b in
                let base = b.baseAddress!
                for y in 0..<height {
                    let src = base + y * (stride + 1) + 1, dst = o.baseAddress! + y * width * 3
                    switch bpp {
                    case 3:
                        dst.update(from: src, count: width * 3)
                    case 4:
                        for x in 0..<width { dst[3 * x] = src[4 * x]; dst[3 * x + 1] = src[4 * x + 1]; dst[3 * x + 2] = src[4 * x + 2] }
                    case 2:
                        for x in 0..<width { let g = src[2 * x]; dst[3 * x] = g; dst[3 * x + 1] = g; dst[3 * x + 2] = g }
                    default:
                        for x in 0..<width { let g = src[x]; dst[3 * x] = g; dst[3 * x + 1] = g; dst[3 * x + 2] = g }
                    }
                }
            }
            n = pixels * 3
        }
        return RGBImage(width: width, height: height, pixels: rgb)
    }
}
