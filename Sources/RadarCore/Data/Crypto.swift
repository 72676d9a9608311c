import COpenSSL
import Foundation

/// SHA-256, HMAC-SHA256, secure random bytes and per-frame authentication tags, all from
/// libcrypto (OpenSSL 3, Debian's libssl-dev): shard checksums, the job-token login, and the
/// authenticated data plane. Nothing here is home-made cryptography.

/// libcrypto's start-up, once, before any other call into it. By default OpenSSL frees its
/// global state from an `atexit` handler, while threads that are still running (a data-plane
/// receiver, a coordinator connection, a heartbeat) may be inside it or end later and run its
/// thread-exit hook: a process that returned from `main` then died with SIGSEGV in libcrypto
/// (1 run in 20 of `radar bench allreduce` over TCP). Without that handler the kernel frees it all.
public enum OpenSSLLibrary {
    private static let ready: Void = { _ = radar_openssl_init_no_atexit() }()
    /// Call first thing in `main` (another library could otherwise initialise libcrypto first,
    /// with the handler); every entry point below calls it too.
    public static func prepare() { _ = ready }
}

/// SHA-256, incremental (EVP). Shard checksums in the manifest, plan digests, fingerprints.
public final class SHA256Digest: @unchecked Sendable {
    private let ctx: OpaquePointer

    public init() {
        OpenSSLLibrary.prepare()
        ctx = EVP_MD_CTX_new()
        EVP_DigestInit_ex(ctx, EVP_sha256(), nil)
    }

    deinit { EVP_MD_CTX_free(ctx) }

    public func update(_ data: UnsafeRawBufferPointer) {
        if data.count > 0 { EVP_DigestUpdate(ctx, data.baseAddress, data.count) }
    }

    public func update(_ data: Data) { data.withUnsafeBytes { update($0) } }

    /// The digest as lowercase hex; the object is spent afterwards.
    public func finalize() -> String {
        var out = [UInt8](repeating: 0, count: 32)
        var n: UInt32 = 0
        EVP_DigestFinal_ex(ctx, &out, &n)
        return hexString(out)
    }

    public static func hex(_ data: Data) -> String {
        let d = SHA256Digest()
        d.update(data)
        return d.finalize()
    }
}

/// SHA-1, only to check a small Hugging Face Hub file against its etag (git's blob id); never
/// for security.
public enum SHA1Digest {
    public static func hex(_ data: Data) -> String {
        var out = [UInt8](repeating: 0, count: 20)
        var n: UInt32 = 0
        OpenSSLLibrary.prepare()
        let ctx = EVP_MD_CTX_new()
        defer { EVP_MD_CTX_free(ctx) }
        EVP_DigestInit_ex(ctx, EVP_sha1(), nil)
        data.withUnsafeBytes { if $0.count > 0 { EVP_DigestUpdate(ctx, $0.baseAddress, $0.count) } }
        EVP_DigestFinal_ex(ctx, &out, &n)
        return hexString(out)
    }
}

func hexString(_ bytes: [UInt8]) -> String {
    let digits = Array("0123456789abcdef".utf8)
    var s = [UInt8]()
    s.reserveCapacity(bytes.count * 2)
    for b in bytes { s.append(digits[Int(b >> 4)]); s.append(digits[Int(b & 15)]) }
    return String(decoding: s, as: UTF8.self)
}

/// HMAC-SHA256 (RFC 2104) for the coordinator's challenge-response login and key derivation.
public enum HMACSHA256 {
    public static func bytes(key: Data, message: Data) -> [UInt8] {
        OpenSSLLibrary.prepare()
        var out = [UInt8](repeating: 0, count: 32)
        var n: UInt32 = 0
        key.withUnsafeBytes { k in
            message.withUnsafeBytes { m in
                _ = HMAC(EVP_sha256(), k.baseAddress, Int32(k.count), m.baseAddress?.assumingMemoryBound(to: UInt8.self), m.count, &out, &n)
            }
        }
        return out
    }

    public static func hex(key: Data, message: Data) -> String { hexString(bytes(key: key, message: message)) }

