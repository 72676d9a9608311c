/// The seam between the engine and hardware. The backend owns every byte of tensor memory
/// (parameters, gradients, optimizer moments, activations) and runs every kernel on it; layers,
/// model and training loop only hold `Tensor` values (a device address plus a shape) and call the
/// named kernels below. Host code reaches tensor memory only through `upload` and `download`, at
/// named points (checkpoint save/load, initialisation, metrics gathering, hashing, logging).
///
/// Execution model: kernels may run asynchronously in submission order (one stream). `download`
/// and `synchronize` are the only calls that wait for them; each is a host synchronisation and is
/// counted in `synchronizations`, so a test can show that a micro-batch has none.
///
/// Conventions: row-major storage; "rows x cols" means `rows` contiguous vectors of `cols`.
/// Kernels named `...Backward` *write* input gradients and *accumulate* (+=) parameter gradients.
/// Scalars that a step produces (loss terms, norms, flags) are one-element tensors in device
/// memory, written or accumulated by kernels and read by later kernels, never returned.
public protocol Backend: AnyObject {
    /// What the backend runs on, for logs and benchmark records (e.g. "cpu (2 threads)").
    var deviceDescription: String { get }
    /// The PCI address of the GPU it runs on (`CPUPlacement`); nil for the CPU and the emulated device.
    var devicePCIBusId: String? { get }
    /// The kernel choices a run's speed depends on, for its start line (the CUDA backend's attention
    /// path and build, where Linear biases are added); nil where there is no choice (the CPU).
    var kernelSettings: String? { get }
    /// Whether backward recomputes the attention probabilities and GELU's CDF instead of keeping
    /// them from forward (`ExecutionContext.recomputeInBackward` starts from it). A GPU says yes:
    /// memory bounds its batch, and the work is one small product per block and elementwise
    /// passes (not yet timed on a GPU: `radar bench step --recompute-in-backward false` is the
    /// comparison). The CPU says no: time bounds its step (recomputing cost it about 6% on the
    /// full config) and memory is plentiful. Either way the results are the same bits.
    var recomputesInBackward: Bool { get }

    /// Whether the activations that only matrix products read (a ViT block's LayerNorm outputs,
    /// qkv, the merged heads, fc1's output and GELU's) are kept from forward to backward as bf16
    /// tensors (`ExecutionContext.bf16Activations` starts from it), as PyTorch AMP keeps the bf16
    /// copies of its GEMM inputs. The CUDA and CPU backends say yes in bf16 precision, where every
    /// product rounds its operands to bf16 anyway, so keeping them rounded changes no product.
    /// Every backend runs bf16 activations when asked (`product`, `convert`, attention's qkv).
    var storesBFloat16Activations: Bool { get }

    /// Whether every product rounds its fp32 operands to bf16 (the CUDA backend in bf16
    /// precision). An operand several products read (a Linear's output gradient) can then be
    /// rounded once into a bf16 tensor, with the same bits and one conversion fewer (the CUDA
    /// and CPU backends in bf16 precision).
    var roundsProductOperandsToBFloat16: Bool { get }

    // MARK: Memory

    /// Device memory for `count` floats (at least one), 64-byte aligned and zero-filled.
    func allocate(_ count: Int) -> UnsafeMutablePointer<Float>
    /// Frees memory from `allocate`.
    func release(_ address: UnsafeMutablePointer<Float>)
    /// Host -> device: `values.count` must equal `t.count`.
    func upload(_ values: UnsafeBufferPointer<Float>, into t: Tensor)
    /// Device -> host, after all queued work (a host synchronisation).
    func download(_ t: Tensor, into host: UnsafeMutableBufferPointer<Float>)
    /// Waits for all queued work (a host synchronisation).
    func synchronize()
    /// Host synchronisations (`download` and `synchronize` calls) since the backend was made.
    var synchronizations: Int { get }
    /// The host address of `t`'s memory when the host may use it directly (the CPU backend's
    /// memory is host memory), nil when it must go through `download`/`upload`.
    func hostAddress(_ t: Tensor) -> UnsafeMutablePointer<Float>?

