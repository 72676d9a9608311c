import Foundation
import RadarEngine

/// cuBLASLt for the products that carry an epilogue (`StridedGemm.bias`, an out-of-place `d`):
/// D = alpha op(A) op(B) + beta C + bias, the bias broadcast over D's columns (column-major rows,
/// a Linear's output features), C and D of one layout. A Linear's bias then needs no fill pass
/// over its output, and a residual sum is C with beta 1. Plans (descriptors, layouts, the
/// heuristic's first algorithm for our fixed workspace and the operands' alignment, or the one a
/// `GemmTable` pins for the shape) are made once per shape: the same algorithm every call, so the
/// same bits run to run. Also the products a `GemmTable` pins, and `radar bench gemm`'s candidates.
/// Loaded only where libcublasLt is (it ships with cuBLAS); without it the backend keeps its
/// fill-and-product path.
final class BlasLt {
    typealias FnCreate = @convention(c) (UnsafeMutablePointer<OpaquePointer?>) -> Int32
    typealias FnDescCreate = @convention(c) (UnsafeMutablePointer<OpaquePointer?>, Int32, Int32) -> Int32
    typealias FnSetAttribute = @convention(c) (OpaquePointer?, Int32, UnsafeRawPointer?, Int) -> Int32
    typealias FnLayoutCreate = @convention(c) (UnsafeMutablePointer<OpaquePointer?>, Int32, UInt64, UInt64, Int64) -> Int32
    typealias FnPreferenceCreate = @convention(c) (UnsafeMutablePointer<OpaquePointer?>) -> Int32
    typealias FnHeuristic = @convention(c) (OpaquePointer?, OpaquePointer?, OpaquePointer?, OpaquePointer?, OpaquePointer?, OpaquePointer?,
                                            OpaquePointer?, Int32, UnsafeMutableRawPointer?, UnsafeMutablePointer<Int32>?) -> Int32
    typealias FnMatmul = @convention(c) (OpaquePointer?, OpaquePointer?, UnsafeRawPointer?, UnsafeRawPointer?, OpaquePointer?,
                                         UnsafeRawPointer?, OpaquePointer?, UnsafeRawPointer?, UnsafeRawPointer?, OpaquePointer?,
                                         UnsafeMutableRawPointer?, OpaquePointer?, UnsafeRawPointer?, UnsafeMutableRawPointer?, Int,
                                         OpaquePointer?) -> Int32

    /// cublasLtMatmulHeuristicResult_t: the algorithm (64 bytes), workspaceSize (size_t at 64),
    /// state (cublasStatus_t at 72); 96 bytes in all (CUDA 12.9 and 13.0 headers).
    static let heuristicResultBytes = 96, algoBytes = 64, stateOffset = 72

    private let C = CUDAConstants.values
    private let handle: OpaquePointer?
    private let descCreate: FnDescCreate, descSet: FnSetAttribute, layoutCreate: FnLayoutCreate, layoutSet: FnSetAttribute
    private let preferenceCreate: FnPreferenceCreate, preferenceSet: FnSetAttribute, heuristic: FnHeuristic, matmul: FnMatmul

    struct Key: Hashable {
        let transA: Bool, transB: Bool, m: Int, n: Int, k: Int, lda: Int, ldb: Int, ldc: Int
        let strideA: Int, strideB: Int, strideC: Int, batch: Int
        let operands: Int, outputBF16: Bool, bias: Bool
        /// What A, B, C and D's addresses are aligned to (a tuple would not be Hashable; no array:
        /// a key is made for every product of a step).
        let alignA: Int, alignB: Int, alignC: Int, alignD: Int
        /// The algorithm asked for (`GemmTable`, `radar bench gemm`); nil: the heuristic's first.
        let pinned: [UInt8]?
    }
    final class Plan {
        var desc: OpaquePointer?, a: OpaquePointer?, b: OpaquePointer?, c: OpaquePointer?
        var algo = [UInt8](repeating: 0, count: BlasLt.algoBytes)
        var workspaceBytes = 0
    }
    private var plans: [Key: Plan] = [:]
    /// Shapes the heuristic offered no algorithm for (asked once: `available`).
    private var refused: Set<Key> = []

