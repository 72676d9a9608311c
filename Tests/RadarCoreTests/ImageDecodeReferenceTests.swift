import Foundation
import RadarCore
import XCTest

/// Our decoder against Pillow's `Image.open(path).convert("RGB")` (the test venv's Pillow,
/// what a PyTorch pipeline reads its images with), file by file, byte for byte: every PNG colour
/// type and bit depth, interlaced, colour-space chunks (gAMA, cHRM, iCCP, sBIT: never applied),
/// transparency, JPEGs in grey, 4:4:4, 4:2:0, progressive and CMYK, and WebP lossy and lossless
/// with and without alpha.
final class ImageDecodeReferenceTests: XCTestCase {
    static let script = #"""
    import io, json, struct, sys, zlib
    import numpy as np
    from PIL import Image, ImageCms
    out = sys.argv[1]
    rng = np.random.default_rng(11)
    def chunk(t, b): return struct.pack('>I', len(b)) + t + b + struct.pack('>I', zlib.crc32(t + b) & 0xffffffff)
    def pack_rows(img, depth):
        # Rows of samples at 1, 2, 4, 8 or 16 bits, each after filter byte 0.
        h = img.shape[0]; rows = img.reshape(h, -1)
        out = b''
        for y in range(h):
            r = rows[y]
            if depth == 16: data = r.astype('>u2').tobytes()
            elif depth == 8: data = r.astype(np.uint8).tobytes()
            else: data = np.packbits(np.unpackbits(r.astype(np.uint8)[:, None], axis=1)[:, 8 - depth:].reshape(-1)).tobytes()
            out += b'\x00' + data
        return out
    def png(name, img, colour, depth=8, extra=b'', interlace=False):
        h, w = img.shape[:2]
        if interlace:
            raw = b''
            for x0, y0, dx, dy in ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)):
                sub = img[y0::dy, x0::dx]
                if sub.shape[0] and sub.shape[1]: raw += pack_rows(sub, depth)
        else:
            raw = pack_rows(img, depth)
        ihdr = struct.pack('>IIBBBBB', w, h, depth, colour, 0, 0, 1 if interlace else 0)
        data = b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr) + extra + chunk(b'IDAT', zlib.compress(raw)) + chunk(b'IEND', b'')
        open(f'{out}/{name}', 'wb').write(data)
    cases = {}
    def expect(name, pixels=None):
        rgb = np.asarray(Image.open(f'{out}/{name}').convert('RGB')) if pixels is None else pixels
        open(f'{out}/{name}.rgb', 'wb').write(np.ascontiguousarray(rgb, np.uint8).tobytes())
        cases[name] = [int(rgb.shape[1]), int(rgb.shape[0])]
    rgb8 = rng.integers(0, 256, (13, 17, 3), dtype=np.uint8)
    png('gama-linear.png', rgb8, 2, extra=chunk(b'gAMA', struct.pack('>I', 100000))); expect('gama-linear.png')
    png('gama-chrm.png', rgb8, 2, extra=chunk(b'gAMA', struct.pack('>I', 30000)) +
        chunk(b'cHRM', struct.pack('>8I', 31270, 32900, 64000, 33000, 30000, 60000, 15000, 6000))); expect('gama-chrm.png')
    png('sbit.png', rgb8, 2, extra=chunk(b'sBIT', bytes([5, 6, 5]))); expect('sbit.png')
    png('trns-rgb.png', rgb8, 2, extra=chunk(b'tRNS', struct.pack('>3H', *map(int, rgb8[0, 0])))); expect('trns-rgb.png')
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile('sRGB')).tobytes()
    Image.fromarray(rgb8).save(f'{out}/iccp.png', icc_profile=icc); expect('iccp.png')
    png('interlaced-rgb.png', rgb8, 2, interlace=True); expect('interlaced-rgb.png')
    rgba8 = rng.integers(0, 256, (9, 10, 4), dtype=np.uint8)
    png('interlaced-rgba.png', rgba8, 6, interlace=True); expect('interlaced-rgba.png')
    for depth in (1, 2, 4):
        g = rng.integers(0, 1 << depth, (7, 11), dtype=np.uint8)
        png(f'grey{depth}.png', g, 0, depth=depth); expect(f'grey{depth}.png')
        pal = rng.integers(0, 256, (1 << depth, 3), dtype=np.uint8)
        png(f'palette{depth}.png', g, 3, depth=depth, extra=chunk(b'PLTE', pal.tobytes())); expect(f'palette{depth}.png')
    idx = rng.integers(0, 200, (12, 9), dtype=np.uint8); pal = rng.integers(0, 256, (200, 3), dtype=np.uint8)
    png('palette8-trns.png', idx, 3, extra=chunk(b'PLTE', pal.tobytes()) + chunk(b'tRNS', bytes(range(0, 200, 2)))); expect('palette8-trns.png')
    png('interlaced-palette.png', idx, 3, extra=chunk(b'PLTE', pal.tobytes()), interlace=True); expect('interlaced-palette.png')
    g8 = rng.integers(0, 256, (6, 5), dtype=np.uint8)
    png('grey8-trns.png', g8, 0, extra=chunk(b'tRNS', struct.pack('>H', int(g8[0, 0])))); expect('grey8-trns.png')
    rgb16 = rng.integers(0, 65536, (5, 7, 3), dtype=np.uint16)
    png('rgb16.png', rgb16, 2, depth=16); expect('rgb16.png')
    rgba16 = rng.integers(0, 65536, (5, 7, 4), dtype=np.uint16)
    png('rgba16.png', rgba16, 6, depth=16); expect('rgba16.png')
    # 16-bit grey: Pillow opens it as I;16 and clips to 255 on convert("RGB"); OpenCV's imread,
    # and Pillow for 16-bit colour, keep the high byte, which is what we expect.
    g16 = rng.integers(0, 65536, (4, 6), dtype=np.uint16)
    png('grey16.png', g16, 0, depth=16); expect('grey16.png', np.repeat((g16 >> 8).astype(np.uint8)[..., None], 3, 2))
    ga16 = rng.integers(0, 65536, (4, 6, 2), dtype=np.uint16)
    png('greyalpha16.png', ga16, 4, depth=16); expect('greyalpha16.png', np.repeat((ga16[..., :1] >> 8).astype(np.uint8), 3, 2))
    # JPEGs: a smooth image with noise, so every DCT coefficient and the chroma upsampling matter.
    y, x = np.mgrid[0:37, 0:45]
    smooth = np.stack([(x * 5 + y * 2) % 256, (y * 6) % 256, (x * y) % 256], -1)
    face = np.clip(smooth + rng.integers(-20, 21, smooth.shape), 0, 255).astype(np.uint8)
    Image.fromarray(face).save(f'{out}/rgb420.jpg', quality=85); expect('rgb420.jpg')
    Image.fromarray(face).save(f'{out}/rgb444.jpg', quality=90, subsampling=0); expect('rgb444.jpg')
    Image.fromarray(face).save(f'{out}/progressive.jpg', quality=80, progressive=True); expect('progressive.jpg')
    Image.fromarray(face).convert('L').save(f'{out}/grey.jpg', quality=85); expect('grey.jpg')
    Image.fromarray(face).convert('CMYK').save(f'{out}/cmyk.jpg', quality=90); expect('cmyk.jpg')
    cmyk = np.concatenate([face, face[..., :1] // 2], -1)
    Image.fromarray(cmyk, 'CMYK').save(f'{out}/cmyk-ink.jpg', quality=95); expect('cmyk-ink.jpg')
    # WebP (Pillow's libwebp against Debian's): lossy and lossless, with and without alpha.
    Image.fromarray(face).save(f'{out}/lossy.webp', quality=80); expect('lossy.webp')
    Image.fromarray(face).save(f'{out}/lossless.webp', lossless=True); expect('lossless.webp')
    rgba = np.concatenate([face, rng.integers(0, 256, face.shape[:2] + (1,), dtype=np.uint8)], -1)
    Image.fromarray(rgba, 'RGBA').save(f'{out}/lossy-alpha.webp', quality=70); expect('lossy-alpha.webp')
    Image.fromarray(rgba, 'RGBA').save(f'{out}/lossless-alpha.webp', lossless=True, exact=True); expect('lossless-alpha.webp')
    frames = [Image.fromarray(face), Image.fromarray(255 - face)]
    frames[0].save(f'{out}/animated.webp', save_all=True, append_images=frames[1:], duration=100)
    json.dump(cases, open(f'{out}/cases.json', 'w'))
    """#

    func testDecodedPixelsAreThoseOfPillow() throws {
        let dir = temporaryDirectory("decode-ref")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (rc, out) = try shell([interopPython, "-c", Self.script, dir])
        XCTAssertEqual(rc, 0, "python (RADAR_PYTHON=\(interopPython)): \(out)")
        let cases = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/cases.json"))) as? [String: [Int]])
        XCTAssertEqual(cases.count, 30, "\(cases.keys.sorted())")
        for (name, size) in cases.sorted(by: { $0.key < $1.key }) {
            let data = try Data(contentsOf: URL(fileURLWithPath: "\(dir)/\(name)"))
            let expected = [UInt8](try Data(contentsOf: URL(fileURLWithPath: "\(dir)/\(name).rgb")))
            let image = try ImageCodec.decode(data, item: name)
            XCTAssertEqual([image.width, image.height], size, name)
            guard image.pixels.count == expected.count else { XCTFail("\(name): \(image.pixels.count) bytes, Pillow \(expected.count)"); continue }
            let differing = zip(image.pixels, expected).filter { $0 != $1 }.count
            XCTAssertEqual(differing, 0, "\(name): \(differing) of \(expected.count) bytes differ from Pillow's")
            if name.hasSuffix(".png"), let fast = PNGFastPath.decode(data, maxPixels: 1 << 24) {
                // Whatever the fast path takes (8-bit, not interlaced, colour chunks ignored) it
                // reads as libpng does.
                XCTAssertEqual(fast.pixels, image.pixels, "\(name): the fast path")
                XCTAssertEqual(fast.pixels, try ImageCodec.decodePNGWithLibpng(data, item: name).pixels, "\(name): fast path against libpng")
            }
        }
        XCTAssertThrowsError(try ImageCodec.decode(try Data(contentsOf: URL(fileURLWithPath: dir + "/animated.webp")), item: "a.webp")) {
            XCTAssertEqual("\($0)", "a.webp: an animated WebP (45x37): extract one frame as an image first")
        }
        // The colour-space chunks no longer send a file to libpng; the kinds it alone reads still go there.
        for name in ["gama-linear.png", "gama-chrm.png", "sbit.png", "trns-rgb.png", "iccp.png"] {
            XCTAssertNotNil(PNGFastPath.decode(try Data(contentsOf: URL(fileURLWithPath: "\(dir)/\(name)")), maxPixels: 1 << 24), name)
        }
        for name in ["interlaced-rgb.png", "grey4.png", "palette8-trns.png", "rgb16.png"] {
            XCTAssertNil(PNGFastPath.decode(try Data(contentsOf: URL(fileURLWithPath: "\(dir)/\(name)")), maxPixels: 1 << 24), name)
        }
    }

    /// Files that are images, but not ones we read, are named as what they are; damaged PNGs that
    /// reach libpng fail with its message, whatever the cut.
    func testOtherFormatsAreNamedAndDamagedPNGsFailCleanly() throws {
        let kinds: [(String, [UInt8])] = [
            ("GIF", Array("GIF89a".utf8) + [0, 0]),
            ("BMP", Array("BM".utf8) + [0, 0, 0, 0]), ("TIFF", [0x49, 0x49, 0x2A, 0, 8, 0, 0, 0]), ("TIFF", [0x4D, 0x4D, 0, 0x2A, 0, 0, 0, 8]),
            ("HEIF", [0, 0, 0, 24] + Array("ftypheic".utf8)), ("AVIF", [0, 0, 0, 28] + Array("ftypavif".utf8)),
        ]
        for (kind, bytes) in kinds {
            XCTAssertThrowsError(try ImageCodec.decode(Data(bytes), item: "x")) {
                XCTAssertEqual("\($0)", "x: a \(kind) image, not a PNG, JPEG or WebP (the formats read)")
            }
        }
        XCTAssertThrowsError(try ImageCodec.decode(Data(Array("RIFF".utf8) + [4, 0, 0, 0] + Array("WEBP".utf8)), item: "w")) {
            XCTAssertEqual("\($0)", "w: corrupt WebP: its header could not be read")
        }
        XCTAssertThrowsError(try ImageCodec.decode(Data("hello".utf8), item: "t.png")) { XCTAssertEqual("\($0)", "t.png: not a PNG, JPEG or WebP image") }
        // An interlaced 16-bit PNG (libpng's path) cut everywhere: an error, never a trap.
        let dir = temporaryDirectory("decode-cut")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let script = """
        import struct, sys, zlib, numpy as np
        def chunk(t, b): return struct.pack('>I', len(b)) + t + b + struct.pack('>I', zlib.crc32(t + b) & 0xffffffff)
        img = np.random.default_rng(3).integers(0, 65536, (9, 9, 3), dtype=np.uint16)
        raw = b''.join(b'\\x00' + img[y].astype('>u2').tobytes() for y in range(9))
        open(sys.argv[1], 'wb').write(b'\\x89PNG\\r\\n\\x1a\\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', 9, 9, 16, 2, 0, 0, 0))
                                      + chunk(b'IDAT', zlib.compress(raw)) + chunk(b'IEND', b''))
        """
        let (rc, out) = try shell([interopPython, "-c", script, dir + "/p.png"])
        XCTAssertEqual(rc, 0, out)
        let whole = try Data(contentsOf: URL(fileURLWithPath: dir + "/p.png"))
        XCTAssertEqual(try ImageCodec.decode(whole, item: "p.png").width, 9)
        var failures = 0
        for cut in 8..<(whole.count - 12) {
            do { _ = try ImageCodec.decode(whole.prefix(cut), item: "p.png") } catch {
                XCTAssertTrue("\(error)".hasPrefix("p.png: corrupt PNG: "), "\(error)")
                failures += 1
            }
        }
        XCTAssertEqual(failures, whole.count - 20, "every cut before IEND fails")
        // Damage past the CRC checks (each chunk's CRC recomputed after the flips), so libpng
        // parses what it is given: decoded or refused, never a crash (bodies POSTed to radar serve
        // reach this code). The same for the WebP and JPEG decoders.
        func fixCRCs(_ d: inout [UInt8]) {
            var pos = 8
            while pos + 12 <= d.count {
                let length = Int(d[pos]) << 24 | Int(d[pos + 1]) << 16 | Int(d[pos + 2]) << 8 | Int(d[pos + 3])
                guard length <= d.count - pos - 12 else { return }
                let c = crc32(d[(pos + 4)..<(pos + 8 + length)])
                for k in 0..<4 { d[pos + 8 + length + k] = UInt8((c >> (24 - 8 * UInt32(k))) & 0xFF) }
                pos += 12 + length
            }
        }
        var rng = SystemRandomNumberGenerator()
        var decoded = 0, refused = 0
        let faces = SyntheticFaces(size: 24, seed: 2)
        let jpeg = [UInt8](try ImageCodec.encodeJPEG(faces.rgbImage(0, label: 1), quality: 80))
        for round in 0..<3000 {
            var d = round % 3 == 2 ? jpeg : [UInt8](whole)
            for _ in 0..<Int.random(in: 1...4, using: &rng) {
                d[Int.random(in: (round % 3 == 2 ? 2 : 16)..<d.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
            }
            if round % 3 != 2 { fixCRCs(&d) }
            if round % 3 == 1 {  // a palette PNG: libpng's expansion paths
                d = [UInt8](whole)
                d[25] = 3; d[24] = 8  // colour type 3, depth 8: the 16-bit samples read as indices
                let plte = [0, 0, 0, 0x30] + Array("PLTE".utf8) + (0..<0x30).map { _ in UInt8.random(in: 0...255, using: &rng) } + [0, 0, 0, 0]
                d.insert(contentsOf: plte, at: 33)
                d[Int.random(in: 16..<d.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
                fixCRCs(&d)
            }
            do { _ = try ImageCodec.decode(Data(d), item: "f"); decoded += 1 } catch { refused += 1 }
        }
        XCTAssertEqual(decoded + refused, 3000)
        XCTAssertGreaterThan(refused, 0)
        // A WebP cut anywhere: refused, never a crash.
        let webp = Data(Array("RIFF".utf8) + [0x34, 0, 0, 0] + Array("WEBPVP8L".utf8) + [0x27, 0, 0, 0, 0x2f, 0x03, 0x80, 0, 0, 0x5f, 0x20, 0x16, 0x4c, 0xce,
                         0x11, 0xe4, 0x6f, 0x1b, 0xc3, 0x54, 0xdc, 0xa1, 0x62, 0xfe, 0x13, 0xdb, 0x81, 0x20, 0x80, 0x44, 0x21, 0x96, 0x58, 0x66, 0x99,
                         0x65, 0x96, 0x49, 0x23, 0xfa, 0x1f, 0x98, 0xee, 0x00])
        XCTAssertEqual(try ImageCodec.decode(webp, item: "w").pixels, (0..<36).map { UInt8($0 * 7) })
        for cut in 12..<webp.count { XCTAssertThrowsError(try ImageCodec.decode(webp.prefix(cut), item: "w"), "cut \(cut)") }
    }
}