    // MARK: Matrix products (every one goes through BLAS on the CPU backend)

    /// C = alpha * op(A) * op(B) + beta * C, with op(A) m x k, op(B) k x n, C m x n.
    func gemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
              a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
              beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int)


    /// The same on whole tensors, where A, B and C may each be bf16: a bf16 operand is read as
    /// its exact fp32 value (and a bf16-precision product uses it as it is); a bf16 C is read as
    /// its fp32 value where beta is not 0 and gets the fp32 result rounded once (nearest even):
    /// the bits of an fp32 C converted (on a GPU, cuBLAS writes it from its fp32 accumulators).
    func product(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float, a: Tensor, lda: Int,
                 b: Tensor, ldb: Int, beta: Float, c: Tensor, ldc: Int)
    /// C = alpha * op(A) * op(B) + bias on every row of C (m x n, bias n fp32), A, B and C as in
    /// `product`: a Linear's forward in torch.addmm's order, the bias set in C and the product
    /// accumulated onto it (beta 1). One pass over C fewer than a product and `addRowBias`. A
    /// bf16 C is set to the bias rounded to bf16, as autocast's addmm takes a bf16 bias: C =
    /// bf16(alpha op(A) op(B) + bf16(bias)), the sum in fp32. With a `residual` (an fp32 C only,
    /// of C's layout; it may be C itself), C is set to residual + bias first: C = (residual + bias)
    /// + alpha op(A) op(B), a residual block's sum with no add pass after it.
    func biasedProduct(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float, a: Tensor, lda: Int,
                       b: Tensor, ldb: Int, bias: Tensor, residual: Tensor?, c: Tensor, ldc: Int)
    /// dst = src in dst's dtype (equal counts): fp32 -> bf16 rounds to nearest even (NaN stays
    /// NaN), bf16 -> fp32 is exact, equal dtypes copy.
    func convert(_ src: Tensor, into dst: Tensor)

    // MARK: Elementwise and reductions

    func fill(_ t: Tensor, _ value: Float)
    func copy(_ src: Tensor, into dst: Tensor)
    /// out = a + b (out may alias a or b).
    func add(_ a: Tensor, _ b: Tensor, into out: Tensor)
    /// out[r, c] += bias[c] for an out of `rows x bias.count`.
    func addRowBias(_ bias: Tensor, into out: Tensor)
    /// out[b, c, ...] += bias[c] for an out of (B, C, H, W).
    func addChannelBias(_ bias: Tensor, into out: Tensor)
    /// dst[c] += sum_r src[r, c] for a src of rows x dst.count (bias gradients). src may be bf16
    /// (read as its exact fp32 values, summed in fp32).
    func accumulateColumnSums(_ src: Tensor, into dst: Tensor)
    func reluForward(_ x: Tensor, _ y: Tensor)
    /// dx may be dy itself (each element reads only its own dy and y).
    func reluBackward(_ dy: Tensor, y: Tensor, _ dx: Tensor)
    /// Exact GELU, y = x Phi(x) with Phi(x) = 0.5 (1 + erf(x / sqrt 2)); Phi kept in `cdf` when
    /// given. x and y may each be bf16 (computed on x's fp32 value, y rounded once: the bits of
    /// widening x, computing in fp32 and converting y).
    func geluForward(_ x: Tensor, _ y: Tensor, cdf: Tensor?)
    /// dx = dy (Phi(x) + x phi(x)), Phi read from `cdf` when given, else recomputed bit for bit
    /// as forward computed it. dy, x and dx may each be bf16 (computed on fp32 values, dx
    /// rounded once).
    func geluBackward(_ dy: Tensor, x: Tensor, cdf: Tensor?, _ dx: Tensor)
    /// `geluBackward`, then `accumulateColumnSums(dx, into: sums)` (fc1's bias gradient, dx of
    /// whole rows of `sums.count`): a backend may form both in one pass; the same bits.
    func geluBackward(_ dy: Tensor, x: Tensor, cdf: Tensor?, _ dx: Tensor, columnSumsInto sums: Tensor)
    /// Softmax over the last `cols` of each row.
    func softmaxForward(_ x: Tensor, _ y: Tensor, cols: Int)
    func softmaxBackward(_ dy: Tensor, y: Tensor, _ dx: Tensor, cols: Int)
    /// Inverted dropout: y = x * keep / (1 - p), keep = uniform(stream, i) >= p.
    func dropoutForward(_ x: Tensor, _ y: Tensor, p: Float, stream: RandomStream)
    func dropoutBackward(_ dy: Tensor, _ dx: Tensor, p: Float, stream: RandomStream)

    // MARK: Normalisation

    /// Per row of x (rows x cols): y = (x - mean) * rstd * gamma + beta; saves mean and rstd. y
    /// may be bf16 (rounded once: the bits of converting an fp32 y).
    func layerNormForward(_ x: Tensor, gamma: Tensor, beta: Tensor, eps: Float,
                          _ y: Tensor, mean: Tensor, rstd: Tensor)
    /// dx (not dy itself) = the input gradient, plus `residual` when given (the bits of an `add`
    /// after; residual is not dx), and its bf16 copy in `dxCopy` when given (the bits of
    /// `convert`); dGamma and dBeta accumulated.
    func layerNormBackward(_ dy: Tensor, x: Tensor, gamma: Tensor, mean: Tensor, rstd: Tensor,
                           _ dx: Tensor, dGamma: Tensor, dBeta: Tensor, residual: Tensor?, dxCopy: Tensor?)
    /// `layerNormBackward`, then `accumulateColumnSums(dx, into: sums)` (dx, residual included, is
    /// the output gradient of a Linear layer whose bias gradient `sums` is): a backend may sum dx
    /// as it writes it; the same bits.
    func layerNormBackward(_ dy: Tensor, x: Tensor, gamma: Tensor, mean: Tensor, rstd: Tensor, _ dx: Tensor, dGamma: Tensor, dBeta: Tensor,
                           residual: Tensor?, dxCopy: Tensor?, dxColumnSumsInto sums: Tensor)
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
    /// Eval mode passes count = 0, which means dx = gamma invStd dy. dx may be dy itself.
    func batchNormInputGradient(_ dy: Tensor, x: Tensor, mean: Tensor, invStd: Tensor, gamma: Tensor,
                                sumDy: Tensor, sumDyXhat: Tensor, count: Int, _ dx: Tensor)

    // MARK: Convolution and multi-head attention (whole layers: a device does them in few launches)

    /// Floats of workspace for `convolutionForward` and `convolutionBackward` (every image's
    /// im2col): scratch to both, so nothing of it is kept from forward to backward; backward
    /// rebuilds the columns from x, as PyTorch's convolutions keep only their input.
    func convolutionWorkspaceCount(_ g: ConvolutionGeometry) -> Int
    /// Floats of scratch `convolutionBackward` needs (contents undefined before and after).
    func convolutionBackwardScratchCount(_ g: ConvolutionGeometry, inputGradient: Bool) -> Int
    /// y (B, out, Ho, Wo) = conv(x (B, in, H, W), weight (out, in, k, k)) + bias.
    func convolutionForward(_ x: Tensor, weight: Tensor, bias: Tensor?, _ g: ConvolutionGeometry,
                            workspace: Tensor, _ y: Tensor)
    /// Accumulates dWeight and dBias; writes dx when given. x is the forward's input.
    func convolutionBackward(_ dy: Tensor, x: Tensor, weight: Tensor, _ g: ConvolutionGeometry, workspace: Tensor, scratch: Tensor,
                             dWeight: Tensor, dBias: Tensor?, dx: Tensor?)
    /// Scaled dot-product attention of every head. qkv (B, N, 3D) holds [q|k|v] with heads of
    /// D / heads (bf16 under bf16 activations: only products read it); writes scores (scale
    /// q k^T) and probs (softmax over keys), both (B, H, N, N),
    /// and merged (B, N, D) = probs v with heads side by side (merged may be bf16: its products
    /// write it from fp32 accumulators, rounded once).
    func attentionForward(qkv: Tensor, heads: Int, scale: Float, scores: Tensor, probs: Tensor, merged: Tensor)
    /// The first half of `attentionForward` (scores, then probs), with the same kernels, so the
    /// probabilities are attentionForward's bit for bit: backward recomputes them instead of
    /// keeping (B, H, N, N) per block from forward to backward.
    func attentionProbabilities(qkv: Tensor, heads: Int, scale: Float, scores: Tensor, probs: Tensor)
    /// From dMerged (B, N, D) writes dQKV (B, N, 3D; bf16 under bf16 activations, as AMP's
    /// gradient of a bf16 qkv: rounded once); dProbs and dScores (B, H, N, N) are scratch.
    /// `recompute`: probs is written first, `attentionProbabilities`' bits (dScores holding the
    /// scores), instead of read as kept from forward; the backend may keep what its products read
    /// of them on the way (CUDA under bf16: the softmax writes their bf16 operand too).
    func attentionBackward(dMerged: Tensor, qkv: Tensor, probs: Tensor, heads: Int, scale: Float,
                           dProbs: Tensor, dScores: Tensor, dQKV: Tensor, recompute: Bool)
    /// Whether `fusedAttentionForward`/`fusedAttentionBackward` serve heads of `headDim` channels
    /// on this backend (bf16 qkv): attention without any (B, H, N, N) tensor (flash attention).
    func fusedAttention(headDim: Int) -> Bool
    /// merged (B, N, D, bf16) = softmax(scale q k^T) v per head from bf16 qkv (B, N, 3D), and
    /// logSumExp (B, H, N): each row's log-sum-exp of the scaled scores. The probabilities are
    /// rounded to bf16 for their product with v; their row sums stay fp32.
    func fusedAttentionForward(qkv: Tensor, heads: Int, scale: Float, merged: Tensor, logSumExp: Tensor)
    /// dQKV (B, N, 3D; fp32 or bf16) from dMerged (B, N, D; bf16, as AMP's gradient of the bf16
    /// merged: the projection's backward writes it so), recomputing the probabilities from qkv and
    /// the forward's logSumExp. delta (B, H, N) is scratch (each row's dO . O, summed in fp32). The
    /// probabilities and dScores are rounded to bf16 where they are product operands.
    func fusedAttentionBackward(dMerged: Tensor, qkv: Tensor, merged: Tensor, logSumExp: Tensor, heads: Int, scale: Float,
                                delta: Tensor, dQKV: Tensor)

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

    // MARK: Losses (each adds weight * the batch mean to loss[0] and writes scale * d(mean)/d(input))

    /// target = label (1 - s) + s / 2.
    func smoothLabels(_ labels: Tensor, smoothing: Float, _ target: Tensor)
    /// BCEWithLogits: max(x, 0) - x t + log(1 + exp(-|x|)), mean over the batch, times weight
    /// into loss[0]. Writes dLogits[i] = scale * (sigmoid(x_i) - t_i) / n.
    func binaryCrossEntropyWithLogits(_ logits: Tensor, targets: Tensor, scale: Float, dLogits: Tensor,
                                      loss: Tensor, weight: Float)
    /// mean_b ReLU(|cos(a_b, b_b)| - margin) with vectors divided by (norm + 1e-8); zero (and zero
    /// gradient) unless every norm exceeds 1e-6. Adds weight * penalty to loss[0]; writes
    /// scale * gradient into da, db.
    func cosineMarginPenalty(_ a: Tensor, _ b: Tensor, margin: Float, scale: Float, da: Tensor, db: Tensor,
                             loss: Tensor, weight: Float)
    /// y += a x (elementwise; x and y of one count).
    func axpy(_ a: Float, _ x: Tensor, _ y: Tensor)
    /// flag[0] = 1 when any value of x is NaN or infinite; left as it is otherwise.
    func flagNonFinite(_ x: Tensor, into flag: Tensor)

    // MARK: Gated fusion

    /// alpha = sigmoid(gate[0]); final = alpha r + (1 - alpha) e; prob = sigmoid(final); alphaOut
    /// is alpha broadcast to final's shape.
    func gatedFusionForward(gate: Tensor, reasoning: Tensor, external: Tensor, final: Tensor, prob: Tensor, alphaOut: Tensor)
    /// Writes dReasoning, dExternal; accumulates the gate logit's gradient into dGate[0].
    func gatedFusionBackward(dFinal: Tensor, gate: Tensor, reasoning: Tensor, external: Tensor,
                             dReasoning: Tensor, dExternal: Tensor, dGate: Tensor)
    /// out[0] = mean |sigmoid(a) - sigmoid(b)|.
    func meanAbsSigmoidDifference(_ a: Tensor, _ b: Tensor, into out: Tensor)

    // MARK: Optimizer

    /// clip_grad_norm_ over the given ranges of the flat gradient buffer, gated by a flag: the
    /// global L2 norm (squares summed in Double, in a fixed order) goes to norm[0]; gate[0]
    /// becomes 1 when nonFinite[0] is 0 and the norm is finite, else 0; when the gate is open and
    /// maxNorm / (norm + 1e-6) < 1 the gradients are scaled by it.
    func clipGradientNorm(_ grads: Tensor, ranges: [Range<Int>], maxNorm: Float, nonFinite: Tensor,
                          norm: Tensor, gate: Tensor)
    /// One AdamW step over a range of parameters, exactly as torch.optim.AdamW (decoupled weight
    /// decay first, then the bias-corrected Adam update), applied only when gate[0] is non-zero.
    /// `step` counts from 1.
    func adamW(params: Tensor, grads: Tensor, expAvg: Tensor, expAvgSq: Tensor, lr: Float, beta1: Float, beta2: Float,
               eps: Float, weightDecay: Float, step: Int, gate: Tensor)
    /// x *= s.
    func scale(_ x: Tensor, by s: Float)

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

