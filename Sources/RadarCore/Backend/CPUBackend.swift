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
    public var threads: Int { pool.threadCount }
    /// Elementwise kernels hand out chunks of this many elements.
    public static let grain = 16_384

    var fftPlans: [Int: OpaquePointer] = [:]
    private let floatScratch = GrowableBuffer<Float>()
    private let doubleScratch = GrowableBuffer<Double>()
    let planLock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)

    public init(threads: Int = 1) {
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

    public func forEach(_ count: Int, _ body: (Int) -> Void) { pool.run(tasks: count, body) }

    func parallel(_ count: Int, grain: Int = CPUBackend.grain, _ body: (Range<Int>) -> Void) {
        pool.parallelFor(count, grain: grain, body)
    }

    // MARK: GEMM

    public func serialGemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                           a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                           beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
        if m == 0 || n == 0 { return }
        gemmFlops.wrappingAdd(2 * m * n * k, ordering: .relaxed)
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
        let flops = 2 * m * n * max(k, 1)
        let splitRows = m >= n
        let extent = splitRows ? m : n
        // Tiles of at least 64 rows/cols and about 16 of them for big products.
        var tile = max(64, ((extent + 15) / 16 + 15) / 16 * 16)
        if flops < 4_000_000 { tile = extent }
        let tiles = (extent + tile - 1) / max(tile, 1)
        forEach(tiles) { t in
            let lo = t * tile, len = min(tile, extent - lo)
            if splitRows {
                let aOff = transA ? lo : lo * lda
                serialGemm(transA: transA, transB: transB, m: len, n: n, k: k, alpha: alpha, a: a + aOff, lda: lda,
                           b: b, ldb: ldb, beta: beta, c: c + lo * ldc, ldc: ldc)
            } else {
                let bOff = transB ? lo * ldb : lo
                serialGemm(transA: transA, transB: transB, m: m, n: len, k: k, alpha: alpha, a: a, lda: lda,
                           b: b + bOff, ldb: ldb, beta: beta, c: c + lo, ldc: ldc)
            }
        }
    }

    public func gemmBatched(count: Int, transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                            a: UnsafePointer<Float>, lda: Int, strideA: Int,
                            b: UnsafePointer<Float>, ldb: Int, strideB: Int,
                            beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int, strideC: Int) {
        forEach(count) { i in
            serialGemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha,
                       a: a + i * strideA, lda: lda, b: b + i * strideB, ldb: ldb,
                       beta: beta, c: c + i * strideC, ldc: ldc)
        }
    }

    public func sumParts(_ parts: UnsafePointer<Float>, partCount: Int, n: Int,
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
