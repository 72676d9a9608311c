import COneDNN
import RadarEngine
import Foundation
import Synchronization

/// How the CPU backend forms its matrix products (`--precision` on the CPU).
///
/// bf16 is mixed precision as PyTorch's CPU autocast runs these layers: the operands of every
/// GEMM (linear layers, attention, the convolutions' im2col products) are rounded to bfloat16
/// (nearest even), products are accumulated and stored in fp32; master weights, optimizer state,
/// LayerNorm/softmax/BatchNorm statistics and losses stay fp32 (the CUDA backend's bf16 does the
/// same).
public enum CPUProducts: Sendable, Equatable, CustomStringConvertible {
    /// fp32 operands, OpenBLAS `cblas_sgemm`.
    case fp32
    /// bf16 operands through oneDNN's bf16 matmul (AMX or AVX512-BF16 instructions).
    case bf16OneDNN
    /// bf16 operands rounded and kept as fp32, multiplied by OpenBLAS: the same products on any
    /// CPU (up to accumulation order), slower than fp32. A check path (`RADAR_CPU_BF16=rounded`).
    case bf16Rounded

    public var description: String {
        switch self {
        case .fp32: return "fp32"
        case .bf16OneDNN: return "bf16 (oneDNN \(String(cString: radar_onednn_version())))"
        case .bf16Rounded: return "bf16 (operands rounded, OpenBLAS fp32 products)"
        }
    }

    public var isBF16: Bool { self != .fp32 }

    /// What `--precision bf16` gets on this CPU, and a one-line notice when that is not bf16
    /// through oneDNN. `RADAR_CPU_BF16`: `rounded` forces the rounded-operand path, `onednn`
    /// forces oneDNN (an error where it cannot run), unset chooses: oneDNN where the CPU has
    /// AVX512-BF16 or AMX-BF16 (elsewhere bf16 products would be slower than fp32) and oneDNN's
    /// bf16 matmul runs; otherwise fp32 with the notice.
    public static func bf16(environment: [String: String] = ProcessInfo.processInfo.environment,
                            cpuFlags: Set<String>? = BLASKernels.cpuFlags()?.flags) throws -> (CPUProducts, notice: String?) {
        switch environment["RADAR_CPU_BF16"] {
        case "rounded":
            return (.bf16Rounded, nil)
        case "onednn":
            if let why = oneDNNBF16Failure() { throw Unavailable(reason: why) }
            return (.bf16OneDNN, nil)
        case nil, "", "auto":
            let flags = cpuFlags ?? []
            guard flags.contains("amx_bf16") || flags.contains("avx512_bf16") else {
                return (.fp32, "precision bf16: this CPU has neither AMX-BF16 nor AVX512-BF16, so bf16 products would be slower than fp32 here: computing in fp32")
            }
            if let why = oneDNNBF16Failure() {
                return (.fp32, "precision bf16: \(why): computing in fp32 (Debian: apt-get install libdnnl2)")
            }
            return (.bf16OneDNN, nil)
        case let other?:
            throw Unavailable(reason: "RADAR_CPU_BF16=\(other): expected rounded, onednn or auto")
        }
    }

    public struct Unavailable: Error, CustomStringConvertible {
        public let reason: String
        public var description: String { "precision bf16 on the CPU: \(reason)" }
    }

    /// nil when oneDNN loads and runs a small bf16 product correctly; else why not.
    public static func oneDNNBF16Failure() -> String? { oneDNNProbeFailure(bf16: true) }

    /// nil when oneDNN loads and a small product (3 x 4 times 4 x 2, exact in bf16) of this data
    /// type gives the expected values for each transpose combination with padded leading
    /// dimensions; else why not. Tests run it in fp32 on every machine (the bf16 probe differs
    /// only in the operands' type).
    public static func oneDNNProbeFailure(bf16: Bool) -> String? {
        var why = [CChar](repeating: 0, count: 256)
        guard radar_onednn_load(&why, 256) != 0 else { return String(cString: why) }
        let a: [[Float]] = [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]], b: [[Float]] = [[1, 0], [0, 1], [1, 1], [2, -1]]
        let expected: [Float] = [12, 1, 28, 5, 44, 9]
        func packed(_ rows: [[Float]], transposed: Bool) -> (values: [Float], ld: Int) {
            let r = transposed ? rows[0].count : rows.count, cols = transposed ? rows.count : rows[0].count, ld = cols + 1
            var out = [Float](repeating: 0, count: r * ld)
            for i in 0..<r { for j in 0..<cols { out[i * ld + j] = transposed ? rows[j][i] : rows[i][j] } }
            return (out, ld)
        }
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let pa = packed(a, transposed: ta), pb = packed(b, transposed: tb)
            var c = [Float](repeating: 1, count: 6)
            let ok: Int32
            if bf16 {
                let a16 = pa.values.map { UInt16($0.bitPattern >> 16) }, b16 = pb.values.map { UInt16($0.bitPattern >> 16) }
                ok = radar_onednn_matmul(1, ta ? 1 : 0, tb ? 1 : 0, 3, 2, 4, 1, a16, Int64(pa.ld), b16, Int64(pb.ld), 0, &c, 2, &why, 256)
            } else {
                ok = radar_onednn_matmul(0, ta ? 1 : 0, tb ? 1 : 0, 3, 2, 4, 1, pa.values, Int64(pa.ld), pb.values, Int64(pb.ld), 0, &c, 2, &why, 256)
            }
            guard ok != 0 else { return String(cString: why) }
            if c != expected { return "oneDNN's \(bf16 ? "bf16" : "f32") matmul (transA \(ta), transB \(tb)) gave \(c), expected \(expected)" }
        }
        return nil
    }

    private static let fallbackNoted = Atomic<Bool>(false)

    /// A product oneDNN refused mid-run went through the rounded-operand path (same numerics,
    /// slower): one notice per process.
    static func noteOneDNNFallback(_ what: String) {
        guard !fallbackNoted.exchange(true, ordering: .relaxed) else { return }
        notice("precision bf16: \(what): computed with bf16-rounded operands by OpenBLAS instead")
    }

    /// `<program>: notice: <text>` on standard error, once per process for each text (a command
    /// may build several backends).
    public static func notice(_ text: String) { printNotice(text) }

    /// oneDNN's row-major product in fp32 (tests compare its argument conventions with OpenBLAS on
    /// CPUs without bf16 instructions): nil, or why oneDNN could not run it.
    public static func oneDNNProductFP32(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                                         a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                                         beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) -> String? {
        var why = [CChar](repeating: 0, count: 256)
        let ok = radar_onednn_matmul(0, transA ? 1 : 0, transB ? 1 : 0, Int64(m), Int64(n), Int64(k), alpha, a, Int64(lda), b, Int64(ldb),
                                     beta, c, Int64(ldc), &why, 256)
        return ok != 0 ? nil : String(cString: why)
    }

    /// oneDNN's version and the implementation of the last product it ran ("" if none).
    public static var oneDNNDescription: (version: String, lastImplementation: String) {
        (String(cString: radar_onednn_version()), String(cString: radar_onednn_last_implementation()))
    }
}