    /// nil where libcublasLt cannot be loaded or its handle not made.
    init?() {
        func sym<T>(_ h: UnsafeMutableRawPointer, _ n: String, _ t: T.Type) throws -> T { try CUDALibraries.symbol(h, n, as: t) }
        guard let lib = try? CUDALibraries.load(["libcublasLt.so.13", "libcublasLt.so.12"], component: "cublas", key: "cublasLt") else { return nil }
        do {
            var h: OpaquePointer?
            guard try sym(lib, "cublasLtCreate", FnCreate.self)(&h) == CUDAConstants.values.CUBLAS_STATUS_SUCCESS else { return nil }
            handle = h
            descCreate = try sym(lib, "cublasLtMatmulDescCreate", FnDescCreate.self)
            descSet = try sym(lib, "cublasLtMatmulDescSetAttribute", FnSetAttribute.self)
            layoutCreate = try sym(lib, "cublasLtMatrixLayoutCreate", FnLayoutCreate.self)
            layoutSet = try sym(lib, "cublasLtMatrixLayoutSetAttribute", FnSetAttribute.self)
            preferenceCreate = try sym(lib, "cublasLtMatmulPreferenceCreate", FnPreferenceCreate.self)
            preferenceSet = try sym(lib, "cublasLtMatmulPreferenceSetAttribute", FnSetAttribute.self)
            heuristic = try sym(lib, "cublasLtMatmulAlgoGetHeuristic", FnHeuristic.self)
            matmul = try sym(lib, "cublasLtMatmul", FnMatmul.self)
        } catch { return nil }
    }

    private func attribute<T>(_ set: FnSetAttribute, _ object: OpaquePointer?, _ name: Int32, _ value: T) -> Int32 {
        withUnsafeBytes(of: value) { set(object, name, $0.baseAddress, $0.count) }
    }

    /// The plan of `g`'s shape: made once (descriptors, layouts, the algorithm), then looked up.
    /// `pinned`: the algorithm to run (a table's or the bench's), found among the heuristic's
    /// offers; nil: the heuristic's first.
    private func key(_ g: StridedGemm, pinned: [UInt8]?) -> Key {
        Key(transA: g.transA, transB: g.transB, m: g.m, n: g.n, k: g.k, lda: g.lda, ldb: g.ldb, ldc: g.ldc,
            strideA: g.strideA, strideB: g.strideB, strideC: g.strideC, batch: g.batch,
            operands: g.operands == .bf16 ? 2 : g.operands == .tf32 ? 1 : 0, outputBF16: g.outputBF16, bias: g.bias != nil,
            alignA: GemmTable.alignment(g.a), alignB: GemmTable.alignment(g.b), alignC: GemmTable.alignment(g.c),
            alignD: GemmTable.alignment(g.d ?? g.c), pinned: pinned)
    }

    private func plan(_ g: StridedGemm, workspaceBytes: Int, pinned: [UInt8]? = nil) -> Result<Plan, BlasLtFailure> {
        let key = key(g, pinned: pinned)
        if let p = plans[key] { return .success(p) }
        if refused.contains(key) { return .failure(BlasLtFailure(status: lastHeuristicStatus, call: noAlgorithmCall(g), noAlgorithm: true)) }
        let p: Plan, offers: [GemmAlgorithm]
        switch describe(g, workspaceBytes: workspaceBytes, key: key) {
        case .success(let d): p = d.plan; offers = d.offers(pinned == nil ? 1 : BlasLt.maximumOffers)
        case .failure(let f): return .failure(f)
        }
        if case .failure(let f) = offersOrFailure(offers, g) {
            refused.insert(key)
            return .failure(f)
        }
        var chosen = offers[0]
        if let pinned {
            if let match = offers.first(where: { $0.bytes == pinned }) { chosen = match } else {
                writeStandardError("radar: the pinned cuBLASLt algorithm for \(GemmTable.key(g)) is not among the "
                    + "heuristic's \(offers.count) offers (another cuBLAS or GPU?); using its first. Remeasure with radar bench gemm --write-table.\n")
            }
        }
        p.algo = chosen.bytes
        p.workspaceBytes = chosen.workspaceBytes
        plans[key] = p
        return .success(p)
    }

    /// The heuristic's offers for `g`, best first, at most `limit` (`radar bench gemm`).
    func algorithms(_ g: StridedGemm, workspaceBytes: Int, limit: Int) -> Result<[GemmAlgorithm], BlasLtFailure> {
        switch describe(g, workspaceBytes: workspaceBytes, key: nil) {
        case .success(let d):
            let offers = d.offers(min(max(limit, 1), BlasLt.maximumOffers))
            if case .failure(let f) = offersOrFailure(offers, g) { return .failure(f) }
            return .success(offers)
        case .failure(let f): return .failure(f)
        }
    }