/// The shape of one convolution (square kernel).
public struct ConvolutionGeometry: Sendable, Equatable {
    public let batch: Int, inChannels: Int, height: Int, width: Int
    public let outChannels: Int, kernel: Int, stride: Int, padding: Int
    public var outHeight: Int { (height + 2 * padding - kernel) / stride + 1 }
    public var outWidth: Int { (width + 2 * padding - kernel) / stride + 1 }
    /// Rows of the unfolded input: in * k * k.
    public var patchSize: Int { inChannels * kernel * kernel }
    /// Floats of every image's im2col (B, in*k*k, Ho*Wo): what forward keeps for backward.
    public var columnCount: Int { batch * patchSize * outHeight * outWidth }
    /// Floats of backward's scratch: per-image weight gradients, then (for dx) column gradients.
    public func backwardScratchCount(inputGradient: Bool) -> Int {
        batch * outChannels * patchSize + (inputGradient ? columnCount : 0)
    }

    /// The budget both backends start from (RADAR_CONV_WORKSPACE_MIB overrides it): 64 MiB.
    public static let defaultWorkspaceBudget = 64 << 20

    /// Images whose columns (`columnBytes` an element), column gradients and weight gradients
    /// (fp32) fit in `budget` bytes: the most a backend processes at once, at least one.
    public func imagesPerChunk(budget: Int, columnBytes: Int) -> Int {
        let columns = patchSize * outHeight * outWidth
        let perImage = columns * columnBytes + (outChannels * patchSize + columns) * 4
        return max(1, min(batch, budget / max(perImage, 1)))
    }
    /// The first image of each chunk of `images` images.
    public func chunkStarts(_ images: Int) -> StrideTo<Int> { Swift.stride(from: 0, to: batch, by: images) }
    /// The same geometry for `images` images.
    public func with(batch images: Int) -> ConvolutionGeometry {
        ConvolutionGeometry(batch: images, inChannels: inChannels, height: height, width: width, outChannels: outChannels,
                            kernel: kernel, stride: stride, padding: padding)
    }

