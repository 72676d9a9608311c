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
    /// Bytes a convolution's columns and backward scratch may take at once (`convolutionChunk`;
    /// `Devices.convolutionWorkspaceBudget` reads RADAR_CONV_WORKSPACE_MIB). Set before a step's
    /// arena is sized.
    public var convolutionWorkspaceBudget = ConvolutionGeometry.defaultWorkspaceBudget
    /// How products are formed: fp32 (OpenBLAS), or bf16 operands with fp32 accumulation.
    public let products: CPUProducts
    public var recomputesInBackward: Bool { false }
    /// With bf16 products the activations only products read are kept in bf16, as PyTorch's
    /// autocast keeps its GEMM inputs: each is rounded once, where it is written, instead of by
    /// every product that reads it (forward, then the weight gradient), and oneDNN reads it as
    /// it is. With fp32 products they stay fp32 (bf16 would only add rounding); fp32 products
    /// still run bf16 ones when asked (`radar bench step --bf16-activations true`), widening them.
    public var storesBFloat16Activations: Bool { products.isBF16 }
    /// bf16 products round every fp32 operand, so the weights (one copy per pass,
    /// `ExecutionContext.productWeight`) and an output gradient two products read are rounded
    /// once beforehand: the same bits, fewer conversions.
    public var roundsProductOperandsToBFloat16: Bool { products.isBF16 }
    public var deviceDescription: String {
        // openblas_get_config names the library itself ("OpenBLAS 0.3.21 ..."): it read "OpenBLAS OpenBLAS".
        let blas = CPUBackend.blasDescription
        return "cpu (\(threads) thread\(threads == 1 ? "" : "s"), \(blas.hasPrefix("OpenBLAS") ? "" : "OpenBLAS ")\(blas)\(products == .fp32 ? "" : ", " + products.description))"
    }
    private let syncCount = Atomic<Int>(0)
    /// Elementwise kernels hand out chunks of this many elements.
    public static let grain = 16_384
    /// Whether the AVX2 twins of the elementwise kernels run (CTensorKernels: bit-identical to the
    /// Swift loops, chosen from cpuid). Tests set it to false to run the Swift loops and compare.
    nonisolated(unsafe) public static var vectorKernels = radar_tensor_kernels_avx2() != 0

    /// `n` floats as bfloat16 bit patterns (`BFloat16.bits`: nearest even, NaN kept quiet), eight
    /// at a time where `vectorKernels`: the same bits. Every bf16 output of this backend and every
    /// message of the ring's bf16 wire is packed with it (the Swift loop took 0.31 ns a value).
    public static func packBFloat16(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<UInt16>, count n: Int) {
        guard n > 0 else { return }
        radar_to_bf16_matrix(src, 1, Int64(n), Int64(n), dst, vectorKernels ? 1 : 0)
    }

    /// `n` floats rounded to bfloat16 in place (`BFloat16.round`), as `packBFloat16`.
    public static func roundBFloat16(_ values: UnsafeMutablePointer<Float>, count n: Int) {
        guard n > 0 else { return }
        radar_round_bf16_matrix(values, 1, Int64(n), Int64(n), values, vectorKernels ? 1 : 0)
    }
    /// Makes every oneDNN product fail as a refused shape would, so that tests run the fallback
    /// (OpenBLAS on widened operands) on CPUs where oneDNN's bf16 matmul runs.
    nonisolated(unsafe) public static var refuseOneDNN = false

    var fftPlans: [Int: OpaquePointer] = [:]
    private let floatScratch = GrowableBuffer<Float>()
    private let doubleScratch = GrowableBuffer<Double>()
    /// A tiled product's operands, prepared once and read by all its tiles: bf16 bit patterns
    /// (oneDNN) or fp32 values (rounded to bf16 on the rounded-operand path, or a bf16 operand
    /// widened for fp32 products).
    private let bf16Operands = [GrowableBuffer<UInt16>(), GrowableBuffer<UInt16>()]
    private let floatOperands = [GrowableBuffer<Float>(), GrowableBuffer<Float>()]
    /// A bf16 C's fp32 values while a product forms them, and a bf16 C's bias rounded to bf16.
    private let bf16Output = GrowableBuffer<Float>(), roundedBias = GrowableBuffer<Float>()
    let planLock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)

    /// `poolSpinMicroseconds`: how long the pool's idle threads spin before sleeping (nil: the
    /// pool's default; RADAR_POOL_SPIN_US overrides either).
    public init(threads: Int = 1, products: CPUProducts = .fp32, poolSpinMicroseconds: Int? = nil) {
        self.products = products
        openblas_set_num_threads(1)
        pool = WorkerPool(threads: threads, spinMicroseconds: poolSpinMicroseconds)
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
        HostMemory.requireAvailable(bytes)
        guard posix_memalign(&raw, 64, bytes) == 0, let raw else {
            DeviceFailure.outOfMemory(HostOutOfMemory(requested: bytes, available: HostMemory.available() ?? 0))
        }
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

    /// A product operand as stored: fp32 values, or bf16 bit patterns (a bf16 tensor).
    enum Operand {
        case fp32(UnsafePointer<Float>)
        case bf16(UnsafePointer<UInt16>)

        init(_ t: Tensor) {
            self = t.dtype == .bfloat16 ? .bf16(UnsafeRawPointer(t.base).assumingMemoryBound(to: UInt16.self)) : .fp32(UnsafePointer(t.base))
        }

        /// The operand from `elements` further on.
        func advanced(by elements: Int) -> Operand {
            switch self {
            case .fp32(let p): return .fp32(p + elements)
            case .bf16(let p): return .bf16(p + elements)
            }
        }
    }

    var avx2Flag: Int32 { CPUBackend.vectorKernels ? 1 : 0 }

    func serialGemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                    a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                    beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
        serialGemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: .fp32(a), lda: lda, b: .fp32(b), ldb: ldb,
                   beta: beta, c: c, ldc: ldc)
    }

    /// One product on the calling thread. fp32 products read fp32 operands as they are and widen
    /// bf16 ones (exactly) into this thread's scratch. bf16 products round fp32 operands to bf16
    /// (nearest even) into this thread's scratch and read bf16 ones as they are; fp32 accumulation.
    func serialGemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                    a: Operand, lda: Int, b: Operand, ldb: Int,
                    beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
        if m == 0 || n == 0 { return }
        gemmFlops.wrappingAdd(2 * m * n * k, ordering: .relaxed)
        guard k > 0 else { return CPUBackend.scale(c, rows: m, cols: n, ld: ldc, by: beta) }
        let (aRows, aCols) = transA ? (k, m) : (m, k), (bRows, bCols) = transB ? (n, k) : (k, n)
        if products == .bf16OneDNN {
            let (pa, la) = threadBits(a, rows: aRows, cols: aCols, ld: lda, slot: 1)
            let (pb, lb) = threadBits(b, rows: bRows, cols: bCols, ld: ldb, slot: 2)
            bf16Gemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: pa, lda: la, b: pb, ldb: lb, beta: beta, c: c, ldc: ldc)
            return
        }
        let (pa, la) = threadFloats(a, rows: aRows, cols: aCols, ld: lda, slot: 1)
        let (pb, lb) = threadFloats(b, rows: bRows, cols: bCols, ld: ldb, slot: 2)
        fp32Gemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: pa, lda: la, b: pb, ldb: lb, beta: beta, c: c, ldc: ldc)
    }

    /// An operand of a bf16 product as bit patterns: a bf16 one as it is, an fp32 one rounded
    /// into this thread's scratch `slot` (packed).
    func threadBits(_ o: Operand, rows: Int, cols: Int, ld: Int, slot: Int) -> (UnsafePointer<UInt16>, Int) {
        switch o {
        case .bf16(let p): return (p, ld)
        case .fp32(let p):
            let out = UnsafeMutableRawPointer(ThreadScratch.floats((rows * cols + 1) / 2, slot: slot)).assumingMemoryBound(to: UInt16.self)
            radar_to_bf16_matrix(p, Int64(rows), Int64(cols), Int64(ld), out, avx2Flag)
            return (UnsafePointer(out), cols)
        }
    }

    /// An operand as fp32 values for OpenBLAS: on the rounded-operand path rounded to bf16 into
    /// this thread's scratch `slot`; a bf16 one widened there; else as it is.
    func threadFloats(_ o: Operand, rows: Int, cols: Int, ld: Int, slot: Int) -> (UnsafePointer<Float>, Int) {
        switch o {
        case .fp32(let p) where !products.isBF16: return (p, ld)
        case .fp32(let p):
            let out = ThreadScratch.floats(rows * cols, slot: slot)
            radar_round_bf16_matrix(p, Int64(rows), Int64(cols), Int64(ld), out, avx2Flag)
            return (UnsafePointer(out), cols)
        case .bf16(let p):
            let out = ThreadScratch.floats(rows * cols, slot: slot)
            CPUBackend.widen(p, rows: 0..<rows, cols: cols, ld: ld, into: out)
            return (UnsafePointer(out), cols)
        }
    }

    /// Rows `rows` of a bf16 matrix (leading dimension ld) widened exactly into the same rows of
    /// a packed fp32 one (leading dimension cols).
    static func widen(_ p: UnsafePointer<UInt16>, rows: Range<Int>, cols: Int, ld: Int, into out: UnsafeMutablePointer<Float>) {
        for r in rows { BFloat16.unpack(p + r * ld, out + r * cols, count: cols) }
    }

    /// C = beta C over rows x cols (a product with k = 0; beta 0 writes zeros, as BLAS does).
    static func scale(_ c: UnsafeMutablePointer<Float>, rows: Int, cols: Int, ld: Int, by beta: Float) {
        for r in 0..<rows {
            let row = c + r * ld
            if beta == 0 { row.update(repeating: 0, count: cols) } else if beta != 1 { for j in 0..<cols { row[j] *= beta } }
        }
    }

    /// One product of bf16 operands (bit patterns) by oneDNN on this thread, fp32 accumulation
    /// into C. A shape oneDNN will not take (the start-up probe passed) goes through OpenBLAS with
    /// the operands widened, which is exact: the same numerics, said once per process.
    func bf16Gemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                  a: UnsafePointer<UInt16>, lda: Int, b: UnsafePointer<UInt16>, ldb: Int,
                  beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
        let done = withUnsafeTemporaryAllocation(of: CChar.self, capacity: 256) { why in
            if CPUBackend.refuseOneDNN {
                _ = "oneDNN refused by CPUBackend.refuseOneDNN".withCString { strncpy(why.baseAddress!, $0, 255) }
                why[255] = 0
                return false
            }
            if radar_onednn_matmul(1, transA ? 1 : 0, transB ? 1 : 0, Int64(m), Int64(n), Int64(k), alpha, a, Int64(lda), b, Int64(ldb),
                                   beta, c, Int64(ldc), why.baseAddress, 256) != 0 { return true }
            CPUProducts.noteOneDNNFallback("\(String(cString: why.baseAddress!)) for m \(m), n \(n), k \(k), transA \(transA), transB \(transB)")
            return false
        }
        if done { return }
        let (aRows, aCols) = transA ? (k, m) : (m, k), (bRows, bCols) = transB ? (n, k) : (k, n)
        // Slots of their own: the operands may be in this thread's slots 1 to 3.
        let pa = ThreadScratch.floats(aRows * aCols, slot: 4), pb = ThreadScratch.floats(bRows * bCols, slot: 5)
        CPUBackend.widen(a, rows: 0..<aRows, cols: aCols, ld: lda, into: pa)
        CPUBackend.widen(b, rows: 0..<bRows, cols: bCols, ld: ldb, into: pb)
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
        tiledGemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: .fp32(a), lda: lda, b: .fp32(b), ldb: ldb,
                  beta: beta, c: c, ldc: ldc, rowBias: nil)
    }

    /// `gemm`'s tiles; with `rowBias`, each tile first sets its block of C to the bias (C's
    /// columns), while that block is about to be used, and then accumulates (beta must be 1).
    /// An operand that needs rounding to bf16 (bf16 products) or widening (a bf16 operand of fp32
    /// products) is prepared once, in parallel, into a buffer all tiles read: per tile, the
    /// operand the tiles share would be redone once per tile.
    func tiledGemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                   a: Operand, lda: Int, b: Operand, ldb: Int,
                   beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int, rowBias: UnsafePointer<Float>?) {
        if m == 0 || n == 0 { return }
        guard k > 0 else {
            return forTiles(m: m, n: n, k: k, c: c, ldc: ldc, rowBias: rowBias) { rows, cols in
                CPUBackend.scale(c + rows.lowerBound * ldc + cols.lowerBound, rows: rows.count, cols: cols.count, ld: ldc, by: beta)
            }
        }
        let (aRows, aCols) = transA ? (k, m) : (m, k), (bRows, bCols) = transB ? (n, k) : (k, n)
        if products == .bf16OneDNN {
            let (pa, la) = sharedBits(a, rows: aRows, cols: aCols, ld: lda, slot: 0)
            let (pb, lb) = sharedBits(b, rows: bRows, cols: bCols, ld: ldb, slot: 1)
            forTileProducts(transA: transA, transB: transB, m: m, n: n, k: k, a: pa, lda: la, b: pb, ldb: lb, c: c, ldc: ldc,
                            rowBias: rowBias) { tm, tn, ta, tb, tc in
                bf16Gemm(transA: transA, transB: transB, m: tm, n: tn, k: k, alpha: alpha, a: ta, lda: la, b: tb, ldb: lb,
                         beta: beta, c: tc, ldc: ldc)
            }
            return
        }
        let (pa, la) = sharedFloats(a, rows: aRows, cols: aCols, ld: lda, slot: 0)
        let (pb, lb) = sharedFloats(b, rows: bRows, cols: bCols, ld: ldb, slot: 1)
        forTileProducts(transA: transA, transB: transB, m: m, n: n, k: k, a: pa, lda: la, b: pb, ldb: lb, c: c, ldc: ldc,
                        rowBias: rowBias) { tm, tn, ta, tb, tc in
            fp32Gemm(transA: transA, transB: transB, m: tm, n: tn, k: k, alpha: alpha, a: ta, lda: la, b: tb, ldb: lb,
                     beta: beta, c: tc, ldc: ldc)
        }
    }

    /// `forTiles` with each tile's operands and block of C worked out: `product(m, n, a, b, c)`
    /// forms the tile's product (counted in `gemmFlops`), a and b at the tile's first row of A
    /// and first column of B (leading dimensions unchanged).
    private func forTileProducts<T>(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, a: UnsafePointer<T>, lda: Int,
                                    b: UnsafePointer<T>, ldb: Int, c: UnsafeMutablePointer<Float>, ldc: Int,
                                    rowBias: UnsafePointer<Float>?,
                                    _ product: (Int, Int, UnsafePointer<T>, UnsafePointer<T>, UnsafeMutablePointer<Float>) -> Void) {
        forTiles(m: m, n: n, k: k, c: c, ldc: ldc, rowBias: rowBias) { rows, cols in
            gemmFlops.wrappingAdd(2 * rows.count * cols.count * k, ordering: .relaxed)
            product(rows.count, cols.count, a + (transA ? rows.lowerBound : rows.lowerBound * lda),
                    b + (transB ? cols.lowerBound * ldb : cols.lowerBound), c + rows.lowerBound * ldc + cols.lowerBound)
        }
    }

    /// The tiles of an m x n product, spread over the pool: the larger of m and n cut into blocks
    /// whose size depends on the shape only. With `rowBias`, each tile first sets its block of C
    /// to the bias (C's columns).
    private func forTiles(m: Int, n: Int, k: Int, c: UnsafeMutablePointer<Float>, ldc: Int, rowBias: UnsafePointer<Float>?,
                          _ body: (_ rows: Range<Int>, _ cols: Range<Int>) -> Void) {
        if m == 0 || n == 0 { return }
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
            let rows = splitRows ? lo..<(lo + len) : 0..<m, cols = splitRows ? 0..<n : lo..<(lo + len)
            if let rowBias { for r in rows { (c + r * ldc + cols.lowerBound).update(from: rowBias + cols.lowerBound, count: cols.count) } }
            body(rows, cols)
        }
    }

    /// A tiled bf16 product's operand as bit patterns: a bf16 one as it is; an fp32 one rows x
    /// cols (leading dimension ld) rounded to bf16 (nearest even) into operand buffer `slot`,
    /// packed, in parallel over rows.
    func sharedBits(_ o: Operand, rows: Int, cols: Int, ld: Int, slot: Int) -> (UnsafePointer<UInt16>, Int) {
        let source: UnsafePointer<Float>
        switch o {
        case .bf16(let p): return (p, ld)
        case .fp32(let p): source = p
        }
        let out = bf16Operands[slot].at(least: rows * cols), avx2 = avx2Flag
        parallel(rows, grain: max(1, CPUBackend.grain / max(cols, 1))) { r in
            radar_to_bf16_matrix(source + r.lowerBound * ld, Int64(r.count), Int64(cols), Int64(ld), out + r.lowerBound * cols, avx2)
        }
        return (UnsafePointer(out), cols)
    }

    /// A tiled product's operand as fp32 values for OpenBLAS: on the rounded-operand path an fp32
    /// one rounded to bf16, a bf16 one widened (exact), each packed into operand buffer `slot` in
    /// parallel over rows; an fp32 operand of fp32 products as it is.
    func sharedFloats(_ o: Operand, rows: Int, cols: Int, ld: Int, slot: Int) -> (UnsafePointer<Float>, Int) {
        if case .fp32(let p) = o, !products.isBF16 { return (p, ld) }
        let out = floatOperands[slot].at(least: rows * cols), avx2 = avx2Flag
        parallel(rows, grain: max(1, CPUBackend.grain / max(cols, 1))) { r in
            switch o {
            case .fp32(let p):
                radar_round_bf16_matrix(p + r.lowerBound * ld, Int64(r.count), Int64(cols), Int64(ld), out + r.lowerBound * cols, avx2)
            case .bf16(let p):
                CPUBackend.widen(p, rows: r, cols: cols, ld: ld, into: out)
            }
        }
        return (UnsafePointer(out), cols)
    }

    public func biasedProduct(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float, a: Tensor, lda: Int,
                              b: Tensor, ldb: Int, bias: Tensor, residual: Tensor?, c: Tensor, ldc: Int) {
        precondition(bias.dtype == .float32 && bias.count == n, "biasedProduct: bias fp32, of n")
        if let residual {
            // C = residual + bias (row by row, in C's layout), then the product accumulated onto it.
            precondition(c.dtype == .float32 && residual.dtype == .float32, "biasedProduct: a residual needs an fp32 C")
            parallel(m, grain: max(1, CPUBackend.grain / max(n, 1))) { rr in
                for r in rr {
                    let src = residual.base + r * ldc, dst = c.base + r * ldc
                    for j in 0..<n { dst[j] = src[j] + bias.base[j] }
                }
            }
            return tiledGemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: Operand(a), lda: lda,
                             b: Operand(b), ldb: ldb, beta: 1, c: c.base, ldc: ldc, rowBias: nil)
        }
        guard c.dtype == .bfloat16 else {
            return tiledGemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: Operand(a), lda: lda,
                             b: Operand(b), ldb: ldb, beta: 1, c: c.base, ldc: ldc, rowBias: bias.base)
        }
        // A bf16 C: the bias rounded to bf16 (autocast's addmm), then as a product with beta 1.
        let rounded = roundedBias.at(least: n)
        for j in 0..<n { rounded[j] = BFloat16.round(bias.base[j]) }
        bf16Product(m: m, n: n, beta: 0, c: c, ldc: ldc) { c32 in  // the tiles set the bias: C is not read
            tiledGemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: Operand(a), lda: lda,
                      b: Operand(b), ldb: ldb, beta: 1, c: c32, ldc: n, rowBias: rounded)
        }
    }

    public func product(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float, a: Tensor, lda: Int,
                        b: Tensor, ldb: Int, beta: Float, c: Tensor, ldc: Int) {
        guard c.dtype == .bfloat16 else {
            return tiledGemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: Operand(a), lda: lda,
                             b: Operand(b), ldb: ldb, beta: beta, c: c.base, ldc: ldc, rowBias: nil)
        }
        bf16Product(m: m, n: n, beta: beta, c: c, ldc: ldc) { c32 in
            tiledGemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: Operand(a), lda: lda,
                      b: Operand(b), ldb: ldb, beta: beta, c: c32, ldc: n, rowBias: nil)
        }
    }

    /// A product into a bf16 C (m x n, leading dimension ldc): `form` writes its fp32 values into
    /// a packed m x n buffer (holding C's values first when `beta`, the product's, reads them),
    /// rounded once into C: the bits of an fp32 C converted.
    private func bf16Product(m: Int, n: Int, beta: Float, c: Tensor, ldc: Int, _ form: (UnsafeMutablePointer<Float>) -> Void) {
        guard m > 0 && n > 0 else { return }
        let c32 = bf16Output.at(least: m * n)
        let c16 = UnsafeMutableRawPointer(c.base).assumingMemoryBound(to: UInt16.self)
        if beta != 0 { parallel(m, grain: max(1, CPUBackend.grain / n)) { r in CPUBackend.widen(c16, rows: r, cols: n, ld: ldc, into: c32) } }
        form(c32)
        parallel(m, grain: max(1, CPUBackend.grain / n)) { r in
            for row in r { CPUBackend.packBFloat16(c32 + row * n, c16 + row * ldc, count: n) }
        }
    }

    public func convert(_ src: Tensor, into dst: Tensor) {
        precondition(src.count == dst.count, "convert \(src.shape) into \(dst.shape)")
        let raw = UnsafeMutableRawPointer(src.base), out = UnsafeMutableRawPointer(dst.base)
        switch (src.dtype, dst.dtype) {
        case (.float32, .bfloat16):
            let x = raw.assumingMemoryBound(to: Float.self), y = out.assumingMemoryBound(to: UInt16.self)
            parallel(src.count) { r in CPUBackend.packBFloat16(x + r.lowerBound, y + r.lowerBound, count: r.count) }
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
