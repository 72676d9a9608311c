import RadarEngine
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

@inline(__always) func sigmoid(_ x: Float) -> Float { 1 / (1 + expf(-x)) }

extension CPUBackend {
    public func gruGatesForward(gi: Tensor, gh: Tensor, h: Tensor, hNew: Tensor, r: Tensor, z: Tensor, n: Tensor) {
        let e = h.shape[h.shape.rank - 1]
        let b = h.count / e
        parallel(b, grain: 1) { br in
            for i in br {
                let a = gi.base + i * 3 * e, g = gh.base + i * 3 * e
                for j in 0..<e {
                    let rv = sigmoid(a[j] + g[j])
                    let zv = sigmoid(a[e + j] + g[e + j])
                    let nv = tanhf(a[2 * e + j] + rv * g[2 * e + j])
                    let o = i * e + j
                    r.base[o] = rv
                    z.base[o] = zv
                    n.base[o] = nv
                    hNew.base[o] = (1 - zv) * nv + zv * h.base[o]
                }
            }
        }
    }

    public func gruGatesBackward(dhNew: Tensor, gh: Tensor, h: Tensor, r: Tensor, z: Tensor, n: Tensor,
                                 dgi: Tensor, dgh: Tensor, dh: Tensor) {
        let e = h.shape[h.shape.rank - 1]
        let b = h.count / e
        parallel(b, grain: 1) { br in
            for i in br {
                let g = gh.base + i * 3 * e, di = dgi.base + i * 3 * e, dg = dgh.base + i * 3 * e
                for j in 0..<e {
                    let o = i * e + j
                    let d = dhNew.base[o], rv = r.base[o], zv = z.base[o], nv = n.base[o]
                    let dz = d * (h.base[o] - nv)
                    let dnPre = d * (1 - zv) * (1 - nv * nv)
                    let dr = dnPre * g[2 * e + j]
                    let drPre = dr * rv * (1 - rv)
                    let dzPre = dz * zv * (1 - zv)
                    di[j] = drPre
                    di[e + j] = dzPre
                    di[2 * e + j] = dnPre
                    dg[j] = drPre
                    dg[e + j] = dzPre
                    dg[2 * e + j] = dnPre * rv
                    dh.base[o] = d * zv
                }
            }
        }
    }

    // q (B, E), k and v (B, T, E); head h owns columns [h*hd, (h+1)*hd).
    public func queryKeyScores(q: Tensor, k: Tensor, tokens: Int, heads: Int, scale: Float, _ scores: Tensor) {
        let e = q.shape[q.shape.rank - 1], b = q.count / e, hd = e / heads
        parallel(b, grain: 1) { br in
            for i in br {
                for hh in 0..<heads {
                    for t in 0..<tokens {
                        var s: Float = 0
                        let qp = q.base + i * e + hh * hd, kp = k.base + (i * tokens + t) * e + hh * hd
                        for j in 0..<hd { s += qp[j] * kp[j] }
                        scores.base[(i * heads + hh) * tokens + t] = s * scale
                    }
                }
            }
        }
    }

    public func queryKeyScoresBackward(dScores: Tensor, q: Tensor, k: Tensor, tokens: Int, heads: Int, scale: Float,
                                       dQ: Tensor, dK: Tensor) {
        let e = q.shape[q.shape.rank - 1], b = q.count / e, hd = e / heads
        parallel(b, grain: 1) { br in
            for i in br {
                for hh in 0..<heads {
                    let qp = q.base + i * e + hh * hd, dq = dQ.base + i * e + hh * hd
                    for j in 0..<hd { dq[j] = 0 }
                    for t in 0..<tokens {
                        let g = dScores.base[(i * heads + hh) * tokens + t] * scale
                        let kp = k.base + (i * tokens + t) * e + hh * hd
                        let dk = dK.base + (i * tokens + t) * e + hh * hd
                        for j in 0..<hd {
                            dq[j] += g * kp[j]
                            dk[j] = g * qp[j]
                        }
                    }
                }
            }
        }
    }

    public func weightedValues(_ w: Tensor, v: Tensor, tokens: Int, heads: Int, _ ctx: Tensor) {
        let e = ctx.shape[ctx.shape.rank - 1], b = ctx.count / e, hd = e / heads
        parallel(b, grain: 1) { br in
            for i in br {
                for hh in 0..<heads {
                    let c = ctx.base + i * e + hh * hd
                    for j in 0..<hd { c[j] = 0 }
                    for t in 0..<tokens {
                        let wt = w.base[(i * heads + hh) * tokens + t]
                        let vp = v.base + (i * tokens + t) * e + hh * hd
                        for j in 0..<hd { c[j] += wt * vp[j] }
                    }
                }
            }
        }
    }

    public func weightedValuesBackward(dCtx: Tensor, w: Tensor, v: Tensor, tokens: Int, heads: Int, dW: Tensor, dV: Tensor) {
        let e = dCtx.shape[dCtx.shape.rank - 1], b = dCtx.count / e, hd = e / heads
        parallel(b, grain: 1) { br in
            for i in br {
                for hh in 0..<heads {
                    let dc = dCtx.base + i * e + hh * hd
                    for t in 0..<tokens {
                        let wt = w.base[(i * heads + hh) * tokens + t]
                        let vp = v.base + (i * tokens + t) * e + hh * hd
                        let dv = dV.base + (i * tokens + t) * e + hh * hd
                        var s: Float = 0
                        for j in 0..<hd {
                            s += dc[j] * vp[j]
                            dv[j] = wt * dc[j]
                        }
                        dW.base[(i * heads + hh) * tokens + t] = s
                    }
                }
            }
        }
    }

    public func meanOverHeads(_ w: Tensor, heads: Int, tokens: Int, _ out: Tensor) {
        let b = out.count / tokens
        for i in 0..<b {
            for t in 0..<tokens {
                var s: Float = 0
                for hh in 0..<heads { s += w.base[(i * heads + hh) * tokens + t] }
                out.base[i * tokens + t] = s / Float(heads)
            }
        }
    }
}
