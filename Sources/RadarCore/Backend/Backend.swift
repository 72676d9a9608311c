/// The seam between layers and hardware. Layers call these named kernels and never loop over
/// memory themselves, so another backend (CUDA later) can take over by implementing this
/// protocol; layers, model and training loop stay as they are.
///
/// Conventions: row-major storage; "rows x cols" means `rows` contiguous vectors of `cols`.
/// Kernels named `...Backward` *write* input gradients and *accumulate* (+=) parameter gradients.
public protocol Backend: AnyObject {
    /// Threads the backend spreads work over; results never depend on it.
    var threads: Int { get }

    // MARK: Matrix products (every one goes through BLAS on the CPU backend)

    /// C = alpha * op(A) * op(B) + beta * C, with op(A) m x k, op(B) k x n, C m x n.
    func gemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
              a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
              beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int)

    /// `count` independent products; operand i starts `stride*` floats after operand i-1.
    func gemmBatched(count: Int, transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                     a: UnsafePointer<Float>, lda: Int, strideA: Int,
                     b: UnsafePointer<Float>, ldb: Int, strideB: Int,
                     beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int, strideC: Int)

    // MARK: Elementwise and reductions

    func fill(_ t: Tensor, _ value: Float)
    func copy(_ src: Tensor, into dst: Tensor)
    /// out = a + b (out may alias a or b).
    func add(_ a: Tensor, _ b: Tensor, into out: Tensor)
    /// out[r, c] += bias[c] for an out of `rows x bias.count`.
    func addRowBias(_ bias: Tensor, into out: Tensor)
    /// out[b, c, ...] += bias[c] for an out of (B, C, H, W).
    func addChannelBias(_ bias: Tensor, into out: Tensor)
    /// dst[c] += sum_r src[r, c] for a src of rows x dst.count (bias gradients).
    func accumulateColumnSums(_ src: Tensor, into dst: Tensor)
    func reluForward(_ x: Tensor, _ y: Tensor)
    func reluBackward(_ dy: Tensor, y: Tensor, _ dx: Tensor)
    /// Exact GELU, y = x Phi(x) with Phi(x) = 0.5 (1 + erf(x / sqrt 2)); Phi is kept in `cdf` so
    /// backward needs no second erf.
    func geluForward(_ x: Tensor, _ y: Tensor, cdf: Tensor)
    /// dx = dy (Phi(x) + x phi(x)).
    func geluBackward(_ dy: Tensor, x: Tensor, cdf: Tensor, _ dx: Tensor)
    /// Softmax over the last `cols` of each row.
    func softmaxForward(_ x: Tensor, _ y: Tensor, cols: Int)
    func softmaxBackward(_ dy: Tensor, y: Tensor, _ dx: Tensor, cols: Int)
    /// Inverted dropout: y = x * keep / (1 - p), keep = uniform(stream, i) >= p.
    func dropoutForward(_ x: Tensor, _ y: Tensor, p: Float, stream: RandomStream)
    func dropoutBackward(_ dy: Tensor, _ dx: Tensor, p: Float, stream: RandomStream)

    // MARK: Normalisation

    /// Per row of x (rows x cols): y = (x - mean) * rstd * gamma + beta; saves mean and rstd.
    func layerNormForward(_ x: Tensor, gamma: Tensor, beta: Tensor, eps: Float,
                          _ y: Tensor, mean: Tensor, rstd: Tensor)
    func layerNormBackward(_ dy: Tensor, x: Tensor, gamma: Tensor, mean: Tensor, rstd: Tensor,
                           _ dx: Tensor, dGamma: Tensor, dBeta: Tensor)
    /// Per channel of x (B, C, H, W): mean and biased variance over (B, H, W).
    func channelMoments(_ x: Tensor, mean: Tensor, variance: Tensor)
    /// y = (x - mean[c]) * invStd[c] * gamma[c] + beta[c].
    func channelNormalize(_ x: Tensor, mean: Tensor, invStd: Tensor, gamma: Tensor, beta: Tensor, _ y: Tensor)
    /// Per-channel sums of dy and dy * xhat over (B, H, W), written (not accumulated).
    func channelGradientSums(_ dy: Tensor, x: Tensor, mean: Tensor, invStd: Tensor,
                             sumDy: Tensor, sumDyXhat: Tensor)
    /// dst[c] += sum over (B, H, W) of x (B, C, H, W) (convolution bias gradients).
    func accumulateChannelSums(_ x: Tensor, into dst: Tensor)
    /// From batch mean and biased variance over `count` elements per channel: invStd, and the
    /// running statistics moved by `momentum` (running variance with the unbiased estimate).
    func batchNormUpdateStatistics(mean: Tensor, variance: Tensor, count: Int, eps: Float, momentum: Float,
                                   invStd: Tensor, runningMean: Tensor, runningVar: Tensor)
    /// invStd = 1 / sqrt(variance + eps).
    func inverseStandardDeviation(_ variance: Tensor, eps: Float, _ invStd: Tensor)
    /// SyncBatchNorm: [count*mean (C), count*(var + mean^2) (C), count] into `sums`.
    func batchNormLocalSums(mean: Tensor, variance: Tensor, count: Int, into sums: Tensor)
    /// SyncBatchNorm: global mean and biased variance from all-reduced sums.
    func batchNormGlobalMoments(_ sums: Tensor, channels: Int, mean: Tensor, variance: Tensor)
    /// Train-mode BatchNorm input gradient, given the (possibly all-reduced) sums over `count`
    /// elements per channel: dx = gamma invStd (dy - sumDy/count - xhat sumDyXhat/count).
    /// Eval mode passes count = 0, which means dx = gamma invStd dy.
    func batchNormInputGradient(_ dy: Tensor, x: Tensor, mean: Tensor, invStd: Tensor, gamma: Tensor,
                                sumDy: Tensor, sumDyXhat: Tensor, count: Int, _ dx: Tensor)

    // MARK: Convolution helpers

    /// x (C, H, W) of one image -> col (C*k*k, Ho*Wo).
    func im2col(_ x: UnsafePointer<Float>, channels: Int, height: Int, width: Int, kernel: Int,
                stride: Int, padding: Int, _ col: UnsafeMutablePointer<Float>)
    /// Scatter-add of col (C*k*k, Ho*Wo) into dx (C, H, W), which must be zeroed first.
    func col2im(_ col: UnsafePointer<Float>, channels: Int, height: Int, width: Int, kernel: Int,
                stride: Int, padding: Int, _ dx: UnsafeMutablePointer<Float>)
    /// Runs `body(i)` for i in 0..<count on the backend's threads. Kernels built from serial
    /// pieces (a per-image convolution, one attention head) use it; `body` must call only the
    /// `serial*` kernels.
    func forEach(_ count: Int, _ body: (Int) -> Void)
    /// A single-threaded GEMM for use inside `forEach`.
    func serialGemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                    a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                    beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int)
    /// dst[i] = sum_j parts[j * n + i] for j in 0..<partCount, summed in order j = 0, 1, ...
    func sumParts(_ parts: UnsafePointer<Float>, partCount: Int, n: Int, accumulateInto dst: UnsafeMutablePointer<Float>)

    // MARK: Pooling, token reductions, concatenation

    /// x (B, C, H, W) -> y (B, C): mean over H*W.
    func globalAvgPoolForward(_ x: Tensor, _ y: Tensor)
    func globalAvgPoolBackward(_ dy: Tensor, _ dx: Tensor)
    /// x (B, N, D) -> mean (B, D), max (B, D), argmax (B, D) stored as Float indices.
    func tokenMeanMaxForward(_ x: Tensor, mean: Tensor, max: Tensor, argmax: Tensor)
    func tokenMeanMaxBackward(dMean: Tensor, dMax: Tensor, argmax: Tensor, _ dx: Tensor)
    /// x (B, R, C) -> y (B, C, R).
    func transposeLastTwo(_ x: Tensor, _ y: Tensor)
    /// Copies src (rows x srcCols) into columns [offset, offset+srcCols) of dst (rows x dstCols).
    func copyColumns(_ src: Tensor, srcCols: Int, into dst: Tensor, dstCols: Int, offset: Int)
    /// The reverse: dst (rows x dstCols) = columns [offset, offset+dstCols) of src (rows x srcCols).
    func sliceColumns(_ src: Tensor, srcCols: Int, offset: Int, into dst: Tensor, dstCols: Int)

    // MARK: Recurrent and attention pieces

    /// GRUCell gates from gi = x W_ih^T + b_ih and gh = h W_hh^T + b_hh, both (B, 3E) in r, z, n
    /// order. Writes h' and saves r, z, n (each (B, E)).
    func gruGatesForward(gi: Tensor, gh: Tensor, h: Tensor, hNew: Tensor, r: Tensor, z: Tensor, n: Tensor)
    /// From dh' writes dgi, dgh (B, 3E) and the direct part of dh (B, E).
    func gruGatesBackward(dhNew: Tensor, gh: Tensor, h: Tensor, r: Tensor, z: Tensor, n: Tensor,
                          dgi: Tensor, dgh: Tensor, dh: Tensor)
    /// One query per batch row against `tokens` keys: scores (B, H, T) = scale * q_h . k_{t,h}.
    func queryKeyScores(q: Tensor, k: Tensor, tokens: Int, heads: Int, scale: Float, _ scores: Tensor)
    /// ctx (B, E) with ctx_h = sum_t w (B, H, T) v_{t,h}.
    func weightedValues(_ w: Tensor, v: Tensor, tokens: Int, heads: Int, _ ctx: Tensor)
    func weightedValuesBackward(dCtx: Tensor, w: Tensor, v: Tensor, tokens: Int, heads: Int, dW: Tensor, dV: Tensor)
    func queryKeyScoresBackward(dScores: Tensor, q: Tensor, k: Tensor, tokens: Int, heads: Int, scale: Float,
                                dQ: Tensor, dK: Tensor)
    /// w (B, H, T) -> mean over heads (B, T).
    func meanOverHeads(_ w: Tensor, heads: Int, tokens: Int, _ out: Tensor)

    // MARK: Losses (each returns the batch mean and writes scale * d(mean)/d(input))

    /// target = label (1 - s) + s / 2.
    func smoothLabels(_ labels: Tensor, smoothing: Float, _ target: Tensor)
    /// BCEWithLogits: max(x, 0) - x t + log(1 + exp(-|x|)), mean over the batch. Writes
    /// dLogits[i] = scale * (sigmoid(x_i) - t_i) / n.
    func binaryCrossEntropyWithLogits(_ logits: Tensor, targets: Tensor, scale: Float, dLogits: Tensor) -> Double
    /// mean_b ReLU(|cos(a_b, b_b)| - margin) with vectors divided by (norm + 1e-8); zero (and zero
    /// gradient) unless every norm exceeds 1e-6. Writes scale * gradient into da, db.
    func cosineMarginPenalty(_ a: Tensor, _ b: Tensor, margin: Float, scale: Float, da: Tensor, db: Tensor) -> Double

    // MARK: Gated fusion

    /// alpha = sigmoid(gate[0]); final = alpha r + (1 - alpha) e; prob = sigmoid(final); alphaOut
    /// is alpha broadcast to final's shape.
    func gatedFusionForward(gate: Tensor, reasoning: Tensor, external: Tensor, final: Tensor, prob: Tensor, alphaOut: Tensor)
    /// Writes dReasoning, dExternal; accumulates the gate logit's gradient into dGate[0].
    func gatedFusionBackward(dFinal: Tensor, gate: Tensor, reasoning: Tensor, external: Tensor,
                             dReasoning: Tensor, dExternal: Tensor, dGate: Tensor)
    /// mean |sigmoid(a) - sigmoid(b)|.
    func meanAbsSigmoidDifference(_ a: Tensor, _ b: Tensor) -> Float

    // MARK: Optimizer

    /// One AdamW step over n parameters, exactly as torch.optim.AdamW (decoupled weight decay
    /// first, then the bias-corrected Adam update). `step` counts from 1.
    func adamW(params: UnsafeMutablePointer<Float>, grads: UnsafePointer<Float>, expAvg: UnsafeMutablePointer<Float>,
               expAvgSq: UnsafeMutablePointer<Float>, count: Int, lr: Float, beta1: Float, beta2: Float,
               eps: Float, weightDecay: Float, step: Int)
    /// sum of squares of n values, accumulated in Double in a fixed order.
    func sumOfSquares(_ x: UnsafePointer<Float>, count: Int) -> Double
    /// x *= s.
    func scale(_ x: UnsafeMutablePointer<Float>, count: Int, by s: Float)

    // MARK: Fixed image transforms (no gradient)

    /// x (B, 3, H, W) -> (B, 1, H, W) with 0.299 R + 0.587 G + 0.114 B.
    func grayscale(_ x: Tensor, _ y: Tensor)
    /// Sobel magnitude with zero padding, each image divided by its max when that max > 1e-8.
    func sobelMagnitude(_ x: Tensor, _ y: Tensor)
    /// Bilinear resize (B, C, H, W) -> (B, C, h, w), align_corners false, no antialias.
    func resizeBilinear(_ x: Tensor, _ y: Tensor)
    /// |FFT2(x)| with both spatial axes fftshifted, x and y (B, 1, F, F).
    func fftMagnitudeShifted(_ x: Tensor, _ y: Tensor)
    /// y = minmax_per_image(log1p(x * mask)), mask (F, F).
    func highPassLogNormalize(_ x: Tensor, mask: Tensor, _ y: Tensor)
}