    /// The most offers asked of the heuristic (a pinned algorithm is looked for among them).
    static let maximumOffers = 32

    private func offersOrFailure(_ offers: [GemmAlgorithm], _ g: StridedGemm) -> Result<Void, BlasLtFailure> {
        offers.isEmpty ? .failure(BlasLtFailure(status: lastHeuristicStatus, call: noAlgorithmCall(g), noAlgorithm: true)) : .success(())
    }
    private func noAlgorithmCall(_ g: StridedGemm) -> String {
        "cublasLtMatmulAlgoGetHeuristic (no algorithm)(m \(g.m) n \(g.n) k \(g.k) batch \(g.batch))"
    }

    /// Whether the heuristic offers an algorithm for `g` (its types, epilogue, sizes, leading
    /// dimensions and operands' alignment): the plan is made and kept, or the refusal remembered.
    /// Any other failure says true, for `gemm` to report it.
    func available(_ g: StridedGemm, workspaceBytes: Int) -> Bool {
        if refused.contains(key(g, pinned: nil)) { return false }  // before `plan`, whose refusal builds a message
        if case .failure(let f) = plan(g, workspaceBytes: workspaceBytes), f.noAlgorithm { return false }
        return true
    }
    private var lastHeuristicStatus: Int32 = -1

    /// A described product: its descriptors, and the heuristic to ask for algorithms.
    private struct Described {
        let plan: Plan
        let offers: (Int) -> [GemmAlgorithm]
    }

    /// The descriptors, layouts and preference of `g` (the operands' alignment from `key`, or
    /// from g's addresses), with the heuristic's offers on demand.
    private func describe(_ g: StridedGemm, workspaceBytes: Int, key: Key?) -> Result<Described, BlasLtFailure> {
        let type = g.operands == .bf16 ? C.CUDA_R_16BF : C.CUDA_R_32F, out = g.outputBF16 ? C.CUDA_R_16BF : C.CUDA_R_32F
        let shape = "m \(g.m) n \(g.n) k \(g.k) batch \(g.batch)"
        func fail(_ status: Int32, _ call: String) -> Result<Described, BlasLtFailure> { .failure(BlasLtFailure(status: status, call: "\(call)(\(shape))")) }
        let p = Plan()
        let compute = g.operands == .tf32 ? C.CUBLAS_COMPUTE_32F_FAST_TF32 : C.CUBLAS_COMPUTE_32F
        var r = descCreate(&p.desc, compute, C.CUDA_R_32F)
        guard r == C.CUBLAS_STATUS_SUCCESS else { return fail(r, "cublasLtMatmulDescCreate") }
        for (name, value) in [(C.CUBLASLT_MATMUL_DESC_TRANSA, g.transA), (C.CUBLASLT_MATMUL_DESC_TRANSB, g.transB)] {
            r = attribute(descSet, p.desc, name, value ? C.CUBLAS_OP_T : C.CUBLAS_OP_N)
            guard r == C.CUBLAS_STATUS_SUCCESS else { return fail(r, "cublasLtMatmulDescSetAttribute") }
        }
        r = attribute(descSet, p.desc, C.CUBLASLT_MATMUL_DESC_EPILOGUE, g.bias != nil ? C.CUBLASLT_EPILOGUE_BIAS : C.CUBLASLT_EPILOGUE_DEFAULT)
        guard r == C.CUBLAS_STATUS_SUCCESS else { return fail(r, "cublasLtMatmulDescSetAttribute") }
        if let bias = g.bias {
            // The bias pointer is set per call; this one for the heuristic meanwhile.
            r = attribute(descSet, p.desc, C.CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias)
            guard r == C.CUBLAS_STATUS_SUCCESS else { return fail(r, "cublasLtMatmulDescSetAttribute") }
        }
        for (slot, t, rows, cols, ld, stride) in [(0, type, g.transA ? g.k : g.m, g.transA ? g.m : g.k, g.lda, g.strideA),
                                                   (1, type, g.transB ? g.n : g.k, g.transB ? g.k : g.n, g.ldb, g.strideB),
                                                   (2, out, g.m, g.n, g.ldc, g.strideC)] {
            var layout: OpaquePointer?
            r = layoutCreate(&layout, t, UInt64(rows), UInt64(cols), Int64(ld))
            guard r == C.CUBLAS_STATUS_SUCCESS else { return fail(r, "cublasLtMatrixLayoutCreate") }
            if g.batch > 1 {
                r = attribute(layoutSet, layout, C.CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, Int32(g.batch))
                if r == C.CUBLAS_STATUS_SUCCESS { r = attribute(layoutSet, layout, C.CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, Int64(stride)) }
                guard r == C.CUBLAS_STATUS_SUCCESS else { return fail(r, "cublasLtMatrixLayoutSetAttribute") }
            }
            switch slot {
            case 0: p.a = layout
            case 1: p.b = layout
            default: p.c = layout
            }
        }
        var pref: OpaquePointer?
        r = preferenceCreate(&pref)
        guard r == C.CUBLAS_STATUS_SUCCESS else { return fail(r, "cublasLtMatmulPreferenceCreate") }
        r = attribute(preferenceSet, pref, C.CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, UInt64(workspaceBytes))
        let alignments = [C.CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, C.CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                          C.CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, C.CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES]
        let bytes = key.map { [$0.alignA, $0.alignB, $0.alignC, $0.alignD] }
            ?? [GemmTable.alignment(g.a), GemmTable.alignment(g.b), GemmTable.alignment(g.c), GemmTable.alignment(g.d ?? g.c)]
        for (name, value) in zip(alignments, bytes) where r == C.CUBLAS_STATUS_SUCCESS {
            r = attribute(preferenceSet, pref, name, UInt32(value))
        }
        guard r == C.CUBLAS_STATUS_SUCCESS else { return fail(r, "cublasLtMatmulPreferenceSetAttribute") }
        let offers = { [self] (count: Int) -> [GemmAlgorithm] in
            var results = [UInt8](repeating: 0, count: BlasLt.heuristicResultBytes * count)
            var found: Int32 = 0
            let r = results.withUnsafeMutableBytes { heuristic(handle, p.desc, p.a, p.b, p.c, p.c, pref, Int32(count), $0.baseAddress, &found) }
            lastHeuristicStatus = r
            guard r == C.CUBLAS_STATUS_SUCCESS else { return [] }
            return (0..<Int(max(0, min(found, Int32(count))))).compactMap { i -> GemmAlgorithm? in
                let at = i * BlasLt.heuristicResultBytes
                let state = results.withUnsafeBytes { $0.load(fromByteOffset: at + BlasLt.stateOffset, as: Int32.self) }
                guard state == C.CUBLAS_STATUS_SUCCESS else { lastHeuristicStatus = state; return nil }
                let workspace = results.withUnsafeBytes { $0.load(fromByteOffset: at + BlasLt.algoBytes, as: Int.self) }
                return GemmAlgorithm(bytes: Array(results[at..<at + BlasLt.algoBytes]), workspaceBytes: workspace, index: i)
            }
        }
        return .success(Described(plan: p, offers: offers))
    }

