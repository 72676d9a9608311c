import Foundation
@testable import RadarCUDA
import XCTest

/// The ABI gate: every C function the CUDA backend loads with dlsym (driver API, NVRTC, cuBLAS,
/// cuFFT) is declared in Swift by hand, and every number it passes sits in `CUDAConstants`.
/// Nothing links against CUDA and no CI machine has a GPU, so a wrong parameter type or constant
/// would first show on a lent GPU. These tests compile NVIDIA's own headers of CUDA 12.9 and 13.0
/// (from NVIDIA's pip wheels: `tools/cuda_headers.py`, which scripts/test.sh runs) with the host's
/// clang++, print each function's signature by ABI class, and compare it with the Swift
/// declaration read from the source. They fail, never skip, when the headers are missing.
///
/// ABI classes: integers and enums by width (`i32`, `i64`, `i8`; signedness is not compared, the
/// calling convention does not see it), `f32`/`f64`, pointers by what they point to
/// (`ptr(i64)`, `ptr(ptr)`, `ptr(*)` for void, structs and Swift's raw and opaque pointers, which
/// match any pointer).
final class CUDAABIGateTests: XCTestCase {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static let sources = ["Sources/RadarCUDA/DriverAPI.swift", "Sources/RadarCUDA/NVRTC.swift", "Sources/RadarCUDA/BlasLt.swift"]

    struct Declaration: Equatable {
        var result: String
        var parameters: [String]
        var text: String { "\(result) (\(parameters.joined(separator: ", ")))" }
    }

    struct Binding {
        let symbol: String, alias: String, file: String
        let declaration: Declaration
    }

    // MARK: The Swift side, read from the source

    /// The ABI class of a Swift type as written in a `@convention(c)` typealias.
    static func swiftClass(_ raw: String) -> String {
        var t = raw.trimmingCharacters(in: .whitespacesAndNewlines)
        while t.hasSuffix("?") { t.removeLast() }
        switch t {
        case "Int8", "UInt8", "CChar": return "i8"
        case "Int16", "UInt16": return "i16"
        case "Int32", "UInt32", "CInt", "CUnsignedInt": return "i32"
        case "Int", "UInt", "Int64", "UInt64": return "i64"
        case "Float": return "f32"
        case "Double": return "f64"
        case "OpaquePointer", "UnsafeRawPointer", "UnsafeMutableRawPointer": return "ptr(*)"
        default:
            for p in ["UnsafeMutablePointer<", "UnsafePointer<"] where t.hasPrefix(p) && t.hasSuffix(">") {
                let inner = swiftClass(String(t.dropFirst(p.count).dropLast()))
                return inner.hasPrefix("ptr") ? "ptr(ptr)" : "ptr(\(inner))"
            }
            return "?\(t)"
        }
    }

