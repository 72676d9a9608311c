import Foundation
import RadarCPU
import RadarEngine
import Synchronization

/// The CUDA backend: every Backend kernel as a CUDA kernel launch (Sources/CCUDAEmulator/kernels),
/// GEMMs through cuBLAS (strided-batched for convolutions and attention), the spectrum through
/// cuFFT, all through a `CUDADriver`: the real one (`DriverAPI`: libcuda, cuBLAS, cuFFT by dlopen)
/// or the emulated device (`EmulatedDevice`).
///
/// Launch shapes: elementwise kernels use blocks of 256 threads in a grid-stride loop; row
/// kernels (LayerNorm, softmax) one warp per row, 4 rows per block; per-channel and per-image
/// reductions one block per channel or image.
///
/// Precision (`Precision`): every product's operands are fp32, TF32 or bf16 (bf16 copies made by
/// `radar_to_bf16` into scratch that grows during the first step only); accumulation, outputs,
/// master weights, optimizer state, normalisation statistics and losses stay fp32.
public final class CUDABackend: Backend, GradientStaging, @unchecked Sendable {
    public let driver: any CUDADriver
    public let precision: Precision
    private let syncCount = Atomic<Int>(0)
    /// Scratch for the gradient norm: double partial sums and the clip coefficient (device).
    private var normPartials: UnsafeMutablePointer<Float>?
    private var normPartialCapacity = 0
    private let coefficient: UnsafeMutablePointer<Float>
    /// Device scratch that grows to its largest request (bf16 operands, FFT spectra, the partial
    /// sums of the two-launch reductions in slot `partialSlot`, staged bf16 outputs).
    private var scratch: [UnsafeMutableRawPointer?] = [nil, nil, nil, nil, nil, nil, nil]
    private var scratchBytes = [0, 0, 0, 0, 0, 0, 0]
    private static let partialSlot = 4
    /// Slot of the fp32 values of a bf16 output that cuBLAS cannot write as bf16 (fp32 or tf32
    /// operands), converted once the products are done.
    private static let stagingSlot = 5
    /// Slot of a bias rounded to bf16 for cuBLASLt's epilogue.
    private static let biasSlot = 6
    static let chunk = 65_536
    /// The widest rows `radar_layernorm_backward_staged` takes (its RADAR_LN_STAGE_COLS).
    static let layerNormStageColumns = 512
    /// Rows per chunk of the column reductions (bias and LayerNorm parameter gradients): 8 to 64,
    /// as many as keep about 32K threads (an H200's 132 SMs, 256 each) busy. A function of the
    /// shape alone, so every GPU adds in the same order.
    static func reductionRows(rows: Int, cols: Int) -> Int { max(8, min(64, rows * cols / 32_768)) }
    /// LayerNorm backward in one kernel per chunk of rows (`radar_layernorm_backward_chunk`, rows
    /// of up to 1024 columns, at least 132 chunks: the encoder's at batch 128 has 394) instead of
    /// the input gradient and the parameter partials apart: the same bits; off only to compare.
    var fuseLayerNormBackward = true
    /// The fewest chunks the one-pass LayerNorm backward is used for (an H200 has 132 SMs; tests
    /// lower it to run it on small shapes).
    var layerNormOnePassMinChunks = 132
    /// The one-pass LayerNorm backward with each group of 8 rows of dy and x read from memory
    /// once, into shared memory (`radar_layernorm_backward_staged`, rows of up to 512 columns),
    /// where the chunk kernel reads them twice (`Devices.stagedLayerNormBackward`,
    /// RADAR_LAYERNORM_BACKWARD=staged): the same sums in the same order. Off by default until a
    /// GPU has timed it (the chunk kernel took 2.75 ms of an H100's bf16 step).
    public var stagedLayerNormBackward = false
    /// fc1's bias gradient summed by GELU backward as it writes the gradient
    /// (`radar_gelu_backward_chunk_sums`) instead of a second pass reading it back: the same
    /// bits; off only to compare.
    var fuseGELUColumnSums = true

    /// The flash-attention kernels for bf16 attention (`Devices.fusedAttention`, RADAR_ATTENTION).
    public let fusedAttentionEnabled: Bool
    /// Linear layers' biases (and residuals) through cuBLASLt's epilogue instead of a fill pass
    /// before the product (`Devices.gemmEpilogues`, RADAR_GEMM_EPILOGUES; on by default), where the
    /// driver has it.
    public var gemmEpilogues: Bool
    /// Whether biases go into cuBLASLt's epilogues here: asked for, and cuBLASLt loaded (a shape
    /// its heuristic refuses is still filled, said once per shape).
    public var gemmEpiloguesInUse: Bool { gemmEpilogues && driver.supportsGemmEpilogues }
    /// Which build of the fused attention kernels runs (`Devices.attentionKernels`,
    /// RADAR_ATTENTION_KERNELS): `fast` (the default, the fastest on an H100), `plain` or `ldmatrix`
    /// (plain's bits).
    public var attentionKernels = AttentionKernelBuild.fast
    /// Head sizes the fused attention kernels are built for.
    public static let fusedHeadDims: Set<Int> = [16, 32, 64]

    /// Bytes a convolution's columns and backward scratch may take at once (`convolutionChunk`;
    /// `Devices.convolutionWorkspaceBudget` reads RADAR_CONV_WORKSPACE_MIB).
    public var convolutionWorkspaceBudget: Int

    public init(driver: any CUDADriver, precision: Precision = .fp32, fusedAttention: Bool = false,
                convolutionWorkspaceBudget: Int = ConvolutionGeometry.defaultWorkspaceBudget, gemmEpilogues: Bool = true) {
        self.driver = driver
        self.gemmEpilogues = gemmEpilogues
        self.convolutionWorkspaceBudget = convolutionWorkspaceBudget
        self.precision = precision
        fusedAttentionEnabled = fusedAttention
        coefficient = CUDABackend.allocate(driver, floats: 1)
    }

    /// The emulated device, when this backend runs on it.
    public var device: EmulatedDevice? { driver as? EmulatedDevice }

    deinit {
        driver.free(UnsafeMutableRawPointer(coefficient))
        if let p = normPartials { driver.free(UnsafeMutableRawPointer(p)) }
        for p in scratch { if let p { driver.free(p) } }
    }

    public var recomputesInBackward: Bool { true }
    public var storesBFloat16Activations: Bool { precision == .bf16 }
    public var roundsProductOperandsToBFloat16: Bool { precision == .bf16 }
    public var deviceDescription: String { "\(driver.deviceDescription), \(precision.rawValue)" }
    public var devicePCIBusId: String? { driver.pciBusId }
    /// e.g. "attention fused (fast kernels), biases in cuBLASLt epilogues": the settings
    /// RADAR_ATTENTION, RADAR_ATTENTION_KERNELS and RADAR_GEMM_EPILOGUES chose, as they apply here
    /// (fused attention is bf16 only; the epilogues need cuBLASLt).
    public var kernelSettings: String? {
        let fused = fusedAttentionEnabled && precision == .bf16
        return "attention \(fused ? "fused (\(attentionKernels.rawValue) kernels)" : "by products"), biases "
            + (gemmEpiloguesInUse ? "in cuBLASLt epilogues" : "filled before the products")
            + (stagedLayerNormBackward ? ", LayerNorm backward staged" : "")
    }

    // MARK: Memory

    /// Device memory, or the one-line out-of-memory report (with what the run was sizing, e.g.
    /// its batch) and exit status 1: an allocation fails only while a run sizes its memory.
    static func allocate(_ driver: any CUDADriver, floats: Int) -> UnsafeMutablePointer<Float> {
        do {
            return try driver.allocate(bytes: max(floats, 1) * 4).bindMemory(to: Float.self, capacity: max(floats, 1))
        } catch {
            DeviceFailure.outOfMemory(error)
        }
    }

    /// Bytes this backend holds on the device now, and the most it ever held (tensors and
    /// scratch, plus the libraries' workspaces: what PyTorch's max_memory_allocated counts too).
    public private(set) var deviceBytes = 0
    private var peakTensorBytes = 0
    public var peakDeviceBytes: Int { peakTensorBytes + driver.libraryWorkspaceBytes }
    /// Starts the peak over from what is held now (`radar bench step` after its warm-up steps, as
    /// the PyTorch benchmark calls torch.cuda.reset_peak_memory_stats after its own).
    public func resetPeakDeviceBytes() { peakTensorBytes = deviceBytes + scratchBytes.reduce(0, +) }
    /// Floating-point operations of the cuBLAS products queued so far (2 m n k per matrix).
    public private(set) var gemmFlops = 0
    /// While set, sees every product before it is queued (`radar bench gemm` gathers a step's).
    public var gemmCensus: ((StridedGemm) -> Void)?
    private var sizes: [UInt: Int] = [:]

    public func allocate(_ count: Int) -> UnsafeMutablePointer<Float> {
        let p = CUDABackend.allocate(driver, floats: count)
        sizes[UInt(bitPattern: p)] = max(count, 1) * 4
        deviceBytes += max(count, 1) * 4
        peakTensorBytes = max(peakTensorBytes, deviceBytes + scratchBytes.reduce(0, +))
        return p
    }

