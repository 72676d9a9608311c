/// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11): a
/// counter-based generator, output = f(key, counter). Every random number in RADAR (init,
/// dropout, augmentation, shuffling) is a pure function of (seed, stream, index), so results do
/// not depend on thread count or scheduling, and resuming needs only counters.
public struct Philox: Sendable, Equatable {
    public let key0: UInt32
    public let key1: UInt32

    public init(seed: UInt64) {
        key0 = UInt32(truncatingIfNeeded: seed)
        key1 = UInt32(truncatingIfNeeded: seed >> 32)
    }

    /// One block of four 32-bit outputs for the 128-bit counter (c0, c1, c2, c3).
    @inlinable
    public func block(_ c0: UInt32, _ c1: UInt32, _ c2: UInt32, _ c3: UInt32)
        -> (UInt32, UInt32, UInt32, UInt32)
    {
        var x0 = c0, x1 = c1, x2 = c2, x3 = c3
        var k0 = key0, k1 = key1
        for _ in 0..<10 {
            let p0 = UInt64(0xD251_1F53) &* UInt64(x0)
            let p1 = UInt64(0xCD9E_8D57) &* UInt64(x2)
            let hi0 = UInt32(truncatingIfNeeded: p0 >> 32), lo0 = UInt32(truncatingIfNeeded: p0)
            let hi1 = UInt32(truncatingIfNeeded: p1 >> 32), lo1 = UInt32(truncatingIfNeeded: p1)
            x0 = hi1 ^ x1 ^ k0
            x1 = lo1
            x2 = hi0 ^ x3 ^ k1
            x3 = lo0
            k0 = k0 &+ 0x9E37_79B9
            k1 = k1 &+ 0xBB67_AE85
        }
        return (x0, x1, x2, x3)
    }
}

/// A named stream of random numbers: element `i` of stream `s` under seed `k` is
/// `Philox(k).block(i / 4, .., s)[i % 4]`. Streams are 64-bit ids (see `RandomStream.id`).
public struct RandomStream: Sendable, Equatable {
    public let philox: Philox
    public let stream: UInt64

    public init(seed: UInt64, stream: UInt64) {
        philox = Philox(seed: seed)
        self.stream = stream
    }

    /// A stream id derived from a purpose label and up to three integers (layer, step, epoch...).
    public static func id(_ label: String, _ a: UInt64 = 0, _ b: UInt64 = 0, _ c: UInt64 = 0) -> UInt64 {
        id(base: FNV1a.hash(label), a, b, c)
    }

    /// The same, from a label already hashed with `id(label)`'s first stage (hot paths).
    public static func id(base: UInt64, _ a: UInt64, _ b: UInt64, _ c: UInt64) -> UInt64 {
        // FNV-1a over the little-endian bytes of a, b, c.
        var h = FNV1a(base)
        h.mixBytes(of: a)
        h.mixBytes(of: b)
        h.mixBytes(of: c)
        return h.value
    }

    /// The 32-bit value at `index`.
    @inlinable public func bits(_ index: UInt64) -> UInt32 {
        let blockIndex = index >> 2
        let r = philox.block(UInt32(truncatingIfNeeded: blockIndex), UInt32(truncatingIfNeeded: blockIndex >> 32),
                             UInt32(truncatingIfNeeded: stream), UInt32(truncatingIfNeeded: stream >> 32))
        switch index & 3 {
        case 0: return r.0
        case 1: return r.1
        case 2: return r.2
        default: return r.3
        }
    }

    /// Uniform in [0, 1) with 24 bits of resolution (every value exactly representable).
    @inlinable public func uniform(_ index: UInt64) -> Float {
        Float(bits(index) >> 8) * (1.0 / 16_777_216.0)
    }

    /// Standard normal by Box-Muller over the uniform pair (2i, 2i+1).
    public func normal(_ index: UInt64) -> Float {
        let u1 = Double(bits(2 &* index) >> 8) * (1.0 / 16_777_216.0) + 0.5 / 16_777_216.0
        let u2 = Double(bits(2 &* index &+ 1) >> 8) * (1.0 / 16_777_216.0)
        return Float((-2.0 * _log(u1)).squareRoot() * _cos(2.0 * Double.pi * u2))
    }

    /// `(normal(2 * pair), normal(2 * pair + 1))` from the one Philox block they share (each
    /// `normal` computes that block twice): the same values, a quarter of the work.
    public func normalPair(_ pair: UInt64) -> (Float, Float) {
        let r = philox.block(UInt32(truncatingIfNeeded: pair), UInt32(truncatingIfNeeded: pair >> 32),
                             UInt32(truncatingIfNeeded: stream), UInt32(truncatingIfNeeded: stream >> 32))
        func boxMuller(_ a: UInt32, _ b: UInt32) -> Float {
            let u1 = Double(a >> 8) * (1.0 / 16_777_216.0) + 0.5 / 16_777_216.0
            let u2 = Double(b >> 8) * (1.0 / 16_777_216.0)
            return Float((-2.0 * _log(u1)).squareRoot() * _cos(2.0 * Double.pi * u2))
        }
        return (boxMuller(r.0, r.1), boxMuller(r.2, r.3))
    }

    public func fillUniform(_ t: UnsafeMutableBufferPointer<Float>, low: Float = 0, high: Float = 1, offset: UInt64 = 0) {
        for i in 0..<t.count { t[i] = low + (high - low) * uniform(offset + UInt64(i)) }
    }

    public func fillNormal(_ t: UnsafeMutableBufferPointer<Float>, mean: Float = 0, std: Float = 1, offset: UInt64 = 0) {
        for i in 0..<t.count { t[i] = mean + std * normal(offset + UInt64(i)) }
    }
}

#if canImport(Glibc)
import Glibc
@usableFromInline func _log(_ x: Double) -> Double { Glibc.log(x) }
@usableFromInline func _cos(_ x: Double) -> Double { Glibc.cos(x) }
#else
import Darwin
@usableFromInline func _log(_ x: Double) -> Double { Darwin.log(x) }
@usableFromInline func _cos(_ x: Double) -> Double { Darwin.cos(x) }
#endif
