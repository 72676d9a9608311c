import CLZ4
import Foundation

/// LZ4 frames (the format of the `lz4` command line tool) with content size and content
/// checksum on, so `lz4 -d` restores the exact file and corruption is detected.
public enum LZ4Frame {
    public static let magic: [UInt8] = [0x04, 0x22, 0x4D, 0x18]

    public struct FrameError: Error, CustomStringConvertible {
        public let path: String
        public let reason: String
        /// The errno of a failed write (0 otherwise).
        public var code: Int32 = 0
        public init(path: String, reason: String, code: Int32 = 0) { (self.path, self.reason, self.code) = (path, reason, code) }
        public var description: String { "\(path): \(reason)" }
    }

    /// Streams `chunks` (total `contentSize` bytes) through the compressor into `handle`.
    public final class Writer {
        private var cctx: OpaquePointer?
        private let handle: FileHandle
        private let path: String
        private var prefs = LZ4F_preferences_t()
        private var buffer: [UInt8] = []
        static let chunk = 1 << 20

        public init(handle: FileHandle, path: String, contentSize: Int) throws {
            self.handle = handle
            self.path = path
            var c: OpaquePointer?
            guard LZ4F_isError(LZ4F_createCompressionContext(&c, UInt32(LZ4F_VERSION))) == 0 else {
                throw FrameError(path: path, reason: "LZ4 context creation failed")
            }
            cctx = c
            prefs.frameInfo.contentSize = UInt64(contentSize)
            prefs.frameInfo.contentChecksumFlag = LZ4F_contentChecksumEnabled
            prefs.frameInfo.blockSizeID = LZ4F_max4MB
            buffer = [UInt8](repeating: 0, count: max(LZ4F_compressBound(Writer.chunk, &prefs), 64))
            let n = buffer.withUnsafeMutableBytes { LZ4F_compressBegin(cctx, $0.baseAddress, $0.count, &prefs) }
            try check(n, "begin")
            try emit(n)
        }

        /// The first `count` bytes of the buffer to the file; a failed write is an error naming the
        /// file and the system's reason ("No space left on device"), not Foundation's NSError dump.
        private func emit(_ count: Int) throws {
            let fd = handle.fileDescriptor
            if let failure = buffer.withUnsafeBytes({ writeAll(fd, UnsafeRawBufferPointer(rebasing: $0[0..<count])) }) {
                throw FrameError(path: path, reason: "write failed: \(String(cString: strerror(failure)))", code: failure)
            }
        }

        deinit { LZ4F_freeCompressionContext(cctx) }

        private func check(_ code: Int, _ what: String) throws {
            if LZ4F_isError(code) != 0 { throw FrameError(path: path, reason: "LZ4 \(what): \(String(cString: LZ4F_getErrorName(code)))") }
        }

        public func write(_ bytes: UnsafeRawBufferPointer) throws {
            var off = 0
            while off < bytes.count {
                let n = min(Writer.chunk, bytes.count - off)
                let out = buffer.withUnsafeMutableBytes { LZ4F_compressUpdate(cctx, $0.baseAddress, $0.count, bytes.baseAddress! + off, n, nil) }
                try check(out, "compress")
                if out > 0 { try emit(out) }
                off += n
            }
        }

        public func write(_ data: Data) throws { try data.withUnsafeBytes { try write($0) } }

        public func finish() throws {
            let n = buffer.withUnsafeMutableBytes { LZ4F_compressEnd(cctx, $0.baseAddress, $0.count, nil) }
            try check(n, "end")
            try emit(n)
        }
    }

    public static func isFrame(_ data: Data) -> Bool { data.count >= 4 && data.prefix(4).elementsEqual(magic) }

    /// The legacy format (`lz4 -l`): magic 0x184C2102, then blocks of at most 8 MiB, each a
    /// 4-byte little-endian compressed size and the block.
    public static let legacyMagic: [UInt8] = [0x02, 0x21, 0x4C, 0x18]
    public static func isLegacyFrame(_ data: Data) -> Bool { data.count >= 4 && data.prefix(4).elementsEqual(legacyMagic) }

    /// The most content `compressed` bytes of LZ4 can hold (LZ4 cannot beat 255:1), so no
    /// declared size makes us allocate more than a valid frame could produce.
    public static func contentBound(compressed: Int) -> Int { compressed.multipliedReportingOverflow(by: 255).partialValue + (64 << 10) }