    public func release(_ address: UnsafeMutablePointer<Float>) {
        deviceBytes -= sizes.removeValue(forKey: UInt(bitPattern: address)) ?? 0
        driver.free(UnsafeMutableRawPointer(address))
    }

    public func upload(_ values: UnsafeBufferPointer<Float>, into t: Tensor) {
        precondition(values.count == t.count && t.dtype == .float32, "upload of \(values.count) values into \(t.dtype.name) \(t.shape)")
        if let b = values.baseAddress { driver.upload(UnsafeRawPointer(b), to: UnsafeMutableRawPointer(t.base), bytes: t.count * 4) }
    }

    public func download(_ t: Tensor, into host: UnsafeMutableBufferPointer<Float>) {
        precondition(host.count >= t.count && t.dtype == .float32, "download of \(t.dtype.name) \(t.shape) into \(host.count) values")
        syncCount.wrappingAdd(1, ordering: .relaxed)
        if let b = host.baseAddress { waited { driver.download(UnsafeRawPointer(t.base), to: UnsafeMutableRawPointer(b), bytes: t.count * 4) } }
    }

    public func synchronize() {
        syncCount.wrappingAdd(1, ordering: .relaxed)
        waited { driver.synchronize() }
    }
    public var synchronizations: Int { syncCount.load(ordering: .relaxed) }
    /// Seconds the host has spent in `synchronize` and `download` (waiting for the stream, then the
    /// copy): what a step's wall time less this leaves is the host's own time to queue the step.
    /// Near zero on a GPU means the GPU waited for the host (launch-bound), not the other way.
    public var hostWaitSeconds: Double { Double(waitNanoseconds.load(ordering: .relaxed)) / 1e9 }
    private let waitNanoseconds = Atomic<UInt64>(0)
    private func waited(_ body: () -> Void) {
        let start = DispatchTime.now().uptimeNanoseconds
        body()
        waitNanoseconds.wrappingAdd(DispatchTime.now().uptimeNanoseconds &- start, ordering: .relaxed)
    }
    public func hostAddress(_ t: Tensor) -> UnsafeMutablePointer<Float>? { nil }

    // MARK: Gradient staging (GradientStaging, through the driver's copy stream)

    public func prepareStaging(slots: Int) { driver.prepareCopyStream(slots: slots) }
    public func allocatePinned(_ count: Int) -> UnsafeMutablePointer<Float> {
        driver.allocatePinned(bytes: max(count, 1) * 4).bindMemory(to: Float.self, capacity: max(count, 1))
    }
    public func releasePinned(_ p: UnsafeMutablePointer<Float>) { driver.freePinned(UnsafeMutableRawPointer(p)) }
    public func markFinal(_ slot: Int, _ t: Tensor, into host: UnsafeMutablePointer<Float>) {
        driver.copyDownAfterMark(slot, UnsafeRawPointer(t.base), to: UnsafeMutableRawPointer(host), bytes: t.count * 4)
    }
    public func awaitDown(_ slot: Int) { driver.awaitCopyDown(slot) }
    public func stageUp(_ host: UnsafePointer<Float>, into t: Tensor, slot: Int) {
        driver.copyUp(UnsafeRawPointer(host), to: UnsafeMutableRawPointer(t.base), bytes: t.count * 4, slot: slot)
    }
    public func computeWaitsForUploads(_ slots: Range<Int>) { for s in slots { driver.computeWaitsForUpload(s) } }

    /// Scratch slot `i` of at least `bytes`.
    private func scratch(_ i: Int, bytes: Int) -> UnsafeMutableRawPointer {
        if bytes > scratchBytes[i] {
            if let p = scratch[i] { driver.free(p) }
            scratch[i] = UnsafeMutableRawPointer(CUDABackend.allocate(driver, floats: (bytes + 3) / 4))
            scratchBytes[i] = bytes
            peakTensorBytes = max(peakTensorBytes, deviceBytes + scratchBytes.reduce(0, +))
        }
        return scratch[i]!
    }

    // MARK: Launch helpers

    private func grid(_ n: Int, block: Int = 256) -> Int { max(1, min((n + block - 1) / block, 4096)) }
    private func elementwise(_ name: String, _ n: Int, _ args: KernelArgs) {
        guard n > 0 else { return }
        driver.launch(name, grid: grid(n), block: 256, args)
    }
    private func rows(_ name: String, _ rows: Int, _ args: KernelArgs) {
        guard rows > 0 else { return }
        driver.launch(name, grid: (rows + 3) / 4, block: 128, args)
    }
    private func p(_ t: Tensor) -> KernelArg { .ptr(t.base) }
    private func p(_ t: Tensor?) -> KernelArg { .ptr(t?.base) }
    /// A kernel's dtype flag for `t`: 1 for bf16.
    private func bf16(_ t: Tensor) -> KernelArg { .i32(t.dtype == .bfloat16 ? 1 : 0) }

    // MARK: cuBLAS

    /// Elements a row-major operand spans: `rows x cols` with leading dimension `ld`, `batch`
    /// matrices `stride` apart.
    static func span(rows: Int, cols: Int, ld: Int, stride: Int, batch: Int) -> Int {
        rows == 0 || cols == 0 ? 0 : (batch - 1) * stride + (rows - 1) * ld + cols
    }

    /// A product operand on the device: fp32, or its bf16 copy.
    struct Operand {
        let base: UnsafeRawPointer, width: Int
        func at(_ elements: Int) -> UnsafeRawPointer { base + elements * width }
    }

    /// `count` floats at `p` as an operand of this backend's precision (bf16: converted into
    /// scratch `slot`).
    func operand(_ p: UnsafePointer<Float>, count: Int, slot: Int) -> Operand {
        guard precision == .bf16 else { return Operand(base: UnsafeRawPointer(p), width: 4) }
        let s = scratch(slot, bytes: count * 2)
        elementwise("radar_to_bf16", count, KernelArgs(.ptr(UnsafeMutablePointer(mutating: p)), .raw(s), .i64(count)))
        return Operand(base: UnsafeRawPointer(s), width: 2)
    }

    /// A whole tensor as an operand: an fp32 one as above; a bf16 one as it is in bf16 precision,
    /// else widened into scratch `slot`.
    func operand(_ t: Tensor, slot: Int) -> Operand {
        guard t.dtype == .bfloat16 else { return operand(t.base, count: t.count, slot: slot) }
        if precision == .bf16 { return Operand(base: UnsafeRawPointer(t.base), width: 2) }
        let s = scratch(slot, bytes: t.count * 4)
        elementwise("radar_from_bf16", t.count, KernelArgs(p(t), .raw(s), .i64(t.count)))
        return Operand(base: UnsafeRawPointer(s), width: 4)
    }

    /// Row-major strided-batched C_i = alpha op(A_i) op(B_i) + beta C_i (A_i at a.at(i * strideA))
    /// as the column-major cuBLAS call C_i^T = op(B_i)^T op(A_i)^T.
    func productOperands(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float, a: UnsafeRawPointer, lda: Int, strideA: Int = 0,
                 b: UnsafeRawPointer, ldb: Int, strideB: Int = 0, beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int,
                 strideC: Int = 0, batch: Int = 1, outputBF16: Bool = false, bias: UnsafeRawPointer? = nil,
                 d: UnsafeMutablePointer<Float>? = nil) {
        guard m > 0 && n > 0 && batch > 0 else { return }
        submit(gemmShape(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, strideA: strideA, b: b, ldb: ldb,
                         strideB: strideB, beta: beta, c: c, ldc: ldc, strideC: strideC, batch: batch, outputBF16: outputBF16, bias: bias, d: d))
    }

    /// The row-major product above as cuBLAS's column-major call (operands swapped).
    func gemmShape(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float, a: UnsafeRawPointer, lda: Int, strideA: Int = 0,
                   b: UnsafeRawPointer, ldb: Int, strideB: Int = 0, beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int,
                   strideC: Int = 0, batch: Int = 1, outputBF16: Bool = false, bias: UnsafeRawPointer? = nil,
                   d: UnsafeMutablePointer<Float>? = nil) -> StridedGemm {
        let operands: GemmOperands = precision == .bf16 ? .bf16 : precision == .tf32 ? .tf32 : .fp32
        var g = StridedGemm(transA: transB, transB: transA, m: n, n: m, k: k, alpha: alpha, a: b, lda: ldb, strideA: strideB,
                            b: a, ldb: lda, strideB: strideA, beta: beta, c: c, ldc: ldc, strideC: strideC, batch: batch,
                            operands: operands, outputBF16: outputBF16)
        g.bias = bias  // epilogues (cuBLASLt): a bias per output column, the result into d
        g.d = d
        return g
    }

    /// Queues `g` (counted, and seen by the census).
    private func submit(_ g: StridedGemm) {
        gemmFlops &+= 2 * g.m * g.n * g.k * g.batch
        gemmCensus?(g)
        driver.gemm(g)
    }

