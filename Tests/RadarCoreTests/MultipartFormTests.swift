import Foundation
import RadarCore
import XCTest

/// `MultipartForm`: the parts of multipart/form-data bodies as clients write them, the file
/// chosen among them, and any cut or damaged body an error or a shorter answer, never a trap.
final class MultipartFormTests: XCTestCase {
    func body(_ boundary: String, _ parts: [(String, Data)]) -> Data {
        var d = Data("preamble to ignore\r\n".utf8)
        for (disposition, content) in parts {
            d.append(Data("--\(boundary)\r\nContent-Disposition: form-data; \(disposition)\r\n\r\n".utf8))
            d.append(content)
            d.append(Data("\r\n".utf8))
        }
        d.append(Data("--\(boundary)--\r\nepilogue".utf8))
        return d
    }

    func testPartsAndTheFileAmongThem() throws {
        XCTAssertEqual(MultipartForm.boundary(contentType: "multipart/form-data; boundary=abc"), "abc")
        XCTAssertEqual(MultipartForm.boundary(contentType: "Multipart/Form-Data;boundary=\"a b;c\""), "a b;c")
        XCTAssertEqual(MultipartForm.boundary(contentType: "multipart/form-data"), "")
        XCTAssertNil(MultipartForm.boundary(contentType: "image/png"))
        XCTAssertNil(MultipartForm.boundary(contentType: "multipart/mixed; boundary=x"))
        // Content holding CR LF, "--" and most of the delimiter is kept byte for byte.
        let payload = Data([0x89, 0x50, 0x4E, 0x47, 13, 10, 0x1A, 10, 0x2D, 0x2D]) + Data("\r\n--bound".utf8) + Data((0..<256).map { UInt8($0) })
        let b = body("bounds", [("name=\"note\"", Data("hi".utf8)), ("name=\"upload\"; filename=\"x;1 \\\"q\\\".png\"", payload)])
        let parts = try MultipartForm.parts(b, boundary: "bounds")
        XCTAssertEqual(parts.map { $0.name }, ["note", "upload"])
        XCTAssertEqual(parts.map { $0.filename }, [nil, "x;1 \"q\".png"])
        XCTAssertEqual(parts[1].content, payload)
        XCTAssertEqual(try MultipartForm.file(b, boundary: "bounds"), payload)
        // No file name: the field named image (or file) is the file; a lone part is too.
        XCTAssertEqual(try MultipartForm.file(body("q", [("name=\"a\"", Data("1".utf8)), ("name=\"image\"", payload)]), boundary: "q"), payload)
        XCTAssertEqual(try MultipartForm.file(body("q", [("name=\"only\"", payload)]), boundary: "q"), payload)
        XCTAssertEqual(try MultipartForm.file(body("q", [("name=\"empty\"", Data())]), boundary: "q"), Data())
        XCTAssertThrowsError(try MultipartForm.file(body("q", [("name=\"a\"", payload), ("name=\"b\"", payload)]), boundary: "q")) {
            XCTAssertTrue("\($0)".contains("with 2 parts (a, b) and no file in them"), "\($0)")
        }
        XCTAssertThrowsError(try MultipartForm.file(b, boundary: "other")) { XCTAssertTrue("\($0)".contains("without its boundary 'other'"), "\($0)") }
        XCTAssertThrowsError(try MultipartForm.file(b, boundary: "")) { XCTAssertTrue("\($0)".contains("usable boundary"), "\($0)") }
    }

    func testCutAndDamagedBodiesNeverTrap() throws {
        let b = body("zz", [("name=\"note\"", Data("hello".utf8)), ("name=\"f\"; filename=\"a\"", Data((0..<300).map { UInt8($0 % 251) }))])
        var complete = 0
        for cut in 0...b.count {
            if let parts = try? MultipartForm.parts(b.prefix(cut), boundary: "zz"), parts.count == 2 { complete += 1 }
        }
        // Only cuts after the closing delimiter's "--" keep both parts whole.
        XCTAssertEqual(complete, "\r\nepilogue".utf8.count + 1)
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<2000 {
            var d = b
            for _ in 0..<3 { d[Int.random(in: 0..<d.count, using: &rng)] = [13, 10, 0x2D, 0x7A, 0x22, 0x3B][Int.random(in: 0..<6, using: &rng)] }
            _ = try? MultipartForm.file(d, boundary: "zz")
        }
    }
}
