import Foundation
import RadarCPU
import RadarEngine
import Synchronization

/// The CUDA backend: every Backend kernel as a CUDA kernel launch (Sources/CCUDAEmulator/kernels),
/// GEMMs through cuBLAS and the spectrum through cuFFT. This version drives the emulated device
/// (`EmulatedDevice`): the kernels compiled for the host, device memory the host cannot touch
/// outside driver calls, cuBLAS/cuFFT semantics from the CPU backend's OpenBLAS and FFTW. The real
/// driver (libcuda through dlopen) goes behind the same calls.
///
/// Launch shapes: elementwise kernels use blocks of 256 threads in a grid-stride loop; row
/// kernels (LayerNorm, softmax) one warp per row, 4 rows per block; per-channel and per-image
/// reductions one block per channel or image.
public final class CUDABackend: Backend, @unchecked Sendable {
    public let device: EmulatedDevice
    private let syncCount = Atomic<Int>(0)
    /// Scratch for the gradient norm: double partial sums and the clip coefficient (device).
    private var normPartials: UnsafeMutablePointer<Float>?
    private var normPartialCapacity = 0
    private let coefficient: UnsafeMutablePointer<Float>
    static let chunk = 65_536

    public init(device: EmulatedDevice = EmulatedDevice()) {
        self.device = device
        coefficient = device.allocate(1)
    }

    deinit {
        device.free(coefficient)
        if let p = normPartials { device.free(p) }
    }

    public var deviceDescription: String { "cuda (emulated device)" }

    // MARK: Memory

    public func allocate(_ count: Int) -> UnsafeMutablePointer<Float> { device.allocate(count) }
    public func release(_ address: UnsafeMutablePointer<Float>) { device.free(address) }

    public func upload(_ values: UnsafeBufferPointer<Float>, into t: Tensor) {
        precondition(values.count == t.count, "upload of \(values.count) values into \(t.shape)")
        device.inside { if let b = values.baseAddress { t.base.update(from: b, count: t.count) } }
    }

    public func download(_ t: Tensor, into host: UnsafeMutableBufferPointer<Float>) {
        precondition(host.count >= t.count, "download of \(t.shape) into \(host.count) values")
        syncCount.wrappingAdd(1, ordering: .relaxed)
        device.inside { if let b = host.baseAddress { b.update(from: t.base, count: t.count) } }
    }

    public func synchronize() { syncCount.wrappingAdd(1, ordering: .relaxed) }
    public var synchronizations: Int { syncCount.load(ordering: .relaxed) }
    public func hostAddress(_ t: Tensor) -> UnsafeMutablePointer<Float>? { nil }

    // MARK: Launch helpers

    private func grid(_ n: Int, block: Int = 256) -> Int { max(1, min((n + block - 1) / block, 4096)) }
    private func elementwise(_ name: String, _ n: Int, _ args: [KernelArg]) {
        guard n > 0 else { return }
        device.launch(name, grid: grid(n), block: 256, args)
    }
    private func rows(_ name: String, _ rows: Int, _ args: [KernelArg]) {
        guard rows > 0 else { return }
        device.launch(name, grid: (rows + 3) / 4, block: 128, args)
    }
    private func p(_ t: Tensor) -> KernelArg { .ptr(t.base) }
    private func p(_ t: Tensor?) -> KernelArg { .ptr(t?.base) }

    // MARK: cuBLAS (emulated: the CPU backend's single-threaded GEMM on device memory)