    /// The content of an LZ4 frame (with or without a declared content size, as the stock `lz4`
    /// tool writes them by default) or of a legacy frame; throws on truncation, corruption, a
    /// checksum mismatch or a declared size no frame of this length can hold.
    public static func decompress(_ data: Data, path: String) throws -> Data {
        if isLegacyFrame(data) { return try decompressLegacy(data, path: path) }
        var dctx: OpaquePointer?
        guard LZ4F_isError(LZ4F_createDecompressionContext(&dctx, UInt32(LZ4F_VERSION))) == 0 else {
            throw FrameError(path: path, reason: "LZ4 context creation failed")
        }
        defer { LZ4F_freeDecompressionContext(dctx) }
        var info = LZ4F_frameInfo_t()
        var consumed = data.count
        let hint = data.withUnsafeBytes { LZ4F_getFrameInfo(dctx, &info, $0.baseAddress, &consumed) }
        if LZ4F_isError(hint) != 0 { throw FrameError(path: path, reason: "not a valid LZ4 frame: \(String(cString: LZ4F_getErrorName(hint)))") }
        let bound = contentBound(compressed: data.count)
        let declared = info.contentSize
        if declared > UInt64(bound) {
            throw FrameError(path: path, reason: "LZ4 frame declares \(declared) bytes of content, more than its \(data.count) bytes can hold")
        }
        // Known size: one allocation. Unknown: grow in 4 MiB steps, never past the bound.
        var out = Data(count: declared > 0 ? Int(declared) : min(bound, 4 << 20))
        var inOff = consumed, outOff = 0
        var ret = hint
        while ret != 0 {
            guard inOff < data.count else { throw FrameError(path: path, reason: "truncated LZ4 frame (\(data.count) bytes)") }
            if outOff == out.count {
                guard declared == 0, out.count < bound else {
                    throw FrameError(path: path, reason: "LZ4 frame holds more than " + (declared > 0 ? "its declared \(declared) bytes" : "\(bound) bytes"))
                }
                out.count = min(bound, out.count + (4 << 20))
            }
            var srcSize = data.count - inOff
            var dstSize = out.count - outOff
            ret = out.withUnsafeMutableBytes { dst in
                data.withUnsafeBytes { src in
                    LZ4F_decompress(dctx, dst.baseAddress! + outOff, &dstSize, src.baseAddress! + inOff, &srcSize, nil)
                }
            }
            if LZ4F_isError(ret) != 0 {
                throw FrameError(path: path, reason: "corrupt LZ4 frame: \(String(cString: LZ4F_getErrorName(ret)))")
            }
            inOff += srcSize
            outOff += dstSize
            if srcSize == 0 && dstSize == 0 && ret != 0 && outOff < out.count { throw FrameError(path: path, reason: "truncated LZ4 frame") }
        }
        if declared > 0 {
            guard outOff == out.count else { throw FrameError(path: path, reason: "LZ4 frame holds \(outOff) bytes, header says \(out.count)") }
        } else {
            out.count = outOff
        }
        return out
    }

    static func decompressLegacy(_ data: Data, path: String) throws -> Data {
        let blockMax = 8 << 20
        var out = Data()
        var at = 4
        try data.withUnsafeBytes { (src: UnsafeRawBufferPointer) in
            while at < data.count {
                guard data.count - at >= 4 else { throw FrameError(path: path, reason: "truncated legacy LZ4 frame at byte \(at)") }
                let size = Int(UInt32(littleEndian: src.loadUnaligned(fromByteOffset: at, as: UInt32.self)))
                at += 4
                if size == 0x184C_2102 { continue }  // another legacy frame follows
                guard size > 0, size <= LZ4_compressBound(Int32(blockMax)), size <= data.count - at else {
                    throw FrameError(path: path, reason: "legacy LZ4 block of \(size) bytes at byte \(at - 4) does not fit the file (\(data.count) bytes)")
                }
                let start = out.count
                out.count += blockMax
                let n = out.withUnsafeMutableBytes { dst in
                    LZ4_decompress_safe(src.baseAddress!.assumingMemoryBound(to: CChar.self) + at,
                                        dst.baseAddress!.assumingMemoryBound(to: CChar.self) + start, Int32(size), Int32(blockMax))
                }
                guard n >= 0 else { throw FrameError(path: path, reason: "corrupt legacy LZ4 block at byte \(at - 4)") }
                out.count = start + Int(n)
                at += size
            }
        }
        return out
    }
}
