import COneDNN
import CTensorKernels
import RadarEngine
import COpenBLAS
import CFFTW
import Synchronization

/// The CPU backend: OpenBLAS `cblas_sgemm` for every matrix product, Swift loops over unsafe
/// buffers for everything else, spread over a `WorkerPool`.
///
/// Work is always cut by problem shape (fixed tiles, one image, one head), never by thread count,
/// and every reduction runs in a fixed order, so results are bit-identical for any `threads`.
/// OpenBLAS itself is pinned to one thread: parallelism is ours.
public final class CPUBackend: Backend, @unchecked Sendable {
    public let pool: WorkerPool
    /// Floating-point operations of every GEMM since the last reset (2 m n k each), for
    /// benchmarks' effective GFLOP/s.
    public let gemmFlops = Atomic<Int>(0)
    /// Threads kernels spread work over; results never depend on it.
    public var threads: Int { pool.threadCount }
    /// How products are formed: fp32 (OpenBLAS), or bf16 operands with fp32 accumulation.
    public let products: CPUProducts
    public var recomputesInBackward: Bool { false }
    /// The CPU keeps fp32 activations by default (memory is not what bounds its step); it runs
    /// bf16 ones too (`radar bench step --bf16-activations true`), widening them per product.
    public var storesBFloat16Activations: Bool { false }
    public var roundsProductOperandsToBFloat16: Bool { false }
    public var deviceDescription: String {
        "cpu (\(threads) thread\(threads == 1 ? "" : "s"), OpenBLAS \(CPUBackend.blasDescription)\(products == .fp32 ? "" : ", " + products.description))"
    }
    private let syncCount = Atomic<Int>(0)
    /// Elementwise kernels hand out chunks of this many elements.
    public static let grain = 16_384
    /// Whether the AVX2 twins of the elementwise kernels run (CTensorKernels: bit-identical to the
    /// Swift loops, chosen from cpuid). Tests set it to false to run the Swift loops and compare.
    nonisolated(unsafe) public static var vectorKernels = radar_tensor_kernels_avx2() != 0

    var fftPlans: [Int: OpaquePointer] = [:]
    private let floatScratch = GrowableBuffer<Float>()
    private let doubleScratch = GrowableBuffer<Double>()
    /// bf16 product operands widened to fp32 (`product`, attention's qkv).
    private let widened = [GrowableBuffer<Float>(), GrowableBuffer<Float>()]

