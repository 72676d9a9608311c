import RadarEngine
import CFFTW
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

extension CPUBackend {
    public func grayscale(_ x: Tensor, _ y: Tensor) {
        let b = x.shape[0], hw = x.shape[2] * x.shape[3]
        parallel(b * hw) { r in
            for idx in r {
                let i = idx / hw, j = idx % hw
                let p = x.base + i * 3 * hw + j
                y.base[idx] = 0.299 * p[0] + 0.587 * p[hw] + 0.114 * p[2 * hw]
            }
        }
    }

    public func sobelMagnitude(_ x: Tensor, _ y: Tensor) {
        let b = x.shape[0], h = x.shape[2], w = x.shape[3]
        forEach(b) { i in
            let src = x.base + i * h * w, dst = y.base + i * h * w
            @inline(__always) func at(_ r: Int, _ c: Int) -> Float {
                (r < 0 || r >= h || c < 0 || c >= w) ? 0 : src[r * w + c]
            }
            var peak: Float = 0
            for r in 0..<h {
                for c in 0..<w {
                    // Cross-correlation, as F.conv2d: gx with [[-1,0,1],[-2,0,2],[-1,0,1]], gy its transpose.
                    let gx = (at(r - 1, c + 1) - at(r - 1, c - 1)) + 2 * (at(r, c + 1) - at(r, c - 1))
                        + (at(r + 1, c + 1) - at(r + 1, c - 1))
                    let gy = (at(r + 1, c - 1) - at(r - 1, c - 1)) + 2 * (at(r + 1, c) - at(r - 1, c))
                        + (at(r + 1, c + 1) - at(r - 1, c + 1))
                    let m = (gx * gx + gy * gy).squareRoot()
                    dst[r * w + c] = m
                    peak = max(peak, m)
                }
            }
            if peak > 1e-8 {
                let inv = peak
                for j in 0..<(h * w) { dst[j] /= inv }
            }
        }
    }

    public func resizeBilinear(_ x: Tensor, _ y: Tensor) {
        let planes = x.shape[0] * x.shape[1]
        let ih = x.shape[2], iw = x.shape[3], oh = y.shape[2], ow = y.shape[3]
        let sh = Float(ih) / Float(oh), sw = Float(iw) / Float(ow)
        forEach(planes) { p in
            let src = x.base + p * ih * iw, dst = y.base + p * oh * ow
            for oy in 0..<oh {
                let fy = max(sh * (Float(oy) + 0.5) - 0.5, 0)
                let y0 = Int(fy), y1 = y0 + (y0 < ih - 1 ? 1 : 0)
                let ly1 = fy - Float(y0), ly0 = 1 - ly1
                for ox in 0..<ow {
                    let fx = max(sw * (Float(ox) + 0.5) - 0.5, 0)
                    let x0 = Int(fx), x1 = x0 + (x0 < iw - 1 ? 1 : 0)
                    let lx1 = fx - Float(x0), lx0 = 1 - lx1
                    dst[oy * ow + ox] = ly0 * (lx0 * src[y0 * iw + x0] + lx1 * src[y0 * iw + x1])
                        + ly1 * (lx0 * src[y1 * iw + x0] + lx1 * src[y1 * iw + x1])
                }
            }
        }
    }

    /// An FFTW plan for F x F real-to-complex transforms, made once per size (FFTW's planner is
    /// not thread-safe; executing a plan on new arrays is).
    func fftPlan(_ f: Int) -> OpaquePointer {
        pthread_mutex_lock(planLock)
        defer { pthread_mutex_unlock(planLock) }
        if let p = fftPlans[f] { return p }
        let inp = fftwf_alloc_real(f * f)!
        let out = fftwf_alloc_complex(f * (f / 2 + 1))!
        defer { fftwf_free(inp); fftwf_free(out) }
        // Buffered FFTW algorithms malloc their buffers on every execution; NO_BUFFERING (with
        // DESTROY_INPUT: the kernel hands the plan a scratch copy) keeps execution allocation-free.
        let base = radar_fftw_estimate() | UInt32(FFTW_UNALIGNED) | UInt32(FFTW_DESTROY_INPUT)
        let plan = fftwf_plan_dft_r2c_2d(Int32(f), Int32(f), inp, out, base | UInt32(FFTW_NO_BUFFERING))
            ?? fftwf_plan_dft_r2c_2d(Int32(f), Int32(f), inp, out, base)!
        fftPlans[f] = plan
        return plan
    }

    /// The r2c spectrum of one size x size plane: size x (size/2+1) complex values (re, im
    /// interleaved), cuFFT's and FFTW's layout. The input is not modified.
    public func fftRealToComplexPlane(_ input: UnsafePointer<Float>, _ output: UnsafeMutablePointer<Float>, size f: Int) {
        let plan = fftPlan(f)
        let scratch = ThreadScratch.floats(f * f)  // the plan destroys its input
        scratch.update(from: input, count: f * f)
        output.withMemoryRebound(to: fftwf_complex.self, capacity: f * (f / 2 + 1)) { fftwf_execute_dft_r2c(plan, scratch, $0) }
    }

    public func fftMagnitudeShifted(_ x: Tensor, _ y: Tensor) {
        let b = x.shape[0], f = x.shape[2]
        let half = f / 2 + 1
        // The complex half-spectrum of each image is written into the output plane's own memory
        // would not fit (F*(F/2+1) complex > F*F real), so use a scratch sized once per shape.
        let scratch = fftScratch(count: b * f * half * 2)
        forEach(b) { i in
            let spec = scratch + i * f * half * 2
            fftRealToComplexPlane(x.base + i * f * f, spec, size: f)
            let dst = y.base + i * f * f
            let shift = f / 2
            for u in 0..<f {
                for v in 0..<f {
                    // Hermitian symmetry fills the columns r2c leaves out.
                    let (su, sv) = v < half ? (u, v) : ((f - u) % f, f - v)
                    let re = spec[(su * half + sv) * 2], im = spec[(su * half + sv) * 2 + 1]
                    let mag = (re * re + im * im).squareRoot()
                    dst[((u + shift) % f) * f + (v + shift) % f] = mag
                }
            }
        }
    }

    public func highPassLogNormalize(_ x: Tensor, mask: Tensor, _ y: Tensor) {
        let plane = mask.count
        let b = x.count / plane
        forEach(b) { i in
            let src = x.base + i * plane, dst = y.base + i * plane
            var lo = Float.infinity, hi = -Float.infinity
            for j in 0..<plane {
                let v = log1pf(src[j] * mask.base[j])
                dst[j] = v
                lo = min(lo, v)
                hi = max(hi, v)
            }
            let den = max(hi - lo, 1e-8)
            for j in 0..<plane { dst[j] = (dst[j] - lo) / den }
        }
    }
}
