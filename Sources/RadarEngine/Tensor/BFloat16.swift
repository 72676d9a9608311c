/// fp32 <-> bfloat16 (the upper half of the fp32 bit pattern), round to nearest even; NaN stays NaN.
public enum BFloat16 {
    @inline(__always) public static func bits(_ x: Float) -> UInt16 {
        let u = x.bitPattern
        if u & 0x7fff_ffff > 0x7f80_0000 { return UInt16(truncatingIfNeeded: u >> 16) | 0x40 }
        return UInt16(truncatingIfNeeded: (u &+ 0x7fff &+ ((u >> 16) & 1)) >> 16)
    }
    @inline(__always) public static func float(_ b: UInt16) -> Float { Float(bitPattern: UInt32(b) << 16) }
    @inline(__always) public static func round(_ x: Float) -> Float { float(bits(x)) }
    public static func pack(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<UInt16>, count n: Int) {
        for i in 0..<n { dst[i] = bits(src[i]) }
    }
    public static func unpack(_ src: UnsafePointer<UInt16>, _ dst: UnsafeMutablePointer<Float>, count n: Int) {
        for i in 0..<n { dst[i] = float(src[i]) }
    }
}