    /// `t` itself when fp32, else its fp32 values in widening buffer `slot` (grown once, reused).
    func fp32Operand(_ t: Tensor, slot: Int) -> Tensor {
        guard t.dtype == .bfloat16 else { return t }
        let w = Tensor(widened[slot].at(least: t.count), t.shape)
        convert(t, into: w)
        return w
    }
    let planLock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)

    public init(threads: Int = 1, products: CPUProducts = .fp32) {
        self.products = products
        openblas_set_num_threads(1)
        pool = WorkerPool(threads: threads)
        pthread_mutex_init(planLock, nil)
    }

    deinit {
        for (_, p) in fftPlans { fftwf_destroy_plan(p) }
        pthread_mutex_destroy(planLock)
        planLock.deallocate()
    }

    /// OpenBLAS's view of this CPU (for benchmark records).
    public static var blasDescription: String {
        let core = openblas_get_corename().map { String(cString: $0) } ?? "?"
        let cfg = openblas_get_config().map { String(cString: $0) } ?? "?"
        return "\(cfg) (\(core))"
    }

    /// Kernel scratch memory, grown (rarely) and then reused by every later call.
    func fftScratch(count: Int) -> UnsafeMutablePointer<Float> { floatScratch.at(least: count) }
    func reductionScratch(count: Int) -> UnsafeMutablePointer<Double> { doubleScratch.at(least: count) }

    // MARK: Memory (host memory: every call completes before it returns)

    public func allocate(_ count: Int) -> UnsafeMutablePointer<Float> {
        var raw: UnsafeMutableRawPointer?
        let bytes = max(count, 1) * MemoryLayout<Float>.size
        guard posix_memalign(&raw, 64, bytes) == 0, let raw else { fatalError("cpu backend: out of memory allocating \(bytes) bytes") }
        memset(raw, 0, bytes)
        return raw.bindMemory(to: Float.self, capacity: max(count, 1))
    }

    public func release(_ address: UnsafeMutablePointer<Float>) { free(address) }

    public func upload(_ values: UnsafeBufferPointer<Float>, into t: Tensor) {
        precondition(values.count == t.count && t.dtype == .float32, "upload of \(values.count) values into \(t.dtype.name) \(t.shape)")
        if let b = values.baseAddress { t.base.update(from: b, count: t.count) }
    }

    public func download(_ t: Tensor, into host: UnsafeMutableBufferPointer<Float>) {
        precondition(host.count >= t.count && t.dtype == .float32, "download of \(t.dtype.name) \(t.shape) into \(host.count) values")
        syncCount.wrappingAdd(1, ordering: .relaxed)
        if let b = host.baseAddress { b.update(from: t.base, count: t.count) }
    }

    public func synchronize() { syncCount.wrappingAdd(1, ordering: .relaxed) }
    public var synchronizations: Int { syncCount.load(ordering: .relaxed) }
    public func hostAddress(_ t: Tensor) -> UnsafeMutablePointer<Float>? { t.base }

    /// Runs `body(i)` for i in 0..<count on the pool; kernels built from serial pieces (one
    /// image's convolution, one attention head) use it, and `body` calls only serial code.
    func forEach(_ count: Int, _ body: (Int) -> Void) { pool.run(tasks: count, body) }

    func parallel(_ count: Int, grain: Int = CPUBackend.grain, _ body: (Range<Int>) -> Void) {
        pool.parallelFor(count, grain: grain, body)
    }

    // MARK: GEMM

    func serialGemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                           a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                           beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
        if m == 0 || n == 0 { return }
        gemmFlops.wrappingAdd(2 * m * n * k, ordering: .relaxed)
        guard products != .fp32 && k > 0 else {
            fp32Gemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb, beta: beta, c: c, ldc: ldc)
            return
        }
        // bf16 operands (nearest even), packed into this thread's scratch; fp32 accumulation.
        let (aRows, aCols) = transA ? (k, m) : (m, k), (bRows, bCols) = transB ? (n, k) : (k, n)
        if products == .bf16OneDNN {
            let pa = UnsafeMutableRawPointer(ThreadScratch.floats((aRows * aCols + 1) / 2, slot: 1)).assumingMemoryBound(to: UInt16.self)
            let pb = UnsafeMutableRawPointer(ThreadScratch.floats((bRows * bCols + 1) / 2, slot: 2)).assumingMemoryBound(to: UInt16.self)
            radar_to_bf16_matrix(a, Int64(aRows), Int64(aCols), Int64(lda), pa)
            radar_to_bf16_matrix(b, Int64(bRows), Int64(bCols), Int64(ldb), pb)
            let done = withUnsafeTemporaryAllocation(of: CChar.self, capacity: 256) { why in
                if radar_onednn_matmul(1, transA ? 1 : 0, transB ? 1 : 0, Int64(m), Int64(n), Int64(k), alpha, pa, Int64(aCols), pb, Int64(bCols),
                                       beta, c, Int64(ldc), why.baseAddress, 256) != 0 { return true }
                // A shape oneDNN will not take (the start-up probe passed): this product goes
                // through the rounded-operand path, the same numerics; said once per process.
                CPUProducts.noteOneDNNFallback("\(String(cString: why.baseAddress!)) for m \(m), n \(n), k \(k), transA \(transA), transB \(transB)")
                return false
            }
            if done { return }
        }
        let pa = ThreadScratch.floats(aRows * aCols, slot: 1), pb = ThreadScratch.floats(bRows * bCols, slot: 2)
        radar_round_bf16_matrix(a, Int64(aRows), Int64(aCols), Int64(lda), pa)
        radar_round_bf16_matrix(b, Int64(bRows), Int64(bCols), Int64(ldb), pb)
        fp32Gemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: pa, lda: aCols, b: pb, ldb: bCols, beta: beta, c: c, ldc: ldc)
    }

    func fp32Gemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                  a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                  beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
        // OpenBLAS 0.3.21's AVX-512 small-matrix path (m n k <= 1e6) mallocs a packing buffer on
        // every NN call whose n is not a multiple of 16 (measured: k >= 32, n % 16 in 1...8;
        // TN, NT and TT never allocate). We hand it the same product as TN, with A transposed
        // into a per-thread scratch buffer, so the training step stays allocation-free. The choice depends on
        // the shape only, so results remain independent of the thread count.
        if !transA && !transB && k >= 32 && n % 16 != 0 && m * n * k <= 1_100_000 {
            // A transposed copy of A in this thread's scratch buffer.
            let t = ThreadScratch.floats(m * k)
            for i in 0..<m { for p in 0..<k { t[p * m + i] = a[i * lda + p] } }
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Int32(m), Int32(n), Int32(k), alpha,
                        t, Int32(m), b, Int32(ldb), beta, c, Int32(ldc))
            return
        }
        cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                    Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }

    /// Tiles the larger of m and n into blocks whose size depends on the shape only.
    public func gemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                     a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                     beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
        tiledGemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb,
                  beta: beta, c: c, ldc: ldc, rowBias: nil)
    }

    /// `gemm`'s tiles; with `rowBias`, each tile first sets its block of C to the bias (C's
    /// columns), while that block is about to be used, and then accumulates (beta must be 1).
    func tiledGemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                   a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                   beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int, rowBias: UnsafePointer<Float>?) {
        let flops = 2 * m * n * max(k, 1)
        let splitRows = m >= n
        let extent = splitRows ? m : n
        // Tiles of at least 128 rows/cols and about 8 of them for big products: the tiling
        // depends on the shape only (never on the thread count: OpenBLAS rounds differently in
        // its small-matrix and blocked kernels, so a tiled product and an untiled one can
        // differ), and each tile re-packs the other operand, so fewer, larger tiles cost a
        // single thread less (measured: 16 tiles left one thread at 0.76-0.89 of one cblas_sgemm
        // call on ViT-S shapes). One OpenBLAS call per thread instead (cut at multiples of 96
        // rows, which keeps the bits) measured no faster through this machine's noise.
        var tile = max(128, ((extent + 7) / 8 + 15) / 16 * 16)
        if flops < 4_000_000 { tile = extent }
        let tiles = (extent + tile - 1) / max(tile, 1)
        forEach(tiles) { t in
            let lo = t * tile, len = min(tile, extent - lo)
            if splitRows {
                if let rowBias { for r in lo..<(lo + len) { (c + r * ldc).update(from: rowBias, count: n) } }
                let aOff = transA ? lo : lo * lda
                serialGemm(transA: transA, transB: transB, m: len, n: n, k: k, alpha: alpha, a: a + aOff, lda: lda,
                           b: b, ldb: ldb, beta: beta, c: c + lo * ldc, ldc: ldc)
            } else {
                if let rowBias { for r in 0..<m { (c + r * ldc + lo).update(from: rowBias + lo, count: len) } }
                let bOff = transB ? lo * ldb : lo
                serialGemm(transA: transA, transB: transB, m: m, n: len, k: k, alpha: alpha, a: a, lda: lda,
                           b: b + bOff, ldb: ldb, beta: beta, c: c + lo, ldc: ldc)
            }
        }
    }

    public func biasedProduct(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float, a: Tensor, lda: Int,
                              b: Tensor, ldb: Int, bias: Tensor, c: Tensor, ldc: Int) {
        precondition(c.dtype == .float32 && bias.dtype == .float32 && bias.count == n, "biasedProduct: C and bias fp32, bias of n")
        tiledGemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: fp32Operand(a, slot: 0).base, lda: lda,
                  b: fp32Operand(b, slot: 1).base, ldb: ldb, beta: 1, c: c.base, ldc: ldc, rowBias: bias.base)
    }

    public func product(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float, a: Tensor, lda: Int,
                        b: Tensor, ldb: Int, beta: Float, c: Tensor, ldc: Int) {
        precondition(c.dtype == .float32, "product: C must be fp32")
        gemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: fp32Operand(a, slot: 0).base, lda: lda,
             b: fp32Operand(b, slot: 1).base, ldb: ldb, beta: beta, c: c.base, ldc: ldc)
    }

    public func convert(_ src: Tensor, into dst: Tensor) {
        precondition(src.count == dst.count, "convert \(src.shape) into \(dst.shape)")
        let raw = UnsafeMutableRawPointer(src.base), out = UnsafeMutableRawPointer(dst.base)
        switch (src.dtype, dst.dtype) {
        case (.float32, .bfloat16):
            let x = raw.assumingMemoryBound(to: Float.self), y = out.assumingMemoryBound(to: UInt16.self)
            parallel(src.count) { r in BFloat16.pack(x + r.lowerBound, y + r.lowerBound, count: r.count) }
        case (.bfloat16, .float32):
            let x = raw.assumingMemoryBound(to: UInt16.self), y = out.assumingMemoryBound(to: Float.self)
            parallel(src.count) { r in BFloat16.unpack(x + r.lowerBound, y + r.lowerBound, count: r.count) }
        default:
            out.copyMemory(from: raw, byteCount: src.dtype == .float32 ? src.count * 4 : src.count * 2)
        }
    }

    /// One single-threaded GEMM on raw addresses: what the emulated CUDA device's cuBLAS runs, so
    /// its products are the CPU backend's bit for bit (row-major, as `gemm`).
    public func gemmSerial(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                           a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                           beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
        serialGemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb, beta: beta, c: c, ldc: ldc)
    }

    /// dst[i] += sum_j parts[j * n + i] for j in 0..<partCount, summed in order j = 0, 1, ...
    func sumParts(_ parts: UnsafePointer<Float>, partCount: Int, n: Int,
                         accumulateInto dst: UnsafeMutablePointer<Float>) {
        parallel(n) { r in
            for j in 0..<partCount {
                let p = parts + j * n
                for i in r { dst[i] += p[i] }
            }
        }
    }
}

#if canImport(Glibc)
import Glibc
#endif

/// A buffer that only grows: after warm-up, `at(least:)` hands out the same memory without allocating.
final class GrowableBuffer<T> {
    private var base: UnsafeMutablePointer<T>?
    private var capacity = 0

    func at(least count: Int) -> UnsafeMutablePointer<T> {
        if count > capacity {
            base?.deallocate()
            base = .allocate(capacity: count)
            capacity = count
        }
        return base!
    }

    deinit { base?.deallocate() }
}