    public init(batch: Int, inChannels: Int, height: Int, width: Int, outChannels: Int, kernel: Int, stride: Int, padding: Int) {
        self.batch = batch
        self.inChannels = inChannels
        self.height = height
        self.width = width
        self.outChannels = outChannels
        self.kernel = kernel
        self.stride = stride
        self.padding = padding
    }
}

extension Backend {
    public var devicePCIBusId: String? { nil }
    public var kernelSettings: String? { nil }

    public func layerNormBackward(_ dy: Tensor, x: Tensor, gamma: Tensor, mean: Tensor, rstd: Tensor, _ dx: Tensor, dGamma: Tensor, dBeta: Tensor,
                                  residual: Tensor?, dxCopy: Tensor?, dxColumnSumsInto sums: Tensor) {
        layerNormBackward(dy, x: x, gamma: gamma, mean: mean, rstd: rstd, dx, dGamma: dGamma, dBeta: dBeta, residual: residual, dxCopy: dxCopy)
        accumulateColumnSums(dx, into: sums)
    }

    public func geluBackward(_ dy: Tensor, x: Tensor, cdf: Tensor?, _ dx: Tensor, columnSumsInto sums: Tensor) {
        geluBackward(dy, x: x, cdf: cdf, dx)
        accumulateColumnSums(dx, into: sums)
    }

