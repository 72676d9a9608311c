import Foundation

/// `object` with every non-finite number (a NaN loss, an infinite bandwidth from a zero time)
/// replaced by null: JSON has no such numbers, and JSONSerialization refuses them.
public func jsonFinite(_ object: Any) -> Any {
    // A true/false JSONSerialization read (an NSNumber of type "c") stays a boolean: matched as a
    // Double below it was written back as 1 or 0.
    if let n = object as? NSNumber, String(cString: n.objCType) == "c" { return n }
    switch object {
    case let d as Double: return d.isFinite ? d : NSNull()
    case let f as Float: return f.isFinite ? f : NSNull()
    case let o as [String: Any]: return o.mapValues(jsonFinite)
    case let a as [Any]: return a.map(jsonFinite)
    default: return object
    }
}

/// One JSON document for records and reports (keys sorted, slashes unescaped), non-finite
/// numbers as null.
public func jsonData(_ object: Any, pretty: Bool = false) throws -> Data {
    try JSONSerialization.data(withJSONObject: jsonFinite(object),
                               options: pretty ? [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes] : [.sortedKeys, .withoutEscapingSlashes])
}

/// `x` with `digits` decimals for log lines; NaN as "nan" (printf wrote "-nan" for a loss sum
/// that went NaN) and infinities as "inf" / "-inf".
public func fixed(_ x: Double, _ digits: Int = 4) -> String {
    x.isNaN ? "nan" : x.isInfinite ? (x < 0 ? "-inf" : "inf") : String(format: "%.\(digits)f", x)
}
