import Foundation
import XCTest

/// A network namespace of its own, only its loopback, up, with IPv6 on it (127.0.0.1 and ::1),
/// for tests of IPv6 that must not depend on the machine's own IPv6 settings. Needs root (CI
/// has it); removed when released.
final class LoopbackNamespace {
    let name: String

    init(file: StaticString = #filePath, line: UInt = #line) throws {
        name = "radar-lo-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        XCTAssertEqual(try LoopbackNamespace.ip(["netns", "add", name]).0, 0, file: file, line: line)
        XCTAssertEqual(try LoopbackNamespace.ip(["netns", "exec", name, "ip", "link", "set", "lo", "up"]).0, 0, file: file, line: line)
        _ = try LoopbackNamespace.ip(["netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.lo.disable_ipv6=0"])
        let (rc, addrs) = try LoopbackNamespace.ip(["netns", "exec", name, "ip", "-6", "addr", "show", "dev", "lo"])
        XCTAssertTrue(rc == 0 && addrs.contains("::1/128"), "IPv6 loopback in the namespace: \(addrs)", file: file, line: line)
    }

    deinit { _ = try? LoopbackNamespace.ip(["netns", "del", name]) }

    /// What runs a program inside: `prefix + [program, args...]`.
    var prefix: [String] { ["/usr/sbin/ip", "netns", "exec", name] }

    static func ip(_ args: [String]) throws -> (Int32, String) { try Process.runStatus(["/usr/sbin/ip"] + args) }
}