    public func gemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float, a: UnsafePointer<Float>, lda: Int,
                     b: UnsafePointer<Float>, ldb: Int, beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
        device.inside {
            device.host.gemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb,
                             beta: beta, c: c, ldc: ldc)
        }
    }

    private func gemmSerial(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float, a: UnsafePointer<Float>, lda: Int,
                            b: UnsafePointer<Float>, ldb: Int, beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
        device.host.gemmSerial(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb,
                               beta: beta, c: c, ldc: ldc)
    }

    // MARK: Elementwise

    public func fill(_ t: Tensor, _ value: Float) { elementwise("radar_fill", t.count, [p(t), .i64(t.count), .f32(value)]) }
    public func copy(_ src: Tensor, into dst: Tensor) { elementwise("radar_copy", src.count, [p(src), p(dst), .i64(src.count)]) }
    public func add(_ a: Tensor, _ b: Tensor, into out: Tensor) { elementwise("radar_add", a.count, [p(a), p(b), p(out), .i64(a.count)]) }
    public func addRowBias(_ bias: Tensor, into out: Tensor) {
        elementwise("radar_add_row_bias", out.count, [p(bias), p(out), .i64(out.count / bias.count), .i32(bias.count)])
    }
    public func addChannelBias(_ bias: Tensor, into out: Tensor) {
        let hw = out.shape[2] * out.shape[3]
        elementwise("radar_add_channel_bias", out.count, [p(bias), p(out), .i64(out.count), .i32(bias.count), .i32(hw)])
    }
    public func accumulateColumnSums(_ src: Tensor, into dst: Tensor) {
        device.launch("radar_accumulate_column_sums", grid: grid(dst.count, block: 64), block: 64,
                      [p(src), p(dst), .i32(src.count / dst.count), .i32(dst.count)])
    }
    public func reluForward(_ x: Tensor, _ y: Tensor) { elementwise("radar_relu_forward", x.count, [p(x), p(y), .i64(x.count)]) }
    public func reluBackward(_ dy: Tensor, y: Tensor, _ dx: Tensor) {
        elementwise("radar_relu_backward", dy.count, [p(dy), p(y), p(dx), .i64(dy.count)])
    }
    public func geluForward(_ x: Tensor, _ y: Tensor, cdf: Tensor) { elementwise("radar_gelu_forward", x.count, [p(x), p(y), p(cdf), .i64(x.count)]) }
    public func geluBackward(_ dy: Tensor, x: Tensor, cdf: Tensor, _ dx: Tensor) {
        elementwise("radar_gelu_backward", dy.count, [p(dy), p(x), p(cdf), p(dx), .i64(dy.count)])
    }
    public func softmaxForward(_ x: Tensor, _ y: Tensor, cols: Int) {
        rows("radar_softmax_forward", x.count / cols, [p(x), p(y), .i32(x.count / cols), .i32(cols)])
    }
    public func softmaxBackward(_ dy: Tensor, y: Tensor, _ dx: Tensor, cols: Int) {
        rows("radar_softmax_backward", dy.count / cols, [p(dy), p(y), p(dx), .i32(dy.count / cols), .i32(cols)])
    }
    public func dropoutForward(_ x: Tensor, _ y: Tensor, p drop: Float, stream: RandomStream) {
        elementwise("radar_dropout", x.count, [p(x), p(y), .i64(x.count), .f32(drop), .u32(stream.philox.key0), .u32(stream.philox.key1),
                                               .u64(stream.stream)])
    }
    public func dropoutBackward(_ dy: Tensor, _ dx: Tensor, p drop: Float, stream: RandomStream) { dropoutForward(dy, dx, p: drop, stream: stream) }

    // MARK: Normalisation

    public func layerNormForward(_ x: Tensor, gamma: Tensor, beta: Tensor, eps: Float, _ y: Tensor, mean: Tensor, rstd: Tensor) {
        let cols = gamma.count, r = x.count / cols
        rows("radar_layernorm_forward", r, [p(x), p(gamma), p(beta), .f32(eps), p(y), p(mean), p(rstd), .i32(r), .i32(cols)])
    }
    public func layerNormBackward(_ dy: Tensor, x: Tensor, gamma: Tensor, mean: Tensor, rstd: Tensor, _ dx: Tensor, dGamma: Tensor, dBeta: Tensor) {
        let cols = gamma.count, r = x.count / cols
        rows("radar_layernorm_backward_input", r, [p(dy), p(x), p(gamma), p(mean), p(rstd), p(dx), .i32(r), .i32(cols)])
        device.launch("radar_layernorm_param_grads", grid: grid(cols, block: 64), block: 64,
                      [p(dy), p(x), p(mean), p(rstd), p(dGamma), p(dBeta), .i32(r), .i32(cols)])
    }
    private func bhw(_ x: Tensor) -> (Int, Int, Int) { (x.shape[0], x.shape[1], x.count / max(x.shape[0] * x.shape[1], 1)) }
    public func channelMoments(_ x: Tensor, mean: Tensor, variance: Tensor) {
        let (b, c, hw) = bhw(x)
        device.launch("radar_channel_moments", grid: c, block: 256, [p(x), p(mean), p(variance), .i32(b), .i32(c), .i32(hw)])
    }
    public func channelNormalize(_ x: Tensor, mean: Tensor, invStd: Tensor, gamma: Tensor, beta: Tensor, _ y: Tensor) {
        let (_, c, hw) = bhw(x)
        elementwise("radar_channel_normalize", x.count, [p(x), p(mean), p(invStd), p(gamma), p(beta), p(y), .i64(x.count), .i32(c), .i32(hw)])
    }
    public func channelGradientSums(_ dy: Tensor, x: Tensor, mean: Tensor, invStd: Tensor, sumDy: Tensor, sumDyXhat: Tensor) {
        let (b, c, hw) = bhw(x)
        device.launch("radar_channel_gradient_sums", grid: c, block: 256,
                      [p(dy), p(x), p(mean), p(invStd), p(sumDy), p(sumDyXhat), .i32(b), .i32(c), .i32(hw)])
    }
    public func accumulateChannelSums(_ x: Tensor, into dst: Tensor) {
        let (b, c, hw) = bhw(x)
        device.launch("radar_accumulate_channel_sums", grid: grid(c, block: 64), block: 64, [p(x), p(dst), .i32(b), .i32(c), .i32(hw)])
    }
    public func batchNormUpdateStatistics(mean: Tensor, variance: Tensor, count: Int, eps: Float, momentum: Float, invStd: Tensor,
                                          runningMean: Tensor, runningVar: Tensor) {
        device.launch("radar_batchnorm_update_statistics", grid: grid(mean.count, block: 64), block: 64,
                      [p(mean), p(variance), .i32(mean.count), .i32(count), .f32(eps), .f32(momentum), p(invStd), p(runningMean), p(runningVar)])
    }
    public func inverseStandardDeviation(_ variance: Tensor, eps: Float, _ invStd: Tensor) {
        device.launch("radar_inverse_std", grid: grid(variance.count, block: 64), block: 64, [p(variance), .f32(eps), p(invStd), .i32(variance.count)])
    }
    public func batchNormLocalSums(mean: Tensor, variance: Tensor, count: Int, into sums: Tensor) {
        device.launch("radar_batchnorm_local_sums", grid: grid(mean.count, block: 64), block: 64,
                      [p(mean), p(variance), .i32(mean.count), .f32(Float(count)), p(sums)])
    }
    public func batchNormGlobalMoments(_ sums: Tensor, channels: Int, mean: Tensor, variance: Tensor) {
        device.launch("radar_batchnorm_global_moments", grid: grid(channels, block: 64), block: 64, [p(sums), .i32(channels), p(mean), p(variance)])
    }
    public func batchNormInputGradient(_ dy: Tensor, x: Tensor, mean: Tensor, invStd: Tensor, gamma: Tensor, sumDy: Tensor,
                                       sumDyXhat: Tensor, count: Int, _ dx: Tensor) {
        let (_, c, hw) = bhw(x)
        elementwise("radar_batchnorm_input_gradient", x.count,
                    [p(dy), p(x), p(mean), p(invStd), p(gamma), p(sumDy), p(sumDyXhat), .i32(count), p(dx), .i64(x.count), .i32(c), .i32(hw)])
    }

    // MARK: Convolution and attention: layout kernels around cuBLAS products

    public func convolutionWorkspaceCount(_ g: ConvolutionGeometry) -> Int { g.columnCount }
    public func convolutionBackwardScratchCount(_ g: ConvolutionGeometry, inputGradient: Bool) -> Int {
        g.backwardScratchCount(inputGradient: inputGradient)
    }
    private func geometryArgs(_ g: ConvolutionGeometry) -> [KernelArg] {
        [.i32(g.batch), .i32(g.inChannels), .i32(g.height), .i32(g.width), .i32(g.kernel), .i32(g.stride), .i32(g.padding),
         .i32(g.outHeight), .i32(g.outWidth)]
    }

    public func convolutionForward(_ x: Tensor, weight: Tensor, bias: Tensor?, _ g: ConvolutionGeometry, workspace: Tensor, _ y: Tensor) {
        let ckk = g.patchSize, hw = g.outHeight * g.outWidth
        elementwise("radar_im2col", workspace.count, [p(x), p(workspace)] + geometryArgs(g))
        device.inside {  // cublasSgemmStridedBatched over the images
            for i in 0..<g.batch {
                gemmSerial(transA: false, transB: false, m: g.outChannels, n: hw, k: ckk, alpha: 1, a: weight.base, lda: ckk,
                           b: workspace.base + i * ckk * hw, ldb: hw, beta: 0, c: y.base + i * g.outChannels * hw, ldc: hw)
            }
        }
        if let bias { addChannelBias(bias, into: y) }
    }

    public func convolutionBackward(_ dy: Tensor, weight: Tensor, _ g: ConvolutionGeometry, workspace: Tensor, scratch: Tensor,
                                    dWeight: Tensor, dBias: Tensor?, dx: Tensor?) {
        let ckk = g.patchSize, hw = g.outHeight * g.outWidth, cout = g.outChannels
        let parts = scratch.base, dcol = scratch.base + g.batch * cout * ckk
        device.inside {
            for i in 0..<g.batch {
                let dyi = dy.base + i * cout * hw
                gemmSerial(transA: false, transB: true, m: cout, n: ckk, k: hw, alpha: 1, a: dyi, lda: hw,
                           b: workspace.base + i * ckk * hw, ldb: hw, beta: 0, c: parts + i * cout * ckk, ldc: ckk)
                if dx != nil {
                    gemmSerial(transA: true, transB: false, m: ckk, n: hw, k: cout, alpha: 1, a: weight.base, lda: ckk, b: dyi, ldb: hw,
                               beta: 0, c: dcol + i * ckk * hw, ldc: hw)
                }
            }
        }
        if let dx { elementwise("radar_col2im", dx.count, [.ptr(dcol), p(dx)] + geometryArgs(g)) }
        elementwise("radar_sum_parts", cout * ckk, [.ptr(parts), .i32(g.batch), .i64(cout * ckk), p(dWeight)])
        if let dBias { accumulateChannelSums(dy, into: dBias) }
    }

    public func attentionForward(qkv: Tensor, heads h: Int, scale: Float, scores: Tensor, probs: Tensor, merged: Tensor) {
        let b = qkv.shape[0], n = qkv.shape[1], d = qkv.shape[2] / 3, hd = d / h
        device.inside {
            for i in 0..<(b * h) {
                let bi = i / h, hi = i % h, base = qkv.base + bi * n * 3 * d + hi * hd
                gemmSerial(transA: false, transB: true, m: n, n: n, k: hd, alpha: scale, a: base, lda: 3 * d, b: base + d, ldb: 3 * d,
                           beta: 0, c: scores.base + i * n * n, ldc: n)
            }
        }
        softmaxForward(scores, probs, cols: n)
        device.inside {
            for i in 0..<(b * h) {
                let bi = i / h, hi = i % h
                gemmSerial(transA: false, transB: false, m: n, n: hd, k: n, alpha: 1, a: probs.base + i * n * n, lda: n,
                           b: qkv.base + bi * n * 3 * d + 2 * d + hi * hd, ldb: 3 * d, beta: 0, c: merged.base + bi * n * d + hi * hd, ldc: d)
            }
        }
    }

    public func attentionBackward(dMerged: Tensor, qkv: Tensor, probs: Tensor, heads h: Int, scale: Float, dProbs: Tensor,
                                  dScores: Tensor, dQKV: Tensor) {
        let b = qkv.shape[0], n = qkv.shape[1], d = qkv.shape[2] / 3, hd = d / h
        device.inside {
            for i in 0..<(b * h) {
                let bi = i / h, hi = i % h
                let v = qkv.base + bi * n * 3 * d + 2 * d + hi * hd, dO = dMerged.base + bi * n * d + hi * hd
                gemmSerial(transA: false, transB: true, m: n, n: n, k: hd, alpha: 1, a: dO, lda: d, b: v, ldb: 3 * d, beta: 0,
                           c: dProbs.base + i * n * n, ldc: n)
                gemmSerial(transA: true, transB: false, m: n, n: hd, k: n, alpha: 1, a: probs.base + i * n * n, lda: n, b: dO, ldb: d,
                           beta: 0, c: dQKV.base + bi * n * 3 * d + 2 * d + hi * hd, ldc: 3 * d)
            }
        }
        softmaxBackward(dProbs, y: probs, dScores, cols: n)
        device.inside {
            for i in 0..<(b * h) {
                let bi = i / h, hi = i % h
                let q = qkv.base + bi * n * 3 * d + hi * hd, dq = dQKV.base + bi * n * 3 * d + hi * hd, ds = dScores.base + i * n * n
                gemmSerial(transA: false, transB: false, m: n, n: hd, k: n, alpha: scale, a: ds, lda: n, b: q + d, ldb: 3 * d, beta: 0,
                           c: dq, ldc: 3 * d)
                gemmSerial(transA: true, transB: false, m: n, n: hd, k: n, alpha: scale, a: ds, lda: n, b: q, ldb: 3 * d, beta: 0,
                           c: dq + d, ldc: 3 * d)
            }
        }
    }

    // MARK: Pooling, tokens, columns

    public func globalAvgPoolForward(_ x: Tensor, _ y: Tensor) {
        let (b, c, hw) = bhw(x)
        device.launch("radar_global_avg_pool_forward", grid: grid(b * c, block: 64), block: 64, [p(x), p(y), .i32(b * c), .i32(hw)])
    }
    public func globalAvgPoolBackward(_ dy: Tensor, _ dx: Tensor) {
        let (_, _, hw) = bhw(dx)
        elementwise("radar_global_avg_pool_backward", dx.count, [p(dy), p(dx), .i64(dx.count), .i32(hw)])
    }
    public func tokenMeanMaxForward(_ x: Tensor, mean: Tensor, max: Tensor, argmax: Tensor) {
        let (b, n, d) = (x.shape[0], x.shape[1], x.shape[2])
        elementwise("radar_token_mean_max", b * d, [p(x), p(mean), p(max), p(argmax), .i32(b), .i32(n), .i32(d)])
    }
    public func tokenMeanMaxBackward(dMean: Tensor, dMax: Tensor, argmax: Tensor, _ dx: Tensor) {
        let (b, n, d) = (dx.shape[0], dx.shape[1], dx.shape[2])
        elementwise("radar_token_mean_max_backward", dx.count, [p(dMean), p(dMax), p(argmax), p(dx), .i32(b), .i32(n), .i32(d)])
    }
    public func transposeLastTwo(_ x: Tensor, _ y: Tensor) {
        elementwise("radar_transpose_last_two", x.count, [p(x), p(y), .i32(x.shape[0]), .i32(x.shape[1]), .i32(x.shape[2])])
    }
    public func copyColumns(_ src: Tensor, srcCols: Int, into dst: Tensor, dstCols: Int, offset: Int) {
        elementwise("radar_copy_columns", src.count, [p(src), .i32(srcCols), p(dst), .i32(dstCols), .i32(offset), .i64(src.count / srcCols)])
    }
    public func sliceColumns(_ src: Tensor, srcCols: Int, offset: Int, into dst: Tensor, dstCols: Int) {
        elementwise("radar_slice_columns", dst.count, [p(src), .i32(srcCols), .i32(offset), p(dst), .i32(dstCols), .i64(dst.count / dstCols)])
    }

    // MARK: Recurrent and attention pieces

    public func gruGatesForward(gi: Tensor, gh: Tensor, h: Tensor, hNew: Tensor, r: Tensor, z: Tensor, n: Tensor) {
        let e = h.shape[h.shape.rank - 1]
        elementwise("radar_gru_gates_forward", h.count, [p(gi), p(gh), p(h), p(hNew), p(r), p(z), p(n), .i32(h.count / e), .i32(e)])
    }
    public func gruGatesBackward(dhNew: Tensor, gh: Tensor, h: Tensor, r: Tensor, z: Tensor, n: Tensor, dgi: Tensor, dgh: Tensor, dh: Tensor) {
        let e = h.shape[h.shape.rank - 1]
        elementwise("radar_gru_gates_backward", h.count,
                    [p(dhNew), p(gh), p(h), p(r), p(z), p(n), p(dgi), p(dgh), p(dh), .i32(h.count / e), .i32(e)])
    }
    public func queryKeyScores(q: Tensor, k: Tensor, tokens: Int, heads: Int, scale: Float, _ scores: Tensor) {
        let e = q.shape[q.shape.rank - 1]
        elementwise("radar_query_key_scores", scores.count, [p(q), p(k), p(scores), .i32(q.count / e), .i32(tokens), .i32(heads), .i32(e), .f32(scale)])
    }
    public func weightedValues(_ w: Tensor, v: Tensor, tokens: Int, heads: Int, _ ctx: Tensor) {
        let e = ctx.shape[ctx.shape.rank - 1]
        elementwise("radar_weighted_values", ctx.count, [p(w), p(v), p(ctx), .i32(ctx.count / e), .i32(tokens), .i32(heads), .i32(e)])
    }
    public func weightedValuesBackward(dCtx: Tensor, w: Tensor, v: Tensor, tokens: Int, heads: Int, dW: Tensor, dV: Tensor) {
        let e = dCtx.shape[dCtx.shape.rank - 1]
        elementwise("radar_weighted_values_backward", w.count,
                    [p(dCtx), p(w), p(v), p(dW), p(dV), .i32(dCtx.count / e), .i32(tokens), .i32(heads), .i32(e)])
    }
    public func queryKeyScoresBackward(dScores: Tensor, q: Tensor, k: Tensor, tokens: Int, heads: Int, scale: Float, dQ: Tensor, dK: Tensor) {
        let e = q.shape[q.shape.rank - 1]
        elementwise("radar_query_key_scores_backward", q.count,
                    [p(dScores), p(q), p(k), p(dQ), p(dK), .i32(q.count / e), .i32(tokens), .i32(heads), .i32(e), .f32(scale)])
    }
    public func meanOverHeads(_ w: Tensor, heads: Int, tokens: Int, _ out: Tensor) {
        elementwise("radar_mean_over_heads", out.count, [p(w), p(out), .i32(out.count / tokens), .i32(heads), .i32(tokens)])
    }

    // MARK: Losses and fusion

    public func smoothLabels(_ labels: Tensor, smoothing: Float, _ target: Tensor) {
        elementwise("radar_smooth_labels", labels.count, [p(labels), p(target), .i32(labels.count), .f32(smoothing)])
    }
    public func binaryCrossEntropyWithLogits(_ logits: Tensor, targets: Tensor, scale: Float, dLogits: Tensor, loss: Tensor, weight: Float) {
        device.launch("radar_bce_with_logits", grid: 1, block: 256,
                      [p(logits), p(targets), .i32(logits.count), .f32(scale), p(dLogits), p(loss), .f32(weight)])
    }
    public func cosineMarginPenalty(_ a: Tensor, _ b: Tensor, margin: Float, scale: Float, da: Tensor, db: Tensor, loss: Tensor, weight: Float) {
        let e = a.shape.last
        device.launch("radar_cosine_margin_penalty", grid: 1, block: 256,
                      [p(a), p(b), .i32(a.count / e), .i32(e), .f32(margin), .f32(scale), p(da), p(db), p(loss), .f32(weight)])
    }
    public func axpy(_ a: Float, _ x: Tensor, _ y: Tensor) { elementwise("radar_axpy", x.count, [.f32(a), p(x), p(y), .i64(x.count)]) }
    public func flagNonFinite(_ x: Tensor, into flag: Tensor) { elementwise("radar_flag_non_finite", x.count, [p(x), .i64(x.count), p(flag)]) }
    public func gatedFusionForward(gate: Tensor, reasoning: Tensor, external: Tensor, final: Tensor, prob: Tensor, alphaOut: Tensor) {
        elementwise("radar_gated_fusion_forward", final.count, [p(gate), p(reasoning), p(external), p(final), p(prob), p(alphaOut), .i32(final.count)])
    }
    public func gatedFusionBackward(dFinal: Tensor, gate: Tensor, reasoning: Tensor, external: Tensor, dReasoning: Tensor, dExternal: Tensor,
                                    dGate: Tensor) {
        device.launch("radar_gated_fusion_backward", grid: 1, block: 256,
                      [p(dFinal), p(gate), p(reasoning), p(external), p(dReasoning), p(dExternal), p(dGate), .i32(dFinal.count)])
    }
    public func meanAbsSigmoidDifference(_ a: Tensor, _ b: Tensor, into out: Tensor) {
        device.launch("radar_mean_abs_sigmoid_difference", grid: 1, block: 256, [p(a), p(b), .i32(a.count), p(out)])
    }

    // MARK: Optimizer

    public func clipGradientNorm(_ grads: Tensor, ranges: [Range<Int>], maxNorm: Float, nonFinite: Tensor, norm: Tensor, gate: Tensor) {
        var parts = 0
        for r in ranges { parts += (r.count + CUDABackend.chunk - 1) / CUDABackend.chunk }
        if parts * 2 > normPartialCapacity {  // doubles in float-sized device memory
            if let old = normPartials { device.free(old) }
            normPartials = device.allocate(parts * 2)
            normPartialCapacity = parts * 2
        }
        let partial = UnsafeMutableRawPointer(normPartials!).bindMemory(to: Double.self, capacity: parts)
        var at = 0
        for r in ranges where r.count > 0 {
            let blocks = (r.count + CUDABackend.chunk - 1) / CUDABackend.chunk
            device.launch("radar_sum_squares_partial", grid: blocks, block: 256,
                          [.ptr(grads.base + r.lowerBound), .i64(r.count), .i64(CUDABackend.chunk), .doubles(partial + at)])
            at += blocks
        }
        device.launch("radar_clip_coefficient", grid: 1, block: 1,
                      [.doubles(partial), .i32(at), .f32(maxNorm), p(nonFinite), p(norm), p(gate), .ptr(coefficient)])
        for r in ranges where r.count > 0 {
            elementwise("radar_scale_by_scalar", r.count, [.ptr(grads.base + r.lowerBound), .i64(r.count), .ptr(coefficient)])
        }
    }

    public func adamW(params: Tensor, grads: Tensor, expAvg: Tensor, expAvgSq: Tensor, lr: Float, beta1: Float, beta2: Float, eps: Float,
                      weightDecay: Float, step: Int, gate: Tensor) {
        // The step's scalars in double, rounded once, as the CPU backend (and Python floats) do.
        let bc1 = 1 - Foundation.pow(Double(beta1), Double(step)), bc2 = 1 - Foundation.pow(Double(beta2), Double(step))
        let stepSize = Float(Double(lr) / bc1), bc2Sqrt = Float(bc2.squareRoot()), decay = Float(1 - Double(lr) * Double(weightDecay))
        elementwise("radar_adamw", params.count, [p(params), p(grads), p(expAvg), p(expAvgSq), .i64(params.count), .f32(beta1), .f32(beta2),
                                                  .f32(eps), .f32(stepSize), .f32(bc2Sqrt), .f32(decay), p(gate)])
    }

    public func scale(_ x: Tensor, by s: Float) { elementwise("radar_scale", x.count, [p(x), .i64(x.count), .f32(s)]) }

    // MARK: Fixed image transforms

    public func grayscale(_ x: Tensor, _ y: Tensor) {
        elementwise("radar_grayscale", y.count, [p(x), p(y), .i32(x.shape[0]), .i32(x.shape[2] * x.shape[3])])
    }
    public func sobelMagnitude(_ x: Tensor, _ y: Tensor) {
        device.launch("radar_sobel_magnitude", grid: x.shape[0], block: 256, [p(x), p(y), .i32(x.shape[2]), .i32(x.shape[3])])
    }
    public func resizeBilinear(_ x: Tensor, _ y: Tensor) {
        elementwise("radar_resize_bilinear", y.count, [p(x), p(y), .i32(x.shape[0] * x.shape[1]), .i32(x.shape[2]), .i32(x.shape[3]),
                                                       .i32(y.shape[2]), .i32(y.shape[3])])
    }
    /// cuFFT (emulated: the CPU backend's FFTW plans on device memory).
    public func fftMagnitudeShifted(_ x: Tensor, _ y: Tensor) { device.inside { device.host.fftMagnitudeShifted(x, y) } }
    public func highPassLogNormalize(_ x: Tensor, mask: Tensor, _ y: Tensor) {
        device.launch("radar_high_pass_log_normalize", grid: x.count / mask.count, block: 256, [p(x), p(mask), p(y), .i32(mask.count)])
    }
}