    /// `bytes` bytes from the system's secure generator (RAND_bytes), as lowercase hex: job
    /// tokens and login nonces.
    public static func randomHex(bytes: Int = 32) -> String { hexString(SecureRandom.bytes(bytes)) }

    /// Constant-time comparison (CRYPTO_memcmp) of two byte strings.
    public static func equal(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        return a.withUnsafeBytes { x in b.withUnsafeBytes { y in CRYPTO_memcmp(x.baseAddress, y.baseAddress, x.count) == 0 } }
    }

    /// Constant-time comparison (CRYPTO_memcmp) of two digests.
    public static func equal(_ a: String, _ b: String) -> Bool {
        equal(Array(a.utf8), Array(b.utf8))
    }
}

public enum SecureRandom {
    public static func bytes(_ n: Int) -> [UInt8] {
        OpenSSLLibrary.prepare()
        var out = [UInt8](repeating: 0, count: n)
        guard RAND_bytes(&out, Int32(n)) == 1 else {
            // A system without entropy cannot run a job safely.
            logLine("radar: RAND_bytes failed: no secure random source")
            exitNow(1)
        }
        return out
    }
}

/// AES-256-GCM tags over data that is sent in the clear (GMAC: the bytes are authenticated,
/// not encrypted): the data plane tags every frame's header and body with a per-connection,
/// per-direction key and a never-repeated nonce (sender rank, frame counter). One context per
/// link and direction, reused: no allocation per frame.
public final class FrameAuthenticator: @unchecked Sendable {
    public static let tagBytes = 16
    private let ctx: OpaquePointer
    private let key: [UInt8]

    public init(key: [UInt8]) {
        precondition(key.count == 32)
        self.key = key
        OpenSSLLibrary.prepare()
        ctx = EVP_CIPHER_CTX_new()
        EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), nil, nil, nil)
        EVP_CIPHER_CTX_ctrl(ctx, radar_gcm_set_ivlen(), 12, nil)
    }

    deinit { EVP_CIPHER_CTX_free(ctx) }

    /// The tag of `header` then `body` under nonce (sender, counter), written to `out` (16 bytes).
    /// No allocation: it runs for every frame of every gradient bucket.
    public func tag(sender: UInt32, counter: UInt64, header: UnsafeRawBufferPointer, body: UnsafeRawBufferPointer,
                    into out: UnsafeMutableRawPointer) {
        withUnsafeTemporaryAllocation(byteCount: 32, alignment: 8) { scratch in
            let iv = scratch.baseAddress!
            iv.storeBytes(of: sender.littleEndian, toByteOffset: 0, as: UInt32.self)
            iv.storeBytes(of: counter.littleEndian, toByteOffset: 4, as: UInt64.self)
            EVP_EncryptInit_ex(ctx, nil, nil, key, iv.assumingMemoryBound(to: UInt8.self))
            var outl: Int32 = 0
            // AAD in slices below 2 GiB (the API's int lengths).
            func authenticate(_ p: UnsafeRawBufferPointer) {
                var off = 0
                while off < p.count {
                    let n = min(p.count - off, 1 << 30)
                    EVP_EncryptUpdate(ctx, nil, &outl, p.baseAddress!.assumingMemoryBound(to: UInt8.self) + off, Int32(n))
                    off += n
                }
            }
            authenticate(header)
            authenticate(body)
            EVP_EncryptFinal_ex(ctx, (iv + 16).assumingMemoryBound(to: UInt8.self), &outl)
        }
        EVP_CIPHER_CTX_ctrl(ctx, radar_gcm_get_tag(), Int32(FrameAuthenticator.tagBytes), out)
    }

    /// Whether `expected` is the tag of `header` then `body` (constant-time comparison).
    public func verify(sender: UInt32, counter: UInt64, header: UnsafeRawBufferPointer, body: UnsafeRawBufferPointer,
                       expected: UnsafeRawPointer) -> Bool {
        withUnsafeTemporaryAllocation(byteCount: FrameAuthenticator.tagBytes, alignment: 8) { mine in
            tag(sender: sender, counter: counter, header: header, body: body, into: mine.baseAddress!)
            return CRYPTO_memcmp(mine.baseAddress, expected, FrameAuthenticator.tagBytes) == 0
        }
    }
}
