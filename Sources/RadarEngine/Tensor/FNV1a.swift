/// 64-bit FNV-1a: the one non-cryptographic hash of the project (stream ids, layout and replica
/// fingerprints, shard keys). Strings and byte sequences are mixed a byte at a time, as the
/// algorithm defines; `mix(word:)` folds a whole word in one step (what parameter hashes use).
public struct FNV1a: Sendable, Equatable {
    public static let offsetBasis: UInt64 = 0xcbf2_9ce4_8422_2325
    public static let prime: UInt64 = 0x100_0000_01b3
    public var value: UInt64

    @inlinable public init(_ seed: UInt64 = FNV1a.offsetBasis) { value = seed }

    @inlinable public mutating func mix(byte: UInt8) { value = (value ^ UInt64(byte)) &* FNV1a.prime }
    @inlinable public mutating func mix<S: Sequence>(bytes: S) where S.Element == UInt8 { for b in bytes { mix(byte: b) } }
    @inlinable public mutating func mix(_ s: String) { mix(bytes: s.utf8) }
    /// The eight bytes of v, low byte first.
    @inlinable public mutating func mixBytes(of v: UInt64) { for s in stride(from: 0, to: 64, by: 8) { mix(byte: UInt8(truncatingIfNeeded: v >> UInt64(s))) } }
    /// One step over a whole 32-bit word (a float's bit pattern).
    @inlinable public mutating func mix(_ word: UInt32) { value = (value ^ UInt64(word)) &* FNV1a.prime }

    @inlinable public static func hash(_ s: String) -> UInt64 { var h = FNV1a(); h.mix(s); return h.value }
    @inlinable public static func hash<S: Sequence>(bytes: S) -> UInt64 where S.Element == UInt8 { var h = FNV1a(); h.mix(bytes: bytes); return h.value }
}