    /// Epilogue shapes cuBLASLt offered no algorithm for, already said (once each, on standard
    /// error; a key of plain numbers, so a step that falls back allocates nothing after the first).
    private struct FilledShape: Hashable { let m: Int, n: Int, k: Int, batch: Int, bf16: Bool, residual: Bool }
    private var filledEpilogues: Set<FilledShape> = []

    /// The same with fp32 operands in device memory, converted for this precision (whole spans).
    func product(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float, a: UnsafePointer<Float>, lda: Int, strideA: Int = 0,
                 b: UnsafePointer<Float>, ldb: Int, strideB: Int = 0, beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int,
                 strideC: Int = 0, batch: Int = 1) {
        guard m > 0 && n > 0 && batch > 0 else { return }
        let oa = operand(a, count: CUDABackend.span(rows: transA ? k : m, cols: transA ? m : k, ld: lda, stride: strideA, batch: batch), slot: 0)
        let ob = operand(b, count: CUDABackend.span(rows: transB ? n : k, cols: transB ? k : n, ld: ldb, stride: strideB, batch: batch), slot: 1)
        productOperands(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: oa.base, lda: lda, strideA: strideA, b: ob.base, ldb: ldb,
                strideB: strideB, beta: beta, c: c, ldc: ldc, strideC: strideC, batch: batch)
    }