    /// Every `"symbol", Alias.self` (or `as: Alias.self`) in the CUDA sources, with the alias's
    /// `@convention(c)` type from the same file.
    static func bindings() throws -> [Binding] {
        let alias = try NSRegularExpression(pattern: #"typealias\s+(\w+)\s*=\s*@convention\(c\)\s*\(([^)]*)\)\s*->\s*([A-Za-z0-9_<>?]+)"#)
        let bind = try NSRegularExpression(pattern: #""((?:cu|nvrtc)[A-Za-z0-9_]*)"\s*,\s*(?:as:\s*)?(\w+)\.self"#)
        let call = try NSRegularExpression(pattern: #"(?:\bsym|CUDALibraries\.symbol)\(\w+,\s*""#)
        var out: [Binding] = []
        for file in sources {
            let text = try String(contentsOf: root.appendingPathComponent(file), encoding: .utf8)
            let ns = text as NSString
            var aliases: [String: Declaration] = [:]
            for m in alias.matches(in: text, range: NSRange(location: 0, length: ns.length)) {
                let params = ns.substring(with: m.range(at: 2)).split(separator: ",").map { swiftClass(String($0)) }
                aliases[ns.substring(with: m.range(at: 1))] = Declaration(result: swiftClass(ns.substring(with: m.range(at: 3))), parameters: params)
            }
            let found = bind.matches(in: text, range: NSRange(location: 0, length: ns.length))
            let calls = call.numberOfMatches(in: text, range: NSRange(location: 0, length: ns.length))
            XCTAssertEqual(found.count, calls, "\(file): every dlsym call must name its symbol and its typealias literally (\"name\", Alias.self)")
            for m in found {
                let symbol = ns.substring(with: m.range(at: 1)), name = ns.substring(with: m.range(at: 2))
                guard let d = aliases[name] else {
                    XCTFail("\(file): \(symbol) is bound as \(name), which is not a @convention(c) typealias of that file")
                    continue
                }
                out.append(Binding(symbol: symbol, alias: name, file: file, declaration: d))
            }
        }
        return out
    }

    /// `CUDAConstants`' fields by reflection: C name and value.
    static func constants() -> [(name: String, value: Int64)] {
        Mirror(reflecting: CUDAConstants.values).children.compactMap { child in
            guard let name = child.label else { return nil }
            switch child.value {
            case let v as Int32: return (name, Int64(v))
            case let v as UInt32: return (name, Int64(v))
            case let v as Int: return (name, Int64(v))
            default: return (name, Int64.min)
            }
        }
    }

    // MARK: The headers' side

    /// `DEST/cuXX` of tools/cuda_headers.py (`RADAR_CUDA_HEADERS` or .build/cuda-headers).
    static func headers(_ major: String) throws -> URL {
        let base = ProcessInfo.processInfo.environment["RADAR_CUDA_HEADERS"].map { URL(fileURLWithPath: $0) }
            ?? root.appendingPathComponent(".build/cuda-headers")
        let folder = base.appendingPathComponent(major)
        for h in ["cuda.h", "nvrtc.h", "cublas_v2.h", "cufft.h", "library_types.h"]
        where !FileManager.default.fileExists(atPath: folder.appendingPathComponent("include/\(h)").path) {
            throw Missing(what: "\(folder.path)/include/\(h) (run: python3 tools/cuda_headers.py \(base.path); scripts/test.sh does)")
        }
        return folder
    }

    struct Missing: Error, CustomStringConvertible {
        let what: String
        var description: String { "missing \(what)" }
    }

    /// A C++ program over the real headers (declarations only: nothing is linked) that prints, per symbol, `sig NAME RESULT PARAM,...`
    /// or `macro NAME` (the header renames it, e.g. cuMemAlloc -> cuMemAlloc_v2: dlsym of the bare
    /// name would load another ABI), and per constant `const NAME VALUE`.
    static func probeSource(symbols: [String], constants: [String]) -> String {
        var s = """
        #include <cuda.h>
        #include <nvrtc.h>
        #include <cufft.h>
        #include <library_types.h>
        #include <driver_types.h>
        #include <cuComplex.h>
        #include <cuda_fp16.h>
        #include <cuda_bf16.h>
        // cuBLAS as C sees it: in C++ its header adds inline overloads of the exported names.
        #pragma push_macro("__cplusplus")
        #undef __cplusplus
        extern "C" {
        #include <cublas_v2.h>
        }
        #pragma pop_macro("__cplusplus")
        #include <cublasLt.h>
        #include <cstdio>
        #include <string>
        #include <type_traits>
        template <class T> std::string scalar() {
          if constexpr (std::is_floating_point_v<T>) return "f" + std::to_string(sizeof(T) * 8);
          else if constexpr (std::is_integral_v<T> || std::is_enum_v<T>) return "i" + std::to_string(sizeof(T) * 8);
          else return "?";
        }
        template <class T> std::string cls() {
          if constexpr (std::is_pointer_v<T>) {
            using P = std::remove_cv_t<std::remove_pointer_t<T>>;
            if constexpr (std::is_pointer_v<P>) return "ptr(ptr)";
            else if constexpr (std::is_void_v<P> || std::is_class_v<P> || std::is_union_v<P>) return "ptr(*)";
            else return "ptr(" + scalar<P>() + ")";
          } else return scalar<T>();
        }
        template <class F> struct Sig;
        template <class R, class... A> struct Sig<R (*)(A...)> {
          static void print(const char* name) {
            std::string s = std::string("sig ") + name + " " + cls<R>() + " ";
            ((s += cls<A>() + ","), ...);
            std::printf("%s\\n", s.c_str());
          }
        };
        int main() {

        """
        for n in symbols {
            s += "#ifdef \(n)\n  std::printf(\"macro \(n)\\n\");\n#else\n  Sig<decltype(&\(n))>::print(\"\(n)\");\n#endif\n"
        }
        for c in constants {
            s += "  std::printf(\"const \(c) %lld\\n\", (long long)(\(c)));\n"
        }
        return s + "  return 0;\n}\n"
    }

    /// The probe compiled against `folder`'s headers and run: what it printed, by line kind.
    static func probe(_ folder: URL, symbols: [String], constants: [String]) throws -> (signatures: [String: Declaration], macros: Set<String>, values: [String: Int64]) {
        let work = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("radar-abi-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: work, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: work) }
        let source = work.appendingPathComponent("probe.cpp"), binary = work.appendingPathComponent("probe")
        try probeSource(symbols: symbols, constants: constants).write(to: source, atomically: true, encoding: .utf8)
        let compile = try shell(["clang++", "-std=c++17", "-w", "-I", folder.appendingPathComponent("include").path, source.path, "-o", binary.path])
        guard compile.0 == 0 else {
            // Quote the probe's lines that clang complains about.
            let lines = try String(contentsOf: source, encoding: .utf8).components(separatedBy: "\n")
            let quoted = compile.1.components(separatedBy: "probe.cpp:").dropFirst().compactMap { Int($0.prefix { $0.isNumber }) }
                .map { "line \($0): \(lines[max(0, min($0 - 1, lines.count - 1))])" }
            throw Missing(what: "a probe that compiles against \(folder.path):\n\(compile.1)\n\(quoted.joined(separator: "\n"))")
        }
        let ran = try shell([binary.path])
        guard ran.0 == 0 else { throw Missing(what: "a probe that runs: \(ran.1)") }
        var signatures: [String: Declaration] = [:], macros: Set<String> = [], values: [String: Int64] = [:]
        for line in ran.1.split(separator: "\n") {
            let f = line.split(separator: " ", omittingEmptySubsequences: false).map(String.init)
            switch f.first {
            case "sig" where f.count == 4:
                signatures[f[1]] = Declaration(result: f[2], parameters: f[3].split(separator: ",").map(String.init))
            case "macro" where f.count == 2: macros.insert(f[1])
            case "const" where f.count == 3: values[f[1]] = Int64(f[2])
            default: XCTFail("probe printed an unexpected line: \(line)")
            }
        }
        return (signatures, macros, values)
    }

    // MARK: Comparison

    static func compatible(_ ours: String, _ theirs: String) -> Bool {
        if ours == theirs { return true }
        return ours.hasPrefix("ptr(") && theirs.hasPrefix("ptr(") && (ours == "ptr(*)" || theirs == "ptr(*)")
    }

    /// One line per disagreement between a Swift declaration and the header's.
    static func disagreements(_ bindings: [Binding], signatures: [String: Declaration], macros: Set<String>, header: String) -> [String] {
        var out: [String] = []
        for b in bindings {
            let at = "\(b.file): \(b.symbol) (\(b.alias))"
            if macros.contains(b.symbol) {
                out.append("\(at): \(header) defines \(b.symbol) as a macro (a versioned name): dlsym must name the versioned symbol")
                continue
            }
            guard let c = signatures[b.symbol] else { out.append("\(at): not declared in \(header)"); continue }
            let ours = b.declaration
            if ours.parameters.count != c.parameters.count || !compatible(ours.result, c.result)
                || zip(ours.parameters, c.parameters).contains(where: { !compatible($0, $1) }) {
                out.append("\(at): Swift \(ours.text), \(header) \(c.text)")
            }
        }
        return out
    }

    func check(major: String, label: String) throws {
        let bindings = try CUDAABIGateTests.bindings()
        let symbols = Array(Set(bindings.map(\.symbol))).sorted()
        // Every library the backend loads is covered, and enough of each to mean the parse worked.
        XCTAssertGreaterThanOrEqual(symbols.filter { $0.hasPrefix("cu") && !$0.hasPrefix("cublas") && !$0.hasPrefix("cufft") }.count, 25)
        XCTAssertGreaterThanOrEqual(symbols.filter { $0.hasPrefix("nvrtc") }.count, 9)
        XCTAssertGreaterThanOrEqual(symbols.filter { $0.hasPrefix("cublas") }.count, 5)
        XCTAssertGreaterThanOrEqual(symbols.filter { $0.hasPrefix("cufft") }.count, 3)
        for b in bindings { XCTAssertFalse((b.declaration.parameters + [b.declaration.result]).contains { $0.hasPrefix("?") }, "\(b.symbol): \(b.declaration.text)") }
        let constants = CUDAABIGateTests.constants()
        XCTAssertGreaterThanOrEqual(constants.count, 20)
        let folder = try CUDAABIGateTests.headers(major)
        let probed = try CUDAABIGateTests.probe(folder, symbols: symbols, constants: constants.map(\.name))
        let problems = CUDAABIGateTests.disagreements(bindings, signatures: probed.signatures, macros: probed.macros, header: label)
        XCTAssertEqual(problems, [], problems.joined(separator: "\n"))
        for c in constants {
            XCTAssertEqual(c.value, probed.values[c.name], "CUDAConstants.\(c.name) = \(c.value), \(label): \(probed.values[c.name].map(String.init) ?? "absent")")
        }
    }

    func testEveryLoadedFunctionAndConstantMatchesTheCUDA12Headers() throws {
        try check(major: "cu12", label: "CUDA 12.9 headers")
    }

    func testEveryLoadedFunctionAndConstantMatchesTheCUDA13Headers() throws {
        try check(major: "cu13", label: "CUDA 13.0 headers")
    }

    /// The comparison itself catches what it is for: a size_t* declared as a 32-bit pointer, a
    /// missing parameter, a bare name the header versions, an unknown symbol; raw pointers pass.
    func testTheGateCatchesWrongDeclarations() throws {
        let folder = try CUDAABIGateTests.headers("cu13")
        let names = ["cuDeviceTotalMem_v2", "cuMemAlloc", "cuMemAlloc_v2", "cufftExecR2C", "cuNoSuchFunction"]
        let probed = try CUDAABIGateTests.probe(folder, symbols: names.filter { $0 != "cuNoSuchFunction" }, constants: ["CU_STREAM_NON_BLOCKING"])
        XCTAssertEqual(probed.values["CU_STREAM_NON_BLOCKING"], 1)
        func binding(_ symbol: String, _ result: String, _ params: [String]) -> Binding {
            Binding(symbol: symbol, alias: "Fn", file: "test", declaration: Declaration(result: result, parameters: params))
        }
        let right = [binding("cuDeviceTotalMem_v2", "i32", ["ptr(i64)", "i32"]), binding("cuMemAlloc_v2", "i32", ["ptr(i64)", "i64"]),
                     binding("cufftExecR2C", "i32", ["i32", "ptr(*)", "ptr(*)"])]
        XCTAssertEqual(CUDAABIGateTests.disagreements(right, signatures: probed.signatures, macros: probed.macros, header: "h"), [])
        let wrong = [binding("cuDeviceTotalMem_v2", "i32", ["ptr(i32)", "i32"]), binding("cuMemAlloc_v2", "i32", ["ptr(i64)"]),
                     binding("cuMemAlloc", "i32", ["ptr(i64)", "i64"]), binding("cuNoSuchFunction", "i32", []),
                     binding("cufftExecR2C", "i32", ["i64", "ptr(*)", "ptr(*)"])]
        let found = CUDAABIGateTests.disagreements(wrong, signatures: probed.signatures, macros: probed.macros, header: "h")
        XCTAssertEqual(found.count, 5, found.joined(separator: "\n"))
        XCTAssertTrue(found[2].contains("macro"), found[2])
        XCTAssertTrue(found[3].contains("not declared"), found[3])
        // The Swift side's classes.
        XCTAssertEqual(CUDAABIGateTests.swiftClass("UnsafeMutablePointer<UnsafePointer<CChar>?>?"), "ptr(ptr)")
        XCTAssertEqual(CUDAABIGateTests.swiftClass("UnsafeMutablePointer<Int>"), "ptr(i64)")
        XCTAssertEqual(CUDAABIGateTests.swiftClass(" OpaquePointer?"), "ptr(*)")
    }
}
