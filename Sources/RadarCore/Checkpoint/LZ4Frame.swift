import CLZ4
import Foundation

/// LZ4 frames (the format of the `lz4` command line tool) with content size and content
/// checksum on, so `lz4 -d` restores the exact file and corruption is detected.
public enum LZ4Frame {
    public static let magic: [UInt8] = [0x04, 0x22, 0x4D, 0x18]

    public struct FrameError: Error, CustomStringConvertible {
        public let path: String
        public let reason: String
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
            try handle.write(contentsOf: Data(buffer[0..<n]))
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
                if out > 0 { try handle.write(contentsOf: Data(buffer[0..<out])) }
                off += n
            }
        }

        public func write(_ data: Data) throws { try data.withUnsafeBytes { try write($0) } }

        public func finish() throws {
            let n = buffer.withUnsafeMutableBytes { LZ4F_compressEnd(cctx, $0.baseAddress, $0.count, nil) }
            try check(n, "end")
            try handle.write(contentsOf: Data(buffer[0..<n]))
        }
    }

    public static func isFrame(_ data: Data) -> Bool { data.count >= 4 && data.prefix(4).elementsEqual(magic) }

    /// The frame's content; throws on truncation, corruption or a checksum mismatch.
    public static func decompress(_ data: Data, path: String) throws -> Data {
        var dctx: OpaquePointer?
        guard LZ4F_isError(LZ4F_createDecompressionContext(&dctx, UInt32(LZ4F_VERSION))) == 0 else {
            throw FrameError(path: path, reason: "LZ4 context creation failed")
        }
        defer { LZ4F_freeDecompressionContext(dctx) }
        var info = LZ4F_frameInfo_t()
        var consumed = data.count
        let hint = data.withUnsafeBytes { LZ4F_getFrameInfo(dctx, &info, $0.baseAddress, &consumed) }
        if LZ4F_isError(hint) != 0 { throw FrameError(path: path, reason: "not a valid LZ4 frame: \(String(cString: LZ4F_getErrorName(hint)))") }
        guard info.contentSize > 0, info.contentSize < 1 << 40 else { throw FrameError(path: path, reason: "LZ4 frame without a content size") }
        var out = Data(count: Int(info.contentSize))
        var inOff = consumed, outOff = 0
        var ret = hint
        while ret != 0 {
            guard inOff < data.count else { throw FrameError(path: path, reason: "truncated LZ4 frame (\(data.count) bytes)") }
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
            if srcSize == 0 && dstSize == 0 && ret != 0 { throw FrameError(path: path, reason: "truncated LZ4 frame") }
        }
        guard outOff == out.count else { throw FrameError(path: path, reason: "LZ4 frame holds \(outOff) bytes, header says \(out.count)") }
        return out
    }
}