    public func gemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float, a: UnsafePointer<Float>, lda: Int,
                     b: UnsafePointer<Float>, ldb: Int, beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
        product(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb, beta: beta, c: c, ldc: ldc)
    }

    public func product(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float, a: Tensor, lda: Int,
                        b: Tensor, ldb: Int, beta: Float, c: Tensor, ldc: Int) {
        product(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: operand(a, slot: 0), lda: lda, b: operand(b, slot: 1),
                ldb: ldb, beta: beta, c: c, ldc: ldc)
    }
    /// The same with the operands already in the products' precision (`operand`).
    private func product(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float, a oa: Operand, lda: Int,
                         b ob: Operand, ldb: Int, beta: Float, c: Tensor, ldc: Int) {
        guard c.dtype == .bfloat16 else {
            productOperands(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: oa.base, lda: lda, b: ob.base, ldb: ldb,
                            beta: beta, c: c.base, ldc: ldc)
            return
        }
        // A bf16 C: written by cuBLAS from bf16 operands, else staged (C's span widened first where
        // beta reads it or columns past n must come back as they were: bf16 -> fp32 -> bf16 is exact).
        guard m > 0 && n > 0 else { return }
        let span = (m - 1) * ldc + n, out = output(c, span: span, reads: beta != 0 || ldc != n)
        productOperands(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: oa.base, lda: lda, b: ob.base, ldb: ldb,
                        beta: beta, c: out.at(0), ldc: ldc, outputBF16: out.bf16)
        finish(out, into: c, span: span)
    }

    /// The bias set in C by one launch, then cuBLAS with beta 1 (the same launches as a product
    /// and `addRowBias`, one pass over C fewer). A bf16 C gets the bias rounded to bf16 (as
    /// autocast's addmm), the product accumulated in fp32 and rounded once. A residual is added
    /// to the bias by the same launch (the residual block's add pass gone).
    public func biasedProduct(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float, a: Tensor, lda: Int,
                              b: Tensor, ldb: Int, bias: Tensor, residual: Tensor?, c: Tensor, ldc: Int) {
        precondition(bias.dtype == .float32 && bias.count == n, "biasedProduct: bias fp32, of n")
        precondition(residual.map { $0.dtype == .float32 && c.dtype == .float32 } ?? true, "biasedProduct: a residual needs an fp32 C")
        // cuBLASLt's bias epilogue where C needs no staging (fp32, or bf16 written by bf16
        // products): the bias (rounded to bf16 for a bf16 C: the epilogue's bias has C's type)
        // added to the fp32 sum before its one rounding, the residual as C with beta 1.
        var prepared: (a: Operand, b: Operand)?
        if gemmEpiloguesInUse && (c.dtype == .float32 || precision == .bf16) && m > 0 && n > 0 {
            let oa = operand(a, slot: 0), ob = operand(b, slot: 1)
            let staged = c.dtype == .bfloat16 ? scratch(CUDABackend.biasSlot, bytes: n * 2) : nil
            let g = gemmShape(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: oa.base, lda: lda, b: ob.base, ldb: ldb,
                              beta: residual == nil ? 0 : 1, c: residual?.base ?? c.base, ldc: ldc, outputBF16: c.dtype == .bfloat16,
                              bias: staged.map { UnsafeRawPointer($0) } ?? UnsafeRawPointer(bias.base), d: c.base)
            if driver.gemmEpilogueAvailable(g) {
                if let staged { elementwise("radar_to_bf16", n, KernelArgs(p(bias), .raw(staged), .i64(n))) }
                submit(g)
                return
            }
            // No algorithm with this epilogue for this shape on this GPU: the fill, as with the
            // epilogues off (the same result within the sum's rounding), said once per shape.
            if filledEpilogues.insert(FilledShape(m: g.m, n: g.n, k: g.k, batch: g.batch, bf16: g.outputBF16, residual: residual != nil)).inserted {
                writeStandardError("radar: cuBLASLt offers no algorithm with a bias epilogue for \(GemmTable.key(g)) on "
                    + "\(driver.deviceDescription); its bias is filled before the product instead\n")
            }
            prepared = (oa, ob)  // the operands are converted already: the fill path reuses them
        }
        elementwise("radar_fill_rows", m * n, KernelArgs(p(bias), .ptr(residual?.base), p(c), bf16(c), .i64(m), .i32(n), .i32(ldc)))
        let (oa, ob) = prepared ?? (operand(a, slot: 0), operand(b, slot: 1))
        product(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: oa, lda: lda, b: ob, ldb: ldb, beta: 1, c: c, ldc: ldc)
    }

    public func convert(_ src: Tensor, into dst: Tensor) {
        precondition(src.count == dst.count, "convert \(src.shape) into \(dst.shape)")
        switch (src.dtype, dst.dtype) {
        case (.float32, .bfloat16): elementwise("radar_to_bf16", src.count, KernelArgs(p(src), p(dst), .i64(src.count)))
        case (.bfloat16, .float32): elementwise("radar_from_bf16", src.count, KernelArgs(p(src), p(dst), .i64(src.count)))
        default: elementwise("radar_copy", src.storageFloats, KernelArgs(p(src), p(dst), .i64(src.storageFloats)))
        }
    }

    // MARK: Elementwise

    public func fill(_ t: Tensor, _ value: Float) { elementwise("radar_fill", t.count, KernelArgs(p(t), .i64(t.count), .f32(value))) }
    public func copy(_ src: Tensor, into dst: Tensor) { elementwise("radar_copy", src.count, KernelArgs(p(src), p(dst), .i64(src.count))) }
    public func add(_ a: Tensor, _ b: Tensor, into out: Tensor) { elementwise("radar_add", a.count, KernelArgs(p(a), p(b), p(out), .i64(a.count))) }
    public func addRowBias(_ bias: Tensor, into out: Tensor) {
        elementwise("radar_add_row_bias", out.count, KernelArgs(p(bias), p(out), .i64(out.count / bias.count), .i32(bias.count)))
    }
    public func addChannelBias(_ bias: Tensor, into out: Tensor) {
        let hw = out.shape[2] * out.shape[3]
        elementwise("radar_add_channel_bias", out.count, KernelArgs(p(bias), p(out), .i64(out.count), .i32(bias.count), .i32(hw)))
    }
    public func accumulateColumnSums(_ src: Tensor, into dst: Tensor) {
        let cols = dst.count, rows = src.count / max(cols, 1), chunk = CUDABackend.reductionRows(rows: rows, cols: cols)
        let chunks = (rows + chunk - 1) / chunk
        guard chunks > 0 else { return }
        let partial = scratch(CUDABackend.partialSlot, bytes: chunks * cols * 4)
        elementwise("radar_column_chunk_sums", chunks * cols, KernelArgs(p(src), bf16(src), .raw(partial), .i32(rows), .i32(cols), .i32(chunk)))
        self.rows("radar_add_chunk_sums", cols, KernelArgs(.raw(partial), .i32(chunks), .i64(cols), .i32(cols), p(dst)))  // a warp per column
    }
    /// GELU backward with dx's column sums in the same pass (`radar_gelu_backward_chunk_sums`,
    /// the chunks and partials of `accumulateColumnSums`): the same bits as the two calls.
    public func geluBackward(_ dy: Tensor, x: Tensor, cdf: Tensor?, _ dx: Tensor, columnSumsInto sums: Tensor) {
        let cols = sums.count, rows = dx.count / max(cols, 1)
        precondition(rows * cols == dx.count, "geluBackward: dx of whole rows of \(cols)")
        guard fuseGELUColumnSums else {
            geluBackward(dy, x: x, cdf: cdf, dx)
            accumulateColumnSums(dx, into: sums)
            return
        }
        let chunk = CUDABackend.reductionRows(rows: rows, cols: cols), chunks = (rows + chunk - 1) / chunk
        guard chunks > 0 else { return }
        let partial = scratch(CUDABackend.partialSlot, bytes: chunks * cols * 4)
        // Four columns a thread, on 8-byte accesses, where everything is bf16 and 8-byte aligned.
        let aligned = (UInt(bitPattern: dy.base) | UInt(bitPattern: x.base) | UInt(bitPattern: dx.base)) % 8 == 0
        let quads = dy.dtype == .bfloat16 && x.dtype == .bfloat16 && dx.dtype == .bfloat16 && cdf == nil && cols % 4 == 0 && aligned
        elementwise("radar_gelu_backward_chunk_sums", chunks * (quads ? cols / 4 : cols),
                    KernelArgs(p(dy), bf16(dy), p(x), bf16(x), .ptr(cdf?.base), p(dx), bf16(dx), .raw(partial), .i32(rows), .i32(cols), .i32(chunk),
                               .i32(quads ? 1 : 0)))
        self.rows("radar_add_chunk_sums", cols, KernelArgs(.raw(partial), .i32(chunks), .i64(cols), .i32(cols), p(sums)))
    }
    public func reluForward(_ x: Tensor, _ y: Tensor) { elementwise("radar_relu_forward", x.count, KernelArgs(p(x), p(y), .i64(x.count))) }
    public func reluBackward(_ dy: Tensor, y: Tensor, _ dx: Tensor) {
        elementwise("radar_relu_backward", dy.count, KernelArgs(p(dy), p(y), p(dx), .i64(dy.count)))
    }
    public func geluForward(_ x: Tensor, _ y: Tensor, cdf: Tensor?) {
        elementwise("radar_gelu_forward", x.count, KernelArgs(p(x), bf16(x), p(y), bf16(y), .ptr(cdf?.base), .i64(x.count)))
    }
    public func geluBackward(_ dy: Tensor, x: Tensor, cdf: Tensor?, _ dx: Tensor) {
        elementwise("radar_gelu_backward", dy.count, KernelArgs(p(dy), bf16(dy), p(x), bf16(x), .ptr(cdf?.base), p(dx), bf16(dx), .i64(dy.count)))
    }
    public func softmaxForward(_ x: Tensor, _ y: Tensor, cols: Int) { softmaxForward(x, y, bf16Copy: nil, cols: cols) }
    /// With a bf16 copy of y written at `bf16Copy` too (the attention's product operand).
    private func softmaxForward(_ x: Tensor, _ y: Tensor, bf16Copy: UnsafeMutableRawPointer?, cols: Int) {
        rows("radar_softmax_forward", x.count / cols, KernelArgs(p(x), p(y), .raw(bf16Copy), .i32(x.count / cols), .i32(cols)))
    }
    public func softmaxBackward(_ dy: Tensor, y: Tensor, _ dx: Tensor, cols: Int) {
        rows("radar_softmax_backward", dy.count / cols, KernelArgs(p(dy), p(y), p(dx), .raw(nil), .i32(dy.count / cols), .i32(cols)))
    }
    public func dropoutForward(_ x: Tensor, _ y: Tensor, p drop: Float, stream: RandomStream) {
        elementwise("radar_dropout", x.count, KernelArgs(p(x), p(y), .i64(x.count), .f32(drop), .u32(stream.philox.key0), .u32(stream.philox.key1),
                                                         .u64(stream.stream)))
    }
    public func dropoutBackward(_ dy: Tensor, _ dx: Tensor, p drop: Float, stream: RandomStream) { dropoutForward(dy, dx, p: drop, stream: stream) }

    // MARK: Normalisation

    public func layerNormForward(_ x: Tensor, gamma: Tensor, beta: Tensor, eps: Float, _ y: Tensor, mean: Tensor, rstd: Tensor) {
        let cols = gamma.count, r = x.count / cols
        rows("radar_layernorm_forward", r, KernelArgs(p(x), p(gamma), p(beta), .f32(eps), p(y), bf16(y), p(mean), p(rstd), .i32(r), .i32(cols)))
    }
    public func layerNormBackward(_ dy: Tensor, x: Tensor, gamma: Tensor, mean: Tensor, rstd: Tensor, _ dx: Tensor, dGamma: Tensor, dBeta: Tensor,
                                  residual: Tensor?, dxCopy: Tensor?) {
        layerNormBackward(dy, x: x, gamma: gamma, mean: mean, rstd: rstd, dx, dGamma: dGamma, dBeta: dBeta, residual: residual,
                          dxCopy: dxCopy, dxColumnSums: nil)
    }
    /// With dx's column sums added to `sums` by the one-pass kernel as it writes dx (chunks as
    /// `accumulateColumnSums`'s: the same bits), or by `accumulateColumnSums` after the two kernels.
    public func layerNormBackward(_ dy: Tensor, x: Tensor, gamma: Tensor, mean: Tensor, rstd: Tensor, _ dx: Tensor, dGamma: Tensor, dBeta: Tensor,
                                  residual: Tensor?, dxCopy: Tensor?, dxColumnSumsInto sums: Tensor) {
        layerNormBackward(dy, x: x, gamma: gamma, mean: mean, rstd: rstd, dx, dGamma: dGamma, dBeta: dBeta, residual: residual,
                          dxCopy: dxCopy, dxColumnSums: sums)
    }
    private func layerNormBackward(_ dy: Tensor, x: Tensor, gamma: Tensor, mean: Tensor, rstd: Tensor, _ dx: Tensor, dGamma: Tensor, dBeta: Tensor,
                                   residual: Tensor?, dxCopy: Tensor?, dxColumnSums sums: Tensor?) {
        let cols = gamma.count, r = x.count / cols
        precondition(sums.map { $0.count == cols } ?? true, "layerNormBackward: dx's column sums of gamma's count")
        precondition(dxCopy.map { $0.dtype == .bfloat16 && $0.count == dx.count } ?? true, "layerNormBackward: dxCopy bf16, of dx's count")
        precondition(residual.map { $0.count == dx.count && $0.base != dx.base } ?? true, "layerNormBackward: residual of dx's count, not dx")
        precondition(dx.base != dy.base && dx.base != x.base, "layerNormBackward: dx apart from dy and x (the kernels' pointers are restrict)")
        let chunk = CUDABackend.reductionRows(rows: r, cols: cols), chunks = (r + chunk - 1) / chunk
        guard chunks > 0 else { return }
        let onePass = fuseLayerNormBackward && cols <= 1024 && chunks >= layerNormOnePassMinChunks
        let summed = onePass && sums != nil
        let partial = scratch(CUDABackend.partialSlot, bytes: chunks * (summed ? 3 : 2) * cols * 4)
        let dxPartial = partial + chunks * 2 * cols * 4
        if onePass {
            // One pass: a block per chunk of rows, a thread per column (the same bits as the two
            // below). With fewer chunks than an H200 has SMs the two kernels spread wider.
            let staged = stagedLayerNormBackward && cols <= CUDABackend.layerNormStageColumns
            driver.launch(staged ? "radar_layernorm_backward_staged" : "radar_layernorm_backward_chunk", grid: chunks, block: (cols + 31) / 32 * 32,
                          KernelArgs(p(dy), p(x), p(gamma), p(mean), p(rstd), .ptr(residual?.base), p(dx), .ptr(dxCopy?.base), .raw(partial),
                                     summed ? .raw(dxPartial) : .ptr(nil), .i32(r), .i32(cols), .i32(chunk)))
        } else {
            rows("radar_layernorm_backward_input", r, KernelArgs(p(dy), p(x), p(gamma), p(mean), p(rstd), .ptr(residual?.base), p(dx),
                                                                 .ptr(dxCopy?.base), .i32(r), .i32(cols)))
            elementwise("radar_layernorm_param_partials", chunks * cols,
                        KernelArgs(p(dy), p(x), p(mean), p(rstd), .raw(partial), .i32(r), .i32(cols), .i32(chunk)))
        }
        rows("radar_add_chunk_sums", cols, KernelArgs(.raw(partial), .i32(chunks), .i64(2 * cols), .i32(cols), p(dGamma)))
        rows("radar_add_chunk_sums", cols, KernelArgs(.raw(partial + cols * 4), .i32(chunks), .i64(2 * cols), .i32(cols), p(dBeta)))
        if let sums {
            if summed {
                rows("radar_add_chunk_sums", cols, KernelArgs(.raw(dxPartial), .i32(chunks), .i64(cols), .i32(cols), p(sums)))
            } else {
                accumulateColumnSums(dx, into: sums)
            }
        }
    }
    private func bhw(_ x: Tensor) -> (Int, Int, Int) { (x.shape[0], x.shape[1], x.count / max(x.shape[0] * x.shape[1], 1)) }
    /// Per-plane double partials (`width` per (image, channel) plane) in the partial slot.
    private func planePartials(_ b: Int, _ c: Int, width: Int) -> UnsafeMutableRawPointer {
        scratch(CUDABackend.partialSlot, bytes: b * c * width * 8)
    }
    /// Threads per plane block: a power of two from 32 to 256 giving each thread at least 8 of
    /// the plane's values (a 56 x 56 plane: 256; 7 x 7: 32). A function of the shape only.
    static func planeBlock(_ hw: Int) -> Int {
        var t = 32
        while t < 256 && t * 8 < hw { t *= 2 }
        return t
    }
    private func sumPlanesOverBatch(_ partial: UnsafeMutableRawPointer, _ b: Int, _ c: Int, width: Int, component: Int, into dst: Tensor,
                                    accumulate: Bool) {
        driver.launch("radar_sum_planes_over_batch", grid: grid(c, block: 64), block: 64,
                      KernelArgs(.raw(partial), .i32(b), .i32(c), .i32(width), .i32(component), p(dst), .i32(accumulate ? 1 : 0)))
    }
    public func channelMoments(_ x: Tensor, mean: Tensor, variance: Tensor) {
        let (b, c, hw) = bhw(x)
        guard b * c > 0 else { return }
        let partial = planePartials(b, c, width: 2)
        driver.launch("radar_plane_moments", grid: b * c, block: CUDABackend.planeBlock(hw), KernelArgs(p(x), .raw(partial), .i32(hw)))
        driver.launch("radar_channel_moments_from_planes", grid: grid(c, block: 64), block: 64,
                      KernelArgs(.raw(partial), .i32(b), .i32(c), .i32(hw), p(mean), p(variance)))
    }
    public func channelNormalize(_ x: Tensor, mean: Tensor, invStd: Tensor, gamma: Tensor, beta: Tensor, _ y: Tensor) {
        let (_, c, hw) = bhw(x)
        elementwise("radar_channel_normalize", x.count, KernelArgs(p(x), p(mean), p(invStd), p(gamma), p(beta), p(y), .i64(x.count), .i32(c), .i32(hw)))
    }
    public func channelGradientSums(_ dy: Tensor, x: Tensor, mean: Tensor, invStd: Tensor, sumDy: Tensor, sumDyXhat: Tensor) {
        let (b, c, hw) = bhw(x)
        guard b * c > 0 else { return }
        let partial = planePartials(b, c, width: 2)
        driver.launch("radar_plane_gradient_sums", grid: b * c, block: CUDABackend.planeBlock(hw), KernelArgs(p(dy), p(x), p(mean), p(invStd), .raw(partial), .i32(c), .i32(hw)))
        sumPlanesOverBatch(partial, b, c, width: 2, component: 0, into: sumDy, accumulate: false)
        sumPlanesOverBatch(partial, b, c, width: 2, component: 1, into: sumDyXhat, accumulate: false)
    }
    public func accumulateChannelSums(_ x: Tensor, into dst: Tensor) {
        let (b, c, hw) = bhw(x)
        guard b * c > 0 else { return }
        let partial = planePartials(b, c, width: 1)
        driver.launch("radar_plane_sums", grid: b * c, block: CUDABackend.planeBlock(hw), KernelArgs(p(x), .raw(partial), .i32(hw)))
        sumPlanesOverBatch(partial, b, c, width: 1, component: 0, into: dst, accumulate: true)
    }
    public func batchNormUpdateStatistics(mean: Tensor, variance: Tensor, count: Int, eps: Float, momentum: Float, invStd: Tensor,
                                          runningMean: Tensor, runningVar: Tensor) {
        driver.launch("radar_batchnorm_update_statistics", grid: grid(mean.count, block: 64), block: 64,
                      KernelArgs(p(mean), p(variance), .i32(mean.count), .i32(count), .f32(eps), .f32(momentum), p(invStd), p(runningMean), p(runningVar)))
    }
    public func inverseStandardDeviation(_ variance: Tensor, eps: Float, _ invStd: Tensor) {
        driver.launch("radar_inverse_std", grid: grid(variance.count, block: 64), block: 64, KernelArgs(p(variance), .f32(eps), p(invStd), .i32(variance.count)))
    }
    public func batchNormLocalSums(mean: Tensor, variance: Tensor, count: Int, into sums: Tensor) {
        driver.launch("radar_batchnorm_local_sums", grid: grid(mean.count, block: 64), block: 64,
                      KernelArgs(p(mean), p(variance), .i32(mean.count), .f32(Float(count)), p(sums)))
    }
    public func batchNormGlobalMoments(_ sums: Tensor, channels: Int, mean: Tensor, variance: Tensor) {
        driver.launch("radar_batchnorm_global_moments", grid: grid(channels, block: 64), block: 64, KernelArgs(p(sums), .i32(channels), p(mean), p(variance)))
    }
    public func batchNormInputGradient(_ dy: Tensor, x: Tensor, mean: Tensor, invStd: Tensor, gamma: Tensor, sumDy: Tensor,
                                       sumDyXhat: Tensor, count: Int, _ dx: Tensor) {
        let (_, c, hw) = bhw(x)
        elementwise("radar_batchnorm_input_gradient", x.count,
                    KernelArgs(p(dy), p(x), p(mean), p(invStd), p(gamma), p(sumDy), p(sumDyXhat), .i32(count), p(dx), .i64(x.count), .i32(c), .i32(hw)))
    }

    // MARK: Convolution and attention: layout kernels around cuBLAS products

    // Convolution: im2col and strided-batched products over chunks of images, so the columns
    // (and backward's column gradients and per-image weight gradients) of at most
    // `convolutionWorkspaceBudget` bytes exist at once instead of the whole batch's (at batch 128
    // the branches' second convolution alone had 0.6 GiB of them under the rest of backward). In
    // bf16 precision im2col writes the columns as bf16, the products' operand: no fp32 columns
    // and no converted copy. The same values and sums in the same order for any chunk size (each
    // image's products are its own; radar_sum_parts adds the images' parts to dW in order).

    /// Images per chunk for `g`: the most whose workspace and backward scratch fit the budget, at
    /// least one.
    public func convolutionChunk(_ g: ConvolutionGeometry) -> Int {
        g.imagesPerChunk(budget: convolutionWorkspaceBudget, columnBytes: columnWidth)
    }
    /// Bytes per column element: bf16 in bf16 precision.
    private var columnWidth: Int { precision == .bf16 ? 2 : 4 }
    public func convolutionWorkspaceCount(_ g: ConvolutionGeometry) -> Int {
        (g.with(batch: convolutionChunk(g)).columnCount * columnWidth + 3) / 4
    }
    public func convolutionBackwardScratchCount(_ g: ConvolutionGeometry, inputGradient: Bool) -> Int {
        g.with(batch: convolutionChunk(g)).backwardScratchCount(inputGradient: inputGradient)
    }
    /// The kernels' geometry arguments for `images` images.
    private func geometryArgs(_ g: ConvolutionGeometry, images: Int) -> KernelArgs {
        KernelArgs(.i32(images), .i32(g.inChannels), .i32(g.height), .i32(g.width), .i32(g.kernel), .i32(g.stride), .i32(g.padding),
                   .i32(g.outHeight), .i32(g.outWidth))
    }
    /// A chunk's columns into the workspace (bf16 in bf16 precision) as the products read them.
    private func columns(_ x: Tensor, _ g: ConvolutionGeometry, first: Int, count: Int, into workspace: Tensor) -> Operand {
        precondition(x.dtype == .float32, "convolution input fp32")
        let inPlane = g.inChannels * g.height * g.width
        let elements = count * g.patchSize * g.outHeight * g.outWidth
        elementwise("radar_im2col", (elements + 3) / 4,  // four elements a thread
                    KernelArgs(.ptr(x.base + first * inPlane), p(workspace), .i32(columnWidth == 2 ? 1 : 0)) + geometryArgs(g, images: count))
        return Operand(base: UnsafeRawPointer(workspace.base), width: columnWidth)
    }

    public func convolutionForward(_ x: Tensor, weight: Tensor, bias: Tensor?, _ g: ConvolutionGeometry, workspace: Tensor, _ y: Tensor) {
        let ckk = g.patchSize, hw = g.outHeight * g.outWidth, cout = g.outChannels
        let w = operand(weight, slot: 0), chunk = convolutionChunk(g)
        for first in g.chunkStarts(chunk) {
            let count = min(chunk, g.batch - first)
            let col = columns(x, g, first: first, count: count, into: workspace)
            // y_i (Cout x HW) = W (Cout x CKK) col_i (CKK x HW), one strided-batched product per chunk.
            productOperands(transA: false, transB: false, m: cout, n: hw, k: ckk, alpha: 1, a: w.base, lda: ckk, b: col.base, ldb: hw,
                            strideB: ckk * hw, beta: 0, c: y.base + first * cout * hw, ldc: hw, strideC: cout * hw, batch: count)
        }
        if let bias { addChannelBias(bias, into: y) }
    }

    public func convolutionBackward(_ dy: Tensor, x: Tensor, weight: Tensor, _ g: ConvolutionGeometry, workspace: Tensor, scratch: Tensor,
                                    dWeight: Tensor, dBias: Tensor?, dx: Tensor?) {
        let ckk = g.patchSize, hw = g.outHeight * g.outWidth, cout = g.outChannels
        let chunk = convolutionChunk(g), parts = scratch.base, dcol = scratch.base + chunk * cout * ckk
        let w = dx.map { _ in operand(weight, slot: 1) }
        for first in g.chunkStarts(chunk) {
            let count = min(chunk, g.batch - first)
            let col = columns(x, g, first: first, count: count, into: workspace)  // the forward's columns, rebuilt
            // The chunk's dy, read by both products: converted once in bf16 precision.
            let d = operand(dy.base + first * cout * hw, count: count * cout * hw, slot: 0)
            // Per-image weight gradients dy_i col_i^T, added to dW in image order by radar_sum_parts (no atomics).
            productOperands(transA: false, transB: true, m: cout, n: ckk, k: hw, alpha: 1, a: d.base, lda: hw, strideA: cout * hw,
                            b: col.base, ldb: hw, strideB: ckk * hw, beta: 0, c: parts, ldc: ckk, strideC: cout * ckk, batch: count)
            if let dx, let w {
                let inPlane = g.inChannels * g.height * g.width
                productOperands(transA: true, transB: false, m: ckk, n: hw, k: cout, alpha: 1, a: w.base, lda: ckk, b: d.base, ldb: hw,
                                strideB: cout * hw, beta: 0, c: dcol, ldc: hw, strideC: ckk * hw, batch: count)
                elementwise("radar_col2im", count * inPlane, KernelArgs(.ptr(dcol), .ptr(dx.base + first * inPlane)) + geometryArgs(g, images: count))
            }
            elementwise("radar_sum_parts", cout * ckk, KernelArgs(.ptr(parts), .i32(count), .i64(cout * ckk), p(dWeight)))
        }
        if let dBias { accumulateChannelSums(dy, into: dBias) }
    }

    // Attention: one strided-batched product per head over the images (Q, K, V are column blocks
    // of qkv with leading dimension 3D; scores and probabilities are (B, H, N, N)). Each operand
    // tensor is converted once per call for bf16.
    public func attentionProbabilities(qkv: Tensor, heads h: Int, scale: Float, scores: Tensor, probs: Tensor) {
        attentionProbabilities(operand(qkv, slot: 0), qkv.shape, heads: h, scale: scale, scores: scores, probs: probs)
    }

    /// x: qkv as the products read it (converted once by the caller). With `bf16Copy`, the softmax
    /// also writes the probabilities' bf16 copy there.
    private func attentionProbabilities(_ x: Operand, _ qkv: Shape, heads h: Int, scale: Float, scores: Tensor, probs: Tensor,
                                        bf16Copy: UnsafeMutableRawPointer? = nil) {
        let b = qkv[0], n = qkv[1], d = qkv[2] / 3, hd = d / h
        for hi in 0..<h {
            productOperands(transA: false, transB: true, m: n, n: n, k: hd, alpha: scale, a: x.at(hi * hd), lda: 3 * d, strideA: n * 3 * d,
                    b: x.at(d + hi * hd), ldb: 3 * d, strideB: n * 3 * d, beta: 0, c: scores.base + hi * n * n, ldc: n, strideC: h * n * n,
                    batch: b)
        }
        softmaxForward(scores, probs, bf16Copy: bf16Copy, cols: n)
    }

    /// Where products write an output: the tensor itself (fp32, or bf16 that cuBLAS writes from
    /// bf16 operands), or fp32 staging of its first `span` elements (holding their values first
    /// when the products read them) that `finish` converts.
    struct Output {
        let base: UnsafeMutableRawPointer, bf16: Bool, staged: Bool
        /// The address `elements` in (the C pointer of a product; bf16 elements are two bytes).
        func at(_ elements: Int) -> UnsafeMutablePointer<Float> {
            (base + elements * (bf16 ? 2 : 4)).assumingMemoryBound(to: Float.self)
        }
    }
    private func output(_ t: Tensor, span: Int? = nil, reads: Bool = false) -> Output {
        guard t.dtype == .bfloat16 else { return Output(base: UnsafeMutableRawPointer(t.base), bf16: false, staged: false) }
        if precision == .bf16 { return Output(base: UnsafeMutableRawPointer(t.base), bf16: true, staged: false) }
        let count = span ?? t.count, staging = scratch(CUDABackend.stagingSlot, bytes: count * 4)
        if reads { elementwise("radar_from_bf16", count, KernelArgs(p(t), .raw(staging), .i64(count))) }
        return Output(base: staging, bf16: false, staged: true)
    }
    private func finish(_ o: Output, into t: Tensor, span: Int? = nil) {
        let count = span ?? t.count
        if o.staged { elementwise("radar_to_bf16", count, KernelArgs(.raw(o.base), p(t), .i64(count))) }
    }

    public func attentionForward(qkv: Tensor, heads h: Int, scale: Float, scores: Tensor, probs: Tensor, merged: Tensor) {
        let b = qkv.shape[0], n = qkv.shape[1], d = qkv.shape[2] / 3, hd = d / h
        let x = operand(qkv, slot: 0)
        // bf16: the softmax writes the probabilities' bf16 operand as well (no second pass over them).
        let copy = precision == .bf16 ? scratch(1, bytes: probs.count * 2) : nil
        attentionProbabilities(x, qkv.shape, heads: h, scale: scale, scores: scores, probs: probs, bf16Copy: copy)
        let pr = copy.map { Operand(base: UnsafeRawPointer($0), width: 2) } ?? operand(probs.base, count: probs.count, slot: 1)
        let out = output(merged)
        for hi in 0..<h {
            productOperands(transA: false, transB: false, m: n, n: hd, k: n, alpha: 1, a: pr.at(hi * n * n), lda: n, strideA: h * n * n,
                    b: x.at(2 * d + hi * hd), ldb: 3 * d, strideB: n * 3 * d, beta: 0, c: out.at(hi * hd), ldc: d,
                    strideC: n * d, batch: b, outputBF16: out.bf16)
        }
        finish(out, into: merged)
    }

    public func attentionBackward(dMerged: Tensor, qkv: Tensor, probs: Tensor, heads h: Int, scale: Float, dProbs: Tensor,
                                  dScores: Tensor, dQKV: Tensor, recompute: Bool) {
        let b = qkv.shape[0], n = qkv.shape[1], d = qkv.shape[2] / 3, hd = d / h
        let dO = operand(dMerged.base, count: dMerged.count, slot: 0), x = operand(qkv, slot: 1)
        // Recomputed under bf16, the softmax writes the probabilities' bf16 operand as forward's does
        // (no conversion pass over them).
        let copy = recompute && precision == .bf16 ? scratch(2, bytes: probs.count * 2) : nil
        if recompute { attentionProbabilities(x, qkv.shape, heads: h, scale: scale, scores: dScores, probs: probs, bf16Copy: copy) }
        let pr = copy.map { Operand(base: UnsafeRawPointer($0), width: 2) } ?? operand(probs.base, count: probs.count, slot: 2)
        let out = output(dQKV)
        for hi in 0..<h {
            productOperands(transA: false, transB: true, m: n, n: n, k: hd, alpha: 1, a: dO.at(hi * hd), lda: d, strideA: n * d,
                    b: x.at(2 * d + hi * hd), ldb: 3 * d, strideB: n * 3 * d, beta: 0, c: dProbs.base + hi * n * n, ldc: n,
                    strideC: h * n * n, batch: b)
            productOperands(transA: true, transB: false, m: n, n: hd, k: n, alpha: 1, a: pr.at(hi * n * n), lda: n, strideA: h * n * n,
                    b: dO.at(hi * hd), ldb: d, strideB: n * d, beta: 0, c: out.at(2 * d + hi * hd), ldc: 3 * d, strideC: n * 3 * d,
                    batch: b, outputBF16: out.bf16)
        }
        // bf16: dScores (scratch, read only by the products below) is written as their bf16 operand.
        let ds: Operand
        if precision == .bf16 {
            rows("radar_softmax_backward", dProbs.count / n, KernelArgs(p(dProbs), p(probs), p(dScores), .raw(UnsafeMutableRawPointer(dScores.base)),
                                                                        .i32(dProbs.count / n), .i32(n)))
            ds = Operand(base: UnsafeRawPointer(dScores.base), width: 2)
        } else {
            softmaxBackward(dProbs, y: probs, dScores, cols: n)
            ds = operand(dScores.base, count: dScores.count, slot: 0)
        }
        for hi in 0..<h {
            productOperands(transA: false, transB: false, m: n, n: hd, k: n, alpha: scale, a: ds.at(hi * n * n), lda: n, strideA: h * n * n,
                    b: x.at(d + hi * hd), ldb: 3 * d, strideB: n * 3 * d, beta: 0, c: out.at(hi * hd), ldc: 3 * d,
                    strideC: n * 3 * d, batch: b, outputBF16: out.bf16)
            productOperands(transA: true, transB: false, m: n, n: hd, k: n, alpha: scale, a: ds.at(hi * n * n), lda: n, strideA: h * n * n,
                    b: x.at(hi * hd), ldb: 3 * d, strideB: n * 3 * d, beta: 0, c: out.at(d + hi * hd), ldc: 3 * d,
                    strideC: n * 3 * d, batch: b, outputBF16: out.bf16)
        }
        finish(out, into: dQKV)
    }

    // Fused attention (kernels/attention.cuh): a block per 64 rows of one (image, head).
    public func fusedAttention(headDim: Int) -> Bool {
        fusedAttentionEnabled && precision == .bf16 && CUDABackend.fusedHeadDims.contains(headDim)
    }
    private func attentionBlocks(_ qkv: Tensor, heads h: Int) -> (blocks: Int, n: Int, hd: Int) {
        let n = qkv.shape[1], hd = qkv.shape[2] / 3 / h
        precondition(CUDABackend.fusedHeadDims.contains(hd) && qkv.dtype == .bfloat16, "fused attention: bf16 qkv, heads of 16, 32 or 64 channels")
        return ((n + 63) / 64 * h * qkv.shape[0], n, hd)
    }
    /// The three fused attention kernels.
    enum AttentionKernel: String, CaseIterable { case forward, backward_query, backward_key_value }
    struct AttentionKernelKey: Hashable { let kernel: AttentionKernel, headDim: Int, build: AttentionKernelBuild }
    /// Every fused attention kernel's name (3 kernels x 3 head sizes x 3 builds), made once: a name
    /// formatted per launch was a heap allocation, three a block and step.
    static let attentionKernelNames: [AttentionKernelKey: String] = Dictionary(uniqueKeysWithValues:
        AttentionKernel.allCases.flatMap { k in
            fusedHeadDims.flatMap { hd in
                AttentionKernelBuild.allCases.map { b in (AttentionKernelKey(kernel: k, headDim: hd, build: b), "radar_attention_\(k.rawValue)_hd\(hd)" + b.suffix) }
            }
        })
    func attentionKernel(_ kernel: AttentionKernel, headDim hd: Int) -> String {
        CUDABackend.attentionKernelNames[AttentionKernelKey(kernel: kernel, headDim: hd, build: attentionKernels)]!
    }
    public func fusedAttentionForward(qkv: Tensor, heads h: Int, scale: Float, merged: Tensor, logSumExp: Tensor) {
        let (blocks, n, hd) = attentionBlocks(qkv, heads: h)
        driver.launch(attentionKernel(.forward, headDim: hd), grid: blocks, block: 128, KernelArgs(p(qkv), p(merged), p(logSumExp), .i32(n), .i32(h), .f32(scale)))
    }
    public func fusedAttentionBackward(dMerged: Tensor, qkv: Tensor, merged: Tensor, logSumExp: Tensor, heads h: Int, scale: Float,
                                       delta: Tensor, dQKV: Tensor) {
        let (blocks, n, hd) = attentionBlocks(qkv, heads: h)
        precondition(dMerged.dtype == .bfloat16 && merged.dtype == .bfloat16, "fused attention backward: bf16 merged and dMerged expected")
        // dQ and delta first; dK and dV read delta.
        driver.launch(attentionKernel(.backward_query, headDim: hd), grid: blocks, block: 128,
                      KernelArgs(p(qkv), p(merged), p(dMerged), p(logSumExp), p(delta), p(dQKV), bf16(dQKV), .i32(n), .i32(h), .f32(scale)))
        driver.launch(attentionKernel(.backward_key_value, headDim: hd), grid: blocks, block: 128,
                      KernelArgs(p(qkv), p(dMerged), p(logSumExp), p(delta), p(dQKV), bf16(dQKV), .i32(n), .i32(h), .f32(scale)))
    }

    // MARK: Pooling, tokens, columns

    public func globalAvgPoolForward(_ x: Tensor, _ y: Tensor) {
        let (b, c, hw) = bhw(x)
        driver.launch("radar_global_avg_pool_forward", grid: grid(b * c, block: 64), block: 64, KernelArgs(p(x), p(y), .i32(b * c), .i32(hw)))
    }
    public func globalAvgPoolBackward(_ dy: Tensor, _ dx: Tensor) {
        let (_, _, hw) = bhw(dx)
        elementwise("radar_global_avg_pool_backward", dx.count, KernelArgs(p(dy), p(dx), .i64(dx.count), .i32(hw)))
    }
    public func tokenMeanMaxForward(_ x: Tensor, mean: Tensor, max: Tensor, argmax: Tensor) {
        let (b, n, d) = (x.shape[0], x.shape[1], x.shape[2])
        elementwise("radar_token_mean_max", b * d, KernelArgs(p(x), p(mean), p(max), p(argmax), .i32(b), .i32(n), .i32(d)))
    }
    public func tokenMeanMaxBackward(dMean: Tensor, dMax: Tensor, argmax: Tensor, _ dx: Tensor) {
        let (b, n, d) = (dx.shape[0], dx.shape[1], dx.shape[2])
        elementwise("radar_token_mean_max_backward", dx.count, KernelArgs(p(dMean), p(dMax), p(argmax), p(dx), .i32(b), .i32(n), .i32(d)))
    }
    public func transposeLastTwo(_ x: Tensor, _ y: Tensor) {
        elementwise("radar_transpose_last_two", x.count, KernelArgs(p(x), p(y), .i32(x.shape[0]), .i32(x.shape[1]), .i32(x.shape[2])))
    }
    public func copyColumns(_ src: Tensor, srcCols: Int, into dst: Tensor, dstCols: Int, offset: Int) {
        elementwise("radar_copy_columns", src.count, KernelArgs(p(src), .i32(srcCols), p(dst), .i32(dstCols), .i32(offset), .i64(src.count / srcCols)))
    }
    public func sliceColumns(_ src: Tensor, srcCols: Int, offset: Int, into dst: Tensor, dstCols: Int) {
        elementwise("radar_slice_columns", dst.count, KernelArgs(p(src), .i32(srcCols), .i32(offset), p(dst), .i32(dstCols), .i64(dst.count / dstCols)))
    }

    // MARK: Recurrent and attention pieces

    public func gruGatesForward(gi: Tensor, gh: Tensor, h: Tensor, hNew: Tensor, r: Tensor, z: Tensor, n: Tensor) {
        let e = h.shape[h.shape.rank - 1]
        elementwise("radar_gru_gates_forward", h.count, KernelArgs(p(gi), p(gh), p(h), p(hNew), p(r), p(z), p(n), .i32(h.count / e), .i32(e)))
    }
    public func gruGatesBackward(dhNew: Tensor, gh: Tensor, h: Tensor, r: Tensor, z: Tensor, n: Tensor, dgi: Tensor, dgh: Tensor, dh: Tensor) {
        let e = h.shape[h.shape.rank - 1]
        elementwise("radar_gru_gates_backward", h.count,
                    KernelArgs(p(dhNew), p(gh), p(h), p(r), p(z), p(n), p(dgi), p(dgh), p(dh), .i32(h.count / e), .i32(e)))
    }
    public func queryKeyScores(q: Tensor, k: Tensor, tokens: Int, heads: Int, scale: Float, _ scores: Tensor) {
        let e = q.shape[q.shape.rank - 1]
        elementwise("radar_query_key_scores", scores.count, KernelArgs(p(q), p(k), p(scores), .i32(q.count / e), .i32(tokens), .i32(heads), .i32(e), .f32(scale)))
    }
    public func weightedValues(_ w: Tensor, v: Tensor, tokens: Int, heads: Int, _ ctx: Tensor) {
        let e = ctx.shape[ctx.shape.rank - 1]
        elementwise("radar_weighted_values", ctx.count, KernelArgs(p(w), p(v), p(ctx), .i32(ctx.count / e), .i32(tokens), .i32(heads), .i32(e)))
    }
    public func weightedValuesBackward(dCtx: Tensor, w: Tensor, v: Tensor, tokens: Int, heads: Int, dW: Tensor, dV: Tensor) {
        let e = dCtx.shape[dCtx.shape.rank - 1]
        elementwise("radar_weighted_values_backward", w.count,
                    KernelArgs(p(dCtx), p(w), p(v), p(dW), p(dV), .i32(dCtx.count / e), .i32(tokens), .i32(heads), .i32(e)))
    }
    public func queryKeyScoresBackward(dScores: Tensor, q: Tensor, k: Tensor, tokens: Int, heads: Int, scale: Float, dQ: Tensor, dK: Tensor) {
        let e = q.shape[q.shape.rank - 1]
        elementwise("radar_query_key_scores_backward", q.count,
                    KernelArgs(p(dScores), p(q), p(k), p(dQ), p(dK), .i32(q.count / e), .i32(tokens), .i32(heads), .i32(e), .f32(scale)))
    }
    public func meanOverHeads(_ w: Tensor, heads: Int, tokens: Int, _ out: Tensor) {
        elementwise("radar_mean_over_heads", out.count, KernelArgs(p(w), p(out), .i32(out.count / tokens), .i32(heads), .i32(tokens)))
    }

    // MARK: Losses and fusion

    public func smoothLabels(_ labels: Tensor, smoothing: Float, _ target: Tensor) {
        elementwise("radar_smooth_labels", labels.count, KernelArgs(p(labels), p(target), .i32(labels.count), .f32(smoothing)))
    }
    public func binaryCrossEntropyWithLogits(_ logits: Tensor, targets: Tensor, scale: Float, dLogits: Tensor, loss: Tensor, weight: Float) {
        driver.launch("radar_bce_with_logits", grid: 1, block: 256,
                      KernelArgs(p(logits), p(targets), .i32(logits.count), .f32(scale), p(dLogits), p(loss), .f32(weight)))
    }
    public func cosineMarginPenalty(_ a: Tensor, _ b: Tensor, margin: Float, scale: Float, da: Tensor, db: Tensor, loss: Tensor, weight: Float) {
        let e = a.shape.last
        driver.launch("radar_cosine_margin_penalty", grid: 1, block: 256,
                      KernelArgs(p(a), p(b), .i32(a.count / e), .i32(e), .f32(margin), .f32(scale), p(da), p(db), p(loss), .f32(weight)))
    }
    public func axpy(_ a: Float, _ x: Tensor, _ y: Tensor) { elementwise("radar_axpy", x.count, KernelArgs(.f32(a), p(x), p(y), .i64(x.count))) }
    public func flagNonFinite(_ x: Tensor, into flag: Tensor) { elementwise("radar_flag_non_finite", x.count, KernelArgs(p(x), .i64(x.count), p(flag))) }
    public func gatedFusionForward(gate: Tensor, reasoning: Tensor, external: Tensor, final: Tensor, prob: Tensor, alphaOut: Tensor) {
        let n = final.count
        precondition(reasoning.count == n && external.count == n && prob.count == n && alphaOut.count == n,
                     "gated fusion: reasoning, external, prob and alpha must have final's \(n) elements")
        elementwise("radar_gated_fusion_forward", final.count, KernelArgs(p(gate), p(reasoning), p(external), p(final), p(prob), p(alphaOut), .i32(final.count)))
    }
    public func gatedFusionBackward(dFinal: Tensor, gate: Tensor, reasoning: Tensor, external: Tensor, dReasoning: Tensor, dExternal: Tensor,
                                    dGate: Tensor) {
        let n = dFinal.count
        precondition(reasoning.count == n && external.count == n && dReasoning.count == n && dExternal.count == n,
                     "gated fusion backward: every tensor must have dFinal's \(n) elements")
        driver.launch("radar_gated_fusion_backward", grid: 1, block: 256,
                      KernelArgs(p(dFinal), p(gate), p(reasoning), p(external), p(dReasoning), p(dExternal), p(dGate), .i32(dFinal.count)))
    }
    public func meanAbsSigmoidDifference(_ a: Tensor, _ b: Tensor, into out: Tensor) {
        driver.launch("radar_mean_abs_sigmoid_difference", grid: 1, block: 256, KernelArgs(p(a), p(b), .i32(a.count), p(out)))
    }

    // MARK: Optimizer

    public func clipGradientNorm(_ grads: Tensor, ranges: [Range<Int>], maxNorm: Float, nonFinite: Tensor, norm: Tensor, gate: Tensor) {
        // Index loops: a for-in over the array takes its iterator's subscript coroutine, a heap
        // allocation each in a debug build (the step is allocation-free in both builds).
        var parts = 0
        for i in 0..<ranges.count { parts += (ranges[i].count + CUDABackend.chunk - 1) / CUDABackend.chunk }
        if parts * 2 > normPartialCapacity {  // doubles in float-sized device memory
            if let old = normPartials { driver.free(UnsafeMutableRawPointer(old)) }
            normPartials = CUDABackend.allocate(driver, floats: parts * 2)
            normPartialCapacity = parts * 2
        }
        let partial = UnsafeMutableRawPointer(normPartials!).bindMemory(to: Double.self, capacity: parts)
        var at = 0
        for i in 0..<ranges.count where ranges[i].count > 0 {
            let r = ranges[i], blocks = (r.count + CUDABackend.chunk - 1) / CUDABackend.chunk
            driver.launch("radar_sum_squares_partial", grid: blocks, block: 256,
                          KernelArgs(.ptr(grads.base + r.lowerBound), .i64(r.count), .i64(CUDABackend.chunk), .doubles(partial + at)))
            at += blocks
        }
        driver.launch("radar_clip_coefficient", grid: 1, block: 1,
                      KernelArgs(.doubles(partial), .i32(at), .f32(maxNorm), p(nonFinite), p(norm), p(gate), .ptr(coefficient)))
        for i in 0..<ranges.count where ranges[i].count > 0 {
            let r = ranges[i]
            elementwise("radar_scale_by_scalar", r.count, KernelArgs(.ptr(grads.base + r.lowerBound), .i64(r.count), .ptr(coefficient)))
        }
    }

    public func adamW(params: Tensor, grads: Tensor, expAvg: Tensor, expAvgSq: Tensor, lr: Float, beta1: Float, beta2: Float, eps: Float,
                      weightDecay: Float, step: Int, gate: Tensor) {
        // The step's scalars in double, rounded once, as the CPU backend (and Python floats) do.
        let bc1 = 1 - Foundation.pow(Double(beta1), Double(step)), bc2 = 1 - Foundation.pow(Double(beta2), Double(step))
        let stepSize = Float(Double(lr) / bc1), bc2Sqrt = Float(bc2.squareRoot()), decay = Float(1 - Double(lr) * Double(weightDecay))
        elementwise("radar_adamw", params.count, KernelArgs(p(params), p(grads), p(expAvg), p(expAvgSq), .i64(params.count), .f32(beta1), .f32(beta2),
                                                            .f32(eps), .f32(stepSize), .f32(bc2Sqrt), .f32(decay), p(gate)))
    }

    public func scale(_ x: Tensor, by s: Float) { elementwise("radar_scale", x.count, KernelArgs(p(x), .i64(x.count), .f32(s))) }

    // MARK: Fixed image transforms

    public func grayscale(_ x: Tensor, _ y: Tensor) {
        elementwise("radar_grayscale", y.count, KernelArgs(p(x), p(y), .i32(x.shape[0]), .i32(x.shape[2] * x.shape[3])))
    }
    public func sobelMagnitude(_ x: Tensor, _ y: Tensor) {
        driver.launch("radar_sobel_magnitude", grid: x.shape[0], block: 256, KernelArgs(p(x), p(y), .i32(x.shape[2]), .i32(x.shape[3])))
    }
    public func resizeBilinear(_ x: Tensor, _ y: Tensor) {
        elementwise("radar_resize_bilinear", y.count, KernelArgs(p(x), p(y), .i32(x.shape[0] * x.shape[1]), .i32(x.shape[2]), .i32(x.shape[3]),
                                                                 .i32(y.shape[2]), .i32(y.shape[3])))
    }
    /// cuFFT's R2C into scratch, then |X| with the Hermitian half filled in, fftshift-ed.
    public func fftMagnitudeShifted(_ x: Tensor, _ y: Tensor) {
        let b = x.count / (x.shape[2] * x.shape[3]), f = x.shape[2]
        let spectrum = scratch(3, bytes: b * f * (f / 2 + 1) * 8)
        driver.fftRealToComplex(UnsafeRawPointer(x.base), spectrum, size: f, batch: b)
        elementwise("radar_fft_magnitude_shifted", y.count, KernelArgs(.raw(spectrum), p(y), .i32(b), .i32(f)))
    }
    public func highPassLogNormalize(_ x: Tensor, mask: Tensor, _ y: Tensor) {
        driver.launch("radar_high_pass_log_normalize", grid: x.count / mask.count, block: 256, KernelArgs(p(x), p(mask), p(y), .i32(mask.count)))
    }
}

/// The builds of the fused attention kernels (kernels/attention.cuh), each a set of nine entry
/// points (three kernels, heads of 16, 32 and 64).
public enum AttentionKernelBuild: String, CaseIterable, Sendable {
    /// Two 32-bit shared loads per tensor-core B fragment (four 16-bit ones for a transposed read),
    /// expf, bf16 rounding in integer arithmetic: the first build (an H200's run 5; on an H100
    /// 10% slower a step than `fast`).
    case plain
    /// The B fragments by ldmatrix (`_ldsm`): the plain build's bits.
    case ldmatrix
    /// ldmatrix, softmax in base 2 by the special-function unit (ex2.approx: one FFMA and one
    /// MUFU a probability instead of expf's sequence), masks only in a step past N, bf16 packing by
    /// cvt.rn.bf16x2 (`_fast`): about half the instructions a step (ptxas's SASS), within bf16's
    /// rounding of the plain build, not its bits. The default: on an H100 its three kernels took
    /// 4.9 ms of a bf16 step where plain's took 7.8.
    case fast

    /// The kernel names' suffix.
    public var suffix: String {
        switch self {
        case .plain: ""
        case .ldmatrix: "_ldsm"
        case .fast: "_fast"
        }
    }
}
