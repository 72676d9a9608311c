/// exp for Float without a libm call, branch-free so loops over it vectorise: x = n ln2 + r with
/// |r| <= ln2 / 2 (ln2 split in two parts, Cody-Waite), exp(r) by its Taylor series to r^7
/// (truncation below 6e-9 relative), then scaled by 2^n through the exponent bits. Inputs are
/// clamped to [-87.3, 88.7], the range where the result is a normal float; exp(-inf) gives the
/// smallest normal instead of 0, which no caller distinguishes (softmax, GELU's density).
/// Checked against double-precision exp through softmax in KernelReferenceTests (4 ulp bound).
@inline(__always)
func fastExp(_ x: Float) -> Float {
    // NaN stays NaN (selected at the end; the arithmetic runs on 0 so the integer conversion is safe).
    let clamped = x.isNaN ? 0 : min(max(x, -87.3), 88.7)
    let n = (clamped * 1.442_695_04).rounded(.toNearestOrEven)
    // r = x - n ln2, with ln2 = 0.693145751953125 + 1.428606765330187e-06 (first part exact in 12 bits).
    let r = (clamped - n * 0.693_145_751_953_125) - n * 1.428_606_765_330_187e-06
    var p: Float = 1.0 / 5040
    p = p * r + 1.0 / 720
    p = p * r + 1.0 / 120
    p = p * r + 1.0 / 24
    p = p * r + 1.0 / 6
    p = p * r + 0.5
    p = p * r + 1
    p = p * r + 1
    let scale = Float(bitPattern: UInt32(truncatingIfNeeded: Int32(n) + 127) << 23)
    return x.isNaN ? x : p * scale
}
