/// A tensor shape of rank 0...4, stored inline so that creating a view never touches the heap.
public struct Shape: Equatable, Hashable, Sendable, CustomStringConvertible {
    public static let maxRank = 4
    @usableFromInline var d: (Int, Int, Int, Int)
    public let rank: Int

    // Fixed-arity initialisers: a variadic one would build an array (a heap allocation) on the
    // training path.
    public init() { d = (1, 1, 1, 1); rank = 0 }
    public init(_ a: Int) { d = (a, 1, 1, 1); rank = 1 }
    public init(_ a: Int, _ b: Int) { d = (a, b, 1, 1); rank = 2 }
    public init(_ a: Int, _ b: Int, _ c: Int) { d = (a, b, c, 1); rank = 3 }
    public init(_ a: Int, _ b: Int, _ c: Int, _ e: Int) { d = (a, b, c, e); rank = 4 }

    public init(_ dims: [Int]) {
        precondition(dims.count <= Shape.maxRank, "Shape supports rank <= \(Shape.maxRank), got \(dims)")
        precondition(dims.allSatisfy { $0 >= 0 }, "negative dimension in \(dims)")
        var t = (1, 1, 1, 1)
        withUnsafeMutableBytes(of: &t) { raw in
            let p = raw.bindMemory(to: Int.self)
            for (i, v) in dims.enumerated() { p[i] = v }
        }
        d = t
        rank = dims.count
    }

    @inlinable public subscript(i: Int) -> Int {
        precondition(i >= 0 && i < rank, "axis \(i) out of range for rank \(rank)")
        switch i {
        case 0: return d.0
        case 1: return d.1
        case 2: return d.2
        default: return d.3
        }
    }

    /// Number of elements.
    @inlinable public var count: Int { d.0 * d.1 * d.2 * d.3 }

    /// The last axis.
    @inlinable public var last: Int { rank == 0 ? 1 : self[rank - 1] }

    /// Elements before the last axis (rows of a row-major matrix view).
    @inlinable public var rows: Int { rank == 0 ? 1 : count / Swift.max(self[rank - 1], 1) }

    /// This shape with the last axis replaced.
    public func replacingLast(_ v: Int) -> Shape {
        var s = self
        switch rank {
        case 1: s.d.0 = v
        case 2: s.d.1 = v
        case 3: s.d.2 = v
        case 4: s.d.3 = v
        default: break
        }
        return s
    }

    public var dims: [Int] { (0..<rank).map { self[$0] } }

    public var description: String { "(" + dims.map(String.init).joined(separator: ", ") + ")" }

    public static func == (a: Shape, b: Shape) -> Bool {
        a.rank == b.rank && a.d.0 == b.d.0 && a.d.1 == b.d.1 && a.d.2 == b.d.2 && a.d.3 == b.d.3
    }

    public func hash(into h: inout Hasher) {
        h.combine(rank); h.combine(d.0); h.combine(d.1); h.combine(d.2); h.combine(d.3)
    }
}
