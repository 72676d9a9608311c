import RadarEngine
/// One Horner step, p t + c: rounded twice, or (`fused`, GELU's choice) once, as the AVX2 kernels
/// with FMA do. x - c and x + (-c) are the same IEEE operation, so subtracting steps pass -c.
@inline(__always)
func hornerStep(_ p: Float, _ t: Float, _ c: Float, fused: Bool) -> Float {
    fused ? c.addingProduct(p, t) : p * t + c
}

/// exp for Float without a libm call, branch-free and trap-free so loops over it vectorise:
/// x = n ln2 + r with |r| <= ln2 / 2 (ln2 split in two parts, Cody-Waite), exp(r) by its Taylor
/// series to r^7 (truncation below 6e-9 relative), then scaled by 2^n built in the exponent bits.
/// n comes from the 1.5 * 2^23 rounding trick, so no float-to-integer conversion can trap.
/// Inputs are clamped to [-87.3, 88.7], where the result is a normal float (exp(-inf) gives the
/// smallest normal instead of 0, which no caller distinguishes); NaN gives NaN.
/// Checked against double-precision exp through softmax in KernelReferenceTests (4 ulp bound).
@inline(__always)
func fastExp(_ x: Float, fused: Bool = false) -> Float {
    let clamped = x < -87.3 ? -87.3 : (x > 88.7 ? 88.7 : x)
    let magic: Float = 12_582_912  // 1.5 * 2^23: adding it rounds to an integer held in the low mantissa bits
    let shifted = clamped * 1.442_695_04 + magic
    let n = shifted - magic
    let ni = Int32(bitPattern: shifted.bitPattern) &- 0x4B40_0000
    // r = x - n ln2, with ln2 = 0.693145751953125 + 1.428606765330187e-06 (first part exact in 12 bits).
    let r = (clamped - n * 0.693_145_751_953_125) - n * 1.428_606_765_330_187e-06
    var p: Float = 1.0 / 5040
    p = hornerStep(p, r, 1.0 / 720, fused: fused)
    p = hornerStep(p, r, 1.0 / 120, fused: fused)
    p = hornerStep(p, r, 1.0 / 24, fused: fused)
    p = hornerStep(p, r, 1.0 / 6, fused: fused)
    p = hornerStep(p, r, 0.5, fused: fused)
    p = hornerStep(p, r, 1, fused: fused)
    p = hornerStep(p, r, 1, fused: fused)
    let scale = Float(bitPattern: UInt32(bitPattern: (ni &+ 127) &<< 23))
    return x.isNaN ? x : p * scale
}

/// The standard normal CDF, Phi(x) = erfc(-x / sqrt 2) / 2, without a libm call (vectorises).
/// erfc(z) for z >= 0 is t exp(-z^2 + P(t)) with t = 1 / (1 + z/2) and P a degree-9 polynomial
/// least-squares fitted (in double precision, on Chebyshev nodes for z in [0, 10]) to
/// log(erfc(z) / t) + z^2: relative error 4.8e-8 in exact arithmetic. Evaluated in Float the
/// absolute error of Phi stays below about 1e-7 (checked against erf in KernelReferenceTests),
/// which is all GELU needs.
@inline(__always)
func fastNormalCDF(_ x: Float, fused: Bool = false) -> Float {
    let z = abs(x) * 0.707_106_78
    let t = 1 / (1 + 0.5 * z)
    var p: Float = 0.144_928_632
    p = hornerStep(p, t, -0.680_821_846, fused: fused)
    p = hornerStep(p, t, 1.156_728_80, fused: fused)
    p = hornerStep(p, t, -0.696_255_170, fused: fused)
    p = hornerStep(p, t, -0.080_269_785_4, fused: fused)
    p = hornerStep(p, t, 0.001_257_860_78, fused: fused)
    p = hornerStep(p, t, 0.034_607_429_0, fused: fused)
    p = hornerStep(p, t, 0.386_639_183, fused: fused)
    p = hornerStep(p, t, 0.998_632_955, fused: fused)
    p = hornerStep(p, t, -1.265_448_01, fused: fused)
    let half = 0.5 * t * fastExp(p - z * z, fused: fused)
    return x < 0 ? half : 1 - half
}