    /// The product, queued on `stream`; a failure's description otherwise.
    func gemm(_ g: StridedGemm, pinned: [UInt8]? = nil, workspace: UnsafeMutableRawPointer?, workspaceBytes: Int,
              stream: OpaquePointer?) -> BlasLtFailure? {
        let p: Plan
        switch plan(g, workspaceBytes: workspaceBytes, pinned: pinned) {
        case .success(let plan): p = plan
        case .failure(let f): return f
        }
        if let bias = g.bias {
            let r = attribute(descSet, p.desc, C.CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias)
            guard r == C.CUBLAS_STATUS_SUCCESS else { return BlasLtFailure(status: r, call: "cublasLtMatmulDescSetAttribute") }
        }
        var alpha = g.alpha, beta = g.beta
        let d = UnsafeMutableRawPointer(g.d ?? g.c)
        let r = p.algo.withUnsafeBytes { algo in
            matmul(handle, p.desc, &alpha, g.a, p.a, g.b, p.b, &beta, UnsafeRawPointer(g.c), p.c, d, p.c, algo.baseAddress, workspace,
                   min(p.workspaceBytes, workspaceBytes), stream)
        }
        return r == C.CUBLAS_STATUS_SUCCESS ? nil : BlasLtFailure(status: r, call: "cublasLtMatmul(m \(g.m) n \(g.n) k \(g.k) batch \(g.batch))")
    }
}

struct BlasLtFailure: Error {
    let status: Int32, call: String
    /// The heuristic offered no algorithm (the shape, types or epilogue are not supported).
    var noAlgorithm = false
}