    /// `biasedProduct` with no residual.
    public func biasedProduct(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float, a: Tensor, lda: Int,
                              b: Tensor, ldb: Int, bias: Tensor, c: Tensor, ldc: Int) {
        biasedProduct(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb, bias: bias,
                      residual: nil, c: c, ldc: ldc)
    }

    /// `layerNormBackward` with no residual and no copy.
    public func layerNormBackward(_ dy: Tensor, x: Tensor, gamma: Tensor, mean: Tensor, rstd: Tensor,
                                  _ dx: Tensor, dGamma: Tensor, dBeta: Tensor) {
        layerNormBackward(dy, x: x, gamma: gamma, mean: mean, rstd: rstd, dx, dGamma: dGamma, dBeta: dBeta, residual: nil, dxCopy: nil)
    }

    /// `attentionBackward` reading the probabilities kept from forward.
    public func attentionBackward(dMerged: Tensor, qkv: Tensor, probs: Tensor, heads: Int, scale: Float,
                                  dProbs: Tensor, dScores: Tensor, dQKV: Tensor) {
        attentionBackward(dMerged: dMerged, qkv: qkv, probs: probs, heads: heads, scale: scale, dProbs: dProbs, dScores: dScores,
                          dQKV: dQKV, recompute: false)
    }

    /// A host copy of a tensor's values (a host synchronisation).
    public func download(_ t: Tensor) -> [Float] {
        [Float](unsafeUninitializedCapacity: t.count) { buf, n in
            download(t, into: buf)
            n = t.count
        }
    }

    /// Host values into a tensor of the same element count.
    public func upload(_ values: [Float], into t: Tensor) {
        precondition(values.count == t.count, "upload of \(values.count) values into \(t.shape)")
        values.withUnsafeBufferPointer { upload($0, into: t) }
    }
}
